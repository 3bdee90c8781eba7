"""Several generation jobs on one policy, from one engine: the loop's engine server (`python -m selfalign.policy_jobs`).

The loop's evaluation of policy t+1 (ending iteration t) and its sampling for iteration t+1 use the same weights, so
they share one engine: a vLLM engine start is half a minute to over a minute on CPU, the largest fixed cost of a
stage. Each job still writes its own output atomically and, after it, a marker (`OUT.job.json`) holding the job's
fingerprint; a job whose marker matches is skipped, so a kill between jobs loses only the unfinished one. The engine
loads only when some job is left to do.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from selfalign.evaluation.heldout import HeldoutConfig
from selfalign.generation import EngineName, GenerationConfig
from selfalign.generation.options import EngineOptions
from selfalign.io import fingerprint, write_json, write_jsonl
from selfalign.job_cache import job_key, restore, store


class GenerateJob(BaseModel):
    """Sample `config.n` completions per prompt of `prompts` into `out` (the generate stage)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["generate"] = "generate"
    config: GenerationConfig
    prompts: str
    out: str


class HeldoutJob(BaseModel):
    """Held-out accuracy of the policy into `out` (the evaluate stage)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["eval-heldout"] = "eval-heldout"
    config: HeldoutConfig
    seed: int = 0
    out: str


Job = Annotated[Union[GenerateJob, HeldoutJob], Field(discriminator="kind")]


class PolicyJobs(BaseModel):
    """The jobs of one policy, in order, and how to start its engine."""

    model_config = ConfigDict(extra="forbid")
    model: str
    engine: EngineName = "auto"
    options: EngineOptions = Field(default_factory=EngineOptions, description="the engine's layout (parallelism, "
                                   "memory, dtype, engine_kwargs)")
    seed: int = Field(0, description="the engine's seed (vLLM seeds the engine, not each request)")
    cache: bool = Field(False, description="take finished jobs from the content-addressed cache and store new ones "
                        "there (selfalign.job_cache)")
    jobs: list[Job]


def job_fingerprint(job: GenerateJob | HeldoutJob, model: str) -> str:
    """What a job's output depends on: the job's settings, the policy and the input prompts' content."""
    source = Path(job.prompts if isinstance(job, GenerateJob) else job.config.data)
    return fingerprint({"job": job.model_dump(mode="json"), "model": model}, files=[source] if source.exists() else [])


def marker_path(job: GenerateJob | HeldoutJob) -> Path:
    return Path(job.out + ".job.json")


def finished(job: GenerateJob | HeldoutJob, model: str) -> dict | None:
    """The job's marker when its output is complete and from these settings, else None."""
    marker = marker_path(job)
    if not (marker.exists() and Path(job.out).exists()):
        return None
    try:
        info = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return info if info.get("fingerprint") == job_fingerprint(job, model) else None


def run_jobs(spec: PolicyJobs, console=None, engine=None) -> list[dict]:
    """Run every unfinished job on one engine (this one, switched to the spec's policy, or a new one that is closed
    after); returns each job's marker (its counts and seconds)."""
    from selfalign.generation import get_engine

    restore_cached(spec, console)
    todo = [job for job in spec.jobs if finished(job, spec.model) is None]
    own, load_seconds = engine is None, 0.0
    if todo:
        started = time.perf_counter()
        if engine is None:
            engine = get_engine(spec.engine, spec.model, seed=spec.seed, options=spec.options)
        else:
            engine.load_policy(spec.model)
        load_seconds = time.perf_counter() - started
        if console:
            console.print(f"{engine.name} engine on {spec.model} ready in {load_seconds:.1f}s; {len(todo)} job(s)")
    try:
        for job in todo:
            started = time.perf_counter()
            info = _run_one(engine, job, spec.model)
            info.update(fingerprint=job_fingerprint(job, spec.model), seconds=round(time.perf_counter() - started, 1),
                        engine=engine.name, engine_load_seconds=round(load_seconds, 1))
            write_json(marker_path(job), info)  # after the output: a marker always means a complete output
            if spec.cache and (key := job_key(spec, job)) is not None:
                store(key, job, info)
            if console:
                console.print(f"{job.kind} -> {job.out}: {info}")
    finally:
        if own and engine is not None:
            engine.close()
    return [finished(job, spec.model) for job in spec.jobs]


def restore_cached(spec: PolicyJobs, console=None) -> None:
    """With `spec.cache`: each unfinished job found in the cache is copied into place with its marker, which says
    where it came from (`cached`); the engine then runs only the rest."""
    if not spec.cache:
        return
    for job in spec.jobs:
        if finished(job, spec.model) is not None or (key := job_key(spec, job)) is None:
            continue
        info = restore(key, job)
        if info is not None:
            write_json(marker_path(job), {**info, "fingerprint": job_fingerprint(job, spec.model)})
            if console:
                console.print(f"{job.kind} -> {job.out}: taken from the cache {info['cached']}")


def serve(requests, console) -> None:
    """The engine server: one engine for a whole run (or, without `keep_engine`, for consecutive sampling steps).
    Each line of `requests` (the loop writes them to stdin) is {"jobs": FILE, "progress": FILE}; the jobs run on the
    engine, switched to their policy in place, and FILE.result.json says {"ok": true} or {"ok": false, "error": ...}.
    Ends at the end of input (the loop closed it, or died)."""
    import traceback

    from selfalign.config_files import load_config
    from selfalign.generation import get_engine
    from selfalign.progress import PROGRESS_ENV

    engine, kind = None, None
    try:
        for line in requests:
            if not line.strip():
                continue
            request = json.loads(line)
            jobs_path = Path(request["jobs"])
            try:
                spec = load_config(PolicyJobs, jobs_path, {})  # a bad file: its path and field in the error
                os.environ[PROGRESS_ENV] = request.get("progress", "")
                restore_cached(spec, console)  # before the engine starts: a run whose jobs are all cached needs none
                if engine is None and any(finished(job, spec.model) is None for job in spec.jobs):
                    engine = get_engine(spec.engine, spec.model, seed=spec.seed, options=spec.options)
                    kind = spec.engine
                elif engine is not None and spec.engine != kind:
                    raise ValueError(f"this engine server runs engine {kind!r}, not {spec.engine!r}")
                run_jobs(spec, console, engine=engine)
                result = {"ok": True}
            except Exception as e:  # reported to the loop, which stops the run; the server may serve a rerun
                traceback.print_exc()
                result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            write_json(Path(str(jobs_path) + ".result.json"), result)
    finally:
        if engine is not None:
            engine.close()


def _run_one(engine, job: GenerateJob | HeldoutJob, model: str) -> dict:
    from selfalign.io import read_jsonl, require_records
    from selfalign.records import PromptRecord

    if isinstance(job, GenerateJob):
        from selfalign.generation import prompt_ids

        records = require_records(read_jsonl(job.prompts, PromptRecord), job.prompts, "prompts")
        prompt_ids(records, job.prompts)
        samples = engine.generate(records, job.config.sampling(), progress=True)
        write_jsonl(job.out, samples)
        return {"prompts": len(records), "samples": len(samples), "tokens": sum(s.num_tokens for s in samples)}
    from selfalign.evaluation.heldout import evaluate_heldout

    result = evaluate_heldout(engine, read_jsonl(job.config.data, PromptRecord), job.config, seed=job.seed,
                              policy=model)
    from selfalign.evaluation.files import write_heldout

    write_heldout(job.out, {"model": model, "engine": engine.name}, result)
    return {"prompts": result["num_prompts"]}


def main() -> None:
    """`python -m selfalign.policy_jobs`: serve the job files named on standard input (started by the loop)."""
    import sys

    from selfalign.cli_utils import console, setup_logging

    setup_logging()
    serve(sys.stdin, console)


if __name__ == "__main__":
    main()
