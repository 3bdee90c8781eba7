"""Where a stage's result lives and who reads it.

A stage writes its files into its iteration's folder (`iter_NN/`), then returns one of the models below; the executor
records it in `manifest.json` under `iterations.<t>.stages.<stage>` with its status and seconds, and `Manifest.result`
reads it back as the same model. Nothing else walks the manifest's keys.

Stage -> its result model; the files it leaves in iter_NN/; who reads the result:
- evaluate -> EvalResult; eval.json, eval_<set>.json; the display, the report, the model card.
- generate, verifier_sample, recheck_sample -> SampleResult; samples.jsonl or verifier_samples.jsonl; the display.
- verify, recheck -> VerifyResult; verifier.json, verifier_scored.jsonl; `selfalign check-verifier`, the report.
- judge_train -> JudgeTrainResult; judge_training/; the report.
- judge -> JudgeResult; scored.jsonl, scored.report.json; the display, the model card.
- filter -> FilterResult; pairs.jsonl, pairs.report.json; the report, the model card.
- train -> TrainResult; checkpoint/; the report, `selfalign export RUN_FOLDER`, the model card.
- export -> ExportResult; merged/; nobody yet (the check's number, kept for the record).

"display" is the run's one summary line per stage (selfalign.run.display), "report" report.md and its plot
(selfalign.run.reporting), "card" the model card of each export (selfalign.run.stages.export), "export" `selfalign
export RUN_FOLDER` (which iteration finished training). Beside the stage results the manifest holds run-level facts
(recipe, versions, seeds, precision, engine starts, stop) in `Manifest.data`, and each trained iteration's health
(selfalign.run.health) under `Manifest.health`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from selfalign.errors import StageError
from selfalign.io import write_json

Number = int | float | None


class StageResult(BaseModel):
    """What every stage's record holds: that it finished, its wall seconds and the fingerprint of the recipe settings
    it ran with (the executor fills both in; `config` is None in records from before it was recorded)."""

    model_config = ConfigDict(extra="forbid")
    status: Literal["done"] = "done"
    seconds: float = 0.0
    config: str | None = None


class SampleResult(StageResult):
    """Completions sampled by the run's engine: `prompts` x n into `samples` (0 engine seconds: from the cache)."""

    prompts: int
    samples: int
    engine_seconds: float


class EvalResult(StageResult):
    """Held-out accuracy of the iteration's policy (iteration 0: the base): eval.json's numbers without its
    per-item lists. Extra keys are numbers: `majority_at_<k>`, `pass_at_<k>`, `*_stderr`, the
    `generation_verification_gap`, and each of the recipe's `eval_sets` as `<set>_greedy_accuracy`."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Number]
    model: str | None = None
    engine: str | None = None
    num_prompts: int | None = None
    greedy_accuracy: float | None = None
    sampled_accuracy: float | None = None

    @property
    def majority(self) -> float | None:
        """Majority-vote accuracy at the evaluation's k (recorded as majority_at_<k>)."""
        return next((v for k, v in self.numbers().items() if k.startswith("majority_at_") and "stderr" not in k), None)

    def numbers(self) -> dict[str, Number]:
        """Every accuracy-like number, by its recorded name."""
        return {k: v for k, v in self.model_dump(exclude={"status", "seconds", "config", "model", "engine"}).items()
                if isinstance(v, (int, float))}


class VerifyResult(StageResult):
    """The verifier check (selfalign.verifier_check.diagnose, without its filter report)."""

    prompts: int
    prompts_kept: int
    records: int
    coverage: float
    precision: float | None = None
    precision_ci95: tuple[float, float] | None = None
    pick_accuracy: float
    rejected_right: float | None = None
    sampled_accuracy_all: float | None = None
    sampled_accuracy_kept: float | None = None
    pass_at_k_all: float | None = None
    greedy_accuracy_all: float | None = None
    greedy_accuracy_kept: float | None = None
    verdict: Literal["stronger", "not stronger", "unclear", "no signal"]
    explanation: str


class JudgeTrainResult(StageResult):
    """One Self-Taught Evaluator round: judge t-1 -> judge t and its held-out agreement before and after."""

    judge: str
    records: int
    accuracy_before: float | None
    accuracy: float | None
    accuracy_ci95: tuple[float, float] | None
    position_consistency: float | None
    heldout_pairs: int


class JudgeResult(StageResult):
    """scored.report.json: how many samples got a score. Extra keys are the scorer's own counts (the execution
    check's `verdict_*`, a judge's parse failures, `samples_cut_at_answer`, ...)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Number | str]
    samples: int
    scored: int
    abstained: int
    mean_score: float | None = None


class FilterResult(StageResult):
    """pairs.report.json: what the filters kept. Extra keys are counts of why prompts, pairs and samples were
    dropped (`dropped_*`, `pairs_dropped_*`, `samples_*`) and the mode's own numbers."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Number | str]
    records: int
    prompts_dropped: int | None = None
    mean_vote_margin: float | None = None

    @property
    def drops(self) -> dict[str, int]:
        return {k: v for k, v in (self.model_extra or {}).items() if k.startswith(("dropped_", "pairs_dropped_"))}


class TrainResult(StageResult):
    """The trainer's summary: its steps, the last logged metrics and how the reference log-probs were obtained."""

    steps: int
    final_metrics: dict[str, float | int | None]
    reference: dict[str, Any] = {}


class ExportResult(StageResult):
    """The merged export's largest logit difference from the adapter model it was merged from."""

    max_logit_diff: float | None


RESULTS: dict[str, type[StageResult]] = {
    "evaluate": EvalResult, "verifier_sample": SampleResult, "verify": VerifyResult, "generate": SampleResult,
    "judge_train": JudgeTrainResult, "judge": JudgeResult, "filter": FilterResult, "train": TrainResult,
    "export": ExportResult, "recheck_sample": SampleResult, "recheck": VerifyResult,
}


class Manifest:
    """The run's record (manifest.json): run-level facts in `data`, each finished stage's result, each trained
    iteration's health. Every write is atomic."""

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

    def iterations(self) -> list[int]:
        """The iterations with anything recorded, in order (0: the base)."""
        return sorted(int(t) for t in self.data.get("iterations", {}))

    def _iteration(self, iteration: int, create: bool = False) -> dict:
        if create:
            return self.data.setdefault("iterations", {}).setdefault(str(iteration), {"stages": {}})
        return self.data.get("iterations", {}).get(str(iteration), {})

    def result(self, iteration: int, stage: str) -> StageResult | None:
        """The stage's result as its model (`RESULTS[stage]`), or None when it has not finished."""
        record = self._iteration(iteration).get("stages", {}).get(stage)
        if record is None:
            return None
        try:
            return RESULTS[stage].model_validate(record)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise StageError(f"{self.path}: iterations.{iteration}.stages.{stage}.{where}: {first['msg']} (written by "
                             "another selfalign version?); rerun that stage in a new folder (--out)") from None

    def results(self, iteration: int) -> dict[str, StageResult]:
        """Every finished stage of the iteration, in the order they finished."""
        return {name: self.result(iteration, name) for name in self._iteration(iteration).get("stages", {})}

    def record(self, iteration: int, stage: str, result: StageResult) -> None:
        """Record the stage finished (after its outputs are written)."""
        if not isinstance(result, RESULTS[stage]):
            raise TypeError(f"stage {stage} returned {type(result).__name__}, not {RESULTS[stage].__name__}")
        self._iteration(iteration, create=True)["stages"][stage] = result.model_dump(mode="json")
        self.save()

    def seconds(self) -> dict[tuple[int, str], float]:
        """Each finished stage's wall seconds, by (iteration, stage)."""
        return {(t, name): record.get("seconds", 0.0) for t in self.iterations()
                for name, record in self._iteration(t).get("stages", {}).items() if isinstance(record, dict)}

    def health(self, iteration: int) -> dict | None:
        return self._iteration(iteration).get("health")

    def record_health(self, iteration: int, health: dict) -> None:
        self._iteration(iteration, create=True)["health"] = health
        self.save()
