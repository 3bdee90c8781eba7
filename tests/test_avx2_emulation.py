"""benchmarks/avx2/run.sh, run for real: the command it starts sees an AVX2 machine's flags (selfalign's `auto`
decides fp32 there), and torch's probes, which vLLM asks to pick its kernels, say no AVX-512."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from selfalign.precision import FLAGS_ENV, cpu_flags

RUN_SH = Path(__file__).resolve().parents[1] / "benchmarks" / "avx2" / "run.sh"


@pytest.fixture(autouse=True)
def the_cpus_own_flags(monkeypatch):
    """The suite sets an AVX2 machine's flags (conftest); these tests need the CPU's own, as run.sh reads them."""
    monkeypatch.delenv(FLAGS_ENV, raising=False)
    if "avx2" not in cpu_flags():
        pytest.skip("needs an x86 CPU with AVX2")


def run_under(code: str, **env) -> str:
    return subprocess.run([str(RUN_SH), sys.executable, "-c", code], env={**os.environ, **env}, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_the_flags_are_the_cpus_without_avx512_and_amx():
    seen = set(run_under("import os; print(os.environ['SELFALIGN_CPU_FLAGS'])").split())
    expected = {flag for flag in cpu_flags() if not flag.startswith(("avx512", "amx"))}
    assert seen == expected


def test_flags_set_by_the_caller_are_kept():
    flags = run_under("import os; print(os.environ['SELFALIGN_CPU_FLAGS'])", **{FLAGS_ENV: "avx2 fma"})
    assert flags == "avx2 fma"


def test_auto_decides_fp32_and_torch_reports_no_avx512():
    out = run_under("import torch; from selfalign.precision import sampling_precision, training_precision; "
                    "print(sampling_precision('auto', on_gpu=False).dtype, "
                    "training_precision(None, on_gpu=False).dtype, torch.cpu._is_avx512_supported(), "
                    "torch.cpu._is_avx512_bf16_supported(), torch.backends.cpu.get_cpu_capability())")
    assert out.split() == ["float32", "float32", "False", "False", "AVX2"]
