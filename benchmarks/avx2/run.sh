#!/usr/bin/env bash
# Run a command with the kernels of an AVX2-only x86 CPU (no AVX-512, no AMX) on a machine that has more, to
# estimate the time on the ordinary 2-core AVX2 machine the time budgets are set for. Same cores and clock, so it
# is an estimate, not a measurement on such a machine: the README says which numbers came from it.
#   benchmarks/avx2/run.sh .venv/bin/selfalign run recipes/default.yaml --out runs/default-avx2
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export SELFALIGN_EMULATE_AVX2=1
export ATEN_CPU_CAPABILITY=avx2            # torch's vectorized ATen kernels
export ONEDNN_MAX_CPU_ISA=AVX2             # oneDNN (convolutions, some matmuls)
export MKL_ENABLE_INSTRUCTIONS=AVX2        # MKL's GEMM (fp32 linear layers on CPU)
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"   # sitecustomize.py: vLLM's kernel choice
# selfalign's `auto` precision reads the CPU flags: without AVX-512 and AMX it decides fp32, as an AVX2 machine does
if [ -z "${SELFALIGN_CPU_FLAGS+set}" ]; then
  SELFALIGN_CPU_FLAGS="$(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2 | tr ' ' '\n' | grep -v '^avx512\|^amx' | tr '\n' ' ')"
  export SELFALIGN_CPU_FLAGS
fi
exec "$@"
