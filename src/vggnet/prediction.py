"""Predictions for images of any size and colour mode, and Grad-CAM heat maps.

An image is rescaled so that its smaller side is the model's test scale Q and centre
cropped to its input size (the single-scale protocol of section 3.2), so crops of
different photographs batch together.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import runtime
from .data import IMAGE_EXTENSIONS, DataError, read_image
from .errors import VggnetError
from .evaluation import EvalModel
from .model import VGG
from .weights import load_weights


def list_images(target: str | Path) -> list[Path]:
    """One image file, or every image under a folder (recursively, sorted)."""
    path = Path(target)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if files:
            return files
        raise DataError(f"{path}: no images in this folder")
    raise DataError(f"{path}: no such file or folder")


@torch.no_grad()
def predict(target: str | Path, weights: str | Path, topk: int = 5, batch_size: int = 32,
            precision: str | None = None, compile: bool = False, device: str = "auto") -> list[dict]:
    """[{"path", "top": [{"index", "class", "probability"}, ...]} or {"path", "error"}] per image,
    scored on ``device`` in fp32, bf16 or fp16 (default: bf16 where the device runs it; int8
    needs calibration data: ``vggnet eval --precision int8``), eager or torch.compiled."""
    if precision == "int8":
        raise VggnetError("predict runs in fp32, bf16 or fp16; int8 needs calibration images "
                          "(vggnet eval --precision int8)")
    if topk < 1 or batch_size < 1:
        raise VggnetError(f"--topk and the batch size must be >= 1; got {topk}, {batch_size}")
    dev = runtime.resolve_device(device)
    precision = precision or runtime.resolve_precision("bf16", dev)
    m = EvalModel(*load_weights(weights)).use_precision(precision, compile=compile, device=dev)
    names = m.meta.class_names
    k = min(topk, len(names))
    results: list[dict] = []
    files = list_images(target)
    pending: list[tuple[Path, torch.Tensor]] = []

    def flush() -> None:
        if not pending:
            return
        probs = m.softmax(m.net, torch.stack([crop for _, crop in pending]))
        values, indices = probs.topk(k, dim=1)
        for (path, _), v, i in zip(pending, values.tolist(), indices.tolist()):
            results.append({"path": str(path), "top": [{"index": j, "class": names[j], "probability": p}
                                                       for p, j in zip(v, i)]})
        pending.clear()

    for path in tqdm(files, desc="predict", unit="img", disable=None if len(files) > 1 else True):
        try:
            image = read_image(path)
        except DataError as exc:
            flush()
            results.append({"path": str(path), "error": str(exc)})
            continue
        pending.append((path, m.preprocess.crop_images(image[None])[0]))
        if len(pending) == batch_size:
            flush()
    flush()
    return results


def format_predictions(results: list[dict], fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps(results, indent=2)
    lines = []
    for r in results:
        if "error" in r:
            lines.append(f"{r['path']}: ERROR {r['error']}")
            continue
        best = ", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in r["top"])
        lines.append(f"{r['path']}: {best}")
    return "\n".join(lines)


def grad_cam(model: VGG, x: torch.Tensor, class_index: int | None = None, layer: str | None = None) -> tuple[torch.Tensor, int]:
    """Grad-CAM (Selvaraju et al. 2017) at a conv layer (default: the last one): the layer's
    activations weighted by the spatial mean of the class score's gradient, ReLU, scaled to
    [0, 1] and resized to the input. Returns (heat map (H, W), class index)."""
    convs = [n for n in model.feature_names if n.startswith("conv")]
    layer = layer or convs[-1]
    if layer not in model.feature_names:
        raise VggnetError(f"unknown layer {layer!r}; valid: {', '.join(convs)}")
    stop = model.feature_names[layer]
    model.eval()
    with torch.enable_grad():
        h = model.features[:stop + 1](x)
        h.retain_grad()
        features = model.features[stop + 1:](h)
        logits = model.forward_head(features)
        index = int(logits.argmax(1)[0]) if class_index is None else class_index
        logits[0, index].backward()
    weights = h.grad.mean(dim=(2, 3), keepdim=True)                      # (1, C, 1, 1)
    cam = F.relu((weights * h).sum(1, keepdim=True)).detach()            # (1, 1, h, w)
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    return cam / cam.max().clamp(min=1e-12), index


def save_cam(image_path: str | Path, weights: str | Path | EvalModel, out: str | Path,
             layer: str | None = None) -> dict:
    """Write a PNG of the image's centre crop with the Grad-CAM heat map of the predicted
    class over it; pass an EvalModel to reuse loaded weights across many images."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import save_figure

    m = weights if isinstance(weights, EvalModel) else EvalModel(*load_weights(weights))
    crop = m.preprocess.crop_images(read_image(Path(image_path))[None])
    device = next(m.model.parameters()).device
    cam, index = grad_cam(m.model, m.prepare(crop).to(device), layer=layer)
    cam = cam.cpu()
    name = m.meta.class_names[index]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(crop[0].permute(1, 2, 0).numpy())
    ax.imshow(cam.numpy(), cmap="jet", alpha=0.45)
    ax.set_title(f"Grad-CAM: {name}")
    ax.axis("off")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, Path(out))
    return {"path": str(image_path), "class": name, "index": index, "cam": str(out)}
