"""What a run trains and where: :class:`RunSettings`, and :func:`resolve_settings`, the one
function that turns options (the CLI's flags or the Python API's keywords) into them.

The rules live here, once: BatchNorm as the name says (``vgg16`` plain, ``vgg16_bn`` or
``batch_norm=True`` with BN, letters as in the paper: plain); the recipe for nets with BN
(``fast``) and without (``fast-plain``); a run folder named after what is trained; a
resumed run's settings read back from its checkpoint, where only the length and the
time limits of the run may change.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from .configs import Recipe, get_recipe, model_name, resolve_config
from .errors import VggnetError

DEFAULT_CONFIG = "vgg16_bn"
# What a resumed run may change: its length and limits, and how this machine runs it.
RESUMABLE = {"budget_min", "time_limit_min", "stop_after_steps", "threads", "workers", "log_every", "device",
             "compile"}
PER_PROCESS = {"stop_after_steps": 0, "time_limit_min": 0.0}   # not carried over to a resumed process
RECIPE_FIELDS = {f.name for f in dataclasses.fields(Recipe)} - {"name"}


@dataclass
class RunSettings:
    """What to train and where; the recipe holds the hyper-parameters. None means "resolve
    by the rule" (:meth:`resolved`), so the CLI and the API get the same run."""

    config: str = DEFAULT_CONFIG         # Table 1 letter or name ("vgg16_bn")
    batch_norm: bool | None = None       # None: as the name says (letters: the paper's, without BN)
    recipe: Recipe | None = None         # None: "fast" with BatchNorm, "fast-plain" without
    data: str | None = None              # data set root; None: $VGGNET_DATA or the default locations
    download: str | None = None          # folder to download the CIFAR-10 archive into
    out: str | None = None               # run folder; None: runs/<model>-<data set>
    seed: int = 0
    val_size: float | None = None        # held out of train: a count, a fraction, 0 for none; None: 10 %
    width: float = 1.0                   # channel multiplier (tests use 1/16)
    divide_std: bool = True              # divide by the per-channel std after mean subtraction
    threads: int = 0                     # torch threads; 0 keeps torch's default
    limit_train: int = 0                 # use only a seeded random N of the training images (0: all)
    limit_test: int = 0
    log_every: int = 20                  # steps between progress updates
    stop_after_steps: int = 0            # checkpoint and stop after this many steps of this process (0: never)
    time_limit_min: float = 0.0          # checkpoint and stop after this many minutes (0: no limit)
    budget_min: float = 0.0              # onecycle: set the epochs to what fits this many minutes, timed on epoch 1
    init_from: str | None = None         # warm start (3.1): a checkpoint of A, or of the same net at another scale
    stream: bool | None = None           # None: decode into memory when the images fit and share one size
    workers: int = 2                     # DataLoader workers of the streaming path
    sync_bn: bool = False                # under torchrun: BatchNorm statistics over the global batch
    skip_bad: bool = False               # leave unreadable images out (listed in skipped.txt) instead of stopping
    checkpoint_activations: bool = False # recompute conv activations in backward: less memory, ~1/3 more compute
    pretrained: str | None = None        # fine-tuning: weights whose net, preprocessing and input size are kept
    freeze_until: str | None = None      # fine-tuning: layers up to this one ("conv4_3", "fc7") stay fixed
    backbone_lr_scale: float = 0.1       # fine-tuning: the pretrained layers' lr as a share of the new head's
    device: str = "auto"                 # auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps
    compile: bool = False                # torch.compile the training step's model (one compilation per shape)

    def resolved(self) -> "RunSettings":
        """A copy with every rule applied: the configuration as (letter, batch_norm), the
        recipe, the data path (absolute) and the run folder."""
        from .data import find_data
        from .weights import resolve_weights_path
        self.check()
        letter, bn = resolve_config(self.config, self.batch_norm)
        width, suffix = self.width, ""
        pretrained = self.pretrained
        if pretrained:               # the net is the weights' own
            letter, bn, width, suffix = self._pretrained_net()
            pretrained = str(resolve_weights_path(pretrained))
        recipe = self.recipe or self.default_recipe()
        data = self.data
        if self.download is None:
            data = str(find_data(self.data).resolve())
        out = self.out or str(Path("runs") / f"{model_name(letter, bn)}-{dataset_name(data)}{suffix}")
        return dataclasses.replace(self, config=letter, batch_norm=bn, width=width, recipe=recipe, data=data, out=out,
                                   pretrained=pretrained)

    def default_recipe(self) -> Recipe:
        """The rule: ``finetune`` for pretrained weights, ``fast`` with BatchNorm, ``fast-plain`` without."""
        return get_recipe("finetune" if self.pretrained else
                          "fast" if resolve_config(self.config, self.batch_norm)[1] else "fast-plain")

    def _pretrained_net(self) -> tuple[str, bool, float, str]:
        """(letter, batch_norm, width, run-folder suffix) of the weights to fine-tune."""
        from .weights import read_metadata
        spec = read_metadata(self.pretrained)
        if self.init_from:
            raise VggnetError("give --init-from (a warm start, 3.1) or pretrained weights to fine-tune, not both")
        if not 0 <= self.backbone_lr_scale <= 1:
            raise VggnetError(f"--backbone-lr-scale must be in [0, 1]; got {self.backbone_lr_scale:g}")
        return spec.config, spec.batch_norm, spec.width, "-finetune"

    def check(self) -> None:
        """Every number in its range, or a ValueError naming the option, before a folder or a
        byte of data is touched (the recipe's own in Recipe.check)."""
        rules = [("seed", self.seed >= 0, ">= 0"), ("threads", self.threads >= 0, ">= 0 (0: torch's default)"),
                 ("limit_train", self.limit_train >= 0, ">= 0 (0: all)"),
                 ("limit_test", self.limit_test >= 0, ">= 0 (0: all)"), ("log_every", self.log_every >= 1, ">= 1"),
                 ("time_limit_min", self.time_limit_min >= 0, "minutes >= 0 (0: none)"),
                 ("stop_after_steps", self.stop_after_steps >= 0, ">= 0"), ("workers", self.workers >= 0, ">= 0"),
                 ("width", 0 < self.width <= 4, "in (0, 4]")]
        flags = {"time_limit_min": "time-limit", "limit_train": "limit-train", "limit_test": "limit-test",
                 "log_every": "log-every", "stop_after_steps": "stop-after-steps"}
        for name, ok, expected in rules:
            if not ok:
                raise VggnetError(f"{name.replace('_min', '')} (--{flags.get(name, name)}) must be {expected}; "
                                  f"got {getattr(self, name)}")
        if self.recipe is not None:
            self.recipe.check()
        from .runtime import resolve_device
        resolve_device(self.device)      # a device the machine lacks: one line, before anything runs

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))   # tuples as lists, as saved

    @classmethod
    def from_dict(cls, saved: dict) -> "RunSettings":
        """The settings a run.json or checkpoint recorded (fields this version lacks are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in saved.items() if k in names}
        if isinstance(values.get("recipe"), dict):
            values["recipe"] = Recipe.from_dict(values["recipe"])
        return cls(**values)


def dataset_name(data: str | None) -> str:
    """A run folder's second half: the data set's folder name (CIFAR-10 when downloaded)."""
    if data is None:
        return "cifar10"
    name = Path(data).name
    return name[: -len(".tar.gz")] if name.endswith(".tar.gz") else name


def saved_settings(out: str | Path) -> RunSettings:
    """The settings a run was started with: from its last checkpoint, else its run.json."""
    from .weights import read_header
    out = Path(out)
    checkpoint = out / "last.safetensors"
    if not checkpoint.is_file():
        raise VggnetError(f"cannot resume: no checkpoint at {checkpoint}")
    saved = read_header(checkpoint).get("settings")
    if saved is None and (out / "run.json").is_file():
        saved = json.loads((out / "run.json").read_text()).get("settings")
    if saved is None:
        raise VggnetError(f"cannot resume {out}: neither its checkpoint nor a run.json records the run's settings")
    settings = RunSettings.from_dict(saved)
    return dataclasses.replace(settings, out=str(out))


def resolve_settings(resume: bool = False, recipe: str | Recipe | None = None, **options: object) -> RunSettings:
    """Options -> resolved RunSettings: ``options`` are RunSettings fields and recipe fields
    (``epochs``, ``lr`` ...) given by the user; None means not given. ``resume``: the run in
    ``out`` supplies everything not given (:func:`check_resumable` judges what was)."""
    options = {k: v for k, v in options.items() if v is not None}
    unknown = set(options) - RECIPE_FIELDS - {f.name for f in dataclasses.fields(RunSettings)}
    if unknown:
        raise VggnetError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    changes = {k: options.pop(k) for k in RECIPE_FIELDS & set(options)}
    if resume:
        if not options.get("out"):
            raise VggnetError("--resume needs the run folder: --resume RUN_DIR (or --out RUN_DIR --resume)")
        base = dataclasses.replace(saved_settings(options["out"]), **PER_PROCESS)   # limits of the stopped process end with it
        if "config" in options and "batch_norm" not in options:   # a name given again decides BN again
            options["batch_norm"] = None
        start = get_recipe(recipe) if isinstance(recipe, str) and recipe != base.recipe.name else \
            recipe if isinstance(recipe, Recipe) else base.recipe
        return dataclasses.replace(base, **options, recipe=start.replace(**changes)).resolved()
    settings = RunSettings(**options)
    base = recipe if isinstance(recipe, Recipe) else get_recipe(recipe) if recipe else settings.default_recipe()
    settings.recipe = base.replace(**changes)   # checked with the rest before any data is looked for
    return settings.resolved()


def settings_changes(saved: RunSettings, now: RunSettings) -> str:
    """``name saved -> now`` for each setting (not the recipe) a resumed run would change,
    but those of :data:`RESUMABLE`."""
    a, b = saved.to_dict(), now.to_dict()
    return ", ".join(f"{k} {a[k]!r} -> {b[k]!r}" for k in a
                     if k not in RESUMABLE | {"recipe", "out"} and k in b and a[k] != b[k])


def recipe_changes(saved: dict, recipe: Recipe) -> str:
    """``name saved -> now`` for each recipe field a resumed run would change, but a larger
    ``epochs`` (a finished run may be continued); fields older checkpoints lack are not compared."""
    now = json.loads(json.dumps(dataclasses.asdict(recipe)))   # tuples as lists, like the saved JSON
    return ", ".join(f"{k} {saved[k]!r} -> {now[k]!r}" for k in now if k in saved and saved[k] != now[k]
                     and not (k == "epochs" and now[k] > saved[k]))
