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


def test_grad_cam_highlights_what_drives_the_class():
    torch.manual_seed(0)
    model = build_model("A", num_classes=2, head="cifar", width=1 / 16, init="glorot").eval()
    x = torch.zeros(1, 3, 64, 64)
    x[..., 40:, 40:] = 3.0                       # only the bottom-right corner carries signal
    cam, index = grad_cam(model, x)
    assert cam.shape == (64, 64) and 0 <= cam.min() and cam.max() == pytest.approx(1.0)
    assert index in (0, 1)
    with pytest.raises(ValueError, match="unknown layer 'conv9_9'"):
        grad_cam(model, x, layer="conv9_9")
