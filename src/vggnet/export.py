"""ONNX export with dynamic batch (and dynamic height and width for the dense head), one
file with the weights inside and the classes and preprocessing in its metadata."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from .errors import VggnetError, os_error
from .extras import require
from .files import replacing
from .model import to_dense
from .weights import ModelSpec, load_weights


MIN_OPSET = 18   # torch.onnx's dynamo exporter


def export_onnx(weights: str | Path, out: str | Path, dense: bool = False, opset: int = 18) -> Path:
    """Write ``out``: input "images" (N, 3, H, W) already preprocessed as the weights say
    (``load_weights(w)[1].preprocessing``: rescale, centre crop, channel order, mean, std),
    output "logits" (N, classes). ``dense`` exports the fully convolutional form (3.2),
    which takes any H, W of at least its minimum; otherwise H = W = the training input size."""
    require("onnx")                      # before anything is loaded or written
    import onnx
    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise VggnetError(f"--opset {opset}: torch's ONNX exporter writes opsets {MIN_OPSET} to "
                          f"{onnx.defs.onnx_opset_version()} (the newest the installed onnx knows)")
    model, meta = load_weights(weights)
    if dense:
        model = to_dense(model)
    model = model.eval().float()
    size = model.min_input_size if dense else meta.input_size
    example = torch.randn(2, 3, size + (37 if dense else 0), size + (70 if dense else 0))
    batch = torch.export.Dim("batch", min=1, max=4096)
    dims = {0: batch}
    if dense or model.head == "cifar":  # no fixed-size adaptive pooling in the graph
        dims.update({2: torch.export.Dim("height", min=model.min_input_size, max=4096),
                     3: torch.export.Dim("width", min=model.min_input_size, max=4096)})
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as tmp:   # nothing half-written left
            raw = Path(tmp) / "raw.onnx"
            torch.onnx.export(model, (example,), str(raw), input_names=["images"], output_names=["logits"],
                              dynamic_shapes={"x": dims}, opset_version=opset, dynamo=True, verbose=False)
            write_with_metadata(raw, out, onnx_metadata(meta, dense), opset)
    except OSError as exc:      # a read-only folder, /proc, a full disk: named, nothing left behind
        raise os_error(exc, "write", out) from None
    return out


def onnx_metadata(spec: ModelSpec, dense: bool) -> dict[str, str]:
    """What whoever receives the file needs to feed it: the classes, the preprocessing and
    the input size (ONNX metadata_props, read by onnxruntime's get_modelmeta())."""
    p = spec.preprocessing
    return {"vggnet": json.dumps(spec.to_dict()), "classes": json.dumps(spec.class_names),
            "preprocessing": json.dumps({"mean": list(p.mean), "std": list(p.std) if p.std else None,
                                         "channel_order": p.channel_order, "resize": p.resize, "crop": p.crop,
                                         "scale": "0..255"}),
            "input": "images (N, 3, H, W) float32: RGB 0..255 rescaled so the smaller side is resize, centre-"
                     "cropped to crop, channels in channel_order, mean subtracted, divided by std when given",
            "config": spec.config, "dense": str(dense).lower()}


def write_with_metadata(raw: Path, out: Path, metadata: dict[str, str], opset: int) -> None:
    """``raw`` with ``metadata`` added, written as one file (weights inside: under 2 GB for
    every VGG), if the exporter wrote the ``opset`` asked for."""
    import onnx
    model = onnx.load(str(raw))                  # reads the exporter's external .data file, if any
    wrote = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if wrote != [opset]:   # the exporter falls back to its own opset when it cannot convert
        raise VggnetError(f"--opset {opset}: torch's exporter could not convert the graph to it (it wrote opset "
                          f"{wrote[0] if wrote else '?'}); give that --opset")
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    with replacing(out) as tmp:
        onnx.save_model(model, str(tmp), save_as_external_data=False)