"""Where the loop's sampling and evaluation jobs run: an engine server behind the executor, never a user command.

`python -m selfalign.policy_jobs` keeps one engine and runs the job files the loop names on its input, loading each
new policy's weights in place. Consecutive steps that sample share it (the base evaluation and the verifier's
samples; the evaluation that ends iteration t and the sampling that starts t+1, the same policy). With `keep` it
also stays through judging and training (a CPU's default: an engine start costs more than its idle memory); without,
`release` ends it before a step that does not sample, so the judge and the trainer get the (GPU) memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from selfalign import children, yaml_io
from selfalign.executor import Manifest, StageError
from selfalign.progress import RunDisplay, read_progress
from selfalign.stage_runner import tail


class PolicyEngine:
    def __init__(self, run_dir: Path, manifest: Manifest, keep: bool, cache_model: str | None = None):
        """`cache_model`: jobs on this policy (the run's base model) go through the job cache."""
        self.run_dir, self.manifest, self.keep, self.cache_model = run_dir, manifest, keep, cache_model
        self.server: subprocess.Popen | None = None

    def run(self, policy: str, jobs: list, seed: int, generation, it_dir: Path, name: str,
            display: RunDisplay | None = None) -> list[dict]:
        """Run the jobs on `policy` (those not finished); each job's marker. `generation`: the recipe's
        GenerationConfig, whose engine and layout the jobs run on; `seed` seeds an engine this call starts."""
        from selfalign.policy_jobs import PolicyJobs, finished, restore_cached

        spec = PolicyJobs(model=policy, engine=generation.engine, options=generation.engine_options(), seed=seed,
                          jobs=jobs, cache=policy == self.cache_model)
        if any(finished(job, policy) is None for job in jobs):
            restore_cached(spec)  # here, not in the server: a run whose jobs are all cached starts no engine
        if any(finished(job, policy) is None for job in jobs):
            config_path = it_dir / "config" / f"{name}.yaml"
            yaml_io.write(config_path, spec.model_dump(mode="json"))
            self._request(config_path, it_dir / "logs" / f"{name}.log", display)
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
        self.server = children.start([sys.executable, "-m", "selfalign.policy_jobs"], stdin=subprocess.PIPE,
                                     text=True, stdout=open(server_log, "a"), stderr=subprocess.STDOUT, env=env)

    def _request(self, config_path: Path, log_path: Path, display: RunDisplay | None) -> None:
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
