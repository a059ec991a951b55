"""The runtime every layer stands on: which device, how many CPU threads, which precision, whether
SPDNet is compiled, and how much memory a run holds. Nothing here knows about models or data.

One code path for every precision: ``autocast(device, precision)`` is a no-op context in fp32 and
bf16 autocast otherwise, so there is no second AMP loop to keep in sync.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import time

import torch

from utils.runtime.errors import SettingError


def choose_device(name: str) -> torch.device:
    """``"auto"`` picks CUDA when available; anything else is taken as a torch device string."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def set_cpu_threads(threads: int | None) -> None:
    """CPU_THREADS: PyTorch's intra-op threads for this process (None: leave its default, one per
    core). CPU kernels split their sums by thread, so a CPU run repeats bit for bit only at the
    same count (and the same CPU kernels)."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise SettingError(f"CPU_THREADS must be a positive integer or None, got {threads!r}")
    torch.set_num_threads(threads)


def enable_fast_cuda_math(device: torch.device) -> None:
    """TF32 matmuls and convolutions plus cudnn autotuning on CUDA (fixed-size training inputs)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


COMPILE_MODES = ("off", "default", "max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead")


def check_compile(setting: str) -> str:
    """COMPILE, refused in one line unless it is "off" or one of torch.compile's modes."""
    if setting not in COMPILE_MODES:
        raise SettingError(f"COMPILE must be one of {COMPILE_MODES}, got {setting!r}")
    return setting


def compiler_problem(device: torch.device) -> str | None:
    """Why torch.compile (inductor) cannot run on ``device`` here, or None: it needs a C++ compiler
    for CPU kernels, Triton and a card of compute capability 7.0 or newer for CUDA kernels."""
    if device.type == "cpu":
        compilers = [os.environ.get("CXX"), "g++", "c++", "clang++"]
        return (None if any(name and shutil.which(name) for name in compilers)
                else "no C++ compiler (g++, clang++ or $CXX) found")
    if device.type == "cuda":
        try:
            import triton  # noqa: F401  (here, not at the top: importing it is the test whether it is installed; CPU runs go without it)
        except ImportError:
            return "Triton is not installed"
        major, minor = torch.cuda.get_device_capability(device)
        return None if major >= 7 else f"Triton needs compute capability 7.0 or newer, this card has {major}.{minor}"
    return f"inductor does not compile for {device.type}"


def compile_spdnet(spdnet: torch.nn.Module, mode: str, device: torch.device) -> str:
    """Compile SPDNet in place with torch.compile (``nn.Module.compile``: its state_dict keys stay
    those of the plain module, so saved files are the same) unless ``mode`` is "off" or the compiler
    cannot run here, which is said in one line. Checkpointed regions are compiled with the rest.
    Returns the mode that runs ("off" when eager)."""
    if mode == "off":
        return "off"
    problem = compiler_problem(device)
    if problem is not None:
        print(f"COMPILE={mode!r}: {problem}; SPDNet runs eager", flush=True)
        return "off"
    spdnet.compile(mode=None if mode == "default" else mode, dynamic=False)
    return mode


def warm_up_compiled(model: torch.nn.Module, mode: str, shape: tuple[int, ...], precision: str,
                     device: torch.device) -> float | None:
    """Compile SPDNet's forward and backward now, on zeros of ``shape`` (B, 3, H, W) under
    ``precision``, so compilation is timed apart from training and a compiler failure falls back to
    eager in one line before the first step. Returns the seconds it took (None when eager)."""
    if mode == "off":
        return None
    started = time.perf_counter()
    images = torch.zeros(shape, device=device)
    try:
        with autocast(device, precision):
            derained = model.derain(images)
        derained.float().mean().backward()
    except Exception as error:  # the compiler's failures have many types; eager still works
        model.spdnet._compiled_call_impl = None  # undo nn.Module.compile
        cause = error
        while getattr(cause, "inner_exception", None) or cause.__cause__:  # the compiler's error, not dynamo's wrapper
            cause = getattr(cause, "inner_exception", None) or cause.__cause__
        reason = (str(cause).strip().splitlines() or [""])[0][:200]
        print(f"COMPILE={mode!r}: torch.compile failed ({type(cause).__name__}: {reason}); SPDNet runs eager",
              flush=True)
        return None
    finally:
        model.spdnet.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


PRECISIONS = ("fp32", "bf16", "auto")


def check_precision(precision: str, fp16: bool = False) -> None:
    """Refuse fp16 with the reason, and unknown precisions."""
    if fp16 or precision == "fp16":
        raise SettingError(
            "FP16 is refused: SPDNet works on 0-255 inputs with unnormalised activations that overflow "
            "fp16's largest value (65,504) and give NaN losses and gradients. Use PRECISION='bf16' "
            "(fp32's exponent range at half the bytes) or 'fp32'."
        )
    if precision not in PRECISIONS:
        raise SettingError(f"PRECISION must be one of {PRECISIONS}, got {precision!r}")


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` computes bf16 natively, and why: CUDA cards of compute capability 8.0 or
    newer (Ampere, Ada, Hopper, Blackwell), CPUs with AVX512-BF16 or AMX (oneDNN's check). Elsewhere
    bf16 is emulated, slower than fp32."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        name = torch.cuda.get_device_name(device)
        return major >= 8, f"{name}, compute capability {major}.{minor}"
    if device.type == "cpu":
        try:
            supported = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            supported = False
        return supported, "CPU " + ("with" if supported else "without") + " AVX512-BF16 / AMX"
    return False, f"{device.type} device"


def resolve_precision(precision: str, device: torch.device) -> tuple[str, str]:
    """PRECISION as it runs on ``device``: "auto" becomes "bf16" where bf16 is native, else "fp32".
    Returns (precision, the reason, for the start-up line)."""
    check_precision(precision)
    if precision != "auto":
        return precision, "as set"
    native, reason = native_bf16(device)
    return ("bf16" if native else "fp32"), f"auto: {reason}"


def autocast(device: torch.device, precision: str):
    """bf16 autocast for ``precision == 'bf16'``, nothing for fp32 ("auto" is resolved first). Weights
    stay fp32 either way."""
    if resolve_precision(precision, device)[0] == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_in_use_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux -> GB


