"""The `selfalign` command line: one thin command per stage; the work lives in the stage modules."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from selfalign.cli_utils import console, fail as _fail, setup_logging as _setup_logging

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="log progress details")) -> None:
    _setup_logging(verbose)


@app.command()
def info() -> None:
    """Versions, engine availability and devices."""
    import torch

    from selfalign.generation import vllm_available
    from selfalign.models import cache_dir

    table = Table(title="selfalign info")
    table.add_column("what")
    table.add_column("value")
    from selfalign.versions import PACKAGES, package_versions

    installed = package_versions()
    for package in PACKAGES:
        table.add_row(package, installed.get(package, "-"))
    table.add_row("engine hf", "available")
    table.add_row("engine vllm", "available" if vllm_available() else "not installed")
    table.add_row("device", f"cuda x{torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu")
    table.add_row("cpu threads", str(torch.get_num_threads()))
    table.add_row("cache", str(cache_dir()))
    Console().print(table)


@app.command()
def generate(
    prompts: Path = typer.Option(..., help="JSONL, one {'prompt': str} or {'messages': [...]} per line"),
    out: Path = typer.Option(..., help="where the samples JSONL is written (atomically)"),
    model: str = typer.Option("default", help="hub id, local folder, .gguf file, or 'default'"),
    engine: str = typer.Option("auto", help="hf | vllm | auto"),
    n: int = typer.Option(4, help="samples per prompt"),
    temperature: float = 0.8,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    stop: list[str] = typer.Option([], help="stop string (repeatable)"),
    seed: int = 0,
    logprobs: bool = typer.Option(False, help="record each sample's summed log-prob"),
    limit: Optional[int] = typer.Option(None, help="only the first N prompts"),
    show: int = typer.Option(0, help="print a table of the first N samples"),
) -> None:
    """Sample N completions per prompt from a model."""
    from selfalign.generation import SamplingSettings, get_engine
    from selfalign.io import DataFileError, read_jsonl, write_jsonl
    from selfalign.models import ModelNotFoundError
    from selfalign.records import PromptRecord

    try:
        records = read_jsonl(prompts, PromptRecord)[:limit]
        settings = SamplingSettings(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                                    stop=stop, seed=seed, logprobs=logprobs)
        gen = get_engine(engine, model, **({"seed": seed} if engine != "hf" else {}))
    except (DataFileError, ModelNotFoundError, ValueError, RuntimeError) as e:
        _fail(str(e))
    import time

    start = time.perf_counter()
    samples = gen.generate(records, settings, progress=True)
    seconds = time.perf_counter() - start
    write_jsonl(out, samples)
    tokens = sum(s.num_tokens for s in samples)
    console.print(f"{len(samples)} samples for {len(records)} prompts with {gen.name}: {tokens} tokens in "
                  f"{seconds:.1f}s ({tokens / max(seconds, 1e-9):.1f} tokens/s) -> {out}")
    if show:
        table = Table(title=f"first {show} samples")
        for column in ("prompt", "#", "tokens", "finish", "completion"):
            table.add_column(column)
        for s in samples[:show]:
            table.add_row(s.messages[-1].content[:60], str(s.sample_index), str(s.num_tokens), s.finish_reason,
                          s.text[:120].replace("\n", " "))
        Console().print(table)


@app.command()
def judge(
    samples: Path = typer.Option(..., help="samples JSONL from `selfalign generate`"),
    out: Path = typer.Option(..., help="scored samples JSONL (atomic; resumes from OUT.partial)"),
    scorer: str = typer.Option("self-consistency", help="self-consistency | llm-judge | reward-model"),
    judge_model: str = typer.Option("default", help="llm-judge / reward-model: hub id, folder, or 'default'"),
    judge_base_url: Optional[str] = typer.Option(None, help="llm-judge: an OpenAI-compatible endpoint (.../v1)"),
    judge_api_key_env: str = typer.Option("OPENAI_API_KEY", help="environment variable holding the API key"),
    mode: str = typer.Option("pairwise", help="llm-judge: pointwise | pairwise"),
    use_logprobs: bool = typer.Option(True, help="pairwise: read the preference from answer-letter probabilities"),
    concurrency: int = typer.Option(8, help="OpenAI endpoint: requests in flight"),
) -> None:
    """Score samples: self-consistency votes, an LLM judge, or a reward model."""
    from collections import Counter

    from selfalign.io import DataFileError, read_jsonl
    from selfalign.judging.stage import SCORERS, score_file, summarize, write_report
    from selfalign.models import ModelNotFoundError
    from selfalign.records import Sample

    if scorer not in SCORERS:
        _fail(f"unknown scorer {scorer!r}: choose one of {', '.join(SCORERS)}")
    if mode not in ("pointwise", "pairwise"):
        _fail(f"unknown llm-judge mode {mode!r}: choose pointwise or pairwise")
    try:
        records = read_jsonl(samples, Sample)
        stats: Counter = Counter()
        if scorer == "self-consistency":
            from selfalign.judging.self_consistency import score_self_consistency as score_group
        elif scorer == "reward-model":
            from selfalign.judging.reward_model import RewardModelScorer

            score_group = RewardModelScorer(judge_model).score
        else:
            from selfalign.judging.backends import LocalJudge, OpenAIJudge
            from selfalign.judging.llm_judge import judge_pairwise, judge_pointwise

            backend = (OpenAIJudge(judge_model, base_url=judge_base_url, api_key_env=judge_api_key_env,
                                   concurrency=concurrency, cache_path=out.with_name(out.name + ".judge-cache.jsonl"))
                       if judge_base_url else LocalJudge(judge_model))
            if mode == "pointwise":
                score_group = lambda group: judge_pointwise(backend, group, stats=stats)  # noqa: E731
            else:
                score_group = lambda group: judge_pairwise(backend, group, use_logprobs, stats=stats)  # noqa: E731
    except (DataFileError, ModelNotFoundError, ValueError) as e:
        _fail(str(e))
    scored = score_file(records, score_group, out)
    report = {"scorer": scorer, "mode": mode if scorer == "llm-judge" else None, **summarize(scored, stats)}
    write_report(out, report)
    console.print(f"scored {len(scored)} samples -> {out}; {report}")


@app.command("build-pairs")
def build_pairs(
    scored: Path = typer.Option(..., help="scored samples JSONL from `selfalign judge`"),
    out: Path = typer.Option(..., help="pairs (or ranked lists) JSONL, written atomically"),
    mode: str = typer.Option("pairs", help="pairs | scpo | lists"),
    min_margin: float = 0.0,
    vote_threshold: int = typer.Option(1, help="scpo: tau, least votes of the chosen answer"),
    max_pairs_per_prompt: int = 1,
    max_length_ratio: Optional[float] = typer.Option(None, help="drop pairs whose chosen is this many times longer"),
) -> None:
    """Build preference pairs or ranked lists from scored samples, with a report of what was dropped and why."""
    from pydantic import ValidationError

    from selfalign.io import DataFileError, read_jsonl, write_jsonl
    from selfalign.judging.stage import write_report
    from selfalign.pairs import PairOptions, build_preferences
    from selfalign.records import ScoredSample

    try:
        options = PairOptions(mode=mode, min_margin=min_margin, vote_threshold=vote_threshold,
                              max_pairs_per_prompt=max_pairs_per_prompt, max_length_ratio=max_length_ratio)
        records, report = build_preferences(read_jsonl(scored, ScoredSample), options)
    except (DataFileError, ValidationError) as e:
        _fail(str(e))
    write_jsonl(out, records)
    write_report(out, report)
    console.print(f"{report['records']} records from {report['prompts']} prompts -> {out}; {report}")


def _parse_overrides(pairs: list[str]) -> dict:
    """`key=value` strings; values are parsed as YAML so numbers, booleans and lists work."""
    import yaml

    out = {}
    for item in pairs:
        if "=" not in item:
            _fail(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def load_train_config(config: Optional[Path], overrides: dict):
    import yaml
    from pydantic import ValidationError

    from selfalign.training.config import TrainConfig

    values = {}
    if config is not None:
        if not config.exists():
            _fail(f"{config}: file not found")
        values = yaml.safe_load(config.read_text()) or {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig(**values)
    except ValidationError as e:
        err = e.errors()[0]
        where = f"{config}: " if config else ""
        _fail(f"{where}field '{'.'.join(map(str, err['loc']))}': {err['msg']}")


@app.command()
def train(
    pairs: Path = typer.Option(..., help="pairs JSONL (or ranked lists for --loss lipo)"),
    out: Path = typer.Option(..., help="output folder: checkpoints/, final/, metrics.jsonl, logs/"),
    config: Optional[Path] = typer.Option(None, help="YAML with TrainConfig fields (TRL's names)"),
    model: Optional[str] = typer.Option(None, help="policy and reference model (default: 'default')"),
    loss: Optional[str] = typer.Option(None, help="dpo | cdpo | ipo | ln_dpo | rpo | simpo | scpo | lipo | srpo"),
    beta: Optional[float] = None,
    learning_rate: Optional[float] = None,
    max_steps: Optional[int] = None,
    num_train_epochs: Optional[float] = None,
    per_device_train_batch_size: Optional[int] = None,
    gradient_accumulation_steps: Optional[int] = None,
    use_peft: Optional[bool] = typer.Option(None, "--lora/--full", help="LoRA adapter or full finetuning"),
    set_: list[str] = typer.Option([], "--set", help="any other TrainConfig field, key=value (repeatable)"),
) -> None:
    """Train the policy on preference data with a DPO-family, ScPO, LiPO-λ or SRPO loss. Resumes after a kill."""
    from selfalign.io import DataFileError
    from selfalign.training.trainer import train as run_training

    overrides = {"model": model, "loss_type": loss, "beta": beta, "learning_rate": learning_rate,
                 "max_steps": max_steps, "num_train_epochs": num_train_epochs,
                 "per_device_train_batch_size": per_device_train_batch_size,
                 "gradient_accumulation_steps": gradient_accumulation_steps, "use_peft": use_peft,
                 **_parse_overrides(set_)}
    cfg = load_train_config(config, overrides)
    try:
        summary = run_training(cfg, pairs, out)
    except (DataFileError, ValueError, RuntimeError) as e:
        _fail(str(e))
    console.print(f"trained {summary['steps']} steps in {summary['seconds']:.0f}s on {summary['world_size']} "
                  f"process(es) -> {summary['output']}")


@app.command()
def export(
    source: Path = typer.Argument(..., help="a run folder, a training output folder, or a DeepSpeed checkpoint"),
    out: Path = typer.Option(..., help="target folder (must be empty unless --force)"),
    dtype: str = typer.Option("fp32", help="bf16 | fp16 | fp32"),
    iteration: Optional[int] = typer.Option(None, help="with a run folder: which iteration (default: the last)"),
    base_model: Optional[str] = typer.Option(None, help="the base model, where the source does not record it"),
    force: bool = typer.Option(False, help="replace a non-empty target"),
    push_to_hub: Optional[str] = typer.Option(None, help="also upload to this hub repo (token from HF_TOKEN)"),
) -> None:
    """Merge LoRA into the base weights and save a plain, verified Hugging Face checkpoint with a model card."""
    from selfalign.export import ExportError, export as run_export

    if dtype not in ("bf16", "fp16", "fp32"):
        _fail(f"unknown dtype {dtype!r}: choose bf16, fp16 or fp32")
    try:
        result = run_export(source, out, dtype=dtype, iteration=iteration, force=force, base_model=base_model,
                            push_to_hub=push_to_hub)
    except ExportError as e:
        _fail(str(e))
    console.print(f"exported {result['source']} -> {result['out']}\nverified: {result['verification']}")


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="a recipe YAML, e.g. recipes/default.yaml"),
    out: Optional[Path] = typer.Option(None, help="run folder (default: runs/<recipe name>)"),
    force: bool = typer.Option(False, help="continue a run whose recipe has changed since it started"),
    iterations: Optional[int] = typer.Option(None, help="run only the first N iterations now"),
    until: Optional[str] = typer.Option(None, help="stop after this stage of the last iteration"),
) -> None:
    """Run the self-alignment loop: generate -> judge -> filter -> train -> export -> evaluate, N times. Resumable."""
    from selfalign.loop import run as run_loop
    from selfalign.recipes import RecipeError
    from selfalign.reporting import write_report

    printed = []

    def report(run_dir, manifest):
        write_report(run_dir, manifest.data, Console(width=150))
        printed.append(True)

    try:
        run_dir = run_loop(recipe, out, force=force, iterations=iterations, until=until, on_iteration=report)
    except RecipeError as e:
        _fail(str(e))
    except RuntimeError as e:
        _fail(str(e))
    import json as _json

    path = write_report(run_dir, _json.loads((run_dir / "manifest.json").read_text()),
                        None if printed else Console(width=150), show=not printed)
    console.print(f"run folder: {run_dir}; report: {path}")


@app.command("eval-heldout")
def eval_heldout(
    model: str = typer.Option(..., help="the policy to evaluate"),
    config: Path = typer.Option(..., help="JSON or YAML with HeldoutConfig fields (data, limit, k, ...)"),
    out: Path = typer.Option(..., help="eval.json, written atomically"),
    engine: str = "auto",
    seed: int = 0,
) -> None:
    """Held-out answer accuracy (greedy, sampled, majority@k): the loop's evaluation stage."""
    import yaml

    from selfalign.evaluation.heldout import HeldoutConfig, evaluate_heldout
    from selfalign.generation import get_engine
    from selfalign.io import read_jsonl, write_json
    from selfalign.records import PromptRecord

    cfg = HeldoutConfig(**yaml.safe_load(config.read_text()))
    prompts = read_jsonl(cfg.data, PromptRecord)
    gen = get_engine(engine, model, **({"seed": seed} if engine != "hf" else {}))
    result = evaluate_heldout(gen, prompts, cfg, seed=seed)
    write_json(out, {"model": model, "engine": gen.name, **result})
    console.print({k: v for k, v in result.items() if not isinstance(v, list)})


@app.command()
def serve(
    model: str = typer.Option("default", help="hub id, local folder, or 'default'"),
    host: str = "127.0.0.1",
    port: int = 8000,
) -> None:
    """Serve a local model over an OpenAI-compatible HTTP API (for local judging)."""
    from selfalign.serve import make_server

    server = make_server(model, host, port)
    console.print(f"serving {model} at http://{host}:{server.server_port}/v1")
    server.serve_forever()


from selfalign.cli_eval import eval_app  # noqa: E402  (registered after the stage commands)

app.add_typer(eval_app, name="eval")

if __name__ == "__main__":
    app(sys.argv[1:])
