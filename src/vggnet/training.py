"""Training: one loop for every recipe of :data:`vggnet.configs.RECIPES`.

The trainer wires the stages together: settings (:mod:`vggnet.settings`), data and its
batches (:mod:`vggnet.data`, :mod:`vggnet.loader`), the model (:mod:`vggnet.weights`'
ModelSpec), the schedule (:mod:`vggnet.schedule`), checkpoints (:mod:`vggnet.checkpoint`)
and the final report (:mod:`vggnet.report`). The step runs in bf16 autocast and
channels-last where the CPU supports it (:mod:`vggnet.runtime`). Every epoch appends to
``metrics.jsonl`` and writes an atomic checkpoint, so ``--resume`` continues bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from . import runtime
from .checkpoint import TrainState, commit_epoch, resume_training_checkpoint, save_training_checkpoint
from .configs import Recipe
from .distributed import World, convert_sync_batchnorm, gather, setup, shard, teardown
from .errors import DivergedError, VggnetError
from .files import FolderLock, remove_stale_temporaries, write_text_atomic
from .loader import run_data
from .model import VGG
from .progress import Progress, summary
from .report import accuracy, final_report
from .schedule import Schedule
from .settings import RunSettings, resolve_settings
from .summary import step_memory
from .tensorboard_log import RunBoard
from .transfer import freeze, frozen_modules, pretrained_model
from .weights import ModelSpec, warm_start


class Trainer:
    """Holds the model, data, optimizer and schedule of one run; ``fit`` runs it."""

    def __init__(self, settings: RunSettings, resume: bool = False) -> None:
        self.s = settings.resolved()     # a copy, every default rule applied
        self.out = Path(self.s.out)
        self.lock = FolderLock(self.out)
        runtime.set_threads(self.s.threads)
        device = runtime.resolve_device(self.s.device)
        self.world: World = setup(self.s.threads, device)
        runtime.use_device(torch.device(self.world.device))
        created = not self.out.exists()
        try:
            self._prepare(resume)
        except BaseException:   # a bad --data or --out: leave the process group, and no folder, behind
            teardown(self.world)
            if created and self.lock.held:    # not a folder another run made and locked meanwhile
                shutil.rmtree(self.out, ignore_errors=True)     # still locked: no run can take it in between
            self.lock.release()
            raise

    @property
    def r(self) -> Recipe:
        """The run's recipe, as the schedule holds it (a budget sets its epochs)."""
        return self.schedule.recipe

    @r.setter
    def r(self, recipe: Recipe) -> None:
        self.schedule.recipe = recipe

    def _prepare(self, resume: bool) -> None:
        """Run folder, seeds, data, model and optimizer; the last checkpoint when resuming."""
        s = self.s
        self.schedule = Schedule(s.recipe, steps_per_epoch=1, budget_min=s.budget_min)
        self._check_out_dir()
        if self.world.main:     # one run per folder; what a killed writer left is removed under the lock
            self.lock.acquire("training run")
            remove_stale_temporaries(self.out)
        restarted = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0"   # torchrun brought us back
        resume = resume or (restarted and (self.out / "last.safetensors").is_file())
        if not resume and (self.out / "last.safetensors").is_file():
            raise VggnetError(f"{self.out} already holds a run (last.safetensors): add --resume to continue it, "
                              "or choose another --out")
        runtime.fast_cpu_defaults()
        self.precision = runtime.resolve_precision(self.r.precision, self.world.device)   # what runs here
        torch.manual_seed(s.seed)
        random.seed(s.seed)
        self.gen = torch.Generator().manual_seed(s.seed + 1)   # permutation and augmentation
        self._load_data()
        self._build_model()
        self.schedule.steps_per_epoch = max(1, len(self.train) // self.r.batch_size)
        self.state = TrainState()
        self.stop_requested, self.steps_this_process, self.started = False, 0, time.monotonic()
        self.progress = Progress(self.world.main, s.log_every)
        self._check_memory()
        if resume:
            self.load_checkpoint(self.out / "last.safetensors")
        self.board = RunBoard(self.out, self.world.main, self.progress.say, self.state.step if resume else None)

    def _load_data(self) -> None:
        """The three loaders, and the model's description from the training set's statistics."""
        (self.train, self.val, self.test), self.spec = run_data(self.s, self.world, self.gen, self.out)

    def _build_model(self) -> None:
        """The model (warm-started if asked), DDP around it under torchrun, and the optimizer."""
        s, r = self.s, self.r
        self.model = pretrained_model(s.pretrained, self.spec) if s.pretrained else self.spec.build(init=r.init)
        self.model.checkpoint_activations = s.checkpoint_activations
        if s.init_from:
            warm_start(self.model, s.init_from)
        self.frozen = frozen_modules(self.model, s.freeze_until)    # fine-tuning: fixed layers, BN in eval mode
        freeze(self.frozen)
        if s.sync_bn and self.world.size > 1:
            convert_sync_batchnorm(self.model, cuda=self.world.device.startswith("cuda"))
        self.model = self.model.to(self.world.device, memory_format=torch.channels_last)
        self.net: torch.nn.Module = self.model    # what the step runs: the model, or DDP around it
        self.ema = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(r.ema), use_buffers=True)
                    if r.ema else None)
        if self.world.size > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(self.model)
        if s.compile:   # the step's forward and backward through TorchInductor; evaluation stays eager
            self.net = torch.compile(self.net)
        self.opt = make_optimizer(self.model, r, s.backbone_lr_scale if s.pretrained else 1.0)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")   # fp16 needs loss scaling

    def _check_memory(self) -> None:
        """Refuse, before the first step, a batch whose activations cannot fit the memory
        left on the device (the kernel would kill the run without a word; 3.1's batch of 256
        at 224 px needs about 25 GB), naming the --micro-batch that fits; warn where it may not
        fit. VGGNET_SKIP_MEMORY_CHECK=1 skips it (BENCHMARKS 22 has the estimate's basis)."""
        available = runtime.available_memory(self.world.device)
        if available is None or os.environ.get("VGGNET_SKIP_MEMORY_CHECK"):
            return
        r, cpu = self.r, self.world.device == "cpu"
        sharing = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if cpu else 1   # torchrun ranks share the RAM
        shard = -(-min(r.batch_size, len(self.train)) // self.world.size)    # a rank's images per step
        images = min(r.micro_batch, shard) if r.micro_batch else shard
        need = lambda n: [b * sharing for b in step_memory(self.spec, n, self.precision, 4 + (r.ema > 0))]  # noqa: E731
        low, high = need(images)
        if high <= available:
            return
        fits = [m for m in (256, 128, 64, 32, 16, 8, 4, 2, 1) if m < images and need(m)[1] <= 0.9 * available]
        bn = "; BN then normalises over each pass" if self.spec.batch_norm else ""
        advice = (f"--micro-batch {fits[0]} (the same batch of {r.batch_size}, in passes of {fits[0]} images{bn}) "
                  "or a smaller --batch-size" if fits else
                  "a smaller --crop-size or --width (not even one image at a time fits)")
        what = (f"a training step of {images} images at {self.spec.input_size} px needs {{}} GiB on "
                f"{self.world.device}, {available / 2**30:.1f} GiB is available")
        if low > available:
            raise VggnetError(f"{what.format(f'at least {low / 2**30:.1f}')}: give {advice} "
                              "(VGGNET_SKIP_MEMORY_CHECK=1 skips this check)")
        self.progress.say(f"warning: {what.format(f'up to {high / 2**30:.1f}')}; if the run is killed, give {advice}")

    def _check_out_dir(self) -> None:
        """Fail before training, not after the first epoch, if the run folder is not writable."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / f".write-test-{self.world.rank}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise VggnetError(f"output folder {self.out} is not writable: {exc.strerror or exc}") from None

    @property
    def eval_model(self) -> VGG:
        """What validation, test and the checkpoints' ``model.`` weights use: the moving
        average of the weights when the recipe keeps one, else the trained weights."""
        return self.ema.module if self.ema is not None else self.model

    # ---- one step, one epoch -------------------------------------------------
    def _should_stop(self) -> bool:
        """A step or time limit, Ctrl-C or SIGTERM; under torchrun, any rank's stop stops all."""
        s = self.s
        stop = (bool(s.stop_after_steps) and self.steps_this_process >= s.stop_after_steps) or self.stop_requested
        stop = stop or bool(s.time_limit_min and time.monotonic() - self.started > 60 * s.time_limit_min)
        if self.world.size > 1:
            flag = self.world.tensor([float(stop)])
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            stop = bool(flag.item())
        return stop

    def train_epoch(self) -> dict[str, float] | None:
        """One pass over the training set (or the rest of it, after a mid-epoch resume);
        None when stopped early, with the position kept for the checkpoint."""
        self.model.train()
        freeze(self.frozen)
        st, bs, steps = self.state, self.r.batch_size, self.schedule.steps_per_epoch
        st.start_epoch(len(self.train), self.gen)
        p = st.partial     # the epoch so far, across a stop and --resume (its time too, for metrics.jsonl)
        start, data_time, seen_here = time.perf_counter(), p["data_s"], 0
        fetched = start
        self.progress.start_epoch(st.epoch + 1, self.r.epochs, st.batch_in_epoch, steps)
        assert st.perm is not None
        batches = self.train.train_batches(st.perm[st.batch_in_epoch * bs:steps * bs], bs, st.epoch)
        for i in range(st.batch_in_epoch, steps):
            if self._should_stop():     # before the batch is augmented: its randomness stays unspent
                self.progress.close()
                p["time_s"], p["data_s"] = p["time_s"] + time.perf_counter() - start, data_time
                return None
            x, y, global_batch = next(batches)
            data_time += time.perf_counter() - fetched    # reading the batch and augmenting it
            lr = self.schedule.lr_at(st.step)
            for g in self.opt.param_groups:
                g["lr"] = lr * g["lr_scale"]
            try:
                loss, logits = forward_backward(self.net, x, y, self.r.micro_batch, self.r.label_smoothing,
                                                self.precision, global_batch, self.world.size, self.scaler)
            except RuntimeError as exc:     # torch.OutOfMemoryError is one
                if not runtime.is_out_of_memory(exc):
                    raise
                raise VggnetError(f"out of memory in a training step of {len(y)} images at {x.shape[-1]} px on "
                                  f"{self.world.device}: give --micro-batch {max(1, len(y) // 4)} or a smaller "
                                  "--batch-size; the run folder keeps its last checkpoint") from None
            if not torch.isfinite(loss):
                last = self.out / "last.safetensors"
                where = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written yet"
                raise DivergedError(f"loss is {loss.item()} at epoch {st.epoch + 1}, step {i + 1}, "
                                    f"lr {lr:.3g}; {where} (a lower --lr, or --precision fp32, may help)")
            self.scaler.step(self.opt)      # the plain step unless fp16 scales the loss
            self.scaler.update()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            st.step, st.batch_in_epoch, self.steps_this_process = st.step + 1, i + 1, self.steps_this_process + 1
            p["loss_sum"] += loss.item() * len(y)
            p["correct"] += (logits.argmax(1) == y).sum().item()
            p["seen"] += len(y)
            seen_here += len(y)
            now = time.perf_counter()
            self.progress.step(i, now - fetched, p, lr, seen_here / (now - start), self.remaining())
            if st.step % self.s.log_every == 0:
                self.board.step(st.step, p, lr, seen_here / (now - start))
            fetched = now
        st.perm = None
        return self._epoch_stats(p["time_s"] + time.perf_counter() - start, data_time)

    def _epoch_stats(self, elapsed: float, data_time: float) -> dict[str, float]:
        """The epoch's loss and accuracy over every rank's shard, its time and speed."""
        p = self.state.partial
        if self.world.size > 1:
            totals = self.world.tensor([p["loss_sum"], p["correct"], p["seen"]], torch.float64)
            torch.distributed.all_reduce(totals)
            p = dict(zip(("loss_sum", "correct", "seen"), totals.tolist()))
        return {"train_loss": p["loss_sum"] / max(p["seen"], 1), "train_acc": p["correct"] / max(p["seen"], 1),
                "train_time_s": elapsed, "data_time_s": data_time, "images_per_s": p["seen"] / elapsed,
                "lr": self.schedule.lr}

    @torch.no_grad()
    def predict(self, data: object, batch_size: int = 500, model: VGG | None = None) -> torch.Tensor:
        """Logits of ``model`` (default: :attr:`eval_model`) for a whole loader's images at the
        single test scale (3.2); with the recipe's tta_flip, averaged with the mirror image."""
        model = (model or self.eval_model).eval()
        out = []
        mine = torch.arange(len(data))[shard(len(data), self.world)]   # each rank scores its part
        for x, _ in data.eval_batches(mine, batch_size):
            with runtime.autocast(self.precision, self.world.device):
                logits = model(x).float()
                if self.r.tta_flip:
                    logits = (logits + model(x.flip(-1)).float()) / 2
            out.append(logits)
        return gather(torch.cat(out), self.world)     # on the CPU

    # ---- the run ----------------------------------------------------------------
    def fit(self) -> dict:
        """Train to the end of the schedule (or a stop), then report on the test set."""
        self._write_run_json()
        self.progress.header(self)
        if self.r.precision == "bf16" and self.precision == "fp32":
            self.progress.say("bf16 autocast asked for, but this CPU has no native bf16 (AVX-512 BF16 or AMX): "
                              "training in fp32 (run.json: machine.bf16_native is false)")
        previous = _install_stop_handlers(self._on_signal)
        started = time.perf_counter()
        try:
            while not self.schedule.finished(self.state.epoch):
                stats = self.train_epoch()
                if stats is None:  # stopped mid-epoch: keep the exact position
                    result = self._stopped()
                    break
                self._end_epoch(stats)
            else:
                result = final_report(self)
                result["time_s"] = time.perf_counter() - started
            self.progress.say(summary(result, self.out))
            return result
        finally:
            self.board.flush()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _end_epoch(self, stats: dict) -> None:
        """Validate, let the schedule react, checkpoint, log one line."""
        st = self.state
        st.epoch += 1
        t0 = time.perf_counter()
        if len(self.val):
            logits = self.predict(self.val)
            val_acc, val_loss = accuracy(logits, self.val.labels), F.cross_entropy(logits, self.val.labels).item()
            stats.update(val_loss=val_loss)
        else:       # no hold-out: the schedule and the best checkpoint follow the training accuracy
            val_acc = stats["train_acc"]
        stats.update(epoch=st.epoch, val_acc=val_acc, eval_time_s=time.perf_counter() - t0)
        if self.schedule.budget_min and st.epoch == 1:
            self.fit_to_budget(stats["train_time_s"] + stats["eval_time_s"])
        is_best = self.schedule.after_epoch(val_acc)
        st.history.append(stats)
        st.best_epoch = st.epoch if is_best else st.best_epoch
        commit_epoch(self, is_best)     # last, best, metrics.jsonl: in the order --resume repairs from
        self.progress.end_epoch(stats, self.remaining())
        self.board.epoch(stats)

    def remaining(self) -> tuple[int, int]:
        """(steps, epochs) left to the end of the schedule's length."""
        st, steps = self.state, self.schedule.steps_per_epoch
        in_epoch = st.batch_in_epoch if st.perm is not None else 0     # an epoch under way
        return max(0, (self.r.epochs - st.epoch) * steps - in_epoch), self.r.epochs - st.epoch

    def _stopped(self) -> dict:
        self.save_checkpoint(self.out / "last.safetensors")
        st = self.state
        return {"stopped": True, "epoch": st.epoch, "step": st.step, "batch_in_epoch": st.batch_in_epoch}

    def fit_to_budget(self, epoch_s: float) -> None:
        """Set the schedule's length to the epochs that fit the budget at epoch 1's pace (the slowest rank's)."""
        if self.world.size > 1:
            pace = self.world.tensor([epoch_s])
            torch.distributed.all_reduce(pace, op=torch.distributed.ReduceOp.MAX)
            epoch_s = pace.item()
        epochs = self.schedule.fit_to_budget(epoch_s)
        self._write_run_json()
        if self.world.main:
            self.progress.say(f"budget {self.schedule.budget_min:g} min: epoch 1 took {epoch_s:.1f} s, so {epochs} epochs")

    def close(self) -> None:
        """The event file closed, the process group left, the run folder unlocked."""
        self.board.close()
        teardown(self.world)
        self.lock.release()

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop_requested = True

    # ---- checkpoints ---------------------------------------------------------------
    def metadata(self) -> ModelSpec:
        """The model's description with the recipe now in force."""
        return dataclasses.replace(self.spec, recipe=dataclasses.asdict(self.r))

    def settings(self) -> RunSettings:
        """The run's settings with the recipe now in force (a budget sets its epochs)."""
        return dataclasses.replace(self.s, recipe=self.r, budget_min=self.schedule.budget_min)

    def _write_run_json(self) -> None:
        if not self.world.main:
            return
        write_text_atomic(self.out / "run.json", json.dumps({"settings": self.settings().to_dict(),
                                                             "model": self.metadata().to_dict(),
                                                             "precision": self.precision,
                                                             "machine": runtime.machine(self.world.device)},
                                                            indent=2))

    def save_checkpoint(self, path: Path) -> None:
        save_training_checkpoint(self, path)

    def load_checkpoint(self, path: Path) -> None:
        resume_training_checkpoint(self, path)


def param_groups(model: torch.nn.Module, weight_decay: float, decay_norm_and_bias: bool,
                 backbone_lr_scale: float = 1.0) -> list[dict]:
    """Weight decay on conv/FC weights, BN parameters and biases (1-d tensors) optionally
    spared; fine-tuning's pretrained layers at ``backbone_lr_scale`` times the lr of the new
    head (fc8); frozen parameters left out."""
    head = {id(p) for p in model.classifier[6].parameters()} if backbone_lr_scale != 1.0 else set()
    groups: dict[tuple[bool, float], list] = {}
    for p in model.parameters():
        if p.requires_grad:
            spared = p.ndim <= 1 and not decay_norm_and_bias
            groups.setdefault((spared, 1.0 if id(p) in head or not head else backbone_lr_scale), []).append(p)
    return [{"params": ps, "weight_decay": 0.0 if spared else weight_decay, "lr_scale": scale}
            for (spared, scale), ps in sorted(groups.items())]


def make_optimizer(model: torch.nn.Module, recipe: Recipe, backbone_lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """The recipe's optimizer: SGD with momentum (3.1), optionally Nesterov's."""
    if recipe.optimizer != "sgd":
        raise VggnetError(f"unknown optimizer {recipe.optimizer!r} in recipe {recipe.name!r}; valid: sgd")
    return torch.optim.SGD(param_groups(model, recipe.weight_decay, recipe.decay_norm_and_bias, backbone_lr_scale),
                           lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov)


def forward_backward(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, micro_batch: int,
                     label_smoothing: float, precision: str, global_batch: int = 0, world_size: int = 1,
                     scaler: torch.amp.GradScaler | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the mean loss over the global batch, accumulated over micro-batches of
    ``micro_batch`` examples (0: one pass), so the paper's batch of 256 fits any memory.
    Under DDP (which averages over ranks) each rank's loss is weighted by its share."""
    for p in model.parameters():
        p.grad = None
    size, scale = micro_batch or len(y), world_size / (global_batch or len(y))
    chunks = list(zip(x.split(size), y.split(size)))
    total, all_logits = torch.zeros((), device=x.device), []
    for j, (xc, yc) in enumerate(chunks):
        last = j == len(chunks) - 1
        sync = model.no_sync() if hasattr(model, "no_sync") and not last else contextlib.nullcontext()
        with sync, runtime.autocast(precision, x.device):
            logits = model(xc)
            loss = F.cross_entropy(logits.float(), yc, label_smoothing=label_smoothing) * (len(yc) * scale)
            if not torch.isfinite(loss):
                return loss.detach(), logits.detach()
            (scaler.scale(loss) if scaler is not None else loss).backward()
        total += loss.detach()
        all_logits.append(logits.detach())
    return total, torch.cat(all_logits)


def _install_stop_handlers(handler: Callable) -> dict:
    """Ctrl-C and SIGTERM ask the loop to checkpoint and stop at the next step (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}


def train(settings: RunSettings | None = None, *, resume: bool = False, **options: object) -> dict:
    """Train one run end to end: the Python API behind ``vggnet train``. Give RunSettings, or
    options as keywords (``config="vgg11_bn", data="photos", epochs=4``: RunSettings and
    recipe fields, ``recipe="paper"``), resolved by the same rules as the command line."""
    if settings is None:
        settings = resolve_settings(resume=resume, **options)
    elif options:
        raise VggnetError("give RunSettings or keyword options, not both")
    trainer = Trainer(settings, resume=resume)
    try:
        return trainer.fit()
    finally:
        trainer.close()
