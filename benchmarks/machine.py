"""What every benchmark prints beside its timings: the CPU's AVX-512/AMX flags, and whether `benchmarks/avx2/run.sh`
held the kernels to AVX2 (an estimate of an AVX2-only machine, not one)."""

from __future__ import annotations

import os
import re
from pathlib import Path


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    found = sorted(set(re.findall(r"\b(avx512[a-z_0-9]*|amx[a-z_0-9]*)\b", text)))
    flags = ("AVX2" if " avx2" in text else "no AVX2") + (", " + " ".join(found) if found else ", no AVX512/AMX")
    if os.environ.get("SELFALIGN_EMULATE_AVX2") == "1":
        return f"kernels held to AVX2 by benchmarks/avx2/run.sh (the CPU has: {flags})"
    return flags
