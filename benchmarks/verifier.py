"""Compare verifiers on the same samples: which rule picks right answers, for how many prompts.

    python benchmarks/verifier.py [--limit 216] [--n 8] [--programs] [--out out/verifier] [--seed 0]

Samples `--n` completions of the first `--limit` held-out problems at the default recipe's settings (and, with
`--programs`, as many program answers of the same problems), plus the policy's greedy answers; then scores them with
each verifier and builds the recipe's ScPO pairs, and prints one row per verifier: prompts kept, precision of the
chosen answers (Wilson 95% interval), pick accuracy, and the share of pairs that reject a right answer. Answers are
read from the held-out file for this measurement only. Samples are kept in `--out`, so a rerun rescores without
sampling again (delete the folder to sample anew).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_flags  # noqa: E402

PROGRAM_INSTRUCTION = ("Write a short Python program that computes the answer and prints it. Put the program in a "
                       "```python code block.")


def as_program_prompt(prompt):
    """The same problem, asking for a program instead of a worded solution."""
    from selfalign.records import Message

    question = prompt.messages[-1].content.split("\n")[0]
    return prompt.model_copy(update={"messages": [Message(role="user", content=f"{question}\n{PROGRAM_INSTRUCTION}")],
                                     "id": prompt.id})


def sample(args, prompts, out: Path) -> dict:
    from selfalign.generation import SamplingSettings, get_engine
    from selfalign.io import write_jsonl

    engine = get_engine("auto", args.model, seed=args.seed)
    timings = {}
    try:
        jobs = [("greedy", prompts, SamplingSettings(temperature=0.0, max_new_tokens=args.max_new_tokens)),
                ("samples", prompts, SamplingSettings(n=args.n, temperature=args.temperature, min_p=args.min_p,
                                                      max_new_tokens=args.max_new_tokens, seed=args.seed))]
        if args.programs:
            jobs.append(("program_samples", [as_program_prompt(p) for p in prompts],
                         SamplingSettings(n=args.n, temperature=args.temperature, min_p=args.min_p,
                                          max_new_tokens=args.program_max_new_tokens, seed=args.seed)))
        for name, job_prompts, settings in jobs:
            if (out / f"{name}.jsonl").exists():
                continue
            started = time.perf_counter()
            samples = engine.generate(job_prompts, settings, progress=True)
            timings[name] = {"seconds": round(time.perf_counter() - started, 1),
                             "tokens": sum(s.num_tokens for s in samples)}
            write_jsonl(out / f"{name}.jsonl", samples)
    finally:
        engine.close()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="data/arithmetic_heldout_600.jsonl")
    parser.add_argument("--limit", type=int, default=216)
    parser.add_argument("--model", default="default")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--min-p", type=float, default=0.1)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--program-max-new-tokens", type=int, default=128)
    parser.add_argument("--programs", action="store_true", help="also sample and score program answers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/verifier")
    args = parser.parse_args()

    from selfalign.io import read_jsonl
    from selfalign.judging.answers import extract_answer, normalize_number
    from selfalign.judging.scorers import JudgeConfig, make_scorer
    from selfalign.pairs import PairOptions
    from selfalign.records import PromptRecord, Sample
    from selfalign.verifier_check import diagnose

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = [p for p in read_jsonl(args.data, PromptRecord) if p.answer is not None][:args.limit]
    timings = sample(args, prompts, out)
    answers = {p.id: p.answer for p in prompts}
    greedy = {s.prompt_id: extract_answer(s.text) == normalize_number(answers[s.prompt_id])
              for s in read_jsonl(out / "greedy.jsonl", Sample)}
    text_samples = read_jsonl(out / "samples.jsonl", Sample)
    program_path = out / "program_samples.jsonl"
    program_samples = read_jsonl(program_path, Sample) if program_path.exists() else None

    verifiers = [
        ("strict majority vote", "text", {"scorer": "self-consistency", "strict_answers": True}),
        ("equations hold, grounded, answer from them", "text", {"scorer": "execution"}),
        ("equations hold, grounded", "text", {"scorer": "execution", "answer_from_claims": False}),
        ("equations hold", "text", {"scorer": "execution", "grounded": False, "answer_from_claims": False}),
    ]
    if program_samples is not None:
        verifiers.append(("programs run (program answers)", "program", {"scorer": "execution", "check": "program"}))
    rows = []
    for label, kind, judge in verifiers:
        samples = text_samples if kind == "text" else program_samples
        score, stats = make_scorer(JudgeConfig(**judge))
        scored = score(samples)
        for tau in (1, 2, 3):
            options = PairOptions(mode="scpo", vote_threshold=tau, chosen_pick="shortest")
            result = diagnose(scored, answers, options, greedy)
            rows.append({"verifier": label, "tau": tau, **{k: v for k, v in result.items() if k != "filter_report"},
                         "verdicts": {k: v for k, v in stats.items()}})
    print(f"# Verifiers on {len(prompts)} held-out problems x {args.n} samples (T {args.temperature}, min_p "
          f"{args.min_p}, <= {args.max_new_tokens} tokens), seed {args.seed}; {time.strftime('%Y-%m-%d')}; "
          f"CPU flags: {cpu_flags()}")
    greedy_acc = sum(greedy.values()) / len(greedy)
    print(f"policy: greedy accuracy {greedy_acc:.1%}, sampled {rows[0]['sampled_accuracy_all']:.1%}, "
          f"pass@{args.n} {rows[0]['pass_at_k_all']:.1%}; sampling {timings or '(reused)'}\n")
    print("| verifier | tau | prompts kept | chosen right (95% CI) | greedy right on kept | pick accuracy | "
          "rejected right | verdict |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        ci = r["precision_ci95"]
        precision = "-" if r["precision"] is None else f"{r['precision']:.0%} [{ci[0]:.0%}, {ci[1]:.0%}]"
        greedy_kept = "-" if r.get("greedy_accuracy_kept") is None else f"{r['greedy_accuracy_kept']:.0%}"
        rejected = "-" if r["rejected_right"] is None else f"{r['rejected_right']:.0%}"
        print(f"| {r['verifier']} | {r['tau']} | {r['prompts_kept']} | {precision} | {greedy_kept} | "
              f"{r['pick_accuracy']:.1%} | {rejected} | {r['verdict']} |")
    for label, kind, _ in verifiers:
        verdicts = next(r["verdicts"] for r in rows if r["verifier"] == label)
        print(f"\n{label}: " + ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items())))
    (out / "table.json").write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
