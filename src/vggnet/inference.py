"""Inference numerics for ``vggnet eval`` and ``vggnet predict``: fp32, bf16 weights, or
int8 static quantization (PyTorch's FX flow with the x86 backend: VNNI int8 kernels).

BatchNorm is folded into the convs first in every case. int8 needs calibration batches
(prepared model inputs) to fix the activation ranges; measured accuracy: BENCHMARKS.md.
"""

from __future__ import annotations

import warnings
from typing import Iterable

import torch
from torch import nn

from . import runtime
from .configs import PRECISIONS as TRAINING_PRECISIONS
from .errors import VggnetError
from .model import VGG, fold_batchnorm

PRECISIONS = (*TRAINING_PRECISIONS, "int8")   # int8: x86 CPUs, calibrated
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def quantize_int8(model: VGG, calibration: Iterable[torch.Tensor]) -> VGG:
    """The conv stack and the classifier quantized to int8 (per-channel weights, per-tensor
    activations observed on ``calibration``); pooling between them stays float."""
    batches = list(calibration)
    if not batches:
        raise VggnetError("int8 quantization needs at least one calibration batch")
    with warnings.catch_warnings():   # torch.ao.quantization announces its move to torchao; it works here
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*(reduce_range will be deprecated|quantize_per_tensor).*")
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
        torch.backends.quantized.engine = "x86"
        q, mapping = fold_batchnorm(model), get_default_qconfig_mapping("x86")
        with torch.no_grad():
            feats = q.forward_features(batches[0][:1])
            head_in = feats if q.head == "dense" else torch.flatten(q.avgpool(feats), 1)
            q.features = prepare_fx(q.features, mapping, (batches[0][:1],))
            q.classifier = prepare_fx(q.classifier, mapping, (head_in,))
            for x in batches:                       # observers record the activation ranges
                q(x)
        q.features, q.classifier = convert_fx(q.features), convert_fx(q.classifier)
    return q


class InferenceNet(nn.Module):
    """A trained VGG ready to score prepared fp32 inputs at a precision; returns fp32 logits.
    ``compile``: torch.compile the scoring net (fp32/bf16; one compilation per input shape:
    faster for one fixed shape, slower on varied shapes, BENCHMARKS.md sections 13-14).
    In fp32 without BN there is nothing to fold or cast, so ``model`` itself is scored, put
    in eval mode and channels-last, not copied (a second VGG-16 is 550 MB)."""

    def __init__(self, model: VGG, precision: str = "fp32", calibration: Iterable[torch.Tensor] = (),
                 compile: bool = False, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.device = torch.device(device)
        if precision not in PRECISIONS:
            raise VggnetError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        if compile and precision == "int8":
            raise VggnetError("compile works with fp32 or bf16, not int8 (FX-quantized modules)")
        if precision == "int8" and self.device.type != "cpu":
            raise VggnetError(f"int8 scoring is a CPU feature (x86 VNNI kernels), not for {self.device}: "
                              "use --device cpu, or --precision bf16/fp16 on the GPU")
        if precision == "fp16" and self.device.type == "cpu":
            raise VggnetError("fp16 scoring is for GPUs; on the CPU use bf16 (where it has native bf16) or fp32")
        self.precision = precision
        if precision == "bf16" and self.device.type == "cpu" and not runtime.bf16_supported():
            warnings.warn("bf16 on a CPU without native bf16 (AVX-512 BF16 or AMX) is emulated: about 8x slower "
                          "than fp32 on an AVX2-only CPU (BENCHMARKS.md section 17); use fp32 here", stacklevel=2)
        if precision == "int8":
            self.net = quantize_int8(model, calibration)
        elif precision == "fp32" and not model.batch_norm:   # nothing to fold or cast: no second copy
            self.net = model.eval().to(self.device, memory_format=torch.channels_last)
        else:   # bf16, fp16: weights cast once, not per call as autocast would
            self.net = fold_batchnorm(model).to(self.device, dtype=DTYPES[precision], memory_format=torch.channels_last)
        self.dtype = DTYPES.get(precision, torch.float32)
        self.compiled = compile
        if compile:   # static shapes: each input size gets its own specialised kernels
            self.net = torch.compile(self.net, dynamic=False)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Prepared inputs (any device) -> fp32 logits on the CPU."""
        return self.net(x.to(self.device, self.dtype, non_blocking=True)).float().cpu()
