"""ONNX export with dynamic batch (and dynamic height and width for the dense head)."""

from __future__ import annotations

from pathlib import Path

import torch

from .model import to_dense
from .weights import load_weights


def export_onnx(weights: str | Path, out: str | Path, dense: bool = False, opset: int = 18) -> Path:
    """Write ``out``: input "images" (N, 3, H, W) already preprocessed as the weights say
    (``load_weights(w)[1].preprocessing``: rescale, centre crop, channel order, mean, std),
    output "logits" (N, classes). ``dense`` exports the fully convolutional form (3.2),
    which takes any H, W of at least its minimum; otherwise H = W = the training input size."""
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
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (example,), str(out), input_names=["images"], output_names=["logits"],
                      dynamic_shapes={"x": dims}, opset_version=opset, dynamo=True, verbose=False)
    return out
