"""The loop's one executor: stages declared as data, run, skipped and resumed the same way.

A run is a list of steps (a stage of an iteration). Each finished step is recorded in `manifest.json` after its
outputs are written, so the record means the outputs exist. A rerun resumes at the first step that is not recorded,
or whose declared outputs are gone, and runs every step after it again: a later step's inputs may have changed. How
a step's own work continues after a kill (judge partials, training checkpoints, finished engine jobs) is the stage's
business; each of those checks its own fingerprint (`selfalign.io.fingerprint`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from selfalign.errors import SelfAlignError
from selfalign.io import write_json


class StageError(SelfAlignError, RuntimeError):
    """A stage of the loop failed; the message holds its command and the tail of its log."""


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


@dataclass(frozen=True)
class Stage:
    """A stage, declared once: its name (in the manifest and the display), the recipe section that configures it,
    its work (a function of the step, returning the result the manifest records), the files it leaves in its
    iteration's folder, how its own work continues after a kill, whether it samples from the run's engine, and when
    the recipe has it at all."""

    name: str
    config: str
    work: Callable[["Step"], dict]
    outputs: tuple[str, ...]
    resumes: str
    engine: bool = False
    applies: Callable[[object], bool] = field(default=lambda recipe: True)


@dataclass
class Step:
    """One stage of one iteration, with what its work reads: the recipe, the run's folder and record, the engine
    that serves the run's policies and the display."""

    stage: Stage
    iteration: int
    recipe: object
    run_dir: Path
    manifest: Manifest
    engines: object = None
    display: object = None

    @property
    def it_dir(self) -> Path:
        return self.run_dir / f"iter_{self.iteration:02d}"

    def done(self) -> dict | None:
        """The manifest's record of this step, if it finished and its outputs are still there."""
        record = self.manifest.stage(self.iteration, self.stage.name)
        if record and all((self.it_dir / name).exists() for name in self.stage.outputs):
            return record
        return None


def execute(steps: list[Step], before=None, after=None) -> None:
    """Run the steps in order, from the first one not done; `before(step)` runs before each step that runs,
    `after(step)` after every step (run or skipped)."""
    first = next((i for i, step in enumerate(steps) if step.done() is None), len(steps))
    for i, step in enumerate(steps):
        display = step.display
        if display is not None:
            display.start(step.iteration, step.stage.name)
        if i < first:
            if display is not None:
                display.done({}, 0.0, skipped=True)
        else:
            if before is not None:
                before(step)
            started = time.perf_counter()
            try:
                info = step.stage.work(step) or {}
            except BaseException:
                if display is not None:
                    display.failed(time.perf_counter() - started)
                raise
            seconds = time.perf_counter() - started
            step.manifest.mark(step.iteration, step.stage.name, seconds, **info)
            if display is not None:
                display.done(info, seconds)
        if after is not None:
            after(step)
