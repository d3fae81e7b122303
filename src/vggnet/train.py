"""Training: one loop for every recipe of :data:`vggnet.configs.RECIPES`.

Batches are index slices of the uint8 tensor cache, augmented as whole tensors;
the step runs in bf16 autocast and channels-last where the CPU supports it. Every
epoch appends to ``metrics.jsonl`` and writes an atomic checkpoint (safetensors with
its JSON metadata in the header), so ``--resume`` continues bit for bit.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import platform
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, safe_open, save_file
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from .configs import Recipe, get_recipe
from .data import (StreamingImages, TensorData, center_crop, channel_stats, cutout, load_dataset, normalize,
                   pca_lighting, pca_lighting_stats, random_crop_flip, rescale, scale_jitter_crop, split_validation)
from .inference import bf16_supported
from .model import VGG, build_model
from .distributed import World, barrier, convert_sync_batchnorm, gather, setup, shard, teardown
from .weights import warm_start

Data = TensorData | StreamingImages


@dataclass
class RunSettings:
    """What to train and where; the recipe holds the hyper-parameters."""

    config: str = "D"                    # Table 1 letter or name ("vgg16_bn")
    batch_norm: bool | None = True       # None: as the name says
    recipe: Recipe = field(default_factory=lambda: get_recipe("fast"))
    data: str | None = None              # data set root; None: $VGGNET_DATA or defaults
    download: str | None = None          # folder to download the CIFAR-10 archive into
    out: str = "runs/vgg16_bn-cifar10"   # run folder
    seed: int = 0
    val_size: int = 5000                 # held out of train for the schedule and best checkpoint
    width: float = 1.0                   # channel multiplier (tests use 1/16)
    divide_std: bool = True              # divide by the per-channel std after mean subtraction
    threads: int = 0                     # torch threads; 0 keeps torch's default
    limit_train: int = 0                 # use only the first N training images (0: all)
    limit_test: int = 0
    log_every: int = 20                  # steps between progress-bar updates
    stop_after_steps: int = 0            # checkpoint and stop after this many steps of this process (0: never)
    time_limit_min: float = 0.0          # checkpoint and stop after this many minutes (0: no limit)
    budget_min: float = 0.0              # onecycle: set the epochs to what fits this many minutes, timed on epoch 1
    init_from: str | None = None         # warm start (3.1): a checkpoint of A, or of the same net at another scale
    stream: bool | None = None           # None: decode into memory when the images fit and share one size
    workers: int = 2                     # DataLoader workers of the streaming path
    sync_bn: bool = False                # under torchrun: BatchNorm statistics over the global batch
    skip_bad: bool = False               # leave unreadable images out (listed in skipped.txt) instead of stopping
    checkpoint_activations: bool = False # recompute conv activations in backward: less memory, ~1/3 more compute


def machine() -> dict:
    """What the numbers of a run depend on: CPU, torch's kernel level, threads, and whether
    the CPU has native bf16 (without it, bf16 autocast is off and training runs in fp32)."""
    return {"arch": platform.machine(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "bf16_native": bf16_supported()}


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3   # glibc's mallopt parameters (malloc.h)


def reuse_freed_memory() -> bool:
    """Have glibc's malloc keep freed blocks of up to 32 MiB (its largest mmap threshold) for
    reuse instead of returning them to the OS: by default every training step page-faults
    its activations in afresh (VGG-16-BN, 32 px, batch 128: ~54,000 faults, ~13 % of the
    step; BENCHMARKS 16). Process-wide; False where the C library is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def autocast(precision: str) -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16" and bf16_supported())


def param_groups(model: torch.nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict]:
    """Weight decay on conv/FC weights; BN parameters and biases (1-d tensors) optionally spared."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 and not decay_norm_and_bias else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def onecycle_lr(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up from peak/10 to peak over ``warmup`` steps, then linear decay to 0."""
    if step < warmup:
        return peak * (0.1 + 0.9 * step / warmup)
    return peak * max(0.0, (total - step) / max(1, total - warmup))


class Trainer:
    """Holds the model, data, optimizer and schedule of one run; ``fit`` runs it."""

    def __init__(self, settings: RunSettings, resume: bool = False) -> None:
        self.s = dataclasses.replace(settings)    # a copy: a budget changes its recipe
        self.out = Path(settings.out)
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.world: World = setup(settings.threads)
        try:
            self._prepare(resume)
        except BaseException:   # a bad --data or --out: leave the process group before the error
            teardown(self.world)
            raise

    @property
    def r(self) -> Recipe:
        """The run's recipe: the settings' own, so run.json and checkpoints always show the one in use."""
        return self.s.recipe

    @r.setter
    def r(self, recipe: Recipe) -> None:
        self.s.recipe = recipe

    def _prepare(self, resume: bool) -> None:
        """Run folder, seeds, data, model and optimizer; the last checkpoint when resuming."""
        settings = self.s
        if settings.budget_min < 0:
            raise ValueError(f"budget (--budget) must be minutes > 0; got {settings.budget_min:g}")
        if settings.budget_min and self.r.schedule != "onecycle":
            raise ValueError(f"budget (--budget) needs a recipe with a fixed-length (onecycle) schedule; recipe "
                             f"{self.r.name!r} has schedule {self.r.schedule!r}: use --time-limit")
        self._check_out_dir()
        restarted = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0"   # torchrun brought us back
        resume = resume or (restarted and (self.out / "last.safetensors").is_file())
        if not resume and (self.out / "last.safetensors").is_file():
            raise ValueError(f"{self.out} already holds a run (last.safetensors): add --resume to continue it, "
                             "or choose another --out")
        torch.set_flush_denormal(True)  # denormal floats slow CPU kernels up to 100x (measured: BENCHMARKS.md)
        reuse_freed_memory()            # no page faults on each step's activations (BENCHMARKS 16)
        torch.manual_seed(settings.seed)
        random.seed(settings.seed)
        self._load_data()
        self._build_model()
        self.steps_per_epoch = max(1, len(self.train) // self.r.batch_size)
        self.gen = torch.Generator().manual_seed(settings.seed + 1)  # permutation and augmentation
        self.epoch, self.step, self.lr, self.lr_cuts, self.best_val, self.stale = 0, 0, self.r.lr, 0, -1.0, 0
        self.perm: torch.Tensor | None = None       # this epoch's order; kept to resume mid-epoch
        self.batch_in_epoch = 0
        self.partial = fresh_partial()
        self.stop_requested, self.steps_this_process, self.started = False, 0, time.monotonic()
        if resume:
            self.load_checkpoint(self.out / "last.safetensors")

    def _load_data(self) -> None:
        """Train/validation/test sets, crop and scale, and the training set's statistics:
        mean RGB (2.1), std, and the PCA colour basis (3.1) when the recipe shifts colours."""
        s = self.s
        train, self.test = load_dataset(s.data, Path(s.download) if s.download else None,
                                        stream=s.stream, skip_bad=s.skip_bad)
        if train.skipped and self.world.main:
            (self.out / "skipped.txt").write_text("\n".join(train.skipped) + "\n")
        if s.limit_train:
            train = train.subset(random_subset(len(train), s.limit_train, s.seed))
        if s.limit_test:
            self.test = self.test.subset(random_subset(len(self.test), s.limit_test, s.seed))
        self.train, self.val = split_validation(train, s.val_size, s.seed)
        self.classes = train.classes
        self.streaming = isinstance(train, StreamingImages)
        self.crop = self.r.crop_size or (224 if self.streaming else int(train.images.shape[-1]))
        self.scale = self.r.train_scale or ((256, 256) if self.streaming else None)
        if self.streaming:
            for data, is_train in ((self.train, True), (self.val, False), (self.test, False)):
                data.crop, data.scale, data.train = self.crop, self.scale, is_train
        sample = self.statistics_sample()
        mean, std = channel_stats(sample)
        self.mean, self.std = mean, std if s.divide_std else None
        self.lighting = pca_lighting_stats(sample) if self.r.lighting else None
        if self.streaming:  # flips and colour shifts happen per image in the workers
            self.train.flip, self.train.lighting, self.train.lighting_std = self.r.flip, self.lighting, self.r.lighting

    def _build_model(self) -> None:
        """The model (warm-started if asked), DDP around it under torchrun, and the optimizer."""
        s = self.s
        self.model = build_model(s.config, batch_norm=s.batch_norm, num_classes=len(self.classes), head=self.r.head,
                                 init=self.r.init, dropout=self.r.dropout, width=s.width)
        self.model.checkpoint_activations = s.checkpoint_activations
        if s.init_from:
            warm_start(self.model, s.init_from)
        if s.sync_bn and self.world.size > 1:
            convert_sync_batchnorm(self.model, cuda=self.world.device.startswith("cuda"))
        self.model = self.model.to(self.world.device, memory_format=torch.channels_last)
        self.net: torch.nn.Module = self.model    # what the step runs: the model, or DDP around it
        if not 0.0 <= self.r.ema < 1.0:
            raise ValueError(f"ema (--ema) must be a decay in [0, 1), 0 for off; got {self.r.ema}")
        self.ema = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(self.r.ema), use_buffers=True)
                    if self.r.ema else None)
        if self.world.size > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(self.model)
        self.opt = torch.optim.SGD(param_groups(self.model, self.r.weight_decay, self.r.decay_norm_and_bias),
                                   lr=self.r.lr, momentum=self.r.momentum, nesterov=self.r.nesterov)

    def _check_out_dir(self) -> None:
        """Fail before training, not after the first epoch, if the run folder is not writable."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / f".write-test-{self.world.rank}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise ValueError(f"output folder {self.out} is not writable: {exc.strerror or exc}") from None

    @property
    def eval_model(self) -> VGG:
        """What validation, test and the checkpoints' ``model.`` weights use: the moving
        average of the weights when the recipe keeps one, else the trained weights."""
        return self.ema.module if self.ema is not None else self.model

    # ---- one step, one epoch -------------------------------------------------
    def statistics_sample(self, n: int = 2000) -> torch.Tensor:
        """Training pixels for the mean RGB (2.1) and the PCA colour statistics (3.1): all of
        an in-memory set, ``n`` centre crops at the training scale of a streamed one."""
        if not self.streaming:
            return self.train.images
        view = self.train.subset(random_subset(len(self.train), min(n, len(self.train)), self.s.seed))
        view.train = False
        return torch.stack([view[i][0] for i in range(len(view))])

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 batch -> model input, section 3.1: scale jittering and random crops, PCA
        colour shift, mean subtraction, flips (then Cutout, if the recipe asks); all as
        whole-batch tensor operations."""
        if self.streaming:  # streamed images arrive rescaled, cropped, flipped and colour-shifted
            x = normalize(images, self.mean, self.std)
        else:
            if self.scale:
                images = scale_jitter_crop(images, self.scale[0], self.scale[1], self.crop, self.gen)
            x = images.to(torch.float32)
            if self.lighting:
                x = pca_lighting(x, self.lighting, self.r.lighting, self.gen)
            x = normalize(x, self.mean, self.std)
            x = random_crop_flip(x, 0 if self.scale else self.r.crop_padding, self.r.flip, self.gen)
        if self.r.cutout:
            x = cutout(x, self.r.cutout, self.gen)
        return x.contiguous(memory_format=torch.channels_last)

    def prepare_eval(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 batch -> model input at test time: rescale to Q = mid training scale, centre crop (3.2)."""
        if self.scale and not self.streaming:
            images = center_crop(rescale(images, (self.scale[0] + self.scale[1]) // 2), self.crop)
        return normalize(images, self.mean, self.std).contiguous(memory_format=torch.channels_last)

    def batches(self, data: Data, order: torch.Tensor, batch_size: int,
                split: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Image batches and labels in the given order of indices; with ``split``, streamed
        batches hold only this rank's shard of each global batch (in-memory ones are whole)."""
        if isinstance(data, StreamingImages):
            chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
            yield from data.loader([c[shard(len(c), self.world)] if split else c for c in chunks], self.s.workers)
            return
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            yield data.images[idx], data.labels[idx]

    def set_lr(self) -> None:
        if self.r.schedule == "onecycle":
            total = self.r.epochs * self.steps_per_epoch
            warmup = int(self.r.warmup_epochs * self.steps_per_epoch)
            self.lr = onecycle_lr(self.step, total, warmup, self.r.lr)
        for g in self.opt.param_groups:
            g["lr"] = self.lr

    def _should_stop(self) -> bool:
        """A step or time limit, Ctrl-C or SIGTERM; under torchrun, any rank's stop stops all."""
        s = self.s
        stop = (bool(s.stop_after_steps) and self.steps_this_process >= s.stop_after_steps) or self.stop_requested
        stop = stop or bool(s.time_limit_min and time.monotonic() - self.started > 60 * s.time_limit_min)
        if self.world.size > 1:
            flag = torch.tensor([float(stop)])
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            stop = bool(flag.item())
        return stop

    def train_epoch(self) -> dict[str, float] | None:
        """One pass over the training set (or the rest of it, after a mid-epoch resume);
        None when stopped early, with the position kept for the checkpoint."""
        self.model.train()
        if self.perm is None:
            self.perm, self.batch_in_epoch = torch.randperm(len(self.train), generator=self.gen), 0
            self.partial = fresh_partial()
        p = self.partial     # the epoch so far, across a stop and --resume (its time too, for metrics.jsonl)
        start, data_time, seen_here = time.perf_counter(), p["data_s"], 0
        fetched = start
        bar = tqdm(range(self.batch_in_epoch, self.steps_per_epoch), desc=f"epoch {self.epoch + 1}/{self.r.epochs}",
                   leave=False, disable=None if self.world.main else True, dynamic_ncols=True)
        bs = self.r.batch_size
        if self.streaming:
            self.train.epoch = self.epoch
        first = self.batch_in_epoch
        todo = self.perm[first * bs:self.steps_per_epoch * bs]
        for i, (images, y) in zip(bar, self.batches(self.train, todo, bs)):
            if self._should_stop():
                p["time_s"], p["data_s"] = p["time_s"] + time.perf_counter() - start, data_time
                return None
            x = self.augment(images)
            global_batch = min(bs, len(todo) - (i - first) * bs)
            if not self.streaming and self.world.size > 1:   # every rank augments the batch, keeps its shard
                part = shard(len(y), self.world)
                x, y = x[part], y[part]
            data_time += time.perf_counter() - fetched    # reading the batch and augmenting it
            self.set_lr()
            loss, logits = forward_backward(self.net, x, y, self.r.micro_batch, self.r.label_smoothing,
                                            self.r.precision, global_batch, self.world.size)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at epoch {self.epoch + 1}, step {i + 1}, "
                                         f"lr {self.lr:.3g}; the last good checkpoint is {self.out / 'last.safetensors'}")
            self.opt.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self.step, self.steps_this_process, self.batch_in_epoch = self.step + 1, self.steps_this_process + 1, i + 1
            p["loss_sum"] += loss.item() * len(y)
            p["correct"] += (logits.argmax(1) == y).sum().item()
            p["seen"] += len(y)
            seen_here += len(y)
            if i % self.s.log_every == 0 or i == self.steps_per_epoch - 1:
                bar.set_postfix(loss=f"{p['loss_sum'] / p['seen']:.3f}", acc=f"{p['correct'] / p['seen']:.3f}",
                                lr=f"{self.lr:.3g}", img_s=f"{seen_here / (time.perf_counter() - start):.0f}")
            fetched = time.perf_counter()
        self.perm = None
        elapsed = p["time_s"] + time.perf_counter() - start
        if self.world.size > 1:   # the epoch's loss and accuracy over every rank's shard
            totals = torch.tensor([p["loss_sum"], p["correct"], p["seen"]], dtype=torch.float64)
            torch.distributed.all_reduce(totals)
            p = dict(zip(("loss_sum", "correct", "seen"), totals.tolist()))
        return {"train_loss": p["loss_sum"] / max(p["seen"], 1), "train_acc": p["correct"] / max(p["seen"], 1),
                "train_time_s": elapsed, "data_time_s": data_time, "images_per_s": p["seen"] / elapsed, "lr": self.lr}

    @torch.no_grad()
    def predict(self, data: Data, batch_size: int = 500, model: VGG | None = None) -> torch.Tensor:
        """Logits of ``model`` (default: :attr:`eval_model`) for a whole data set; with the
        recipe's tta_flip, averaged with the mirror image."""
        model = (model or self.eval_model).eval()
        out = []
        mine = torch.arange(len(data))[shard(len(data), self.world)]   # each rank scores its part
        for images, _ in self.batches(data, mine, batch_size, split=False):
            x = self.prepare_eval(images)
            with autocast(self.r.precision):
                logits = model(x).float()
                if self.r.tta_flip:
                    logits = (logits + model(x.flip(-1)).float()) / 2
            out.append(logits)
        return gather(torch.cat(out), self.world)

    def after_epoch(self, val_acc: float) -> None:
        """Paper schedule (3.1): divide lr by 10 when validation accuracy stalls."""
        improved = val_acc > self.best_val
        self.stale = 0 if improved else self.stale + 1
        if self.r.schedule == "plateau" and self.stale >= self.r.plateau_patience:
            self.lr *= self.r.plateau_factor
            self.lr_cuts += 1
            self.stale = 0

    def finished(self) -> bool:
        if self.epoch >= self.r.epochs:
            return True
        return self.r.schedule == "plateau" and self.lr_cuts > self.r.max_lr_cuts - 1 and self.stale >= self.r.plateau_patience

    # ---- the run ----------------------------------------------------------------
    def fit(self) -> dict:
        self._write_run_json()
        if self.r.precision == "bf16" and not bf16_supported() and self.world.main:
            tqdm.write("bf16 autocast asked for, but this CPU has no native bf16 (AVX-512 BF16 or AMX): "
                       "training in fp32 (run.json: machine.bf16_native is false)")
        previous = _install_stop_handlers(self._on_signal)
        try:
            while not self.finished():
                stats = self.train_epoch()
                if stats is None:  # stopped mid-epoch: keep the exact position
                    self.save_checkpoint(self.out / "last.safetensors")
                    if self.world.main:
                        tqdm.write(f"stopped at epoch {self.epoch + 1}, step {self.batch_in_epoch}; "
                               f"continue with --resume --out {self.out}")
                    return {"stopped": True, "epoch": self.epoch, "step": self.step}
                self.epoch += 1
                t0 = time.perf_counter()
                val_acc = accuracy(self.predict(self.val), self.val.labels) if len(self.val) else stats["train_acc"]
                stats.update(epoch=self.epoch, val_acc=val_acc, eval_time_s=time.perf_counter() - t0)
                if self.s.budget_min and self.epoch == 1:
                    self.fit_to_budget(stats["train_time_s"] + stats["eval_time_s"])
                is_best = val_acc > self.best_val
                self.after_epoch(val_acc)
                self.best_val = max(self.best_val, val_acc)
                self.save_checkpoint(self.out / "last.safetensors")
                if is_best:
                    self.save_checkpoint(self.out / "best.safetensors")
                if not self.world.main:
                    continue
                with open(self.out / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps(stats) + "\n")
                tqdm.write(f"epoch {self.epoch}: loss {stats['train_loss']:.4f} train {stats['train_acc']:.4f} "
                           f"val {val_acc:.4f} lr {stats['lr']:.4g} {stats['images_per_s']:.0f} img/s "
                           f"({stats['train_time_s']:.0f} s)")
            return self.report()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _resume_budget(self, state: dict, saved_epochs: int, path: Path) -> None:
        """A budgeted run resumes with its budget, and after epoch 1 with the epochs it chose,
        whether or not --budget is given again; a run started without one cannot take one later."""
        if state.get("budget_min"):
            self.s.budget_min = state["budget_min"]
            if state["epoch"] >= 1:
                self.r = self.r.replace(epochs=saved_epochs)
        elif self.s.budget_min and state["epoch"] >= 1:
            raise ValueError(f"{path}: the run was started without --budget and is past epoch 1, where a budget "
                             "is turned into epochs; resume it without --budget (or with --epochs)")

    def fit_to_budget(self, epoch_s: float) -> None:
        """Set the schedule's length to the epochs that fit the budget at epoch 1's pace (the
        slowest rank's). With a warm-up of at least one epoch, epoch 1 did not depend on the
        length, so the run equals one started with that --epochs."""
        if self.world.size > 1:
            pace = torch.tensor([epoch_s])
            torch.distributed.all_reduce(pace, op=torch.distributed.ReduceOp.MAX)
            epoch_s = pace.item()
        epochs = budget_epochs(self.s.budget_min, epoch_s)
        self.r = self.r.replace(epochs=epochs)
        self._write_run_json()
        if self.world.main:
            tqdm.write(f"budget {self.s.budget_min:g} min: epoch 1 took {epoch_s:.1f} s, so {epochs} epochs")

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop_requested = True

    def report(self) -> dict:
        """Final test accuracy of the last and the best-validation weights (the moving averages
        when the recipe keeps one, and then also the last trained weights); plots and per-class results."""
        from .plots import plot_confusion, plot_curves
        final_logits = self.predict(self.test)
        result = {"final_test_acc": accuracy(final_logits, self.test.labels), "epochs": self.epoch}
        if self.ema is not None:
            result["final_test_acc_without_ema"] = accuracy(self.predict(self.test, model=self.model), self.test.labels)
        best = self.out / "best.safetensors"
        if best.is_file():
            self.eval_model.load_state_dict(read_checkpoint(best)[0]["model"])
            best_logits = self.predict(self.test)
            result["best_val_test_acc"] = accuracy(best_logits, self.test.labels)
            result["best_val_acc"] = self.best_val
        if not self.world.main:
            return result
        confusion = confusion_matrix(final_logits.argmax(1), self.test.labels, len(self.classes))
        per_class = (confusion.diag() / confusion.sum(1).clamp(min=1)).tolist()
        result["per_class_acc"] = dict(zip(self.classes, per_class))
        (self.out / "results.json").write_text(json.dumps(result, indent=2))
        plot_curves(self.out / "metrics.jsonl", self.out / "curves.png")
        plot_confusion(confusion, self.classes, self.out / "confusion.png")
        return result

    # ---- checkpoints ---------------------------------------------------------------
    def metadata(self) -> dict:
        return {"config": self.model.config, "batch_norm": self.model.batch_norm, "head": self.model.head,
                "num_classes": self.model.num_classes, "width": self.model.width, "dropout": self.model.dropout,
                "dense_from": self.model.dense_from, "classes": self.classes, "mean": self.mean, "std": self.std,
                "channel_order": "RGB", "input_size": self.crop, "train_scale": list(self.scale) if self.scale else None,
                "lighting": self.lighting, "recipe": dataclasses.asdict(self.r)}

    def _write_run_json(self) -> None:
        if not self.world.main:
            return
        settings = dataclasses.asdict(self.s)
        (self.out / "run.json").write_text(json.dumps({"settings": settings, "model": self.metadata(),
                                                       "machine": machine()}, indent=2))

    def save_checkpoint(self, path: Path) -> None:
        """``model.``: the weights evaluation uses (what eval, predict and export read);
        with a moving average, ``train.`` holds the trained weights that resuming needs."""
        tensors = {f"model.{k}": v.contiguous() for k, v in self.eval_model.state_dict().items()}
        if self.ema is not None:
            tensors.update({f"train.{k}": v.contiguous() for k, v in self.model.state_dict().items()})
            tensors["ema.n_averaged"] = self.ema.n_averaged
        for i, p in enumerate(p for g in self.opt.param_groups for p in g["params"]):
            buf = self.opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tensors[f"optim.{i}"] = buf.contiguous()
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.gen"] = self.gen.get_state()
        if self.perm is not None:
            tensors["epoch.perm"] = self.perm
        state = {"epoch": self.epoch, "step": self.step, "lr": self.lr, "lr_cuts": self.lr_cuts,
                 "best_val": self.best_val, "stale": self.stale, "batch_in_epoch": self.batch_in_epoch,
                 "partial": self.partial, "budget_min": self.s.budget_min}
        if self.world.main:   # one writer; the others wait until the file is complete
            write_checkpoint(path, tensors, {"model": self.metadata(), "state": state})
        barrier(self.world)

    def load_checkpoint(self, path: Path) -> None:
        if not path.is_file():
            raise ValueError(f"cannot resume: no checkpoint at {path}")
        groups, meta = read_checkpoint(path)
        m = meta["model"]
        if (m["config"], m["batch_norm"], m["num_classes"]) != (self.model.config, self.model.batch_norm, self.model.num_classes):
            raise ValueError(f"{path}: checkpoint is config {m['config']} bn={m['batch_norm']} with {m['num_classes']} "
                             f"classes, the run wants {self.model.config} bn={self.model.batch_norm} with {self.model.num_classes}")
        if (self.ema is not None) != ("train" in groups):
            raise ValueError(f"{path}: checkpoint was trained {'with' if 'train' in groups else 'without'} a moving "
                             f"average of the weights (ema); resume it with the recipe it was started with")
        self._resume_budget(meta["state"], m.get("recipe", {}).get("epochs", self.r.epochs), path)
        changed = recipe_changes(m.get("recipe", {}), self.r)
        if changed:
            raise ValueError(f"{path}: the run was started with another recipe ({changed}); resume it with the "
                             "options it was started with (see its run.json), or train into a new --out")
        self.model.load_state_dict(groups["train" if self.ema is not None else "model"])
        if self.ema is not None:
            self.ema.module.load_state_dict(groups["model"])
            self.ema.n_averaged.copy_(groups["ema"]["n_averaged"])
        params = [p for g in self.opt.param_groups for p in g["params"]]
        for key, buf in groups.get("optim", {}).items():
            self.opt.state[params[int(key)]]["momentum_buffer"] = buf.clone()
        torch.set_rng_state(groups["rng"]["torch"])
        self.gen.set_state(groups["rng"]["gen"])
        st = meta["state"]
        self.epoch, self.step, self.lr, self.lr_cuts = st["epoch"], st["step"], st["lr"], st["lr_cuts"]
        self.best_val, self.stale = st["best_val"], st["stale"]
        self.perm = groups.get("epoch", {}).get("perm")
        self.batch_in_epoch, self.partial = st["batch_in_epoch"], {**fresh_partial(), **st["partial"]}


def budget_epochs(budget_min: float, epoch_s: float) -> int:
    """Whole epochs of ``epoch_s`` seconds (training and validation) in ``budget_min`` minutes, at least one."""
    return max(1, int(60 * budget_min // epoch_s))


def fresh_partial() -> dict[str, float]:
    """An epoch's progress before its first step: loss, hits and images so far, and the
    seconds spent (in all, and on data), kept in the checkpoint across a stop and --resume."""
    return {"loss_sum": 0.0, "correct": 0.0, "seen": 0.0, "time_s": 0.0, "data_s": 0.0}


def recipe_changes(saved: dict, recipe: Recipe) -> str:
    """``name saved -> now`` for each recipe field a resumed run would change, but a larger
    ``epochs`` (a finished run may be continued); fields older checkpoints lack are not compared."""
    now = json.loads(json.dumps(dataclasses.asdict(recipe)))   # tuples as lists, like the saved JSON
    return ", ".join(f"{k} {saved[k]!r} -> {now[k]!r}" for k in now if k in saved and saved[k] != now[k]
                     and not (k == "epochs" and now[k] > saved[k]))


def forward_backward(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, micro_batch: int,
                     label_smoothing: float, precision: str, global_batch: int = 0,
                     world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the mean loss over the global batch, accumulated over micro-batches of
    ``micro_batch`` examples (0: one pass), so the paper's batch of 256 fits any memory.
    Under DDP (which averages over ranks) each rank's loss is weighted by its share."""
    for p in model.parameters():
        p.grad = None
    size, scale = micro_batch or len(y), world_size / (global_batch or len(y))
    chunks = list(zip(x.split(size), y.split(size)))
    total, all_logits = torch.zeros(()), []
    for j, (xc, yc) in enumerate(chunks):
        last = j == len(chunks) - 1
        sync = model.no_sync() if hasattr(model, "no_sync") and not last else contextlib.nullcontext()
        with sync, autocast(precision):
            logits = model(xc)
            loss = F.cross_entropy(logits.float(), yc, label_smoothing=label_smoothing) * (len(yc) * scale)
            if not torch.isfinite(loss):
                return loss.detach(), logits.detach()
            loss.backward()
        total += loss.detach()
        all_logits.append(logits.detach())
    return total, torch.cat(all_logits)


def _install_stop_handlers(handler: Callable) -> dict:
    """Ctrl-C and SIGTERM ask the loop to checkpoint and stop at the next step (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}


def write_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write safetensors atomically: a temporary file, fsync, then rename over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata={"vggnet": json.dumps(meta)})
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_checkpoint(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """({"model": state_dict, "optim": ..., "rng": ...}, metadata) from a safetensors file."""
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads((fh.metadata() or {}).get("vggnet", "{}"))
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in load_file(str(path)).items():
        group, _, name = key.partition(".")
        groups.setdefault(group, {})[name] = value
    return groups, meta


def random_subset(n: int, k: int, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded random subset of ``k`` out of ``n`` (for quick runs on part of a data set)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, n: int) -> torch.Tensor:
    """(n, n) counts, rows true class, columns predicted."""
    return torch.bincount(labels * n + pred, minlength=n * n).reshape(n, n)


def train(settings: RunSettings | None = None, resume: bool = False) -> dict:
    """Train one run end to end (the Python API behind ``vggnet train``)."""
    trainer = Trainer(settings or RunSettings(), resume=resume)
    try:
        return trainer.fit()
    finally:
        teardown(trainer.world)
