"""The loop's stages, each a function of its step (`selfalign.run.executor.Step`) that does the stage's one unit of
work and returns its result model (selfalign.run.results), which the manifest records. `selfalign.run.loop` declares
which run when."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from selfalign.errors import StageError
from selfalign.io import read_jsonl, write_json, write_jsonl
from selfalign.losses import LOSSES
from selfalign.records import PromptRecord
from selfalign.run.curriculum import draw
from selfalign.run.engine_server import EngineRequest, GenerateJob, HeldoutJob
from selfalign.run.executor import Step
from selfalign.run.results import (EvalResult, ExportResult, FilterResult, JudgeResult, JudgeTrainResult, SampleResult,
                                   TrainResult, VerifyResult)
from selfalign.run.stage_runner import CLI_MODULE, launched, run_stage
from selfalign.training.config import TrainConfig


def policy_of(run_dir: Path, recipe, iteration: int) -> str:
    """Policy t: the base model for t = 1, else the merged export of iteration t - 1."""
    return recipe.model if iteration == 1 else str(run_dir / f"iter_{iteration - 1:02d}" / "merged")


def judge_of(run_dir: Path, recipe, iteration: int) -> str:
    """With judge_training, judge t is the judge trained in iteration t (judge 0: judge.judge_model, 'policy' meaning
    the base model); without, the configured judge ('policy': the policy being trained, as in self-rewarding)."""
    if recipe.judge_training is not None:
        if iteration == 0:
            return recipe.model if recipe.judge.judge_model == "policy" else recipe.judge.judge_model
        return str(run_dir / f"iter_{iteration:02d}" / "judge_training" / "iter_01" / "merged")
    return policy_of(run_dir, recipe, iteration) if recipe.judge.judge_model == "policy" else recipe.judge.judge_model


def generate_job(recipe, it_dir: Path, iteration: int):
    """Iteration t's sampling job: its prompts (selfalign.curriculum; answers stripped) in iter_NN/prompts.jsonl."""
    from selfalign.training.data import record_kind

    prompts = read_jsonl(recipe.prompts, PromptRecord)
    chosen = draw(prompts, recipe.prompts_per_iteration or len(prompts), iteration, it_dir.parent, recipe.curriculum)
    # Answers never reach the loop's training data: strip them from the prompts it samples.
    write_jsonl(it_dir / "prompts.jsonl", [p.model_copy(update={"answer": None}) for p in chosen])
    config = recipe.generation
    if config.seed is None:
        config = config.model_copy(update={"seed": recipe.seed + iteration})
    if recipe.train.sampler_reference and LOSSES[recipe.train.loss_type].needs_reference and \
            not record_kind(recipe.train.loss_type).mismatched_column:
        # The sampler's log-probs under policy t are the reference that iteration t trains against (not for KTO,
        # whose KL sequences pair a prompt with another prompt's completion: its reference pass runs anyway).
        config = config.model_copy(update={"record_logprobs": True})
    return GenerateJob(config=config, prompts=str(it_dir / "prompts.jsonl"), out=str(it_dir / "samples.jsonl"))


def verifier_job(recipe, it_dir: Path):
    """The verifier check's sampling job: the first `verifier_check` held-out prompts, sampled as the recipe samples
    its training prompts (answers stripped; they are read back only to measure)."""
    prompts = [p for p in read_jsonl(recipe.eval.data, PromptRecord) if p.answer is not None][:recipe.verifier_check]
    path = it_dir / "verifier_prompts.jsonl"
    write_jsonl(path, [p.model_copy(update={"answer": None}) for p in prompts])
    config = recipe.generation.model_copy(update={"seed": recipe.seed, "record_logprobs": False})
    return GenerateJob(config=config, prompts=str(path), out=str(it_dir / "verifier_samples.jsonl"))


def checks_verifier(recipe) -> bool:
    return bool(recipe.verifier_check and recipe.eval is not None and recipe.pairs.mode in ("pairs", "scpo"))


def rechecks_verifier(recipe) -> bool:
    return checks_verifier(recipe) and recipe.verifier_check_every_iteration


def heldout_jobs(recipe, it_dir: Path) -> list:
    """The evaluation's jobs: eval.data into eval.json, then each of `eval_sets` greedily (same settings, all its
    prompts) into eval_<name>.json. The extra sets come last: the main evaluation's samples do not depend on them."""
    jobs = [HeldoutJob(config=recipe.eval, seed=recipe.seed, out=str(it_dir / "eval.json"))]
    for name, path in recipe.eval_sets.items():
        greedy_only = recipe.eval.model_copy(update={"data": path, "limit": None, "k": 0, "sampled_limit": None,
                                                     "select": None, "self_revision_rounds": 0})
        jobs.append(HeldoutJob(config=greedy_only, seed=recipe.seed, out=str(it_dir / f"eval_{name}.json")))
    return jobs


def engine_request(recipe, policy: str, jobs: list, seed: int) -> EngineRequest:
    """Jobs on `policy`, on the recipe's engine and layout; `seed` seeds the engine if this request starts it."""
    generation = recipe.generation
    return EngineRequest(model=policy, engine=generation.engine, options=generation.engine_options(), seed=seed,
                         jobs=jobs)


def generate(step: Step) -> SampleResult:
    recipe = step.recipe
    job = generate_job(recipe, step.it_dir, step.iteration)
    request = engine_request(recipe, policy_of(step.run_dir, recipe, step.iteration), [job], job.config.seed)
    [marker] = step.engines.run(request, step.it_dir, "generate", step.display)
    return SampleResult(prompts=marker["prompts"], samples=marker["samples"], engine_seconds=marker["seconds"])


def judge_train(step: Step) -> JudgeTrainResult:
    """One Self-Taught Evaluator round on this iteration's prompts: judge t-1 -> judge t (selfalign judge-train)."""
    recipe, out = step.recipe, step.it_dir / "judge_training"
    run_stage(["judge-train"], recipe.judge_training, step.it_dir, display=step.display,
              prompts=step.it_dir / "prompts.jsonl", out=out,
              judge_model=judge_of(step.run_dir, recipe, step.iteration - 1), engine=recipe.generation.engine)
    summary = json.loads((out / "summary.json").read_text())
    before, after = summary["iterations"]["0"], summary["iterations"]["1"]
    return JudgeTrainResult(judge=after["judge"], records=after["train_records"], accuracy_before=before["accuracy"],
                            accuracy=after["accuracy"], accuracy_ci95=after["accuracy_ci95"],
                            position_consistency=after["position_consistency"], heldout_pairs=after["pairs"])


def judge(step: Step) -> JudgeResult:
    config = step.recipe.judge.model_copy(update={"judge_model": judge_of(step.run_dir, step.recipe, step.iteration)})
    run_stage(["judge"], config, step.it_dir, display=step.display, samples=step.it_dir / "samples.jsonl",
              out=step.it_dir / "scored.jsonl")
    return JudgeResult.model_validate_json((step.it_dir / "scored.report.json").read_text())


def filter_pairs(step: Step) -> FilterResult:
    from selfalign.pairs import build_preferences
    from selfalign.records import ScoredSample

    records, report = build_preferences(read_jsonl(step.it_dir / "scored.jsonl", ScoredSample), step.recipe.pairs)
    if not records:
        raise StageError(f"iteration {step.iteration}: no preference data survived the filters: {report}")
    write_jsonl(step.it_dir / "pairs.jsonl", records)
    write_json(step.it_dir / "pairs.report.json", report)
    return FilterResult.model_validate(report)


def train(step: Step) -> TrainResult:
    recipe = step.recipe
    values = {**recipe.train.model_dump(), "model": policy_of(step.run_dir, recipe, step.iteration)}
    if "seed" not in recipe.train.model_fields_set:
        values["seed"] = recipe.seed + step.iteration
    launch = None
    if recipe.accelerate_config:
        accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", recipe.accelerate_config]
        if recipe.train_launcher:
            launch = lambda args: launched(recipe.train_launcher, accelerate, CLI_MODULE + args)  # noqa: E731
        else:
            launch = lambda args: accelerate + CLI_MODULE + args  # noqa: E731
    run_stage(["train"], TrainConfig.model_validate(values), step.it_dir, launch=launch, display=step.display,
              pairs=step.it_dir / "pairs.jsonl", out=step.it_dir / "checkpoint")
    summary = json.loads((step.it_dir / "checkpoint" / "train_summary.json").read_text())
    return TrainResult(steps=summary["steps"], final_metrics=summary["final_metrics"],
                       reference=summary.get("reference", {}))


def export(step: Step) -> ExportResult:
    from selfalign.export import export as export_merged

    recipe, manifest = step.recipe, step.manifest
    counts, evaluation = {}, {}
    for t in manifest.iterations():
        results = manifest.results(t)
        counts[str(t)] = {name: found.get("records") or found.get("samples") for name, result in results.items()
                          if (found := result.model_dump()).get("records") or found.get("samples")}
        if "evaluate" in results:
            evaluation[str(t)] = {k: v for k, v in results["evaluate"].numbers().items() if isinstance(v, float)}
    info = {"name": f"{recipe.name} iteration {step.iteration}", "recipe": recipe.name,
            "recipe_sha256": manifest.data.get("recipe_sha256"), "iteration": step.iteration,
            "loss_type": recipe.train.loss_type, "base_model": recipe.model,
            "hyperparameters": {k: v for k, v in recipe.train.model_dump(exclude={"model"}).items()
                                if not isinstance(v, (dict, list))},
            "data_counts": counts, "evaluation": evaluation}
    info["intervals"] = _intervals(step.run_dir, info["evaluation"])
    result = export_merged(step.it_dir / "checkpoint", step.it_dir / "merged", dtype=recipe.export_dtype, force=True,
                           card_info=info)
    return ExportResult(max_logit_diff=result["max_logit_diff"])


def _intervals(run_dir: Path, evaluation: dict) -> dict:
    """Each evaluated iteration's 95% intervals, under the names the evaluate stage records."""
    from selfalign.run.reporting import accuracy_intervals

    intervals = {}
    for t, numbers in evaluation.items():
        path = run_dir / f"iter_{int(t):02d}" / "eval.json"
        if path.exists():
            # accuracy_intervals says "majority"; the evaluation stage records it as majority_at_<k>
            majority = next((k for k in numbers if k.startswith("majority_at_")), "majority")
            found = accuracy_intervals(json.loads(path.read_text()))
            intervals[t] = {majority if k == "majority" else k: v for k, v in found.items()}
    return intervals


def evaluate(step: Step) -> EvalResult:
    """Held-out accuracy of the policy this iteration trained (iteration 0: the base policy)."""
    recipe = step.recipe
    policy = policy_of(step.run_dir, recipe, step.iteration + 1)
    step.engines.run(engine_request(recipe, policy, heldout_jobs(recipe, step.it_dir), recipe.seed), step.it_dir,
                     "evaluate", step.display)
    result = json.loads((step.it_dir / "eval.json").read_text())
    numbers = {k: v for k, v in result.items() if not isinstance(v, list)}
    for name in recipe.eval_sets:
        found = json.loads((step.it_dir / f"eval_{name}.json").read_text())
        numbers[f"{name}_greedy_accuracy"] = found["greedy_accuracy"]
    return EvalResult.model_validate(numbers)


def verifier_sample(step: Step) -> SampleResult:
    """The verifier check's samples: the first `verifier_check` held-out prompts, sampled as the recipe samples its
    training prompts, from the policy the next iteration samples (iteration 0: the base policy; iteration t, with
    `verifier_check_every_iteration`: the policy it trained)."""
    recipe = step.recipe
    job = verifier_job(recipe, step.it_dir)
    request = engine_request(recipe, policy_of(step.run_dir, recipe, step.iteration + 1), [job], recipe.seed)
    [marker] = step.engines.run(request, step.it_dir, "verifier-sample", step.display)
    return SampleResult(prompts=marker["prompts"], samples=marker["samples"], engine_seconds=marker["seconds"])


def verify(step: Step) -> VerifyResult:
    """The verifier check: the recipe's judge and filters on held-out prompts, compared with their answers and with
    the policy's greedy answers from the same iteration's evaluation (selfalign.verifier_check). Says at once when
    the verifier is not stronger."""
    from selfalign.records import ScoredSample, prompt_id_of
    from selfalign.verifier_check import diagnose

    recipe, it_dir = step.recipe, step.it_dir
    # The judge that the next iteration will use (with judge training, the one it starts from: not trained yet).
    config = recipe.judge.model_copy(update={"judge_model": judge_of(
        step.run_dir, recipe, step.iteration if recipe.judge_training else step.iteration + 1)})
    scored_path = it_dir / "verifier_scored.jsonl"
    run_stage(["judge"], config, it_dir, display=step.display, samples=it_dir / "verifier_samples.jsonl",
              out=scored_path)
    held_out = [p for p in read_jsonl(recipe.eval.data, PromptRecord) if p.answer is not None]
    answers = {prompt_id_of(p, i): p.answer for i, p in enumerate(held_out[:recipe.verifier_check])}
    evaluation = json.loads((it_dir / "eval.json").read_text())
    greedy = {prompt_id_of(p, i): bool(c) for i, (p, c) in enumerate(zip(held_out, evaluation["greedy_correct"]))}
    result = diagnose(read_jsonl(scored_path, ScoredSample), answers, recipe.pairs, greedy)
    write_json(it_dir / "verifier.json", result)
    if step.display is not None:
        where = "" if step.iteration == 0 else f" (policy {step.iteration + 1})"
        step.display.message((f"verifier check{where}: " if result["verdict"] == "stronger" else f"WARNING{where}: ")
                             + result["explanation"])
    return VerifyResult.model_validate({k: v for k, v in result.items() if k != "filter_report"})
