"""Which precision sampling and training run in, and why: one decision, read from the hardware.

On CPUs, bfloat16 is fast only where the instruction set computes it: `avx512_bf16` (AVX-512 BF16 dot products,
AMD Zen 4+, Intel Cooper Lake+) or `amx_bf16` (Intel AMX tiles, Sapphire Rapids+). There vLLM-CPU sampled 1.83x as
many tokens per second in bf16 as in fp32 (docs/results.md). Elsewhere (AVX2) bf16 is emulated and slower than fp32,
so `auto` stays fp32 there. On GPUs `auto` keeps what each engine did before: vLLM takes the checkpoint's dtype,
training autocasts to bf16 where the GPU supports it (TRL's `bf16` default).

`SELFALIGN_CPU_FLAGS` (space-separated) replaces /proc/cpuinfo's flags: the test suite sets it so that every machine
takes the same `auto` decisions, and a user can ask a native-bf16 machine what an AVX2 one would do.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # either one computes bf16 in hardware
FLAGS_ENV = "SELFALIGN_CPU_FLAGS"


@dataclass(frozen=True)
class Precision:
    """A dtype and the reason it was chosen, as `selfalign info`, `generate`, `run` and the manifest print it."""

    dtype: str  # torch's name: bfloat16, float16, float32, or auto (vLLM on GPU: the checkpoint's)
    reason: str

    def __str__(self) -> str:
        return f"{SHORT.get(self.dtype, self.dtype)}: {self.reason}"

    def as_dict(self) -> dict:
        return {"dtype": self.dtype, "reason": self.reason}


SHORT = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (`SELFALIGN_CPU_FLAGS` when set; an empty set where /proc/cpuinfo is missing)."""
    if os.environ.get(FLAGS_ENV) is not None:
        return set(os.environ[FLAGS_ENV].split())
    return _read_flags(cpuinfo)


@functools.lru_cache(maxsize=4)
def _read_flags(cpuinfo: str) -> set[str]:
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(flags: set[str] | str) -> str | None:
    """The flag that makes bf16 native on this CPU (`amx_bf16` first), or None."""
    flags = set(flags.split()) if isinstance(flags, str) else flags
    return next((flag for flag in NATIVE_BF16_FLAGS if flag in flags), None)


def _on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def sampling_precision(requested: str = "auto", on_gpu: bool | None = None,
                       flags: set[str] | str | None = None) -> Precision:
    """The dtype vLLM samples in. `auto`: bf16 on CPUs with native bf16, fp32 on other CPUs, the checkpoint's dtype
    on GPUs; anything else is taken as asked."""
    from selfalign.dtypes import canonical_dtype

    requested = canonical_dtype(requested)
    if requested != "auto":
        return Precision(requested, "asked for")
    if _on_gpu() if on_gpu is None else on_gpu:
        return Precision("auto", "GPU: the checkpoint's dtype")
    flag = native_bf16(cpu_flags() if flags is None else flags)
    if flag:
        return Precision("bfloat16", flag)
    return Precision("float32", f"no native bf16 on this CPU (none of {', '.join(NATIVE_BF16_FLAGS)})")


def training_precision(bf16: bool | None = None, on_gpu: bool | None = None,
                       flags: set[str] | str | None = None) -> Precision:
    """Whether training autocasts to bf16 (fp32 weights and optimizer either way). `None` (auto): on CPUs with
    native bf16 (measured about 1.7x per step), on GPUs that support bf16; fp32 elsewhere."""
    if bf16 is not None:
        return Precision("bfloat16" if bf16 else "float32", "asked for")
    if _on_gpu() if on_gpu is None else on_gpu:
        import torch

        if torch.cuda.is_bf16_supported():
            return Precision("bfloat16", "GPU supports bf16")
        return Precision("float32", "GPU without bf16")
    flag = native_bf16(cpu_flags() if flags is None else flags)
    if flag:
        return Precision("bfloat16", flag)
    return Precision("float32", f"no native bf16 on this CPU (none of {', '.join(NATIVE_BF16_FLAGS)})")
