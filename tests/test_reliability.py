"""Bad input, interruptions and untrusted files (issue: reliability and security)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from conftest import write_image_folder
from vggnet import data as D
from vggnet.augment import scale_jitter_crop
from vggnet.preprocess import center_crop, rescale
from vggnet.cli import EXIT_STOPPED, main
from vggnet.weights import read_checkpoint


def spoil(root: Path) -> list[Path]:
    """A truncated JPEG, random bytes named .jpg and an HTML page named .png among good images."""
    cls = root / "train" / "class0"
    good = sorted(cls.iterdir())
    truncated = cls / "truncated.jpg"
    truncated.write_bytes(good[0].read_bytes()[:200])
    noise = cls / "noise.jpg"
    noise.write_bytes(os.urandom(500))
    page = root / "train" / "class1" / "page.png"
    page.write_text("<html>not an image</html>")
    return [truncated, noise, page]


def test_bad_files_stop_before_training_naming_every_one(tmp_path, capsys):
    root = write_image_folder(tmp_path / "d", classes=2, per_class=12)
    bad = spoil(root)
    code = main(["train", "--config", "A", "--width", "0.0625", "--data", str(root), "--out", str(tmp_path / "run"),
                 "--val-size", "4", "--epochs", "1", "--batch-size", "4"])
    err = capsys.readouterr().err
    assert code == 2 and "3 unreadable image(s)" in err and all(p.name in err for p in bad)
    assert not (tmp_path / "run" / "last.safetensors").exists()
    code = main(["train", "--config", "A", "--width", "0.0625", "--data", str(root), "--out", str(tmp_path / "run"),
                 "--val-size", "4", "--epochs", "1", "--batch-size", "4", "--skip-bad", "--init", "glorot"])
    assert code == 0
    listed = (tmp_path / "run" / "skipped.txt").read_text().split()
    assert sorted(Path(p).name for p in listed) == sorted(p.name for p in bad)


def test_streaming_prescan_finds_bad_files(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=2, per_class=4)
    bad = spoil(root)
    with pytest.raises(D.DataError, match="3 unreadable image"):
        D.load_dataset(root, stream=True)
    train, _ = D.load_dataset(root, stream=True, skip_bad=True)
    assert len(train) == 8 and sorted(Path(p).name for p in train.skipped) == sorted(p.name for p in bad)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=st.integers(1, 80), w=st.integers(1, 80),
       mode=st.sampled_from(["L", "LA", "RGB", "RGBA", "P", "I;16", "CMYK", "1"]),
       fmt=st.sampled_from(["PNG", "JPEG", "BMP", "GIF", "TIFF"]), seed=st.integers(0, 2**16))
def test_any_image_loads_as_rgb_and_transforms(tmp_path_factory, h, w, mode, fmt, seed):
    rgb = Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))
    img = Image.fromarray(np.random.default_rng(seed).integers(0, 65535, (h, w), dtype=np.uint16)) if mode == "I;16" \
        else rgb.convert(mode)
    if fmt == "JPEG" and mode not in ("L", "RGB", "CMYK"):
        img = img.convert("RGB")
    if fmt in ("GIF", "BMP") and mode in ("I;16", "CMYK", "LA", "RGBA"):
        img = img.convert("RGB")
    path = tmp_path_factory.mktemp("img") / f"x.{fmt.lower()}"
    try:
        img.save(path, format=fmt)
    except (OSError, KeyError):   # a mode this format cannot hold (CMYK PNG ...): save it as RGB
        img.convert("RGB").save(path, format=fmt)
    x = D.read_image(path)
    assert x.dtype == torch.uint8 and x.shape == (3, h, w)
    crop = center_crop(rescale(x[None], 32), 32)
    assert crop.shape == (1, 3, 32, 32)
    jit = scale_jitter_crop(x[None], 32, 40, 32, torch.Generator().manual_seed(seed))
    assert jit.shape == (1, 3, 32, 32)


@settings(max_examples=60, deadline=None)
@given(blob=st.binary(min_size=0, max_size=400))
def test_random_bytes_never_crash_the_loader(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("junk") / "x.jpg"
    path.write_bytes(blob)
    try:
        x = D.read_image(path)
    except D.DataError as exc:
        assert str(path) in str(exc)
    else:
        assert x.dtype == torch.uint8 and x.shape[0] == 3


KILL_WRITER = """
import sys, torch
from pathlib import Path
from vggnet.weights import write_checkpoint
path = Path(sys.argv[1])
write_checkpoint(path, {"model.w": torch.ones(4)}, {"epoch": 1})
print("first", flush=True)
while True:   # keep rewriting a large checkpoint until killed
    write_checkpoint(path, {"model.w": torch.full((30_000_000,), 2.0)}, {"epoch": 2})
"""


def test_sigkill_while_writing_a_checkpoint_keeps_a_complete_one(tmp_path):
    path = tmp_path / "last.safetensors"
    proc = subprocess.Popen([sys.executable, "-c", KILL_WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "first"
    for _ in range(200):  # kill while the temporary file is being written
        if list(tmp_path.glob(".last.safetensors.*.tmp")):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    groups, meta = read_checkpoint(path)
    assert meta["epoch"] in (1, 2) and groups["model"]["w"].numel() in (4, 30_000_000)


def train_cmd(data, out, *extra):
    return [sys.executable, "-m", "vggnet", "train", "--config", "A", "--width", "0.0625", "--data", str(data),
            "--out", str(out), "--val-size", "16", "--batch-size", "8", "--epochs", "2", "--init", "glorot",
            "--threads", "1", *extra]


def test_sigterm_mid_run_then_resume_ends_like_an_uninterrupted_run(tmp_path):
    """SIGTERM after epoch 1 of 8 (the rest takes seconds): the run checkpoints and stops,
    and --resume RUN_DIR alone, with the settings read back from the run, ends with the
    uninterrupted run's weights."""
    data = write_image_folder(tmp_path / "d", classes=2, per_class=150)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(train_cmd(data, tmp_path / "full", "--epochs", "8"), env=env, check=True, capture_output=True,
                   timeout=300)
    proc = subprocess.Popen(train_cmd(data, tmp_path / "cut", "--epochs", "8"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "cut" / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_STOPPED == 75, err[-2000:]     # stopped, resumable: not 0 like a finished run
    done = int(re.search(r"stopped after (\d+) epochs? and \d+ steps of epoch", out).group(1))
    assert 1 <= done < 8 and f"continue with: vggnet train --resume {tmp_path / 'cut'}" in out
    resumed = subprocess.run([sys.executable, "-m", "vggnet", "train", "--resume", str(tmp_path / "cut")], env=env,
                             check=True, capture_output=True, text=True, timeout=300)
    assert f"resuming {tmp_path / 'cut'} at epoch {done + 1} of 8" in resumed.stdout
    a = read_checkpoint(tmp_path / "full" / "last.safetensors")[0]["model"]
    b = read_checkpoint(tmp_path / "cut" / "last.safetensors")[0]["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigkill_mid_epoch_keeps_the_last_epoch_checkpoint(tmp_path):
    data = write_image_folder(tmp_path / "d", classes=2, per_class=150)
    proc = subprocess.Popen(train_cmd(data, tmp_path / "run", "--epochs", "5"), env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (tmp_path / "run" / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, meta = read_checkpoint(tmp_path / "run" / "last.safetensors")
    assert meta["state"]["epoch"] >= 1
    assert main(["train", "--config", "A", "--width", "0.0625", "--data", str(data), "--out", str(tmp_path / "run"),
                 "--val-size", "16", "--batch-size", "8", "--epochs", "5", "--init", "glorot", "--resume"]) == 0


def test_checkpoint_for_another_model_is_refused(tmp_path, capsys):
    data = write_image_folder(tmp_path / "d", classes=2, per_class=10)
    base = ["train", "--width", "0.0625", "--data", str(data), "--out", str(tmp_path / "r"), "--val-size", "4",
            "--epochs", "1", "--batch-size", "4", "--init", "glorot"]
    assert main([*base, "--config", "A"]) == 0
    capsys.readouterr()
    assert main([*base, "--config", "B", "--resume"]) == 2
    assert "checkpoint is config A" in capsys.readouterr().err


def test_streaming_prescan_decodes_truncated_photos_and_dangling_links(tmp_path):
    root = tmp_path / "photos"
    for split in ("train", "test"):
        for k, colour in enumerate([(200, 30, 30), (30, 30, 200)]):
            d = root / split / f"class{k}"
            d.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (60 + i, 50), colour).save(d / f"{i}.jpg", quality=95)
    good = (root / "train" / "class0" / "0.jpg").read_bytes()
    (root / "train" / "class0" / "cut.jpg").write_bytes(good[: len(good) // 2])     # PIL's verify() passes this
    (root / "test" / "class1" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (root / "test" / "class1" / "loop.jpg").symlink_to(root / "test" / "class1" / "loop.jpg")
    with pytest.raises(D.DataError, match=r"3 unreadable image\(s\): .*cut.jpg.*--skip-bad"):
        D.load_dataset(root, stream=True)
    train, test = D.load_dataset(root, stream=True, skip_bad=True)
    assert (len(train), len(test)) == (8, 8) and len(train.skipped) == 3


def test_an_image_too_large_to_decode_is_refused_before_decoding(tmp_path, monkeypatch):
    big = tmp_path / "big.png"
    Image.new("L", (5000, 4000)).save(big)                   # 20 megapixels, a small file
    monkeypatch.setenv("VGGNET_MAX_PIXELS", "10000000")
    with pytest.raises(D.DataError, match=r"5000x4000 = 20 megapixels, over the limit of 10 .*VGGNET_MAX_PIXELS"):
        D.read_image(big)
    monkeypatch.setenv("VGGNET_MAX_PIXELS", "30000000")
    assert D.read_image(big).shape == (3, 4000, 5000)


def test_in_memory_folders_name_dangling_links_too(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=2, per_class=4)
    (root / "train" / "class0" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    with pytest.raises(D.DataError, match=r"1 unreadable image\(s\): .*gone.jpg"):
        D.load_dataset(root)
    train, _ = D.load_dataset(root, skip_bad=True)
    assert len(train) == 8 and train.skipped == [str(root / "train" / "class0" / "gone.jpg")]


def test_a_crafted_header_cannot_ask_for_a_huge_net(tmp_path, monkeypatch):
    from safetensors.torch import save_file
    from vggnet.weights import WeightsError, load_weights
    header = {"model": {"config": "E", "batch_norm": False, "head": "paper", "num_classes": 100_000, "width": 4}}
    save_file({"model.x": torch.zeros(1)}, str(tmp_path / "bomb.safetensors"), metadata={"vggnet": json.dumps(header)})
    assert (tmp_path / "bomb.safetensors").stat().st_size < 1000
    with pytest.raises(WeightsError, match=r"describes a \d+\.\d-billion-parameter net, over the limit of 3 billion "
                                           r"\(set VGGNET_MAX_PARAMS"):
        load_weights(tmp_path / "bomb.safetensors")
    monkeypatch.setenv("VGGNET_MAX_PARAMS", "1e6")
    from vggnet import build_model
    from vggnet.weights import describe
    with pytest.raises(WeightsError, match="over the limit of 0.001 billion"):
        describe(build_model("A", num_classes=10, head="cifar", width=1 / 2))._check("w")   # 2.4 M parameters


def test_output_paths_that_are_folders_and_old_opsets_are_one_line(tmp_path, capsys):
    from vggnet import build_model
    from vggnet.weights import describe, save_weights
    model = build_model("A", num_classes=2, head="cifar", width=1 / 16)
    w = save_weights(tmp_path / "w.safetensors", model, describe(model, input_size=32))
    (tmp_path / "out").mkdir()
    torch.save(build_model("A").state_dict(), tmp_path / "vgg11.pth")
    assert main(["convert", str(tmp_path / "vgg11.pth"), "--out", str(tmp_path / "out") + "/"]) == 2
    assert "a folder; give the weights file's name" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "vgg11.pth", "w.safetensors"]   # nothing stray
    assert main(["export", "--weights", str(w), "--onnx", str(tmp_path / "m.onnx"), "--opset", "5"]) == 2
    assert "--opset 5: torch's ONNX exporter writes opsets 18 to " in capsys.readouterr().err
    assert main(["export", "--weights", str(w), "--onnx", str(tmp_path / "m.onnx"), "--opset", "99"]) == 2
    assert "--opset 99: torch's ONNX exporter writes opsets 18 to " in capsys.readouterr().err   # not opset 18 in silence
    assert not (tmp_path / "m.onnx").exists()
    assert main(["predict", "--weights", str(w), str(tmp_path), "--top", "0"]) == 2
    assert "--topk and the batch size must be >= 1; got 0" in capsys.readouterr().err
    assert main(["eval", "--weights", str(w), "--data", str(tmp_path), "--scales", "100000"]) == 2
    assert "--scales must be sides from 32 to 4096 px" in capsys.readouterr().err


def tiny_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--config", "A", "--width", "0.0625", "--data", str(data), "--out", str(out), "--val-size", "6",
            "--batch-size", "6", "--epochs", "3", "--init", "glorot", "--threads", "1", *extra]


def test_a_run_folder_in_use_is_refused_and_left_alone(tmp_path, capsys):
    from vggnet.files import FolderLock
    data = write_image_folder(tmp_path / "d", classes=2, per_class=12)
    (tmp_path / "run").mkdir()
    held = FolderLock(tmp_path / "run").acquire()          # another run is training into it
    assert main(tiny_args(data, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'run'} is in use by another vggnet training run (pid {os.getpid()})" in err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]
    held.release()
    assert main(tiny_args(data, tmp_path / "run")) == 0
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3


def full_disk_on(monkeypatch, name: str, after: int) -> list[int]:
    """safetensors' own error for a full disk, on writes of ``name`` after the first ``after``."""
    import safetensors.torch
    real, calls = safetensors.torch.save_file, [0]

    def save_file(tensors, filename, metadata=None):
        if Path(filename).name.startswith(f".{name}."):
            calls[0] += 1
            if calls[0] > after:
                raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device "
                                                  "(os error 28)")
        return real(tensors, filename, metadata=metadata)
    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    return calls


def test_a_full_disk_at_a_checkpoint_loses_no_epoch(tmp_path, capsys, monkeypatch):
    data = write_image_folder(tmp_path / "d", classes=2, per_class=12)
    assert main(tiny_args(data, tmp_path / "full")) == 0
    with monkeypatch.context() as m:
        full_disk_on(m, "last.safetensors", after=1)      # epoch 2's checkpoint finds the disk full
        assert main(tiny_args(data, tmp_path / "cut")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and (f"cannot write the checkpoint {tmp_path / 'cut' / 'last.safetensors'}: No space "
                                     f"left on device; the run folder keeps its last complete checkpoint") in err
    assert f"`vggnet train --resume {tmp_path / 'cut'}`" in err
    assert not list((tmp_path / "cut").glob("*.tmp"))                     # no temporary left behind
    rows = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1] and read_checkpoint(tmp_path / "cut" / "last.safetensors")[1]["state"]["epoch"] == 1
    assert main(["train", "--resume", str(tmp_path / "cut")]) == 0
    a, b = (read_checkpoint(tmp_path / r / "last.safetensors")[0]["model"] for r in ("full", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    full = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and [r["train_loss"] for r in rows] == [r["train_loss"] for r in full]


class Killed(BaseException):
    """What the test raises where a SIGKILL would have ended the process."""


def test_a_kill_between_checkpoint_best_and_metrics_is_repaired_on_resume(tmp_path, monkeypatch, capsys):
    """Killed after last.safetensors of a best epoch (epoch 1, the first) was written, before
    best.safetensors and metrics.jsonl: the resumed run's folder equals the uninterrupted run's."""
    import vggnet.checkpoint as C
    data = write_image_folder(tmp_path / "d", classes=2, per_class=12)
    assert main(tiny_args(data, tmp_path / "full")) == 0
    real, killed = C.write_checkpoint, []

    def write_checkpoint(path, tensors, header):
        if path.name == "best.safetensors" and not killed:
            killed.append(header["state"]["epoch"])
            raise Killed
        return real(path, tensors, header)
    monkeypatch.setattr(C, "write_checkpoint", write_checkpoint)
    with pytest.raises(Killed):
        main(tiny_args(data, tmp_path / "cut"))
    monkeypatch.setattr(C, "write_checkpoint", real)
    assert killed == [1] and read_checkpoint(tmp_path / "cut" / "last.safetensors")[1]["state"]["epoch"] == 1
    assert not (tmp_path / "cut" / "best.safetensors").exists() and not (tmp_path / "cut" / "metrics.jsonl").exists()
    (tmp_path / "cut" / ".best.safetensors.12345.tmp").write_bytes(b"half a file")    # what a real kill leaves
    assert main(["train", "--resume", str(tmp_path / "cut")]) == 0
    assert not list((tmp_path / "cut").glob("*.tmp"))
    for name in ("last.safetensors", "best.safetensors"):
        (ga, ha), (gb, hb) = (read_checkpoint(tmp_path / r / name) for r in ("full", "cut"))
        assert ha["state"]["epoch"] == hb["state"]["epoch"] and all(torch.equal(ga["model"][k], gb["model"][k])
                                                                    for k in ga["model"])
    rows, full = ([json.loads(x) for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
                  for r in ("cut", "full"))
    assert [(r["epoch"], r["val_acc"], r["train_loss"]) for r in rows] == \
        [(r["epoch"], r["val_acc"], r["train_loss"]) for r in full]


def test_a_stopped_run_exits_75_but_0_under_torchrun(tmp_path, monkeypatch, capsys):
    data = write_image_folder(tmp_path / "d", classes=2, per_class=12)
    monkeypatch.setattr("vggnet.training.Trainer._should_stop", lambda self: self.state.step >= 2)
    assert main(tiny_args(data, tmp_path / "a")) == 75
    assert "stopped after 0 epochs and 2 steps of epoch 1" in capsys.readouterr().out
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")        # torchrun would restart a worker that exits non-zero
    assert main(tiny_args(data, tmp_path / "b")) == 0


def test_file_system_errors_are_one_line_naming_the_path(tmp_path, capsys, monkeypatch):
    from vggnet import build_model
    from vggnet.weights import describe, save_weights
    model = build_model("A", num_classes=2, head="cifar", width=1 / 16)
    w = save_weights(tmp_path / "w.safetensors", model, describe(model, input_size=32))
    data = write_image_folder(tmp_path / "d", classes=2, per_class=2)
    (tmp_path / "file").write_text("not a folder")
    image = str(data / "test" / "class0" / "0000.jpg")
    assert main(["predict", "--weights", str(w), image, "--cam", str(tmp_path / "file" / "cam.png")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("vggnet predict: error: ") and str(tmp_path / "file") in err[-1]
    monkeypatch.setenv("VGGNET_CACHE", str(tmp_path / "file" / "cache"))     # a cache folder that cannot be made
    assert main(tiny_args(data, tmp_path / "run", "--val-size", "1", "--batch-size", "2")) == 2
    err = capsys.readouterr().err
    assert "cannot write the cache file" in err and "set VGGNET_CACHE to a writable folder" in err
    assert not (tmp_path / "run").exists()
    monkeypatch.setattr("vggnet.cli._run_summary", lambda args: 1 / 0)       # a bug of ours: one line, exit 1
    assert main(["summary"]) == 1
    assert capsys.readouterr().err == ("vggnet summary: internal error: ZeroDivisionError: division by zero "
                                       "(VGGNET_DEBUG=1 shows the traceback; please report it)\n")


def test_a_corrupt_cache_file_is_named_and_rebuilt(tmp_path, capsys):
    data = write_image_folder(tmp_path / "d", classes=2, per_class=4)
    first, _ = D.load_dataset(data)
    [cached] = [p for p, _ in D.cache_entries() if p.name.startswith("train-")]
    cached.write_bytes(cached.read_bytes()[:100])                             # torn by a full disk or a kill
    again, _ = D.load_dataset(data)
    assert f"cache file {cached} is unreadable" in capsys.readouterr().err
    assert torch.equal(first.images, again.images) and D.read_cached(cached, ("images",)) is not None


def test_archives_downloads_and_mismatched_weights_are_one_line(tmp_path, capsys, monkeypatch):
    import urllib.error
    import urllib.request
    from vggnet import build_model
    from vggnet.weights import describe, save_weights
    (tmp_path / "bad.tar.gz").write_bytes(b"not gzip at all")
    with pytest.raises(D.DataError, match=r"bad.tar.gz: not a readable CIFAR-10 .tar.gz \(not a gzip file\)"):
        D.load_dataset(tmp_path / "bad.tar.gz")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(D.DataError, match=r"cannot download http://x/c.tar.gz into .*: Name or service not known; "
                                          r"without a network, copy c.tar.gz into"):
        D.download("http://x/c.tar.gz", tmp_path / "dl" / "c.tar.gz", "0" * 32)
    assert not list((tmp_path / "dl").iterdir())
    data = write_image_folder(tmp_path / "d", classes=2, per_class=6)
    model = build_model("A", num_classes=2, head="cifar", width=1 / 8)
    w = save_weights(tmp_path / "w8.safetensors", model, describe(model, input_size=32))
    assert main(tiny_args(data, tmp_path / "r", "--val-size", "2", "--init-from", str(w))) == 2
    assert (f"{w}: features.0.weight has shape (8, 3, 3, 3), this model needs (4, 3, 3, 3) (another width or "
            "number of classes?)") in capsys.readouterr().err
    assert main(tiny_args(data, tmp_path / "r", "--crop-size", "1000")) == 2
    assert "--crop-size 1000 on" in capsys.readouterr().err
    assert main(["eval", "--weights", str(w), "--data", str(data), "--limit", "-3"]) == 2
    assert "--limit must be >= 0" in capsys.readouterr().err


def test_a_start_that_loses_the_race_for_a_new_folder_leaves_it_to_the_winner(tmp_path, monkeypatch, capsys):
    """Two runs start into the same new folder: the one refused by the lock must not delete
    the folder the other is training into (a failed start removes only a folder it owns)."""
    from vggnet.files import FolderLock
    from vggnet.training import Trainer
    data = write_image_folder(tmp_path / "d", classes=2, per_class=6)
    real, other = Trainer._check_out_dir, []

    def check_out_dir(self):
        real(self)
        other.append(FolderLock(self.out).acquire())          # the other run took the new folder meanwhile
        (self.out / "metrics.jsonl").write_text("theirs\n")
    monkeypatch.setattr(Trainer, "_check_out_dir", check_out_dir)
    assert main(tiny_args(data, tmp_path / "new")) == 2
    assert "is in use by another vggnet training run" in capsys.readouterr().err
    assert (tmp_path / "new" / "metrics.jsonl").read_text() == "theirs\n"


def test_a_batch_too_large_for_memory_is_refused_naming_a_micro_batch_that_fits(tmp_path, monkeypatch, capsys):
    """The kernel kills a run that runs out of RAM without a word: the step's memory is
    checked before the first step, and the message names the --micro-batch that fits."""
    from vggnet.summary import step_memory
    from vggnet.weights import ModelSpec
    data = write_image_folder(tmp_path / "d", classes=2, per_class=40)            # 72 training images
    spec = ModelSpec("A", False, head="cifar", num_classes=2, width=1 / 16, input_size=32)
    need_64, fits_8 = step_memory(spec, 64, "bf16")[0], step_memory(spec, 8, "bf16")[1]
    assert fits_8 / 0.9 < need_64
    available = (need_64 + int(fits_8 / 0.9)) // 2
    monkeypatch.setattr("vggnet.runtime.available_memory", lambda device: available)
    monkeypatch.setattr("vggnet.runtime.resolve_precision", lambda requested, device: "bf16")
    args = tiny_args(data, tmp_path / "run", "--batch-size", "64", "--val-size", "8", "--epochs", "1")
    assert main(args) == 2
    err = capsys.readouterr().err
    m = int(re.search(r"a training step of 64 images at 32 px needs at least [\d.]+ GiB on cpu, [\d.]+ GiB is "
                      r"available: give --micro-batch (\d+) \(the same batch of 64", err).group(1))
    assert 8 <= m < 64 and step_memory(spec, m, "bf16")[1] <= 0.9 * available
    assert not (tmp_path / "run").exists()
    assert main([*args, "--micro-batch", str(m)]) == 0
    assert "warning:" not in capsys.readouterr().out
    low_64, high_64 = step_memory(spec, 64, "bf16")
    monkeypatch.setattr("vggnet.runtime.available_memory", lambda device: (low_64 + high_64) // 2)
    assert main([*args[:args.index("--out") + 1], str(tmp_path / "warned"), *args[args.index("--out") + 2:]]) == 0
    assert re.search(r"warning: a training step of 64 images at 32 px needs up to [\d.]+ GiB on cpu, [\d.]+ GiB is "
                     r"available; if the run is killed, give --micro-batch \d+", capsys.readouterr().out)
    monkeypatch.setenv("VGGNET_SKIP_MEMORY_CHECK", "1")
    assert main([*args[:args.index("--out") + 1], str(tmp_path / "skip"), *args[args.index("--out") + 2:]]) == 0


def test_out_of_memory_in_a_step_is_one_line(tmp_path, monkeypatch, capsys):
    data = write_image_folder(tmp_path / "d", classes=2, per_class=12)

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr("vggnet.training.forward_backward", oom)
    assert main(tiny_args(data, tmp_path / "run")) == 2
    assert capsys.readouterr().err == (f"vggnet train: error: out of memory in a training step of 6 images at 32 px "
                                       f"on cpu: give --micro-batch 1 or a smaller --batch-size; the run folder keeps "
                                       f"its last checkpoint\n")
