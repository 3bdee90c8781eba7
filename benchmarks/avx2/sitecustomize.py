"""Imported by every Python process that `benchmarks/avx2/run.sh` starts (vLLM's spawned workers included): hides
AVX-512 and AMX from the code that picks kernels by asking torch, so vLLM loads its AVX2 build (vllm._C_AVX2).

torch's own kernels are held to AVX2 by the environment (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA,
MKL_ENABLE_INSTRUCTIONS) that run.sh sets; this file covers the rest, which reads the CPU through torch.cpu.
"""

import os

if os.environ.get("SELFALIGN_EMULATE_AVX2") == "1":
    import torch.cpu

    for probe in ("_is_avx512_supported", "_is_avx512_bf16_supported", "_is_avx512_vnni_supported",
                  "_is_amx_tile_supported", "_is_amx_fp16_supported"):
        if hasattr(torch.cpu, probe):
            setattr(torch.cpu, probe, lambda: False)
