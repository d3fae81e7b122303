"""Batches for the trainer: one interface over both data paths, each owning its augmentation.

:class:`TensorLoader` (airbench's path) slices the in-memory uint8 tensor by a permutation
and augments each batch as whole tensors; :class:`StreamLoader` reads images in DataLoader
workers, which rescale, crop, flip and colour-shift them one by one. Both yield model
inputs (mean subtracted, channels-last) and labels, so the training loop does not ask
which one it has. Section 3.1's augmentation: scale jittering, random crops, flips and
the PCA colour shift; Cutout (not in the paper) where the recipe asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import torch

from pathlib import Path

from .augment import channel_stats, cutout, pca_lighting, pca_lighting_stats, random_crop_flip, scale_jitter_crop
from .configs import Recipe
from .data import StreamingImages, TensorData, holdout_size, load_dataset, random_subset, split_validation
from .distributed import World, shard
from .errors import VggnetError
from .preprocess import Preprocessing
from .weights import ModelSpec, read_metadata

if TYPE_CHECKING:
    from .settings import RunSettings

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Augmentation:
    """The training transforms of a recipe (3.1), with the statistics they need."""

    crop: int                              # training crop side
    scale: tuple[int, int] | None          # S drawn from [Smin, Smax]; None: crops of the stored size
    padding: int                           # reflect padding of the random crop when there is no scale
    flip: bool
    lighting: dict | None                  # PCA colour statistics (augment.pca_lighting_stats); None: off
    lighting_std: float
    cutout: int                            # square side; 0: off

    @classmethod
    def of(cls, recipe: Recipe, crop: int, scale: tuple[int, int] | None, lighting: dict | None) -> "Augmentation":
        return cls(crop, scale, recipe.crop_padding, recipe.flip, lighting, recipe.lighting, recipe.cutout)


class _Loader:
    """What both loaders share: the images, their preprocessing and augmentation, the
    generator that draws the augmentation, and the ranks."""

    def __init__(self, data: TensorData | StreamingImages, preprocess: Preprocessing, augmentation: Augmentation,
                 generator: torch.Generator, world: World) -> None:
        self.data, self.preprocess, self.aug, self.gen, self.world = data, preprocess, augmentation, generator, world
        self.device = torch.device(world.device)

    def __len__(self) -> int:
        return len(self.data)

    @property
    def labels(self) -> torch.Tensor:
        return self.data.labels


class TensorLoader(_Loader):
    """In-memory batches: index slices of the uint8 tensor, augmented whole. Under torchrun
    every rank augments the global batch (one generator, the same on every rank) and keeps
    its shard, so a run's augmentation does not depend on the number of ranks. On a GPU the
    tensor is moved there once when it takes under half the free memory (CIFAR-10: 150 MB),
    so batches are drawn and augmented where the model is."""

    kind = "in memory"

    def __init__(self, data: TensorData, preprocess: Preprocessing, augmentation: Augmentation,
                 generator: torch.Generator, world: World) -> None:
        super().__init__(data, preprocess, augmentation, generator, world)
        if self.device.type == "cuda" and data.images.nbytes < torch.cuda.mem_get_info(self.device)[0] // 2:
            self.data = TensorData(data.images.to(self.device), data.labels.to(self.device), data.classes,
                                   data.skipped)

    def train_batches(self, order: torch.Tensor, batch_size: int, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """(this rank's inputs, labels, size of the global batch) for each batch of ``order``."""
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            x = self.augment(self.data.images[idx].to(self.device, non_blocking=True))
            y = self.data.labels[idx].to(self.device, non_blocking=True)
            part = shard(len(y), self.world)
            yield x[part], y[part], len(y)

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 batch -> model input (3.1): scale jittering and random crops, PCA colour
        shift, mean subtraction, flips, then Cutout; whole-batch tensor operations."""
        a = self.aug
        if a.scale:
            images = scale_jitter_crop(images, a.scale[0], a.scale[1], a.crop, self.gen)
        x = images.to(torch.float32)
        if a.lighting:
            x = pca_lighting(x, a.lighting, a.lighting_std, self.gen)
        x = self.preprocess.normalize(x, channels_last=False)
        x = random_crop_flip(x, 0 if a.scale else a.padding, a.flip, self.gen)
        return finish(x, a, self.gen)

    def test_crops(self, index: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, crop, crop): the images at ``index`` as the test sees them, before normalising."""
        return self.preprocess.crop_images(self.data.images[index]).cpu()

    def eval_batches(self, order: torch.Tensor, batch_size: int) -> Iterator[Batch]:
        """Test-time inputs (3.2: rescaled to Q, centre-cropped) and labels, in ``order``."""
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            yield self.preprocess(self.data.images[idx].to(self.device, non_blocking=True)), self.data.labels[idx]


class StreamLoader(_Loader):
    """Streamed batches: DataLoader workers read, rescale, crop, flip and colour-shift each
    image (a generator per (seed, epoch, image): the same crops whatever the workers);
    each rank reads only its shard of every global batch."""

    kind = "streamed"

    def __init__(self, data: StreamingImages, preprocess: Preprocessing, augmentation: Augmentation,
                 generator: torch.Generator, world: World, workers: int, seed: int) -> None:
        super().__init__(data, preprocess, augmentation, generator, world)
        self.workers, self.seed = workers, seed
        scale = augmentation.scale or (256, 256)
        self.train_view = data.view(crop=augmentation.crop, scale=scale, train=True, seed=seed, flip=augmentation.flip,
                                    lighting=augmentation.lighting, lighting_std=augmentation.lighting_std)
        self.test_view = data.view(crop=preprocess.crop, scale=(preprocess.resize, preprocess.resize), train=False)

    def train_batches(self, order: torch.Tensor, batch_size: int, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        mine = [c[shard(len(c), self.world)] for c in chunks]
        loader = self.train_view.view(epoch=epoch).loader(mine, self.workers, pin=self.device.type == "cuda")
        for (images, y), chunk in zip(loader, chunks):
            images, y = images.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            yield finish(self.preprocess.normalize(images, channels_last=False), self.aug, self.gen), y, len(chunk)

    def test_crops(self, index: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.test_view[i][0] for i in index.tolist()]) if len(index) else \
            torch.zeros(0, 3, self.preprocess.crop, self.preprocess.crop, dtype=torch.uint8)

    def eval_batches(self, order: torch.Tensor, batch_size: int) -> Iterator[Batch]:
        chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        for images, y in self.test_view.loader(chunks, self.workers, pin=self.device.type == "cuda"):
            yield self.preprocess.normalize(images.to(self.device, non_blocking=True)), y


def finish(x: torch.Tensor, aug: Augmentation, generator: torch.Generator) -> torch.Tensor:
    """Cutout where the recipe asks for it, then the channels-last layout of the step."""
    if aug.cutout:
        x = cutout(x, aug.cutout, generator)
    return x.contiguous(memory_format=torch.channels_last)


def make_loader(data: TensorData | StreamingImages, preprocess: Preprocessing, augmentation: Augmentation,
                generator: torch.Generator, world: World, workers: int = 2,
                seed: int = 0) -> TensorLoader | StreamLoader:
    """The loader for ``data``'s kind: in memory or streamed."""
    if isinstance(data, StreamingImages):
        return StreamLoader(data, preprocess, augmentation, generator, world, workers, seed)
    return TensorLoader(data, preprocess, augmentation, generator, world)


Loader = TensorLoader | StreamLoader


def check_crop(crop: int, scale: tuple[int, int] | None, image_size: int | None, data: object) -> None:
    """A training crop is cut from the image rescaled to S (3.1), so it may not exceed the
    smallest S; without a scale, in-memory images are cropped at their own size."""
    if scale and crop > min(scale):
        raise VggnetError(f"--crop-size {crop} is larger than the training scale {min(scale)} (--train-scale): "
                          "the crop is cut from the image rescaled to S (section 3.1)")
    if not scale and image_size and crop != image_size:
        raise VggnetError(f"--crop-size {crop} on {data}, whose images are {image_size} px and kept at that size: "
                          f"give --train-scale S (S >= {crop}) to rescale them first, or leave --crop-size out")


def run_data(s: "RunSettings", world: World, generator: torch.Generator,
             out: Path) -> tuple[tuple[Loader, Loader, Loader], ModelSpec]:
    """A run's (train, validation, test) loaders and the model's description: its classes,
    crop and scale, and the training set's mean RGB (2.1), std, and PCA colour basis (3.1)
    when the recipe shifts colours. Unreadable files skipped are listed in out/skipped.txt."""
    r = s.recipe
    train, test = load_dataset(s.data, Path(s.download) if s.download else None, stream=s.stream, skip_bad=s.skip_bad)
    if train.skipped and world.main:
        (out / "skipped.txt").write_text("\n".join(train.skipped) + "\n")
    if s.limit_train:
        train = train.subset(random_subset(len(train), s.limit_train, s.seed))
    if s.limit_test:
        test = test.subset(random_subset(len(test), s.limit_test, s.seed))
    train, val = split_validation(train, holdout_size(s.val_size, len(train)), s.seed)
    if s.pretrained:   # fine-tuning: the weights' input size and preprocessing, new classes
        spec = read_metadata(s.pretrained).for_new_classes(train.classes, train.image_size)
        crop, scale, lighting = spec.input_size, tuple(spec.train_scale) if spec.train_scale else None, None
    else:
        crop = r.crop_size or train.image_size or 224
        scale = r.train_scale or (None if train.image_size else (256, 256))
        check_crop(crop, scale, train.image_size, s.data)
        sample = train.statistics_sample(2000, s.seed, crop, scale)
        mean, std = channel_stats(sample)
        lighting = pca_lighting_stats(sample) if r.lighting else None
        spec = ModelSpec(s.config, s.batch_norm, head=r.head, num_classes=len(train.classes), width=s.width,
                         dropout=r.dropout, classes=list(train.classes), input_size=crop, mean=mean,
                         std=std if s.divide_std else None, train_scale=list(scale) if scale else None,
                         lighting=lighting)
    augmentation = Augmentation.of(r, crop, scale, lighting)
    loaders = tuple(make_loader(d, spec.preprocessing, augmentation, generator, world, s.workers, s.seed)
                    for d in (train, val, test))
    return loaders, spec
