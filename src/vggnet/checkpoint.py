"""What a training checkpoint holds beyond the weights, saved and restored as one object:
:class:`TrainState` (where the run stands, to the batch, and the metrics of every epoch
done) and the tensors that make a resumed run continue bit for bit (the trained weights
under a moving average, the momentum buffers, the RNG states, the epoch's permutation).

An epoch is committed in one order (:func:`commit_epoch`): ``last.safetensors``, which holds
the epoch's metrics, then ``best.safetensors``, then ``metrics.jsonl`` rewritten from it. A
kill or a full disk between any two leaves what ``--resume`` repairs: metrics.jsonl from
the checkpoint, best from last when last is the best epoch. The file itself is written and
read by :mod:`vggnet.weights`, the format's one owner.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.optim.swa_utils import AveragedModel

from .distributed import barrier
from .errors import VggnetError, os_error
from .files import copy_atomic, write_text_atomic
from .settings import RunSettings, recipe_changes, settings_changes
from .weights import read_checkpoint, read_header, write_checkpoint

if TYPE_CHECKING:
    from .training import Trainer


def fresh_partial() -> dict[str, float]:
    """An epoch's progress before its first step: loss, hits and images so far, and the
    seconds spent (in all, and on data), kept in the checkpoint across a stop and --resume."""
    return {"loss_sum": 0.0, "correct": 0.0, "seen": 0.0, "time_s": 0.0, "data_s": 0.0}


@dataclass
class TrainState:
    """Where a run stands: epochs and steps done, the batch reached in this epoch, its
    running totals, its order of the training images (kept to resume mid-epoch), the
    metrics of every epoch done (metrics.jsonl's lines) and the epoch of the best one."""

    epoch: int = 0
    step: int = 0
    batch_in_epoch: int = 0
    partial: dict[str, float] = field(default_factory=fresh_partial)
    perm: torch.Tensor | None = None
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0

    def start_epoch(self, n: int, generator: torch.Generator) -> None:
        """A new epoch's permutation and empty totals, unless one is under way (resumed)."""
        if self.perm is None:
            self.perm, self.batch_in_epoch, self.partial = torch.randperm(n, generator=generator), 0, fresh_partial()

    def header(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "batch_in_epoch": self.batch_in_epoch, "partial": self.partial,
                "history": self.history, "best_epoch": self.best_epoch}

    @classmethod
    def restore(cls, header: dict, perm: torch.Tensor | None, out: Path) -> "TrainState":
        """From a checkpoint; an old one's missing fields are filled in once, here (its
        history from the run's metrics.jsonl, up to the checkpoint's epoch)."""
        history = header.get("history")
        if history is None:
            history = [row for row in read_metrics(out / "metrics.jsonl") if row.get("epoch", 0) <= header["epoch"]]
        return cls(header["epoch"], header["step"], header["batch_in_epoch"],
                   {**fresh_partial(), **header["partial"]}, perm, history, header.get("best_epoch", 0))


def read_metrics(path: Path) -> list[dict]:
    """The lines of a metrics.jsonl (none if it is missing; a torn last line is dropped)."""
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def write_metrics(path: Path, history: list[dict]) -> None:
    """metrics.jsonl: one JSON line per epoch done, rewritten whole (atomic) from the checkpoint's history."""
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in history))


def training_tensors(model: torch.nn.Module, ema: AveragedModel | None, opt: torch.optim.Optimizer,
                     generator: torch.Generator, state: TrainState) -> dict[str, torch.Tensor]:
    """``model.``: the weights evaluation uses (what eval, predict and export read); with a
    moving average, ``train.`` holds the trained weights that resuming needs."""
    evaluated = ema.module if ema is not None else model
    tensors = {f"model.{k}": v for k, v in evaluated.state_dict().items()}
    if ema is not None:
        tensors.update({f"train.{k}": v for k, v in model.state_dict().items()})
        tensors["ema.n_averaged"] = ema.n_averaged
    for i, p in enumerate(p for g in opt.param_groups for p in g["params"]):
        buf = opt.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"optim.{i}"] = buf
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.gen"] = generator.get_state()
    device = next(model.parameters()).device
    if device.type == "cuda":   # dropout on a GPU draws from its own generator
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    if state.perm is not None:
        tensors["epoch.perm"] = state.perm
    return {k: v.detach().cpu() for k, v in tensors.items()}


def restore_tensors(groups: dict[str, dict[str, torch.Tensor]], model: torch.nn.Module, ema: AveragedModel | None,
                    opt: torch.optim.Optimizer, generator: torch.Generator) -> torch.Tensor | None:
    """Load what :func:`training_tensors` saved (the caller checked that the moving average
    is kept or not as when it was saved); returns the epoch's permutation (or None)."""
    model.load_state_dict(groups["train" if ema is not None else "model"])
    if ema is not None:
        ema.module.load_state_dict(groups["model"])
        ema.n_averaged.copy_(groups["ema"]["n_averaged"])
    params = [p for g in opt.param_groups for p in g["params"]]
    for key, buf in groups.get("optim", {}).items():
        opt.state[params[int(key)]]["momentum_buffer"] = buf.clone().to(params[int(key)].device)
    torch.set_rng_state(groups["rng"]["torch"])
    generator.set_state(groups["rng"]["gen"])
    device = next(model.parameters()).device
    if device.type == "cuda" and "cuda" in groups["rng"]:   # exact resume is promised on the same device
        torch.cuda.set_rng_state(groups["rng"]["cuda"], device)
    return groups.get("epoch", {}).get("perm")


def save_training_checkpoint(trainer: "Trainer", *paths: Path) -> None:
    """The weights, their description, the settings and the train state in one file, written
    to each of ``paths`` in order. A failed write (a full disk) leaves the previous file
    whole and says how to go on."""
    tensors = training_tensors(trainer.model, trainer.ema, trainer.opt, trainer.gen, trainer.state)
    header = {"model": trainer.metadata().to_dict(), "settings": trainer.settings().to_dict(),
              "state": {**trainer.state.header(), **trainer.schedule.state_dict()}}
    if trainer.world.main:   # one writer; the others wait until the file is complete
        for path in paths:
            try:
                write_checkpoint(path, tensors, header)
            except OSError as exc:
                raise os_error(exc, "write the checkpoint", path, continue_hint(trainer.out)) from None
    barrier(trainer.world)


def continue_hint(out: Path) -> str:
    """What to do after a failed write: resume from the checkpoint the run folder keeps."""
    if (out / "last.safetensors").is_file():
        return (f"the run folder keeps its last complete checkpoint; free some space and continue with "
                f"`vggnet train --resume {out}`")
    return "no checkpoint was written yet; free some space and start the run again"


def commit_epoch(trainer: "Trainer", is_best: bool) -> None:
    """An epoch's checkpoint, best weights and metrics line, in the order that --resume can
    repair from (see the module's docstring)."""
    out = trainer.out
    save_training_checkpoint(trainer, out / "last.safetensors", *([out / "best.safetensors"] if is_best else []))
    if trainer.world.main:
        try:
            write_metrics(out / "metrics.jsonl", trainer.state.history)
        except OSError as exc:
            raise os_error(exc, "write", out / "metrics.jsonl", continue_hint(out)) from None


def repair_run_folder(out: Path, state: TrainState) -> None:
    """After a kill or a full disk mid-commit: metrics.jsonl as the checkpoint has it, and
    best.safetensors from last when the checkpoint's epoch was the best and best lags."""
    write_metrics(out / "metrics.jsonl", state.history)
    last, best = out / "last.safetensors", out / "best.safetensors"
    if state.best_epoch and state.best_epoch == state.epoch and state.perm is None:   # last is that epoch's end
        best_epoch = read_header(best).get("state", {}).get("epoch") if best.is_file() else None
        if best_epoch != state.best_epoch:
            copy_atomic(last, best)


def resume_training_checkpoint(trainer: "Trainer", path: Path) -> None:
    """Continue the run in ``path``: refused if the model, the recipe or another setting
    differs from the run's (only the length and time limits may change)."""
    if not path.is_file():
        raise VggnetError(f"cannot resume: no checkpoint at {path}")
    groups, header = read_checkpoint(path)
    m, st = header["model"], header["state"]
    if (m["config"], m["batch_norm"], m["num_classes"]) != (trainer.spec.config, trainer.spec.batch_norm,
                                                            trainer.spec.num_classes):
        raise VggnetError(f"{path}: checkpoint is config {m['config']} bn={m['batch_norm']} with {m['num_classes']} "
                          f"classes, the run wants {trainer.spec.config} bn={trainer.spec.batch_norm} with "
                          f"{trainer.spec.num_classes}")
    if (trainer.ema is not None) != ("train" in groups):
        raise VggnetError(f"{path}: checkpoint was trained {'with' if 'train' in groups else 'without'} a moving "
                          f"average of the weights (ema); resume it with the recipe it was started with")
    trainer.schedule.load_state_dict(st, m.get("recipe", {}).get("epochs", trainer.r.epochs), st["epoch"], path)
    changed = recipe_changes(m.get("recipe", {}), trainer.r)
    if changed:
        raise VggnetError(f"{path}: the run was started with another recipe ({changed}); resume it with the "
                          "options it was started with (see its run.json), or train into a new --out")
    if "settings" in header:
        changed = settings_changes(RunSettings.from_dict(header["settings"]), trainer.s)
        if changed:
            raise VggnetError(f"{path}: the run was started with other settings ({changed}); resume it with "
                              "`vggnet train --resume RUN_DIR` alone, or train into a new --out")
    perm = restore_tensors(groups, trainer.model, trainer.ema, trainer.opt, trainer.gen)
    trainer.state = TrainState.restore(st, perm, trainer.out)
    if trainer.world.main:
        repair_run_folder(trainer.out, trainer.state)
    if trainer.schedule.finished(trainer.state.epoch) and (trainer.out / "results.json").is_file():
        raise VggnetError(f"{trainer.out} is finished ({trainer.state.epoch} of {trainer.r.epochs} epochs): "
                          f"give --epochs above {trainer.r.epochs} to continue it, or see its results.json")
    trainer.progress.say(f"resuming {trainer.out} at epoch {trainer.state.epoch + 1} of {trainer.r.epochs}")
