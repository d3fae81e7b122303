"""Optional features and the pip extras that install them: each feature checks for its
packages before it starts, and a missing one stops it with one line that names the package
and the extra, never a traceback.
"""

from __future__ import annotations

import importlib.util

from .errors import VggnetError

# extra -> (what it enables, the modules it needs)
EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "onnx": ("vggnet export (ONNX)", ("onnx", "onnxscript")),
    "keras": ("vggnet convert --from keras", ("h5py",)),
    "hub": ("vggnet push and from_pretrained of a Hugging Face Hub repo id", ("huggingface_hub",)),
    "tensorboard": ("TensorBoard event files in every run folder", ("tensorboard",)),
}


class MissingExtra(VggnetError):
    """An optional feature whose package is not installed; the message says what to install."""


def missing(extra: str) -> str | None:
    """The first module of ``extra`` that is not installed, or None."""
    for module in EXTRAS[extra][1]:
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except (ImportError, ValueError):   # a module hidden as None in sys.modules, or a broken install
            return module
    return None


def require(extra: str) -> None:
    """Stop with one line if ``extra``'s packages are missing."""
    module = missing(extra)
    if module is not None:
        feature = EXTRAS[extra][0]
        raise MissingExtra(f"{feature} needs the {module} package: pip install \"vggnet[{extra}]\"")
