"""What a training checkpoint holds beyond the weights, saved and restored as one object:
:class:`TrainState` (where the run stands, to the batch) and the tensors that make a
resumed run continue bit for bit (the trained weights under a moving average, the
momentum buffers, the RNG states, the epoch's permutation).

The file itself is written and read by :mod:`vggnet.weights`, the format's one owner.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.optim.swa_utils import AveragedModel


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
    return groups.get("epoch", {}).get("perm")
