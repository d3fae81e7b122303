"""Where and how the numbers are computed: device, precision and autocast, bf16 support,
threads, the allocator setting, and :func:`machine`, the facts a run's speed depends on.

Every command and the trainer read these from here, so a device or precision rule has
one owner (section 3.3 of the paper trained on GPUs; this project runs on any CPU).
"""

from __future__ import annotations

import ctypes
import platform

import torch

PRECISIONS = ("bf16", "fp32")   # training autocast; inference adds int8 (vggnet.inference)


def bf16_supported() -> bool:
    """True where the CPU has native bf16 matrix instructions (AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast(precision: str, device: str = "cpu") -> torch.autocast:
    """bf16 autocast when asked for and the CPU runs it natively; fp32 otherwise (emulated
    bf16 is ~8x slower than fp32, BENCHMARKS 17)."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                          enabled=precision == "bf16" and bf16_supported())


def set_threads(threads: int) -> None:
    """torch's intra-op threads; 0 keeps torch's default (one per core)."""
    if threads:
        torch.set_num_threads(threads)


def machine() -> dict:
    """What the numbers of a run depend on: CPU, torch's kernel level, threads, and whether
    the CPU has native bf16 (without it, bf16 autocast is off and training runs in fp32)."""
    return {"arch": platform.machine(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "bf16_native": bf16_supported()}


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3   # glibc's mallopt parameters (malloc.h)


def reuse_freed_memory() -> bool:
    """Have glibc's malloc keep freed blocks of up to 32 MiB (its largest mmap threshold) for
    reuse instead of returning them to the OS: by default every training step page-faults
    its activations in afresh (VGG-16-BN, 32 px, batch 128: ~54,000 faults, ~13 % of the
    step; BENCHMARKS 16). Process-wide; False where the C library is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def fast_cpu_defaults() -> None:
    """Process-wide speed settings every command applies: denormals flushed to zero (they
    slow CPU kernels up to 100x) and freed buffers reused (BENCHMARKS 16)."""
    torch.set_flush_denormal(True)
    reuse_freed_memory()
