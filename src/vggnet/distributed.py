"""Data parallelism with PyTorch's own engine: torchrun + DistributedDataParallel.

``torchrun --nproc_per_node=N -m vggnet train ...`` sets RANK/WORLD_SIZE; :func:`setup`
joins the process group (gloo on CPU, NCCL on CUDA). The paper trained on 4 GPUs with
synchronous data parallelism (section 3.3); so do we, with the global batch of the
recipe split across ranks and gradients averaged by DDP.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    """This process's place among the ranks, and the device it computes on."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    owns_group: bool = False   # setup() created the process group, so teardown() ends it

    @property
    def main(self) -> bool:
        return self.rank == 0

    def tensor(self, values: list[float], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A small tensor for a collective: NCCL reduces GPU tensors only."""
        return torch.tensor(values, dtype=dtype, device=self.device)


def setup(threads: int = 0, device: torch.device | str = "cpu") -> World:
    """Join the torchrun process group when there is one (NCCL with each rank on its own GPU
    when ``device`` is CUDA, gloo on the CPU); a single process on ``device`` otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(device=str(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.device(device).type == "cuda"
    device = f"cuda:{local_rank}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(local_rank)
    owns = not dist.is_initialized()
    if owns:
        store = _attempt_store(rank, size)
        dist.init_process_group(backend="nccl" if cuda else "gloo", store=store,
                                rank=rank if store else -1, world_size=size if store else -1)
    if not threads and not cuda:  # ranks on one machine share its cores fairly
        local = int(os.environ.get("LOCAL_WORLD_SIZE", size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return World(rank, size, local_rank, device, owns)


def _attempt_store(rank: int, size: int) -> dist.Store | None:
    """On one node under torchrun's shared store, the env:// store seen through a prefix of
    this restart attempt; None (plain env://) otherwise.

    torchrun hands every attempt the same TCPStore, whose keys outlive the workers: after an
    elastic restart gloo could read a dead peer's address left by the previous attempt and
    wait for it forever (pytorch/pytorch#135712). Every rank of one node restarts together,
    so TORCHELASTIC_RESTART_COUNT names the attempt for all of them; across nodes the counts
    differ, and TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (a fresh store per round) is the remedy."""
    shared = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    if not shared or os.environ.get("GROUP_WORLD_SIZE", "1") != "1":
        return None
    from torch.distributed.rendezvous import rendezvous
    store, _, _ = next(rendezvous("env://", rank, size))
    return dist.PrefixStore(f"vggnet/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def teardown(world: World) -> None:
    """End the process group setup() created: exiting with gloo's threads still running can
    abort a rank ("terminate called without an active exception") after a finished run."""
    if world.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def shard(n: int, world: World) -> slice:
    """This rank's contiguous part of ``n`` items (sizes differ by at most one)."""
    base, extra = divmod(n, world.size)
    start = world.rank * base + min(world.rank, extra)
    return slice(start, start + base + (1 if world.rank < extra else 0))


def gather(t: torch.Tensor, world: World) -> torch.Tensor:
    """Concatenate every rank's tensor in rank order (shards of unequal length allowed), on the CPU."""
    if world.size == 1:
        return t.cpu()
    parts: list[torch.Tensor | None] = [None] * world.size
    dist.all_gather_object(parts, t.cpu())
    return torch.cat([p for p in parts if p is not None])


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the whole global batch on any device: sums and sums of squares are
    all-reduced (differentiably), so N ranks x b images normalise like one batch of N*b.
    PyTorch's nn.SyncBatchNorm only runs on GPUs; on those it is used instead."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        xf = x.float()
        xd = xf.double()   # sums of squares in float64: E[x^2] - E[x]^2 cancels badly in float32
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64, device=x.device)
        stats = all_reduce(torch.cat([xd.sum((0, 2, 3)), (xd * xd).sum((0, 2, 3)), count]))
        c, n = x.shape[1], stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).float()
        mean = mean.float()
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean.detach(), m)
            self.running_var.lerp_(var.detach() * n / (n - 1), m)
        scale = self.weight / torch.sqrt(var + self.eps)
        y = (xf - mean[None, :, None, None]) * scale[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def convert_sync_batchnorm(model: nn.Module, cuda: bool) -> nn.Module:
    """Every BatchNorm2d becomes a synchronised one (same parameter names and state)."""
    if cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats)
            sync.load_state_dict(child.state_dict())
            setattr(model, name, sync)
        else:
            convert_sync_batchnorm(child, cuda)
    return model
