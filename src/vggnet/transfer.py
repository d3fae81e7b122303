"""Transfer learning, the most common use of VGG: pretrained weights (torchvision's or
Keras's through ``vggnet convert``, or any vggnet run) fitted to one's own image folder.

The net keeps its weights' configuration, preprocessing (mean, std, channel order) and
input size; its last layer, fc8, is replaced for the folder's classes. Two modes, the two
of the Keras and PyTorch transfer-learning tutorials:

- ``full``: the ordinary trainer (:mod:`vggnet.training`) with the ``finetune`` recipe: the
  pretrained layers at ``backbone_lr_scale`` times the new head's learning rate, after a
  warm-up; ``freeze_until`` keeps the layers up to that one fixed (BN in eval mode).
- ``linear``: the net frozen up to pool5 or fc7; every image goes through it once (bf16
  where the CPU has it) and the features are cached on disk, keyed by the weights, the
  image listing and the preprocessing; the head then trains on the cache in seconds.

Either way the result is an ordinary run folder whose weights ``vggnet eval``, ``predict``,
``export`` and ``finetune`` read unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import runtime
from .data import StreamingImages, cache_dir, read_cached, write_cached
from .distributed import World
from .errors import VggnetError
from .checkpoint import write_metrics
from .files import FolderLock, file_digest, remove_stale_temporaries, write_text_atomic
from .loader import run_data
from .model import VGG
from .plots import confusion_figure
from .progress import summary
from .report import accuracy, confusion_matrix, write_report
from .schedule import onecycle_lr
from .settings import RunSettings
from .tensorboard_log import RunBoard
from .weights import ModelSpec, load_weights, write_checkpoint

MODES = ("full", "linear")
CUTS = ("pool5", "fc7")   # where the linear mode's frozen part ends


# ---- the pretrained net with a new head ------------------------------------------------------
def pretrained_model(weights: str | Path, spec: ModelSpec) -> VGG:
    """The net of ``weights`` with every layer copied and fc8 replaced for ``spec``'s classes,
    drawn from N(0, 0.01) as the paper initialises a new layer (3.1)."""
    model, _ = load_weights(weights)
    old = model.classifier[6]
    if isinstance(old, nn.Conv2d):    # a dense head's fc8 is a 1x1 conv
        new: nn.Module = nn.Conv2d(old.in_channels, spec.num_classes, kernel_size=1)
    else:
        new = nn.Linear(old.in_features, spec.num_classes)
    nn.init.normal_(new.weight, 0.0, 0.01)
    nn.init.zeros_(new.bias)
    model.classifier[6] = new
    model.num_classes = spec.num_classes
    return model.train()


def frozen_modules(model: VGG, until: str | None) -> list[nn.Module]:
    """The modules from the input up to and including layer ``until`` ("conv4_3", "pool5",
    "fc7" ...), which fine-tuning keeps fixed; fc8 is the new head and cannot be frozen."""
    if until is None:
        return []
    names = [n for n in model.layer_names() if n != "fc8"]
    if until not in names:
        raise VggnetError(f"--freeze-until {until!r} is not a layer of VGG-{model.config}; valid: {', '.join(names)}")
    if until in model.feature_names:
        return list(model.features[:model.feature_names[until] + 1])
    return list(model.features) + list(model.classifier[:{"fc6": 2, "fc7": 5}[until]])


def freeze(modules: list[nn.Module]) -> None:
    """No gradients and eval mode (BN statistics and dropout fixed) for ``modules``."""
    for m in modules:
        m.eval()
        m.requires_grad_(False)


# ---- the linear mode: features once, then the head --------------------------------------------
class Backbone(nn.Module):
    """The frozen part of a VGG up to ``cut``: pool5 (pooled and flattened as the head reads
    it) or fc7 (after its ReLU)."""

    def __init__(self, model: VGG, cut: str) -> None:
        super().__init__()
        self.model, self.cut = model.eval(), cut

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        h = m.forward_features(x)
        h = h if m.head == "dense" else torch.flatten(m.avgpool(h), 1)
        return m.classifier[:5](h) if self.cut == "fc7" else h


def head_of(model: VGG, cut: str) -> nn.Sequential:
    """What trains on the cached features: fc8 on fc7 features; fc6-fc8 on pool5 features."""
    return model.classifier[5:] if cut == "fc7" else model.classifier


def cached_features(backbone: Backbone, loaders: dict, key: str, batch_size: int = 64,
                    precision: str = "bf16") -> dict[str, torch.Tensor]:
    """{"train", "train_labels", "val", ...} features of every split, computed once (bf16
    autocast where the device runs it) and kept as safetensors in the data cache under ``key``."""
    path = cache_dir() / f"features-{key}.safetensors"
    cached = read_cached(path, tuple(loaders) + tuple(f"{split}_labels" for split in loaders))
    if cached is not None:
        return cached
    out: dict[str, torch.Tensor] = {}
    for split, loader in loaders.items():
        feats = []
        order = torch.arange(len(loader))
        with tqdm(total=len(loader), desc=f"features {split}", unit="img", disable=None) as bar:
            for x, _ in loader.eval_batches(order, batch_size):
                with runtime.autocast(precision, x.device):
                    feats.append(backbone(x).float().cpu())
                bar.update(len(x))
        out[split] = torch.cat(feats) if feats else torch.zeros(0)
        out[f"{split}_labels"] = loader.labels
    write_cached(path, out)
    return out


@dataclasses.dataclass
class LinearRun:
    """What a linear fine-tuning run trains with: cached features, the head, its settings."""

    features: dict[str, torch.Tensor]
    head: nn.Module
    epochs: int
    lr: float
    batch_size: int = 64
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    seed: int = 0

    def train_head(self) -> tuple[list[dict], dict | None]:
        """SGD with Nesterov momentum, one-cycle schedule (a warm-up epoch); the metrics of
        every epoch (metrics.jsonl's lines) and the state of the best-validation head."""
        x, y = self.features["train"], self.features["train_labels"]
        steps = max(1, -(-len(y) // self.batch_size))
        opt = torch.optim.SGD(self.head.parameters(), lr=self.lr, momentum=0.9, nesterov=True,
                              weight_decay=self.weight_decay)
        gen = torch.Generator().manual_seed(self.seed + 1)
        rows, best, best_val = [], None, -1.0
        for epoch in range(self.epochs):
            t0, perm = time.perf_counter(), torch.randperm(len(y), generator=gen)
            self.head.train()
            loss_sum = correct = 0.0
            for i in range(steps):
                lr = onecycle_lr(epoch * steps + i, self.epochs * steps, steps, self.lr)
                for g in opt.param_groups:
                    g["lr"] = lr
                idx = perm[i * self.batch_size:(i + 1) * self.batch_size]
                logits = self.head(x[idx])
                loss = F.cross_entropy(logits, y[idx], label_smoothing=self.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.item() * len(idx)
                correct += (logits.argmax(1) == y[idx]).sum().item()
            train_acc = correct / len(y)
            val_acc = self.accuracy("val") if len(self.features["val_labels"]) else train_acc
            rows.append({"epoch": epoch + 1, "train_loss": loss_sum / len(y), "train_acc": train_acc,
                         "val_acc": val_acc, "lr": lr, "train_time_s": time.perf_counter() - t0})
            if val_acc > best_val:
                best_val, best = val_acc, {k: v.clone() for k, v in self.head.state_dict().items()}
        return rows, best

    @torch.no_grad()
    def logits(self, split: str) -> torch.Tensor:
        self.head.eval()
        return self.head(self.features[split])

    def accuracy(self, split: str) -> float:
        return accuracy(self.logits(split), self.features[f"{split}_labels"])


def linear_finetune(settings: RunSettings, cut: str = "fc7") -> dict:
    """The linear mode end to end: features cached, head trained, an ordinary run folder written."""
    if cut not in CUTS:
        raise VggnetError(f"--features must be one of {', '.join(CUTS)}; got {cut!r}")
    s = settings.resolved()
    out = Path(s.out)
    if (out / "last.safetensors").is_file():
        raise VggnetError(f"{out} already holds a run (last.safetensors): choose another --out")
    torch.manual_seed(s.seed)
    runtime.set_threads(s.threads)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(out).acquire("fine-tuning run")
    remove_stale_temporaries(out)
    try:
        return _linear_run(s, out, cut)
    except BaseException:   # nothing here resumes (the features stay cached): no half-written folder left
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        lock.release()


def _linear_run(s: RunSettings, out: Path, cut: str) -> dict:
    """Features, head, report: the linear mode's steps, in a folder already locked."""
    device = runtime.resolve_device(s.device)
    runtime.use_device(device)
    (train, val, test), spec = run_data(s, World(device=str(device)), torch.Generator().manual_seed(s.seed + 1), out)
    model = pretrained_model(s.pretrained, spec).to(device)
    if cut == "fc7" and model.head == "dense":
        raise VggnetError("a dense-head net has no fc7 vector; use --features pool5")
    key = hashlib.sha256(json.dumps([file_digest(Path(s.pretrained)), listing_key(train, val, test),
                                     dataclasses.asdict(spec.preprocessing), cut, runtime.bf16_supported()]
                                    ).encode()).hexdigest()[:20]
    t0 = time.perf_counter()
    precision = runtime.resolve_precision(s.recipe.precision, device)
    features = cached_features(Backbone(model, cut), {"train": train, "val": val, "test": test}, key, 64, precision)
    feature_s = time.perf_counter() - t0
    model.cpu()          # the head trains on the cached features, in seconds on any CPU
    write_text_atomic(out / "run.json", json.dumps({"settings": s.to_dict(), "mode": "linear", "features": cut,
                                              "model": spec.to_dict(), "machine": runtime.machine()}, indent=2))
    r = s.recipe
    run = LinearRun(features, head_of(model, cut), r.epochs, r.lr, r.batch_size, r.weight_decay, r.label_smoothing,
                    s.seed)
    rows, best = run.train_head()
    write_metrics(out / "metrics.jsonl", rows)      # seconds of training: written once, whole
    board = RunBoard(out, True, print)
    for row in rows:
        board.epoch(row)
    final = run.logits("test")
    result = {"final_test_acc": accuracy(final, features["test_labels"]), "epochs": r.epochs, "mode": "linear",
              "features": cut, "feature_time_s": feature_s, "head_time_s": sum(x["train_time_s"] for x in rows)}
    save_run(out, model, spec, "last.safetensors")
    if best is not None:
        run.head.load_state_dict(best)
        result.update(best_val_test_acc=run.accuracy("test"), best_val_acc=max(x["val_acc"] for x in rows))
        save_run(out, model, spec, "best.safetensors")
    confusion = confusion_matrix(final.argmax(1), features["test_labels"], spec.num_classes)
    result["per_class_acc"] = dict(zip(spec.class_names, (confusion.diag() / confusion.sum(1).clamp(min=1)).tolist()))
    write_report(out, result, confusion, spec.class_names)
    board.final(result, s, confusion_figure(confusion, spec.class_names), torch.zeros(0), [], None)
    board.close()
    result["time_s"] = time.perf_counter() - t0
    print(summary(result, out))
    return result


LINEAR_EPOCHS = 100   # epochs on cached features cost seconds
MIN_STEPS = 200       # small folders: enough steps for the new head to settle (10 images a class: 36 per epoch)


def default_epochs(settings: RunSettings, epochs: int) -> int:
    """``epochs``, or more where the folder is so small that they would make under
    :data:`MIN_STEPS` steps: 10 photos of 4 classes are one step an epoch."""
    from .data import holdout_size, list_image_folder
    if settings.data is None or not (Path(settings.data) / "train").is_dir():
        return epochs                # an archive: CIFAR-size, never small
    items, _ = list_image_folder(Path(settings.data) / "train")
    n = min(len(items), settings.limit_train or len(items))
    n -= holdout_size(settings.val_size, n)
    steps = max(1, n // settings.recipe.batch_size)
    return max(epochs, -(-MIN_STEPS // steps))


def listing_key(*loaders: object) -> list:
    """What identifies the images of each split: their files, or a hash of their pixels in memory
    (hashed in place, no copy of the data set)."""
    key = []
    for loader in loaders:
        data = loader.data
        if isinstance(data, StreamingImages):
            key.append([str(p) for p, _ in data.items])
        else:
            key.append([hashlib.sha1(data.images.cpu().contiguous().numpy()).hexdigest(), data.labels.tolist()])
    return key


def save_run(out: Path, model: VGG, spec: ModelSpec, name: str) -> None:
    write_checkpoint(out / name, {f"model.{k}": v for k, v in model.state_dict().items()}, {"model": spec.to_dict()})


def finetune(weights: str | Path, data: str | Path | None = None, *, mode: str = "full", features: str = "fc7",
             **options: object) -> dict:
    """Fit pretrained ``weights`` to the image folder ``data`` (the Python API behind
    ``vggnet finetune``): ``mode`` "full" (the trainer, pretrained layers at
    ``backbone_lr_scale`` of the head's lr, ``freeze_until`` a layer) or "linear" (a head on
    cached ``features``: "fc7" or "pool5"). Other options as ``vggnet.train``'s: epochs, lr,
    batch_size, out, seed, val_size, limit_train ..."""
    from .settings import resolve_settings
    from .training import train
    if mode not in MODES:
        raise VggnetError(f"--mode must be one of {', '.join(MODES)}; got {mode!r}")
    if mode == "linear" and options.get("freeze_until") is not None:
        raise VggnetError("--freeze-until is for --mode full; --mode linear freezes up to --features")
    resume = bool(options.pop("resume", False))
    settings = resolve_settings(resume=resume, pretrained=str(weights), data=None if data is None else str(data),
                                recipe=None if resume else "finetune", **options)
    if not resume and options.get("epochs") is None:
        settings = dataclasses.replace(settings, recipe=settings.recipe.replace(
            epochs=default_epochs(settings, LINEAR_EPOCHS if mode == "linear" else settings.recipe.epochs)))
    if mode == "linear":
        if options.get("out") is None:
            settings = dataclasses.replace(settings, out=settings.out.replace("-finetune", "-linear"))
        return linear_finetune(settings, features)
    return train(settings, resume=resume)
