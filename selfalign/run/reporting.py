"""After each iteration: a terminal table, `report.md` in the run folder, and a PNG plot across iterations."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from selfalign.evaluation.heldout import paired_bootstrap
from selfalign.run.health import flip_table, greedy_correct, points
from selfalign.run.results import Manifest, VerifyResult

COLUMNS = [("greedy_accuracy", "greedy acc"), ("sampled_accuracy", "sampled acc"), ("majority", "maj@k"),
           ("generation_verification_gap", "gen-ver gap"), ("records", "pairs kept"), ("prompts_dropped", "prompts dropped"),
           ("mean_vote_margin", "vote margin"), ("rewards/margins", "reward margin"), ("loss", "final loss"),
           ("seconds", "wall s")]
# Shown when the run trains its judge (Self-Taught Evaluator): held-out agreement with the known order, before and
# after that iteration's judge training, and the share of held-out pairs judged the same in both orders.
JUDGE_COLUMNS = [("judge_accuracy_before", "judge acc before"), ("judge_accuracy", "judge acc"),
                 ("judge_position_consistency", "judge pos-consistent")]


def iteration_rows(manifest: Manifest) -> list[dict]:
    rows = []
    for t in manifest.iterations():
        ev, pairs = manifest.result(t, "evaluate"), manifest.result(t, "filter")
        train, judge = manifest.result(t, "train"), manifest.result(t, "judge_train")
        metrics = train.final_metrics if train else {}
        row = {"iteration": t, **(ev.numbers() if ev else {})}
        row["majority"] = ev.majority if ev else None
        row.update({"records": pairs.records, "prompts_dropped": pairs.prompts_dropped,
                    "mean_vote_margin": pairs.mean_vote_margin} if pairs else {})
        row.update({"rewards/margins": metrics.get("rewards/margins"), "loss": metrics.get("loss")})
        if judge:
            row.update({"judge_accuracy_before": judge.accuracy_before, "judge_accuracy": judge.accuracy,
                        "judge_position_consistency": judge.position_consistency})
        row["seconds"] = sum(seconds for (it, _), seconds in manifest.seconds().items() if it == t)
        row["drops"] = pairs.drops if pairs else {}
        rows.append(row)
    return rows


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def evaluated(run_dir: Path, eval_set: str | None = None) -> dict[int, list[int]]:
    """Each evaluated iteration's per-item greedy results (iteration 0: the base), on eval.data or an extra set."""
    iterations = sorted(int(p.name.split("_")[1]) for p in run_dir.glob("iter_[0-9]*") if p.is_dir())
    return {t: found for t in iterations if (found := greedy_correct(run_dir, t, eval_set)) is not None}


def gain_vs_base(run_dir: Path, eval_set: str | None = None) -> dict | None:
    """Greedy-accuracy gain of the last evaluated iteration over the base, with a paired bootstrap 95% interval."""
    return _last_vs_base(evaluated(run_dir, eval_set))


def _last_vs_base(found: dict[int, list[int]]) -> dict | None:
    if 0 not in found or len(found) < 2:
        return None
    last = max(found)
    return {**paired_bootstrap(found[0], found[last]), "iteration": last}


def set_table(run_dir: Path, sets: list[str]) -> list[str]:
    """report.md's table of every held-out set (eval.data first) by iteration: greedy accuracy with its Wilson 95%
    interval, and the last iteration's paired gain over the base."""
    from selfalign.verifier_check import wilson_interval

    columns = {"eval.data": evaluated(run_dir), **{name: evaluated(run_dir, name) for name in sets}}
    iterations = sorted({t for found in columns.values() for t in found})
    if len(columns) < 2 or not iterations:
        return []
    lines = ["| set | " + " | ".join(f"iter {t}" for t in iterations) + " | last vs base [95% CI] |",
             "|---" * (len(iterations) + 2) + "|"]
    for name, found in columns.items():
        cells = []
        for t in iterations:
            if t not in found:
                cells.append("-")
                continue
            low, high = wilson_interval(sum(found[t]), len(found[t]))
            cells.append(f"{sum(found[t]) / len(found[t]):.1%} [{low:.1%}, {high:.1%}]")
        gain = _last_vs_base(found)
        lines.append(f"| {name} (n = {len(next(iter(found.values()), []))}) | " + " | ".join(cells) + " | "
                     + (points(gain) if gain else "-") + " |")
    return lines


def write_report(run_dir: Path, manifest: Manifest, console: Console | None = None, show: bool = True) -> Path:
    rows = iteration_rows(manifest)
    data = manifest.data
    columns = COLUMNS + (JUDGE_COLUMNS if any(row.get("judge_accuracy") is not None for row in rows) else [])
    table = Table(title=f"selfalign run: {data.get('recipe', {}).get('name', run_dir.name)}")
    table.add_column("iter")
    for _, label in columns:
        table.add_column(label, justify="right")
    md = [f"# Run report: {data.get('recipe', {}).get('name', run_dir.name)}", "",
          f"Recipe `{data.get('recipe_path')}` (sha256 `{str(data.get('recipe_sha256'))[:12]}`). "
          "Iteration 0 is the base policy.", "",
          "| iter | " + " | ".join(label for _, label in columns) + " |",
          "|---" * (len(columns) + 1) + "|"]
    for row in rows:
        cells = [_fmt(row.get(key)) for key, _ in columns]
        table.add_row(str(row["iteration"]), *cells)
        md.append(f"| {row['iteration']} | " + " | ".join(cells) + " |")
    gain = gain_vs_base(run_dir)
    if gain:
        md += ["", f"Greedy accuracy gain of iteration {gain['iteration']} over the base: {gain['gain'] * 100:+.1f} "
               f"points (paired bootstrap 95% interval {gain['ci95_low'] * 100:+.1f} to {gain['ci95_high'] * 100:+.1f}, "
               f"n = {gain['n']})."]
    sets = list(data.get("recipe", {}).get("eval_sets") or {})
    set_lines = set_table(run_dir, sets)
    if set_lines:
        md += ["", "## Held-out sets", "", "Greedy accuracy on each held-out set (Wilson 95% intervals); the last "
               "column pairs the last iteration with the base item by item (paired bootstrap).", "", *set_lines]
    health = flip_table(manifest)
    if health:
        md += ["", "## Iteration health", "", "Each trained iteration against the one before it, item by item on the "
               "same held-out problems (paired bootstrap interval, McNemar's exact test on the items that flipped), "
               "and its own samples' diversity.", "", *health]
    stopped = data.get("stopped")
    if stopped:
        md += ["", f"**Stopped after iteration {stopped['after_iteration']}** ({stopped['reason']}). The best iterate "
               f"is iteration {stopped['best_iteration']}: `{stopped['best_model']}`."]
    verifier = manifest.result(0, "verify")
    if verifier:
        md += ["", "## Verifier check (before training)", "", verifier.explanation + ".", "",
               f"On {verifier.prompts} held-out prompts sampled and filtered as the recipe does: coverage "
               f"{verifier.coverage:.0%}, chosen answer right {_percent(verifier.precision)} "
               f"(95% interval {_interval(verifier.precision_ci95)}), pick accuracy "
               f"{verifier.pick_accuracy:.1%}, rejected answer right {_percent(verifier.rejected_right)}; "
               f"the policy's greedy accuracy on the kept prompts {_percent(verifier.greedy_accuracy_kept)}, "
               f"sampled {_percent(verifier.sampled_accuracy_kept)}. Details: `iter_00/verifier.json`."]
    rechecks = verifier_rows(manifest)
    if len(rechecks) > 1:
        md += ["", "## Verifier check per policy", "", "The same check on each policy the loop sampled from (policy "
               "t + 1 is the one iteration t trained): is what the next iteration trains on still right more often "
               "than the policy's own answers?", "",
               "| policy | coverage | chosen answer right [95% CI] | policy greedy on the kept prompts | verdict |",
               "|---|---|---|---|---|", *rechecks]
    md += ["", "## Why prompts and pairs were dropped", ""]
    for row in rows:
        if row["drops"]:
            md.append(f"- iteration {row['iteration']}: " + ", ".join(f"{k} {v}" for k, v in row["drops"].items()))
    plot = _plot(run_dir, rows, verifier)
    if plot:
        md += ["", f"![metrics across iterations]({plot.name})", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(md) + "\n")
    if not show:
        return path
    console = console or Console(width=150)
    console.print(table)
    if verifier:
        console.print(("verifier check: " if verifier.verdict == "stronger" else "WARNING: ") +
                      verifier.explanation, markup=False)
    if gain:
        console.print(f"greedy gain vs base: {points(gain)} points")
    for name in sets:
        found = gain_vs_base(run_dir, name)
        if found:
            console.print(f"greedy gain vs base on {name}: {points(found)} points")
    return path


def verifier_rows(manifest: Manifest) -> list[str]:
    """One table row per verifier check: iteration 0's (policy 1, the base) and each iteration's recheck."""
    rows = []
    for t in manifest.iterations():
        found = manifest.result(t, "verify" if t == 0 else "recheck")
        if found:
            low, high = found.precision_ci95 or (None, None)
            bounds = "-" if low is None else f"{low:.0%}, {high:.0%}"
            rows.append(f"| {t + 1} | {found.coverage:.0%} | {_percent(found.precision)} [{bounds}] | "
                        f"{_percent(found.greedy_accuracy_kept)} | {found.verdict} |")
    return rows


def _percent(value) -> str:
    return "-" if value is None else f"{value:.0%}"


def _interval(bounds) -> str:
    return "-" if not bounds else f"{bounds[0]:.0%} to {bounds[1]:.0%}"


def accuracy_intervals(evaluation: dict) -> dict[str, tuple[float, float, float]]:
    """(value, low, high) 95% intervals of an eval.json's accuracies: Wilson for greedy and majority (proportions of
    prompts), a normal interval over prompts for sampled accuracy (a mean of per-prompt shares)."""
    from selfalign.evaluation.files import stderr
    from selfalign.verifier_check import wilson_interval

    intervals = {}
    for key, per_item in (("greedy_accuracy", "greedy_correct"), ("majority", "majority_correct")):
        items = evaluation.get(per_item)
        if items:
            intervals[key] = (sum(items) / len(items), *wilson_interval(sum(items), len(items)))
    shares = evaluation.get("sampled_correct")
    if shares and len(shares) > 1:
        mean = sum(shares) / len(shares)
        half = 1.96 * stderr(shares)
        intervals["sampled_accuracy"] = (mean, max(0.0, mean - half), min(1.0, mean + half))
    return intervals


def _read_eval(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _plot(run_dir: Path, rows: list[dict], verifier: VerifyResult | None) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return None
    xs = [r["iteration"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    evaluations = {r["iteration"]: _read_eval(run_dir / f"iter_{r['iteration']:02d}" / "eval.json") for r in rows}
    for offset, (key, label) in zip((-0.06, 0.0, 0.06), (("greedy_accuracy", "greedy"),
                                                          ("sampled_accuracy", "sampled"), ("majority", "majority@k"))):
        points = [(x, accuracy_intervals(evaluations[x]).get(key)) for x in xs]
        points = [(x + offset, v) for x, v in points if v is not None]
        if points:  # 95% intervals as error bars; the small offsets keep overlapping bars apart
            px = [x for x, _ in points]
            values = [v[0] for _, v in points]
            errors = [[v[0] - v[1] for _, v in points], [v[2] - v[0] for _, v in points]]
            left.errorbar(px, values, yerr=errors, marker="o", capsize=4, label=f"{label} (95% CI)")
    if verifier is not None and verifier.precision is not None:
        low, high = verifier.precision_ci95
        precision = verifier.precision
        left.errorbar([0.12], [precision], yerr=[[precision - low], [high - precision]], marker="*", markersize=10,
                      capsize=4, linestyle="none", color="black", label="verifier: chosen answers right")
    left.set_ylim(bottom=0)
    left.set_xticks(xs)
    left.set_xlabel("iteration")
    left.set_title("held-out accuracy")
    left.legend()
    signals = (("records", "pairs kept"), ("loss", "final loss"), ("rewards/margins", "reward margin"),
               ("mean_vote_margin", "vote margin"))
    trained = [r for r in rows if any(r.get(key) is not None for key, _ in signals)]
    if len(trained) < 2:  # one trained iteration: its numbers, not four lines of one point each scaled to 1
        right.axis("off")
        lines = [f"iteration {r['iteration']}: " + ", ".join(f"{label} {_fmt(r.get(key))}" for key, label in signals
                                                            if r.get(key) is not None) for r in trained]
        right.text(0.0, 0.9, "training signal\n\n" + ("\n".join(lines) or "no training yet"), va="top", fontsize=10,
                   wrap=True, transform=right.transAxes)
    else:
        for key, label in signals:
            points = [(x, r.get(key)) for x, r in zip(xs, rows) if r.get(key) is not None]
            if points:
                values = [v for _, v in points]
                scale = max(abs(v) for v in values) or 1
                right.plot([x for x, _ in points], [v / scale for v in values], marker="o",
                           label=f"{label} (/{scale:.3g})")
        right.set_xticks(xs)
        right.set_xlabel("iteration")
        right.set_title("training signal (scaled)")
        right.legend(fontsize=8)
    fig.tight_layout()
    path = run_dir / "metrics.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
