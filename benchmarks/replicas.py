"""Data-parallel sampling against one engine, in one run on one machine: `data_parallel_size` replicas (each with an
equal share of the cores, or its own GPUs) against one engine on all of them, on the same prompts and settings.
Prints each side's start time and tokens/s and the ratio.

    python benchmarks/replicas.py [--engine vllm --replicas 2 --num-prompts 96 --n 4 --max-new-tokens 96 --repeats 2]

Both engines stay up and are timed alternately (best of --repeats each): a shared machine's noise only slows a run.
"""

import argparse
import json
import os
import subprocess
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="default")
    parser.add_argument("--engine", default="vllm")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--num-prompts", type=int, default=96)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from selfalign.arithmetic import make_splits
    from selfalign.generation import SamplingSettings, get_engine
    from selfalign.generation.options import EngineOptions
    from selfalign.records import PromptRecord

    flags = subprocess.run("grep -o 'avx512[a-z_]*\\|amx[a-z_]*' /proc/cpuinfo | sort -u | tr '\\n' ' '", shell=True,
                           capture_output=True, text=True).stdout.strip() or "none (AVX2 class)"
    print(f"cores: {len(os.sched_getaffinity(0))}; AVX512/AMX flags: {flags}", flush=True)
    prompts = [PromptRecord(**row) for row in make_splits(args.num_prompts, 0, seed=321)[0]]
    settings = SamplingSettings(n=args.n, temperature=0.7, max_new_tokens=args.max_new_tokens, seed=0)
    sides, starts = {}, {}
    for name, options in (("one engine", EngineOptions()),
                          (f"{args.replicas} replicas", EngineOptions(data_parallel_size=args.replicas))):
        started = time.perf_counter()
        sides[name] = get_engine(args.engine, args.model, seed=0, options=options)
        sides[name].generate(prompts[:2], settings.model_copy(update={"max_new_tokens": 4}))  # warm-up
        starts[name] = time.perf_counter() - started
        print(f"{name}: started in {starts[name]:.1f} s", flush=True)
    best = {name: 0.0 for name in sides}
    for repeat in range(args.repeats):
        for name, engine in sides.items():
            started = time.perf_counter()
            samples = engine.generate(prompts, settings)
            rate = sum(s.num_tokens for s in samples) / (time.perf_counter() - started)
            best[name] = max(best[name], rate)
            print(f"repeat {repeat + 1}, {name}: {rate:.1f} tokens/s", flush=True)
    for engine in sides.values():
        engine.close()
    one, many = best.values()
    result = {"engine": args.engine, "replicas": args.replicas, "one_engine_tokens_per_s": one,
              "replicas_tokens_per_s": many, "ratio": many / one, "start_seconds": starts}
    print(f"{args.replicas} replicas / one engine: {many / one:.2f}x tokens/s")
    print("REPLICAS " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
