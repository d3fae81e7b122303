"""One preprocessing for every consumer of a model: eval, predict, Grad-CAM, the perceptual
loss and the trainer's test path. Built from the weights' metadata, as torchvision's
``Weights.transforms()``: rescale so the smaller side is Q, centre crop (section 3.2),
channel order, mean subtraction (section 2.1) and, where the weights were trained with
it, division by the std.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms.v2.functional import resize

from .errors import VggnetError

# On the 0..255 scale: torchvision's ImageNet mean/std, and Caffe's (Keras "caffe" mode:
# BGR input, mean subtracted, no scaling; the paper's own, section 2.1).
TORCHVISION_PREPROCESSING = {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375], "channel_order": "RGB"}
CAFFE_PREPROCESSING = {"mean": [103.939, 116.779, 123.68], "std": None, "channel_order": "BGR"}
CHANNEL_ORDERS = ("RGB", "BGR")


def rescale(x: torch.Tensor, q: int) -> torch.Tensor:
    """Isotropic rescaling so that the smaller side is ``q`` (section 3.1), antialiased."""
    h, w = x.shape[-2:]
    if min(h, w) == q:
        return x
    return resize(x, [q], antialias=True)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` window; an image smaller than that is rescaled up first."""
    if min(x.shape[-2:]) < size:
        x = rescale(x, size)
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def eval_scales(crop: int, train_scale: list[int] | tuple[int, int] | None) -> tuple[int, list[int]]:
    """(single-scale Q, the three multi-scale Qs), section 4.2: for a net trained at a fixed
    S, Q in {S-32, S, S+32} (scaled to the image size; S = 256 for 224 crops, else the crop),
    or {S, S+32, S+64} where S-32 would be below the crop (a 32 px net: 32, 36, 40);
    jittered [Smin, Smax]: {Smin, (Smin+Smax)/2, Smax}, with Q = (Smin+Smax)/2 for one scale."""
    if train_scale:
        lo, hi = train_scale
        mid = (lo + hi) // 2
        return mid, [lo, mid, hi]
    s = 256 if crop == 224 else crop
    step = max(1, round(s / 8))                          # 32 at S=256
    low = s - step if s - step >= crop else s
    return s, [low, low + step, low + 2 * step]


@dataclass(frozen=True)
class Preprocessing:
    """uint8 RGB images -> a model's input. ``mean`` and ``std`` are on the 0..255 scale and
    in the model's channel order; no std means mean subtraction only (the paper's, 2.1)."""

    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] | None = None
    channel_order: str = "RGB"
    crop: int = 224          # the network's input side
    resize: int = 256        # Q: the smaller side before the centre crop (3.2)

    @classmethod
    def of(cls, fields: dict, crop: int = 224, resize: int = 256) -> "Preprocessing":
        """From JSON-style fields (mean, std, channel_order as lists and strings)."""
        std = fields.get("std")
        return cls(tuple(fields.get("mean") or (0.0, 0.0, 0.0)), tuple(std) if std else None,
                   fields.get("channel_order", "RGB"), crop, resize)

    def __post_init__(self) -> None:
        if self.channel_order not in CHANNEL_ORDERS:
            raise VggnetError(f"channel_order must be RGB or BGR, got {self.channel_order!r}")

    def crop_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) uint8 of any size -> (N, 3, crop, crop) uint8: single-scale test crop (3.2)."""
        return center_crop(rescale(images, self.resize), self.crop)

    def normalize(self, x: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
        """(N, 3, H, W) RGB on the 0..255 scale (uint8 or float) -> float32 model input:
        channel order, mean subtracted, divided by std when there is one; channels-last
        (the faster layout for convs) unless augmentation still has to run on it."""
        if self.channel_order == "BGR":
            x = x[:, [2, 1, 0]]
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std or (1.0, 1.0, 1.0), dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        x = (x.to(torch.float32) - mean) / std
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images of any size -> the model's single-scale test input."""
        return self.normalize(self.crop_images(images))

    def normalize_unit(self, images: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] (as image-generation code holds them) -> model input, differentiably."""
        return self.normalize(images * 255.0)
