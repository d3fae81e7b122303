"""The weights file: one owner of its format, for training checkpoints and exported
weights alike.

A weights file is one safetensors file: tensors in groups (``model.`` the weights that
evaluation uses; a training checkpoint adds ``train.``, ``optim.``, ``rng.``, ``epoch.``,
``ema.``) and a JSON header under the key ``vggnet``: ``{"model": ModelSpec, "state": ...}``.
:class:`ModelSpec` describes the network (configuration, BN, head, classes, width, dropout,
input size, preprocessing) so that it is rebuilt from the file alone. There is one writer
(temporary file, fsync, rename) and one reader. Loading never unpickles objects.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open

from .configs import CONFIGS
from .errors import VggnetError
from .files import write_safetensors_atomic
from .model import DENSE_SHAPES, HEADS, VGG, build_model, init_weights
from .preprocess import CHANNEL_ORDERS, Preprocessing, eval_scales

MAX_CLASSES, MAX_INPUT = 100_000, 4096


class WeightsError(VggnetError):
    """A weights file that is missing, not ours, or inconsistent; the message names it."""


@dataclass
class ModelSpec:
    """What a VGG is built from and what its weights file says about it (nanoGPT's config
    object): the network, its classes, and the preprocessing it was trained with."""

    config: str                                  # Table 1 letter, or B-5x5
    batch_norm: bool = False
    head: str = "paper"                          # paper, cifar or dense (model.make_head)
    num_classes: int = 1000
    width: float = 1.0                           # channel multiplier (1.0: the paper's)
    dropout: float = 0.5
    dense_from: str = "paper"                    # the head a dense net was converted from
    classes: list[str] | None = None             # names, index order
    wnids: list[str] | None = None               # ImageNet synset ids, index order
    input_size: int = 224                        # the crop side the net was trained on
    mean: list[float] | None = None              # 0..255 scale, in channel_order
    std: list[float] | None = None               # None: mean subtraction only (2.1)
    channel_order: str = "RGB"                   # BGR for Caffe/Keras weights
    train_scale: list[int] | None = None         # [Smin, Smax] of 3.1, sets the test scales (3.2)
    lighting: dict | None = None                 # PCA colour statistics of the training set (3.1)
    recipe: dict | None = None                   # the training recipe that produced the weights
    source: str | None = None                    # "torchvision", "keras": where converted weights came from

    def __post_init__(self) -> None:
        if self.head != "dense":       # a trained head is its own dense form's source (model.to_dense)
            self.dense_from = self.head

    @classmethod
    def of(cls, model: VGG, **fields: object) -> "ModelSpec":
        """The description of ``model``, with the other fields (classes, preprocessing) given."""
        return cls(config=model.config, batch_norm=model.batch_norm, head=model.head,
                   num_classes=model.num_classes, width=model.width, dropout=model.dropout,
                   dense_from=model.dense_from, **fields)

    def build(self, init: str = "kaiming") -> VGG:
        """The network this describes (weights freshly initialised)."""
        return build_model(self.config, batch_norm=self.batch_norm, num_classes=self.num_classes, head=self.head,
                           width=self.width, dropout=self.dropout, dense_from=self.dense_from, init=init)

    @property
    def preprocessing(self) -> Preprocessing:
        """The single-scale test preprocessing of these weights (3.2; torchvision's transforms())."""
        q, _ = eval_scales(self.input_size, self.train_scale)
        return Preprocessing.of(dataclasses.asdict(self), crop=self.input_size, resize=q)

    def for_new_classes(self, classes: list[str], image_size: int | None) -> "ModelSpec":
        """This net fine-tuned to ``classes``: configuration, input size and preprocessing kept;
        the training scale (3.1) is the weights' own range where they record one, none where the
        images already have the input size, else [crop, 2Q - crop], centred on the test scale Q,
        so that the test preprocessing stays the weights' own."""
        if len(classes) < 2:
            raise WeightsError(f"fine-tuning needs at least two classes; the data has {len(classes)}: "
                               f"{', '.join(classes)}")
        q, scale = self.preprocessing.resize, self.train_scale
        if not scale and not (image_size == self.input_size == q):
            scale = [self.input_size, 2 * q - self.input_size]
        return dataclasses.replace(self, num_classes=len(classes), classes=list(classes), wnids=None,
                                   train_scale=scale, lighting=None, recipe=None)

    @property
    def class_names(self) -> list[str]:
        return self.classes or [str(i) for i in range(self.num_classes)]

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, meta: dict, source: Path | str = "metadata") -> "ModelSpec":
        """Check keys, types and ranges before anything is built; WeightsError names ``source``."""
        if not isinstance(meta, dict):
            raise WeightsError(f"{source}: metadata is not a JSON object")
        missing = [k for k in ("config", "batch_norm", "head", "num_classes") if k not in meta]
        if missing:
            raise WeightsError(f"{source}: metadata lacks {', '.join(missing)}")
        for key, value in meta.items():
            if key not in _TYPES:
                raise WeightsError(f"{source}: unknown metadata key {key!r}")
            if not isinstance(value, _TYPES[key]) or (isinstance(value, bool) and _TYPES[key] in (int, (int, float))):
                raise WeightsError(f"{source}: metadata {key!r} has type {type(value).__name__}")
        spec = cls(**meta)
        spec._check(source)
        return spec

    def _check(self, source: Path | str) -> None:
        if self.config not in CONFIGS:
            raise WeightsError(f"{source}: unknown configuration {self.config!r}; valid: {', '.join(CONFIGS)}")
        if self.head not in HEADS or self.dense_from not in DENSE_SHAPES:
            raise WeightsError(f"{source}: unknown head {self.head!r}")
        if not 1 <= self.num_classes <= MAX_CLASSES or not 0 < self.width <= 4:
            raise WeightsError(f"{source}: num_classes or width out of range")
        if not 32 <= self.input_size <= MAX_INPUT:
            raise WeightsError(f"{source}: input_size {self.input_size} out of range [32, {MAX_INPUT}]")
        if self.classes is not None and len(self.classes) != self.num_classes:
            raise WeightsError(f"{source}: {len(self.classes)} class names for {self.num_classes} classes")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and (len(value) != 3 or not all(isinstance(v, (int, float)) for v in value)):
                raise WeightsError(f"{source}: {key} must be three numbers")
        if self.channel_order not in CHANNEL_ORDERS:
            raise WeightsError(f"{source}: channel_order must be RGB or BGR")
        count = self.parameter_count()
        if count > max_parameters():
            raise WeightsError(f"{source}: describes a {count / 1e9:.1f}-billion-parameter net, over "
                               f"the limit of {max_parameters() / 1e9:g} billion (set VGGNET_MAX_PARAMS to allow more)")

    def parameter_count(self) -> int:
        """Parameters of the net described, counted on the meta device: nothing is allocated."""
        with torch.device("meta"):
            return sum(p.numel() for p in self.build(init="paper").parameters())


def max_parameters() -> int:
    """The largest net a weights file may ask for: $VGGNET_MAX_PARAMS, else 3 billion (VGG-19
    at width 4 with the paper's head has 2.3 billion; a 196-byte header can ask for more)."""
    return int(float(os.environ.get("VGGNET_MAX_PARAMS", 3e9)))


_TYPES = {"config": str, "batch_norm": bool, "head": str, "num_classes": int, "width": (int, float),
          "dropout": (int, float), "classes": list, "mean": list, "std": (list, type(None)),
          "channel_order": str, "input_size": int, "dense_from": str, "wnids": list, "recipe": dict,
          "source": str, "train_scale": (list, type(None)), "lighting": (dict, type(None))}


def describe(model: VGG, classes: list[str] | None = None, **fields: object) -> ModelSpec:
    """The ModelSpec of ``model`` with its class names and any other fields (preprocessing ...)."""
    return ModelSpec.of(model, classes=list(classes) if classes is not None else None, **fields)


# ---- the one writer and the one reader ------------------------------------------------------
def write_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], header: dict) -> Path:
    """Write safetensors atomically (:func:`vggnet.files.write_safetensors_atomic`), so an
    interrupted write leaves the previous file whole; OSError when the disk refuses it."""
    path = Path(path)
    if path.is_dir() or str(path).endswith(os.sep):
        raise WeightsError(f"{path}: a folder; give the weights file's name (e.g. {path / 'model.safetensors'})")
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_safetensors_atomic(path, tensors, {"vggnet": json.dumps(header)})


def read_header(path: str | Path) -> dict:
    """The JSON header of a weights file, in the current layout ({"model": ..., ...});
    WeightsError for a missing file, a foreign one, or one without vggnet metadata."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get("vggnet")
    except (SafetensorError, OSError, ValueError) as exc:
        hint = " (a .pth/.pt file? convert it with `vggnet convert --from torchvision`)" if path.suffix in (".pth", ".pt") else ""
        raise WeightsError(f"{path}: not a safetensors weights file{hint}: {exc}") from None
    if raw is None:
        raise WeightsError(f"{path}: safetensors file without vggnet metadata")
    try:
        header = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path}: vggnet metadata is not JSON ({exc})") from None
    if isinstance(header, dict) and "model" not in header and "config" in header:
        header = {"model": header}     # files converted before checkpoints and weights shared a layout
    return header


def read_checkpoint(path: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """({"model": state_dict, "optim": ..., "rng": ...}, header) from a weights file."""
    header = read_header(path)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in load_file(str(path)).items():
        group, _, name = key.partition(".")
        groups.setdefault(group, {})[name] = value
    return groups, header


def read_metadata(path: str | Path) -> ModelSpec:
    """The ModelSpec of a weights file (or a run or Hub folder's), validated, without reading its tensors."""
    path = resolve_weights_path(path)
    config = hub_config(path)
    if config is not None:
        try:
            return ModelSpec.from_dict(json.loads(config.read_text()), config)
        except json.JSONDecodeError as exc:
            raise WeightsError(f"{config}: not JSON ({exc})") from None
    return ModelSpec.from_dict(read_header(path).get("model"), path)


HUB_CONFIG, HUB_WEIGHTS = "config.json", "model.safetensors"   # the Hugging Face Hub layout (vggnet.hub)


def hub_config(path: Path) -> Path | None:
    """config.json beside a Hub-layout model.safetensors (its tensors carry no prefix), else None."""
    config = path.parent / HUB_CONFIG
    return config if path.name == HUB_WEIGHTS and config.is_file() else None


def resolve_weights_path(path: str | Path) -> Path:
    """A weights file, or a run folder (its best checkpoint, else its last)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.safetensors", "last.safetensors", "model.safetensors"):
            if (path / name).is_file():
                return path / name
        raise WeightsError(f"{path}: a folder without best.safetensors, last.safetensors or model.safetensors")
    return path


def save_weights(path: str | Path, model: VGG, spec: ModelSpec | dict) -> Path:
    """Write ``model`` and its description as a weights file (the one writer)."""
    spec = spec if isinstance(spec, ModelSpec) else ModelSpec.from_dict(spec, path)
    spec._check(path)
    return write_checkpoint(path, {f"model.{k}": v for k, v in model.state_dict().items()}, {"model": spec.to_dict()})


def load_weights(path: str | Path) -> tuple[VGG, ModelSpec]:
    """(model in eval mode, its ModelSpec) from a training checkpoint, converted weights,
    a run folder, or a folder in the Hugging Face Hub layout (vggnet.hub)."""
    path = resolve_weights_path(path)
    spec = read_metadata(path)
    model = spec.build()
    tensors = load_file(str(path))
    state = tensors if hub_config(path) else {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    load_matching(model, state, path, "the model its metadata describes")
    return model.eval(), spec


def load_matching(model: torch.nn.Module, state: dict[str, torch.Tensor], source: object,
                  target: str = "this model") -> None:
    """``model.load_state_dict(state)``, or WeightsError naming ``source``, the first tensor
    that differs and both shapes (another width or class count), or the names missing."""
    own = model.state_dict()
    for name, tensor in state.items():
        if name in own and own[name].shape != tensor.shape:
            raise WeightsError(f"{source}: {name} has shape {tuple(tensor.shape)}, {target} needs "
                               f"{tuple(own[name].shape)} (another width or number of classes?)")
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise WeightsError(f"{source}: weights do not fit {target}: "
                           + "; ".join(f"{what} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
                                       for what, names in (("missing", missing), ("unexpected", extra)) if names))
    model.load_state_dict(state)


def imagenet_classes() -> tuple[list[str], list[str]]:
    """(wnids, names) of the 1,000 ILSVRC-2012 classes in index order (sorted wnids)."""
    text = resources.files("vggnet").joinpath("imagenet_classes.tsv").read_text()
    rows = [line.split("\t") for line in text.splitlines() if line.strip()]
    return [r[1] for r in rows], [r[2] for r in rows]


# Section 3.1: "we initialised the first four convolutional layers and the last three
# fully-connected layers with the layers of net A (the intermediate layers were
# initialised randomly)". A's first four convs, matched by name in the deeper net.
WARM_START_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv3_2", "fc6", "fc7", "fc8")


def warm_start(model: VGG, source: str | Path) -> list[str]:
    """Initialise ``model`` from a checkpoint: everything when the source is the same net
    (fine-tuning at a new scale, 3.1); from a net A, the paper's seven layers, the rest
    drawn from N(0, 0.01). Returns the names of the layers copied."""
    src_model, spec = load_weights(source)
    if (spec.config, spec.batch_norm, spec.head) == (model.config, model.batch_norm, model.head):
        load_matching(model, src_model.state_dict(), source)
        return model.layer_names()
    if spec.config not in ("A", "A-LRN"):
        raise WeightsError(f"{source}: warm start copies from configuration A or from the same net "
                           f"({model.config}); this checkpoint is {spec.config}")
    init_weights(model, "paper")
    src, dst = src_model.named_layers(), model.named_layers()
    for name in WARM_START_LAYERS:
        for a, b in zip(src[name], dst[name]):
            if a.weight.shape != b.weight.shape:
                raise WeightsError(f"{source}: layer {name} has shape {tuple(a.weight.shape)}, "
                                   f"the model needs {tuple(b.weight.shape)}")
            b.load_state_dict(a.state_dict())
    return list(WARM_START_LAYERS)
