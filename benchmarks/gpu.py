"""Issue 21's GPU measurements in one process, alternated so every loop sees the same GPU:
vggnet's training step (the one `vggnet train` runs: channels-last, bf16 autocast where the
GPU has it, else fp16 with loss scaling) against torchvision's `vgg16_bn` (512-to-10 head)
in a plain fp32 loop and in a bf16 autocast + channels-last loop; and inference of VGG-16
at 224 px (vggnet's scoring net, BN folded, bf16 weights) against torchvision fp32 eager.

    python benchmarks/gpu.py --mode train --size 32 --batch 512
    python benchmarks/gpu.py --mode infer --size 224 --batch 64
    python benchmarks/gpu.py --device cpu --mode train --size 32 --batch 8 --steps 1 --repeats 1   # a smoke test

On the CPU the script runs (as a check of the script) but the figures it prints are not the
issue's: those are taken on an H100.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
import torchvision

from vggnet import build_model, runtime
from vggnet.inference import InferenceNet
from vggnet.training import forward_backward


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, steps: int, device: torch.device) -> float:
    synchronize(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return time.perf_counter() - t


def torchvision_vgg16_bn(size: int, classes: int) -> torch.nn.Module:
    model = torchvision.models.vgg16_bn(num_classes=classes)
    if size < 224:   # the common CIFAR adaptation: pool5 (1x1x512) into a 512-to-classes linear layer
        model.avgpool, model.classifier = torch.nn.AdaptiveAvgPool2d(1), torch.nn.Linear(512, classes)
    return model


def train_loops(args: argparse.Namespace, device: torch.device) -> dict:
    precision = runtime.resolve_precision("bf16", device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    ours = build_model("D", batch_norm=True, num_classes=10, head="cifar" if args.size < 224 else "paper",
                       dropout=0.0).to(device, memory_format=torch.channels_last).train()
    o_opt = torch.optim.SGD(ours.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    xc = x.contiguous(memory_format=torch.channels_last)
    net = torch.compile(ours) if args.compile else ours

    def step_ours() -> None:
        forward_backward(net, xc, y, 0, 0.1, precision, scaler=scaler)
        scaler.step(o_opt)
        scaler.update()

    plain = torchvision_vgg16_bn(args.size, 10).to(device).train()
    p_opt = torch.optim.SGD(plain.parameters(), lr=1e-3, momentum=0.9)

    def step_plain() -> None:
        p_opt.zero_grad()
        F.cross_entropy(plain(x), y).backward()
        p_opt.step()

    fast = torchvision_vgg16_bn(args.size, 10).to(device, memory_format=torch.channels_last).train()
    f_opt = torch.optim.SGD(fast.parameters(), lr=1e-3, momentum=0.9)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16

    def step_autocast() -> None:
        f_opt.zero_grad()
        with torch.autocast(device.type, dtype=dtype):
            loss = F.cross_entropy(fast(xc).float(), y)
        loss.backward()
        f_opt.step()

    return run({"vggnet": step_ours, "torchvision_fp32": step_plain, f"torchvision_{precision}_channels_last":
                step_autocast}, args, device) | {"precision": precision}


def infer_loops(args: argparse.Namespace, device: torch.device) -> dict:
    precision = runtime.resolve_precision("bf16", device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    ours = InferenceNet(build_model("D", num_classes=1000).eval(), precision, compile=args.compile, device=device)
    theirs = torchvision.models.vgg16(num_classes=1000).to(device).eval()
    xc = x.contiguous(memory_format=torch.channels_last)

    def step_theirs() -> None:
        with torch.inference_mode():
            theirs(x)

    return run({"vggnet": lambda: ours(xc), "torchvision_fp32": step_theirs}, args, device) | {"precision": precision}


def run(loops: dict, args: argparse.Namespace, device: torch.device) -> dict:
    for fn in loops.values():      # warm-up: cuDNN's algorithm search, compilation
        timed(fn, 3, device)
    times: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(args.repeats):
        for name, fn in loops.items():
            times[name].append(timed(fn, args.steps, device))
    ips = {name: args.batch * args.steps / statistics.median(t) for name, t in times.items()}
    ratios = {f"vggnet_over_{name}": round(ips["vggnet"] / v, 2) for name, v in ips.items() if name != "vggnet"}
    return {f"{name}_img_s": round(v, 1) for name, v in ips.items()} | ratios


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--mode", choices=["train", "infer"], default="train")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="torch.compile vggnet's model")
    args = p.parse_args()
    device = runtime.resolve_device(args.device)
    runtime.use_device(device)
    result = train_loops(args, device) if args.mode == "train" else infer_loops(args, device)
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), **runtime.machine(device), "mode": args.mode,
                      "size": args.size, "batch": args.batch, "compiled": args.compile, **result}, indent=2))


if __name__ == "__main__":
    main()
