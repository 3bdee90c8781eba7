"""`selfalign run RECIPE`: the self-alignment loop. Iteration t samples from policy t, scores the samples, builds
preference data, trains policy t+1 against policy t as the reference, exports it merged, and evaluates it.

Each stage writes its outputs atomically, then records itself done in `manifest.json`; a rerun skips what is done,
so a kill at any point loses nothing finished. Generation, judging, training and evaluation run as subprocesses, so a
vLLM engine and the trainer never hold (GPU) memory at once, and training can go through `accelerate launch`.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml
from pydantic import BaseModel

from selfalign import children
from selfalign.errors import SelfAlignError
from selfalign.losses import LOSSES
from selfalign.io import prepare_output, read_jsonl, write_json, write_jsonl
from selfalign.progress import PROGRESS_ENV, RunDisplay, read_progress
from selfalign.run_lock import RunLockedError, run_folder_lock  # noqa: F401 (tests and users import them here)
from selfalign.recipes import Recipe, RecipeError, check_inputs, load_recipe
from selfalign.records import PromptRecord
from selfalign.training.config import TrainConfig
from selfalign.versions import package_versions

STAGES = ("generate", "judge_train", "judge", "filter", "train", "export", "evaluate")  # judge_train: if the recipe asks
UNTIL = STAGES + ("verify",)  # verify: iteration 0's verifier check (selfalign check-verifier stops there)


class Manifest:
    """The run's record: recipe hash, versions, seeds, and each stage's status, counts and wall time."""

    def __init__(self, path: Path):
        self.path = path
        self.data = {}
        if path.exists():
            try:
                self.data = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise StageError(f"{path}: not a readable manifest ({e}); it records which stages are done. Restore "
                                 f"it, or start over in a new folder (--out) or after deleting {path.parent}") from None
            if not isinstance(self.data, dict):
                raise StageError(f"{path}: not a manifest (a JSON object); restore it, or start over in a new "
                                 f"folder (--out)")

    def save(self) -> None:
        write_json(self.path, self.data)

    def stage(self, iteration: int, stage: str) -> dict | None:
        return self.data.get("iterations", {}).get(str(iteration), {}).get("stages", {}).get(stage)

    def mark(self, iteration: int, stage: str, seconds: float, **info) -> None:
        it = self.data.setdefault("iterations", {}).setdefault(str(iteration), {"stages": {}})
        it["stages"][stage] = {"status": "done", "seconds": round(seconds, 1), **info}
        self.save()


def _run(cmd: list[str], log_path: Path, display: RunDisplay | None = None) -> None:
    """A stage subprocess; its output goes to a log file, its progress to the display, and a failure shows the
    log's tail."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    progress_path = log_path.with_suffix(".progress.json")
    progress_path.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", PROGRESS_ENV: str(progress_path)}
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        process = children.start(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            while True:
                try:
                    code = process.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    if display is not None:
                        display.update(read_progress(progress_path))
        except BaseException:  # Ctrl-C, SIGTERM, an error in the display: the stage ends with the run
            children.stop(process)
            raise
        children.forget(process)
    if code != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-25:])
        raise StageError(f"stage command failed (exit {code}): {' '.join(cmd)}\nlog {log_path}:\n{tail}")


class StageError(SelfAlignError, RuntimeError):
    """A stage of the loop failed; the message holds its command and the tail of its log."""


CLI_MODULE = ["-m", "selfalign.cli"]
CLI = [sys.executable, *CLI_MODULE]


def launched(template: str, accelerate: list[str], train: list[str]) -> list[str]:
    """A recipe's `train_launcher` filled in: one shell command that starts `accelerate` + `train` on every node.
    Each part is shell-quoted; the template's own text ($SLURM_NODEID, ...) is left for the nodes' shells."""
    return ["bash", "-c", template.replace("{accelerate}", shlex.join(accelerate)).replace("{train}",
                                                                                          shlex.join(train))]


def run_stage(command: list[str], config: BaseModel, it_dir: Path, launch=None, display: RunDisplay | None = None,
              **arguments) -> None:
    """Run one subprocess stage the same way for every stage: its typed config written to iter_NN/config/, passed as
    `--config`, and only paths and run-level values as options. Recipe and CLI share the config models, so neither
    can set a field the other lacks. `launch` turns the selfalign module's arguments into the command that runs them
    (default: this Python; the train stage: accelerate's launch, on one node or, via `train_launcher`, on many)."""
    name = "-".join(command)
    config_path = it_dir / "config" / f"{name}.yaml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    options = [item for key, value in arguments.items() for item in (f"--{key.replace('_', '-')}", str(value))]
    args = command + ["--config", str(config_path)] + options
    _run(launch(args) if launch else CLI + args, it_dir / "logs" / f"{name}.log", display)


def policy_of(run_dir: Path, recipe: Recipe, iteration: int) -> str:
    """Policy t: the base model for t = 1, else the merged export of iteration t - 1."""
    return recipe.model if iteration == 1 else str(run_dir / f"iter_{iteration - 1:02d}" / "merged")


def generate_job(recipe: Recipe, it_dir: Path, iteration: int):
    """Iteration t's sampling job: its slice of the prompts (answers stripped) written to iter_NN/prompts.jsonl."""
    from selfalign.policy_jobs import GenerateJob
    from selfalign.training.data import record_kind

    it_dir.mkdir(parents=True, exist_ok=True)
    prompts = read_jsonl(recipe.prompts, PromptRecord)
    size = recipe.prompts_per_iteration or len(prompts)
    start = ((iteration - 1) * size) % len(prompts)
    chosen = (prompts + prompts)[start:start + min(size, len(prompts))]
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


def verifier_job(recipe: Recipe, it_dir: Path):
    """The verifier check's sampling job: the first `verifier_check` held-out prompts, sampled as the recipe samples
    its training prompts (answers stripped; they are read back only to measure)."""
    from selfalign.policy_jobs import GenerateJob

    it_dir.mkdir(parents=True, exist_ok=True)
    prompts = [p for p in read_jsonl(recipe.eval.data, PromptRecord) if p.answer is not None][:recipe.verifier_check]
    path = it_dir / "verifier_prompts.jsonl"
    write_jsonl(path, [p.model_copy(update={"answer": None}) for p in prompts])
    config = recipe.generation.model_copy(update={"seed": recipe.seed, "record_logprobs": False})
    return GenerateJob(config=config, prompts=str(path), out=str(it_dir / "verifier_samples.jsonl"))


def checks_verifier(recipe: Recipe) -> bool:
    return bool(recipe.verifier_check and recipe.eval is not None and recipe.pairs.mode in ("pairs", "scpo"))


def heldout_job(recipe: Recipe, it_dir: Path):
    from selfalign.policy_jobs import HeldoutJob

    return HeldoutJob(config=recipe.eval, seed=recipe.seed, out=str(it_dir / "eval.json"))


class PolicyEngine:
    """Where the loop's sampling and evaluation jobs run: one `selfalign policy-jobs` subprocess per call (its engine
    starts each time), or with `keep`, one engine server for the whole run that loads each new policy's weights in
    place. Jobs already done are skipped without starting anything."""

    def __init__(self, run_dir: Path, manifest: Manifest, keep: bool):
        self.run_dir, self.manifest, self.keep = run_dir, manifest, keep
        self.server: subprocess.Popen | None = None

    def run(self, policy: str, jobs: list, seed: int, generation, it_dir: Path, name: str,
            display: RunDisplay | None = None) -> list[dict]:
        """`generation`: the recipe's GenerationConfig, whose engine and layout the jobs run on."""
        from selfalign.policy_jobs import PolicyJobs, finished

        spec = PolicyJobs(model=policy, engine=generation.engine, options=generation.engine_options(), seed=seed,
                          jobs=jobs)
        if any(finished(job, policy) is None for job in jobs):
            config_path = it_dir / "config" / f"{name}.yaml"
            config_path.parent.mkdir(parents=True, exist_ok=True)
            config_path.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
            log_path = it_dir / "logs" / f"{name}.log"
            if self.keep:
                self._serve(config_path, log_path, display)
            else:
                self._count_start()
                _run(CLI + ["policy-jobs", "--jobs", str(config_path)], log_path, display)
        return [finished(job, policy) for job in jobs]

    def _count_start(self) -> None:
        self.manifest.data["engine_starts"] = self.manifest.data.get("engine_starts", 0) + 1
        self.manifest.save()

    def _serve(self, config_path: Path, log_path: Path, display: RunDisplay | None) -> None:
        server_log = self.run_dir / "logs" / "engine.log"
        if self.server is None or self.server.poll() is not None:
            server_log.parent.mkdir(parents=True, exist_ok=True)
            self._count_start()
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            self.server = children.start(CLI + ["policy-jobs", "--serve"], stdin=subprocess.PIPE, text=True,
                                         stdout=open(server_log, "a"), stderr=subprocess.STDOUT, env=env)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as log:
            log.write(f"\n{config_path}: run by the run's engine server, whose log is {server_log}\n")
        result_path = Path(str(config_path) + ".result.json")
        progress_path = log_path.with_suffix(".progress.json")
        result_path.unlink(missing_ok=True)
        progress_path.unlink(missing_ok=True)
        self.server.stdin.write(json.dumps({"jobs": str(config_path), "progress": str(progress_path)}) + "\n")
        self.server.stdin.flush()
        while not result_path.exists():
            if self.server.poll() is not None:
                raise StageError(f"the engine server exited (code {self.server.returncode}) while running "
                                 f"{config_path}\nlog {server_log}:\n{_tail(server_log)}")
            if display is not None:
                display.update(read_progress(progress_path))
            time.sleep(0.5)
        result = json.loads(result_path.read_text())
        if not result["ok"]:
            raise StageError(f"{config_path}: {result['error']}\nlog {server_log}:\n{_tail(server_log)}")

    def close(self, now: bool = False) -> None:
        """End the server: closing its input ends its loop (after the job in hand), which closes the engine; `now`
        (the run is stopping on an error or a signal) ends its process group at once."""
        if self.server is None:
            return
        if now:
            children.stop(self.server)
            self.server = None
            return
        try:
            self.server.stdin.close()
            self.server.wait(timeout=120)
            children.forget(self.server)
        except (OSError, subprocess.TimeoutExpired):
            children.stop(self.server)
        self.server = None


def _tail(path: Path, lines: int = 25) -> str:
    return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:]) if path.exists() else ""


def stage_generate(recipe: Recipe, run_dir: Path, it_dir: Path, iteration: int, engines: PolicyEngine,
                   display: RunDisplay | None = None) -> dict:
    job = generate_job(recipe, it_dir, iteration)
    [marker] = engines.run(policy_of(run_dir, recipe, iteration), [job], job.config.seed, job.config, it_dir,
                           "generate", display)
    return {"prompts": marker["prompts"], "samples": marker["samples"], "engine_seconds": marker["seconds"]}


def judge_of(run_dir: Path, recipe: Recipe, iteration: int) -> str:
    """With judge_training, judge t is the judge trained in iteration t (judge 0: judge.judge_model, 'policy' meaning
    the base model); without, the configured judge ('policy': the policy being trained, as in self-rewarding)."""
    if recipe.judge_training is not None:
        if iteration == 0:
            return recipe.model if recipe.judge.judge_model == "policy" else recipe.judge.judge_model
        return str(run_dir / f"iter_{iteration:02d}" / "judge_training" / "iter_01" / "merged")
    return policy_of(run_dir, recipe, iteration) if recipe.judge.judge_model == "policy" else recipe.judge.judge_model


def stage_judge_train(recipe: Recipe, run_dir: Path, it_dir: Path, iteration: int,
                      display: RunDisplay | None = None) -> dict:
    """One Self-Taught Evaluator round on this iteration's prompts: judge t-1 -> judge t (selfalign judge-train)."""
    out = it_dir / "judge_training"
    run_stage(["judge-train"], recipe.judge_training, it_dir, display=display, prompts=it_dir / "prompts.jsonl",
              out=out, judge_model=judge_of(run_dir, recipe, iteration - 1), engine=recipe.generation.engine)
    summary = json.loads((out / "summary.json").read_text())
    before, after = summary["iterations"]["0"], summary["iterations"]["1"]
    return {"judge": after["judge"], "records": after["train_records"], "accuracy_before": before["accuracy"],
            "accuracy": after["accuracy"], "accuracy_ci95": after["accuracy_ci95"],
            "position_consistency": after["position_consistency"], "heldout_pairs": after["pairs"]}


def stage_judge(recipe: Recipe, run_dir: Path, it_dir: Path, iteration: int,
                display: RunDisplay | None = None) -> dict:
    config = recipe.judge.model_copy(update={"judge_model": judge_of(run_dir, recipe, iteration)})
    run_stage(["judge"], config, it_dir, display=display, samples=it_dir / "samples.jsonl", out=it_dir / "scored.jsonl")
    return json.loads((it_dir / "scored.report.json").read_text())


def stage_filter(recipe: Recipe, run_dir: Path, it_dir: Path, iteration: int) -> dict:
    from selfalign.pairs import build_preferences
    from selfalign.records import ScoredSample

    records, report = build_preferences(read_jsonl(it_dir / "scored.jsonl", ScoredSample), recipe.pairs)
    if not records:
        raise StageError(f"iteration {iteration}: no preference data survived the filters: {report}")
    write_jsonl(it_dir / "pairs.jsonl", records)
    write_json(it_dir / "pairs.report.json", report)
    return report


def stage_train(recipe: Recipe, run_dir: Path, it_dir: Path, iteration: int,
                display: RunDisplay | None = None) -> dict:
    values = {**recipe.train.model_dump(), "model": policy_of(run_dir, recipe, iteration)}
    if "seed" not in recipe.train.model_fields_set:
        values["seed"] = recipe.seed + iteration
    launch = None
    if recipe.accelerate_config:
        accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", recipe.accelerate_config]
        if recipe.train_launcher:
            launch = lambda args: launched(recipe.train_launcher, accelerate, CLI_MODULE + args)  # noqa: E731
        else:
            launch = lambda args: accelerate + CLI_MODULE + args  # noqa: E731
    run_stage(["train"], TrainConfig.model_validate(values), it_dir, launch=launch, display=display,
              pairs=it_dir / "pairs.jsonl", out=it_dir / "checkpoint")
    summary = json.loads((it_dir / "checkpoint" / "train_summary.json").read_text())
    return {"steps": summary["steps"], "final_metrics": summary["final_metrics"],
            "reference": summary.get("reference", {})}


def stage_export(recipe: Recipe, run_dir: Path, it_dir: Path, iteration: int, manifest: Manifest) -> dict:
    from selfalign.export import export

    info = {"name": f"{recipe.name} iteration {iteration}", "recipe": recipe.name,
            "recipe_sha256": manifest.data.get("recipe_sha256"), "iteration": iteration,
            "loss_type": recipe.train.loss_type,
            "hyperparameters": {k: v for k, v in recipe.train.model_dump(exclude={"model"}).items()
                                if not isinstance(v, (dict, list))},
            "data_counts": {str(t): {s: v.get("records", v.get("samples")) for s, v in it["stages"].items()
                                     if isinstance(v, dict) and (v.get("records") or v.get("samples"))}
                            for t, it in manifest.data.get("iterations", {}).items()},
            "evaluation": {str(t): {k: v for k, v in (it["stages"].get("evaluate") or {}).items()
                                    if isinstance(v, float)} for t, it in manifest.data.get("iterations", {}).items()}}
    from selfalign.reporting import accuracy_intervals

    info["intervals"] = {}
    for t in info["evaluation"]:
        evaluation = run_dir / f"iter_{int(t):02d}" / "eval.json"
        if evaluation.exists():
            # accuracy_intervals says "majority"; the evaluation stage records it as majority_at_<k>
            majority = next((k for k in info["evaluation"][t] if k.startswith("majority_at_")), "majority")
            intervals = accuracy_intervals(json.loads(evaluation.read_text()))
            info["intervals"][t] = {majority if k == "majority" else k: v for k, v in intervals.items()}
    info["base_model"] = recipe.model
    result = export(it_dir / "checkpoint", it_dir / "merged", dtype=recipe.export_dtype, force=True, card_info=info)
    return {"max_logit_diff": result["max_logit_diff"]}


def stage_evaluate(recipe: Recipe, run_dir: Path, it_dir: Path, iteration: int, engines: PolicyEngine,
                   display: RunDisplay | None = None, sample_next: bool = False, verifier: bool = False) -> dict:
    """Evaluate policy t+1; with `verifier` (iteration 0), the same engine also samples the verifier check's
    held-out prompts, and with `sample_next` iteration t+1's data (those stages then find their samples done)."""
    it_dir.mkdir(parents=True, exist_ok=True)
    jobs, seed = [heldout_job(recipe, it_dir)], recipe.seed
    if verifier:
        jobs.append(verifier_job(recipe, it_dir))
    if sample_next:
        jobs.append(generate_job(recipe, run_dir / f"iter_{iteration + 1:02d}", iteration + 1))
        seed = jobs[-1].config.seed
    markers = engines.run(policy_of(run_dir, recipe, iteration + 1), jobs, seed, recipe.generation, it_dir,
                          "evaluate", display)
    result = json.loads((it_dir / "eval.json").read_text())
    info = {k: v for k, v in result.items() if not isinstance(v, list)}
    if sample_next:
        info["next_samples_seconds"] = markers[-1]["seconds"]
    return info


def stage_verify(recipe: Recipe, run_dir: Path, it_dir: Path, engines: PolicyEngine,
                 display: RunDisplay | None = None) -> dict:
    """The verifier check: the recipe's judge and filters on held-out prompts, compared with their answers and with
    the base policy's greedy answers (selfalign.verifier_check). Says at once when the verifier is not stronger."""
    from selfalign.records import ScoredSample, prompt_id_of
    from selfalign.verifier_check import diagnose

    job = verifier_job(recipe, it_dir)
    engines.run(recipe.model, [job], recipe.seed, recipe.generation, it_dir, "verify-sample", display)
    # The judge that iteration 1 will use (with judge training, the starting judge: the one not trained yet).
    config = recipe.judge.model_copy(update={"judge_model": judge_of(run_dir, recipe, 0 if recipe.judge_training
                                                                     else 1)})
    scored_path = it_dir / "verifier_scored.jsonl"
    run_stage(["judge"], config, it_dir, display=display, samples=job.out, out=scored_path)
    held_out = [p for p in read_jsonl(recipe.eval.data, PromptRecord) if p.answer is not None]
    answers = {prompt_id_of(p, i): p.answer for i, p in enumerate(held_out[:recipe.verifier_check])}
    evaluation = json.loads((it_dir / "eval.json").read_text())
    greedy = {prompt_id_of(p, i): bool(c) for i, (p, c) in enumerate(zip(held_out, evaluation["greedy_correct"]))}
    result = diagnose(read_jsonl(scored_path, ScoredSample), answers, recipe.pairs, greedy)
    write_json(it_dir / "verifier.json", result)
    if display is not None:
        display.message(("verifier check: " if result["verdict"] == "stronger" else "WARNING: ") +
                        result["explanation"])
    return {k: v for k, v in result.items() if k != "filter_report"}


def run(recipe_path: str | Path, run_dir: str | Path | None = None, force: bool = False, iterations: int | None = None,
        until: str | None = None, on_iteration=None, display: RunDisplay | None = None) -> Path:
    recipe_path = Path(recipe_path)
    recipe, recipe_hash = load_recipe(recipe_path)
    check_inputs(recipe, recipe_path)
    if until is not None and until not in UNTIL:
        raise RecipeError(f"--until {until!r}: choose one of {', '.join(UNTIL)}")
    run_dir = prepare_output(Path(run_dir or Path("runs") / recipe.name), kind="folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    last = min(iterations or recipe.iterations, recipe.iterations)
    display = display or RunDisplay(last)
    with run_folder_lock(run_dir), children.owned_children():  # children end before the lock is released
        display.message(f"selfalign run {recipe.name}: {last} iteration(s) in {run_dir} (stage logs in "
                        f"{run_dir}/iter_NN/logs/)")
        return _run_locked(recipe, recipe_path, recipe_hash, run_dir, force, last, until, on_iteration, display)


def _run_locked(recipe: Recipe, recipe_path: Path, recipe_hash: str, run_dir: Path, force: bool, last: int,
                until: str | None, on_iteration, display: RunDisplay) -> Path:
    manifest = Manifest(run_dir / "manifest.json")
    if manifest.data.get("recipe_sha256") not in (None, recipe_hash) and not force:
        raise RecipeError(f"{recipe_path} changed since {run_dir} was started (sha256 {manifest.data['recipe_sha256'][:12]}"
                          f" -> {recipe_hash[:12]}); pass --force to continue with the new recipe, or use a new run folder")
    manifest.data.update(recipe=recipe.model_dump(), recipe_path=str(recipe_path), recipe_sha256=recipe_hash,
                         versions=package_versions(), seeds={"recipe": recipe.seed})
    manifest.data.setdefault("started", time.strftime("%Y-%m-%dT%H:%M:%S"))
    manifest.save()

    engines = PolicyEngine(run_dir, manifest, keep=keep_engine(recipe))
    try:
        if recipe.eval is not None:  # iteration 0: the base policy's numbers, to measure gains against
            base_dir, verify = run_dir / "iter_00", checks_verifier(recipe)
            # With a verifier check, its verdict comes before iteration 1's sampling is spent: the base request
            # carries the evaluation and the check's samples only (a kept engine then serves iteration 1 as well).
            _do(manifest, display, 0, "evaluate",
                lambda: stage_evaluate(recipe, run_dir, base_dir, 0, engines, display, verifier=verify,
                                       sample_next=not verify and until != "verify"
                                       and _sample_next(manifest, 0, last)))
            if verify:
                _do(manifest, display, 0, "verify", lambda: stage_verify(recipe, run_dir, base_dir, engines, display))
        if until == "verify":
            return run_dir
        for iteration in range(1, last + 1):
            it_dir = run_dir / f"iter_{iteration:02d}"
            steps = {
                "generate": lambda: stage_generate(recipe, run_dir, it_dir, iteration, engines, display),
                "judge_train": lambda: stage_judge_train(recipe, run_dir, it_dir, iteration, display),
                "judge": lambda: stage_judge(recipe, run_dir, it_dir, iteration, display),
                "filter": lambda: stage_filter(recipe, run_dir, it_dir, iteration),
                "train": lambda: stage_train(recipe, run_dir, it_dir, iteration, display),
                "export": lambda: stage_export(recipe, run_dir, it_dir, iteration, manifest),
                "evaluate": lambda: (stage_evaluate(recipe, run_dir, it_dir, iteration, engines, display,
                                                    sample_next=_sample_next(manifest, iteration, last))
                                     if recipe.eval else {"skipped": True}),
            }
            for stage in STAGES:
                if stage == "judge_train" and recipe.judge_training is None:
                    continue
                _do(manifest, display, iteration, stage, steps[stage])
                if until == stage and iteration == last:
                    return run_dir
            if on_iteration is not None:
                on_iteration(run_dir, manifest)
        manifest.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        manifest.save()
        return run_dir
    except BaseException:
        engines.close(now=True)
        raise
    finally:
        engines.close()


def keep_engine(recipe: Recipe) -> bool:
    """One engine for the whole run: the recipe's `keep_engine`, else on CPU yes, on a GPU no (there the idle
    engine would hold the memory the trainer needs)."""
    if recipe.keep_engine is not None:
        return recipe.keep_engine
    import torch

    return not torch.cuda.is_available()


def _sample_next(manifest: Manifest, iteration: int, last: int) -> bool:
    """Whether evaluating policy t+1 should also sample iteration t+1's data on the same engine."""
    return iteration < last and not manifest.stage(iteration + 1, "generate")


def _do(manifest: Manifest, display: RunDisplay, iteration: int, stage: str, work) -> None:
    display.start(iteration, stage)
    if manifest.stage(iteration, stage):
        display.done({}, 0.0, skipped=True)
        return
    started = time.perf_counter()
    try:
        info = work() or {}
    except BaseException:
        display.failed(time.perf_counter() - started)
        raise
    seconds = time.perf_counter() - started
    manifest.mark(iteration, stage, seconds, **info)
    display.done(info, seconds)
