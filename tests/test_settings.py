"""One rule for settings, shared by the CLI and the Python API; resume from the run folder."""

import json
from pathlib import Path

import pytest

import vggnet
from conftest import write_image_folder
from vggnet.cli import main
from vggnet.data import holdout_size
from vggnet.settings import RunSettings, resolve_settings


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("d") / "bands", classes=2, per_class=20)


@pytest.mark.parametrize("config,batch_norm,expected", [
    ("A", None, ("A", False, "fast-plain", "vgg11")),
    ("D", None, ("D", False, "fast-plain", "vgg16")),          # a letter is the paper's net: no BN
    ("E", None, ("E", False, "fast-plain", "vgg19")),
    ("vgg16", None, ("D", False, "fast-plain", "vgg16")),
    ("vgg16_bn", None, ("D", True, "fast", "vgg16_bn")),
    ("D", True, ("D", True, "fast", "vgg16_bn")),
    ("vgg16_bn", False, ("D", False, "fast-plain", "vgg16")),
    ("B-5x5", True, ("B-5x5", True, "fast", "B-5x5_bn")),
])
def test_one_batchnorm_rule_for_every_letter_in_cli_and_api(data, config, batch_norm, expected):
    cli = resolve_settings(config=config, batch_norm=batch_norm, data=str(data))
    api = RunSettings(config=config, batch_norm=batch_norm, data=str(data)).resolved()
    assert cli == api
    assert (cli.config, cli.batch_norm, cli.recipe.name, Path(cli.out).name) == (*expected[:3], f"{expected[3]}-bands")


def test_defaults_train_vgg16_bn_into_a_folder_named_after_it(data):
    s = resolve_settings(data=str(data))
    assert (s.config, s.batch_norm, s.recipe.name, s.out) == ("D", True, "fast", "runs/vgg16_bn-bands")
    assert s.data == str(data.resolve()) and s.val_size is None
    assert resolve_settings(data=str(data), epochs=3, lr=0.5).recipe.replace(epochs=32, lr=0.1) == s.recipe


def test_validation_hold_out_scales_with_the_data():
    assert holdout_size(None, 50_000) == 5_000 and holdout_size(None, 6_000) == 600
    assert holdout_size(0.05, 6_000) == 300 and holdout_size(0, 6_000) == 0 and holdout_size(16, 6_000) == 16
    for bad in (-1, 2.5):
        with pytest.raises(ValueError, match=r"--val-size\) must be a count, a fraction"):
            holdout_size(bad, 100)


def test_a_small_folder_trains_on_90_percent(data, tmp_path):
    trainer = vggnet.Trainer(RunSettings(config="vgg11_bn", data=str(data), out=str(tmp_path / "r"), width=1 / 16))
    assert (len(trainer.train), len(trainer.val)) == (36, 4)                # 40 training images, 10 % held out
    none = vggnet.Trainer(RunSettings(config="vgg11_bn", data=str(data), out=str(tmp_path / "n"), width=1 / 16,
                                      val_size=0))
    assert (len(none.train), len(none.val)) == (40, 0)


def test_a_start_that_fails_leaves_no_folder(data, tmp_path):
    with pytest.raises(ValueError, match="validation size 40 must be below the 40 training images"):
        vggnet.Trainer(RunSettings(config="A", data=str(data), out=str(tmp_path / "run"), val_size=40))
    assert not (tmp_path / "run").exists()
    assert main(["train", "--config", "A", "--data", str(data), "--out", str(tmp_path / "cli"), "--recipe", "paper",
                 "--budget", "5"]) == 2
    assert not (tmp_path / "cli").exists()


def tiny_cli(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--config", "A", "--width", "0.0625", "--data", str(data), "--out", str(out), "--val-size", "4",
            "--batch-size", "8", "--epochs", "2", "--init", "glorot", "--seed", "3", *extra]


def test_resume_restores_the_runs_settings_from_its_folder(data, tmp_path, capsys):
    run = tmp_path / "run"
    settings = resolve_settings(config="A", width=1 / 16, data=str(data), out=str(run), val_size=4, batch_size=8,
                                epochs=2, init="glorot", seed=3, stop_after_steps=3)   # of 4 per epoch
    assert vggnet.train(settings)["stopped"]
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0                    # nothing retyped
    out = capsys.readouterr().out
    assert f"resuming {run} at epoch 1 of 2" in out and "done: 2 epochs in" in out
    assert json.loads((run / "results.json").read_text())["epochs"] == 2
    saved = json.loads((run / "run.json").read_text())["settings"]
    assert (saved["seed"], saved["val_size"], saved["recipe"]["batch_size"], saved["width"]) == (3, 4, 8, 0.0625)


def test_a_finished_run_is_not_continued_by_accident(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(tiny_cli(data, run)) == 0
    before = (run / "run.json").read_text()
    capsys.readouterr()
    repeated = [a for a in tiny_cli(data, run) if a not in ("--epochs", "2")]     # the options again, but --epochs
    assert main([*repeated, "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"{run} is finished (2 of 2 epochs): give --epochs above 2" in err and len(err.splitlines()) == 1
    assert (run / "run.json").read_text() == before                              # nothing rewritten
    assert main(["train", "--resume", str(run), "--seed", "4"]) == 2
    assert "started with other settings (seed 3 -> 4)" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--lr", "0.3"]) == 2
    assert "another recipe (lr 0.05 -> 0.3)" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--out", str(tmp_path / "other")]) == 2
    assert "name two run folders" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 0           # --epochs may grow
    assert f"resuming {run} at epoch 3 of 3" in capsys.readouterr().out
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_resume_without_a_run_says_so(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert f"cannot resume: no checkpoint at {tmp_path / 'nothing' / 'last.safetensors'}" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--epochs", "0"], "epochs (--epochs) must be an integer >= 1; got 0"),
    (["--batch-size", "-5"], "batch_size (--batch-size) must be >= 1; got -5"),
    (["--lr", "nan"], "lr (--lr) must be a number > 0; got nan"),
    (["--label-smoothing", "2"], "label_smoothing (--label-smoothing) must be in [0, 1); got 2.0"),
    (["--micro-batch", "-4"], "micro_batch (--micro-batch) must be >= 0; got -4"),
    (["--cutout", "-3"], "cutout (--cutout) must be >= 0 (0: off); got -3"),
    (["--threads", "-2"], "threads (--threads) must be >= 0 (0: torch's default); got -2"),
    (["--limit-train", "-5"], "limit_train (--limit-train) must be >= 0 (0: all); got -5"),
    (["--time-limit", "-1"], "time_limit (--time-limit) must be minutes >= 0 (0: none); got -1.0"),
    (["--train-scale", "48", "32"], "train scale (--train-scale) must be SMIN <= SMAX"),
])
def test_every_number_is_checked_before_anything_runs(data, tmp_path, capsys, argv, message):
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "run").exists()
