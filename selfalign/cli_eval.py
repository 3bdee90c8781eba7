"""`selfalign eval BENCH`: GSM8K, MT-Bench and AlpacaEval with their reference harnesses' conventions."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from selfalign.cli_config import field_default, with_config_flags, with_default
from selfalign.cli_engine import with_engine_flags
from selfalign.evaluation.heldout import HeldoutConfig
from selfalign.judging.mbr import UTILITIES
from selfalign.selection import SelectConfig
from selfalign.cli_utils import console, fail, one_line
from selfalign.config_files import load_config

eval_app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown",
                       help="Benchmarks: gsm8k, mt-bench, alpaca-eval, held-out accuracy; "
                       "compare two runs.")


SELECT_HELP = with_default("mbr | self-verify: answer with one of --n samples, chosen by MBR consensus or by the "
                           "model's own rating (none: the greedy answer)", None)
LIMIT_HELP = with_default("only the first N items", "all")
CONFIG_HELP = with_default("protocol YAML", "evals/<benchmark>.yaml")
JUDGE_URL_HELP = with_default("the judge's OpenAI-compatible endpoint (.../v1); none: a local judge", None)
UTILITY_HELP = with_default(f"--select mbr: {' | '.join(UTILITIES)}", field_default(SelectConfig, "utility"))
N_HELP = with_default("--select: samples per answer", field_default(SelectConfig, "n"))


def _selection(model: str, select: Optional[str], utility: Optional[str], n: Optional[int]):
    """(SelectConfig, select function) for `--select`, or None."""
    if select is None:
        if utility is not None or n is not None:
            fail("--utility and --n choose how --select picks an answer: give --select too")
        return None
    from selfalign.selection import make_selector

    config = load_config(SelectConfig, None, {"method": select, "utility": utility, "n": n})
    return config, make_selector(config, model)[0]


def _engine_options(overrides: dict):
    from selfalign.generation.options import EngineOptions

    return load_config(EngineOptions, None, overrides)


def _eval(benchmark: str, model: str, out: Path, data: Optional[Path], config: Optional[Path], limit: Optional[int],
          engine: str, judge: Optional[str] = None, judge_base_url: Optional[str] = None,
          judge_api_key_env: str = "OPENAI_API_KEY", selection=None, layout: dict | None = None,
          overrides: dict | None = None) -> None:
    from selfalign.evaluation import run as runners
    from selfalign.evaluation.common import load_protocol
    from selfalign.generation import get_engine
    from selfalign.io import prepare_output
    from selfalign.models import ModelNotFoundError

    try:
        protocol = _override(load_protocol(benchmark, config), overrides or {})
        if benchmark == "mt_bench" and data is None:
            fail("mt-bench needs --data DIR (FastChat's llm_judge/data/mt_bench layout)")
        prepare_output(out, kind="folder")  # a file given as --out is one line of error, not a traceback
        out.mkdir(exist_ok=True)
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
        fail(str(e))
    if result.get("judge_note"):
        console.print(result["judge_note"], style="bold yellow")
    console.print(one_line(result["numbers"]), soft_wrap=True)
    console.print(f"wrote {out / 'results.json'}, {out / 'results.md'}"
                  + (f", {out / ('samples_' + benchmark + '.jsonl')}" if (out / f"samples_{benchmark}.jsonl").exists()
                     else ""), soft_wrap=True)


def _override(protocol: dict, overrides: dict) -> dict:
    """lm-eval's knobs on a protocol: --num-fewshot N (0: the zero-shot chat prompt; N: the first N of the 8
    chain-of-thought exemplars), --max-new-tokens, --batch-size (items generated and saved per step)."""
    shots, max_new_tokens, batch_size = (overrides.get(k) for k in ("num_fewshot", "max_new_tokens", "batch_size"))
    if shots is not None:
        exemplars = protocol.get("fewshot_exemplars") or []
        if shots > len(exemplars):
            fail(f"--num-fewshot {shots}: the protocol has {len(exemplars)} exemplars")
        protocol = {**protocol, "style": "fewshot_cot" if shots else "zeroshot_cot",
                    "fewshot_exemplars": exemplars[:shots]}
    if max_new_tokens is not None:
        protocol = {**protocol, "generation": {**protocol["generation"], "max_new_tokens": max_new_tokens}}
    if batch_size is not None:
        protocol = {**protocol, "batch_size": batch_size}
    return protocol


@eval_app.command("gsm8k")
@with_engine_flags()
def eval_gsm8k(model: str = typer.Option("default"), out: Path = typer.Option(...),
               data: Optional[Path] = typer.Option(None, help="local JSONL {question, answer} (default: the hub)"),
               config: Optional[Path] = typer.Option(None, help="protocol YAML (default: evals/gsm8k.yaml)"),
               limit: Optional[int] = typer.Option(None, help=LIMIT_HELP), engine: str = "auto",
               select: Optional[str] = typer.Option(None, help=SELECT_HELP),
               utility: Optional[str] = typer.Option(None, help=UTILITY_HELP),
               n: Optional[int] = typer.Option(None, help=N_HELP),
               layout: dict = None,
               num_fewshot: Optional[int] = typer.Option(None, min=0, max=8, help=with_default(
                   "0: zero-shot chat prompt; N: the first N chain-of-thought exemplars", "the protocol's")),
               max_new_tokens: Optional[int] = typer.Option(None, min=1, help=with_default("", "the protocol's")),
               batch_size: Optional[int] = typer.Option(None, min=1, help=with_default(
                   "items generated and saved per step", "the protocol's"))) -> None:
    """GSM8K: strict-match and flexible-extract accuracy with standard errors, and lm-eval's per-item samples file
    (lm-evaluation-harness conventions)."""
    _eval("gsm8k", model, out, data, config, limit, engine, selection=_selection(model, select, utility, n),
          layout=layout,
          overrides={"num_fewshot": num_fewshot, "max_new_tokens": max_new_tokens, "batch_size": batch_size})


def _judged_benchmark(name: str, benchmark: str, data_help: str, summary: str):
    """`selfalign eval mt-bench` and `alpaca-eval`: one command shape (answers from the model, a judge grades them)."""

    @eval_app.command(name, help=summary)
    @with_engine_flags()
    def command(model: str = typer.Option("default"), out: Path = typer.Option(...),
                data: Optional[Path] = typer.Option(None, help=data_help),
                judge: Optional[str] = typer.Option(None, help=with_default("judge model (local) or endpoint model "
                                                                            "name", "the evaluated model")),
                judge_base_url: Optional[str] = typer.Option(None, help=JUDGE_URL_HELP),
                judge_api_key_env: str = "OPENAI_API_KEY",
                config: Optional[Path] = typer.Option(None, help=CONFIG_HELP),
                limit: Optional[int] = typer.Option(None, help=LIMIT_HELP), engine: str = "auto",
                select: Optional[str] = typer.Option(None, help=SELECT_HELP),
                utility: Optional[str] = typer.Option(None, help=UTILITY_HELP),
                n: Optional[int] = typer.Option(None, help=N_HELP),
                layout: dict = None) -> None:
        _eval(benchmark, model, out, data, config, limit, engine, judge, judge_base_url, judge_api_key_env,
              _selection(model, select, utility, n), layout=layout)

    return command


eval_mt_bench = _judged_benchmark("mt-bench", "mt_bench", with_default("FastChat-layout folder (required)", None),
                                  "MT-Bench: two-turn answers, single-answer grading 1-10 (FastChat conventions and "
                                  "file formats).")
eval_alpaca = _judged_benchmark("alpaca-eval", "alpaca_eval", "alpaca_eval folder (default: the hub)",
                                "AlpacaEval 2.0: win rate against gpt4_1106_preview with the weighted (log-prob) "
                                "annotator.")


@eval_app.command("heldout")
@with_config_flags(HeldoutConfig, skip=("select",), section="eval")
@with_engine_flags()
def eval_heldout(model: str = typer.Option("default", help="the policy to evaluate"),
                 out: Path = typer.Option(..., help="eval.json, written atomically"),
                 config: Optional[Path] = None,
                 select: Optional[str] = typer.Option(None, help=with_default(
                     "mbr | self-verify: also the accuracy of one of the k samples chosen this way", None)),
                 utility: Optional[str] = typer.Option(None, help=UTILITY_HELP),
                 engine: str = "auto", seed: int = 0,
                 layout: dict = None, options: dict = None) -> None:
    """Held-out answer accuracy: greedy, sampled, majority@k and the generation-verification gap (the loop's
    evaluation stage)."""
    from selfalign.evaluation.heldout import evaluate_heldout
    from selfalign.generation import get_engine
    from selfalign.io import read_jsonl
    from selfalign.records import PromptRecord

    chosen = {k: v for k, v in {"method": select, "utility": utility}.items() if v is not None}
    cfg = load_config(HeldoutConfig, config, {**options, "select": chosen or None})
    prompts = read_jsonl(cfg.data, PromptRecord)
    answered = [p for p in prompts if p.answer is not None][:cfg.limit]
    with_answers, sampled = len(answered), len(answered[:cfg.sampled_limit])
    console.print(f"{with_answers} prompts: {with_answers} greedy generations"
                  + (f" + {sampled} x {cfg.k} sampled = {with_answers + sampled * cfg.k} generations (--k 0: greedy "
                     "only)" if cfg.k > 0 else ""), soft_wrap=True)
    layout = _engine_options(layout)
    gen = get_engine(engine, model, seed=seed, options=layout)
    result = evaluate_heldout(gen, prompts, cfg, seed=seed, policy=model)
    from selfalign.evaluation.files import write_heldout

    written, json_path, items_path = write_heldout(out, {"model": model, "engine": gen.name}, result)
    console.print(one_line({k: v for k, v in written.items() if isinstance(v, (int, float))}), soft_wrap=True)
    console.print(f"wrote {json_path}, {items_path}", soft_wrap=True)


@eval_app.command("compare")
def eval_compare(a: Path = typer.Argument(...), b: Path = typer.Argument(...)) -> None:
    """Two evaluations side by side (a folder or its results.json / eval.json, from any `eval` command or a run's
    iter_NN folder); per-item results of the same items are paired: the difference with a 95% bootstrap interval."""
    from selfalign.evaluation.files import compare

    table = Table(title="selfalign eval compare")
    for column in ("metric", str(a), str(b), "b - a"):
        table.add_column(column)
    for row in compare(a, b):
        table.add_row(*(Text(str(cell)) for cell in row))
    Console(width=150).print(table)

