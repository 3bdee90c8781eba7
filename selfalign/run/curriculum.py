"""Which prompts an iteration samples, drawn without labels from what earlier iterations' judged samples showed.

`fresh` (the plain rule): iteration t takes the t-th slice of the prompt file: fresh on-policy data each round
(arXiv:2407.08400 measured it well ahead of reusing offline data).

`agreement`: each prompt an earlier iteration sampled is classed by its judged samples:
- spent: every sample has a checked (voting) answer and all agree: nothing left to learn, no rejected side;
- waiting: no sample has a checked answer: no signal yet, so the prompt is set aside, not trained on;
- used: a checked answer with dissent: it made its pair.
Prompts whose group is all right or all wrong carry no learning signal (DAPO's dynamic sampling drops them,
Yu et al. 2025, arXiv:2503.14476); masking prompts without a majority and returning to them as the policy improves
keeps label-free self-training from collapsing (CuMa, arXiv:2511.04902). So iteration t takes up to RETRY_SHARE of
its prompts from the waiting ones (oldest first; each is retried once, by a policy that has since trained), the rest
fresh from the file; spent and used prompts are not drawn again while fresh ones remain.
"""

from __future__ import annotations

import json
from pathlib import Path

from selfalign.io import read_jsonl
from selfalign.records import PromptRecord, derived_prompt_id

RETRY_SHARE = 0.25


def prompt_status(scored_path: Path) -> dict[str, str]:
    """Each prompt of a judged samples file: 'spent', 'waiting' or 'used' (see the module's docstring)."""
    groups: dict[str, list[tuple]] = {}
    with open(scored_path) as f:
        for line in filter(str.strip, f):
            row = json.loads(line)
            groups.setdefault(row["prompt_id"], []).append((row.get("score"), row.get("answer")))
    status = {}
    for prompt_id, samples in groups.items():
        checked = [answer for score, answer in samples if score is not None]
        if not checked:
            status[prompt_id] = "waiting"
        elif len(checked) == len(samples) and len(set(checked)) == 1:
            status[prompt_id] = "spent"
        else:
            status[prompt_id] = "used"
    return status


def draw(pool: list[PromptRecord], size: int, iteration: int, run_dir: Path, rule: str = "fresh") -> list[PromptRecord]:
    """Iteration t's prompts from `pool` (the recipe's prompt file). `agreement` reads iterations 1..t-1's
    prompts.jsonl and scored.jsonl in `run_dir`, and gives every prompt an id (its own, else a hash of its messages)
    so that a prompt keeps its id from one iteration's file to the next."""
    size = min(size, len(pool))
    if rule == "fresh":
        start = ((iteration - 1) * size) % len(pool)
        return (pool + pool)[start:start + size]
    pool = [p if p.id is not None else p.model_copy(update={"id": derived_prompt_id(p.messages)}) for p in pool]
    by_id = {p.id: p for p in pool}
    drawn: dict[str, int] = {}  # prompt id -> times drawn
    latest: dict[str, str] = {}  # prompt id -> status the last time it was judged
    for t in range(1, iteration):
        it_dir = run_dir / f"iter_{t:02d}"
        for p in read_jsonl(it_dir / "prompts.jsonl", PromptRecord):
            drawn[p.id] = drawn.get(p.id, 0) + 1
        latest.update(prompt_status(it_dir / "scored.jsonl"))
    retries = [pid for pid in drawn if latest.get(pid) == "waiting" and drawn[pid] == 1 and pid in by_id]
    retries = retries[:int(RETRY_SHARE * size)]
    fresh = [p.id for p in pool if p.id not in drawn]
    # With the file used up: prompts that made pairs before, the earliest first (never the spent ones).
    reused = [pid for pid in drawn if latest.get(pid) == "used" and pid in by_id]
    chosen = retries + (fresh + reused)[:size - len(retries)]
    return [by_id[pid] for pid in chosen]
