"""Where the loop's sampling and evaluation jobs run: the engine behind the executor, never a user command.

One `selfalign policy-jobs` subprocess per call (its engine starts each time), or with `keep`, one engine server for
the whole run that loads each new policy's weights in place. Jobs already done are skipped without starting anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path


from selfalign import children, yaml_io
from selfalign.executor import Manifest, StageError
from selfalign.progress import RunDisplay, read_progress
from selfalign.stage_runner import CLI, run_logged, tail


class PolicyEngine:
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
            yaml_io.write(config_path, spec.model_dump(mode="json"))
            log_path = it_dir / "logs" / f"{name}.log"
            if self.keep:
                self._serve(config_path, log_path, display)
            else:
                self._count_start()
                run_logged(CLI + ["policy-jobs", "--jobs", str(config_path)], log_path, display)
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
                                 f"{config_path}\nlog {server_log}:\n{tail(server_log)}")
            if display is not None:
                display.update(read_progress(progress_path))
            time.sleep(0.5)
        result = json.loads(result_path.read_text())
        if not result["ok"]:
            raise StageError(f"{config_path}: {result['error']}\nlog {server_log}:\n{tail(server_log)}")

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
