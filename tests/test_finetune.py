"""vggnet finetune: pretrained weights fitted to a new image folder, linear or full."""

import json
from pathlib import Path

import pytest
import torch

import vggnet
from conftest import write_image_folder
from vggnet.cli import main
from vggnet.configs import get_recipe
from vggnet.settings import RunSettings
from vggnet.training import Trainer
from vggnet.weights import ModelSpec, WeightsError, describe, load_weights, read_checkpoint, save_weights

TINY = 1 / 16


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny VGG-11-BN trained on three classes (bands at rows 0-2 of 3), BGR and its own mean."""
    root = tmp_path_factory.mktemp("pre")
    data = write_image_folder(root / "three", classes=3, per_class=40, size=32)
    settings = RunSettings(config="vgg11_bn", data=str(data), out=str(root / "run"), width=TINY, val_size=12,
                           recipe=get_recipe("fast").replace(epochs=3, batch_size=16, lr=0.05, init="glorot"))
    vggnet.train(settings)
    model, spec = load_weights(root / "run" / "last.safetensors")
    bgr = dataclass_replace(spec, channel_order="BGR", mean=spec.mean[::-1], std=spec.std[::-1])
    return save_weights(root / "bgr.safetensors", model, bgr)


def dataclass_replace(spec: ModelSpec, **changes) -> ModelSpec:
    import dataclasses
    return dataclasses.replace(spec, **changes)


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("t") / "two", classes=2, per_class=24, size=32, seed=5)


def test_full_mode_keeps_the_preprocessing_and_trains_the_head_faster(pretrained, target, tmp_path):
    before, base = load_weights(pretrained)
    trainer = Trainer(vggnet.resolve_settings(pretrained=str(pretrained), data=str(target), out=str(tmp_path / "ft"),
                                              recipe="finetune", epochs=2))
    assert (trainer.spec.classes, trainer.spec.channel_order, trainer.spec.mean) == (["class0", "class1"], "BGR",
                                                                                      base.mean)
    assert trainer.spec.input_size == 32 and trainer.spec.train_scale is None    # 32 px images: pad-and-crop as trained
    scales = sorted((g["lr_scale"], len(g["params"])) for g in trainer.opt.param_groups)
    assert {s for s, _ in scales} == {0.1, 1.0}
    assert sum(n for s, n in scales if s == 1.0) == 2                           # fc8's weight and bias
    result = trainer.fit()
    after, spec = load_weights(tmp_path / "ft" / "last.safetensors")
    assert spec.classes == ["class0", "class1"] and spec.num_classes == 2 and spec.channel_order == "BGR"
    assert after.classifier[6].weight.shape == (2, before.classifier[6].in_features)
    conv = "features.0.weight"
    assert not torch.equal(after.state_dict()[conv], before.state_dict()[conv])    # the backbone trains too
    assert result["epochs"] == 2 and set(result["per_class_acc"]) == {"class0", "class1"}


def test_freeze_until_keeps_those_layers_and_their_statistics(pretrained, target, tmp_path):
    before, _ = load_weights(pretrained)
    result = vggnet.finetune(pretrained, target, freeze_until="conv3_2", epochs=2, out=str(tmp_path / "fz"))
    after, _ = load_weights(tmp_path / "fz" / "last.safetensors")
    a, b = before.state_dict(), after.state_dict()
    frozen = [k for k in a if k.startswith("features.") and int(k.split(".")[1]) <= before.feature_names["conv3_2"]]
    assert any(k.endswith("running_mean") for k in frozen)
    assert all(torch.equal(a[k], b[k]) for k in frozen)                        # weights and BN statistics alike
    conv4_1 = f"features.{before.feature_names['conv4_1'] - 2}.weight"      # the conv before its BN and ReLU
    assert not torch.equal(a[conv4_1], b[conv4_1])                            # trained
    assert result["epochs"] == 2
    with pytest.raises(ValueError, match=r"--freeze-until 'conv9_1' is not a layer of VGG-A; valid: conv1_1, pool1"):
        vggnet.finetune(pretrained, target, freeze_until="conv9_1", out=str(tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()


def test_linear_mode_caches_features_and_leaves_the_backbone_alone(pretrained, target, tmp_path):
    result = vggnet.finetune(pretrained, target, mode="linear", epochs=15, lr=0.05, out=str(tmp_path / "lin"))
    before, _ = load_weights(pretrained)
    after, spec = load_weights(tmp_path / "lin" / "last.safetensors")
    a, b = before.state_dict(), after.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("classifier.6"))
    assert result["final_test_acc"] > 0.9 and result["mode"] == "linear"     # bands at rows 0 and 1 of 2
    cached = list(Path(vggnet.data.cache_dir()).glob("features-*.safetensors"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    again = vggnet.finetune(pretrained, target, mode="linear", epochs=15, lr=0.05, out=str(tmp_path / "lin2"))
    assert cached[0].stat().st_mtime_ns == stamp and again["final_test_acc"] == result["final_test_acc"]
    report = vggnet.evaluate([tmp_path / "lin"], target, ["single"])           # an ordinary run folder
    assert report["rows"][0]["images"] == 48
    assert 1 - report["rows"][0]["top1_error"] == pytest.approx(result["final_test_acc"], abs=1.5 / 48)


def test_the_result_works_with_every_command(pretrained, target, tmp_path, capsys):
    run = tmp_path / "cli"
    assert main(["finetune", "--weights", str(pretrained), "--data", str(target), "--mode", "linear",
                 "--epochs", "3", "--out", str(run)]) == 0
    assert "done: 3 epochs" in capsys.readouterr().out
    assert json.loads((run / "results.json").read_text())["mode"] == "linear"
    image = next((target / "test" / "class1").iterdir())
    assert main(["predict", str(image), "--weights", str(run), "--cam", str(tmp_path / "cam.png")]) == 0
    assert "class" in capsys.readouterr().out and (tmp_path / "cam.png").stat().st_size > 0
    assert main(["export", "--weights", str(run / "last.safetensors"), "--onnx", str(tmp_path / "m.onnx")]) == 0
    assert main(["finetune", "--weights", str(run), "--data", str(target), "--epochs", "1",
                 "--out", str(tmp_path / "again")]) == 0
    assert read_checkpoint(tmp_path / "again" / "last.safetensors")[1]["model"]["classes"] == ["class0", "class1"]


def test_bad_input_gets_one_line(pretrained, tmp_path, capsys):
    one = write_image_folder(tmp_path / "one", classes=1, per_class=4)
    assert main(["finetune", "--weights", str(pretrained), "--data", str(one)]) == 2
    assert "fine-tuning needs at least two classes; the data has 1: class0" in capsys.readouterr().err
    model = vggnet.build_model("A", num_classes=3, head="cifar", width=TINY)
    odd = save_weights(tmp_path / "odd.safetensors", model, describe(model, input_size=32))
    from safetensors.torch import load_file, save_file
    header = read_checkpoint(odd)[1]
    header["model"]["config"] = "F"
    save_file(load_file(str(odd)), str(tmp_path / "f.safetensors"), metadata={"vggnet": json.dumps(header)})
    assert main(["finetune", "--weights", str(tmp_path / "f.safetensors"), "--data", str(one)]) == 2
    assert "unknown configuration 'F'" in capsys.readouterr().err
    two = write_image_folder(tmp_path / "two", classes=2, per_class=4)
    assert main(["finetune", "--weights", str(pretrained), "--data", str(two), "--mode", "linear",
                 "--freeze-until", "conv2_1"]) == 2
    assert "--freeze-until is for --mode full" in capsys.readouterr().err
    with pytest.raises(WeightsError, match="fine-tuning needs at least two classes"):
        ModelSpec("A").for_new_classes(["x"], 32)


def test_small_folders_get_enough_steps(tmp_path):
    from vggnet.transfer import MIN_STEPS, default_epochs
    small = write_image_folder(tmp_path / "small", classes=4, per_class=10)        # 36 to train on: 1 step of 32
    big = write_image_folder(tmp_path / "big", classes=2, per_class=400)           # 720: 22 steps
    settings = RunSettings(data=str(small), recipe=get_recipe("finetune"))
    assert default_epochs(settings, 20) == MIN_STEPS == 200
    assert default_epochs(RunSettings(data=str(big), recipe=get_recipe("finetune")), 20) == 20
    assert default_epochs(RunSettings(data=str(big), recipe=get_recipe("finetune"), limit_train=100), 20) == 100  # 90: 2 steps
