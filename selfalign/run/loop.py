"""`selfalign run RECIPE`: the self-alignment loop. Iteration t samples from policy t, scores the samples, builds
preference data, trains policy t+1 against policy t as the reference, exports it merged, and evaluates it.

The loop is data: `BASE_STAGES` (iteration 0, before any training) and `ITERATION_STAGES` declare each stage once,
`plan` lays them out for a recipe, and `selfalign.run.executor.execute` runs, skips and resumes them all the same way.
Each stage writes its outputs atomically, then records itself done in `manifest.json`, so a kill at any point loses
nothing finished.
"""

from __future__ import annotations

import time
from pathlib import Path

from selfalign.io import describe_changes, prepare_output
from selfalign.recipes import Recipe, RecipeError, check_inputs, load_recipe
from selfalign.run import children, stages
from selfalign.run.display import RunDisplay
from selfalign.run.engine_server import EngineClient
from selfalign.run.executor import Resumes, Stage, Step, execute
from selfalign.run.health import best_iteration, describe, iteration_health
from selfalign.run.lock import run_folder_lock
from selfalign.run.results import Manifest
from selfalign.versions import package_versions

# What the policy's samples depend on: the engine and its sampling settings, the seed, and (for the base policy)
# the model. The iterations' own sampling also depends on the prompts and on what the trainer reads from it.
_SAMPLED = ("model", "generation", "seed")
_VERIFIER = ("eval.data", "verifier_check")

# Iteration 0 evaluates the base policy, iteration t the policy it trained: the same stage.
EVALUATE = Stage("evaluate", (*_SAMPLED, "eval", "eval_sets"), stages.evaluate, ("eval.json",), Resumes.ENGINE_JOBS,
                 engine=True, applies=lambda recipe: recipe.eval is not None)
BASE_STAGES = (
    EVALUATE,
    Stage("verifier_sample", (*_SAMPLED, *_VERIFIER), stages.verifier_sample, ("verifier_samples.jsonl",),
          Resumes.ENGINE_JOBS, engine=True, applies=stages.checks_verifier),
    Stage("verify", ("judge", "pairs", "judge_training", *_VERIFIER), stages.verify, ("verifier.json",),
          Resumes.JUDGE_PARTIAL, applies=stages.checks_verifier),
)
# The same check on the policy an iteration trained (the next iteration's sampler), after its evaluation; named apart
# from iteration 0's so that `--until verify` still means the check before any training.
RECHECK_STAGES = (
    Stage("recheck_sample", (*_SAMPLED, *_VERIFIER), stages.verifier_sample, ("verifier_samples.jsonl",),
          Resumes.ENGINE_JOBS, engine=True, applies=stages.rechecks_verifier),
    Stage("recheck", ("judge", "pairs", "judge_training", *_VERIFIER), stages.verify, ("verifier.json",),
          Resumes.JUDGE_PARTIAL, applies=stages.rechecks_verifier),
)
ITERATION_STAGES = (
    Stage("generate", (*_SAMPLED, "prompts", "prompts_per_iteration", "curriculum", "train.sampler_reference",
                       "train.loss_type"), stages.generate, ("samples.jsonl",), Resumes.ENGINE_JOBS, engine=True),
    Stage("judge_train", ("judge_training", "judge.judge_model", "generation.engine"), stages.judge_train,
          ("judge_training/summary.json",), Resumes.JUDGE_TRAIN_STEPS, applies=lambda r: r.judge_training is not None),
    Stage("judge", ("judge",), stages.judge, ("scored.jsonl",), Resumes.JUDGE_PARTIAL),
    Stage("filter", ("pairs",), stages.filter_pairs, ("pairs.jsonl",), Resumes.RERUN),
    Stage("train", ("train", "seed", "accelerate_config", "train_launcher"), stages.train,
          ("checkpoint/train_summary.json",), Resumes.CHECKPOINT),
    Stage("export", ("export_dtype",), stages.export, ("merged",), Resumes.RERUN),
    EVALUATE,
    *RECHECK_STAGES,
)
UNTIL = tuple(dict.fromkeys(s.name for s in ITERATION_STAGES + BASE_STAGES))  # --until's choices


def plan(recipe: Recipe, run_dir: Path, manifest: Manifest, last: int, until: str | None = None,
         stage_table: tuple[tuple[Stage, ...], tuple[Stage, ...]] = (BASE_STAGES, ITERATION_STAGES),
         **context) -> list[list[Step]]:
    """The run's steps, iteration by iteration (iteration 0, before any training, first): the stages the recipe has,
    up to `until` in the last iteration (a stage of iteration 0 only, like `verify`: that iteration alone).
    `context`: the engines and display every step carries."""
    base_stages, iteration_stages = stage_table
    base_only = until is not None and until not in {stage.name for stage in iteration_stages}
    tables = [(0, base_stages)] + ([] if base_only else [(t, iteration_stages) for t in range(1, last + 1)])
    steps = [[Step(stage, iteration, recipe, run_dir, manifest, **context) for stage in table
              if stage.applies(recipe)] for iteration, table in tables]
    names = [step.stage.name for step in steps[-1]]
    if until in names:
        steps[-1] = steps[-1][:names.index(until) + 1]
    return steps


def run(recipe_path: str | Path, run_dir: str | Path | None = None, force: bool = False, iterations: int | None = None,
        until: str | None = None, on_iteration=None, display: RunDisplay | None = None,
        stage_table: tuple[tuple[Stage, ...], tuple[Stage, ...]] = (BASE_STAGES, ITERATION_STAGES),
        cache: bool = True) -> Path:
    """Run (or resume) the recipe's loop in `run_dir`; `on_iteration(run_dir, manifest)` after each trained
    iteration. `stage_table`: other stages in the same shape (the tests run the loop with stubs). `cache`: the base
    model's engine jobs come from the content-addressed cache when unchanged (selfalign.run.job_cache)."""
    recipe_path = Path(recipe_path)
    recipe, recipe_hash = load_recipe(recipe_path)
    check_inputs(recipe, recipe_path)
    if until is not None and until not in UNTIL:
        raise RecipeError(f"--until {until!r}: choose one of {', '.join(UNTIL)}")
    run_dir = prepare_output(Path(run_dir or Path("runs") / recipe.name), kind="folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    last = min(iterations or recipe.iterations, recipe.iterations)
    display = display or RunDisplay(last)
    # The children end before the lock is released; the lock lists them while they run.
    with run_folder_lock(run_dir) as lock, children.owned_children(on_change=lock.record):
        precision = run_precision(recipe)
        display.message(f"selfalign run {recipe.name}: {last} iteration(s) in {run_dir} (stage logs in "
                        f"{run_dir}/iter_NN/logs/); sampling {precision['sampling']}, training "
                        f"{precision['training']}")
        manifest = _open_manifest(run_dir, recipe, recipe_path, recipe_hash, force)
        manifest.data["precision"] = {name: p.as_dict() for name, p in precision.items()}
        manifest.save()
        engines = EngineClient(run_dir, manifest, keep=keep_engine(recipe), cache_model=recipe.model if cache else None)
        try:
            steps = plan(recipe, run_dir, manifest, last, until, stage_table, engines=engines, display=display)
            try:
                execute([step for iteration in steps for step in iteration],
                        before=lambda step: None if step.stage.engine else engines.release(),
                        after=lambda step: _after(step, steps, on_iteration))
            except RegressionStop as stop:
                display.message(f"stopped: {stop}")
                until = None  # the run is over: record it finished
            if until is None:
                manifest.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
                manifest.save()
            return run_dir
        except BaseException:
            engines.close(now=True)
            raise
        finally:
            engines.close()


class RegressionStop(Exception):
    """An iteration made the policy worse and the recipe says to stop there (`stop_on_regression`)."""


def _after(step: Step, steps: list[list[Step]], on_iteration) -> None:
    """After a trained iteration's last step: its health (against the previous iterate and the base), the caller's
    report, and with `stop_on_regression` the end of the run when it turned worse."""
    if step.iteration == 0 or step is not steps[step.iteration][-1]:
        return
    health = iteration_health(step.run_dir, step.iteration, tuple(step.recipe.eval_sets))
    if health is not None:
        step.manifest.record_health(step.iteration, health)
        summary = describe(health)
        if step.display is not None:
            step.display.message(("WARNING: worse than the previous iterate: " if health["verdict"] == "worse"
                                  else "health: ") + summary)
    if on_iteration is not None:
        on_iteration(step.run_dir, step.manifest)
    if health is not None and health["verdict"] == "worse" and step.recipe.stop_on_regression:
        best = best_iteration(step.run_dir, step.iteration)
        step.manifest.data["stopped"] = {
            "after_iteration": step.iteration, "reason": "stop_on_regression: " + summary,
            "best_iteration": best, "best_model": step.recipe.model if best == 0 else
            str(step.run_dir / f"iter_{best:02d}" / "merged")}
        step.manifest.save()
        raise RegressionStop(f"iteration {step.iteration} is worse than iteration {step.iteration - 1}; "
                             f"the best iterate is iteration {best}: {step.manifest.data['stopped']['best_model']}")


def _open_manifest(run_dir: Path, recipe: Recipe, recipe_path: Path, recipe_hash: str, force: bool) -> Manifest:
    manifest = Manifest(run_dir / "manifest.json")
    if manifest.data.get("recipe_sha256") not in (None, recipe_hash) and not force:
        changes = describe_changes(manifest.data.get("recipe") or {}, recipe.model_dump()) or \
            f"its text: sha256 {manifest.data['recipe_sha256'][:12]} -> {recipe_hash[:12]}"
        raise RecipeError(f"{recipe_path} changed since {run_dir} was started ({changes}); pass --force to continue "
                          "with the new recipe, or use a new run folder")
    manifest.data.update(recipe=recipe.model_dump(), recipe_path=str(recipe_path), recipe_sha256=recipe_hash,
                         versions=package_versions(), seeds={"recipe": recipe.seed})
    manifest.data.setdefault("started", time.strftime("%Y-%m-%dT%H:%M:%S"))
    manifest.save()
    return manifest


def run_precision(recipe: Recipe) -> dict:
    """The precision the run samples and trains in, each with its reason (the same functions the engine and the
    trainer call, so what is printed is what runs)."""
    from selfalign.generation import resolve_engine_name
    from selfalign.precision import Precision, sampling_precision, training_precision

    engine = resolve_engine_name(recipe.generation.engine)
    sampling = sampling_precision(recipe.generation.dtype) if engine == "vllm" else \
        Precision(recipe.generation.dtype, "transformers engine (auto: fp32 on CPU)")
    return {"sampling": sampling, "training": training_precision(recipe.train.bf16)}


def keep_engine(recipe: Recipe) -> bool:
    """One engine for the whole run: the recipe's `keep_engine`, else on CPU yes, on a GPU no (there the idle
    engine would hold the memory the trainer needs)."""
    if recipe.keep_engine is not None:
        return recipe.keep_engine
    import torch

    return not torch.cuda.is_available()
