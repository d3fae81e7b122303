"""A run's final report: test accuracy of the last and of the best-validation weights,
per-class accuracy and the confusion matrix, the plots, and results.json.

The test set is read here only, once training is over (the paper's protocol: the test
images never steer training; the validation hold-out does, section 3.1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .weights import read_checkpoint

if TYPE_CHECKING:
    from .training import Trainer


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, n: int) -> torch.Tensor:
    """(n, n) counts, rows true class, columns predicted."""
    return torch.bincount(labels * n + pred, minlength=n * n).reshape(n, n)


def final_report(trainer: "Trainer") -> dict:
    """Test accuracy of the last and the best-validation weights (the moving averages when
    the recipe keeps one, and then also the last trained weights); on rank 0, per-class
    accuracy, results.json, curves.png and confusion.png in the run folder."""
    test, out = trainer.test, trainer.out
    final_logits = trainer.predict(test)
    result = {"final_test_acc": accuracy(final_logits, test.labels), "epochs": trainer.state.epoch}
    if trainer.ema is not None:
        result["final_test_acc_without_ema"] = accuracy(trainer.predict(test, model=trainer.model), test.labels)
    best = out / "best.safetensors"
    if best.is_file():
        trainer.eval_model.load_state_dict(read_checkpoint(best)[0]["model"])
        result["best_val_test_acc"] = accuracy(trainer.predict(test), test.labels)
        result["best_val_acc"] = trainer.schedule.best_val
    if not trainer.world.main:
        return result
    classes = trainer.spec.class_names
    confusion = confusion_matrix(final_logits.argmax(1), test.labels, len(classes))
    per_class = (confusion.diag() / confusion.sum(1).clamp(min=1)).tolist()
    result["per_class_acc"] = dict(zip(classes, per_class))
    write_report(out, result, confusion, classes)
    return result


def write_report(out: Path, result: dict, confusion: torch.Tensor, classes: list[str]) -> None:
    from .plots import plot_confusion, plot_curves
    (out / "results.json").write_text(json.dumps(result, indent=2))
    plot_curves(out / "metrics.jsonl", out / "curves.png")
    plot_confusion(confusion, classes, out / "confusion.png")
