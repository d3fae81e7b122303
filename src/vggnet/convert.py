"""Weights in: torchvision's VGG state dicts and Keras's VGG16/VGG19 files, converted to
vggnet's weights file (:mod:`vggnet.weights`) with their preprocessing and ImageNet classes.

torchvision's ``.pth`` files are read with ``torch.load(weights_only=True)``: no code runs.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import torch

from .configs import config_with_convs, convs_per_block
from .extras import require
from .model import VGG, build_model
from .preprocess import CAFFE_PREPROCESSING, TORCHVISION_PREPROCESSING
from .weights import WeightsError, describe, imagenet_classes, load_matching, save_weights

KERAS_CONFIGS = ("D", "E")   # keras.applications ships VGG16 and VGG19


def save_imagenet_weights(out: str | Path, model: VGG, source: str, preprocessing: dict) -> Path:
    """Save converted 224-px weights with their preprocessing and, for 1,000 classes, the
    ImageNet class names and wnids (so folders named by wnid map to the right outputs)."""
    fields: dict = {"source": source, **preprocessing, "input_size": 224}
    classes = None
    if model.num_classes == 1000:
        fields["wnids"], classes = imagenet_classes()
    return save_weights(out, model, describe(model, classes, **fields))


def existing(src: str | Path) -> Path:
    """``src`` as a Path, or WeightsError if there is no such file."""
    if not Path(src).is_file():
        raise WeightsError(f"{src}: no such file")
    return Path(src)


def _torchvision_layout(state: dict[str, torch.Tensor], source: Path) -> tuple[str, bool, int]:
    """Infer (configuration, batch_norm, num_classes) from a torchvision VGG state dict."""
    convs = sorted({int(m.group(1)) for k in state if (m := re.fullmatch(r"features\.(\d+)\.weight", k))
                    and state[k].ndim == 4})
    batch_norm = any(k.endswith("running_mean") for k in state)
    config = config_with_convs(len(convs))
    if config is None or "classifier.6.weight" not in state:
        raise WeightsError(f"{source}: not a torchvision VGG state dict ({len(convs)} convs)")
    return config, batch_norm, state["classifier.6.weight"].shape[0]


def convert_torchvision(src: str | Path, out: str | Path) -> Path:
    """torchvision ``vgg*.pth`` (any of the eight builders) to our format, with ImageNet
    class names and torchvision's preprocessing when it has 1,000 classes."""
    src = existing(src)
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
    load_matching(model, state, src)
    return save_imagenet_weights(out, model, "torchvision", TORCHVISION_PREPROCESSING)


def _keras_arrays(path: Path) -> dict[str, list]:
    """{layer name: [kernel, bias]} from a Keras VGG16/VGG19 weights file, in either layout:
    Keras 2's ``*_tf_dim_ordering_tf_kernels.h5`` (attributes ``layer_names``/``weight_names``)
    or Keras 3's ``.weights.h5`` (``layers/<name>/vars/<i>``)."""
    require("keras")
    import h5py
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
    except (RuntimeError, ValueError, IndexError) as exc:
        if isinstance(exc, WeightsError):
            raise
        raise WeightsError(f"{path}: layer shapes are not a Keras VGG's ({str(exc).splitlines()[0][:200]})") from None


def _keras_layer_names(layers: dict[str, list]) -> dict[str, list]:
    """Keras 3 stores layers under generic names in creation order (conv2d, conv2d_1, ...,
    dense, dense_1, dense_2); give them the names of keras.applications' VGG."""
    if any(n.startswith("block") for n in layers):
        return layers
    order = lambda n: int(n.rsplit("_", 1)[1]) if "_" in n else 0  # noqa: E731
    convs = sorted((n for n in layers if n.startswith("conv2d")), key=order)
    dense = sorted((n for n in layers if n.startswith("dense")), key=order)
    config = config_with_convs(len(convs), among=KERAS_CONFIGS)
    if config is None or len(dense) != 3:
        return layers
    per_block = convs_per_block(config)
    names = [f"block{b + 1}_conv{i + 1}" for b, n in enumerate(per_block) for i in range(n)]
    renamed = {new: layers[old] for new, old in zip(names, convs)}
    renamed.update(zip(("fc1", "fc2", "predictions"), (layers[d] for d in dense)))
    return renamed


def convert_keras(src: str | Path, out: str | Path) -> Path:
    """Keras ``VGG16``/``VGG19`` weights to ours: kernels HWIO -> OIHW, Dense (in, out) ->
    (out, in), fc1's rows reordered from Keras's channels-last flatten (h, w, c) to ours
    (c, h, w); Caffe preprocessing (BGR, mean subtraction, no scaling) recorded."""
    src = existing(src)
    layers = _keras_arrays(src)
    convs = sorted((n for n in layers if re.fullmatch(r"block\d_conv\d", n)), key=lambda n: (n[5], n[-1]))
    config = config_with_convs(len(convs), among=KERAS_CONFIGS)
    if config is None or not {"fc1", "fc2", "predictions"} <= set(layers):
        raise WeightsError(f"{src}: expected Keras VGG16 or VGG19 with its top (fc1, fc2, predictions); "
                           f"found {len(convs)} conv layers and {sorted(n for n in layers if not n.startswith('block'))}")
    num_classes = int(layers["predictions"][0].shape[1])
    model = build_model(config, num_classes=num_classes)
    state = model.state_dict()
    with _keras_errors(src):     # a layer of another rank or size: named, not a torch traceback
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
    load_matching(model, state, src)
    return save_imagenet_weights(out, model, "keras", CAFFE_PREPROCESSING)
