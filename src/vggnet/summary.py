"""Explain the network: per-layer output shape, activation memory, parameters,
multiply-accumulates and receptive field, computed from the built model.

The receptive-field column shows the argument of section 2.3: two stacked 3x3 convs
see 5x5, three see 7x7, with fewer parameters than one 7x7 conv.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
from dataclasses import dataclass

import torch
from torch import nn

from .errors import VggnetError
from .model import build_model


@dataclass
class LayerRow:
    """One named layer of the walk-through (a conv row includes its BN and ReLU)."""

    name: str
    kind: str
    output_shape: tuple[int, int, int]   # (H, W, C), the tutorials' order
    activations: int                     # values in the output, per image
    memory_bytes: int                    # activations x 4 bytes (fp32)
    weights: int
    biases: int                          # biases and BN parameters
    macs: int                            # multiply-accumulates per image
    receptive_field: int                 # side of the input window one output sees
    stride: int                          # input pixels between neighbouring outputs

    @property
    def params(self) -> int:
        return self.weights + self.biases


def summarize(config: str = "D", *, batch_norm: bool | None = None, input_size: tuple[int, int] = (224, 224),
              head: str = "paper", num_classes: int = 1000, width: float = 1.0) -> list[LayerRow]:
    """Rows for every conv, LRN, pool and FC layer of a configuration at an input size."""
    with torch.device("meta"):
        model = build_model(config, batch_norm=batch_norm, num_classes=num_classes, head=head, width=width)
    h, w = input_size
    if min(h, w) < model.min_input_size:
        raise VggnetError(f"input {h}x{w} is too small for the {head!r} head: each side must be at least "
                          f"{model.min_input_size} px")
    c, rf, jump = 3, 1, 1
    names = {idx: name for name, idx in model.feature_names.items()}
    rows: list[LayerRow] = []
    pending: LayerRow | None = None
    for i, layer in enumerate(model.features):
        if isinstance(layer, nn.Conv2d):
            k = layer.kernel_size[0]
            c, rf = layer.out_channels, rf + (k - 1) * jump
            pending = LayerRow("", "conv", (h, w, c), h * w * c, 4 * h * w * c, layer.weight.numel(),
                               layer.bias.numel(), h * w * layer.weight.numel(), rf, jump)
        elif isinstance(layer, nn.BatchNorm2d) and pending is not None:
            pending.biases += layer.weight.numel() + layer.bias.numel()
        elif isinstance(layer, nn.LocalResponseNorm):
            rows.append(LayerRow("lrn1", "lrn", (h, w, c), h * w * c, 4 * h * w * c, 0, 0, 0, rf, jump))
        elif isinstance(layer, nn.MaxPool2d):
            h, w, rf, jump = h // 2, w // 2, rf + jump, jump * 2
            rows.append(LayerRow(names[i], "pool", (h, w, c), h * w * c, 4 * h * w * c, 0, 0, 0, rf, jump))
        if i in names and pending is not None and names[i].startswith("conv"):
            pending.name = names[i]
            rows.append(pending)
            pending = None
    rows += _head_rows(model, h, w, c, rf, jump)
    return rows


def _head_rows(model: nn.Module, h: int, w: int, c: int, rf: int, jump: int) -> list[LayerRow]:
    """fc6, fc7, fc8: an FC layer reads the whole (pooled) map, a dense-head conv slides over it."""
    if model.head == "paper":
        h = w = 7          # adaptive average pooling to 7x7
    elif model.head == "cifar":
        h = w = 1
    rows = []
    for name, idx in (("fc6", 0), ("fc7", 3), ("fc8", 6)):
        layer = model.classifier[idx]
        out = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        k = layer.kernel_size[0] if isinstance(layer, nn.Conv2d) else (h if name == "fc6" else 1)
        rf = rf + (k - 1) * jump
        if isinstance(layer, nn.Conv2d):
            h, w = h - k + 1, w - k + 1
            macs = h * w * layer.weight.numel()
        else:
            h = w = 1
            macs = layer.weight.numel()
        rows.append(LayerRow(name, "fc", (h, w, out), h * w * out, 4 * h * w * out, layer.weight.numel(),
                             layer.bias.numel(), macs, rf, jump))
    return rows


# A training step's peak memory over the summary's activations (every layer's fp32 output,
# one image), measured on VGG-11/16/19-BN at 32, 64 and 224 px in three runs (BENCHMARKS 22):
# 1.30-1.63 under bf16 autocast, 2.26-2.74 in fp32 (BN inputs, ReLU masks, pooling indices).
STEP_MEMORY_FACTOR = {"bf16": (1.25, 1.7), "fp16": (1.25, 1.7), "fp32": (2.2, 2.8)}


def step_memory(spec: object, images: int, precision: str, copies: int = 4) -> tuple[int, int]:
    """(at least, at most) bytes a training step of ``images`` images in one pass needs:
    activations at the spec's input size, ``copies`` fp32 copies of the parameters
    (weights, gradients, momentum, a moving average) and autocast's half-precision copy."""
    rows = summarize(spec.config, batch_norm=spec.batch_norm, input_size=(spec.input_size, spec.input_size),
                     head=spec.head, num_classes=spec.num_classes, width=spec.width)
    t = totals(rows)
    low, high = STEP_MEMORY_FACTOR.get(precision, STEP_MEMORY_FACTOR["fp32"])
    fixed = t["params"] * (4 * copies + (2 if precision in ("bf16", "fp16") else 0))
    return int(low * t["memory_bytes"] * images) + fixed, int(high * t["memory_bytes"] * images) + fixed


# Scoring one image (no gradients): the peak over the largest layer's fp32 output, measured
# on VGG-11/16/19 dense nets at 512-1024 px (BENCHMARKS 22): 1.16-1.18 in bf16, 2.08-2.32 in
# fp32 (a layer's input and output alive at once).
SCORE_MEMORY_FACTOR = {"bf16": 1.4, "fp16": 1.4, "fp32": 2.6, "int8": 2.6}


def score_memory(spec: object, height: int, width: int, precision: str) -> int:
    """Bytes that scoring one ``height`` x ``width`` image needs (an upper estimate): the
    largest layer is a conv of block 1 at any size, so the crop net and its dense form agree."""
    largest = largest_layer_bytes(spec.config, spec.batch_norm, spec.head, spec.num_classes, spec.width, height, width)
    return int(SCORE_MEMORY_FACTOR.get(precision, 2.6) * largest)


@functools.lru_cache(maxsize=256)    # asked for every batch that eval scores
def largest_layer_bytes(config: str, batch_norm: bool, head: str, num_classes: int, width: float,
                        height: int, image_width: int) -> int:
    rows = summarize(config, batch_norm=batch_norm, input_size=(height, image_width), head=head,
                     num_classes=num_classes, width=width)
    return max(r.memory_bytes for r in rows)


def totals(rows: list[LayerRow]) -> dict[str, int]:
    return {"activations": sum(r.activations for r in rows), "memory_bytes": sum(r.memory_bytes for r in rows),
            "weights": sum(r.weights for r in rows), "biases": sum(r.biases for r in rows),
            "params": sum(r.params for r in rows), "macs": sum(r.macs for r in rows)}


def format_summary(rows: list[LayerRow], fmt: str = "table") -> str:
    """The rows and their totals as an aligned text table, JSON or CSV."""
    if fmt == "json":
        return json.dumps({"layers": [dataclasses.asdict(r) | {"params": r.params} for r in rows],
                           "totals": totals(rows)}, indent=2)
    header = ["layer", "output (HxWxC)", "activations", "memory", "weights", "biases+BN", "params", "MACs",
              "RF", "stride"]
    body = [[r.name, "x".join(map(str, r.output_shape)), f"{r.activations:,}", _mib(r.memory_bytes),
             f"{r.weights:,}", f"{r.biases:,}", f"{r.params:,}", f"{r.macs:,}",
             f"{r.receptive_field}x{r.receptive_field}", str(r.stride)] for r in rows]
    t = totals(rows)
    body.append(["total", "", f"{t['activations']:,}", _mib(t["memory_bytes"]), f"{t['weights']:,}",
                 f"{t['biases']:,}", f"{t['params']:,}", f"{t['macs']:,}", "", ""])
    if fmt == "csv":   # numbers only: memory in bytes, thousands without separators
        memory = [r.memory_bytes for r in rows] + [t["memory_bytes"]]
        table = [[*row[:3], str(m), *row[4:]] for row, m in zip(body, memory)]
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(
            [[*header[:3], "memory_bytes", *header[4:]]] + [[v.replace(",", "") for v in row] for row in table])
        return buf.getvalue().rstrip("\n")
    if fmt != "table":
        raise VggnetError(f"unknown format {fmt!r}; valid: table, json, csv")
    widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
    line = lambda row: "  ".join(v.ljust(wd) if i < 2 else v.rjust(wd) for i, (v, wd) in enumerate(zip(row, widths)))  # noqa: E731
    sep = "-" * len(line(header))
    gmacs = (f"{t['macs'] / 1e9:.2f} GMACs, {t['params'] / 1e6:.1f} M parameters, {_mib(t['memory_bytes'])} of "
             "activations per image (fp32, forward); biases+BN: a layer's biases and its BatchNorm's gamma and beta")
    return "\n".join([line(header), sep] + [line(r) for r in body[:-1]] + [sep, line(body[-1]), gmacs])


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"
