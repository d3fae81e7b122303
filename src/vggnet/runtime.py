"""Where and how the numbers are computed: device, precision and autocast, bf16 support,
threads, the allocator setting, and :func:`machine`, the facts a run's speed depends on.

Every command and the trainer read these from here, so a device or precision rule has
one owner (section 3.3 of the paper trained on GPUs; this project runs on any CPU).
"""

from __future__ import annotations

import ctypes
import platform

import torch

from .errors import VggnetError

DEVICES = "auto, cpu, cuda, cuda:N or mps"


def bf16_supported() -> bool:
    """True where the CPU has native bf16 matrix instructions (AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_device(name: str | None = "auto") -> torch.device:
    """``auto``: the first CUDA GPU, else Apple's MPS, else the CPU; ``cpu``, ``cuda``,
    ``cuda:N`` or ``mps`` as asked, with a one-line error where the machine has none."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if mps_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise VggnetError(f"--device {name!r} is not a device; valid: {DEVICES}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise VggnetError(f"--device {name}: this machine has no CUDA GPU that torch {torch.__version__} can use "
                              f"(built for CUDA {torch.version.cuda or 'none'}); use --device cpu or auto")
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise VggnetError(f"--device {name}: there are {torch.cuda.device_count()} CUDA GPU(s), numbered from 0")
        return torch.device("cuda", index)
    if device.type == "mps" and not mps_available():
        raise VggnetError("--device mps: Apple's Metal (MPS) is not available here; use --device cpu or auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise VggnetError(f"--device {name!r} is not supported; valid: {DEVICES}")
    return device


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def device_model(device: torch.device | str) -> str:
    """What the device is: the GPU's name, or the CPU's model and kernel level."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return f"{cpu_model()}, {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads"


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def resolve_precision(requested: str, device: torch.device | str) -> str:
    """What runs for a requested precision on a device: on CUDA, bf16 where the GPU has it
    (compute capability 8.0 and up), else fp16 (with a gradient scaler in training); on the
    CPU, bf16 only with native bf16 (else fp32); fp32 always as asked."""
    # imported here: at the top, it moved glibc's heap enough to hide the page faults test_train measures
    from .configs import PRECISIONS
    device = torch.device(device)
    if requested not in PRECISIONS:
        raise VggnetError(f"unknown precision {requested!r}; valid: {', '.join(PRECISIONS)}")
    if requested == "fp32":
        return "fp32"
    if device.type == "cuda":
        return "bf16" if requested == "bf16" and torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "mps":
        return "fp16"
    return "bf16" if bf16_supported() else "fp32"


def autocast(precision: str, device: torch.device | str = "cpu") -> torch.autocast:
    """Autocast for a precision that :func:`resolve_precision` says runs on ``device`` (bf16
    on a CPU without native bf16 stays off: emulated bf16 is ~8x slower than fp32, BENCHMARKS 17)."""
    kind = torch.device(device).type
    if kind == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16" and bf16_supported())
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(kind, dtype=dtype, enabled=precision in ("bf16", "fp16"))


def use_device(device: torch.device) -> None:
    """Per-device speed settings: cuDNN picks the fastest conv algorithms for each shape."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True


def available_memory(device: torch.device | str) -> int | None:
    """Bytes a run may still allocate on ``device``: free GPU memory, or the kernel's
    MemAvailable on Linux; None where it cannot be told (then nothing is checked)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as fh:
            fields = dict(line.split(":", 1) for line in fh if ":" in line)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def is_out_of_memory(exc: BaseException) -> bool:
    """A failed allocation: CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and ("can't allocate memory" in str(exc) or "out of memory" in str(exc)))


def set_threads(threads: int) -> None:
    """torch's intra-op threads; 0 keeps torch's default (one per core)."""
    if threads:
        torch.set_num_threads(threads)


def machine(device: torch.device | str = "cpu") -> dict:
    """What the numbers of a run depend on: the device and its model, CPU, torch's kernel
    level, threads, and whether the CPU has native bf16 (without it, bf16 autocast is off on
    the CPU and training runs in fp32)."""
    return {"device": str(device), "device_model": device_model(device), "arch": platform.machine(),
            "cpu": cpu_model(), "torch": torch.__version__, "cuda": torch.version.cuda,
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
