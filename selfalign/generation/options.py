"""How an engine is laid out on the hardware: tensor and data parallelism, memory, dtype, and any other vLLM argument.

One `EngineOptions` serves `selfalign generate`, `selfalign eval ...` and the loop's generate and evaluate stages (a
recipe's `generation:` step holds these fields). Unknown engine arguments are refused by name before any model loads:
vLLM's `LLM(**kwargs)` would pass an unknown key on to its `EngineArgs` and fail only after minutes of start-up, or
(before this module) the engine dropped it silently.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import os
from typing import Any, Literal

from pydantic import BaseModel, Field

from selfalign.dtypes import HELP as DTYPE_HELP, DtypeName

from selfalign.errors import ConfigError

# Set by first-class options or by the engine itself; in `engine_kwargs` they would be set twice.
_OWN_KEYS = {
    "model": "the model argument", "seed": "the seed option", "tokenizer": "the model's own tokenizer",
    "trust_remote_code": "trust_remote_code", "tensor_parallel_size": "tensor_parallel_size",
    "data_parallel_size": "data_parallel_size (selfalign's replicas)", "gpu_memory_utilization":
    "gpu_memory_utilization", "max_model_len": "max_model_len", "dtype": "dtype",
    "enable_prefix_caching": "enable_prefix_caching",
}


class EngineOptions(BaseModel):
    """Engine layout. `data_parallel_size` replicas each take `tensor_parallel_size` GPUs (on CPU: an equal share of
    the cores); prompts are split into contiguous shards, one per replica, and samples come back in prompt order."""

    tensor_parallel_size: int = Field(1, ge=1, description="vLLM: GPUs one engine's weights are split over")
    data_parallel_size: int = Field(1, ge=1, description="engine replicas, each on its own GPU group (CPU: core set), "
                                    "prompts sharded across them; replica r samples with seed + 1000003 r")
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0, description="vLLM: share of each GPU's memory")
    max_model_len: int = Field(2048, ge=16, description="vLLM: context length (prompt + new tokens)")
    dtype: DtypeName = Field("auto", description=f"{DTYPE_HELP}; auto: bfloat16 where the GPU has it, float32 on CPU")
    enable_prefix_caching: bool | None = Field(None, description="vLLM: reuse the KV cache of shared prompt prefixes "
                                               "(None: vLLM's default)")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="any other engine argument (vLLM: an "
                                          "`EngineArgs` field; hf: HFEngine's), checked by name before a model loads")
    backend: Literal["local", "ray"] = Field("local", description="local: replicas are processes of this machine; "
                                             "ray: Ray actors on a Ray cluster (pip install 'selfalign[ray]')")
    ray_address: str | None = Field(None, description="backend ray: the cluster (`auto`, `ray://host:10001`); None "
                                    "starts a local one")

    def engine_options(self) -> "EngineOptions":
        """Just these fields (a GenerationConfig is also an EngineOptions, with sampling fields beside)."""
        return EngineOptions(**{name: getattr(self, name) for name in EngineOptions.model_fields})


def parse_engine_kwargs(text: str | None, option: str = "--engine-kwargs") -> dict | None:
    """`--engine-kwargs '{"max_num_seqs": 64}'`: a JSON object, or a ConfigError saying what is wrong with it."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{option}: not JSON ({e.msg} at character {e.pos}): {text!r}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{option}: a JSON object is needed (like '{{\"max_num_seqs\": 64}}'), got {text!r}")
    return value


def vllm_engine_arg_names() -> set[str]:
    """Every argument vLLM's engine takes (`EngineArgs` fields); the list moves between vLLM releases, so it is read
    from the installed vLLM, not kept here."""
    from vllm.engine.arg_utils import EngineArgs

    return {field.name for field in dataclasses.fields(EngineArgs)}


def hf_engine_arg_names() -> set[str]:
    from selfalign.generation.hf_engine import HFEngine

    return set(inspect.signature(HFEngine.__init__).parameters) - {"self", "model", "model_obj", "tokenizer",
                                                                   "trust_remote_code"}


def check_engine_options(engine: str, options: EngineOptions, gpus: int | None = None) -> None:
    """Refuse what the engine cannot do, naming the option, before a model loads. `engine` is `hf` or `vllm` (after
    `auto` is resolved); `gpus` is the number visible (None: not on GPU)."""
    kwargs = options.engine_kwargs
    for key in kwargs:
        if key in _OWN_KEYS:
            raise ConfigError(f"engine_kwargs: {key!r} is set by {_OWN_KEYS[key]}, not in engine_kwargs")
    if engine == "hf":
        if options.tensor_parallel_size > 1:
            raise ConfigError("tensor_parallel_size > 1 needs the vllm engine (the hf engine runs one model per "
                              "replica; use data_parallel_size for more devices)")
        known = hf_engine_arg_names()
    else:
        known = vllm_engine_arg_names()
    unknown = sorted(set(kwargs) - known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        raise ConfigError(f"engine_kwargs: {', '.join(map(repr, unknown))} is not an argument of the {engine} engine"
                          + (" (vLLM's EngineArgs)" if engine == "vllm" else f" (it takes {', '.join(sorted(known))})")
                          + (f"; did you mean {close[0]!r}?" if close else ""))
    if gpus is not None and options.backend == "local":
        require_gpus(options, gpus)


def require_gpus(options: EngineOptions, visible: int) -> None:
    """tensor_parallel_size x data_parallel_size GPUs must be visible to this process."""
    needed = options.tensor_parallel_size * options.data_parallel_size
    if needed > visible:
        raise ConfigError(f"tensor_parallel_size {options.tensor_parallel_size} x data_parallel_size "
                          f"{options.data_parallel_size} needs {needed} GPUs; {visible} are visible")


def visible_gpus() -> list[str] | None:
    """The GPUs this process may use (their CUDA_VISIBLE_DEVICES names), or None on a machine without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [d.strip() for d in visible.split(",") if d.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]
