"""The learning rate over a run, as one object saved with every checkpoint.

``plateau`` is the paper's (section 3.1): the rate divided by 10 when the validation
accuracy stops improving, the run stopped after three cuts. ``onecycle`` is ours for short
budgets: a linear warm-up, then a linear decay to zero at the last step. A time budget
(``--budget``) sets a one-cycle run's length from the pace of its first epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

from .configs import Recipe
from .errors import VggnetError


def onecycle_lr(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up from peak/10 to peak over ``warmup`` steps, then linear decay to 0."""
    if step < warmup:
        return peak * (0.1 + 0.9 * step / warmup)
    return peak * max(0.0, (total - step) / max(1, total - warmup))


def budget_epochs(budget_min: float, epoch_s: float) -> int:
    """Whole epochs of ``epoch_s`` seconds (training and validation) in ``budget_min`` minutes, at least one."""
    return max(1, int(60 * budget_min // epoch_s))


@dataclass
class Schedule:
    """The recipe's learning-rate schedule and where it stands: the rate, the cuts made,
    the best validation accuracy and the epochs since it improved."""

    recipe: Recipe
    steps_per_epoch: int
    budget_min: float = 0.0
    lr: float = 0.0
    lr_cuts: int = 0
    best_val: float = -1.0
    stale: int = 0

    def __post_init__(self) -> None:
        if self.budget_min < 0:
            raise VggnetError(f"budget (--budget) must be minutes > 0; got {self.budget_min:g}")
        if self.budget_min and self.recipe.schedule != "onecycle":
            raise VggnetError(f"budget (--budget) needs a recipe with a fixed-length (onecycle) schedule; recipe "
                              f"{self.recipe.name!r} has schedule {self.recipe.schedule!r}: use --time-limit")
        self.lr = self.lr or self.recipe.lr

    def lr_at(self, step: int) -> float:
        """The rate for ``step`` (counted over the whole run); the plateau rate is set per epoch."""
        r = self.recipe
        if r.schedule == "onecycle":
            total = r.epochs * self.steps_per_epoch
            self.lr = onecycle_lr(step, total, int(r.warmup_epochs * self.steps_per_epoch), r.lr)
        return self.lr

    def after_epoch(self, val_acc: float) -> bool:
        """Record an epoch's validation accuracy; cut the plateau rate by its factor when it
        has not improved for ``plateau_patience`` epochs (3.1). True if it is the best yet."""
        r = self.recipe
        improved = val_acc > self.best_val
        self.stale = 0 if improved else self.stale + 1
        if r.schedule == "plateau" and self.stale >= r.plateau_patience and self.lr_cuts < r.max_lr_cuts:
            self.lr *= r.plateau_factor
            self.lr_cuts += 1
            self.stale = 0      # after the last cut, a stall ends the run instead (finished)
        self.best_val = max(self.best_val, val_acc)
        return improved

    def finished(self, epoch: int) -> bool:
        """After ``epoch`` epochs: the recipe's length reached, or (plateau) the last cut spent."""
        r = self.recipe
        if epoch >= r.epochs:
            return True
        return r.schedule == "plateau" and self.lr_cuts >= r.max_lr_cuts and self.stale >= r.plateau_patience

    def fit_to_budget(self, epoch_s: float) -> int:
        """Set the length to the epochs that fit the budget at ``epoch_s`` per epoch. With a
        warm-up of at least one epoch, epoch 1 did not depend on the length, so the run
        equals one started with that many epochs."""
        self.recipe = self.recipe.replace(epochs=budget_epochs(self.budget_min, epoch_s))
        return self.recipe.epochs

    def state_dict(self) -> dict:
        return {"lr": self.lr, "lr_cuts": self.lr_cuts, "best_val": self.best_val, "stale": self.stale,
                "budget_min": self.budget_min}

    def load_state_dict(self, state: dict, saved_epochs: int, epoch: int, source: object) -> None:
        """Restore the schedule; a budgeted run keeps its budget and, after epoch 1, the epochs
        it chose, whether or not the budget is given again; a run started without a budget
        cannot take one once epoch 1 has set its length."""
        if state.get("budget_min"):
            self.budget_min = state["budget_min"]
            if epoch >= 1:
                self.recipe = self.recipe.replace(epochs=saved_epochs)
        elif self.budget_min and epoch >= 1:
            raise VggnetError(f"{source}: the run was started without --budget and is past epoch 1, where a budget "
                              "is turned into epochs; resume it without --budget (or with --epochs)")
        self.lr, self.lr_cuts = state["lr"], state["lr_cuts"]
        self.best_val, self.stale = state["best_val"], state["stale"]
