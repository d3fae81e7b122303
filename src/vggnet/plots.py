"""PNG plots of a run: loss and accuracy curves, and the test confusion matrix."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .files import replacing  # noqa: E402


def plot_curves(metrics: Path, out: Path) -> None:
    """Loss (training, and validation where recorded), accuracy (training on augmented
    images, validation) and the learning rate at each epoch's end, from ``metrics.jsonl``."""
    from matplotlib.ticker import MaxNLocator
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    epochs = [r["epoch"] for r in rows]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4))
    ax1.plot(epochs, [r["train_loss"] for r in rows], marker="o", label="training (augmented, label smoothing)")
    if any("val_loss" in r for r in rows):
        ax1.plot(epochs, [r.get("val_loss") for r in rows], marker="o", label="validation")
    ax1.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax1.legend()
    ax2.plot(epochs, [r["train_acc"] for r in rows], marker="o", label="training (augmented)")
    ax2.plot(epochs, [r["val_acc"] for r in rows], marker="o", label="validation")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    ax2.legend()
    ax3.plot(epochs, [r["lr"] for r in rows], marker="o")
    ax3.set(xlabel="epoch", ylabel="learning rate", title="learning rate at the epoch's end")
    for ax in (ax1, ax2, ax3):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out)


def save_figure(fig: plt.Figure, out: Path) -> None:
    """Write a PNG atomically (a temporary name, then rename) and close the figure."""
    try:
        with replacing(out, suffix=".tmp.png") as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)


def plot_confusion(confusion: torch.Tensor, classes: list[str], out: Path) -> None:
    """Row-normalised confusion matrix with the counts written in each cell, as a PNG."""
    save_figure(confusion_figure(confusion, classes), out)


def confusion_figure(confusion: torch.Tensor, classes: list[str]) -> plt.Figure:
    """The confusion matrix as a figure (for the PNG and for TensorBoard)."""
    norm = confusion.float() / confusion.sum(1, keepdim=True).clamp(min=1)
    side = max(4.5, 1 + 0.6 * len(classes))
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=90)
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title="test confusion matrix\n(counts; colour: share of the row)")
    if len(classes) <= 20:
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    return fig


def overlay_heatmap(image: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
    """uint8 (3, H, W) image with a [0, 1] (H, W) heat map over it in the jet colours (Grad-CAM)."""
    colours = torch.from_numpy(matplotlib.colormaps["jet"](heat.numpy())[..., :3]).permute(2, 0, 1).float()
    return (0.55 * image.float() + 0.45 * 255 * colours).clamp(0, 255).to(torch.uint8)


def plot_study_points(points: list[dict], out: Path) -> None:
    """``vggnet study``: top-1 error against depth, parameters and MACs, one labelled point per config."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), sharey=True)
    for ax, key, label in zip(axes, ("layers", "params_m", "macs_m"),
                              ("weight layers", "parameters (M)", "multiply-accumulates per image (M)")):
        for p in points:
            ax.errorbar(p[key], p["top1"], yerr=p["top1_std"] or None, fmt="o", capsize=3)
            ax.annotate(p["config"], (p[key], p["top1"]), textcoords="offset points", xytext=(4, 4))
        ax.set(xlabel=label, title=f"error against {label.split(' (')[0]}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 test error (%), dense, one scale")
    fig.tight_layout()
    save_figure(fig, out)
