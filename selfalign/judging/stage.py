"""The judge stage: score a samples file with one scorer, prompt group by prompt group, resumable after a kill.

Finished groups are appended to `OUT.partial` as they complete; a rerun skips them, and the final file is written
atomically, after which the partial file is removed. The partial file's first line is a fingerprint of the samples
and the judge settings: a rerun on other samples or settings is refused instead of blending old scores with new.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable

from selfalign.errors import SelfAlignError
from selfalign.io import DataFileError, describe_changes, fingerprint, prepare_output, write_json, write_jsonl
from selfalign.progress import progress_bar
from selfalign.records import Sample, ScoredSample, group_by_prompt

class JudgeStageError(SelfAlignError, ValueError):
    """A judge run cannot go on: its partial output belongs to other samples or other settings."""


def check_samples(samples: list[Sample], path: Path) -> None:
    """Refuse an empty input and a sample listed twice (it would vote twice)."""
    if not samples:
        raise DataFileError(path, None, None, "holds no samples; nothing was written")
    seen: dict[tuple[str, int], int] = {}
    for number, sample in enumerate(samples, start=1):
        key = (sample.prompt_id, sample.sample_index)
        if key in seen:
            raise DataFileError(path, None, "sample_index", f"sample {sample.sample_index} of prompt "
                                f"{sample.prompt_id!r} appears twice (records {seen[key]} and {number}); "
                                "a duplicate would vote twice")
        seen[key] = number


def _read_partial(path: Path, expected: str, settings: dict, force: bool) -> dict[str, list[ScoredSample]]:
    done: dict[str, list[ScoredSample]] = defaultdict(list)
    if not path.exists():
        return done
    lines = path.read_text(encoding="utf-8").splitlines()
    header = _json_or_none(lines[0]) if lines else None
    if not isinstance(header, dict) or header.get("fingerprint") != expected:
        if not force:
            changes = describe_changes(header["settings"], settings) if isinstance(header, dict) and \
                isinstance(header.get("settings"), dict) else ""
            what = f"other judge settings ({changes})" if changes else "other samples or judge settings"
            raise JudgeStageError(f"{path} holds scores of {what}, from a killed earlier run; they would be mixed "
                                  "into these. Pass --force to discard them, or use another --out")
        path.unlink()
        return done
    for line in lines[1:]:
        row = _json_or_none(line)
        if row is None:
            break  # a torn last line from a kill; everything before it is whole
        done[row["prompt_id"]] = [ScoredSample.model_validate(s) for s in row["samples"]]
    return done


def _json_or_none(line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def score_file(samples: list[Sample], score_group: Callable[[list[Sample]], list[ScoredSample]], out: Path,
               chunk_prompts: int = 8, progress: bool = True, settings: dict | None = None,
               force: bool = False) -> list[ScoredSample]:
    """Apply `score_group` to chunks of whole prompt groups, checkpointing each chunk. `settings` (the judge's
    configuration) joins the samples in the fingerprint that a resumed partial file must match."""
    out = prepare_output(out)
    partial = out.with_name(out.name + ".partial")
    groups = group_by_prompt(samples)
    expected = fingerprint(settings or {}, samples)
    done = _read_partial(partial, expected, settings or {}, force)
    todo = [pid for pid in groups if pid not in done]
    if not partial.exists():  # the settings beside the fingerprint: a refused resume can say what changed
        partial.write_text(json.dumps({"fingerprint": expected, "settings": settings or {}}) + "\n",
                           encoding="utf-8")
    with open(partial, "a", encoding="utf-8") as f, progress_bar(total=len(groups), initial=len(groups) - len(todo),
                                                                 desc="judge", unit="prompts",
                                                                 disable=not progress) as bar:
        for start in range(0, len(todo), chunk_prompts):
            chunk = [s for pid in todo[start:start + chunk_prompts] for s in groups[pid]]
            scored_by_prompt = group_by_prompt(score_group(chunk))
            for pid, scored in scored_by_prompt.items():
                f.write(json.dumps({"prompt_id": pid, "samples": [s.model_dump(mode="json") for s in scored]}) + "\n")
                done[pid] = scored
            f.flush()
            bar.update(len(scored_by_prompt))
    result = [s for pid in groups for s in done[pid]]
    write_jsonl(out, result)
    partial.unlink(missing_ok=True)
    return result


def summarize(scored: list[ScoredSample], judge_stats: Counter) -> dict:
    scores = [s.score for s in scored if s.score is not None]
    return {"samples": len(scored), "scored": len(scores), "abstained": len(scored) - len(scores),
            "mean_score": sum(scores) / len(scores) if scores else None, **dict(judge_stats)}


def write_report(out: Path, report: dict) -> Path:
    path = Path(out).with_suffix(".report.json")
    write_json(path, report)
    return path
