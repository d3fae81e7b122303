"""torchrun with 2 CPU processes (gloo): the same weights as one process with the whole
batch, and a killed rank that torchrun restarts from the last checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import write_image_folder
from vggnet.weights import read_checkpoint

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")


LOOPBACK = {"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}   # both ranks on this machine's loopback


def run(args, env=None, **kw):
    env = {**os.environ, **LOOPBACK, **(env or {})}
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, **kw)


def train_args(data, out, *extra):
    return ["-m", "vggnet", "train", "--config", "A", "--width", "0.0625", "--data", str(data), "--out", str(out),
            "--val-size", "16", "--batch-size", "16", "--init", "glorot", "--precision", "fp32", "--seed", "3",
            "--threads", "1", "--lr", "0.005", "--recipe", "fast", *extra]
    # a small lr: large steps amplify rounding differences; the fast recipe has no dropout,
    # whose masks would differ between one process and two


def torchrun(nproc, *args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]


@pytest.mark.parametrize("bn", [["--no-batch-norm"], ["--batch-norm", "--sync-bn"]], ids=["no-bn", "sync-bn"])
def test_two_ranks_equal_one_process_with_the_whole_batch(tmp_path, bn):
    data = write_image_folder(tmp_path / "d", classes=2, per_class=40)
    one = run([sys.executable, *train_args(data, tmp_path / "one", "--epochs", "1", *bn)])
    assert one.returncode == 0, one.stderr[-2000:]
    two = run(torchrun(2, *train_args(data, tmp_path / "two", "--epochs", "1", *bn)))
    assert two.returncode == 0, two.stdout[-1000:] + two.stderr[:3000]
    a = read_checkpoint(tmp_path / "one" / "last.safetensors")[0]["model"]
    b = read_checkpoint(tmp_path / "two" / "last.safetensors")[0]["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5, msg=k)
    m1 = json.loads((tmp_path / "one" / "metrics.jsonl").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.jsonl").read_text())
    assert m1["val_acc"] == m2["val_acc"] and abs(m1["train_loss"] - m2["train_loss"]) < 1e-4


def kill_one_rank_and_finish(tmp_path):
    """Start a 2-rank run with one allowed restart, SIGKILL a worker after epoch 1, wait."""
    data = write_image_folder(tmp_path / "d", classes=2, per_class=200)
    out = tmp_path / "run"
    args = torchrun(2, "--max-restarts", "1", *train_args(data, out, "--epochs", "3", "--batch-size", "8"))
    proc = subprocess.Popen(args, env={**os.environ, **LOOPBACK}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (out / "metrics.jsonl").is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert (out / "metrics.jsonl").is_file(), "the first epoch never finished"
    workers = subprocess.run(["pgrep", "-f", "-P", str(proc.pid), "vggnet"], capture_output=True, text=True).stdout.split()
    assert workers, "no worker processes found"
    os.kill(int(workers[-1]), signal.SIGKILL)
    _, stderr = proc.communicate(timeout=300)
    return proc.returncode, stderr, out


def test_killed_rank_restarts_from_the_checkpoint(tmp_path):
    # before each attempt got its own store prefix (distributed._attempt_store), gloo hung
    # here about half the time on a dead peer's address left in torchrun's shared store
    code, stderr, out = kill_one_rank_and_finish(tmp_path)
    assert "exitcode: -9" in stderr, "torchrun never saw the killed rank"
    assert code == 0, stderr[-3000:]
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    assert (out / "results.json").is_file()
    assert read_checkpoint(out / "last.safetensors")[1]["state"]["epoch"] == 3


def test_each_restart_attempt_sees_its_own_keys(monkeypatch):
    """torchrun keeps one store across restarts: attempt 1 must not read what attempt 0 wrote."""
    from vggnet.distributed import _attempt_store
    server = torch.distributed.TCPStore("127.0.0.1", 0, 1, is_master=True, wait_for_workers=False)
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(server.port), "TORCHELASTIC_USE_AGENT_STORE": "True",
           "GROUP_WORLD_SIZE": "1", "RANK": "0", "WORLD_SIZE": "1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    stores = []
    for attempt in ("0", "1"):
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", attempt)
        stores.append(_attempt_store(0, 1))
    stores[0].set("rank_1", "dead peer")
    stores[1].set("rank_1", "live peer")
    assert stores[1].get("rank_1") == b"live peer" and stores[0].get("rank_1") == b"dead peer"
    assert server.check(["vggnet/attempt_1/rank_1"]) and server.get("vggnet/attempt_1/rank_1") == b"live peer"
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")          # several nodes: their restart counts differ
    assert _attempt_store(0, 1) is None
    monkeypatch.setenv("GROUP_WORLD_SIZE", "1")
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE")   # not under torchrun's shared store
    assert _attempt_store(0, 1) is None


def test_failed_set_up_leaves_the_process_group(monkeypatch, tmp_path):
    """A rank whose Trainer fails to build (here: no data) must not exit inside the group."""
    import torch.distributed as dist

    from vggnet import training as train_module
    from vggnet.data import DataError
    from vggnet.distributed import World
    store = dist.HashStore()

    def joined(threads: int = 0) -> World:
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        return World(owns_group=True)
    monkeypatch.setattr(train_module, "setup", joined)
    settings = train_module.RunSettings(config="A", data=str(tmp_path / "missing"), out=str(tmp_path / "run"))
    with pytest.raises(DataError, match="missing"):
        train_module.train(settings)
    assert not dist.is_initialized()
