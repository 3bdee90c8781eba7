"""Where vLLM's generation time goes on this machine: a py-spy profile of the engine sampling the default's work.

    pip install py-spy   # not a selfalign dependency
    python benchmarks/profile_generation.py [--prompts 64] [--seconds S]

Starts a child that samples the default recipe's settings (n 8, T 0.5, min_p 0.1, <= 96 new tokens) from the default
model with the vLLM engine (its engine core in the child's own process, so one thread runs the whole step), waits
until its first request is done (warm), records the engine thread with `py-spy record --native` through the second
(or its first S seconds), and prints the share of each part of a decode step, with how much of it the thread spent
waiting in OpenMP (libgomp) for the other cores' share of the work. Prints the CPU flags beside it.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_flags  # benchmarks/machine.py (this folder is on sys.path)

REPO = Path(__file__).resolve().parents[1]
# A sample's part, by the first of these found in its lower-cased stack (the order matters: attention and GEMMs run
# inside the model's forward).
PARTS = [("linear layers (oneDNN GEMM)", "onednn_mm"),
         ("attention (vLLM CPU kernel)", "cpu_attention_with_kv_cache"),
         ("norms, activations, adds", "llamamodel.forward"),
         ("sampler (min-p, Gumbel argmax, log-probs)", "sample"),
         ("scheduling, output processing", "")]


def work(prompts: int, warm_flag: Path) -> None:
    from selfalign.generation import SamplingSettings
    from selfalign.generation.vllm_engine import VLLMEngine
    from selfalign.io import read_jsonl
    from selfalign.records import PromptRecord

    records = read_jsonl(REPO / "data" / "arithmetic_train.jsonl", PromptRecord)[:prompts]
    engine = VLLMEngine("default", seed=0, enforce_eager=True)
    settings = SamplingSettings(n=8, temperature=0.5, min_p=0.1, max_new_tokens=96)
    for rep in range(2):
        started = time.perf_counter()
        tokens = sum(s.num_tokens for s in engine.generate(records, settings))
        seconds = time.perf_counter() - started
        print(f"request {rep + 1}: {tokens} tokens in {seconds:.1f} s, {tokens / seconds:.0f} tokens/s", flush=True)
        warm_flag.touch()


def breakdown(raw: Path) -> list[tuple[str, int, int]]:
    """(part, samples, samples waiting in libgomp) from py-spy's raw output (one `frame;frame;... count` per line)."""
    counts, waiting = collections.Counter(), collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if "TMonitor" in stack or "_bootstrap" in stack:  # tqdm's monitor and other idle threads
            continue
        part = next(name for name, marker in PARTS if marker in stack.lower())
        counts[part] += int(n)
        waiting[part] += int(n) if "libgomp" in stack.rsplit(";", 1)[-1] else 0
    return [(name, counts[name], waiting[name]) for name, _ in PARTS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64, help="train prompts per request (x 8 samples)")
    parser.add_argument("--seconds", type=int, help="record only this long (default: the whole second request)")
    parser.add_argument("--work", help=argparse.SUPPRESS)  # the child: run the requests, touch this file when warm
    args = parser.parse_args()
    if args.work:
        return work(args.prompts, Path(args.work))
    spy = shutil.which("py-spy")
    if spy is None:
        sys.exit("py-spy is not installed: pip install py-spy")
    folder = Path(tempfile.mkdtemp(prefix="selfalign-profile-"))
    warm, raw = folder / "warm", folder / "profile.txt"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    child = subprocess.Popen([sys.executable, __file__, "--prompts", str(args.prompts), "--work", str(warm)], env=env)
    while not warm.exists():
        if child.poll() is not None:
            sys.exit(f"the generating child exited with code {child.returncode}")
        time.sleep(1)
    duration = ["-d", str(args.seconds)] if args.seconds else []  # else until the child exits
    # py-spy reads native stacks only while the child is stopped (it refuses --native with --nonblocking), and each
    # stop slows the child (40 a second sampled 262 tokens/s, not ~370): 20 a second keeps the shares, costs less.
    subprocess.run([spy, "record", "-p", str(child.pid), *duration, "-r", "20", "--native", "-f",
                    "raw", "-o", str(raw)], check=True, stdout=subprocess.DEVNULL)
    child.wait()
    rows = breakdown(raw)
    total = sum(n for _, n, _ in rows) or 1
    print(f"\nCPU: {cpu_flags()}; {os.cpu_count()} cores; {total} samples of the engine thread; raw stacks in {raw}")
    print(f"{'part':<44}{'share':>8}{'waiting in OpenMP':>20}")
    for name, n, wait in rows:
        print(f"{name:<44}{n / total:>8.1%}{wait / total:>20.1%}")


if __name__ == "__main__":
    main()
