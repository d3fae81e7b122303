"""The benchmark matrix of issue 7 as one markdown table: for each row, benchmarks/throughput.py
in a fresh process (ours against torchvision's fp32 eager loop, alternated in that run).

    python benchmarks/suite.py                                  # the default rows below
    python benchmarks/suite.py --configs A,B,C,D,E --sizes 32 --modes train --precisions bf16
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def row(config: str, size: int, mode: str, precision: str, compiled: bool, steps: int) -> dict:
    batch = 128 if size < 224 else 16      # CIFAR-size batches at 32 px; 16 at 224 (seconds per step)
    cmd = [sys.executable, str(HERE / "throughput.py"), "--config", config, "--batch-norm", "--size", str(size),
           "--batch", str(batch), "--mode", mode, "--precision", precision, "--steps", str(steps), "--repeats", "3",
           "--classes", "10" if size < 224 else "1000"]
    if mode == "infer":
        cmd.remove("--batch-norm")      # the paper's nets; BN nets are folded to the same graph at inference
    if compiled:
        cmd.append("--compile")
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="A,B,C,D,E")
    p.add_argument("--sizes", default="32,224")
    p.add_argument("--modes", default="train,infer")
    p.add_argument("--precisions", default="bf16")
    p.add_argument("--compiled", default="no", help="no, yes or no,yes")
    p.add_argument("--steps", type=int, default=3, help="timed steps per repeat at 32 px")
    p.add_argument("--steps-224", type=int, default=1, help="timed steps per repeat at 224 px (seconds each)")
    args = p.parse_args()
    print("| config | size | mode | precision | compiled | batch | ours img/s | torchvision fp32 img/s | ratio "
          "| ours GFLOPS | of the GEMM peak (own dtype) | GEMM peak bf16 / fp32 GFLOPS | ours peak RSS GiB |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for config, size, mode, precision, compiled in itertools.product(
            args.configs.split(","), map(int, args.sizes.split(",")), args.modes.split(","),
            args.precisions.split(","), [c == "yes" for c in args.compiled.split(",")]):
        if mode == "train" and precision == "int8":
            continue
        try:
            r = row(config, size, mode, precision, compiled, args.steps if size < 224 else args.steps_224)
        except subprocess.CalledProcessError as exc:   # one failed row (say, a compiler error) is reported, not fatal
            last = (exc.stderr or "").strip().splitlines()[-1:] or ["no output"]
            print(f"| {config} | {size} | {mode} | {precision} | {'yes' if compiled else 'no'} | failed: {last[0][:120]} |",
                  flush=True)
            continue
        print(f"| {config}{'-BN' if mode == 'train' else ''} | {size} | {mode} | {precision} | {'yes' if compiled else 'no'} "
              f"| {r['batch']} | {r['ours_img_s']} | {r['torchvision_fp32_img_s'] or '—'} | {r['ratio'] or '—'} "
              f"| {r['ours_gflops']} | {r['fraction_of_own_peak']:.0%} "
              f"| {r['bf16_gemm_peak_gflops']:.0f} / {r['fp32_gemm_peak_gflops']:.0f} | {r['ours_peak_rss_gib']} |",
              flush=True)


if __name__ == "__main__":
    main()
