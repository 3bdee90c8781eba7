"""`selfalign eval BENCH`: GSM8K, MT-Bench and AlpacaEval with their reference harnesses' conventions."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from selfalign.cli_engine import (Backend, DataParallel, Dtype, EngineKwargs, GpuMemory, MaxModelLen, PrefixCaching,
                                  RayAddress, TensorParallel, engine_overrides)
from selfalign.cli_utils import console, fail as _fail, load_config

eval_app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown",
                       help="Benchmarks: gsm8k, mt-bench, alpaca-eval, held-out accuracy; "
                       "compare two runs.")


SELECT_HELP = "mbr | self-verify: answer with one of --n samples, chosen by MBR consensus or by the model's own rating"
UTILITY_HELP = "--select mbr: chrf | rouge-l | bleu | embedding | llm-judge  [default: chrf]"


def _selection(model: str, select: Optional[str], utility: Optional[str], n: Optional[int]):
    """(SelectConfig, select function) for `--select`, or None."""
    if select is None:
        if utility is not None or n is not None:
            _fail("--utility and --n choose how --select picks an answer: give --select too")
        return None
    from selfalign.selection import SelectConfig, make_selector

    config = load_config(SelectConfig, None, {"method": select, "utility": utility, "n": n})
    return config, make_selector(config, model)[0]


def _engine_options(overrides: dict):
    from selfalign.generation.options import EngineOptions

    return load_config(EngineOptions, None, overrides)


def _eval(benchmark: str, model: str, out: Path, data: Optional[Path], config: Optional[Path], limit: Optional[int],
          engine: str, judge: Optional[str] = None, judge_base_url: Optional[str] = None,
          judge_api_key_env: str = "OPENAI_API_KEY", selection=None, layout: dict | None = None) -> None:
    from selfalign.evaluation import run as runners
    from selfalign.evaluation.common import load_protocol
    from selfalign.generation import get_engine
    from selfalign.models import ModelNotFoundError

    try:
        protocol = load_protocol(benchmark, config)
        if benchmark == "mt_bench" and data is None:
            _fail("mt-bench needs --data DIR (FastChat's llm_judge/data/mt_bench layout)")
        out.mkdir(parents=True, exist_ok=True)
        gen = get_engine(engine, model, options=_engine_options(layout or {}))
        if benchmark == "gsm8k":
            result = runners.run_gsm8k(gen, model, out, protocol, data, limit, selection)
        else:
            backend, local = runners.make_judge(judge or model, judge_base_url, judge_api_key_env,
                                                out / "judge_cache.jsonl",
                                                protocol.get("judge_max_new_tokens", 2048))
            run = runners.run_mt_bench if benchmark == "mt_bench" else runners.run_alpaca_eval
            result = run(gen, model, out, protocol, data, limit, backend, local, selection)
    except (FileNotFoundError, ModelNotFoundError, ValueError) as e:
        _fail(str(e))
    if result.get("judge_note"):
        console.print(result["judge_note"], style="bold yellow")
    Console().print_json(data=result["numbers"])
    console.print(f"results: {out / 'results.json'}, {out / 'results.md'}")


@eval_app.command("gsm8k")
def eval_gsm8k(model: str = typer.Option("default"), out: Path = typer.Option(...),
               data: Optional[Path] = typer.Option(None, help="local JSONL {question, answer} (default: the hub)"),
               config: Optional[Path] = typer.Option(None, help="protocol YAML (default: evals/gsm8k.yaml)"),
               limit: Optional[int] = None, engine: str = "auto",
               select: Optional[str] = typer.Option(None, help=SELECT_HELP),
               utility: Optional[str] = typer.Option(None, help=UTILITY_HELP),
               n: Optional[int] = typer.Option(None, help="--select: samples per answer  [default: 4]"),
               tensor_parallel_size: TensorParallel = None, data_parallel_size: DataParallel = None,
               gpu_memory_utilization: GpuMemory = None, max_model_len: MaxModelLen = None, dtype: Dtype = None,
               enable_prefix_caching: PrefixCaching = None, engine_kwargs: EngineKwargs = None,
               backend: Backend = None, ray_address: RayAddress = None) -> None:
    """GSM8K: strict-match and flexible-extract accuracy (lm-evaluation-harness conventions)."""
    _eval("gsm8k", model, out, data, config, limit, engine, selection=_selection(model, select, utility, n),
          layout=engine_overrides(tensor_parallel_size, data_parallel_size, gpu_memory_utilization, max_model_len,
                                 dtype, enable_prefix_caching, engine_kwargs, backend, ray_address))


@eval_app.command("mt-bench")
def eval_mt_bench(model: str = typer.Option("default"), out: Path = typer.Option(...),
                  data: Optional[Path] = typer.Option(None, help="FastChat-layout folder"),
                  judge: Optional[str] = typer.Option(None, help="judge model (local) or endpoint model name"),
                  judge_base_url: Optional[str] = None, judge_api_key_env: str = "OPENAI_API_KEY",
                  config: Optional[Path] = None, limit: Optional[int] = None, engine: str = "auto",
                  select: Optional[str] = typer.Option(None, help=SELECT_HELP),
                  utility: Optional[str] = typer.Option(None, help=UTILITY_HELP),
                  n: Optional[int] = typer.Option(None, help="--select: samples per answer  [default: 4]"),
                  tensor_parallel_size: TensorParallel = None, data_parallel_size: DataParallel = None,
                  gpu_memory_utilization: GpuMemory = None, max_model_len: MaxModelLen = None, dtype: Dtype = None,
                  enable_prefix_caching: PrefixCaching = None, engine_kwargs: EngineKwargs = None,
                  backend: Backend = None, ray_address: RayAddress = None) -> None:
    """MT-Bench: two-turn answers, single-answer grading 1-10 (FastChat conventions and file formats)."""
    _eval("mt_bench", model, out, data, config, limit, engine, judge, judge_base_url, judge_api_key_env,
          _selection(model, select, utility, n),
          layout=engine_overrides(tensor_parallel_size, data_parallel_size, gpu_memory_utilization, max_model_len,
                                 dtype, enable_prefix_caching, engine_kwargs, backend, ray_address))


@eval_app.command("alpaca-eval")
def eval_alpaca(model: str = typer.Option("default"), out: Path = typer.Option(...),
                data: Optional[Path] = typer.Option(None, help="alpaca_eval folder (default: the hub)"),
                judge: Optional[str] = typer.Option(None, help="judge model (local) or endpoint model name"),
                judge_base_url: Optional[str] = None, judge_api_key_env: str = "OPENAI_API_KEY",
                config: Optional[Path] = None, limit: Optional[int] = None, engine: str = "auto",
                select: Optional[str] = typer.Option(None, help=SELECT_HELP),
                utility: Optional[str] = typer.Option(None, help=UTILITY_HELP),
                n: Optional[int] = typer.Option(None, help="--select: samples per answer  [default: 4]"),
                tensor_parallel_size: TensorParallel = None, data_parallel_size: DataParallel = None,
                gpu_memory_utilization: GpuMemory = None, max_model_len: MaxModelLen = None, dtype: Dtype = None,
                enable_prefix_caching: PrefixCaching = None, engine_kwargs: EngineKwargs = None,
                backend: Backend = None, ray_address: RayAddress = None) -> None:
    """AlpacaEval 2.0: win rate against gpt4_1106_preview with the weighted (log-prob) annotator."""
    _eval("alpaca_eval", model, out, data, config, limit, engine, judge, judge_base_url, judge_api_key_env,
          _selection(model, select, utility, n),
          layout=engine_overrides(tensor_parallel_size, data_parallel_size, gpu_memory_utilization, max_model_len,
                                 dtype, enable_prefix_caching, engine_kwargs, backend, ray_address))


@eval_app.command("heldout")
def eval_heldout(model: str = typer.Option("default", help="the policy to evaluate"),
                 out: Path = typer.Option(..., help="eval.json, written atomically"),
                 config: Optional[Path] = typer.Option(None, help="YAML/JSON with held-out fields (a recipe's `eval:`)"),
                 data: Optional[str] = typer.Option(None, help="JSONL of {prompt, answer}"),
                 limit: Optional[int] = None, k: Optional[int] = typer.Option(None, help="samples for majority@k"),
                 select: Optional[str] = typer.Option(None, help="mbr | self-verify: also the accuracy of one of the "
                                                      "k samples chosen this way"),
                 utility: Optional[str] = typer.Option(None, help="--select mbr: chrf | rouge-l | bleu | embedding | "
                                                       "llm-judge  [default: chrf]"),
                 engine: str = "auto", seed: int = 0,
                 tensor_parallel_size: TensorParallel = None, data_parallel_size: DataParallel = None,
                 gpu_memory_utilization: GpuMemory = None, max_model_len: MaxModelLen = None, dtype: Dtype = None,
                 enable_prefix_caching: PrefixCaching = None, engine_kwargs: EngineKwargs = None,
                 backend: Backend = None, ray_address: RayAddress = None) -> None:
    """Held-out answer accuracy: greedy, sampled, majority@k and the generation-verification gap (the loop's
    evaluation stage)."""
    from selfalign.evaluation.heldout import HeldoutConfig, evaluate_heldout
    from selfalign.generation import get_engine
    from selfalign.io import read_jsonl, write_json
    from selfalign.records import PromptRecord

    chosen = {k: v for k, v in {"method": select, "utility": utility}.items() if v is not None}
    cfg = load_config(HeldoutConfig, config, {"data": data, "limit": limit, "k": k,
                                              "select": chosen or None})
    prompts = read_jsonl(cfg.data, PromptRecord)
    layout = _engine_options(engine_overrides(tensor_parallel_size, data_parallel_size, gpu_memory_utilization,
                                               max_model_len, dtype, enable_prefix_caching, engine_kwargs, backend,
                                               ray_address))
    gen = get_engine(engine, model, seed=seed, options=layout)
    result = evaluate_heldout(gen, prompts, cfg, seed=seed, policy=model)
    write_json(out, {"model": model, "engine": gen.name, **result})
    console.print({k: v for k, v in result.items() if not isinstance(v, list)})


@eval_app.command("compare")
def eval_compare(a: Path = typer.Argument(...), b: Path = typer.Argument(...)) -> None:
    """Two eval runs side by side."""
    from selfalign.evaluation.common import compare

    table = Table(title="selfalign eval compare")
    for column in ("metric", str(a), str(b)):
        table.add_column(column)
    for row in compare(a, b):
        table.add_row(*(Text(str(cell)) for cell in row))
    Console(width=150).print(table)

