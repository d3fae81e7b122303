import numpy as np
import pytest
import torch

from vggnet import build_model
from vggnet.cli import main
from vggnet.export import export_onnx
from vggnet.weights import describe, save_weights

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def weights_file(tmp_path, head="paper", size=224):
    torch.manual_seed(0)
    model = build_model("A", batch_norm=True, num_classes=7, head=head, width=1 / 16, init="glorot").eval()
    model.train()(torch.randn(4, 3, size, size))   # non-trivial BN statistics
    model.eval()
    return model, save_weights(tmp_path / "w.safetensors", model, describe(model, input_size=size))


def run_onnx(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"images": x.numpy()})[0]


def test_dense_export_takes_any_size(tmp_path):
    from vggnet import to_dense
    model, w = weights_file(tmp_path)
    out = export_onnx(w, tmp_path / "dense.onnx", dense=True)
    dense = to_dense(model).eval()
    for shape in [(1, 3, 224, 224), (3, 3, 256, 320), (2, 3, 300, 250)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = dense(x).numpy()
        np.testing.assert_allclose(run_onnx(out, x), expected, atol=1e-4, rtol=0)


def test_paper_head_export_dynamic_batch(tmp_path):
    model, w = weights_file(tmp_path)
    assert main(["export", "--weights", str(w), "--onnx", str(tmp_path / "m.onnx")]) == 0
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        np.testing.assert_allclose(run_onnx(tmp_path / "m.onnx", x), model(x).numpy(), atol=1e-4, rtol=0)


def test_cifar_head_export_dynamic_size(tmp_path):
    model, w = weights_file(tmp_path, head="cifar", size=32)
    out = export_onnx(w, tmp_path / "c.onnx")
    for shape in [(5, 3, 32, 32), (1, 3, 64, 96)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            np.testing.assert_allclose(run_onnx(out, x), model(x).numpy(), atol=1e-4, rtol=0)


def test_the_file_says_how_to_feed_it_and_stands_alone(tmp_path, capsys):
    import json
    model = build_model("A", num_classes=3, head="cifar", width=1 / 16)
    w = save_weights(tmp_path / "w.safetensors", model, describe(model, ["cat", "dog", "owl"], input_size=32,
                                                                 mean=[1.0, 2.0, 3.0], std=None, channel_order="BGR"))
    assert main(["export", "--weights", str(w), "--onnx", str(tmp_path / "out" / "m.onnx")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.onnx"]      # no .data file, no temporary
    meta = ort.InferenceSession(str(tmp_path / "out" / "m.onnx"),
                                providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == ["cat", "dog", "owl"] and meta["config"] == "A"
    prep = json.loads(meta["preprocessing"])
    assert (prep["mean"], prep["std"], prep["channel_order"], prep["crop"], prep["resize"]) == ([1.0, 2.0, 3.0], None,
                                                                                               "BGR", 32, 32)
    assert json.loads(meta["vggnet"])["input_size"] == 32
