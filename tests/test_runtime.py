"""Devices and precisions: one-line errors where the machine lacks a device, and the CUDA
paths under the `cuda` marker (skipped without a GPU; run them on one with `pytest -m cuda`)."""

import json

import pytest
import torch

from conftest import write_image_folder
from vggnet import runtime
from vggnet.cli import main
from vggnet.configs import get_recipe
from vggnet.settings import RunSettings
from vggnet.training import train
from vggnet.weights import read_checkpoint

CUDA = torch.cuda.is_available()
def cuda(test):
    """GPU tests: marked `cuda`, skipped where there is none."""
    return pytest.mark.cuda(pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")(test))


def test_auto_takes_the_best_device_and_names_it():
    expected = "cuda" if CUDA else "mps" if runtime.mps_available() else "cpu"
    assert runtime.resolve_device("auto").type == expected == runtime.resolve_device(None).type
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    assert runtime.machine("cpu")["device_model"] == runtime.device_model("cpu")
    with pytest.raises(ValueError, match="--device 'tpu' is not a device; valid: auto, cpu, cuda, cuda:N or mps"):
        runtime.resolve_device("tpu")


@pytest.mark.skipif(CUDA, reason="this machine has CUDA")
@pytest.mark.parametrize("command", [["train"], ["eval", "--weights", "w.safetensors", "--data", "d"],
                                     ["predict", "x.jpg", "--weights", "w.safetensors"]])
def test_cuda_without_a_gpu_is_one_line(command, capsys):
    assert main([*command, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--device cuda: this machine has no CUDA GPU" in err


def test_precision_per_device_on_the_cpu(monkeypatch):
    assert runtime.resolve_precision("fp32", "cpu") == "fp32"
    monkeypatch.setattr(runtime, "bf16_supported", lambda: True)
    assert runtime.resolve_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr(runtime, "bf16_supported", lambda: False)
    assert runtime.resolve_precision("bf16", "cpu") == "fp32"
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        runtime.resolve_precision("fp8", "cpu")


def tiny(data, out, device: str, **kw) -> RunSettings:
    recipe = get_recipe("fast").replace(epochs=2, batch_size=16, lr=0.05, warmup_epochs=0.5, init="glorot")
    return RunSettings(config="vgg11_bn", data=str(data), out=str(out), val_size=12, width=1 / 16, recipe=recipe,
                       device=device, **kw)


def test_checkpoints_hold_cpu_tensors_and_record_the_device(tmp_path):
    data = write_image_folder(tmp_path / "d", classes=2, per_class=40)       # 68 training images: 4 steps an epoch
    assert train(tiny(data, tmp_path / "run", "cpu", stop_after_steps=3))["stopped"]
    groups, header = read_checkpoint(tmp_path / "run" / "last.safetensors")
    assert all(t.device.type == "cpu" for g in groups.values() for t in g.values())
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["machine"]["device"] == "cpu" and run["precision"] in ("bf16", "fp32")
    assert train(tiny(data, tmp_path / "run", "auto"), resume=True)["epochs"] == 2    # the device may change


@cuda
def test_train_on_the_gpu_then_resume_on_the_cpu(tmp_path):
    data = write_image_folder(tmp_path / "d", classes=3, per_class=30)
    result = train(tiny(data, tmp_path / "gpu", "cuda", stop_after_steps=5))
    assert result["stopped"]
    run = json.loads((tmp_path / "gpu" / "run.json").read_text())
    assert run["machine"]["device"].startswith("cuda") and run["precision"] in ("bf16", "fp16")
    done = train(tiny(data, tmp_path / "gpu", "cpu"), resume=True)
    assert done["epochs"] == 2 and done["final_test_acc"] > 0.5


@cuda
def test_gpu_scoring_agrees_with_the_cpu(tmp_path):
    from vggnet.evaluation import evaluate
    data = write_image_folder(tmp_path / "d", classes=3, per_class=30)
    train(tiny(data, tmp_path / "run", "cuda"))
    cpu = evaluate([tmp_path / "run"], data, ["single", "dense"], precision="fp32", device="cpu")
    gpu = evaluate([tmp_path / "run"], data, ["single", "dense"], device="cuda")
    for a, b in zip(cpu["rows"], gpu["rows"]):
        assert abs(a["top1_error"] - b["top1_error"]) <= 2 / a["images"]
    with pytest.raises(ValueError, match="int8 scoring is a CPU feature"):
        evaluate([tmp_path / "run"], data, ["single"], precision="int8", device="cuda")
