"""benchmarks/avx2/run.sh, run for real: the command it starts sees an AVX2 machine's flags (selfalign's `auto`
decides fp32 there), and torch's probes, which vLLM asks to pick its kernels, say no AVX-512."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

RUN_SH = Path(__file__).resolve().parents[1] / "benchmarks" / "avx2" / "run.sh"


def cpuinfo_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


pytestmark = pytest.mark.skipif("avx2" not in cpuinfo_flags(), reason="needs an x86 CPU with AVX2")


def run_under(code: str, **env) -> str:
    environment = {k: v for k, v in os.environ.items() if k != "SELFALIGN_CPU_FLAGS"}  # conftest sets it
    environment.update(env)
    return subprocess.run([str(RUN_SH), sys.executable, "-c", code], env=environment, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_the_flags_are_the_cpus_without_avx512_and_amx():
    seen = set(run_under("import os; print(os.environ['SELFALIGN_CPU_FLAGS'])").split())
    expected = {flag for flag in cpuinfo_flags() if not flag.startswith(("avx512", "amx"))}
    assert seen == expected


def test_flags_set_by_the_caller_are_kept():
    flags = run_under("import os; print(os.environ['SELFALIGN_CPU_FLAGS'])", SELFALIGN_CPU_FLAGS="avx2 fma")
    assert flags == "avx2 fma"


def test_auto_decides_fp32_and_torch_reports_no_avx512():
    out = run_under("import torch; from selfalign.precision import sampling_precision, training_precision; "
                    "print(sampling_precision('auto', on_gpu=False).dtype, "
                    "training_precision(None, on_gpu=False).dtype, torch.cpu._is_avx512_supported(), "
                    "torch.cpu._is_avx512_bf16_supported(), torch.backends.cpu.get_cpu_capability())")
    assert out.split() == ["float32", "float32", "False", "False", "AVX2"]
