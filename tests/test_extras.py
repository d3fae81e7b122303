"""Every optional feature whose package is missing stops with one line naming the package and the extra."""

import sys

import pytest

from vggnet import build_model
from vggnet.cli import main
from vggnet.extras import EXTRAS, missing
from vggnet.weights import describe, save_weights


@pytest.mark.parametrize("extra", list(EXTRAS))
def test_missing_reports_each_extras_first_absent_module(extra, monkeypatch):
    module = EXTRAS[extra][1][0]
    monkeypatch.setitem(sys.modules, module, None)
    assert missing(extra) == module


@pytest.mark.parametrize("hidden,argv,extra", [
    ("onnxscript", ["export", "--weights", "{w}", "--onnx", "{tmp}/m.onnx"], "onnx"),
    ("h5py", ["convert", "--from", "keras", "{tmp}/vgg16.h5", "--out", "{tmp}/k.safetensors"], "keras"),
    ("huggingface_hub", ["push", "{w}", "--repo", "someone/vgg"], "hub"),
])
def test_a_missing_package_is_one_line_naming_the_extra(hidden, argv, extra, tmp_path, monkeypatch, capsys):
    model = build_model("A", num_classes=2, head="cifar", width=1 / 16)
    w = save_weights(tmp_path / "w.safetensors", model, describe(model, input_size=32))
    (tmp_path / "vgg16.h5").write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, hidden, None)
    assert main([a.format(w=w, tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"needs the {hidden} package: pip install \"vggnet[{extra}]\"" in err
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "k.safetensors").exists()
