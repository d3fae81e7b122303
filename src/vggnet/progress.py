"""What a run says while it runs: a header, progress every few steps with the run's ETA,
one line per epoch, and a closing summary that says where the files are.

In a terminal the steps drive a tqdm bar; elsewhere (nohup, a log file, CI, a notebook's
captured output) they are plain lines every ``log_every`` steps, so a log is never silent.
Only rank 0 speaks.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tqdm import tqdm

from .configs import model_name
from .model import count_parameters
from .runtime import machine


def epochs(n: int) -> str:
    return f"{n} epoch{'' if n == 1 else 's'}"


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


class Progress:
    """Lines about one run; ``steps_done`` / ``steps_total`` over the whole run give the ETA."""

    def __init__(self, main: bool, log_every: int, stream: object = None) -> None:
        self.main, self.log_every = main, max(1, log_every)
        self.terminal = bool(getattr(stream or sys.stderr, "isatty", lambda: False)())
        self.started = time.perf_counter()
        self.bar: tqdm | None = None
        self.step_times: list[float] = []     # seconds per step of this process (training only)
        self.val_s = 0.0                      # the last epoch's validation seconds

    def say(self, line: str) -> None:
        if self.main:
            tqdm.write(line)

    def header(self, trainer: object) -> None:
        """Model, parameters, data sizes, steps per epoch, precision, device, run folder."""
        t, s, spec, r = trainer, trainer.s, trainer.spec, trainer.r
        m = machine(t.world.device)
        precision = t.precision + (" (asked: bf16; no native bf16 here)" if t.precision != r.precision else "")
        self.say(f"vggnet train on {t.world.device} ({m['device_model']}): "
                 f"{model_name(spec.config, spec.batch_norm)} (config {spec.config}"
                 f"{', BN' if spec.batch_norm else ''}, head {spec.head}, width {spec.width:g}), "
                 f"{count_parameters(t.model) / 1e6:.2f} M parameters, {spec.num_classes} classes, "
                 f"{spec.input_size} px input")
        self.say(f"  data {s.data or s.download}: {len(t.train):,} train / {len(t.val):,} validation / "
                 f"{len(t.test):,} test images ({t.train.kind}); {t.schedule.steps_per_epoch} steps of {r.batch_size} "
                 "per epoch")
        self.say(f"  recipe {r.name}: {epochs(r.epochs)}, lr {r.lr:g} ({r.schedule}), {precision}"
                 f"{f', {t.world.size} processes' if t.world.size > 1 else ''}")
        self.say(f"  run folder {t.out}")

    def start_epoch(self, epoch: int, epochs: int, first: int, steps: int) -> None:
        self.epoch, self.epochs, self.steps = epoch, epochs, steps
        if self.main and self.terminal:
            self.bar = tqdm(total=steps, initial=first, desc=f"epoch {epoch}/{epochs}", leave=False,
                            dynamic_ncols=True)

    def step(self, i: int, seconds: float, totals: dict, lr: float, images_per_s: float,
             remaining: tuple[int, int]) -> None:
        """After step ``i`` (0-based) of the epoch: the bar, or a line every ``log_every`` steps."""
        self.step_times.append(seconds)
        loss, acc = totals["loss_sum"] / max(totals["seen"], 1), totals["correct"] / max(totals["seen"], 1)
        eta = self.eta(*remaining)
        if self.bar is not None:
            self.bar.update(1)
            if i % self.log_every == 0 or i == self.steps - 1:
                self.bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}", lr=f"{lr:.3g}",
                                     img_s=f"{images_per_s:.0f}", eta=minutes(eta))
        elif (i + 1) % self.log_every == 0:
            self.say(f"epoch {self.epoch}/{self.epochs} step {i + 1}/{self.steps}: loss {loss:.4f} acc {acc:.4f} "
                     f"lr {lr:.4g} {images_per_s:.0f} img/s, run ETA {minutes(eta)}")

    def eta(self, steps: int, epochs: int) -> float:
        """Seconds left: ``steps`` at the median pace of the last 50 steps, and a validation
        pass, as long as the last one, for each of the ``epochs`` left to end."""
        recent = sorted(self.step_times[-50:])
        return (steps * recent[len(recent) // 2] if recent else 0.0) + epochs * self.val_s

    def end_epoch(self, stats: dict, remaining: tuple[int, int]) -> None:
        self.val_s = stats["eval_time_s"]
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.say(f"epoch {stats['epoch']}/{self.epochs}: loss {stats['train_loss']:.4f} train {stats['train_acc']:.4f} "
                 f"val {stats['val_acc']:.4f} lr {stats['lr']:.4g} {stats['images_per_s']:.0f} img/s "
                 f"({stats['train_time_s']:.0f} s + {stats['eval_time_s']:.0f} s validation)"
                 + (f", run ETA {minutes(self.eta(*remaining))}" if remaining[0] else ""))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def summary(result: dict, out: object) -> str:
    """The closing lines of a run: accuracies, time and where its files are."""
    if result.get("stopped"):
        return (f"stopped after {epochs(result['epoch'])} and {result['batch_in_epoch']} steps of epoch "
                f"{result['epoch'] + 1}; continue with: vggnet train --resume {out}")
    lines = [f"done: {epochs(result['epochs'])} in {minutes(result.get('time_s', 0.0))}; test accuracy "
             f"{100 * result['final_test_acc']:.2f} % (final weights)"]
    if "best_val_test_acc" in result:
        lines[0] += (f", {100 * result['best_val_test_acc']:.2f} % (best validation, "
                     f"{100 * result['best_val_acc']:.2f} % on validation)")
    board = ", events.out.tfevents.* (tensorboard --logdir)" if any(Path(out).glob("events.out.tfevents.*")) else ""
    lines.append(f"files in {out}: results.json, metrics.jsonl, run.json, last.safetensors, best.safetensors, "
                 f"curves.png, confusion.png{board}")
    return "\n".join(lines)
