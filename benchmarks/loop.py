"""The loop's wall time against an older commit of selfalign, in one session on one machine, at the same settings.

    python benchmarks/loop.py [--small] [--baseline REV] [--recipe recipes/scpo-v5.yaml] [--only new|baseline]

The baseline is checked out (git archive) into a temporary folder and run through a throw-away virtual environment
that reuses this one's packages but imports the baseline's `selfalign`. Both runs use the same recipe file; each runs
in its own checkout folder, whose copies of the files the recipe reads must be the same (checked). Prints each
stage's seconds, the engine starts, the held-out numbers, the wall time of each run and their ratio, and the CPU's
AVX512/AMX flags.

`--small` shrinks the recipe for a quick check (24 prompts per iteration, 60 held-out problems, 6 training steps).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from selfalign import yaml_io
from machine import cpu_flags  # benchmarks/machine.py (this folder is on sys.path)

REPO = Path(__file__).resolve().parents[1]
# The last commit before the loop-speed work (issue "The loop at half the time"): five engine starts per 2-iteration
# run, a reference pass in training, a forward per sequence.
BASELINE = "bfe6150"


def baseline_python(rev: str, workdir: Path) -> tuple[str, Path]:
    """(python, checkout): the baseline's code in a folder and an interpreter whose `selfalign` is that code."""
    checkout = workdir / f"selfalign-{rev}"
    checkout.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(checkout)], input=archive, check=True)
    venv = workdir / "baseline-venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # The baseline first, then this environment's packages (without its .pth files: no editable selfalign).
    Path(site, "baseline.pth").write_text(f"{checkout}\n{sysconfig.get_paths()['purelib']}\n")
    return str(python), checkout


def recipe_data(recipe: Path) -> list[str]:
    """The data files a recipe reads (its prompts and its held-out set), as written in it."""
    data = yaml_io.load(recipe)
    return [f for f in (data.get("prompts"), (data.get("eval") or {}).get("data")) if f]


def same_data(a: Path, b: Path, files: list[str]) -> bool:
    """Whether both checkouts hold the same bytes in each of `files` (paths relative to a checkout; absolute ones
    are the same file for both; a file one checkout lacks differs). Files the recipe does not read may differ: later
    commits add data files."""
    digest = lambda root, f: (hashlib.sha256((root / f).read_bytes()).hexdigest()  # noqa: E731
                              if (root / f).is_file() else None)
    return all(digest(a, f) == digest(b, f) for f in files)


def run_loop(python: str, cwd: Path, recipe: Path, out: Path) -> float:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    with open(out.with_suffix(".log"), "w") as log:
        code = subprocess.run([python, "-m", "selfalign.cli", "run", str(recipe), "--out", str(out)], cwd=cwd,
                              env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0:
        sys.exit(f"the run in {cwd} failed; see {out.with_suffix('.log')}")
    return time.perf_counter() - started


def summary(run_dir: Path, wall: float) -> dict:
    from selfalign.run.results import Manifest

    manifest = Manifest(run_dir / "manifest.json")
    stages = {f"{t}:{stage}": seconds for (t, stage), seconds in manifest.seconds().items()}
    greedy, sampled = {}, {}
    for t in manifest.iterations():
        evaluation = manifest.result(t, "evaluate")
        if evaluation is not None:
            greedy[str(t)], sampled[str(t)] = evaluation.greedy_accuracy, evaluation.sampled_accuracy
    # The baseline started one engine in every generate and evaluate stage.
    engine_starts = sum(stage in ("generate", "evaluate") for _, stage in manifest.seconds())
    return {"wall_s": wall, "stages": stages, "greedy": greedy, "sampled": sampled,
            "engine_starts": manifest.data.get("engine_starts", engine_starts)}


def small_recipe(recipe: Path, workdir: Path) -> Path:
    data = yaml_io.load(recipe)
    data["prompts_per_iteration"] = 24
    data["train"]["max_steps"] = 6
    data["eval"].update(limit=60, sampled_limit=20)
    path = workdir / "small.yaml"
    yaml_io.write(path, data)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "scpo-v5.yaml"),
                        help="a recipe both sides can read (the older code lacks fields the default now uses)")
    parser.add_argument("--baseline", default=BASELINE, help="the older commit to compare with")
    parser.add_argument("--small", action="store_true", help="a shrunken recipe, for a quick check")
    parser.add_argument("--only", choices=["new", "baseline"], help="run one side only")
    parser.add_argument("--workdir", help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="selfalign-loop-bench-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    recipe = Path(args.recipe).resolve()
    if args.small:
        recipe = small_recipe(recipe, workdir)
    print(f"CPU: {cpu_flags()}; {os.cpu_count()} cores; recipe {recipe}; runs in {workdir}", flush=True)

    results = {}
    sides = [s for s in ("baseline", "new") if args.only in (None, s)]
    for side in sides:
        if side == "baseline":
            python, cwd = baseline_python(args.baseline, workdir)
            files = recipe_data(recipe)
            if not same_data(REPO, cwd, files):
                print(f"warning: the recipe's data ({', '.join(files)}) differs between the baseline and this "
                      "checkout", flush=True)
        else:
            python, cwd = sys.executable, REPO
        print(f"{side}: running ({'commit ' + args.baseline if side == 'baseline' else 'this checkout'}) ...",
              flush=True)
        wall = run_loop(python, cwd, recipe, workdir / f"run-{side}")
        results[side] = summary(workdir / f"run-{side}", wall)
        r = results[side]
        print(f"{side}: {r['wall_s']:.0f} s wall, {r['engine_starts']} engine starts, greedy {r['greedy']}, "
              f"sampled {r['sampled']}", flush=True)

    names = sorted({k for r in results.values() for k in r["stages"]}, key=lambda k: (int(k.split(":")[0]), k))
    print(f"\n{'stage':<16}" + "".join(f"{side:>12}" for side in results))
    for name in names:
        print(f"{name:<16}" + "".join(f"{results[side]['stages'].get(name, 0.0):>12.1f}" for side in results))
    print(f"{'wall':<16}" + "".join(f"{results[side]['wall_s']:>12.1f}" for side in results))
    if len(results) == 2:
        ratio = results["new"]["wall_s"] / results["baseline"]["wall_s"]
        print(f"\nwall time new/baseline: {ratio:.2f}x (target <= 0.5x); engine starts "
              f"{results['baseline']['engine_starts']} -> {results['new']['engine_starts']}; CPU: {cpu_flags()}")
    (workdir / "loop_benchmark.json").write_text(json.dumps({"cpu": cpu_flags(), **results}, indent=2))


if __name__ == "__main__":
    main()
