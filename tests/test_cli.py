import json
import subprocess
import sys

import pytest

from conftest import write_image_folder
from vggnet.cli import main


def test_summary_json(capsys):
    assert main(["summary", "--config", "D", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["params"] == 138_357_544
    assert data["layers"][0]["output_shape"] == [224, 224, 64]


def test_summary_cifar_input(capsys):
    assert main(["summary", "--config", "vgg16_bn", "--input", "32", "--num-classes", "10"]) == 0
    out = capsys.readouterr().out
    assert "pool5    1x1x512" in out


@pytest.mark.parametrize("argv,message", [
    (["summary", "--config", "F"], "unknown VGG configuration 'F'"),
    (["summary", "--head", "dense", "--input", "100"], "at least 224 px"),
    (["train", "--recipe", "slow"], "unknown recipe 'slow'"),
    (["train", "--data", "/nonexistent/data"], "no data set found"),
    (["train", "--budget", "90", "--epochs", "30"], "give --epochs or --budget, not both"),
])
def test_bad_arguments_give_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith(f"vggnet {argv[0]}: error:")


def test_python_dash_m_and_console_script():
    out = subprocess.run([sys.executable, "-m", "vggnet", "--help"], capture_output=True, text=True, check=True).stdout
    assert "train" in out and "summary" in out


def test_train_command_tiny(tmp_path, capsys):
    data = write_image_folder(tmp_path / "d", classes=2, per_class=20)
    argv = ["train", "--config", "A", "--width", "0.0625", "--data", str(data), "--out", str(tmp_path / "run"),
            "--epochs", "1", "--batch-size", "8", "--val-size", "8", "--init", "glorot", "--precision", "fp32",
            "--cutout", "4", "--label-smoothing", "0.2", "--dropout", "0.25", "--log-every", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()                 # not a terminal: plain lines, never silent
    assert out[0].startswith("vggnet train on cpu (") and ": vgg11 (config A, head cifar, width 0.0625), 0." in out[0]
    assert "32 train / 8 validation / 40 test images (in memory); 4 steps of 8 per epoch" in out[1]
    assert out[2] == "  recipe fast-plain: 1 epoch, lr 0.05 (onecycle), fp32"
    assert out[3] == f"  run folder {tmp_path / 'run'}"
    steps = [line for line in out if line.startswith("epoch 1/1 step ")]
    assert [line.split(":")[0] for line in steps] == ["epoch 1/1 step 2/4", "epoch 1/1 step 4/4"]
    assert all("run ETA" in line for line in steps)
    assert any(line.startswith("epoch 1/1: loss ") and " s validation)" in line for line in out)
    assert out[-2].startswith("done: 1 epoch in ") and "test accuracy" in out[-2]
    assert out[-1].startswith(f"files in {tmp_path / 'run'}: results.json, metrics.jsonl")
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["settings"]["recipe"]["precision"] == "fp32" and run["model"]["config"] == "A"
    recipe = run["settings"]["recipe"]
    assert (recipe["cutout"], recipe["label_smoothing"], recipe["dropout"]) == (4, 0.2, 0.25)
    assert run["settings"]["batch_norm"] is False and run["model"]["batch_norm"] is False   # resolved: A is plain
    assert run["settings"]["recipe"]["name"] == "fast-plain"        # the default recipe for a net without BN
    assert json.loads((tmp_path / "run" / "results.json").read_text())["epochs"] == 1


def test_summary_does_not_import_the_training_stack():
    code = ("import sys; from vggnet.cli import main; main(['summary', '--config', 'A', '--format', 'csv']); "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('vggnet'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(out.splitlines()[-1].split())
    assert {"vggnet.summary", "vggnet.model", "vggnet.runtime"} <= loaded
    assert not loaded & {"vggnet.training", "vggnet.data", "vggnet.loader", "vggnet.evaluation", "vggnet.weights"}


def test_the_package_top_is_the_api_the_commands_call():
    import vggnet
    from vggnet import evaluation, prediction, training, weights
    assert (vggnet.train, vggnet.evaluate, vggnet.predict, vggnet.load_weights) == (
        training.train, evaluation.evaluate, prediction.predict, weights.load_weights)


def test_version_and_help_show_defaults(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip().startswith("vggnet 0.")
    for command, shown in (("eval", "(default: single)"), ("predict", "(default: 5)"), ("export", "(default: 18)"),
                           ("summary", "(default: D)"), ("train", "(default: vgg16_bn)"), ("train", "(default: 0)")):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert shown in " ".join(capsys.readouterr().out.split()), (command, shown)


def test_convert_tells_the_source_by_the_extension(tmp_path, capsys):
    import torch
    import vggnet
    torch.save(vggnet.vgg11().state_dict(), tmp_path / "vgg11.pth")
    assert main(["convert", str(tmp_path / "vgg11.pth"), "--out", str(tmp_path / "w.safetensors")]) == 0
    assert "config A, 1000 classes, RGB input" in capsys.readouterr().out
    (tmp_path / "weights.bin").write_bytes(b"x")
    assert main(["convert", str(tmp_path / "weights.bin"), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "cannot tell torchvision from Keras by the extension; give --from" in capsys.readouterr().err


def test_help_and_version_do_not_import_torch():
    code = ("import sys\nfrom vggnet.cli import main\nfor argv in (['--help'], ['--version'], ['train', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"
