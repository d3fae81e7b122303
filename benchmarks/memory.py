"""Peak memory (resident set, from the OS) of one VGG training step, each setting in a fresh
process so that the peaks do not mix: vggnet's step with and without activation
checkpointing, and torchvision's fp32 eager step beside them.

    python benchmarks/memory.py --config D --size 224 --batch 32
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import torch


def one_step(which: str, config: str, size: int, batch: int, classes: int) -> dict:
    """Run two training steps in this process; peak RSS and seconds of the second."""
    from throughput import ours_train_step, torchvision_model, tv_train_step
    from vggnet import build_model
    torch.set_flush_denormal(True)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, classes, (batch,))
    if which == "torchvision":
        model = torchvision_model(config, False, size, classes).train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        step = lambda: tv_train_step(model, opt, x, y)  # noqa: E731
    else:
        from vggnet.runtime import reuse_freed_memory
        reuse_freed_memory()                                # as `vggnet train` sets it
        head = "cifar" if size < 224 else "paper"
        model = build_model(config, num_classes=classes, head=head).to(memory_format=torch.channels_last).train()
        model.checkpoint_activations = which == "ours-checkpointed"
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        xc = x.contiguous(memory_format=torch.channels_last)
        step = lambda: ours_train_step(model, opt, xc, y)  # noqa: E731
    step()
    t = time.perf_counter()
    step()
    seconds = time.perf_counter() - t
    return {"setting": which, "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "step_s": round(seconds, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="D")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one_step(args.one, args.config, args.size, args.batch, args.classes)))
        return
    rows = []
    for which in ("ours", "ours-checkpointed", "torchvision"):
        cmd = [sys.executable, __file__, "--one", which, "--config", args.config, "--size", str(args.size),
               "--batch", str(args.batch), "--classes", str(args.classes)]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
                      "torch": torch.__version__, "config": args.config, "size": args.size, "batch": args.batch,
                      "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
