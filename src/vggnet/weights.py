"""Weights in and out: our safetensors format, and torchvision's checkpoints.

A weights file is one safetensors file: tensors under ``model.`` (training checkpoints
add ``optim.``, ``rng.`` ...) and a JSON header entry ``vggnet`` describing the model
(configuration, BN, head, classes, preprocessing). Loading never unpickles objects:
safetensors holds no code, and torchvision's ``.pth`` files are read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import json
import re
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from .model import DENSE_SHAPES, HEADS, VGG, build_model

# Preprocessing on the 0..255 scale: torchvision's ImageNet mean/std, and Caffe's (Keras
# "caffe" mode: BGR input, mean subtracted, no scaling; the paper's own, section 2.1).
TORCHVISION_PREPROCESSING = {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375], "channel_order": "RGB"}
CAFFE_PREPROCESSING = {"mean": [103.939, 116.779, 123.68], "std": None, "channel_order": "BGR"}

_META_TYPES = {"config": str, "batch_norm": bool, "head": str, "num_classes": int, "width": (int, float),
               "dropout": (int, float), "classes": list, "mean": list, "std": (list, type(None)),
               "channel_order": str, "input_size": int, "dense_from": str, "wnids": list, "recipe": dict,
               "source": str, "train_scale": (list, type(None)), "lighting": (dict, type(None))}
_REQUIRED = ("config", "batch_norm", "head", "num_classes")


class WeightsError(ValueError):
    """A weights file that is missing, not ours, or inconsistent; the message names it."""


def imagenet_classes() -> tuple[list[str], list[str]]:
    """(wnids, names) of the 1,000 ILSVRC-2012 classes in index order (sorted wnids)."""
    text = resources.files("vggnet").joinpath("imagenet_classes.tsv").read_text()
    rows = [line.split("\t") for line in text.splitlines() if line.strip()]
    return [r[1] for r in rows], [r[2] for r in rows]


def validate_metadata(meta: dict, source: Path | str) -> dict:
    """Check keys, types and ranges of a model description before it builds anything."""
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise WeightsError(f"{source}: metadata lacks {', '.join(missing)}")
    for key, value in meta.items():
        if key not in _META_TYPES:
            raise WeightsError(f"{source}: unknown metadata key {key!r}")
        if not isinstance(value, _META_TYPES[key]):
            raise WeightsError(f"{source}: metadata {key!r} has type {type(value).__name__}")
    if meta["head"] not in HEADS or meta.get("dense_from", "paper") not in DENSE_SHAPES:
        raise WeightsError(f"{source}: unknown head {meta['head']!r}")
    if not 1 <= meta["num_classes"] <= 100_000 or not 0 < meta.get("width", 1.0) <= 4:
        raise WeightsError(f"{source}: num_classes or width out of range")
    if "classes" in meta and len(meta["classes"]) != meta["num_classes"]:
        raise WeightsError(f"{source}: {len(meta['classes'])} class names for {meta['num_classes']} classes")
    for key in ("mean", "std"):
        if meta.get(key) is not None and (len(meta[key]) != 3 or not all(isinstance(v, (int, float)) for v in meta[key])):
            raise WeightsError(f"{source}: {key} must be three numbers")
    if meta.get("channel_order", "RGB") not in ("RGB", "BGR"):
        raise WeightsError(f"{source}: channel_order must be RGB or BGR")
    return meta


def model_from_metadata(meta: dict) -> VGG:
    return build_model(meta["config"], batch_norm=meta["batch_norm"], num_classes=meta["num_classes"],
                       head=meta["head"], width=meta.get("width", 1.0), dropout=meta.get("dropout", 0.5),
                       dense_from=meta.get("dense_from", "paper"))


def describe(model: VGG, classes: list[str] | None = None, **extra: object) -> dict:
    """The metadata of a model: what rebuilds it, plus classes and preprocessing."""
    meta = {"config": model.config, "batch_norm": model.batch_norm, "head": model.head,
            "num_classes": model.num_classes, "width": model.width, "dropout": model.dropout,
            "dense_from": model.dense_from}
    if classes is not None:
        meta["classes"] = list(classes)
    meta.update(extra)
    return meta


def save_weights(path: str | Path, model: VGG, meta: dict) -> Path:
    """Write ``model`` and its metadata as one safetensors file (via a temporary name)."""
    path = Path(path)
    validate_metadata(meta, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(tmp), metadata={"vggnet": json.dumps(meta)})
    tmp.replace(path)
    return path


def read_metadata(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        hint = " (a .pth/.pt file? convert it with `vggnet convert --from torchvision`)" if path.suffix in (".pth", ".pt") else ""
        raise WeightsError(f"{path}: not a safetensors weights file{hint}: {exc}") from None
    if "vggnet" not in header:
        raise WeightsError(f"{path}: safetensors file without vggnet metadata")
    meta = json.loads(header["vggnet"])
    return validate_metadata(meta.get("model", meta), path)


def load_weights(path: str | Path) -> tuple[VGG, dict]:
    """(model in eval mode, metadata) from a training checkpoint or converted weights."""
    meta = read_metadata(path)
    model = model_from_metadata(meta)
    state = {k[len("model."):]: v for k, v in load_file(str(path)).items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise WeightsError(f"{path}: weights do not fit the model its metadata describes: {str(exc)[:300]}") from None
    return model.eval(), meta


def save_imagenet_weights(out: str | Path, model: VGG, source: str, preprocessing: dict) -> Path:
    """Save converted 224-px weights with their preprocessing and, for 1,000 classes, the
    ImageNet class names and wnids (so folders named by wnid map to the right outputs)."""
    extra: dict = {"source": source, **preprocessing, "input_size": 224}
    classes = None
    if model.num_classes == 1000:
        extra["wnids"], classes = imagenet_classes()
    return save_weights(out, model, describe(model, classes, **extra))


def _torchvision_layout(state: dict[str, torch.Tensor], source: Path) -> tuple[str, bool, int]:
    """Infer (configuration, batch_norm, num_classes) from a torchvision VGG state dict."""
    convs = sorted({int(m.group(1)) for k in state if (m := re.fullmatch(r"features\.(\d+)\.weight", k))
                    and state[k].ndim == 4})
    batch_norm = any(k.endswith("running_mean") for k in state)
    by_depth = {8: "A", 10: "B", 13: "D", 16: "E"}
    if len(convs) not in by_depth or "classifier.6.weight" not in state:
        raise WeightsError(f"{source}: not a torchvision VGG state dict ({len(convs)} convs)")
    return by_depth[len(convs)], batch_norm, state["classifier.6.weight"].shape[0]


def convert_torchvision(src: str | Path, out: str | Path) -> Path:
    """torchvision ``vgg*.pth`` (any of the eight builders) to our format, with ImageNet
    class names and torchvision's preprocessing when it has 1,000 classes."""
    src = Path(src)
    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses code: UnpicklingError and friends
        raise WeightsError(f"{src}: refused or unreadable as plain weights (torch.load weights_only=True): "
                           f"{str(exc).splitlines()[0][:200]}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{src}: expected a state dict of tensors")
    config, batch_norm, num_classes = _torchvision_layout(state, src)
    model = build_model(config, batch_norm=batch_norm, num_classes=num_classes)
    model.load_state_dict(state, strict=True)
    return save_imagenet_weights(out, model, "torchvision", TORCHVISION_PREPROCESSING)


# Section 3.1: "we initialised the first four convolutional layers and the last three
# fully-connected layers with the layers of net A (the intermediate layers were
# initialised randomly)". A's first four convs, matched by name in the deeper net.
WARM_START_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv3_2", "fc6", "fc7", "fc8")


def warm_start(model: VGG, source: str | Path) -> list[str]:
    """Initialise ``model`` from a checkpoint: everything when the source is the same net
    (fine-tuning at a new scale, 3.1); from a net A, the paper's seven layers, the rest
    drawn from N(0, 0.01). Returns the names of the layers copied."""
    from .model import init_weights

    src_model, meta = load_weights(source)
    if (meta["config"], meta["batch_norm"], meta["head"]) == (model.config, model.batch_norm, model.head):
        model.load_state_dict(src_model.state_dict())
        return model.layer_names()
    if meta["config"] not in ("A", "A-LRN"):
        raise WeightsError(f"{source}: warm start copies from configuration A or from the same net "
                           f"({model.config}); this checkpoint is {meta['config']}")
    init_weights(model, "paper")
    src, dst = src_model.named_layers(), model.named_layers()
    for name in WARM_START_LAYERS:
        for a, b in zip(src[name], dst[name]):
            if a.weight.shape != b.weight.shape:
                raise WeightsError(f"{source}: layer {name} has shape {tuple(a.weight.shape)}, "
                                   f"the model needs {tuple(b.weight.shape)}")
            b.load_state_dict(a.state_dict())
    return list(WARM_START_LAYERS)


def _keras_arrays(path: Path) -> dict[str, list]:
    """{layer name: [kernel, bias]} from a Keras VGG16/VGG19 weights file, in either layout:
    Keras 2's ``*_tf_dim_ordering_tf_kernels.h5`` (attributes ``layer_names``/``weight_names``)
    or Keras 3's ``.weights.h5`` (``layers/<name>/vars/<i>``)."""
    try:
        import h5py
    except ImportError:
        raise WeightsError("reading Keras weights needs h5py: pip install h5py") from None
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise WeightsError(f"{path}: not an HDF5 file ({exc})") from None
    layers: dict[str, list] = {}
    with f, _keras_errors(path):
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" in root.attrs:                                   # Keras 2 / legacy h5
            for raw in root.attrs["layer_names"]:
                name = raw.decode() if isinstance(raw, bytes) else str(raw)
                group = root[name]
                names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs.get("weight_names", [])]
                if names:
                    layers[name] = [group[n][()] for n in names]
        elif "layers" in root:                                            # Keras 3 .weights.h5
            for name, group in root["layers"].items():
                if "vars" in group and len(group["vars"]):
                    layers[name] = [group["vars"][str(i)][()] for i in range(len(group["vars"]))]
        else:
            raise WeightsError(f"{path}: neither a Keras 2 nor a Keras 3 weights file")
    return _keras_layer_names(layers)


@contextlib.contextmanager
def _keras_errors(path: Path):
    try:
        yield
    except KeyError as exc:
        raise WeightsError(f"{path}: incomplete Keras weights file ({exc})") from None


def _keras_layer_names(layers: dict[str, list]) -> dict[str, list]:
    """Keras 3 stores layers under generic names in creation order (conv2d, conv2d_1, ...,
    dense, dense_1, dense_2); give them the names of keras.applications' VGG."""
    if any(n.startswith("block") for n in layers):
        return layers
    order = lambda n: int(n.rsplit("_", 1)[1]) if "_" in n else 0  # noqa: E731
    convs = sorted((n for n in layers if n.startswith("conv2d")), key=order)
    dense = sorted((n for n in layers if n.startswith("dense")), key=order)
    per_block = {13: [2, 2, 3, 3, 3], 16: [2, 2, 4, 4, 4]}.get(len(convs))
    if per_block is None or len(dense) != 3:
        return layers
    names = [f"block{b + 1}_conv{i + 1}" for b, n in enumerate(per_block) for i in range(n)]
    renamed = {new: layers[old] for new, old in zip(names, convs)}
    renamed.update(zip(("fc1", "fc2", "predictions"), (layers[d] for d in dense)))
    return renamed


def convert_keras(src: str | Path, out: str | Path) -> Path:
    """Keras ``VGG16``/``VGG19`` weights to ours: kernels HWIO -> OIHW, Dense (in, out) ->
    (out, in), fc1's rows reordered from Keras's channels-last flatten (h, w, c) to ours
    (c, h, w); Caffe preprocessing (BGR, mean subtraction, no scaling) recorded."""
    src = Path(src)
    layers = _keras_arrays(src)
    convs = sorted((n for n in layers if re.fullmatch(r"block\d_conv\d", n)), key=lambda n: (n[5], n[-1]))
    config = {13: "D", 16: "E"}.get(len(convs))
    if config is None or not {"fc1", "fc2", "predictions"} <= set(layers):
        raise WeightsError(f"{src}: expected Keras VGG16 or VGG19 with its top (fc1, fc2, predictions); "
                           f"found {len(convs)} conv layers and {sorted(n for n in layers if not n.startswith('block'))}")
    num_classes = int(layers["predictions"][0].shape[1])
    model = build_model(config, num_classes=num_classes)
    state = model.state_dict()
    conv_keys = [k for k in state if k.startswith("features.") and k.endswith(".weight")]
    for key, name in zip(conv_keys, convs):
        kernel, bias = layers[name]
        state[key] = torch.from_numpy(kernel).permute(3, 2, 0, 1).contiguous()        # HWIO -> OIHW
        state[key.replace("weight", "bias")] = torch.from_numpy(bias)
    fc1 = torch.from_numpy(layers["fc1"][0])                                          # (h*w*c, 4096)
    side = int(round((fc1.shape[0] // 512) ** 0.5))
    if side != 7:
        raise WeightsError(f"{src}: fc1 reads a {side}x{side} map; only 224x224 Keras models convert")
    fc1 = fc1.reshape(7, 7, 512, -1).permute(2, 0, 1, 3).reshape(7 * 7 * 512, -1)     # rows (h, w, c) -> (c, h, w)
    for idx, name, kernel in ((0, "fc1", fc1), (3, "fc2", None), (6, "predictions", None)):
        k = kernel if kernel is not None else torch.from_numpy(layers[name][0])
        state[f"classifier.{idx}.weight"] = k.T.contiguous()
        state[f"classifier.{idx}.bias"] = torch.from_numpy(layers[name][1])
    model.load_state_dict(state)
    return save_imagenet_weights(out, model, "keras", CAFFE_PREPROCESSING)
