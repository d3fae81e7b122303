import hashlib
import http.server
import io
import pickle
import re
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SHARED_DATA, write_image_folder
from vggnet import data as D


def test_find_data_explains_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VGGNET_DATA", raising=False)
    with pytest.raises(D.DataError, match=r"looked in: .*data/cifar10.*--data PATH or VGGNET_DATA"):
        D.find_data()
    with pytest.raises(D.DataError, match=str(tmp_path / "nowhere")):
        D.find_data(tmp_path / "nowhere")
    root = write_image_folder(tmp_path / "mydata", per_class=1)
    monkeypatch.setenv("VGGNET_DATA", str(root))
    assert D.find_data() == root


def test_folder_tensors_and_cache_invalidation(tmp_path):
    root = write_image_folder(tmp_path / "ds", classes=3, per_class=4)
    data = D.load_folder_tensors(root / "train")
    assert data.images.shape == (12, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert data.classes == ["class0", "class1", "class2"]
    caches = sorted(D.cache_dir().glob("train-*.safetensors"))
    assert len(caches) == 1
    again = D.load_folder_tensors(root / "train")
    assert torch.equal(again.images, data.images)
    assert sorted(D.cache_dir().glob("train-*.safetensors")) == caches   # read from the cache
    Image.new("RGB", (32, 32), (255, 0, 0)).save(root / "train" / "class1" / "extra.png")
    changed = D.load_folder_tensors(root / "train")
    assert len(changed) == 13 and changed.images[8].float().mean(dim=(1, 2)).tolist()[0] == 255
    assert len(list(D.cache_dir().glob("train-*.safetensors"))) == 2


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(D.DataError, match="no class folders"):
        D.list_image_folder(tmp_path / "empty")
    (tmp_path / "one" / "cats").mkdir(parents=True)
    with pytest.raises(D.DataError, match="class folders without images: cats"):
        D.list_image_folder(tmp_path / "one")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(D.DataError, match="bad.jpg: cannot decode"):
        D.read_image(bad)


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16", "CMYK", "RGB"])
def test_every_colour_mode_becomes_rgb(tmp_path, mode):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    if mode == "I;16":
        img = Image.fromarray((np.arange(600, dtype=np.uint16).reshape(20, 30) * 100))
        path = _save(img, tmp_path / "deep.png")
    elif mode == "CMYK":
        path = _save(rgb.convert("CMYK"), tmp_path / "cmyk.jpg")
    else:
        path = _save(rgb.convert(mode), tmp_path / f"{mode}.png")
    out = D.read_image(path)
    assert out.shape == (3, 20, 30) and out.dtype == torch.uint8
    if mode == "I;16":  # 16-bit values scaled to 8 bits, grey on every channel
        assert out[0, 0, 1].item() == 100 // 256 and out[0, -1, -1].item() == (599 * 100) // 256
        assert torch.equal(out[0], out[2])
    if mode == "RGB":
        assert torch.equal(out, torch.from_numpy(np.array(rgb)).permute(2, 0, 1))


def _cifar_archive(path: Path, per_batch: int = 10, payload: object | None = None) -> Path:
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            batch = payload or {b"data": rng.integers(0, 255, (per_batch, 3072), dtype=np.uint8),
                                b"labels": rng.integers(0, 10, per_batch).tolist()}
            raw = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def test_cifar_archive(tmp_path):
    train, test = D.load_cifar_archive(_cifar_archive(tmp_path / "cifar-10-python.tar.gz"))
    assert train.images.shape == (50, 3, 32, 32) and test.images.shape == (10, 3, 32, 32)
    assert train.classes[0] == "airplane" and train.labels.dtype == torch.int64
    train2, _ = D.load_dataset(tmp_path)  # a folder holding the archive
    assert torch.equal(train2.images, train.images)


class _Evil:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_cifar_archive_refuses_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    archive = _cifar_archive(tmp_path / "evil.tar.gz", payload={b"data": _Evil(), b"labels": []})
    with pytest.raises(D.DataError, match=r"refusing to unpickle (__builtin__|builtins)\.exec"):
        D.load_cifar_archive(archive)
    assert not (tmp_path / "PWNED").exists()


@pytest.fixture
def file_server(tmp_path):
    """A local HTTP server over tmp_path/www (no internet needed)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(www), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_checks_md5(file_server, tmp_path):
    www, url = file_server
    archive = _cifar_archive(www / "cifar-10-python.tar.gz")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    dest = tmp_path / "dl"
    train, test = D.load_dataset(download_to=dest, url=f"{url}/cifar-10-python.tar.gz", md5=md5)
    assert len(train) == 50 and (dest / "cifar-10-python.tar.gz").is_file()
    other = tmp_path / "dl2"
    with pytest.raises(D.DataError, match="MD5 mismatch"):
        D.load_dataset(download_to=other, url=f"{url}/cifar-10-python.tar.gz", md5="0" * 32)
    assert list(other.iterdir()) == []  # nothing half-downloaded is left behind


def test_md5sum_and_the_official_constants(tmp_path):
    (tmp_path / "abc").write_bytes(b"abc")
    assert D.md5sum(tmp_path / "abc") == "900150983cd24fb0d6963f7d28e17f72"      # RFC 1321's test vector
    big = tmp_path / "big"
    big.write_bytes(bytes(range(256)) * 20_000)                                 # several 1 MiB chunks
    assert D.md5sum(big) == hashlib.md5(big.read_bytes()).hexdigest()
    assert D.CIFAR10_URL.endswith("/cifar-10-python.tar.gz") and re.fullmatch(r"[0-9a-f]{32}", D.CIFAR10_MD5)


def test_validation_split_is_seeded_and_disjoint(tmp_path):
    data = D.TensorData(torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 3, 2, 2).clone(),
                        torch.arange(100), ["x"])
    train, val = D.split_validation(data, 10, seed=3)
    train2, val2 = D.split_validation(data, 10, seed=3)
    assert len(train) == 90 and len(val) == 10 and torch.equal(val.labels, val2.labels)
    assert set(train.labels.tolist()).isdisjoint(val.labels.tolist())
    assert not torch.equal(D.split_validation(data, 10, seed=4)[1].labels, val.labels)
    with pytest.raises(D.DataError, match="validation size 100"):
        D.split_validation(data, 100, seed=0)


@pytest.mark.skipif(not (SHARED_DATA / "cifar10-jpeg" / "test").is_dir(), reason="shared CIFAR-10 not present")
def test_shared_cifar10_test_split_decodes():
    data = D.load_folder_tensors(SHARED_DATA / "cifar10-jpeg" / "test")
    assert data.images.shape == (10000, 3, 32, 32)
    assert torch.bincount(data.labels).tolist() == [1000] * 10
    assert data.classes[:3] == ["airplane", "automobile", "bird"]


def test_streaming_images_of_any_size_and_mode(tmp_path):
    root = tmp_path / "photos"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.new("L", (300, 200), 90).save(root / "a" / "gray.jpg")
    Image.new("RGB", (150, 400), (200, 10, 10)).convert("CMYK").save(root / "a" / "cmyk.jpg")
    Image.new("RGBA", (120, 90), (0, 0, 255, 128)).save(root / "b" / "small.png")
    items, classes = D.list_image_folder(root)
    train = D.StreamingImages(items, classes, crop=64, scale=(72, 96), train=True)
    test = D.StreamingImages(items, classes, crop=64, scale=(72, 96), train=False)
    for i in range(3):
        assert train[i][0].shape == (3, 64, 64) and test[i][0].dtype == torch.uint8
    assert torch.equal(train[1][0], train[1][0])          # the same crop for the same (seed, epoch, image)
    batches = list(train.loader([torch.tensor([2, 0]), torch.tensor([1])], workers=0))
    assert batches[0][0].shape == (2, 3, 64, 64) and batches[0][1].tolist() == [1, 0]
    assert not D.fits_in_memory(items)


def test_cache_command_lists_and_clears(tmp_path, capsys):
    from vggnet.cli import main
    root = write_image_folder(tmp_path / "d", classes=2, per_class=3)
    D.load_folder_tensors(root / "train")
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert "train-" in out and f"in 1 file(s) in {D.cache_dir()}" in out
    assert main(["cache", "--clear"]) == 0
    assert "removed 1 file(s)" in capsys.readouterr().out and D.cache_entries() == []
