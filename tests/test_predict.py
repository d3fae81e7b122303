import json

import numpy as np
import pytest
import torch
from PIL import Image

from vggnet import build_model
from vggnet.cli import main
from vggnet.prediction import grad_cam, predict
from vggnet.weights import describe, save_weights


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    model = build_model("A", num_classes=4, head="cifar", width=1 / 16, init="glorot")
    return save_weights(tmp_path / "w.safetensors", model,
                        describe(model, ["cat", "dog", "fox", "owl"], input_size=32, mean=[120.0] * 3, std=[60.0] * 3))


def make_images(folder):
    folder.mkdir()
    rgb = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    img = Image.fromarray(rgb)
    img.convert("L").save(folder / "gray.png")
    img.convert("RGBA").save(folder / "rgba.png")
    img.convert("P").save(folder / "palette.png")
    Image.fromarray((np.arange(3500, dtype=np.uint16).reshape(50, 70) * 18)).save(folder / "deep16.png")
    img.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(rgb[:20, :25]).save(folder / "tiny.jpg")       # smaller than the input size
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not an image")
    return folder


def test_predict_every_colour_mode(tmp_path, weights):
    folder = make_images(tmp_path / "imgs")
    results = {r["path"].split("/")[-1]: r for r in predict(folder, weights, topk=3)}
    assert set(results) == {"gray.png", "rgba.png", "palette.png", "deep16.png", "cmyk.jpg", "tiny.jpg", "broken.jpg"}
    assert "cannot decode" in results["broken.jpg"]["error"]
    for name, r in results.items():
        if name != "broken.jpg":
            probs = [t["probability"] for t in r["top"]]
            assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
            assert {t["class"] for t in r["top"]} <= {"cat", "dog", "fox", "owl"}


def test_predict_batches_equal_single_images(tmp_path, weights):
    folder = make_images(tmp_path / "imgs")
    (folder / "broken.jpg").unlink()
    together = predict(folder, weights, batch_size=32)
    alone = predict(folder, weights, batch_size=1)
    compiled = predict(folder, weights, batch_size=32, compile=True)
    for a, b, c in zip(together, alone, compiled):
        assert a["top"][0]["class"] == b["top"][0]["class"] == c["top"][0]["class"]
        assert abs(a["top"][0]["probability"] - b["top"][0]["probability"]) < 1e-5
        assert abs(a["top"][0]["probability"] - c["top"][0]["probability"]) < 1e-5


def test_predict_cli_json_and_cam(tmp_path, weights, capsys):
    folder = make_images(tmp_path / "imgs")
    (folder / "broken.jpg").unlink()
    assert main(["predict", str(folder / "gray.png"), "--weights", str(weights), "--format", "json", "--topk", "2",
                 "--cam", str(tmp_path / "cam.png")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 1 and len(out[0]["top"]) == 2
    assert (tmp_path / "cam.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["predict", str(tmp_path / "missing.jpg"), "--weights", str(weights)]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_grad_cam_is_hot_where_the_evidence_is_and_zero_where_there_is_none():
    """An image that is zero but for its bottom-right corner, through a net with zero biases:
    conv3_2 (receptive field 26 px, stride 4) sees nothing in the top-left half, so the map
    must be exactly 0 there, and its peak must lie in the corner that holds the signal."""
    torch.manual_seed(0)
    model = build_model("A", num_classes=2, head="cifar", width=1 / 16, init="glorot").eval()
    x = torch.zeros(1, 3, 128, 128)
    x[..., 96:, 96:] = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 3
    cam, index = grad_cam(model, x, layer="conv3_2")
    assert cam.shape == (128, 128) and cam.min() >= 0 and cam.max() == pytest.approx(1.0)
    assert cam[:60, :].max() == 0 and cam[:, :60].max() == 0        # no evidence reaches these pixels
    peak = divmod(int(cam.argmax()), 128)
    assert peak[0] >= 70 and peak[1] >= 70
    assert cam[96:, 96:].sum() > 0.5 * cam.sum()
    assert index == int(model(x).argmax(1))                        # the predicted class by default
    other, chosen = grad_cam(model, x, class_index=1 - index, layer="conv3_2")
    assert chosen == 1 - index and other.shape == (128, 128)
    with pytest.raises(ValueError, match="unknown layer 'conv9_9'"):
        grad_cam(model, x, layer="conv9_9")
