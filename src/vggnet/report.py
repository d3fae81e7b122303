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

from .files import write_text_atomic
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
    if trainer.board.writer is not None:
        from .plots import confusion_figure
        wrong, titles, cams = mistakes(trainer, final_logits)
        trainer.board.final(result, trainer.settings(), confusion_figure(confusion, classes), wrong, titles, cams)
    return result


def mistakes(trainer: "Trainer", logits: torch.Tensor, k: int = 16, cams: int = 4) -> tuple:
    """The ``k`` test images misclassified with the highest confidence (uint8 crops), a line
    for each (what it is, what the net said), and Grad-CAM overlays of the first ``cams``."""
    from .plots import overlay_heatmap
    from .prediction import grad_cam
    probs = torch.softmax(logits.float(), 1)
    confidence, predicted = probs.max(1)
    wrong = (predicted != trainer.test.labels).nonzero().flatten()
    order = wrong[confidence[wrong].argsort(descending=True)][:k]
    images = trainer.test.test_crops(order)
    names = trainer.spec.class_names
    titles = [f"{i}: a {names[trainer.test.labels[i]]}, taken for a {names[predicted[i]]} "
              f"({100 * confidence[i]:.1f} %)" for i in order.tolist()]
    model, device = trainer.eval_model.float(), trainer.world.device
    maps = [overlay_heatmap(img, grad_cam(model, trainer.spec.preprocessing.normalize(img[None].to(device)),
                                          int(predicted[i]))[0].detach().cpu())
            for img, i in zip(images[:cams], order[:cams].tolist())]
    return images, titles, torch.stack(maps) if maps else None


def write_report(out: Path, result: dict, confusion: torch.Tensor, classes: list[str]) -> None:
    from .plots import plot_confusion, plot_curves
    write_text_atomic(out / "results.json", json.dumps(result, indent=2))
    plot_curves(out / "metrics.jsonl", out / "curves.png")
    plot_confusion(confusion, classes, out / "confusion.png")
