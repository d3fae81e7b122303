"""Images per second of vggnet's training step (the one `vggnet train` runs) against
torchvision's VGG in a plain fp32 eager loop, measured alternately in the same process,
with the achieved FLOPS as a fraction of the bf16/fp32 GEMM peak measured in the same run,
and the peak resident memory of our step (measured before torchvision's model is built).

    python benchmarks/throughput.py --config D --batch-norm --size 32 --batch 128
    python benchmarks/throughput.py --mode infer --config D --size 224 --batch 16 --precision int8

Inference runs vggnet.inference.InferenceNet, the net `vggnet eval` and `vggnet predict` use
(BN folded; bf16 weights, or int8 calibrated on the benchmark batch).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch
import torch.nn.functional as F
import torchvision

from vggnet import build_model
from vggnet.inference import InferenceNet
from vggnet.runtime import bf16_supported, machine, reuse_freed_memory
from vggnet.summary import summarize, totals
from vggnet.training import forward_backward

TV_NAMES = {("A", False): "vgg11", ("A", True): "vgg11_bn", ("B", False): "vgg13", ("B", True): "vgg13_bn",
            ("D", False): "vgg16", ("D", True): "vgg16_bn", ("E", False): "vgg19", ("E", True): "vgg19_bn"}


def gemm_peak(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    """FLOPS of a square matmul, the machine's practical peak for this dtype."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def torchvision_model(config: str, bn: bool, size: int, classes: int) -> torch.nn.Module:
    model = getattr(torchvision.models, TV_NAMES[(config, bn)])(num_classes=classes)
    if size < 224:  # the common CIFAR adaptation: pool5 (1x1x512) straight into a 512-to-classes linear layer
        model.avgpool, model.classifier = torch.nn.AdaptiveAvgPool2d(1), torch.nn.Linear(512, classes)
    return model


def ours_train_step(model, opt, x, y, precision="bf16"):
    loss, _ = forward_backward(model, x, y, 0, 0.1, precision)
    opt.step()


def tv_train_step(model, opt, x, y):
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()


def timed(step, steps: int) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - t


def _num(x: float, digits: int) -> float | None:
    return None if x != x else round(x, digits)    # NaN (no torchvision peer) -> null


def add_step_arguments(p: argparse.ArgumentParser) -> None:
    """The options naming one training step, shared with profile_step.py."""
    p.add_argument("--config", default="D")
    p.add_argument("--batch-norm", action="store_true")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=128)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_arguments(p)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--mode", choices=["train", "infer"], default="train")
    p.add_argument("--precision", choices=["fp32", "bf16", "int8"], default="bf16", help="numerics of our step (training: bf16 autocast or fp32; inference: also int8)")
    p.add_argument("--compile", action="store_true", help="torch.compile our model (warm-up not timed)")
    p.add_argument("--width", type=float, default=1.0, help="our model's channel multiplier (1.0: the paper's)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--malloc", choices=["reuse", "default"], default="reuse",
                   help="reuse: glibc keeps freed buffers, as `vggnet` sets it (process-wide, so torchvision's loop "
                        "gets it too); default: glibc's defaults for both")
    args = p.parse_args()
    torch.set_flush_denormal(True)
    malloc_reuse = args.malloc == "reuse" and reuse_freed_memory()
    # training's bf16 is autocast, off where the CPU lacks native bf16; inference casts the weights regardless
    ran_bf16 = args.precision == "bf16" and (args.mode == "infer" or bf16_supported())
    ran = "bf16" if ran_bf16 else ("fp32" if args.precision == "bf16" else args.precision)
    head = "cifar" if args.size < 224 else "paper"
    ours = build_model(args.config, batch_norm=args.batch_norm, num_classes=args.classes, head=head,
                       dropout=0.0, width=args.width).to(memory_format=torch.channels_last)
    x = torch.randn(args.batch, 3, args.size, args.size)
    xc = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, args.classes, (args.batch,))
    if args.mode == "train":
        o_opt = torch.optim.SGD(ours.parameters(), lr=1e-3, momentum=0.9)
        ours.train()
        step_model = torch.compile(ours) if args.compile else ours
        if args.precision == "int8":
            p.error("int8 is for inference (--mode infer)")
        run_ours = lambda: ours_train_step(step_model, o_opt, xc, y, args.precision)  # noqa: E731
    else:
        ours.eval()
        net = InferenceNet(ours, args.precision, [xc], compile=args.compile)

        def run_ours():
            net(xc)
    timed(run_ours, 2)   # warm-up (and compilation), before torchvision's model exists:
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # so this peak is ours alone
    theirs = torchvision_model(args.config, args.batch_norm, args.size, args.classes) \
        if (args.config, args.batch_norm) in TV_NAMES else None     # torchvision has no A-LRN, C, B-5x5
    if theirs is not None and args.mode == "train":
        t_opt = torch.optim.SGD(theirs.parameters(), lr=1e-3, momentum=0.9)
        run_theirs = lambda: tv_train_step(theirs.train(), t_opt, x, y)  # noqa: E731
    elif theirs is not None:
        def run_theirs():
            with torch.inference_mode():
                theirs.eval()(x)
    runs = [run_ours] + ([run_theirs] if theirs is not None else [])
    for fn in runs[1:]:  # torchvision's warm-up
        timed(fn, 2)
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(args.repeats):  # alternate, so both see the same machine load
        for fn, t in zip(runs, times):
            t.append(timed(fn, args.steps))
    images = args.batch * args.steps
    o_ips = images / statistics.median(times[0])
    t_ips = images / statistics.median(times[1]) if theirs is not None else float("nan")
    macs = totals(summarize(args.config, batch_norm=args.batch_norm, input_size=(args.size, args.size), head=head,
                            num_classes=args.classes, width=args.width))["macs"]
    flops_per_image = 2 * macs * (3 if args.mode == "train" else 1)
    # without native bf16 (an AVX2-only CPU) the bf16 GEMM is emulated, minutes long, and not a peak of anything
    peak_bf16 = gemm_peak(torch.bfloat16) if bf16_supported() else float("nan")
    peak_fp32 = gemm_peak(torch.float32)
    own_peak = peak_bf16 if ran_bf16 or args.precision == "int8" else peak_fp32   # int8: against bf16, no int8 GEMM timed
    print(json.dumps({
        "date": time.strftime("%Y-%m-%d"), **machine(), "mode": args.mode, "config": args.config,
        "precision": ran, "precision_asked": args.precision, "compiled": args.compile, "malloc_reuse": malloc_reuse,
        "width": args.width,
        "batch_norm": args.batch_norm, "size": args.size, "batch": args.batch,
        "ours_img_s": round(o_ips, 1), "torchvision_fp32_img_s": _num(t_ips, 1), "ratio": _num(o_ips / t_ips, 2),
        "ours_gflops": round(o_ips * flops_per_image / 1e9, 1), "bf16_gemm_peak_gflops": _num(peak_bf16 / 1e9, 1),
        "fraction_of_bf16_peak": _num(o_ips * flops_per_image / peak_bf16, 3),
        "fraction_of_own_peak": _num(o_ips * flops_per_image / own_peak, 3),
        "ours_peak_rss_gib": round(peak_rss, 2),
        "torchvision_fraction_of_fp32_peak": _num(t_ips * flops_per_image / peak_fp32, 3),
        "fp32_gemm_peak_gflops": round(peak_fp32 / 1e9, 1)}, indent=2))


if __name__ == "__main__":
    main()
