"""Peak memory of one training step against the summary's activation count (BENCHMARKS 22).

Each case runs in a fresh process: the model and the batch are built first, then one
forward and backward pass (vggnet.training.forward_backward, channels-last, bf16 autocast
or fp32); the rise of the peak resident set over that pass is divided by the summary's
activations (every layer's fp32 output) times the batch. The ratios set
vggnet.summary.STEP_MEMORY_FACTOR, which the trainer's memory check uses.

    python benchmarks/step_memory.py
"""

import resource
import subprocess
import sys

CASES = [("D", "cifar", 32, 256, "bf16"), ("D", "cifar", 32, 256, "fp32"), ("D", "cifar", 32, 512, "bf16"),
         ("D", "cifar", 224, 16, "bf16"), ("D", "cifar", 224, 16, "fp32"), ("A", "cifar", 224, 16, "bf16"),
         ("E", "cifar", 224, 8, "bf16"), ("E", "cifar", 64, 64, "bf16"), ("D", "paper", 224, 8, "bf16"),
         ("D", "paper", 224, 8, "fp32")]


def one(config: str, head: str, size: int, batch: int, precision: str) -> str:
    import torch
    from vggnet import build_model, runtime
    from vggnet.summary import summarize, totals
    from vggnet.training import forward_backward
    runtime.reuse_freed_memory()
    torch.set_num_threads(2)
    model = build_model(config, batch_norm=True, num_classes=10, head=head).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    forward_backward(model, x, y, 0, 0.1, precision)
    rise = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    t = totals(summarize(config, batch_norm=True, input_size=(size, size), head=head, num_classes=10))
    activations = t["memory_bytes"] * batch
    return (f"| {config}-BN | {head} | {size} | {batch} | {precision} | {activations / 2**20:,.0f} | "
            f"{rise / 2**20:,.0f} | {4 * t['params'] / 2**20:,.0f} | {rise / activations:.2f} |")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        c, h, s, b, p = sys.argv[1:]
        print(one(c, h, int(s), int(b), p))
    else:
        print("| net | head | px | batch | precision | summary activations x batch (MiB) | step peak rise (MiB) "
              "| gradients (MiB) | ratio |\n|---|---|---|---|---|---|---|---|---|")
        for case in CASES:
            print(subprocess.run([sys.executable, __file__, *map(str, case)], capture_output=True, text=True,
                                 check=True).stdout.strip(), flush=True)
