"""The run's engine server: one engine that runs the loop's sampling and evaluation jobs, in its own process.

Two halves, in this one module:
- the server (`python -m selfalign.run.engine_server`, its log in `logs/engine.log`): reads one request per line on
  its input, each naming a job file (`EngineRequest`: a policy, the engine and its layout, and jobs on that policy),
  runs the unfinished jobs on its one engine, loading each new policy's weights in place, and answers in a result
  file. A request whose engine or layout differs from the running engine's is refused: the engine was started for
  the first one's.
- the client (`EngineClient`), which the loop's sampling steps call: it starts the server when a job is left to do
  and ends it before a step that does not sample, unless the run keeps it (a CPU's default: an engine start costs
  more than its idle memory; on a GPU the judge and the trainer need the memory).

Why one engine: the evaluation of policy t+1 (ending iteration t) and the sampling for iteration t+1 use the same
weights, as do the base evaluation and the verifier's samples; a vLLM engine start is half a minute to over a minute
on CPU, the largest fixed cost of a stage. Each job still writes its own output atomically and, after it, a marker
(`OUT.job.json`) holding the job's fingerprint; a job whose marker matches is skipped, so a kill between jobs loses
only the unfinished one. With `cache`, finished jobs of the base model come from the content-addressed cache
(selfalign.run.job_cache) and a run whose jobs are all cached starts no engine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from selfalign import yaml_io
from selfalign.evaluation.heldout import HeldoutConfig
from selfalign.generation import EngineName, GenerationConfig
from selfalign.generation.options import EngineOptions
from selfalign.errors import StageError
from selfalign.io import fingerprint, write_json, write_jsonl
from selfalign.progress import read_progress
from selfalign.run import children
from selfalign.run.job_cache import job_key, restore, store
from selfalign.run.stage_runner import tail

SERVER_MODULE = "selfalign.run.engine_server"


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


# A sampling job's config is a whole GenerationConfig, whose layout fields are the request's: the request file holds
# them once (`engine`, `options`), and each job's config takes them from there when read back.
LAYOUT_FIELDS = ("engine", *EngineOptions.model_fields)


class EngineRequest(BaseModel):
    """The jobs of one policy, in order, and the engine (kind and layout) they run on."""

    model_config = ConfigDict(extra="forbid")
    model: str
    engine: EngineName = "auto"
    options: EngineOptions = Field(default_factory=EngineOptions, description="the engine's layout (parallelism, "
                                   "memory, dtype, engine_kwargs)")
    seed: int = Field(0, description="the engine's seed (vLLM seeds the engine, not each request)")
    cache: bool = Field(False, description="take finished jobs from the content-addressed cache and store new ones "
                        "there (selfalign.run.job_cache)")
    jobs: list[Job]

    @model_validator(mode="before")
    @classmethod
    def _jobs_take_the_layout(cls, data):
        if not isinstance(data, dict):
            return data
        options = data.get("options") or {}
        layout = {"engine": data.get("engine", "auto"),
                  **(options.model_dump() if isinstance(options, BaseModel) else options)}
        jobs = [{**job, "config": {**layout, **job["config"]}}
                if isinstance(job, dict) and job.get("kind") == "generate" and isinstance(job.get("config"), dict)
                else job for job in data.get("jobs", [])]
        return {**data, "jobs": jobs}

    def layout(self) -> dict:
        """The engine and its options, as one mapping (what a running engine was built for)."""
        return {"engine": self.engine, **self.options.model_dump(mode="json")}

    @model_validator(mode="after")
    def _one_layout(self):
        layout = self.layout()
        for job in self.jobs:
            if isinstance(job, GenerateJob):
                differs = [name for name in LAYOUT_FIELDS if getattr(job.config, name) != layout[name]]
                if differs:
                    raise ValueError(f"the job writing {job.out} sets {', '.join(differs)} other than the request's "
                                     "engine and options: one request runs on one engine")
        return self

    def file_data(self) -> dict:
        """What the request file holds: the layout once (the sampling jobs' configs without it)."""
        data = self.model_dump(mode="json")
        for job in data["jobs"]:
            if job["kind"] == "generate":
                job["config"] = {k: v for k, v in job["config"].items() if k not in LAYOUT_FIELDS}
        return data


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


def run_jobs(spec: EngineRequest, console=None, engine=None) -> list[dict]:
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


def restore_cached(spec: EngineRequest, console=None) -> None:
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
    """The server's loop: one engine for a whole run (or, without `keep_engine`, for consecutive sampling steps).
    Each line of `requests` (the client writes them to stdin) is {"jobs": FILE, "progress": FILE}; the jobs run on
    the engine, switched to their policy in place, and FILE.result.json says {"ok": true} or {"ok": false, "error":
    ...}. Ends at the end of input (the client closed it, or died)."""
    import traceback

    from selfalign.config_files import load_config
    from selfalign.generation import get_engine
    from selfalign.progress import PROGRESS_ENV

    engine, layout = None, None
    try:
        for line in requests:
            if not line.strip():
                continue
            request = json.loads(line)
            jobs_path = Path(request["jobs"])
            try:
                spec = load_config(EngineRequest, jobs_path, {})  # a bad file: its path and field in the error
                os.environ[PROGRESS_ENV] = request.get("progress", "")
                if engine is not None:
                    refuse_other_layout(layout, spec, jobs_path)
                restore_cached(spec, console)  # before the engine starts: a run whose jobs are all cached needs none
                if engine is None and any(finished(job, spec.model) is None for job in spec.jobs):
                    engine = get_engine(spec.engine, spec.model, seed=spec.seed, options=spec.options)
                    layout = spec
                run_jobs(spec, console, engine=engine)
                result = {"ok": True}
            except Exception as e:  # reported to the client, which stops the run; the server may serve a rerun
                traceback.print_exc()
                result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            write_json(Path(str(jobs_path) + ".result.json"), result)
    finally:
        if engine is not None:
            engine.close()


def refuse_other_layout(running: EngineRequest, request: EngineRequest, path: Path) -> None:
    """The running engine was built for `running`'s engine and layout; a request for another cannot run on it."""
    from selfalign.io import describe_changes

    before, after = running.layout(), request.layout()
    if before != after:
        raise ValueError(f"{path}: its engine layout is not the running engine's ({describe_changes(before, after)}, "
                         "'there' being the running engine); a run uses one layout for all its sampling")


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
    """`python -m selfalign.run.engine_server`: serve the job files named on standard input (started by the client)."""
    from selfalign.cli_utils import console, setup_logging

    setup_logging()
    serve(sys.stdin, console)


class EngineClient:
    """The loop's handle on its engine server: `run` sends a request and waits for it, showing the server's
    progress; `release` and `close` end the server."""

    def __init__(self, run_dir: Path, manifest, keep: bool, cache_model: str | None = None):
        """`cache_model`: requests on this policy (the run's base model) go through the job cache."""
        self.run_dir, self.manifest, self.keep, self.cache_model = run_dir, manifest, keep, cache_model
        self.server: subprocess.Popen | None = None

    def run(self, request: EngineRequest, it_dir: Path, name: str, display=None) -> list[dict]:
        """Run the request's unfinished jobs; each job's marker. The request file is iter_NN/config/NAME.yaml, its
        log iter_NN/logs/NAME.log."""
        request = request.model_copy(update={"cache": request.model == self.cache_model})
        jobs, policy = request.jobs, request.model
        if any(finished(job, policy) is None for job in jobs):
            restore_cached(request)  # here, not in the server: a run whose jobs are all cached starts no engine
        if any(finished(job, policy) is None for job in jobs):
            config_path = it_dir / "config" / f"{name}.yaml"
            yaml_io.write(config_path, request.file_data())
            self._send(config_path, it_dir / "logs" / f"{name}.log", display)
        markers = [finished(job, policy) for job in jobs]
        for job, marker in zip(jobs, markers):
            if display is not None and marker and marker.get("cached"):
                display.message(f"{name}: {job.out} taken from the cache ({marker['cached']}: same weights, data, "
                                f"settings, engine and precision; it took {marker['seconds']:.0f}s to compute; "
                                "--no-cache recomputes)")
        return markers

    def _start(self, server_log: Path) -> None:
        server_log.parent.mkdir(parents=True, exist_ok=True)
        self.manifest.data["engine_starts"] = self.manifest.data.get("engine_starts", 0) + 1
        self.manifest.save()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.server = children.start([sys.executable, "-m", SERVER_MODULE], stdin=subprocess.PIPE, text=True,
                                     stdout=open(server_log, "a"), stderr=subprocess.STDOUT, env=env)

    def _send(self, config_path: Path, log_path: Path, display) -> None:
        server_log = self.run_dir / "logs" / "engine.log"
        if self.server is None or self.server.poll() is not None:
            self._start(server_log)
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
                                 f"{config_path}\nlog {server_log}:\n{tail(server_log)}")
            if display is not None:
                display.update(read_progress(progress_path))
            time.sleep(0.5)
        result = json.loads(result_path.read_text())
        if not result["ok"]:
            raise StageError(f"{config_path}: {result['error']}\nlog {server_log}:\n{tail(server_log)}")

    def release(self) -> None:
        """Before a step that does not sample: end the engine unless the run keeps it."""
        if not self.keep:
            self.close()

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


if __name__ == "__main__":
    main()
