"""TensorBoard event files in a run folder (so TensorBoard names the run after it), through
torch.utils.tensorboard:
training scalars every few steps and per epoch, and at the end the test confusion matrix,
the test images the net got wrong most confidently, their Grad-CAM maps, and the run's
hyper-parameters with its final metrics. ``tensorboard --logdir runs`` shows every run.

TensorBoard is an optional extra: without the package the run says so once and goes on.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import torch

from .extras import missing


class RunBoard:
    """A run's TensorBoard writer; every method does nothing when there is none (rank > 0,
    or the package missing). On resume, events after the checkpoint's step are dropped."""

    def __init__(self, out: Path, main: bool, say: Callable[[str], None], purge_step: int | None = None) -> None:
        self.writer = None
        if not main:
            return
        package = missing("tensorboard")
        if package is not None:
            say(f"not logging to TensorBoard: the {package} package is not installed "
                "(pip install \"vggnet[tensorboard]\"); metrics.jsonl and the plots are written as always")
            return
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(out), purge_step=purge_step)

    def step(self, step: int, totals: dict, lr: float, images_per_s: float) -> None:
        """Running training loss and accuracy of the epoch so far, the rate, the speed."""
        if self.writer is None:
            return
        seen = max(totals["seen"], 1)
        self.writer.add_scalar("train/loss", totals["loss_sum"] / seen, step)
        self.writer.add_scalar("train/accuracy", totals["correct"] / seen, step)
        self.writer.add_scalar("train/learning_rate", lr, step)
        self.writer.add_scalar("train/images_per_s", images_per_s, step)

    def epoch(self, stats: dict) -> None:
        """One point per epoch: the metrics.jsonl line (x axis: epoch)."""
        if self.writer is None:
            return
        e = stats["epoch"]
        for key, tag in (("train_loss", "epoch/train_loss"), ("train_acc", "epoch/train_accuracy"),
                         ("val_loss", "epoch/val_loss"), ("val_acc", "epoch/val_accuracy"),
                         ("lr", "epoch/learning_rate"), ("images_per_s", "epoch/images_per_s")):
            if stats.get(key) is not None:
                self.writer.add_scalar(tag, stats[key], e)
        self.writer.flush()

    def final(self, result: dict, settings: object, confusion_figure: object, wrong: torch.Tensor,
              wrong_titles: list[str], cams: torch.Tensor | None) -> None:
        """The test confusion matrix, the most confidently misclassified test images (uint8
        N x 3 x H x W) with what they are and what the net said, their Grad-CAM overlays, and
        the run's hyper-parameters beside its final metrics."""
        if self.writer is None:
            return
        from torchvision.utils import make_grid
        self.writer.add_figure("test/confusion_matrix", confusion_figure)
        if len(wrong):
            self.writer.add_image("test/most_confident_mistakes", make_grid(wrong, nrow=8, padding=2))
            self.writer.add_text("test/most_confident_mistakes", "  \n".join(wrong_titles))
        if cams is not None and len(cams):
            self.writer.add_image("test/grad_cam_of_mistakes", make_grid(cams, nrow=4, padding=2))
        metrics = {f"hparam/{k}": v for k, v in result.items() if isinstance(v, float)}
        self.writer.add_hparams(hparams(settings), metrics, run_name=".")
        self.writer.flush()

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def hparams(settings: object) -> dict:
    """The run's settings and recipe as TensorBoard hyper-parameters (numbers, strings, bools)."""
    flat = {}
    values = dataclasses.asdict(settings)
    recipe = values.pop("recipe") or {}
    for key, value in {**values, **{f"recipe.{k}": v for k, v in recipe.items()}}.items():
        if isinstance(value, (int, float, str, bool)):
            flat[key] = value
        elif value is not None:
            flat[key] = str(value)
    return flat
