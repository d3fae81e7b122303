"""Keras parity on random weights: Keras 3 on its torch backend builds VGG16/VGG19, we convert
its weights files (Keras 3 .weights.h5 and the classic Keras 2 h5 layout) and compare."""

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")

from vggnet.cli import main  # noqa: E402
from vggnet.evaluation import EvalModel  # noqa: E402
from vggnet.convert import convert_keras  # noqa: E402
from vggnet.weights import WeightsError, load_weights  # noqa: E402


def write_classic_h5(model, path):
    """The layout of Keras 2's vgg16_weights_tf_dim_ordering_tf_kernels.h5: per-layer groups
    named in the root attribute layer_names, each with weight_names."""
    with h5py.File(path, "w") as f:
        names = [layer.name for layer in model.layers]
        f.attrs["layer_names"] = [n.encode() for n in names]
        for layer in model.layers:
            g = f.create_group(layer.name)
            weight_names = [f"{layer.name}/{w}:0".encode() for w in ("kernel", "bias")][:len(layer.weights)]
            g.attrs["weight_names"] = weight_names
            for wn, w in zip(weight_names, layer.get_weights()):
                g.create_dataset(wn.decode(), data=w)


@pytest.fixture(scope="module", params=["VGG16", "VGG19"])
def keras_model(request):
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, request.param)(weights=None, classes=10, classifier_activation=None)
    for layer in model.layers:  # non-zero biases, so a misplaced bias shows
        if layer.weights:
            k, b = layer.get_weights()
            layer.set_weights([k, np.random.default_rng(1).normal(0, 0.01, b.shape).astype(np.float32)])
    return model


@pytest.mark.parametrize("layout", ["keras3", "classic"])
def test_keras_parity(tmp_path, keras_model, layout):
    path = tmp_path / ("w.weights.h5" if layout == "keras3" else "w_tf_dim_ordering_tf_kernels.h5")
    if layout == "keras3":
        keras_model.save_weights(str(path))
    else:
        write_classic_h5(keras_model, path)
    out = convert_keras(path, tmp_path / "converted.safetensors")
    model, meta = load_weights(out)
    assert meta.channel_order == "BGR" and meta.std is None and meta.config in ("D", "E")
    rgb = np.random.default_rng(2).integers(0, 256, (2, 224, 224, 3)).astype(np.float32)
    theirs = keras_model.predict(keras.applications.vgg16.preprocess_input(rgb.copy()), verbose=0)
    ours_in = EvalModel(model, meta).prepare(torch.from_numpy(rgb).permute(0, 3, 1, 2))
    with torch.no_grad():
        ours = model(ours_in.float()).numpy()
    np.testing.assert_allclose(ours, np.asarray(theirs), rtol=1e-4, atol=1e-4 * np.abs(theirs).max())
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(ours), 1).numpy(),
                               torch.softmax(torch.as_tensor(np.asarray(theirs)), 1).numpy(), atol=1e-4)


def test_convert_cli_and_bad_files(tmp_path, capsys):
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    assert main(["convert", "--from", "keras", str(tmp_path / "junk.h5"), "--out", str(tmp_path / "o.safetensors")]) == 2
    assert "not an HDF5 file" in capsys.readouterr().err
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f.attrs["layer_names"] = [b"dense"]
    with pytest.raises(WeightsError, match="incomplete Keras weights file"):
        convert_keras(tmp_path / "empty.h5", tmp_path / "o.safetensors")
    with h5py.File(tmp_path / "mlp.h5", "w") as f:
        f.attrs["layer_names"] = [b"dense"]
        f.create_group("dense").attrs["weight_names"] = [b"dense/kernel:0"]
        f["dense"].create_dataset("dense/kernel:0", data=np.zeros((3, 2), np.float32))
    with pytest.raises(WeightsError, match="expected Keras VGG16 or VGG19"):
        convert_keras(tmp_path / "mlp.h5", tmp_path / "o.safetensors")


@pytest.mark.parametrize("shape", [(3, 3, 3), (3, 3, 3, 32)])
def test_a_kernel_of_another_shape_is_one_line(tmp_path, keras_model, capsys, shape):
    """A kernel of another rank, or of another width: `vggnet convert` names the file, no traceback."""
    path = tmp_path / "w_tf_dim_ordering_tf_kernels.h5"
    write_classic_h5(keras_model, path)
    with h5py.File(path, "a") as f:
        del f["block1_conv1"]["block1_conv1/kernel:0"]
        f["block1_conv1"].create_dataset("block1_conv1/kernel:0", data=np.zeros(shape, np.float32))
    assert main(["convert", str(path), "--out", str(tmp_path / "w.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vggnet convert: error: {path}: ") and err.count("\n") == 1
    assert ("layer shapes are not a Keras VGG's" if len(shape) == 3 else
            "features.0.weight has shape (32, 3, 3, 3), this model needs (64, 3, 3, 3)") in err
    assert not (tmp_path / "w.safetensors").exists()
