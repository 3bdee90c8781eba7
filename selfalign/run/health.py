"""Per-iteration health: did this iteration add to the last one, what flipped, and is the policy still exploring?

Label-free self-training loops rise, then fall: majority-vote self-training gains, then collapses (Shafayat et al.
2025, arXiv:2505.21444); right answers turn wrong ("correct-answer extinction"). A single gain over the base hides
that, so each trained iteration is compared item by item with the previous iterate and with the base on the same
held-out problems: the paired gain with a bootstrap 95% interval, the flip counts (right -> wrong, wrong -> right),
and McNemar's exact test on the discordant items (as lm-eval-harness's significance tests pair two models). From the
iteration's own samples: how many distinct answers a prompt's samples give (diversity collapses before accuracy does)
and the share of samples that finish.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from selfalign.evaluation.heldout import paired_bootstrap


def flips(before: list[int], after: list[int]) -> dict[str, int]:
    """Counts of items by (before, after) correctness on the same problems."""
    if len(before) != len(after):
        raise ValueError(f"the two evaluations cover {len(before)} and {len(after)} items: not the same problems")
    pairs = list(zip(map(bool, before), map(bool, after)))
    return {"right_to_wrong": pairs.count((True, False)), "wrong_to_right": pairs.count((False, True)),
            "both_right": pairs.count((True, True)), "both_wrong": pairs.count((False, False))}


def mcnemar_exact(right_to_wrong: int, wrong_to_right: int) -> float:
    """Two-sided exact McNemar p-value: under 'no change' each discordant item flips either way with probability
    1/2, so the smaller count is Binomial(b + c, 1/2); p = min(1, 2 P(X <= min(b, c)))."""
    n = right_to_wrong + wrong_to_right
    if n == 0:
        return 1.0
    k = min(right_to_wrong, wrong_to_right)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def compare(before: list[int], after: list[int]) -> dict:
    """The paired comparison of two evaluations of the same items: gain, 95% interval, flips, McNemar's p."""
    gain = paired_bootstrap(before, after)
    counted = flips(before, after)
    return {**gain, **counted, "mcnemar_p": mcnemar_exact(counted["right_to_wrong"], counted["wrong_to_right"])}


def verdict(comparison: dict) -> str:
    """`better` / `worse` when the paired interval excludes zero, else `unchanged`."""
    if comparison["ci95_low"] > 0:
        return "better"
    if comparison["ci95_high"] < 0:
        return "worse"
    return "unchanged"


def sample_health(scored_path: Path) -> dict | None:
    """From an iteration's scored samples: mean distinct answers per prompt (samples with no answer left out), the
    share of prompts whose samples all agree, and the share of samples that finished. None where the file is missing
    or holds no scored samples (health is a diagnosis: it never ends a run)."""
    answers: dict[str, list] = {}
    finished = total = 0
    try:
        with open(scored_path) as f:
            for line in filter(str.strip, f):
                row = json.loads(line)
                answers.setdefault(row["prompt_id"], []).append(row.get("answer"))
                finished += row.get("finish_reason") == "stop"
                total += 1
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not total:
        return None
    distinct = [len({a for a in group if a is not None}) for group in answers.values()]
    return {"distinct_answers_per_prompt": sum(distinct) / len(distinct),
            "unanimous_prompts": sum(d == 1 and None not in group for d, group in zip(distinct, answers.values()))
            / len(distinct),
            "finished_share": finished / total}


def greedy_correct(run_dir: Path, iteration: int, eval_set: str | None = None) -> list[int] | None:
    """Iteration t's per-item greedy results from `iter_NN/eval.json` (`eval_set`: the recipe's extra set, from
    eval_<name>.json); None where it has none (not evaluated, or not an evaluation file: nothing to compare)."""
    name = "eval.json" if eval_set is None else f"eval_{eval_set}.json"
    try:
        found = json.loads((run_dir / f"iter_{iteration:02d}" / name).read_text())
    except (OSError, ValueError):
        return None
    correct = found.get("greedy_correct") if isinstance(found, dict) else None
    return correct if isinstance(correct, list) and correct else None


def iteration_health(run_dir: Path, iteration: int, eval_sets: tuple[str, ...] = ()) -> dict | None:
    """Iteration t's evaluation against iteration t-1's and the base's, the same on each of `eval_sets` (the recipe's
    extra held-out sets), and its samples' health; None before any trained iteration is evaluated."""
    current, previous = greedy_correct(run_dir, iteration), greedy_correct(run_dir, iteration - 1)
    base = greedy_correct(run_dir, 0)
    if iteration < 1 or current is None or previous is None:
        return None
    health = {"iteration": iteration, "vs_previous": compare(previous, current)}
    health["verdict"] = verdict(health["vs_previous"])
    if base is not None and iteration > 1:
        health["vs_base"] = compare(base, current)
    sets = {}
    for name in eval_sets:
        found = [greedy_correct(run_dir, t, name) for t in (iteration, iteration - 1, 0)]
        if found[0] is None or found[1] is None:
            continue
        sets[name] = {"accuracy": sum(found[0]) / len(found[0]), "vs_previous": compare(found[1], found[0])}
        if found[2] is not None and iteration > 1:
            sets[name]["vs_base"] = compare(found[2], found[0])
    if sets:
        health["sets"] = sets
    samples = sample_health(run_dir / f"iter_{iteration:02d}" / "scored.jsonl")
    if samples:
        health["samples"] = samples
    return health


def points(comparison: dict, unit: str = "") -> str:
    """A paired gain with its interval, in points: `+3.1 [+0.4, +5.9]` (`unit` follows the gain)."""
    return (f"{comparison['gain'] * 100:+.1f}{unit} [{comparison['ci95_low'] * 100:+.1f}, "
            f"{comparison['ci95_high'] * 100:+.1f}]")


def describe(health: dict) -> str:
    """One line for the terminal and the report."""
    previous = health["vs_previous"]
    parts = [f"iteration {health['iteration']} vs {health['iteration'] - 1}: {points(previous, ' points')} "
             f"({health['verdict']}), "
             f"{previous['wrong_to_right']} wrong->right, {previous['right_to_wrong']} right->wrong, McNemar p "
             f"{previous['mcnemar_p']:.3g}"]
    if "vs_base" in health:
        parts.append(f"vs base {points(health['vs_base'])}")
    for name, found in health.get("sets", {}).items():
        parts.append(f"{name} {found['accuracy']:.1%}: {points(found['vs_previous'])} vs previous"
                     + (f", {points(found['vs_base'])} vs base" if "vs_base" in found else ""))
    if "samples" in health:
        s = health["samples"]
        parts.append(f"samples: {s['distinct_answers_per_prompt']:.2f} distinct answers per prompt, "
                     f"{s['finished_share']:.0%} finished")
    return "; ".join(parts)


def best_iteration(run_dir: Path, last: int) -> int:
    """The iteration (0 = the base) with the highest held-out greedy accuracy up to `last`; ties go to the earlier."""
    scores = {t: sum(correct) / len(correct) for t in range(last + 1)
              if (correct := greedy_correct(run_dir, t)) is not None}
    return max(scores, key=lambda t: (scores[t], -t)) if scores else last


def flip_table(manifest) -> list[str]:
    """report.md's health table: one row per trained iteration that has its health recorded (`manifest`: the
    run's selfalign.run.results.Manifest)."""
    rows = []
    for key in manifest.iterations():
        health = manifest.health(key)
        if not health:
            continue
        p, samples = health["vs_previous"], health.get("samples") or {}
        base = health.get("vs_base")
        rows.append(f"| {key} | {points(p)} | "
                    f"{health['verdict']} | {p['wrong_to_right']} | {p['right_to_wrong']} | {p['mcnemar_p']:.3g} | "
                    + (points(base) if base else "(this is the base comparison)") + " | "
                    + (f"{samples['distinct_answers_per_prompt']:.2f} | {samples['finished_share']:.0%}"
                       if samples else "- | -") + " |")
    if not rows:
        return []
    return ["| iter | greedy gain vs previous [95% CI] | verdict | wrong→right | right→wrong | McNemar p | "
            "gain vs base [95% CI] | distinct answers / prompt | samples finished |",
            "|---|---|---|---|---|---|---|---|---|", *rows]
