"""TensorBoard event files in every run folder, and a run that says once why there are none."""

import sys

import pytest

from conftest import write_image_folder
from vggnet.configs import get_recipe
from vggnet.settings import RunSettings
from vggnet.training import train

pytest.importorskip("tensorboard")


def tiny(data, out, **kw) -> RunSettings:
    recipe = get_recipe("fast").replace(epochs=3, batch_size=16, lr=0.05, warmup_epochs=0.5, init="glorot")
    return RunSettings(config="vgg11_bn", data=str(data), out=str(out), val_size=12, width=1 / 16, recipe=recipe,
                       log_every=2, **kw)


def test_a_run_writes_scalars_images_and_hparams(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    data = write_image_folder(tmp_path / "d", classes=3, per_class=24)
    result = train(tiny(data, tmp_path / "run"))
    events = EventAccumulator(str(tmp_path / "run"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/learning_rate", "train/images_per_s", "epoch/val_accuracy", "epoch/val_loss",
            "hparam/final_test_acc"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("epoch/val_accuracy")] == [1, 2, 3]
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6, 8]        # 3 steps an epoch, every 2nd
    assert events.Scalars("hparam/final_test_acc")[0].value == pytest.approx(result["final_test_acc"])
    assert "test/confusion_matrix" in tags["images"]
    made_mistakes = result["final_test_acc"] < 1
    assert ("test/most_confident_mistakes" in tags["images"]) == made_mistakes      # shown when there are some
    assert ("test/grad_cam_of_mistakes" in tags["images"]) == made_mistakes
    assert "events.out.tfevents.* (tensorboard --logdir)" in capsys.readouterr().out


def test_without_the_package_the_run_says_so_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)       # as if not installed
    data = write_image_folder(tmp_path / "d", classes=2, per_class=12)
    train(tiny(data, tmp_path / "run"))
    out = capsys.readouterr().out
    assert out.count("not logging to TensorBoard: the tensorboard package is not installed "
                     "(pip install \"vggnet[tensorboard]\")") == 1
    assert not list((tmp_path / "run").glob("events.out.tfevents.*")) and (tmp_path / "run" / "results.json").is_file()


def test_linear_fine_tuning_logs_its_epochs(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    import vggnet
    data = write_image_folder(tmp_path / "d", classes=2, per_class=24)
    train(tiny(data, tmp_path / "pre"))
    vggnet.finetune(tmp_path / "pre", data, mode="linear", epochs=4, out=str(tmp_path / "lin"))
    events = EventAccumulator(str(tmp_path / "lin"))
    events.Reload()
    assert [e.step for e in events.Scalars("epoch/val_accuracy")] == [1, 2, 3, 4]
    assert "test/confusion_matrix" in events.Tags()["images"]
