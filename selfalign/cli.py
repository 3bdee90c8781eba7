"""The `selfalign` command line: one thin command per stage; the work lives in the stage modules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup
from rich.console import Console
from rich.table import Table
from rich.text import Text

from selfalign.cli_engine import with_engine_flags
from selfalign.generation import ENGINES, GenerationConfig
from selfalign.generation.options import EngineOptions
from selfalign.judging.mbr import UTILITIES
from selfalign.cli_utils import console, one_line, print_error, setup_logging
from selfalign.config_files import load_config, parse_set_options
from selfalign.errors import ConfigError, SelfAlignError
from selfalign.cli_config import field_default, with_config_flags, with_default
from selfalign.judging.scorers import JudgeConfig
from selfalign.judging.self_taught import SelfTaughtConfig
from selfalign.pairs import PairOptions
from selfalign.selection import SelectConfig
from selfalign.training.config import TrainConfig
from selfalign.training.heap import keep_freed_memory

# TRL's names are the fields' own; these add the names selfalign used before (still accepted).
TRAIN_FLAG_NAMES = {"loss_type": ("--loss-type", "--loss"), "use_peft": ("--use-peft/--full", "--lora/--no-lora")}


class _Commands(TyperGroup):
    """Every command's expected failure (a SelfAlignError, or a file-system error the user can fix: read-only, full,
    no permission) becomes one line on stderr and exit status 2; any other exception is a bug and keeps its
    traceback (as does every error under --verbose)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SelfAlignError as e:
            if ctx.obj and ctx.obj.get("verbose"):
                raise
            print_error(e)
            raise typer.Exit(2) from None
        except OSError as e:  # a read-only or full disk, a permission: the user's to fix, so one line, not a traceback
            from selfalign.io import describe_os_error

            message = describe_os_error(e)
            if message is None or (ctx.obj and ctx.obj.get("verbose")):
                raise
            print_error(message)
            raise typer.Exit(2) from None


# markdown, not rich: a help text's default note or "[/INST]" is text, not markup
app = typer.Typer(cls=_Commands, add_completion=False, no_args_is_help=True, help=__doc__,
                  rich_markup_mode="markdown")


@app.callback()
def main(ctx: typer.Context,
         verbose: bool = typer.Option(False, "--verbose", "-v", help="log details; tracebacks for every error")) -> None:
    ctx.obj = {"verbose": verbose}
    setup_logging(verbose)


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
    from selfalign.precision import sampling_precision, training_precision

    table.add_row("vllm sampling (dtype auto)", str(sampling_precision("auto")))
    table.add_row("training (bf16 auto)", str(training_precision(None)))
    Console().print(table)


@app.command()
@with_config_flags(GenerationConfig, names={"record_logprobs": ("--logprobs/--no-logprobs",)},
                   skip=tuple(EngineOptions.model_fields), into="sampling", panel="Sampling",
                   config_file="YAML/JSON with generation fields (a recipe's `generation:`)")
@with_engine_flags()
def generate(
    prompts: Path = typer.Option(..., help="JSONL, one {'prompt': str} or {'messages': [...]} per line"),
    out: Path = typer.Option(..., help="where the samples JSONL is written (atomically)"),
    model: str = typer.Option("default", help="hub id, local folder, .gguf file, or 'default'"),
    config: Optional[Path] = None,
    limit: Optional[int] = typer.Option(None, help=with_default("only the first N prompts", "all")),
    show: int = typer.Option(0, help="print a table of the first N samples"),
    select: Optional[str] = typer.Option(None, help=with_default("mbr | self-verify: write one chosen sample per "
                                                                 "prompt to OUT (all N go to OUT's .candidates.jsonl; "
                                                                 "none: all samples to OUT)", None)),
    utility: Optional[str] = typer.Option(None, help=with_default(f"--select mbr: {' | '.join(UTILITIES)}",
                                                                  field_default(SelectConfig, "utility"))),
    mbr_references: Optional[int] = typer.Option(None, help=with_default("--select mbr: pseudo-references per "
                                                                         "sample", field_default(SelectConfig,
                                                                                                 "mbr_references"))),
    layout: dict = None,
    sampling: dict = None,
) -> None:
    """Sample N completions per prompt from a model; with --select, keep one per prompt (MBR or self-verification)."""
    import time

    from selfalign.generation import get_engine, prompt_ids
    from selfalign.io import prepare_output, read_jsonl, require_records, write_jsonl
    from selfalign.records import PromptRecord

    cfg = load_config(GenerationConfig, config, {**sampling, **layout})
    records = require_records(read_jsonl(prompts, PromptRecord)[:limit], prompts, "prompts")
    prompt_ids(records, str(prompts))  # duplicates fail here, before a model loads
    selection = None
    if select is not None or utility is not None or mbr_references is not None:
        from selfalign.selection import SelectConfig

        selection = load_config(SelectConfig, None, {"method": select, "utility": utility,
                                                     "mbr_references": mbr_references})
        if cfg.n < 2:
            raise ConfigError(f"--select {selection.method} chooses among samples: give --n 2 or more")
    prepare_output(out, inputs=[prompts])
    gen = get_engine(cfg.engine, model, seed=cfg.seed or 0, options=cfg)
    start = time.perf_counter()
    samples = gen.generate(records, cfg.sampling(), progress=True)
    seconds = time.perf_counter() - start
    if selection is None:
        write_jsonl(out, samples)
    else:
        from selfalign.selection import make_selector

        candidates = out.with_name(out.name.removesuffix(".jsonl") + ".candidates.jsonl")
        write_jsonl(candidates, samples)
        gen.close()  # frees the engine: self-verify's judge loads its own copy of the model
        chooser, stats = make_selector(selection, model)
        chosen = chooser(samples)
        write_jsonl(out, chosen)
        console.print(f"{selection.method}: one of {cfg.n} samples chosen per prompt -> {out} (all samples: "
                      f"{candidates}){'; ' + str(dict(stats)) if stats else ''}")
    tokens = sum(s.num_tokens for s in samples)
    precision = getattr(gen, "precision", None)
    console.print(f"{len(samples)} samples for {len(records)} prompts with {gen.name}"
                  f"{f' ({precision})' if precision else ''}: {tokens} tokens in {seconds:.1f}s "
                  f"({tokens / max(seconds, 1e-9):.1f} tokens/s) -> {out}", markup=False)
    if show:
        table = Table(title=f"first {show} samples")
        for column in ("prompt", "#", "tokens", "finish", "completion"):
            table.add_column(column)
        for s in samples[:show]:
            table.add_row(Text(s.messages[-1].content[:60]), str(s.sample_index), str(s.num_tokens), s.finish_reason,
                          Text(s.text[:120].replace("\n", " ")))
        Console().print(table)


@app.command()
@with_config_flags(JudgeConfig, section="judge")
def judge(
    samples: Path = typer.Option(..., help="samples JSONL from `selfalign generate`"),
    out: Path = typer.Option(..., help="scored samples JSONL (atomic; resumes from OUT.partial)"),
    config: Optional[Path] = None,
    force: bool = typer.Option(False, help="discard OUT.partial left by a run on other samples or settings"),
    options: dict = None,
) -> None:
    """Score samples: self-consistency votes, checked (executed) answers, an LLM judge, a reward model, or MBR."""
    from selfalign.io import prepare_output, read_jsonl
    from selfalign.judging.scorers import make_scorer
    from selfalign.judging.stage import check_samples, score_file, summarize, write_report
    from selfalign.records import Sample

    cfg = load_config(JudgeConfig, config, options)
    records = read_jsonl(samples, Sample)
    check_samples(records, samples)
    prepare_output(out, inputs=[samples])
    score_group, stats = make_scorer(cfg, out.with_name(out.name + ".judge-cache.jsonl"))
    scored = score_file(records, score_group, out, settings=cfg.resume_settings(),
                        force=force)
    report = {"scorer": cfg.scorer, "mode": cfg.mode if cfg.scorer == "llm-judge" else None, **summarize(scored, stats)}
    write_report(out, report)
    console.print(f"scored {len(scored)} samples -> {out}: {one_line(report)} (report: "
                  f"{out.with_suffix('.report.json')})", soft_wrap=True)


@app.command("build-pairs")
@with_config_flags(PairOptions, section="pairs")
def build_pairs(
    scored: Path = typer.Option(..., help="scored samples JSONL from `selfalign judge`"),
    out: Path = typer.Option(..., help="pairs (ranked lists, single completions) JSONL, written atomically"),
    config: Optional[Path] = None,
    options: dict = None,
) -> None:
    """Build preference pairs, ranked lists or single labeled completions from scored samples, with a report of what
    was dropped and why."""
    from selfalign.io import DataFileError, prepare_output, read_jsonl, require_records, write_jsonl
    from selfalign.judging.stage import write_report
    from selfalign.pairs import build_preferences
    from selfalign.records import ScoredSample

    pair_options = load_config(PairOptions, config, options)
    prepare_output(out, inputs=[scored])
    records, report = build_preferences(require_records(read_jsonl(scored, ScoredSample), scored, "scored samples"),
                                        pair_options)
    if not records:
        raise DataFileError(scored, None, None, f"no preference records survived the filters ({report}); nothing "
                            "was written")
    write_jsonl(out, records)
    write_report(out, report)
    console.print(f"{report['records']} records from {report['prompts']} prompts -> {out}: {one_line(report)} "
                  f"(report: {out.with_suffix('.report.json')})", soft_wrap=True)


@app.command()
@with_config_flags(TrainConfig, names=TRAIN_FLAG_NAMES, config_file="YAML with TrainConfig fields (TRL's names), or "
                   "an alignment-handbook recipe (model_name_or_path, ...)")
def train(
    pairs: str = typer.Option(..., help="preference data: JSONL, JSON array or Parquet file, a save_to_disk folder, "
                              "a dataset folder or hub dataset id; TRL's standard or conversational form, explicit "
                              "or implicit prompt (ranked lists for lipo; single completions with label or reward for "
                              "kto, dro)"),
    out: Path = typer.Option(..., help="output folder: the final adapter or model at its root (with README.md), "
                             "checkpoint-N/, metrics.jsonl, logs/"),
    split: str = typer.Option("train", help="dataset split, for a hub dataset or dataset folder"),
    config: Optional[Path] = None,
    set_: list[str] = typer.Option([], "--set", help=with_default("any TrainConfig field, key=value (lists too; "
                                                                  "repeatable)", None)),
    force: bool = typer.Option(False, help="OUT holds another run (other data or settings): discard it and start over"),
    options: dict = None,
) -> None:
    """Train the policy on preference data with a DPO-family, ScPO, LiPO-λ, SRPO, KTO or DRO loss. Every TrainConfig
    field is a flag under TRL's name. Resumes after a kill."""
    from selfalign.handbook import read_train_config
    from selfalign.training.trainer import train as run_training

    cfg = read_train_config(config, options, parse_set_options(set_))
    keep_freed_memory()  # a training process: each step reuses the last one's memory (an entry point's choice)
    summary = run_training(cfg, pairs, out, split=split, force=force)
    console.print(f"trained {summary['steps']} steps in {summary['seconds']:.0f}s on {summary['world_size']} "
                  f"process(es) -> {summary['output']}", soft_wrap=True)


@app.command("judge-train")
@with_config_flags(SelfTaughtConfig, skip=("train",), panel="Self-taught judge (a recipe's judge_training: fields)",
                   config_file="YAML/JSON with self-taught fields (these flags', and train: {TrainConfig fields})")
def judge_train(
    prompts: Path = typer.Option(..., help="instructions JSONL ({'prompt'} or {'messages'} per line), no labels"),
    out: Path = typer.Option(..., help="folder: contrast.jsonl, iter_NN/{verdicts,judge_pairs}.jsonl, merged/, "
                             "accuracy.json, summary.json"),
    judge_model: str = typer.Option("default", help="the starting judge: hub id, folder, or 'default'"),
    iterations: int = typer.Option(1, min=1, help="rounds of verdicts -> training -> a new judge"),
    config: Optional[Path] = None,
    engine: str = typer.Option("auto", help=" | ".join(ENGINES)),
    set_: list[str] = typer.Option([], "--set", help=with_default("a field of the judge's training (TrainConfig), "
                                                                  "key=value", None)),
    force: bool = typer.Option(False, help="OUT holds a run with other prompts or settings: discard it"),
    options: dict = None,
) -> None:
    """Self-Taught Evaluator: the judge learns from its own verdicts on contrasting pairs of known order."""
    from selfalign.judge_train import train_judge

    cfg = load_config(SelfTaughtConfig, config, options)
    if set_:
        train_cfg = load_config(TrainConfig, None, {}, {**cfg.train.model_dump(exclude_unset=True),
                                                       **parse_set_options(set_)})
        cfg = cfg.model_copy(update={"train": train_cfg})
    keep_freed_memory()  # it trains in this process
    summary = train_judge(prompts, out, judge_model, iterations, cfg, engine, console, force=force)
    for t, row in summary["iterations"].items():
        console.print(f"judge {t}: accuracy {row['accuracy']} (95% interval {row['accuracy_ci95']}), position "
                      f"consistency {row['position_consistency']}, abstained {row['abstained']}")


@app.command()
def export(
    source: Path = typer.Argument(..., help="a run folder, a training output folder, or a DeepSpeed checkpoint"),
    out: Path = typer.Option(..., help="target folder (must be empty unless --force)"),
    dtype: str = typer.Option("float32", help="bfloat16 | float16 | float32 (bf16, fp16, fp32 accepted)"),
    iteration: Optional[int] = typer.Option(None, help="with a run folder: which iteration (default: the last)"),
    base_model: Optional[str] = typer.Option(None, help=with_default("the base model, where the source does not "
                                                                     "record it", "the recorded one")),
    force: bool = typer.Option(False, help="replace a non-empty target"),
    push_to_hub: Optional[str] = typer.Option(None, help=with_default("also upload to this hub repo (token from "
                                                                      "HF_TOKEN)", None)),
) -> None:
    """Merge LoRA into the base weights and save a plain, verified Hugging Face checkpoint with a model card."""
    from selfalign.errors import ConfigError
    from selfalign.export import export as run_export

    from selfalign.dtypes import canonical_dtype

    dtype = canonical_dtype(dtype)
    if dtype not in ("bfloat16", "float16", "float32"):
        raise ConfigError(f"--dtype {dtype!r}: choose bfloat16, float16 or float32 (or bf16, fp16, fp32)")
    result = run_export(source, out, dtype=dtype, iteration=iteration, force=force, base_model=base_model,
                        push_to_hub=push_to_hub)
    console.print(f"exported {result['source']} -> {result['out']}\nverified: {result['verification']}")


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="a recipe YAML, e.g. recipes/default.yaml"),
    out: Optional[Path] = typer.Option(None, help="run folder (default: runs/<recipe name>)"),
    force: bool = typer.Option(False, help="continue a run whose recipe has changed since it started"),
    iterations: Optional[int] = typer.Option(None, min=1, help=with_default("run only the first N iterations now",
                                                                            "the recipe's iterations")),
    until: Optional[str] = typer.Option(None, help=with_default("stop after this stage of the last iteration (none: "
                                                                "run it all)", None)),
    no_cache: bool = typer.Option(False, "--no-cache", help="recompute the base model's engine jobs (its evaluation, "
                                  "the verifier's and iteration 1's samples) instead of taking them from the cache"),
) -> None:
    """Run the self-alignment loop: generate -> judge -> filter -> train -> export -> evaluate, N times. Resumable."""
    from selfalign.run.loop import run as run_loop
    from selfalign.run.reporting import write_report
    from selfalign.run.results import Manifest

    printed = []

    def report(run_dir, manifest):
        write_report(run_dir, manifest, Console(width=150))
        printed.append(True)

    run_dir = run_loop(recipe, out, force=force, iterations=iterations, until=until, on_iteration=report,
                       cache=not no_cache)
    path = write_report(run_dir, Manifest(run_dir / "manifest.json"), None if printed else Console(width=150),
                        show=not printed)
    console.print(f"run folder: {run_dir}; report: {path}")


@app.command("check-verifier")
def check_verifier(
    recipe: Path = typer.Argument(..., help="a recipe YAML whose eval.data has answers"),
    out: Optional[Path] = typer.Option(None, help="run folder (default: runs/<recipe name>; `selfalign run` on the "
                                       "same folder then reuses this work)"),
) -> None:
    """Before training: does the recipe's judge choose right answers more often than the policy? Samples
    `verifier_check` held-out prompts as the recipe would, scores and filters them, and compares with the answers."""
    from selfalign.run.loop import run as run_loop
    from selfalign.run.results import Manifest

    run_dir = run_loop(recipe, out, until="verify")
    verdict = Manifest(run_dir / "manifest.json").result(0, "verify")
    if verdict is None:
        raise ConfigError(f"{recipe}: no verifier check to run (it needs `eval:` with answers, `verifier_check` > 0 "
                          "and pairs.mode pairs or scpo)")
    console.print(f"{verdict.verdict}: {verdict.explanation}\ndetails: {run_dir / 'iter_00' / 'verifier.json'}",
                  markup=False)


@app.command()
@with_engine_flags(skip=("backend", "ray_address"))
def serve(
    model: str = typer.Option("default", help="hub id, local folder, or 'default'"),
    host: str = "127.0.0.1",
    port: int = 8000,
    engine: str = typer.Option("auto", help="vllm: vLLM's own OpenAI server; hf: the small built-in one; auto: vllm "
                               "where it imports"),
    seed: int = 0,
    layout: dict = None,
) -> None:
    """Serve a local model over an OpenAI-compatible HTTP API (chat completions with logprobs), for judging with it
    through the same path as a hosted model. With vLLM installed this is vLLM's own server."""
    import os

    from selfalign.generation import resolve_engine_name
    from selfalign.generation.options import EngineOptions, check_engine_options

    layout = load_config(EngineOptions, None, layout)
    name = resolve_engine_name(engine)
    check_engine_options(name, layout)
    if name == "vllm":
        from selfalign.serve_vllm import vllm_serve_command

        argv, env = vllm_serve_command(model, host, port, layout, seed)
        console.print(f"serving {model} with vLLM's OpenAI server at http://{host}:{port}/v1")
        os.execve(argv[0], argv, env)  # vLLM's server owns the process from here (signals, shutdown)
    if layout != EngineOptions():
        raise ConfigError("the built-in server (--engine hf) runs one model in one process: engine layout options "
                          "need --engine vllm")
    from selfalign.serve import make_server

    server = make_server(model, host, port)
    console.print(f"serving {model} at http://{host}:{server.server_port}/v1")
    server.serve_forever()


from selfalign.cli_eval import eval_app  # noqa: E402  (registered after the stage commands)

app.add_typer(eval_app, name="eval")

if __name__ == "__main__":
    app()
