"""The paper's tables as data: Table 1 (configurations) and the training recipes.

Table 1 is written in the paper's own notation, one token per row of the table:
``conv3-64`` is a 3x3 convolution with 64 output channels, ``conv1-256`` a 1x1
convolution (configuration C), ``LRN`` AlexNet's local response normalisation
(configuration A-LRN) and ``maxpool`` a 2x2 max-pool with stride 2. One builder
loop in :mod:`vggnet.model` turns a token list into layers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import VggnetError

# Table 1 of Simonyan & Zisserman (2014), column by column. "B-5x5" is the shallow
# control net of section 4.1 (each pair of 3x3 convs of B replaced by one 5x5 conv
# with the same receptive field); it is not one of Table 1's columns.
CONFIGS: dict[str, list[str]] = {
    "A": ["conv3-64", "maxpool", "conv3-128", "maxpool",
          "conv3-256", "conv3-256", "maxpool",
          "conv3-512", "conv3-512", "maxpool",
          "conv3-512", "conv3-512", "maxpool"],
    "A-LRN": ["conv3-64", "LRN", "maxpool", "conv3-128", "maxpool",
              "conv3-256", "conv3-256", "maxpool",
              "conv3-512", "conv3-512", "maxpool",
              "conv3-512", "conv3-512", "maxpool"],
    "B": ["conv3-64", "conv3-64", "maxpool", "conv3-128", "conv3-128", "maxpool",
          "conv3-256", "conv3-256", "maxpool",
          "conv3-512", "conv3-512", "maxpool",
          "conv3-512", "conv3-512", "maxpool"],
    "C": ["conv3-64", "conv3-64", "maxpool", "conv3-128", "conv3-128", "maxpool",
          "conv3-256", "conv3-256", "conv1-256", "maxpool",
          "conv3-512", "conv3-512", "conv1-512", "maxpool",
          "conv3-512", "conv3-512", "conv1-512", "maxpool"],
    "D": ["conv3-64", "conv3-64", "maxpool", "conv3-128", "conv3-128", "maxpool",
          "conv3-256", "conv3-256", "conv3-256", "maxpool",
          "conv3-512", "conv3-512", "conv3-512", "maxpool",
          "conv3-512", "conv3-512", "conv3-512", "maxpool"],
    "E": ["conv3-64", "conv3-64", "maxpool", "conv3-128", "conv3-128", "maxpool",
          "conv3-256", "conv3-256", "conv3-256", "conv3-256", "maxpool",
          "conv3-512", "conv3-512", "conv3-512", "conv3-512", "maxpool",
          "conv3-512", "conv3-512", "conv3-512", "conv3-512", "maxpool"],
    "B-5x5": ["conv5-64", "maxpool", "conv5-128", "maxpool",
              "conv5-256", "maxpool", "conv5-512", "maxpool", "conv5-512", "maxpool"],
}

# What `vggnet study` compares by default: Table 1 and the shallow 5x5 control net of 4.1.
STUDY_CONFIGS = ("A", "A-LRN", "B", "B-5x5", "C", "D", "E")

def conv_layers(config: str) -> int:
    """Convolutional layers of a configuration, counted from its Table 1 column."""
    return sum(1 for t in CONFIGS[config] if t.startswith("conv"))


def weight_layers(config: str) -> int:
    """Table 1's headings: the conv layers and the three FC layers (VGG-16 is D)."""
    return conv_layers(config) + 3


def config_with_convs(n: int, among: tuple[str, ...] = ("A", "B", "D", "E")) -> str | None:
    """The configuration with ``n`` 3x3 conv layers among ``among`` (how a foreign state dict
    or Keras file is recognised: torchvision and Keras ship A, B, D and E); None if none."""
    return next((c for c in among if conv_layers(c) == n), None)


def convs_per_block(config: str) -> list[int]:
    """Conv layers in each of the five blocks (between max-pools): D is [2, 2, 3, 3, 3]."""
    counts, n = [], 0
    for t in CONFIGS[config]:
        if t == "maxpool":
            counts.append(n)
            n = 0
        elif t.startswith("conv"):
            n += 1
    return counts


# Common names -> (configuration, batch_norm). torchvision's builders name D "vgg16".
ALIASES: dict[str, tuple[str, bool]] = {
    "vgg11": ("A", False), "vgg11_bn": ("A", True),
    "vgg11_lrn": ("A-LRN", False),
    "vgg13": ("B", False), "vgg13_bn": ("B", True),
    "vgg16_c": ("C", False), "vgg16_c_bn": ("C", True),
    "vgg16": ("D", False), "vgg16_bn": ("D", True),
    "vgg19": ("E", False), "vgg19_bn": ("E", True),
}



def model_name(config: str, batch_norm: bool) -> str:
    """The common name of (letter, batch_norm), "vgg16_bn" for ("D", True); the letter
    (with "_bn") for nets without one (B-5x5)."""
    for name, value in ALIASES.items():
        if value == (config, batch_norm):
            return name
    return f"{config}{'_bn' if batch_norm else ''}"


# Table 2 of the paper, exact counts for 1000 classes (as torchvision's VGGs).
PARAMETER_COUNTS: dict[str, int] = {
    "A": 132_863_336, "A-LRN": 132_863_336, "B": 133_047_848,
    "C": 133_638_952, "D": 138_357_544, "E": 143_667_240,
}

# The test protocols of section 3.2 and the table of the paper that reports each.
PROTOCOLS = ("single", "dense", "multi-scale", "multi-crop", "dense+multi-crop")
PAPER_TABLE = {"single": "Table 3", "dense": "Table 3", "multi-scale": "Table 4", "multi-crop": "Table 5",
               "dense+multi-crop": "Table 5"}

# LRN of A-LRN (section 2.2, AlexNet's setting: size 5, alpha 1e-4, beta 0.75, k 2).
INITS = ("paper", "glorot", "kaiming", "he")  # weight initialisations, see model.init_weights

LRN_SETTINGS = {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0}


def resolve_config(name: str, batch_norm: bool | None = None) -> tuple[str, bool]:
    """Map "d", "vgg16_bn", "A-LRN" ... to (Table 1 letter, batch_norm); ValueError if unknown.

    One rule for BatchNorm (not in the paper, which predates it): the name says it. A
    letter and "vgg16" are the paper's nets, without BN; "vgg16_bn" has it; an explicit
    ``batch_norm`` overrides either."""
    key = name.strip()
    for letter in CONFIGS:
        if key.upper() == letter.upper():
            return letter, bool(batch_norm)
    lowered = key.lower().replace("-", "_")
    if lowered in ALIASES:
        letter, bn = ALIASES[lowered]
        return letter, bn if batch_norm is None else bool(batch_norm)
    valid = ", ".join(list(CONFIGS) + list(ALIASES))
    raise VggnetError(f"unknown VGG configuration {name!r}; valid names: {valid}")


def parse_token(token: str) -> tuple[str, int, int]:
    """Split a Table 1 token into (kind, kernel, channels): ("conv", 3, 64), ("pool", 2, 0), ("lrn", 5, 0)."""
    if token == "maxpool":
        return "pool", 2, 0
    if token == "LRN":
        return "lrn", int(LRN_SETTINGS["size"]), 0
    kind, _, channels = token.partition("-")
    if not kind.startswith("conv") or not channels.isdigit():
        raise VggnetError(f"bad Table 1 token {token!r}")
    return "conv", int(kind[4:]), int(channels)


PRECISIONS = ("bf16", "fp16", "fp32")   # training autocast (fp16: GPUs without bf16); scoring adds int8


@dataclass(frozen=True)
class Recipe:
    """A named set of training hyper-parameters; the resolved recipe is saved with every run."""

    name: str
    optimizer: str = "sgd"            # "sgd" (momentum, section 3.1); the only one built
    lr: float = 0.01                  # peak learning rate, for batch_size examples
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4        # L2 multiplier, paper 3.1
    decay_norm_and_bias: bool = True  # False: no weight decay on BN parameters and biases
    schedule: str = "plateau"         # "plateau" (x0.1 when val acc stalls) or "onecycle"
    plateau_patience: int = 2         # epochs without val improvement before a cut
    plateau_factor: float = 0.1
    max_lr_cuts: int = 3              # paper: stopped after three cuts
    warmup_epochs: float = 0.0        # linear warm-up from 0 (onecycle)
    epochs: int = 74                  # paper: 74 epochs on ImageNet
    batch_size: int = 256             # paper: 256
    label_smoothing: float = 0.0
    dropout: float = 0.5              # dropout of the first two FC layers
    init: str = "paper"               # "paper" N(0, 0.01), "glorot", "kaiming"
    head: str = "cifar"               # classifier head for 32x32 inputs
    crop_padding: int = 4             # random crop with this reflect padding (when train_scale is None)
    train_scale: tuple[int, int] | None = None  # 3.1: smaller side rescaled to S in [min, max], then cropped
    crop_size: int = 0                # training crop side; 0: the image size in memory, 224 when streamed
    flip: bool = True                 # random horizontal flip
    cutout: int = 0                   # side of a square set to the mean colour at a random place (0: off)
    lighting: float = 0.0             # std of the PCA colour shift multiples (AlexNet, 3.1: 0.1); 0: off
    micro_batch: int = 0              # gradient accumulation: micro-batches of this size (0: off)
    tta_flip: bool = True             # average logits over the image and its mirror at eval
    ema: float = 0.0                  # per-step decay of a moving average of the weights that evaluation uses (0: off)
    precision: str = "bf16"           # "bf16" autocast (where the CPU supports it) or "fp32"

    def replace(self, **changes: object) -> "Recipe":
        """A copy with some fields changed (the CLI's overrides)."""
        return dataclasses.replace(self, **changes)

    def check(self) -> "Recipe":
        """Every number in its range, or a ValueError naming the option (before anything runs)."""
        finite = lambda v: v == v and abs(v) != float("inf")  # noqa: E731
        rules = [("epochs", self.epochs >= 1, "an integer >= 1"), ("batch_size", self.batch_size >= 1, ">= 1"),
                 ("lr", finite(self.lr) and self.lr > 0, "a number > 0"),
                 ("weight_decay", finite(self.weight_decay) and self.weight_decay >= 0, ">= 0"),
                 ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
                 ("label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)"),
                 ("dropout", 0 <= self.dropout < 1, "in [0, 1)"), ("micro_batch", self.micro_batch >= 0, ">= 0"),
                 ("cutout", self.cutout >= 0, ">= 0 (0: off)"), ("crop_size", self.crop_size >= 0, ">= 0"),
                 ("lighting", finite(self.lighting) and self.lighting >= 0, ">= 0 (0: off)"),
                 ("warmup_epochs", self.warmup_epochs >= 0, ">= 0"), ("crop_padding", self.crop_padding >= 0, ">= 0"),
                 ("ema", 0 <= self.ema < 1, "a decay in [0, 1), 0 for off")]
        for name, ok, expected in rules:
            if not ok:
                raise VggnetError(f"{name} (--{name.replace('_', '-')}) must be {expected}; got {getattr(self, name)}")
        if self.train_scale is not None and not 1 <= self.train_scale[0] <= self.train_scale[1]:
            raise VggnetError(f"train scale (--train-scale) must be SMIN <= SMAX, both >= 1; got {self.train_scale}")
        if self.precision not in PRECISIONS:
            raise VggnetError(f"precision (--precision) must be bf16, fp16 or fp32; got {self.precision!r}")
        return self

    @classmethod
    def from_dict(cls, saved: dict) -> "Recipe":
        """The recipe a run.json or checkpoint recorded (fields this version lacks are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in saved.items() if k in names}
        if values.get("train_scale") is not None:
            values["train_scale"] = tuple(values["train_scale"])
        return cls(**values)


RECIPES: dict[str, Recipe] = {
    # Section 3.1: SGD momentum 0.9, batch 256, wd 5e-4, dropout 0.5, lr 1e-2 divided
    # by 10 when validation accuracy stops improving, stopped after three cuts.
    "paper": Recipe(name="paper", init="kaiming", lighting=0.1),
    # Ours, for a short CPU budget: nesterov SGD, a linear warm-up then linear decay to
    # zero, label smoothing, no decay on BN and biases, flip test-time average.
    "fast": Recipe(name="fast", lr=0.1, nesterov=True, weight_decay=5e-4,
                   decay_norm_and_bias=False, schedule="onecycle", warmup_epochs=2.0,
                   epochs=32, batch_size=256, label_smoothing=0.1, dropout=0.0,
                   init="kaiming"),
    # "fast" for nets without BN (the Keras tutorial's VGG-16): without BN's rescaling a
    # peak lr of 0.1 diverges and torchvision's N(0, 0.01) FC layers leave the loss at
    # ln 10 for hundreds of steps; He init of fc6/fc7, half the lr and the paper's dropout.
    # 50 epochs with Cutout 8: 89.22 % test against 88.56 % in 40 without (BENCHMARKS 9).
    "fast-plain": Recipe(name="fast-plain", lr=0.05, nesterov=True, weight_decay=5e-4,
                         decay_norm_and_bias=False, schedule="onecycle", warmup_epochs=2.0,
                         epochs=50, batch_size=256, label_smoothing=0.1, dropout=0.5,
                         init="he", cutout=8),
    # Fine-tuning pretrained weights to new classes (vggnet finetune): the new fc8 at lr 0.01,
    # the pretrained layers at a tenth of it (RunSettings.backbone_lr_scale), one warm-up epoch.
    "finetune": Recipe(name="finetune", lr=0.01, nesterov=True, weight_decay=5e-4, decay_norm_and_bias=False,
                       schedule="onecycle", warmup_epochs=1.0, epochs=20, batch_size=32, label_smoothing=0.1,
                       dropout=0.5, init="paper"),
}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; ValueError listing the valid names otherwise."""
    if name not in RECIPES:
        raise VggnetError(f"unknown recipe {name!r}; valid recipes: {', '.join(RECIPES)}")
    return RECIPES[name]
