"""The engine-layout options every command that generates takes (`generate`, `eval ...`): one definition here, so
each command spells them the same way. They fill an `EngineOptions` (selfalign/generation/options.py)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from selfalign.generation.options import parse_engine_kwargs

TensorParallel = Annotated[Optional[int], typer.Option(
    help="vLLM: GPUs one engine's weights are split over  [default: 1]", rich_help_panel="Engine layout")]
DataParallel = Annotated[Optional[int], typer.Option(
    help="engine replicas (each its own GPUs, on CPU its share of the cores); prompts are split across them  "
         "[default: 1]", rich_help_panel="Engine layout")]
GpuMemory = Annotated[Optional[float], typer.Option(
    help="vLLM: share of each GPU's memory  [default: 0.85]", rich_help_panel="Engine layout")]
MaxModelLen = Annotated[Optional[int], typer.Option(
    help="vLLM: context length  [default: 2048]", rich_help_panel="Engine layout")]
Dtype = Annotated[Optional[str], typer.Option(
    help="auto | bfloat16 | float16 | float32  [default: auto]", rich_help_panel="Engine layout")]
PrefixCaching = Annotated[Optional[bool], typer.Option(
    "--enable-prefix-caching/--no-prefix-caching", help="vLLM: reuse shared prompt prefixes' KV cache  "
    "[default: vLLM's]", rich_help_panel="Engine layout", show_default=False)]
EngineKwargs = Annotated[Optional[str], typer.Option(
    help="JSON object of other engine arguments (vLLM EngineArgs fields), checked by name before a model loads  "
         "[default: none]",
    rich_help_panel="Engine layout")]
Backend = Annotated[Optional[str], typer.Option(
    help="local | ray: replicas as local processes or as Ray actors  [default: local]",
    rich_help_panel="Engine layout")]
RayAddress = Annotated[Optional[str], typer.Option(
    help="--backend ray: the cluster (auto, ray://host:10001)  [default: a local one]",
    rich_help_panel="Engine layout")]


def engine_overrides(tensor_parallel_size, data_parallel_size, gpu_memory_utilization, max_model_len, dtype,
                     enable_prefix_caching, engine_kwargs, backend, ray_address) -> dict:
    """The options as `load_config` overrides (None: not given)."""
    return {"tensor_parallel_size": tensor_parallel_size, "data_parallel_size": data_parallel_size,
            "gpu_memory_utilization": gpu_memory_utilization, "max_model_len": max_model_len, "dtype": dtype,
            "enable_prefix_caching": enable_prefix_caching, "engine_kwargs": parse_engine_kwargs(engine_kwargs),
            "backend": backend, "ray_address": ray_address}
