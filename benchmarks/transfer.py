"""Does a run's gain carry over to problems in phrasings its generator never produces?

    python benchmarks/transfer.py runs/default [runs/efficacy/default-seed1 ...]
        [--data data/arithmetic_heldout_rephrased.jsonl] [--limit 300]

For each run folder: greedy accuracy of the base policy and of the run's last merged policy on `--data`, on one
engine that loads each policy's weights in place, and the paired-bootstrap 95% interval of the gain. Results are kept
in RUN/transfer-<data name>.json (a rerun prints them again without sampling).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_flags  # noqa: E402


def evaluate(run_dir: Path, data: Path, limit: int) -> dict:
    from selfalign.evaluation.heldout import answer_is_right, paired_bootstrap
    from selfalign.generation import SamplingSettings, get_engine
    from selfalign.io import read_jsonl
    from selfalign.records import PromptRecord

    cached = run_dir / f"transfer-{data.stem}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    base = manifest["recipe"]["model"]
    final = sorted(run_dir.glob("iter_*/merged"))[-1]
    prompts = [p for p in read_jsonl(data, PromptRecord) if p.answer is not None][:limit]
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=manifest["recipe"]["eval"]["max_new_tokens"])
    engine = get_engine(manifest["recipe"]["generation"]["engine"], base, seed=0)
    correct, started = {}, time.perf_counter()
    try:
        for name, model in (("base", base), ("final", str(final))):
            if name == "final":
                engine.load_policy(model)
            texts = engine.generate(prompts, greedy, progress=True)
            correct[name] = [int(answer_is_right(s.text, p.answer)) for s, p in zip(texts, prompts)]
    finally:
        engine.close()
    result = {"data": str(data), "n": len(prompts), "final_policy": str(final),
              "base": sum(correct["base"]) / len(prompts), "final": sum(correct["final"]) / len(prompts),
              **{f"gain_{k}": v for k, v in paired_bootstrap(correct["base"], correct["final"]).items()},
              "seconds": round(time.perf_counter() - started, 1), "base_correct": correct["base"],
              "final_correct": correct["final"]}
    cached.write_text(json.dumps(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, default=Path("data/arithmetic_heldout_rephrased.jsonl"))
    parser.add_argument("--limit", type=int, default=300)
    args = parser.parse_args()
    print(f"greedy accuracy on {args.data} (first {args.limit}); {time.strftime('%Y-%m-%d')}; CPU flags: "
          f"{cpu_flags()}\n")
    print("| run | base | final | gain [95% CI] | n |")
    print("| --- | --- | --- | --- | --- |")
    for run_dir in args.runs:
        r = evaluate(run_dir, args.data, args.limit)
        print(f"| {run_dir} | {r['base']:.1%} | {r['final']:.1%} | {r['gain_gain'] * 100:+.1f} "
              f"[{r['gain_ci95_low'] * 100:+.1f}, {r['gain_ci95_high'] * 100:+.1f}] | {r['n']} |", flush=True)


if __name__ == "__main__":
    main()
