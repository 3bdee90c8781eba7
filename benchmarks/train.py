"""Our DPO trainer against TRL's DPOTrainer in one run: same model, pairs, LoRA settings, batch and steps.
Prints pairs/s, tokens/s and peak memory for both, the ratios, and the losses each reached.

    python benchmarks/train.py [--steps 8 --batch 4 --pairs 32] [--sampled] [--trl-defaults] [--loss kto]

`--loss kto` trains KTO on single completions (each pair's chosen desirable, its rejected undesirable) against TRL's
KTOTrainer; rates are then single records (each with its KL sequence) per second.

`--sampled` trains on pairs the model sampled, carrying the sampler's log-probs, as the loop does: our trainer takes
its reference from them; TRL (which reads prompt/chosen/rejected only) runs its reference pass.

Each trainer runs in its own subprocess so that its peak memory (RSS on CPU, allocated on GPU) is its own.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def make_pairs(n):
    from selfalign.records import Message, PreferencePair

    pairs = []
    for i in range(n):
        a, b = 12 + 3 * i, 7 + i
        prompt = [Message(role="user", content=f"Lena has {a} marbles and buys {b} more. How many marbles does she "
                                                f"have now? End with 'The answer is N'.")]
        chosen = f"Lena starts with {a} marbles. She buys {b} more, so {a} + {b} = {a + b}. The answer is {a + b}."
        rejected = f"Lena has {a} marbles and {b} more marbles, which is {a * b} in total. The answer is {a * b}."
        pairs.append(PreferencePair(prompt=prompt, chosen=[Message(role="assistant", content=chosen)],
                                    rejected=[Message(role="assistant", content=rejected)], prompt_id=str(i)))
    return pairs


def sample_pairs(n, model):
    """Pairs as the loop builds them: two samples of the policy per prompt, with the token ids and log-probs the
    sampler recorded (so our trainer takes its reference from them; TRL computes its own)."""
    from selfalign.generation import SamplingSettings, get_engine
    from selfalign.pairs import make_pair
    from selfalign.records import PromptRecord, ScoredSample, group_by_prompt

    prompts = [PromptRecord(id=p.prompt_id, messages=p.prompt) for p in make_pairs(n)]
    samples = get_engine("hf", model).generate(prompts, SamplingSettings(n=2, temperature=0.7, max_new_tokens=96,
                                                                         logprobs=True, seed=0))
    return [make_pair(group[0], group[1], 1.0, 1.0, 0.0)
            for group in group_by_prompt(ScoredSample(**s.model_dump()) for s in samples).values()]


def as_singles(pairs):
    """Each pair as two single completions: KTO's unpaired form."""
    from selfalign.records import SingleCompletion

    return [SingleCompletion(prompt=p.prompt, prompt_id=p.prompt_id, completion=completion, label=label)
            for p in pairs for completion, label in ((p.chosen, True), (p.rejected, False))]


def run_ours(args, pairs_path, out):
    from selfalign.training.config import TrainConfig
    from selfalign.training.heap import keep_freed_memory
    from selfalign.training.trainer import train

    cfg = TrainConfig(model=args.model, loss_type=args.loss, beta=0.1, learning_rate=args.lr, max_steps=args.steps,
                      per_device_train_batch_size=args.batch, max_length=256, lora_r=16, lora_alpha=32,
                      report_to=[], save_steps=10_000, seed=0, bf16=args.trl_defaults,
                      gradient_checkpointing=args.trl_defaults)
    start = time.perf_counter()
    keep_freed_memory()  # as `selfalign train` does (its entry point sets it)
    summary = train(cfg, pairs_path, out)
    losses = [json.loads(line)["loss"] for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return time.perf_counter() - start, losses, {"reference": summary["reference"]}


def run_trl(args, pairs_path, out):
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

    from selfalign.models import resolve_model

    path = resolve_model(args.model)
    columns = ("prompt", "completion", "label") if args.loss == "kto" else ("prompt", "chosen", "rejected")
    rows = [json.loads(line) for line in Path(pairs_path).read_text().splitlines()]
    rows = [{k: r[k] for k in columns} for r in rows]
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    Config, Trainer = (KTOConfig, KTOTrainer) if args.loss == "kto" else (DPOConfig, DPOTrainer)
    config = Config(output_dir=str(out), per_device_train_batch_size=args.batch, max_steps=args.steps,
                       learning_rate=args.lr, beta=0.1, max_length=256, report_to=[], logging_steps=1,
                       save_strategy="no", use_cpu=not torch.cuda.is_available(), seed=0, lr_scheduler_type="linear",
                       warmup_steps=0,
                       # Same arithmetic as ours: TRL defaults to bf16 autocast and gradient checkpointing, which
                       # change both speed and the loss curve; --trl-defaults keeps them.
                       **({} if args.trl_defaults else {"bf16": False, "gradient_checkpointing": False}))
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = Trainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                         processing_class=AutoTokenizer.from_pretrained(path), peft_config=lora)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return time.perf_counter() - start, losses, {}


def child(args):
    import torch

    from selfalign.training.trainer import peak_memory_gb

    seconds, losses, extra = (run_ours if args.which == "ours" else run_trl)(args, args.pairs_path, args.out)
    print("RESULT " + json.dumps({"seconds": seconds, "losses": losses, "peak_memory_gb": peak_memory_gb(),
                                  "device": "cuda" if torch.cuda.is_available() else "cpu", **extra}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="default")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--trl-defaults", action="store_true",
                        help="both trainers with TRL's defaults: bf16 autocast and gradient checkpointing")
    parser.add_argument("--sampled", action="store_true",
                        help="train on pairs sampled from the model with recorded log-probs, as in the loop (our "
                        "reference comes from the sampler; TRL computes its own)")
    parser.add_argument("--loss", choices=["dpo", "kto"], default="dpo",
                        help="kto: single completions, against TRL's KTOTrainer")
    parser.add_argument("--which", choices=["ours", "trl"])
    parser.add_argument("--pairs-path")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.which:
        return child(args)

    import tempfile

    from transformers import AutoTokenizer

    from selfalign.io import write_jsonl
    from selfalign.models import resolve_model
    from selfalign.training.data import tokenize_records

    tmp = Path(tempfile.mkdtemp(prefix="selfalign-bench-"))
    pairs = sample_pairs(args.pairs, args.model) if args.sampled else make_pairs(args.pairs)
    if args.loss == "kto":
        pairs = as_singles(pairs)
    write_jsonl(tmp / "pairs.jsonl", pairs)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.model))
    tokens_per_pair = sum(len(p) + len(c) for e in tokenize_records(tokenizer, pairs, args.loss, 256, 256)
                          for p, c in e["sequences"]) / len(pairs)
    unit = "singles" if args.loss == "kto" else "pairs"
    pairs_seen = args.steps * args.batch
    results = {}
    for which in ("ours", "trl"):
        cmd = [sys.executable, __file__, "--which", which, "--pairs-path", str(tmp / "pairs.jsonl"), "--out",
               str(tmp / which), "--model", args.model, "--steps", str(args.steps), "--batch", str(args.batch),
               "--lr", str(args.lr), "--loss", args.loss] + (["--trl-defaults"] if args.trl_defaults else [])
        output = subprocess.run(cmd, capture_output=True, text=True)
        line = next((l for l in output.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{which} failed:\n{output.stderr[-3000:]}")
        r = json.loads(line[len("RESULT "):])
        r["pairs_per_s"] = pairs_seen / r["seconds"]
        r["tokens_per_s"] = pairs_seen * tokens_per_pair / r["seconds"]
        results[which] = r
        print(f"{which:>5}: {r['seconds']:6.1f} s wall, {r['pairs_per_s']:.2f} {unit}/s, {r['tokens_per_s']:.1f} tokens/s, "
              f"peak {r['peak_memory_gb']:.2f} GB, loss first {r['losses'][0]:.4f} last {r['losses'][-1]:.4f}"
              + (f", reference {r['reference']}" if "reference" in r else ""))
    ours, trl = results["ours"], results["trl"]
    print(f"{unit}/s ours/TRL: {ours['pairs_per_s'] / trl['pairs_per_s']:.2f}x"
          + (" (target 1.5x)" if args.loss == "dpo" else ""))
    print(f"peak memory ours/TRL: {ours['peak_memory_gb'] / trl['peak_memory_gb']:.2f}x")
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    print(f"mean loss over the last half: ours {mean(ours['losses'][len(ours['losses']) // 2:]):.4f}, "
          f"TRL {mean(trl['losses'][len(trl['losses']) // 2:]):.4f} (same pairs, same seed)")
    print(json.dumps({"tokens_per_pair": tokens_per_pair, **results}))


if __name__ == "__main__":
    main()
