"""vggnet: VGGNet (Simonyan & Zisserman, 2014) on PyTorch, every configuration of Table 1.

The Python API, each function the one its command calls::

    vggnet.train(config="vgg16_bn", data="../shared/data/cifar10-jpeg", epochs=4)   # vggnet train
    vggnet.finetune("vgg16.safetensors", "photos", mode="linear")                  # vggnet finetune
    vggnet.evaluate(["runs/vgg16_bn-cifar10-jpeg"], "photos", ["single", "dense"])  # vggnet eval
    vggnet.predict("photo.jpg", "runs/vgg16_bn-cifar10-jpeg")                       # vggnet predict
    model, spec = vggnet.load_weights("vgg16.safetensors")                          # any weights file

Names are imported on first use (PEP 562), so ``import vggnet`` and ``vggnet --help``
do not pay for torch until something needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module that owns it
_OWNERS = {
    "CONFIGS": "configs", "PARAMETER_COUNTS": "configs", "RECIPES": "configs", "Recipe": "configs",
    "get_recipe": "configs", "resolve_config": "configs",
    "VGG": "model", "build_model": "model", "count_parameters": "model", "init_weights": "model",
    "to_dense": "model", "vgg11": "model", "vgg11_bn": "model", "vgg13": "model", "vgg13_bn": "model",
    "vgg16": "model", "vgg16_bn": "model", "vgg19": "model", "vgg19_bn": "model",
    "ModelSpec": "weights", "load_weights": "weights", "save_weights": "weights",
    "Preprocessing": "preprocess",
    "save_pretrained": "hub", "from_pretrained": "hub",
    "RunSettings": "settings", "resolve_settings": "settings",
    "train": "training", "Trainer": "training", "finetune": "transfer",
    "evaluate": "evaluation", "predict": "prediction",
}
__all__ = sorted(_OWNERS)


def __getattr__(name: str) -> object:
    if name not in _OWNERS:
        raise AttributeError(f"module 'vggnet' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_OWNERS[name]}", __name__), name)
    globals()[name] = value      # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:   # for type checkers and IDEs: the same names, imported eagerly
    from .configs import CONFIGS, PARAMETER_COUNTS, RECIPES, Recipe, get_recipe, resolve_config  # noqa: F401
    from .evaluation import evaluate  # noqa: F401
    from .hub import from_pretrained, save_pretrained  # noqa: F401
    from .transfer import finetune  # noqa: F401
    from .model import (VGG, build_model, count_parameters, init_weights, to_dense, vgg11, vgg11_bn,  # noqa: F401
                        vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn)
    from .prediction import predict  # noqa: F401
    from .preprocess import Preprocessing  # noqa: F401
    from .settings import RunSettings, resolve_settings  # noqa: F401
    from .training import Trainer, train  # noqa: F401
    from .weights import ModelSpec, load_weights, save_weights  # noqa: F401
