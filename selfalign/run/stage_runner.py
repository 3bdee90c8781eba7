"""How the loop runs a stage in a subprocess: `selfalign <command> --config FILE` with its log and live progress.

Generation, judging, training and evaluation run as subprocesses, so a vLLM engine and the trainer never hold (GPU)
memory at once, and training can go through `accelerate launch`.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

from selfalign import yaml_io
from selfalign.errors import StageError
from selfalign.progress import PROGRESS_ENV, read_progress
from selfalign.run import children
from selfalign.run.display import RunDisplay

CLI_MODULE = ["-m", "selfalign.cli"]
CLI = [sys.executable, *CLI_MODULE]


def run_logged(cmd: list[str], log_path: Path, display: RunDisplay | None = None) -> None:
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
        raise StageError(f"stage command failed (exit {code}): {' '.join(cmd)}\nlog {log_path}:\n{tail(log_path)}")


def tail(path: Path, lines: int = 25) -> str:
    return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:]) if path.exists() else ""


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
    yaml_io.write(config_path, config.model_dump(mode="json"))
    options = [item for key, value in arguments.items() for item in (f"--{key.replace('_', '-')}", str(value))]
    args = command + ["--config", str(config_path)] + options
    run_logged(launch(args) if launch else CLI + args, it_dir / "logs" / f"{name}.log", display)
