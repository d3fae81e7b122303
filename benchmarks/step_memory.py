"""Peak memory of one training step, and of scoring with the dense net, against the
summary's activation counts (BENCHMARKS 22).

Each case runs in a fresh process: the model and the batch are built first, then one
forward and backward pass (vggnet.training.forward_backward, channels-last, bf16 autocast
or fp32); the peak resident set is reset before it (Linux /proc/self/clear_refs), and its
rise over the resident set before the pass is divided by the summary's
activations (every layer's fp32 output) times the batch. The ratios set
vggnet.summary.STEP_MEMORY_FACTOR, which the trainer's memory check uses. Scoring: the same
for one pass of the dense net (vggnet.inference.InferenceNet) against the largest layer's
fp32 output times the batch: vggnet.summary.SCORE_MEMORY_FACTOR, which sets eval's chunks.

    python benchmarks/step_memory.py
"""

import subprocess
import sys

CASES = [("D", "cifar", 32, 256, "bf16"), ("D", "cifar", 32, 256, "fp32"), ("D", "cifar", 32, 512, "bf16"),
         ("D", "cifar", 224, 16, "bf16"), ("D", "cifar", 224, 16, "fp32"), ("A", "cifar", 224, 16, "bf16"),
         ("E", "cifar", 224, 8, "bf16"), ("E", "cifar", 64, 64, "bf16"), ("D", "paper", 224, 8, "bf16"),
         ("D", "paper", 224, 8, "fp32")]
SCORING = [("D", 512, 4, "bf16"), ("D", 512, 4, "fp32"), ("D", 1024, 1, "bf16"), ("D", 1024, 1, "fp32"),
           ("A", 768, 2, "bf16"), ("E", 640, 2, "fp32")]


def status(key: str) -> int:
    """A /proc/self/status memory field, in bytes (Linux)."""
    with open("/proc/self/status") as fh:
        return int(next(line for line in fh if line.startswith(key)).split()[1]) * 1024


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
    with open("/proc/self/clear_refs", "w") as fh:     # the peak (VmHWM) starts again from the current RSS
        fh.write("5")
    before = status("VmRSS")
    forward_backward(model, x, y, 0, 0.1, precision)
    rise = status("VmHWM") - before
    t = totals(summarize(config, batch_norm=True, input_size=(size, size), head=head, num_classes=10))
    activations = t["memory_bytes"] * batch
    return (f"| {config}-BN | {head} | {size} | {batch} | {precision} | {activations / 2**20:,.0f} | "
            f"{rise / 2**20:,.0f} | {4 * t['params'] / 2**20:,.0f} | {rise / activations:.2f} |")


def scoring(config: str, size: int, batch: int, precision: str) -> str:
    import torch
    from vggnet import build_model
    from vggnet.inference import InferenceNet
    from vggnet.model import to_dense
    from vggnet.summary import summarize
    torch.set_num_threads(2)
    net = InferenceNet(to_dense(build_model(config, num_classes=1000)).eval(), precision, [], False, "cpu")
    x = torch.randn(batch, 3, size, size)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    before = status("VmRSS")
    with torch.no_grad():
        net(x)
    rise = status("VmHWM") - before
    largest = max(r.memory_bytes for r in summarize(config, input_size=(size, size), head="dense")) * batch
    return f"| {config} (dense) | {size} | {batch} | {precision} | {largest / 2**20:,.0f} | {rise / 2**20:,.0f} | {rise / largest:.2f} |"


if __name__ == "__main__":
    if len(sys.argv) == 6:
        c, h, s, b, p = sys.argv[1:]
        print(one(c, h, int(s), int(b), p))
    elif len(sys.argv) == 5:
        c, s, b, p = sys.argv[1:]
        print(scoring(c, int(s), int(b), p))
    else:
        print("| net | head | px | batch | precision | summary activations x batch (MiB) | step peak rise (MiB) "
              "| gradients (MiB) | ratio |\n|---|---|---|---|---|---|---|---|---|")
        for case in CASES:
            print(subprocess.run([sys.executable, __file__, *map(str, case)], capture_output=True, text=True,
                                 check=True).stdout.strip(), flush=True)
        print("\n| net | px | batch | precision | largest layer x batch (MiB) | scoring peak rise (MiB) | ratio |\n"
              "|---|---|---|---|---|---|---|")
        for case in SCORING:
            print(subprocess.run([sys.executable, __file__, *map(str, case)], capture_output=True, text=True,
                                 check=True).stdout.strip(), flush=True)
