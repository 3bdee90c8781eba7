"""The judge stage: score a samples file with one scorer, prompt group by prompt group, resumable after a kill.

Finished groups are appended to `OUT.partial` as they complete; a rerun skips them, and the final file is written
atomically, after which the partial file is removed.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from selfalign.io import write_json, write_jsonl
from selfalign.records import Sample, ScoredSample, group_by_prompt

def _read_partial(path: Path) -> dict[str, list[ScoredSample]]:
    done: dict[str, list[ScoredSample]] = defaultdict(list)
    if not path.exists():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break  # a torn last line from a kill; everything before it is whole
        done[row["prompt_id"]] = [ScoredSample.model_validate(s) for s in row["samples"]]
    return done


def score_file(samples: list[Sample], score_group: Callable[[list[Sample]], list[ScoredSample]], out: Path,
               chunk_prompts: int = 8, progress: bool = True) -> list[ScoredSample]:
    """Apply `score_group` to chunks of whole prompt groups, checkpointing each chunk."""
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    groups = group_by_prompt(samples)
    done = _read_partial(partial)
    todo = [pid for pid in groups if pid not in done]
    partial.parent.mkdir(parents=True, exist_ok=True)
    with open(partial, "a", encoding="utf-8") as f, tqdm(total=len(groups), initial=len(groups) - len(todo),
                                                         desc="judge", disable=not progress) as bar:
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
