"""VGG as a feature extractor: perceptual (content) and style losses on named layers.

The losses of Johnson et al. (2016) and Gatys et al. (2016), on the layer names of
:meth:`vggnet.model.VGG.extract` ("conv2_2" is the activation after conv2_2's ReLU).
Inputs are RGB images in [0, 1]; the model's own preprocessing (mean/std, channel
order) is applied inside, so torchvision-, Keras- and vggnet-trained weights all work.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import VggnetError
from .model import VGG
from .preprocess import TORCHVISION_PREPROCESSING, Preprocessing
from .weights import ModelSpec, load_weights

CONTENT_LAYERS = ("conv2_2",)                                        # Johnson et al. 2016: relu2_2
STYLE_LAYERS = ("conv1_2", "conv2_2", "conv3_3", "conv4_3")          # Johnson et al. 2016


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, C) channel correlations divided by C*H*W (Gatys et al.)."""
    n, c, h, w = features.shape
    f = features.reshape(n, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


class PerceptualLoss(nn.Module):
    """Feature (content) loss and Gram (style) loss of a frozen VGG on named layers."""

    def __init__(self, model: VGG, meta: ModelSpec | None = None, content_layers: tuple[str, ...] = CONTENT_LAYERS,
                 style_layers: tuple[str, ...] = STYLE_LAYERS, style_weight: float = 0.0) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        unknown = [n for n in (*content_layers, *style_layers) if n not in model.layer_names()]
        if unknown:
            raise VggnetError(f"unknown layer names {unknown}; valid: {', '.join(model.layer_names())}")
        self.content_layers, self.style_layers, self.style_weight = content_layers, style_layers, style_weight
        # the model's own preprocessing; without a description, torchvision's ImageNet one
        has_own = meta is not None and meta.mean is not None
        self.preprocess = meta.preprocessing if has_own else Preprocessing.of(TORCHVISION_PREPROCESSING)

    @classmethod
    def from_weights(cls, path: str | Path, **kwargs: object) -> "PerceptualLoss":
        model, meta = load_weights(path)
        return cls(model, meta, **kwargs)

    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named activations of RGB images in [0, 1], (N, 3, H, W)."""
        x = self.preprocess.normalize_unit(images)
        return self.model.extract(x, [*self.content_layers, *self.style_layers])

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        out, ref = self.features(output), self.features(target)
        loss = sum(F.mse_loss(out[n], ref[n]) for n in self.content_layers)
        if self.style_weight:
            loss = loss + self.style_weight * sum(F.mse_loss(gram_matrix(out[n]), gram_matrix(ref[n]))
                                                  for n in self.style_layers)
        return loss
