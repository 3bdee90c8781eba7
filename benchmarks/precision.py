"""fp32 against bf16 on this machine, in one session, alternated, nothing else running: sampling tokens/s (vLLM),
training steps/s (bf16 autocast against fp32), greedy agreement, and with `--default-run` the default recipe's stage
seconds at each precision (and at an older commit, `--baseline REV`, as the demo was before).

    python benchmarks/precision.py                  # sampling and training, about 6 minutes
    python benchmarks/precision.py --default-run --baseline c2e71cb   # + three default runs, about an hour

Each sampling measurement is a fresh process (one vLLM engine each) run in the order fp32, bf16, fp32, bf16, so a
machine that drifts (thermals, a neighbour) shows as a difference between the two rounds of one precision. On a CPU
without avx512_bf16/amx_bf16 bf16 is emulated: the ratio printed there says how much slower it is (why `auto` keeps
fp32 there). The default runs are cold: the job cache is off for them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_flags  # benchmarks/machine.py (this folder is on sys.path)

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = ("float32", "bfloat16")


def sample_worker(dtype: str, out: Path, prompts: int, n: int, max_new_tokens: int) -> None:
    """One engine in `dtype`: a warm-up call, then sampled (n per prompt) and greedy generation, timed."""
    from selfalign.arithmetic import make_splits
    from selfalign.generation import SamplingSettings, get_engine
    from selfalign.records import PromptRecord

    rows, _ = make_splits(prompts, 0, seed=7)
    records = [PromptRecord(**row) for row in rows]
    started = time.perf_counter()
    engine = get_engine("vllm", "default", seed=0, dtype=dtype)
    start_seconds = time.perf_counter() - started
    engine.generate(records[:4], SamplingSettings(n=2, temperature=0.5, max_new_tokens=16))  # warm-up
    started = time.perf_counter()
    samples = engine.generate(records, SamplingSettings(n=n, temperature=0.5, min_p=0.1, max_new_tokens=max_new_tokens,
                                                        seed=1))
    sampled_seconds = time.perf_counter() - started
    greedy = engine.generate(records, SamplingSettings(temperature=0.0, max_new_tokens=max_new_tokens))
    out.write_text(json.dumps({"dtype": dtype, "precision": str(engine.precision), "engine_start_s": start_seconds,
                               "tokens": sum(s.num_tokens for s in samples), "seconds": sampled_seconds,
                               "greedy": [s.text for s in greedy]}))


def sampling(workdir: Path, rounds: int, prompts: int, n: int, max_new_tokens: int) -> dict:
    results = {dtype: [] for dtype in PRECISIONS}
    for round_ in range(rounds):
        for dtype in PRECISIONS:
            out = workdir / f"sample-{dtype}-{round_}.json"
            subprocess.run([sys.executable, __file__, "--sample-worker", dtype, str(out), "--prompts", str(prompts),
                            "--n", str(n), "--max-new-tokens", str(max_new_tokens)], check=True,
                           stdout=subprocess.DEVNULL, stderr=open(workdir / f"sample-{dtype}-{round_}.log", "w"))
            result = json.loads(out.read_text())
            results[dtype].append(result)
            print(f"sampling {dtype} round {round_ + 1}: {result['tokens'] / result['seconds']:.1f} tokens/s "
                  f"({result['tokens']} tokens in {result['seconds']:.1f}s; {result['precision']})", flush=True)
    rate = {d: [r["tokens"] / r["seconds"] for r in rs] for d, rs in results.items()}
    first, second = results["float32"][0]["greedy"], results["bfloat16"][0]["greedy"]
    agree = sum(a == b for a, b in zip(first, second))
    repeat = sum(a == b for a, b in zip(first, results["float32"][-1]["greedy"]))
    return {"tokens_per_s": rate, "ratio": (sum(rate["bfloat16"]) / len(rate["bfloat16"]))
            / (sum(rate["float32"]) / len(rate["float32"])),
            "greedy_identical": f"{agree} of {len(first)}", "fp32_greedy_repeats": f"{repeat} of {len(first)}"}


def training(workdir: Path, rounds: int, steps: int) -> dict:
    """Steps/s of the default recipe's training settings on pairs of arithmetic answers, fp32 against bf16."""
    from selfalign.arithmetic import make_splits
    from selfalign.io import write_jsonl
    from selfalign.records import Message, PreferencePair, PromptRecord
    from selfalign.training.config import TrainConfig
    from selfalign.training.trainer import train

    rows, _ = make_splits(64, 0, seed=7)
    pairs = [PreferencePair(prompt=PromptRecord(**row).messages, prompt_id=f"p{i}",
                        chosen=[Message(role="assistant", content=f"We add the numbers step by step: {i} + {i} = "
                                        f"{2 * i}. The answer is {2 * i}.")],
                        rejected=[Message(role="assistant", content=f"Let me think about it. {i} times 3 makes "
                                          f"{3 * i + 1}, so the answer is {3 * i + 1}.")])
             for i, row in enumerate(rows)]
    path = workdir / "pairs.jsonl"
    write_jsonl(path, pairs)
    results = {dtype: [] for dtype in PRECISIONS}
    for round_ in range(rounds):
        for dtype in PRECISIONS:
            cfg = TrainConfig(model="default", loss_type="scpo", beta=0.1, alpha=0.5, learning_rate=1e-4,
                              max_steps=steps, per_device_train_batch_size=4, max_length=256, max_prompt_length=128,
                              lora_r=16, lora_alpha=32, report_to=[], save_steps=10_000, seed=0,
                              bf16=dtype == "bfloat16")
            summary = train(cfg, path, workdir / f"train-{dtype}-{round_}")
            history = [json.loads(line) for line in open(workdir / f"train-{dtype}-{round_}" / "metrics.jsonl")]
            # the optimizer steps' own seconds (the model load and reference pass are not in them)
            results[dtype].append({"steps_per_s": steps / summary["seconds"], "step1_loss": history[0]["loss"]})
            print(f"training {dtype} round {round_ + 1}: {results[dtype][-1]['steps_per_s']:.3f} steps/s, "
                  f"step-1 loss {history[0]['loss']:.5f}", flush=True)
    mean = {d: sum(r["steps_per_s"] for r in rs) / len(rs) for d, rs in results.items()}
    return {"steps_per_s": {d: [r["steps_per_s"] for r in rs] for d, rs in results.items()},
            "ratio": mean["bfloat16"] / mean["float32"],
            "step1_loss": {d: rs[0]["step1_loss"] for d, rs in results.items()}}


def default_runs(workdir: Path, baseline: str | None) -> dict:
    """The default recipe, cold (no job cache): fp32 (what `auto` gives an AVX2 CPU), bf16 sampling and training,
    and optionally the older commit's own default recipe."""
    from loop import baseline_python, run_loop, summary

    from selfalign import yaml_io

    os.environ["SELFALIGN_JOB_CACHE"] = "off"
    sides = {}
    recipe = yaml_io.load(REPO / "recipes" / "default.yaml")
    for dtype in reversed(PRECISIONS):  # bf16 first: the shortest run tells soonest whether all is well
        data = json.loads(json.dumps(recipe))
        data["generation"]["dtype"] = dtype
        data["train"]["bf16"] = dtype == "bfloat16"
        path = workdir / f"default-{dtype}.yaml"
        yaml_io.write(path, data)
        sides[dtype] = (sys.executable, REPO, path)
    if baseline:
        python, checkout = baseline_python(baseline, workdir)
        sides[f"baseline {baseline}"] = (python, checkout, checkout / "recipes" / "default.yaml")
    results = {}
    for name, (python, cwd, recipe_path) in sides.items():
        print(f"default run, {name}: running ...", flush=True)
        wall = run_loop(python, cwd, recipe_path, workdir / f"run-{name.replace(' ', '-')}")
        results[name] = summary(workdir / f"run-{name.replace(' ', '-')}", wall)
        print(f"default run, {name}: {wall:.0f} s wall, greedy {results[name]['greedy']}", flush=True)
    names = sorted({k for r in results.values() for k in r["stages"]}, key=lambda k: (int(k.split(":")[0]), k))
    print(f"\n{'stage':<22}" + "".join(f"{side:>18}" for side in results))
    for name in names:
        print(f"{name:<22}" + "".join(f"{results[side]['stages'].get(name, 0.0):>18.1f}" for side in results))
    print(f"{'wall':<22}" + "".join(f"{results[side]['wall_s']:>18.1f}" for side in results))
    print(f"wall bf16/fp32: {results['bfloat16']['wall_s'] / results['float32']['wall_s']:.2f}x")
    if baseline:
        old = results[f"baseline {baseline}"]["wall_s"]
        print(f"wall fp32/baseline: {results['float32']['wall_s'] / old:.2f}x (precision-free levers); "
              f"bf16/baseline: {results['bfloat16']['wall_s'] / old:.2f}x")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="alternated rounds of each measurement")
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=8)
    parser.add_argument("--default-run", action="store_true", help="also the default recipe at each precision")
    parser.add_argument("--baseline", help="with --default-run: an older commit's default, as the third column")
    parser.add_argument("--skip-micro", action="store_true", help="only the default runs")
    parser.add_argument("--workdir", help="keep everything here (default: a temporary folder)")
    parser.add_argument("--sample-worker", nargs=2, metavar=("DTYPE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sample_worker:
        sample_worker(args.sample_worker[0], Path(args.sample_worker[1]), args.prompts, args.n, args.max_new_tokens)
        return
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="selfalign-precision-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_flags()}; {os.cpu_count()} cores; results in {workdir}", flush=True)
    results = {"cpu": cpu_flags(), "date": time.strftime("%Y-%m-%d")}
    if not args.skip_micro:
        results["sampling"] = sampling(workdir, args.rounds, args.prompts, args.n, args.max_new_tokens)
        results["training"] = training(workdir, args.rounds, args.train_steps)
        s, t = results["sampling"], results["training"]
        print(f"\nsampling bf16/fp32 tokens/s: {s['ratio']:.2f}x; greedy texts identical: {s['greedy_identical']} "
              f"(fp32 against itself: {s['fp32_greedy_repeats']})")
        print(f"training bf16/fp32 steps/s: {t['ratio']:.2f}x; step-1 loss fp32 {t['step1_loss']['float32']:.5f}, "
              f"bf16 {t['step1_loss']['bfloat16']:.5f}")
    if args.default_run:
        results["default_runs"] = default_runs(workdir, args.baseline)
    (workdir / "precision_benchmark.json").write_text(json.dumps(results, indent=2))
    print(f"CPU: {cpu_flags()}")


if __name__ == "__main__":
    main()
