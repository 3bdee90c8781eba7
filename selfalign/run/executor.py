"""The loop's one executor: stages declared as data, run, skipped and resumed the same way.

A run is a list of steps (a stage of an iteration). Each finished step is recorded in `manifest.json` after its
outputs are written, so the record means the outputs exist. A rerun resumes at the first step that is not recorded,
whose declared outputs are gone, or whose recipe settings changed since (a `--force` rerun with an edited recipe),
and runs every step after it again: a later step's inputs may have changed. How a step's own work continues after a
kill (judge partials, training checkpoints, finished engine jobs) is the stage's business, declared as its `resumes`
and said on screen when a run resumes there; each of those checks its own fingerprint (`selfalign.io.fingerprint`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Callable

from selfalign.io import fingerprint
from selfalign.run.results import RESULTS, Manifest, StageResult


class Resumes(Enum):
    """How a stage's own work continues when a run resumes inside it."""

    ENGINE_JOBS = "finished engine jobs are kept (each output has a fingerprinted marker); the rest run again"
    JUDGE_PARTIAL = "scored samples are kept in a fingerprinted partial file"
    CHECKPOINT = "from its last checkpoint-N (fingerprinted: same data and config)"
    JUDGE_TRAIN_STEPS = "each judge-train step's file is kept (fingerprinted)"
    RERUN = "runs again (seconds)"


@dataclass(frozen=True)
class Stage:
    """A stage, declared once: its name (in the manifest and the display), the recipe settings it reads (`config`:
    field names, dotted for a sub-field; a change reruns it), its work (a function of the step returning its result
    model, `RESULTS[name]`), the files it leaves in its iteration's folder, how its own work continues after a kill,
    whether it samples from the run's engine, and when the recipe has it at all."""

    name: str
    config: tuple[str, ...]
    work: Callable[["Step"], StageResult]
    outputs: tuple[str, ...]
    resumes: Resumes
    engine: bool = False
    applies: Callable[[object], bool] = field(default=lambda recipe: True)

    @property
    def result(self) -> type[StageResult]:
        """The model of what the stage records (selfalign.run.results says who reads it)."""
        return RESULTS[self.name]

    def settings(self, recipe) -> str:
        """The fingerprint of the recipe settings this stage reads."""
        values = recipe.model_dump(mode="json")
        picked = {}
        for name in self.config:
            value = values
            for part in name.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            picked[name] = value
        return fingerprint(picked)


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

    def done(self) -> StageResult | None:
        """The manifest's record of this step, if it finished with the recipe's current settings and its outputs
        are still there (a record from before settings were recorded counts as current)."""
        result = self.manifest.result(self.iteration, self.stage.name)
        if result is None or result.config not in (None, self.stage.settings(self.recipe)):
            return None
        return result if all((self.it_dir / name).exists() for name in self.stage.outputs) else None


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
                display.skipped()
        else:
            if i == first and first > 0 and display is not None:
                display.message(f"resuming at {step.stage.name}: {step.stage.resumes.value}")
            if before is not None:
                before(step)
            started = time.perf_counter()
            try:
                result = step.stage.work(step)
            except BaseException:
                if display is not None:
                    display.failed(time.perf_counter() - started)
                raise
            result = result.model_copy(update={"seconds": round(time.perf_counter() - started, 1),
                                               "config": step.stage.settings(step.recipe)})
            step.manifest.record(step.iteration, step.stage.name, result)
            if display is not None:
                display.done(result)
        if after is not None:
            after(step)
