"""Testing as the paper did (section 3.2, Tables 3-6): top-1/top-5 error under
single-scale, dense, multi-scale, multi-crop and combined protocols, and ensembles.

Every protocol averages softmax posteriors. Images of any size are read one by one
(consecutive images of the same size are batched), rescaled isotropically so that
the smaller side is Q, and then cropped or, for dense evaluation, fed whole to the
fully convolutional form of the net.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import runtime
from .configs import PAPER_TABLE, PROTOCOLS
from .data import IMAGE_EXTENSIONS, DataError, read_image
from .errors import VggnetError
from .inference import InferenceNet
from .model import VGG, to_dense
from .preprocess import Preprocessing, eval_scales, rescale
from .summary import score_memory
from .weights import MAX_INPUT, ModelSpec, load_weights



# ---- image operations -------------------------------------------------------------
def grid_crops(x: torch.Tensor, size: int, n: int = 5) -> torch.Tensor:
    """(B, 3, H, W) -> (B, n*n, 3, size, size): a regular n x n grid of crops whose
    outer crops touch the corners (section 3.2: 5x5 grid per scale)."""
    h, w = x.shape[-2:]
    tops = torch.linspace(0, h - size, n).round().long().tolist()
    lefts = torch.linspace(0, w - size, n).round().long().tolist()
    return torch.stack([x[..., t:t + size, l:l + size] for t in tops for l in lefts], dim=1)


# ---- one model, prepared for evaluation --------------------------------------------
@dataclass
class EvalModel:
    """A model with its dense form, description, preprocessing and test scales; ``net`` and
    ``dense_net`` score at the chosen precision (fp32 until :meth:`use_precision`)."""

    model: VGG
    meta: ModelSpec
    dense: VGG = field(init=False)
    preprocess: Preprocessing = field(init=False)
    precision: str = field(init=False, default="fp32")

    def __post_init__(self) -> None:
        self.model.eval()
        self.dense = to_dense(self.model).eval()
        self.preprocess = self.meta.preprocessing
        self._nets: tuple[InferenceNet, InferenceNet] | None = None   # built on first use, once

    @property
    def crop(self) -> int:
        return self.preprocess.crop

    @property
    def net(self) -> InferenceNet:
        return self._scoring_nets()[0]

    @property
    def dense_net(self) -> InferenceNet:
        return self._scoring_nets()[1]

    def _scoring_nets(self) -> tuple[InferenceNet, InferenceNet]:
        """(net, dense net) at the current precision, built on first use."""
        if self._nets is None:
            self.use_precision(self.precision)
        assert self._nets is not None
        return self._nets

    def use_precision(self, precision: str, calibration: torch.Tensor | None = None,
                      compile: bool = False, device: torch.device | str = "cpu") -> "EvalModel":
        """Score in fp32, bf16, fp16 (GPUs) or int8 (CPUs; BN folded in each case) on ``device``;
        int8 fixes its activation ranges on ``calibration``, uint8 images at the crop size (see
        :func:`calibration_images`); ``compile`` torch.compiles both scoring nets (:class:`InferenceNet`)."""
        if precision == "int8" and calibration is None:
            raise VggnetError("int8 needs calibration images")
        batches = [self.prepare(c) for c in calibration.split(64)] if calibration is not None else []
        self._nets = (InferenceNet(self.model, precision, batches, compile, device),
                      InferenceNet(self.dense, precision, batches, compile, device))
        self.precision = precision
        return self

    def scales(self) -> tuple[int, list[int]]:
        """(single-scale Q, the three multi-scale Qs) of section 4.2 (see preprocess.eval_scales)."""
        return eval_scales(self.crop, self.meta.train_scale)

    def chosen_scales(self, scales: list[int] | None) -> tuple[int, list[int]]:
        """(Q, multi-scale Qs): given ``scales`` (the middle one is Q), else from training."""
        if scales:
            return scales[len(scales) // 2], list(scales)
        return self.scales()

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 RGB -> the model's input: channel order, mean subtraction, std division."""
        return self.preprocess.normalize(x)

    @torch.no_grad()
    def softmax(self, net: InferenceNet, x: torch.Tensor, chunk: int = 128) -> torch.Tensor:
        """Posteriors of ``x``, scored ``chunk`` images at a time or fewer: as many as the
        memory left holds (the same numbers, since scoring is per image)."""
        chunk = min(chunk, self.images_that_fit(x.shape[-2], x.shape[-1], net.device))
        return torch.cat([F.softmax(net(self.prepare(x[i:i + chunk])).float(), dim=1)
                          for i in range(0, len(x), chunk)])

    def images_that_fit(self, height: int, width: int, device: torch.device) -> int:
        """How many images of this size one pass may score in half the memory left on the
        device (BENCHMARKS 22); VggnetError when not even one fits in 90 % of it."""
        available = runtime.available_memory(device)
        if available is None:
            return 1 << 30
        one = score_memory(self.meta, height, width, self.precision)
        if one > 0.9 * available:
            raise VggnetError(f"scoring one {height}x{width} image needs about {one / 2**30:.1f} GiB, "
                              f"{available / 2**30:.1f} GiB is available on {device}: give smaller --scales")
        return max(1, available // 2 // one)

    def single(self, images: torch.Tensor, q: int) -> torch.Tensor:
        """Rescale to Q, centre crop (Table 3's single-scale crop)."""
        return self.softmax(self.net, dataclasses.replace(self.preprocess, resize=q).crop_images(images))

    def dense_eval(self, images: torch.Tensor, qs: list[int]) -> torch.Tensor:
        """Section 3.2: the whole image through the fully convolutional net, the score map
        averaged, for the image and its mirror, at every Q; posteriors averaged."""
        outs = []
        for q in qs:
            x = rescale(images, q)
            outs += [self.softmax(self.dense_net, x, chunk=32), self.softmax(self.dense_net, x.flip(-1), chunk=32)]
        return torch.stack(outs).mean(0)

    def multi_crop(self, images: torch.Tensor, qs: list[int]) -> torch.Tensor:
        """Section 4.3: 5x5 crops x 2 flips per scale (50), three scales (150), averaged."""
        b, outs = len(images), []
        for q in qs:
            crops = grid_crops(rescale(images, q), self.crop).flatten(0, 1)        # (B*25, 3, c, c)
            crops = torch.cat([crops, crops.flip(-1)])                              # (2*B*25, ...)
            outs.append(self.softmax(self.net, crops).view(2, b, 25, -1).mean(dim=(0, 2)))
        return torch.stack(outs).mean(0)

    def posteriors(self, images: torch.Tensor, protocols: list[str], scales: list[int] | None,
                   part: int = 32) -> dict[str, torch.Tensor]:
        """{protocol: (B, classes) averaged softmax}; combined protocols reuse their parts.
        ``part`` images at a time: every protocol rescales its images whole, GBs at a large Q."""
        if len(images) > part:
            parts = [self.posteriors(x, protocols, scales, part) for x in images.split(part)]
            return {p: torch.cat([r[p] for r in parts]) for p in protocols}
        q, multi = self.chosen_scales(scales)
        parts: dict[str, torch.Tensor] = {}
        need = set(protocols)
        if "single" in need:
            parts["single"] = self.single(images, q)
        if "dense" in need:
            parts["dense"] = self.dense_eval(images, [q])
        if need & {"multi-scale", "dense+multi-crop"}:
            parts["multi-scale"] = self.dense_eval(images, multi)
        if need & {"multi-crop", "dense+multi-crop"}:
            parts["multi-crop"] = self.multi_crop(images, multi)
        if "dense+multi-crop" in need:
            parts["dense+multi-crop"] = (parts["multi-scale"] + parts["multi-crop"]) / 2
        return {p: parts[p] for p in protocols}


# ---- data -----------------------------------------------------------------------------
def label_index(meta: ModelSpec) -> dict[str, int]:
    """Names a folder or file prefix may use for each class of the model: wnids and names."""
    index: dict[str, int] = {}
    for names in (meta.classes, meta.wnids):
        for i, name in enumerate(names or []):
            index.setdefault(name, i)
    return index


def list_labelled_images(root: Path, meta: ModelSpec) -> list[tuple[Path, int]]:
    """(image, class index of the model) for ``root/<class>/*`` or for a flat folder of
    ``<wnid>_<anything>.JPEG`` files; a data set root with ``test/`` uses that split."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such folder")
    if (root / "test").is_dir():
        root = root / "test"
    index = label_index(meta)
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    items: list[tuple[Path, int]] = []
    if subdirs:
        unknown = [d.name for d in subdirs if d.name not in index]
        if unknown and index:
            raise DataError(f"{root}: folders {unknown[:5]} name no class of the model "
                            f"(it knows e.g. {list(index)[:3]})")
        for i, d in enumerate(subdirs):
            label = index.get(d.name, i)
            items += [(p, label) for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS]
    else:
        for p in sorted(root.iterdir()):
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            prefix = p.stem.split("_")[0]
            if prefix not in index:
                raise DataError(f"{p}: the file name does not start with a class of the model ({prefix!r})")
            items.append((p, index[prefix]))
    if not items:
        raise DataError(f"{root}: no images found")
    return items


def same_size_batches(items: list[tuple[Path, int]], batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive images of one size stacked into batches of up to ``batch_size``."""
    images: list[torch.Tensor] = []
    labels: list[int] = []
    for path, label in items:
        img = read_image(path)
        if images and (img.shape != images[0].shape or len(images) == batch_size):
            yield torch.stack(images), torch.tensor(labels)
            images, labels = [], []
        images.append(img)
        labels.append(label)
    if images:
        yield torch.stack(images), torch.tensor(labels)


# ---- the evaluation ----------------------------------------------------------------------
def topk_errors(posteriors: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    top5 = posteriors.topk(min(5, posteriors.shape[1]), dim=1).indices
    top1_err = (top5[:, 0] != labels).float().mean().item()
    top5_err = 1.0 - (top5 == labels[:, None]).any(dim=1).float().mean().item()
    return top1_err, top5_err


def calibration_images(data: Path, m: EvalModel, n: int = 256) -> torch.Tensor:
    """uint8 crops for int8 activation ranges: training images (``data/train``) when the data
    set has them, else the evaluated images; a seeded sample, rescaled to Q, centre-cropped."""
    source = data / "train" if (data / "train").is_dir() else data
    items = list_labelled_images(source, m.meta)
    keep = torch.randperm(len(items), generator=torch.Generator().manual_seed(1))[:n].tolist()
    return torch.cat([m.preprocess.crop_images(read_image(items[i][0])[None]) for i in keep])


def evaluate(weights: list[str | Path], data: str | Path, protocols: list[str] | None = None,
             scales: list[int] | None = None, limit: int = 0, batch_size: int = 50,
             precision: str | None = None, compile: bool = False, device: str = "auto") -> dict:
    """Top-1/top-5 error of one model or an ensemble (posteriors averaged, Table 6), scored
    on ``device`` in fp32, bf16, fp16 or int8 (default: bf16 where the device runs it, fp16
    on older GPUs, else fp32), eager or torch.compiled."""
    dev = runtime.resolve_device(device)
    precision = precision or runtime.resolve_precision("bf16", dev)
    if scales and not all(32 <= q <= MAX_INPUT for q in scales):
        raise VggnetError(f"--scales must be sides from 32 to {MAX_INPUT} px; got {scales}")
    if limit < 0 or batch_size < 1:
        raise VggnetError(f"--limit must be >= 0 (0: every image) and the batch size >= 1; got {limit}, {batch_size}")
    protocols = list(protocols or ["single"])
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad:
        raise VggnetError(f"unknown protocol {bad[0]!r}; valid: {', '.join(PROTOCOLS)}")
    if not weights:
        raise VggnetError("give at least one --weights file")
    if compile and precision == "int8":   # before the weights and calibration images are read
        raise VggnetError("--compile works with --precision fp32 or bf16, not int8 (FX-quantized modules)")
    models = [EvalModel(*load_weights(w)) for w in weights]
    for m in models:
        m.use_precision(precision, calibration_images(Path(data), m) if precision == "int8" else None, compile, dev)
    first = models[0].meta
    for w, m in zip(weights, models):
        if m.meta.num_classes != first.num_classes:
            raise VggnetError(f"{w}: {m.meta.num_classes} classes, {weights[0]} has {first.num_classes}")
    items = list_labelled_images(Path(data), first)
    if limit and limit < len(items):   # a seeded random subset, so every class is represented
        keep = torch.randperm(len(items), generator=torch.Generator().manual_seed(0))[:limit].sort().values
        items = [items[i] for i in keep.tolist()]
    sums: dict[str, list[torch.Tensor]] = {p: [] for p in protocols}
    labels: list[torch.Tensor] = []
    seconds = 0.0
    with tqdm(total=len(items), desc="eval", unit="img", disable=None) as bar:
        for images, y in same_size_batches(items, batch_size):
            t0 = time.perf_counter()
            per_model = [m.posteriors(images, protocols, scales) for m in models]
            seconds += time.perf_counter() - t0
            for p in protocols:
                sums[p].append(torch.stack([pm[p] for pm in per_model]).mean(0))
            labels.append(y)
            bar.update(len(y))
    y = torch.cat(labels)
    rows = []
    for p in protocols:
        top1, top5 = topk_errors(torch.cat(sums[p]), y)
        rows.append({"protocol": p, "scales": _scales_text(models[0], p, scales), "top1_error": top1,
                     "top5_error": top5, "images": len(y), "paper": PAPER_TABLE[p]})
    return {"weights": [str(w) for w in weights], "data": str(data), "precision": precision,
            "device": f"{dev} ({runtime.device_model(dev)})",
            "compiled": compile, "rows": rows,
            "seconds_per_image": seconds / max(len(y), 1)}


def _scales_text(m: EvalModel, protocol: str, scales: list[int] | None) -> str:
    q, multi = m.chosen_scales(scales)
    return str(q) if protocol in ("single", "dense") else ",".join(map(str, multi))


def format_report(report: dict, fmt: str = "table") -> str:
    """The paper's table layout in markdown (protocol, test scales, top-1 and top-5 error, %)."""
    if fmt == "json":
        return json.dumps(report, indent=2)
    lines = ["| protocol | test scale Q | top-1 error (%) | top-5 error (%) | images | paper |",
             "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['protocol']} | {r['scales']} | {100 * r['top1_error']:.2f} | "
                     f"{100 * r['top5_error']:.2f} | {r['images']} | {r['paper']} |")
    mode = f"{report['precision']}{', compiled' if report.get('compiled') else ''}, {report.get('device', 'cpu')}"
    lines.append(f"\n{len(report['weights'])} model(s), {mode}; {report['seconds_per_image'] * 1000:.1f} ms "
                 f"per image for all protocols{' (compilation included)' if report.get('compiled') else ''}")
    return "\n".join(lines)
