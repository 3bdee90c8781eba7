"""Measure a recipe's verifier before training on it: how often the pairs it would build choose a right answer.

Self-improvement can only be as good as its training signal. On held-out prompts whose answers are known (and used
only here), the loop samples as the recipe does, scores the samples with the recipe's judge, builds its preference
records with the recipe's filters, and compares each chosen completion's answer with the truth:
- coverage: the share of prompts that yield a record at all;
- precision: the share of those whose chosen answer is right (with a Wilson 95% interval);
- pick accuracy: right chosen answers over all prompts;
- rejected right: the share of records that push *away* from a right answer;
- beside them, the policy's own greedy and sampled accuracy on the same kept prompts.
Training moves the policy towards the chosen answers, so a verifier whose precision is not above the policy's greedy
accuracy on those prompts cannot teach it the task (it can only sharpen what the policy already does). The verdict
says so: `stronger`, `not stronger`, or `unclear` when the intervals overlap.
"""

from __future__ import annotations

import math

from selfalign.evaluation.heldout import answer_is_right  # the held-out evaluation's own answer check
from selfalign.pairs import PairOptions, build_preferences
from selfalign.records import ScoredSample, group_by_prompt


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (better than the normal one at small n or near 0 and 1)."""
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _completion_text(record, side: str) -> str:
    value = getattr(record, side)
    return value[-1].content if isinstance(value, list) else str(value)


def diagnose(scored: list[ScoredSample], answers: dict[str, str], options: PairOptions,
             greedy_correct: dict[str, bool] | None = None) -> dict:
    """The verifier's coverage, precision and pick accuracy on prompts with known `answers` (prompt id -> answer),
    beside the policy's accuracy on the same prompts. `options`: the recipe's pair filters (pairs or scpo mode)."""
    if options.mode not in ("pairs", "scpo"):
        raise ValueError(f"the verifier check reads chosen/rejected records; pairs mode {options.mode!r} has none")
    groups = {pid: g for pid, g in group_by_prompt(scored).items() if pid in answers}
    if not groups:
        raise ValueError("no scored prompt has a known answer")
    records, report = build_preferences([s for g in groups.values() for s in g], options)
    first = {}
    for record in records:
        first.setdefault(record.prompt_id, record)
    chosen_right = {pid: answer_is_right(_completion_text(r, "chosen"), answers[pid]) for pid, r in first.items()}
    rejected_right = sum(answer_is_right(_completion_text(r, "rejected"), answers[r.prompt_id]) for r in records)
    sampled = {pid: sum(answer_is_right(s.text, answers[pid]) for s in g) / len(g) for pid, g in groups.items()}
    n, kept, right = len(groups), len(first), sum(chosen_right.values())
    result = {
        "prompts": n, "prompts_kept": kept, "records": len(records),
        "coverage": kept / n,
        "precision": right / kept if kept else None, "precision_ci95": wilson_interval(right, kept),
        "pick_accuracy": right / n,
        "rejected_right": rejected_right / len(records) if records else None,
        "sampled_accuracy_all": sum(sampled.values()) / n,
        "sampled_accuracy_kept": sum(sampled[p] for p in first) / kept if kept else None,
        "pass_at_k_all": sum(any(answer_is_right(s.text, answers[p]) for s in g) for p, g in groups.items()) / n,
        "filter_report": report,
    }
    if greedy_correct is not None:
        known = [p for p in groups if p in greedy_correct]
        kept_known = [p for p in first if p in greedy_correct]
        result["greedy_accuracy_all"] = sum(greedy_correct[p] for p in known) / len(known) if known else None
        result["greedy_accuracy_kept"] = (sum(greedy_correct[p] for p in kept_known) / len(kept_known)
                                          if kept_known else None)
    result["verdict"], result["explanation"] = _verdict(result)
    return result


def _verdict(result: dict) -> tuple[str, str]:
    if not result["prompts_kept"]:
        return "no signal", "the verifier kept no prompt: nothing to train on"
    low, high = result["precision_ci95"]
    policy = result.get("greedy_accuracy_kept")
    what = "greedy" if policy is not None else "sampled"
    if policy is None:
        policy = result["sampled_accuracy_kept"]
    numbers = (f"chosen answers right {result['precision']:.0%} [{low:.0%}, {high:.0%}] on {result['prompts_kept']} "
               f"of {result['prompts']} prompts, the policy's {what} accuracy on them {policy:.0%}")
    if low > policy:
        return "stronger", f"the verifier is stronger than the policy: {numbers}"
    if high <= policy:
        return "not stronger", (f"the verifier is NOT stronger than the policy: {numbers}; training on it can only "
                                "sharpen what the policy already does")
    return "unclear", f"the verifier is not clearly stronger than the policy: {numbers}"
