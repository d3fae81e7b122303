import json

import pytest
import torch

from vggnet import build_model
from vggnet.weights import (WARM_START_LAYERS, WeightsError, describe, imagenet_classes, load_weights, read_metadata,
                            save_weights, warm_start)

TINY = 1 / 16


def test_round_trip_same_outputs_in_eval_and_train_mode(tmp_path):
    torch.manual_seed(0)
    model = build_model("B", batch_norm=True, num_classes=5, head="cifar", width=TINY)
    model.train()(torch.randn(8, 3, 32, 32))  # move BN running statistics away from their init
    path = save_weights(tmp_path / "w.safetensors", model, describe(model, list("abcde"), mean=[1.0, 2.0, 3.0]))
    loaded, meta = load_weights(path)
    assert meta.classes == list("abcde") and not loaded.training
    x = torch.randn(3, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        model.train(), loaded.train()
        torch.manual_seed(1)
        a = model(x)
        torch.manual_seed(1)
        assert torch.equal(loaded(x), a)


@pytest.mark.parametrize("change,message", [
    ({"colour": "red"}, "unknown metadata key 'colour'"),
    ({"num_classes": "5"}, "'num_classes' has type str"),
    ({"classes": ["a"]}, "1 class names for 5 classes"),
    ({"head": "fcn"}, "unknown head"),
    ({"mean": [1.0, 2.0]}, "mean must be three numbers"),
])
def test_metadata_is_validated(tmp_path, change, message):
    model = build_model("A", num_classes=5, head="cifar", width=TINY)
    with pytest.raises(WeightsError, match=message):
        save_weights(tmp_path / "w.safetensors", model, {**describe(model).to_dict(), **change})


def test_missing_file_and_foreign_safetensors(tmp_path):
    from safetensors.torch import save_file
    with pytest.raises(WeightsError, match="no such weights file"):
        read_metadata(tmp_path / "nothing.safetensors")
    save_file({"x": torch.ones(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(WeightsError, match="without vggnet metadata"):
        read_metadata(tmp_path / "other.safetensors")


def test_imagenet_class_list():
    wnids, names = imagenet_classes()
    assert len(wnids) == 1000 and wnids == sorted(wnids) and names[1] == "goldfish"


def test_warm_start_from_a_copies_the_papers_layers(tmp_path):
    torch.manual_seed(0)
    a = build_model("A", num_classes=10, head="cifar", width=0.125)
    path = save_weights(tmp_path / "a.safetensors", a, describe(a))
    d = build_model("D", num_classes=10, head="cifar", width=0.125)
    assert warm_start(d, path) == list(WARM_START_LAYERS)
    src, dst = a.named_layers(), d.named_layers()
    for name in WARM_START_LAYERS:
        assert torch.equal(src[name][0].weight, dst[name][0].weight), name
    for name in ("conv1_2", "conv2_2", "conv3_3", "conv4_1", "conv5_3"):
        w = dst[name][0].weight
        assert abs(w.std().item() - 0.01) < 0.002 and dst[name][0].bias.abs().sum() == 0, name
    e = build_model("E", num_classes=10, head="cifar", width=0.125)
    b_path = save_weights(tmp_path / "b.safetensors", build_model("B", num_classes=10, head="cifar", width=0.125),
                          describe(build_model("B", num_classes=10, head="cifar", width=0.125)))
    with pytest.raises(WeightsError, match="warm start copies from configuration A"):
        warm_start(e, b_path)
    same = build_model("A", num_classes=10, head="cifar", width=0.125)
    warm_start(same, path)   # fine-tuning at a new scale: everything copied
    assert all(torch.equal(x, y) for x, y in zip(same.state_dict().values(), a.state_dict().values()))


def test_weights_and_checkpoints_share_one_atomic_writer_and_reader(tmp_path, monkeypatch):
    import os
    from safetensors.torch import save_file
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    model = build_model("A", num_classes=3, head="cifar", width=TINY)
    path = save_weights(tmp_path / "w.safetensors", model, describe(model, ["a", "b", "c"], input_size=32))
    assert len(synced) == 1 and [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]
    assert read_metadata(path).classes == ["a", "b", "c"]
    # a file converted before the two layouts were one: the description at the top of the header
    flat = {"config": "A", "batch_norm": False, "head": "cifar", "num_classes": 3, "width": TINY, "input_size": 32}
    save_file({f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "old.safetensors"),
              metadata={"vggnet": json.dumps(flat)})
    old, spec = load_weights(tmp_path / "old.safetensors")
    assert (spec.config, spec.num_classes, spec.input_size) == ("A", 3, 32)
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), model.state_dict().values()))
    run = tmp_path / "run"
    save_weights(run / "last.safetensors", model, describe(model, ["a", "b", "c"], input_size=32))
    assert load_weights(run)[1] == read_metadata(path)                 # a run folder stands for its weights
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(WeightsError, match="a folder without best.safetensors, last.safetensors"):
        load_weights(tmp_path / "empty-run")
