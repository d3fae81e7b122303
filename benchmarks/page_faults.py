"""Page faults and images/s of one training step under glibc's default malloc and with
freed buffers kept for reuse (`vggnet.runtime.reuse_freed_memory`, what `vggnet` sets),
for vggnet's step and torchvision's plain fp32 eager loop. Each measurement runs in a
fresh process, as a user's training run does, and the settings alternate round by round.

    python benchmarks/page_faults.py --config D --batch-norm --size 32 --batch 128 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

SETTINGS = [("ours", "reuse"), ("torchvision", "default"), ("ours", "default"), ("torchvision", "reuse")]


def measure(which: str, malloc: str, args: argparse.Namespace) -> dict:
    """Build one net in this process, warm it up, then time ``args.steps`` training steps."""
    from throughput import ours_train_step, torchvision_model, tv_train_step
    from vggnet import build_model
    from vggnet.runtime import reuse_freed_memory
    reused = malloc == "reuse" and reuse_freed_memory()
    torch.set_flush_denormal(True)
    x, y = torch.randn(args.batch, 3, args.size, args.size), torch.randint(0, 10, (args.batch,))
    head = "cifar" if args.size < 224 else "paper"
    if which == "torchvision":
        model = torchvision_model(args.config, args.batch_norm, args.size, 10).train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        step = lambda: tv_train_step(model, opt, x, y)  # noqa: E731
    else:
        model = build_model(args.config, batch_norm=args.batch_norm, num_classes=10, head=head,
                            dropout=0.0).to(memory_format=torch.channels_last).train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        xc = x.contiguous(memory_format=torch.channels_last)
        step = lambda: ours_train_step(model, opt, xc, y)  # noqa: E731
    for _ in range(2):
        step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = time.perf_counter() - t
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {"net": which, "malloc": malloc, "reused": reused, "img_s": round(args.batch * args.steps / seconds, 1),
            "faults_per_step": round(faults / args.steps)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="D")
    p.add_argument("--batch-norm", action="store_true")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--one", nargs=2, metavar=("NET", "MALLOC"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args)))
        return
    rows = []
    for _ in range(args.rounds):
        for which, malloc in SETTINGS:
            cmd = [sys.executable, __file__, "--one", which, malloc, "--config", args.config, "--size", str(args.size),
                   "--batch", str(args.batch), "--steps", str(args.steps)] + (["--batch-norm"] if args.batch_norm else [])
            rows.append(json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout))
            print(json.dumps(rows[-1]), file=sys.stderr)
    med = {(w, m): statistics.median(r["img_s"] for r in rows if (r["net"], r["malloc"]) == (w, m)) for w, m in SETTINGS}
    faults = {(w, m): statistics.median(r["faults_per_step"] for r in rows if (r["net"], r["malloc"]) == (w, m))
              for w, m in SETTINGS}
    print(f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"config {args.config}{'-BN' if args.batch_norm else ''}, {args.size} px, batch {args.batch}, "
          f"{args.rounds} rounds, medians\n")
    print("| net | malloc | page faults per step | img/s |\n|---|---|---|---|")
    for w, m in SETTINGS:
        print(f"| {w} | {m} | {faults[w, m]:.0f} | {med[w, m]:.1f} |")
    print(f"\nours (reuse) / torchvision (default): {med['ours', 'reuse'] / med['torchvision', 'default']:.2f}x; "
          f"ours (reuse) / torchvision (reuse): {med['ours', 'reuse'] / med['torchvision', 'reuse']:.2f}x; "
          f"ours reuse / default: {med['ours', 'reuse'] / med['ours', 'default']:.2f}x")


if __name__ == "__main__":
    main()
