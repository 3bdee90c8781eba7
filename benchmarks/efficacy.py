"""Does the loop make the model better? Runs a recipe for several seeds and prints, one row per seed, base and final
greedy, sampled and majority accuracy on held-out problems, each gain with its paired-bootstrap 95% interval, and the
run's wall time; then each iteration's greedy gain over the base and over the iteration before, on eval.data and on
each of the recipe's eval_sets; then the spread of those gains across the seeds (mean, sd, range).

    python benchmarks/efficacy.py [--recipe recipes/default.yaml] [--seeds 0 1] [--out runs/efficacy] [--force]
        [--heldout data/arithmetic_heldout_600.jsonl] [--limit 600] [--sampled-limit 100] [--k 4]

Each seed runs the recipe unchanged except `seed` and its `eval:` (the held-out file and sizes), into
runs/efficacy/<recipe name>-seed<S>/ (a rerun resumes or skips finished runs). data/arithmetic_heldout_600.jsonl holds
600 problems disjoint, as text, from data/arithmetic_train.jsonl: ±4 points at 95% on greedy accuracy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from selfalign import yaml_io
from selfalign.run.health import points
from machine import cpu_flags  # benchmarks/machine.py (this folder is on sys.path)

REPO = Path(__file__).resolve().parents[1]


def bootstrap_interval(values: list[float]) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of a mean: the paired bootstrap of the values against zeros."""
    from selfalign.evaluation.heldout import paired_bootstrap

    result = paired_bootstrap([0] * len(values), values)
    return result["ci95_low"], result["ci95_high"]


def summarize(run_dir: Path, sets: list[str]) -> dict:
    """One seed's numbers: base and final greedy, sampled and majority accuracy with the final's gain over the base,
    and each iteration's greedy gain over the base and over the previous iteration on eval.data and each extra set."""
    from selfalign.evaluation.heldout import paired_bootstrap
    from selfalign.run.reporting import evaluated

    evals = sorted(run_dir.glob("iter_*/eval.json"))
    base, final = (json.loads(p.read_text()) for p in (evals[0], evals[-1]))
    row = {"iterations": len(evals) - 1}
    for name, key in (("greedy", "greedy_correct"), ("sampled", "sampled_correct"), ("majority", "majority_correct")):
        if key not in base or key not in final:
            continue
        gain = paired_bootstrap(base[key], final[key])
        row[name] = {"base": sum(base[key]) / len(base[key]), "final": sum(final[key]) / len(final[key]),
                     "base_ci95": bootstrap_interval(base[key]), "final_ci95": bootstrap_interval(final[key]),
                     "gain": gain["gain"], "gain_ci95": (gain["ci95_low"], gain["ci95_high"]), "n": gain["n"]}
    row["by_iteration"] = {}
    for name in ["eval.data", *sets]:
        found = evaluated(run_dir, None if name == "eval.data" else name)
        steps = {}
        for t in sorted(found):
            if t == 0:
                continue
            steps[t] = {"accuracy": sum(found[t]) / len(found[t]),
                        "vs_base": paired_bootstrap(found[0], found[t]),
                        "vs_previous": paired_bootstrap(found[t - 1], found[t]) if t - 1 in found else None}
        row["by_iteration"][name] = {"base": sum(found[0]) / len(found[0]) if 0 in found else None, "steps": steps}
    from selfalign.run.results import Manifest

    row["seconds"] = sum(Manifest(run_dir / "manifest.json").seconds().values())
    return row


def spread(values: list[float]) -> str:
    """Across seeds: mean, sample standard deviation and range of a gain, in points."""
    import statistics

    points = [v * 100 for v in values]
    sd = statistics.stdev(points) if len(points) > 1 else float("nan")
    return f"mean {statistics.mean(points):+.1f}, sd {sd:.1f}, range {min(points):+.1f} to {max(points):+.1f}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", default="recipes/default.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--heldout", default="data/arithmetic_heldout_600.jsonl")
    parser.add_argument("--limit", type=int, default=600)
    parser.add_argument("--sampled-limit", type=int, default=100)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--out", default="runs/efficacy")
    parser.add_argument("--force", action="store_true", help="go on with runs started from an earlier version of the "
                        "recipe (selfalign run --force: finished stages are kept, stages the recipe adds run)")
    args = parser.parse_args()

    recipe = yaml_io.load(args.recipe)
    print(f"recipe {args.recipe}; CPU AVX512/AMX flags: {cpu_flags()}", flush=True)
    rows = {}
    for seed in args.seeds:
        name = f"{recipe['name']}-seed{seed}"
        run_dir = Path(args.out) / name
        variant = {**recipe, "name": name, "seed": seed,
                   "eval": {**(recipe.get("eval") or {}), "data": args.heldout, "limit": args.limit,
                            "sampled_limit": args.sampled_limit, "k": args.k}}
        recipe_path = Path(args.out) / f"{name}.yaml"
        recipe_path.parent.mkdir(parents=True, exist_ok=True)
        yaml_io.write(recipe_path, variant)
        started = time.perf_counter()
        code = subprocess.call([sys.executable, "-m", "selfalign.cli", "run", str(recipe_path), "--out", str(run_dir)]
                               + (["--force"] if args.force else []), cwd=REPO)
        if code != 0:
            sys.exit(f"seed {seed}: selfalign run failed (exit {code}); its logs are in {run_dir}/")
        rows[seed] = {**summarize(run_dir, list(recipe.get("eval_sets") or {})),
                      "wall_seconds_this_call": time.perf_counter() - started}
    print("\n| seed | metric | base [95% CI] | final [95% CI] | gain [95% CI] | n | stage seconds |")
    print("|---|---|---|---|---|---|---|")
    for seed, row in rows.items():
        for metric in ("greedy", "sampled", "majority"):
            if metric not in row:
                continue
            m = row[metric]
            print(f"| {seed} | {metric} | {m['base']:.1%} [{m['base_ci95'][0]:.1%}, {m['base_ci95'][1]:.1%}] | "
                  f"{m['final']:.1%} [{m['final_ci95'][0]:.1%}, {m['final_ci95'][1]:.1%}] | "
                  f"{m['gain'] * 100:+.1f} [{m['gain_ci95'][0] * 100:+.1f}, {m['gain_ci95'][1] * 100:+.1f}] | "
                  f"{m['n']} | {row['seconds']:.0f} |")
    print("\n| seed | set | base | iteration | accuracy | gain vs base [95% CI] | gain vs previous [95% CI] |")
    print("|---|---|---|---|---|---|---|")
    for seed, row in rows.items():
        for name, found in row["by_iteration"].items():
            for t, step in found["steps"].items():
                print(f"| {seed} | {name} | {found['base']:.1%} | {t} | {step['accuracy']:.1%} | "
                      f"{points(step['vs_base'])} | {points(step['vs_previous']) if step['vs_previous'] else '-'} |")
    if len(rows) > 1:  # the spread across seeds: each seed varies the engine, sampling and training seeds together
        print("\nAcross seeds (recipe seed S: engine seed S, sampling seed S + t, training seed S + t):")
        names = next(iter(rows.values()))["by_iteration"]
        for name in names:
            for t in names[name]["steps"]:
                gains = [row["by_iteration"][name]["steps"][t]["vs_base"]["gain"] for row in rows.values()
                         if t in row["by_iteration"].get(name, {}).get("steps", {})]
                print(f"  {name}, iteration {t} vs base: {spread(gains)} ({len(gains)} seeds)")
                if t > 1:
                    gains = [row["by_iteration"][name]["steps"][t]["vs_previous"]["gain"] for row in rows.values()
                             if t in row["by_iteration"].get(name, {}).get("steps", {})]
                    print(f"  {name}, iteration {t} vs {t - 1}: {spread(gains)} ({len(gains)} seeds)")
    print("EFFICACY " + json.dumps(rows), flush=True)


if __name__ == "__main__":
    main()
