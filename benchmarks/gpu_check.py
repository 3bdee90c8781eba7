"""The GPU check: one short script for a single H100/H200 with no network (< 8 minutes).

Builds a random-initialized ~0.5B Llama from a config (with SmolLM2's tokenizer, carried in `--tokenizer`), then:
  1. tokens/s of the `hf` engine on CUDA;
  2. tokens/s of the `vllm` engine and its ratio to hf, where vllm is installed; with 2+ GPUs, data-parallel sampling
     (hf and vLLM replicas) and vLLM tensor parallelism, each skipped with a line saying why where it cannot run;
  3. QLoRA (bitsandbytes 4-bit) DPO steps: tokens/s and peak GPU memory;
  4. DeepSpeed ZeRO-3 DPO steps in one process through `accelerate launch`: tokens/s and peak GPU memory.
A step whose package is missing prints one line saying so and is skipped, never passed silently.
`--quick` shrinks everything so the script can be checked on a CPU.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def build_model(out: Path, tokenizer_dir: str, quick: bool) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    size = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,  # head_dim 64: vLLM-CPU has no smaller
                num_key_value_heads=1) if quick else dict(hidden_size=1024, intermediate_size=4096,
                                                           num_hidden_layers=24, num_attention_heads=16,
                                                           num_key_value_heads=8)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **size)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    # A random model rarely says EOS; suppressing nothing keeps the token count honest (we count what it makes).
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"model: random Llama, {sum(p.numel() for p in model.parameters()) / 1e9:.3f}B parameters at {out}", flush=True)
    return out


def generation(model: Path, quick: bool) -> dict:
    from selfalign.arithmetic import make_splits
    from selfalign.generation import SamplingSettings, get_engine, vllm_available
    from selfalign.generation.options import EngineOptions
    from selfalign.records import PromptRecord

    prompts = [PromptRecord(**r) for r in make_splits(8 if quick else 64, 0, seed=1)[0]]
    settings = SamplingSettings(n=4, temperature=0.8, max_new_tokens=16 if quick else 128)
    out = {}
    engine = get_engine("hf", str(model))
    engine.generate(prompts[:2], settings.model_copy(update={"max_new_tokens": 4}))
    start = time.perf_counter()
    samples = engine.generate(prompts, settings)
    out["hf_tokens_per_s"] = sum(s.num_tokens for s in samples) / (time.perf_counter() - start)
    print(f"hf engine: {out['hf_tokens_per_s']:.1f} tokens/s", flush=True)
    engine.close()
    del engine
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    out.update(parallel_sampling(model, prompts, settings, out["hf_tokens_per_s"]))
    if not vllm_available():
        print("vllm: not installed here: vLLM step skipped", flush=True)
        return out
    engine = get_engine("vllm", str(model), options=EngineOptions(max_model_len=1024, gpu_memory_utilization=0.5))
    engine.generate(prompts[:2], settings.model_copy(update={"max_new_tokens": 4}))
    start = time.perf_counter()
    samples = engine.generate(prompts, settings)
    out["vllm_tokens_per_s"] = sum(s.num_tokens for s in samples) / (time.perf_counter() - start)
    out["vllm_over_hf"] = out["vllm_tokens_per_s"] / out["hf_tokens_per_s"]
    print(f"vllm engine: {out['vllm_tokens_per_s']:.1f} tokens/s = {out['vllm_over_hf']:.2f}x hf", flush=True)
    return out


def _tokens_per_s(engine, prompts, settings) -> float:
    engine.generate(prompts[:2], settings.model_copy(update={"max_new_tokens": 4}))
    start = time.perf_counter()
    samples = engine.generate(prompts, settings)
    return sum(s.num_tokens for s in samples) / (time.perf_counter() - start)


def parallel_sampling(model: Path, prompts, settings, hf_single: float) -> dict:
    """Data-parallel sampling (hf replicas, one GPU each; vLLM replicas and tensor parallelism where vLLM is here)
    on a machine with several GPUs; one line saying why where it is skipped."""
    from selfalign.generation import get_engine, vllm_available
    from selfalign.generation.options import EngineOptions

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus < 2:
        print(f"parallel sampling: {gpus} GPU(s) here, 2 needed: tensor- and data-parallel steps skipped", flush=True)
        return {}
    out = {}
    runs = [("hf_dp2", "hf", EngineOptions(data_parallel_size=2))]
    if vllm_available():
        runs += [("vllm_dp2", "vllm", EngineOptions(data_parallel_size=2, max_model_len=1024,
                                                     gpu_memory_utilization=0.5)),
                 ("vllm_tp2", "vllm", EngineOptions(tensor_parallel_size=2, max_model_len=1024,
                                                     gpu_memory_utilization=0.5))]
    else:
        print("parallel sampling: vllm not installed here: vLLM data- and tensor-parallel steps skipped", flush=True)
    for name, engine_name, options in runs:
        engine = get_engine(engine_name, str(model), options=options)
        try:
            out[f"{name}_tokens_per_s"] = _tokens_per_s(engine, prompts, settings)
        finally:
            engine.close()
        print(f"{name}: {out[f'{name}_tokens_per_s']:.1f} tokens/s"
              + (f" = {out[f'{name}_tokens_per_s'] / hf_single:.2f}x one hf engine" if name == "hf_dp2" else ""),
              flush=True)
    return out


def pairs_file(path: Path) -> Path:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from train import make_pairs

    from selfalign.io import write_jsonl

    write_jsonl(path, make_pairs(32))
    return path


def training_step(name: str, cmd: list[str], out: Path, env: dict) -> dict:
    start = time.perf_counter()
    result = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"{name}: FAILED (exit {result.returncode})\n{result.stderr[-2000:]}", flush=True)
        return {f"{name}_failed": True}
    summary = json.loads((out / "train_summary.json").read_text())
    tokens_per_s = summary["tokens"] / summary["seconds"]
    print(f"{name}: {summary['steps']} steps, {tokens_per_s:.1f} tokens/s, peak memory {summary['peak_memory_gb']:.2f} "
          f"GB (wall {time.perf_counter() - start:.0f} s)", flush=True)
    return {f"{name}_tokens_per_s": tokens_per_s, f"{name}_peak_memory_gb": summary["peak_memory_gb"]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", default=None, help="a folder with SmolLM2's tokenizer (default: the cache)")
    parser.add_argument("--workdir", default="/tmp/selfalign-gpu-check")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script on a CPU")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    import importlib.util

    from selfalign.models import resolve_model

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    print(f"device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}", flush=True)
    model = build_model(work / "model", args.tokenizer or resolve_model("default"), args.quick)
    results = generation(model, args.quick)
    pairs = pairs_file(work / "pairs.jsonl")
    steps = str(2 if args.quick else args.steps)
    common = ["--pairs", str(pairs), "--model", str(model), "--max-steps", steps, "--per-device-train-batch-size", "4",
              "--set", "report_to=[]", "--set", "save_steps=100000", "--set", "max_length=256"]
    if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
        print("qlora: bitsandbytes or CUDA missing here: QLoRA step skipped", flush=True)
    else:
        results.update(training_step("qlora", [sys.executable, "-m", "selfalign.cli", "train", "--out",
                                               str(work / "qlora"), "--set", "load_in_4bit=true", "--set",
                                               "gradient_checkpointing=true", *common], work / "qlora", {}))
    if importlib.util.find_spec("deepspeed") is None:
        print("zero3: deepspeed not installed here: ZeRO-3 step skipped", flush=True)
    else:
        env = {} if torch.cuda.is_available() else {"DS_ACCELERATOR": "cpu"}
        precision = "bf16" if torch.cuda.is_available() else "no"
        results.update(training_step("zero3", [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                                               str(REPO / "accelerate_configs" / "deepspeed_zero3.yaml"),
                                               "--num_processes", "1", "--mixed_precision", precision,
                                               "-m", "selfalign.cli", "train", "--out", str(work / "zero3"), "--full",
                                               *common], work / "zero3", env))
    print("GPU_CHECK " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
