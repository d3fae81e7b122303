"""The paper's training-time augmentation (section 3.1) as whole-batch tensor operations:
scale jittering, random crops and flips, AlexNet's PCA colour shift, and Cutout.

Each takes a ``torch.Generator`` so a run's augmentation is reproduced exactly on resume;
the random draws are made on the CPU and moved to the images' device, so a batch on a GPU
is augmented there with the same draws as on the CPU.
"""

from __future__ import annotations

import torch

from .preprocess import rescale


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Batched augmentation: a random crop of the original size from the reflect-padded
    batch and a random horizontal flip, one gather for the whole batch."""
    n, c, h, w = x.shape
    if padding > 0:
        padded = torch.nn.functional.pad(x, (padding,) * 4, mode="reflect")
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
        ar = {k: torch.arange(k, device=x.device) for k in {n, c, h, w}}
        rows = (dy[:, None] + ar[h])[:, None, :, None]     # (n, 1, h, 1)
        cols = (dx[:, None] + ar[w])[:, None, None, :]     # (n, 1, 1, w)
        x = padded[ar[n][:, None, None, None], ar[c][None, :, None, None], rows, cols]
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x


def cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Batched Cutout (DeVries & Taylor, 2017): a ``size`` x ``size`` square at a uniformly
    drawn centre of each mean-subtracted image set to 0, the mean colour; squares may be
    clipped by the border. Not in the paper: a regulariser for short CIFAR schedules."""
    n, _, h, w = x.shape
    top = (torch.randint(0, h, (n,), generator=generator) - size // 2).to(x.device)
    left = (torch.randint(0, w, (n,), generator=generator) - size // 2).to(x.device)
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size)        # (n, h)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size)      # (n, w)
    hole = in_rows[:, None, :, None] & in_cols[:, None, None, :]           # (n, 1, h, w)
    return x.masked_fill(hole, 0.0)


def random_crop(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """One random ``size`` window of a (3, H, W) image (rescaled up first if smaller)."""
    if min(x.shape[-2:]) < size:
        x = rescale(x, size)
    h, w = x.shape[-2:]
    top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
    return x[..., top:top + size, left:left + size]


def scale_jitter_crop(images: torch.Tensor, smin: int, smax: int, crop: int,
                      generator: torch.Generator) -> torch.Tensor:
    """Section 3.1 scale jittering: each image rescaled so that its smaller side is S, drawn
    uniformly from [smin, smax], then a random crop x crop window; one resize per distinct S."""
    n = len(images)
    scales = torch.randint(smin, smax + 1, (n,), generator=generator)
    out = torch.empty(n, images.shape[1], crop, crop, dtype=images.dtype, device=images.device)
    for s in scales.unique().tolist():
        which = (scales == s).nonzero().flatten()
        resized = rescale(images[which.to(images.device)], s)
        h, w = resized.shape[-2:]
        tops = torch.randint(0, h - crop + 1, (len(which),), generator=generator)
        lefts = torch.randint(0, w - crop + 1, (len(which),), generator=generator)
        for j, i in enumerate(which.tolist()):
            out[i] = resized[j, :, tops[j]:tops[j] + crop, lefts[j]:lefts[j] + crop]
    return out


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Mean and std per RGB channel on the 0..255 scale (section 2.1: mean RGB subtraction)."""
    x = images.to(torch.float64)
    return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).tolist()


def pca_lighting_stats(images: torch.Tensor, max_pixels: int = 2_000_000, seed: int = 0) -> dict[str, list]:
    """Eigen-decomposition of the 3x3 covariance of the training RGB pixel values (0..255),
    AlexNet's colour augmentation that section 3.1 adopts."""
    pixels = images.permute(1, 0, 2, 3).reshape(3, -1)
    if pixels.shape[1] > max_pixels:
        pixels = pixels[:, torch.randperm(pixels.shape[1], generator=torch.Generator().manual_seed(seed))[:max_pixels]]
    eigval, eigvec = torch.linalg.eigh(torch.cov(pixels.to(torch.float64)))
    return {"eigval": eigval.tolist(), "eigvec": eigvec.tolist()}   # eigvec columns are the components


def pca_lighting(x: torch.Tensor, stats: dict[str, list], std: float, generator: torch.Generator) -> torch.Tensor:
    """Add sum_i alpha_i * lambda_i * p_i to every pixel of an image, alpha_i ~ N(0, std)
    drawn per image (AlexNet section 4.1); ``x`` is float on the 0..255 scale."""
    eigval = torch.tensor(stats["eigval"], dtype=x.dtype)
    eigvec = torch.tensor(stats["eigvec"], dtype=x.dtype)
    alpha = torch.randn(len(x), 3, generator=generator, dtype=x.dtype) * std
    shift = (alpha * eigval) @ eigvec.T                                    # (N, 3)
    return x + shift.to(x.device)[:, :, None, None]
