"""Imported by every Python process that `benchmarks/avx2/run.sh` starts (vLLM's spawned workers included): hides
AVX-512 and AMX from the code that picks kernels by asking torch, so vLLM loads its AVX2 build (vllm._C_AVX2).

torch's own kernels are held to AVX2 by the environment (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA,
MKL_ENABLE_INSTRUCTIONS) that run.sh sets; this file covers the rest, which reads the CPU through torch.cpu.
"""

import os

torch_cpu = None
if os.environ.get("SELFALIGN_EMULATE_AVX2") == "1":
    try:  # a Python without torch (the one that creates a venv, pip before torch is installed) has nothing to hide
        import torch.cpu as torch_cpu
    except ImportError:
        pass

if torch_cpu is not None:
    for probe in ("_is_avx512_supported", "_is_avx512_bf16_supported", "_is_avx512_vnni_supported",
                  "_is_amx_tile_supported", "_is_amx_fp16_supported"):
        if hasattr(torch_cpu, probe):
            setattr(torch_cpu, probe, lambda: False)
