"""What a training checkpoint holds beyond the weights, saved and restored as one object:
:class:`TrainState` (where the run stands, to the batch) and the tensors that make a
resumed run continue bit for bit (the trained weights under a moving average, the
momentum buffers, the RNG states, the epoch's permutation).

The file itself is written and read by :mod:`vggnet.weights`, the format's one owner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.optim.swa_utils import AveragedModel

from .distributed import barrier
from .settings import RunSettings, recipe_changes, settings_changes
from .weights import read_checkpoint, write_checkpoint

if TYPE_CHECKING:
    from .training import Trainer


def fresh_partial() -> dict[str, float]:
    """An epoch's progress before its first step: loss, hits and images so far, and the
    seconds spent (in all, and on data), kept in the checkpoint across a stop and --resume."""
    return {"loss_sum": 0.0, "correct": 0.0, "seen": 0.0, "time_s": 0.0, "data_s": 0.0}


@dataclass
class TrainState:
    """Where a run stands: epochs and steps done, the batch reached in this epoch, its
    running totals, and its order of the training images (kept to resume mid-epoch)."""

    epoch: int = 0
    step: int = 0
    batch_in_epoch: int = 0
    partial: dict[str, float] = field(default_factory=fresh_partial)
    perm: torch.Tensor | None = None

    def start_epoch(self, n: int, generator: torch.Generator) -> None:
        """A new epoch's permutation and empty totals, unless one is under way (resumed)."""
        if self.perm is None:
            self.perm, self.batch_in_epoch, self.partial = torch.randperm(n, generator=generator), 0, fresh_partial()

    def header(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "batch_in_epoch": self.batch_in_epoch, "partial": self.partial}

    @classmethod
    def restore(cls, header: dict, perm: torch.Tensor | None) -> "TrainState":
        """From a checkpoint; an old one's missing time fields are filled in once, here."""
        return cls(header["epoch"], header["step"], header["batch_in_epoch"],
                   {**fresh_partial(), **header["partial"]}, perm)


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


def save_training_checkpoint(trainer: "Trainer", path: Path) -> None:
    """The weights, their description, the settings and the train state in one file."""
    tensors = training_tensors(trainer.model, trainer.ema, trainer.opt, trainer.gen, trainer.state)
    header = {"model": trainer.metadata().to_dict(), "settings": trainer.settings().to_dict(),
              "state": {**trainer.state.header(), **trainer.schedule.state_dict()}}
    if trainer.world.main:   # one writer; the others wait until the file is complete
        write_checkpoint(path, tensors, header)
    barrier(trainer.world)


def resume_training_checkpoint(trainer: "Trainer", path: Path) -> None:
    """Continue the run in ``path``: refused if the model, the recipe or another setting
    differs from the run's (only the length and time limits may change)."""
    if not path.is_file():
        raise ValueError(f"cannot resume: no checkpoint at {path}")
    groups, header = read_checkpoint(path)
    m, st = header["model"], header["state"]
    if (m["config"], m["batch_norm"], m["num_classes"]) != (trainer.spec.config, trainer.spec.batch_norm,
                                                            trainer.spec.num_classes):
        raise ValueError(f"{path}: checkpoint is config {m['config']} bn={m['batch_norm']} with {m['num_classes']} "
                         f"classes, the run wants {trainer.spec.config} bn={trainer.spec.batch_norm} with "
                         f"{trainer.spec.num_classes}")
    if (trainer.ema is not None) != ("train" in groups):
        raise ValueError(f"{path}: checkpoint was trained {'with' if 'train' in groups else 'without'} a moving "
                         f"average of the weights (ema); resume it with the recipe it was started with")
    trainer.schedule.load_state_dict(st, m.get("recipe", {}).get("epochs", trainer.r.epochs), st["epoch"], path)
    changed = recipe_changes(m.get("recipe", {}), trainer.r)
    if changed:
        raise ValueError(f"{path}: the run was started with another recipe ({changed}); resume it with the "
                         "options it was started with (see its run.json), or train into a new --out")
    if "settings" in header:
        changed = settings_changes(RunSettings.from_dict(header["settings"]), trainer.s)
        if changed:
            raise ValueError(f"{path}: the run was started with other settings ({changed}); resume it with "
                             "`vggnet train --resume RUN_DIR` alone, or train into a new --out")
    perm = restore_tensors(groups, trainer.model, trainer.ema, trainer.opt, trainer.gen)
    trainer.state = TrainState.restore(st, perm)
    if trainer.schedule.finished(trainer.state.epoch) and (trainer.out / "results.json").is_file():
        raise ValueError(f"{trainer.out} is finished ({trainer.state.epoch} of {trainer.r.epochs} epochs): "
                         f"give --epochs above {trainer.r.epochs} to continue it, or see its results.json")
    trainer.progress.say(f"resuming {trainer.out} at epoch {trainer.state.epoch + 1} of {trainer.r.epochs}")
