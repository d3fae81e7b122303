"""The Hugging Face Hub layout, offline: save a run, load it back, same logits; a repo id
without network is a one-line error."""

import json
import sys

import pytest
import torch

import vggnet
from conftest import write_image_folder
from vggnet.cli import main
from vggnet.configs import get_recipe
from vggnet.settings import RunSettings
from vggnet.weights import WeightsError


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    data = write_image_folder(root / "d", classes=3, per_class=16)
    recipe = get_recipe("fast").replace(epochs=1, batch_size=16, init="glorot")
    vggnet.train(RunSettings(config="vgg11_bn", data=str(data), out=str(root / "run"), width=1 / 16, val_size=6,
                             recipe=recipe))
    return root / "run"


def test_save_and_load_back_the_same_logits(run, tmp_path):
    folder = vggnet.save_pretrained(run, tmp_path / "hub")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert (config["config"], config["batch_norm"], config["classes"]) == ("A", True, ["class0", "class1", "class2"])
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: vggnet") and "| data | d |" in card and "| recipe | fast: 1 epochs" in card
    assert "| test accuracy |" in card
    from safetensors.torch import load_file
    assert "features.0.weight" in load_file(str(folder / "model.safetensors"))    # the mixin's plain state dict
    ours, spec = vggnet.load_weights(run)
    theirs, spec2 = vggnet.from_pretrained(folder)
    assert spec2 == spec
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
    report = vggnet.evaluate([folder], run.parent / "d", ["single"])             # every command takes the folder
    assert report["rows"][0]["images"] == 48


def test_a_repo_id_without_network_is_a_clear_error(monkeypatch):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match=r"someone/vgg16: cannot fetch from the Hugging Face Hub: "):
        vggnet.from_pretrained("someone/vgg16")
    with pytest.raises(WeightsError, match="no such folder or file, and not a Hugging Face Hub repo id"):
        vggnet.from_pretrained("no/such/thing")


def test_push_without_network_or_package_says_so_in_one_line(run, monkeypatch, capsys):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["push", str(run), "--repo", "someone/vgg11"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vggnet push: error: cannot push to the Hugging Face Hub as someone/vgg11:")
    assert len(err.splitlines()) == 1
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    assert main(["push", str(run), "--repo", "someone/vgg11"]) == 2
    assert "needs the huggingface_hub package: pip install \"vggnet[hub]\"" in capsys.readouterr().err
