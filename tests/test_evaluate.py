import json

import pytest
import torch
from PIL import Image

from vggnet import build_model
from vggnet.data import DataError
from vggnet.evaluation import EvalModel, evaluate, format_report, grid_crops, list_labelled_images, topk_errors
from vggnet.weights import ModelSpec, describe, save_weights

TINY = 1 / 16


def eval_model(head="paper", size=224, **meta) -> EvalModel:
    torch.manual_seed(0)
    model = build_model("A", num_classes=6, head=head, width=TINY, init="glorot")
    return EvalModel(model, describe(model, input_size=size, mean=[120.0, 115.0, 100.0], std=[60.0, 60.0, 60.0], **meta))


def test_grid_crops_cover_the_corners():
    x = torch.arange(2 * 3 * 40 * 50, dtype=torch.float32).view(2, 3, 40, 50)
    crops = grid_crops(x, 32)
    assert crops.shape == (2, 25, 3, 32, 32)
    assert torch.equal(crops[:, 0], x[..., :32, :32]) and torch.equal(crops[:, 4], x[..., :32, -32:])
    assert torch.equal(crops[:, 20], x[..., -32:, :32]) and torch.equal(crops[:, 24], x[..., -32:, -32:])
    assert torch.equal(crops[:, 12], x[..., 4:36, 9:41])   # the centre crop


def test_multi_crop_uses_150_crops_over_3_scales(monkeypatch):
    m = eval_model(head="cifar", size=32)
    seen = []
    original = EvalModel.softmax
    monkeypatch.setattr(EvalModel, "softmax", lambda self, net, x, chunk=128: (seen.append(len(x)), original(self, net, x))[1])
    out = m.posteriors(torch.randint(0, 255, (2, 3, 36, 44), dtype=torch.uint8), ["multi-crop"], [32, 40, 48])
    assert seen == [100, 100, 100]            # 2 images x 25 crops x 2 flips, per scale
    assert out["multi-crop"].shape == (2, 6)
    torch.testing.assert_close(out["multi-crop"].sum(1), torch.ones(2))


def test_dense_equals_paper_head_at_224_with_flip_average():
    m = eval_model()
    images = torch.randint(0, 255, (2, 3, 224, 224), dtype=torch.uint8)
    dense = m.dense_eval(images, [224])
    x = m.prepare(images)
    with torch.no_grad():
        expected = (torch.softmax(m.model(x), 1) + torch.softmax(m.model(x.flip(-1)), 1)) / 2
    torch.testing.assert_close(dense, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(m.dense_eval(images.flip(-1), [224]), dense, atol=1e-5, rtol=1e-4)


def test_scales_follow_the_training_scale():
    assert eval_model(head="cifar", size=32, train_scale=[32, 48]).scales() == (40, [32, 40, 48])
    assert eval_model(size=224).scales() == (256, [224, 256, 288])        # Q in {S-32, S, S+32}, S = 256


def test_topk_errors():
    post = torch.tensor([[0.1, 0.5, 0.4], [0.6, 0.3, 0.1]])
    assert topk_errors(post, torch.tensor([1, 2])) == (0.5, 0.0)


def write_folder(root, classes, sizes):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            Image.new("RGB" if i % 2 else "L", (w, h), color=(i * 40) % 255).save(root / c / f"{i}.jpg")
    return root


def test_evaluate_every_protocol_and_ensemble(tmp_path):
    classes = [f"c{i}" for i in range(6)]
    weights = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model("A", num_classes=6, head="cifar", width=TINY, init="glorot")
        weights.append(save_weights(tmp_path / f"m{seed}.safetensors", model,
                                    describe(model, classes, input_size=32, train_scale=[32, 48], mean=[128.0] * 3,
                                             std=None)))
    data = write_folder(tmp_path / "data", classes[:3], [(40, 40), (40, 40), (50, 36)])
    one = evaluate(weights[:1], data, ["single", "dense", "multi-scale", "multi-crop", "dense+multi-crop"])
    assert [r["protocol"] for r in one["rows"]] == ["single", "dense", "multi-scale", "multi-crop", "dense+multi-crop"]
    assert all(r["images"] == 9 and 0 <= r["top1_error"] <= 1 and r["top5_error"] <= r["top1_error"]
               for r in one["rows"])
    assert one["rows"][2]["scales"] == "32,40,48" and one["rows"][0]["scales"] == "40"
    both = evaluate(weights, data, ["single"], limit=4)
    assert both["rows"][0]["images"] == 4 and len(both["weights"]) == 2
    table = format_report(one)
    assert "| multi-crop | 32,40,48 |" in table
    assert json.loads(format_report(both, "json"))["rows"][0]["protocol"] == "single"
    with pytest.raises(ValueError, match="unknown protocol 'dense-crop'"):
        evaluate(weights, data, ["dense-crop"])
    compiled = evaluate(weights[:1], data, ["single"], compile=True)   # the user's path, torch.compiled
    assert compiled["compiled"] and compiled["rows"][0]["top1_error"] == one["rows"][0]["top1_error"]
    from vggnet.runtime import bf16_supported        # the default: bf16 where this CPU runs it, as `vggnet eval`
    assert compiled["precision"] == ("bf16" if bf16_supported() else "fp32")
    assert f"{compiled['precision']}, compiled, cpu (" in format_report(compiled)
    with pytest.raises(ValueError, match="--compile works with --precision fp32 or bf16"):   # before any file is read
        evaluate([tmp_path / "missing.safetensors"], tmp_path / "no-data", precision="int8", compile=True)


def test_labels_map_to_the_models_classes(tmp_path):
    meta = ModelSpec("A", num_classes=3, classes=["tench", "goldfish", "shark"],
                     wnids=["n01440764", "n01443537", "n01484850"])
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("n01484850_great_white_shark.JPEG", "n01440764_tench.JPEG"):
        Image.new("RGB", (40, 30)).save(flat / name, format="JPEG")
    assert [(p.name, y) for p, y in list_labelled_images(flat, meta)] == [
        ("n01440764_tench.JPEG", 0), ("n01484850_great_white_shark.JPEG", 2)]
    folders = write_folder(tmp_path / "byname", ["goldfish"], [(32, 32)])
    assert [y for _, y in list_labelled_images(folders, meta)] == [1]
    bad = write_folder(tmp_path / "bad", ["unicorn"], [(32, 32)])
    with pytest.raises(DataError, match="folders \\['unicorn'\\] name no class of the model"):
        list_labelled_images(bad, meta)


def test_scoring_takes_as_many_images_at_a_time_as_the_memory_left_holds(monkeypatch):
    """`eval --scales 4096` on a batch of 50 must not ask for 100 GB: the dense net scores as
    many images at a time as half the memory left holds (the same numbers), and a size where
    not even one fits is one line."""
    from vggnet.errors import VggnetError
    from vggnet.summary import score_memory
    m = eval_model(head="cifar", size=32)
    images = torch.randint(0, 256, (7, 3, 48, 64), dtype=torch.uint8)
    whole = m.dense_eval(images, [48])
    one = score_memory(m.meta, 48, 64, m.precision)
    passes = []
    real = m.dense_net.__call__
    monkeypatch.setattr("vggnet.runtime.available_memory", lambda device: 2 * 3 * one)   # room for 3 at a time
    monkeypatch.setattr(type(m.dense_net), "__call__", lambda self, x: passes.append(len(x)) or real(x))
    assert torch.allclose(m.dense_eval(images, [48]), whole, atol=1e-6)
    assert passes == [3, 3, 1] * 2                                                       # the image, then its mirror
    protocols = ["single", "dense", "multi-crop"]     # every protocol rescales its images a part at a time
    whole_parts, small_parts = m.posteriors(images, protocols, [48]), m.posteriors(images, protocols, [48], part=3)
    assert all(torch.allclose(whole_parts[p], small_parts[p], atol=1e-6) for p in protocols)
    monkeypatch.setattr("vggnet.runtime.available_memory", lambda device: int(one / 0.95))    # one, but not in 90 %
    with pytest.raises(VggnetError, match=r"scoring one 48x64 image needs about .* GiB is available on cpu: give "
                                          r"smaller --scales"):
        m.dense_eval(images, [48])
