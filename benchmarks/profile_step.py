"""Where the time of vggnet's training step goes (torch.profiler), by operator and by kind:
conv forward, conv backward, BatchNorm, ReLU, pooling, optimizer, casts and the rest.

    python benchmarks/profile_step.py --config D --batch-norm --size 32 --batch 128
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from throughput import add_step_arguments, ours_train_step
from vggnet import build_model
from vggnet.runtime import reuse_freed_memory

KINDS = [("conv backward", ("convolution_backward",)), ("conv forward", ("mkldnn_convolution", "onednn_convolution", "_convolution")),
         ("linear", ("addmm", "mm")), ("batchnorm", ("batch_norm",)), ("relu", ("relu", "threshold")),
         ("max-pool", ("max_pool",)), ("optimizer", ("sgd", "_foreach")), ("dtype casts", ("_to_copy", "copy_")),
         ("loss", ("cross_entropy", "log_softmax", "nll_loss"))]


def kind_of(name: str) -> str:
    return next((kind for kind, keys in KINDS if any(k in name for k in keys)), "other")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_arguments(p)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    torch.set_flush_denormal(True)
    reuse_freed_memory()   # as `vggnet train` sets it
    model = build_model(args.config, batch_norm=args.batch_norm, num_classes=10,
                        head="cifar" if args.size < 224 else "paper").to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,))
    for _ in range(2):
        ours_train_step(model, opt, x, y)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            ours_train_step(model, opt, x, y)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    by_kind: dict[str, float] = defaultdict(float)
    for e in events:
        by_kind[kind_of(e.key)] += e.self_cpu_time_total
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]
    print(json.dumps({
        "step_ms": round(total / args.steps / 1e3, 1),
        "by_kind_percent": {k: round(100 * v / total, 1) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "top_ops_percent": {e.key: round(100 * e.self_cpu_time_total / total, 1) for e in top}}, indent=2))


if __name__ == "__main__":
    main()
