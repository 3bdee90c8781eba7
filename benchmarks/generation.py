"""Generation throughput in one run: our hf engine, our vllm engine, vllm.LLM.generate called directly, and a plain
one-prompt-at-a-time transformers `generate` loop. Prints tokens/s for each and the ratios the targets name.

    python benchmarks/generation.py [--num-prompts 32 --n 4 --max-new-tokens 128 --loop-prompts 4 --repeats 2]

The loop is timed on the first --loop-prompts prompts only (it is slow); tokens/s is a rate, so it compares.
"""

import argparse
import json
import time

import torch


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="default")
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--loop-prompts", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="vLLM runs of each kind, alternating")
    parser.add_argument("--skip-vllm", action="store_true")
    args = parser.parse_args()

    from selfalign.arithmetic import make_splits
    from selfalign.generation import SamplingSettings, chat_token_ids, get_engine, vllm_available
    from selfalign.records import PromptRecord

    train, _ = make_splits(args.num_prompts, 0, seed=123)
    prompts = [PromptRecord(**row) for row in train]
    settings = SamplingSettings(n=args.n, temperature=0.8, top_p=0.95, max_new_tokens=args.max_new_tokens, seed=0)
    results = {}

    def record(name, tokens, seconds):
        results[name] = tokens / seconds
        print(f"{name:>22}: {tokens:7d} tokens in {seconds:7.1f} s = {tokens / seconds:7.1f} tokens/s", flush=True)

    if vllm_available() and not args.skip_vllm:
        from vllm import SamplingParams

        engine = get_engine("vllm", args.model, seed=0)
        engine.generate(prompts[:2], settings.model_copy(update={"max_new_tokens": 8}))  # warm-up
        requests = [{"prompt_token_ids": chat_token_ids(engine.tokenizer, p.messages)} for p in prompts]
        params = SamplingParams(n=args.n, temperature=0.8, top_p=0.95, max_tokens=args.max_new_tokens)
        ours, direct = [], []
        for _ in range(args.repeats):  # alternate, best of each: the machine is shared, so noise is one-sided
            start = time.perf_counter()
            samples = engine.generate(prompts, settings)
            ours.append((sum(s.num_tokens for s in samples), time.perf_counter() - start))
            start = time.perf_counter()
            outputs = engine.llm.generate(requests, params, use_tqdm=False)
            direct.append((sum(len(c.token_ids) for o in outputs for c in o.outputs), time.perf_counter() - start))
        record("selfalign vllm", *max(ours, key=lambda r: r[0] / r[1]))
        record("vllm.LLM.generate", *max(direct, key=lambda r: r[0] / r[1]))
        engine.close()
        del engine
    else:
        print("vllm: not installed (or --skip-vllm): skipping the vLLM rows")

    hf = get_engine("hf", args.model)
    hf.generate(prompts[:1], settings.model_copy(update={"max_new_tokens": 4}))  # warm-up
    start = time.perf_counter()
    samples = hf.generate(prompts, settings)
    record("selfalign hf", sum(s.num_tokens for s in samples), time.perf_counter() - start)

    tokenizer, model = hf.tokenizer, hf.model
    eos = tokenizer.eos_token_id
    tokens, start = 0, time.perf_counter()
    with torch.no_grad():
        for prompt in prompts[:args.loop_prompts]:
            ids = torch.tensor([chat_token_ids(tokenizer, prompt.messages)])
            for _ in range(args.n):
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                     temperature=0.8, top_p=0.95, top_k=0, max_new_tokens=args.max_new_tokens,
                                     pad_token_id=eos)
                new = out[0, ids.shape[1]:].tolist()
                tokens += new.index(eos) + 1 if eos in new else len(new)
    record("one-at-a-time loop", tokens, time.perf_counter() - start)

    ratios = {}
    if "selfalign vllm" in results:
        ratios["vllm / hf (target >= 2)"] = results["selfalign vllm"] / results["selfalign hf"]
        ratios["selfalign vllm / vllm.LLM (target >= 0.9)"] = results["selfalign vllm"] / results["vllm.LLM.generate"]
    ratios["hf / loop (target >= 3)"] = results["selfalign hf"] / results["one-at-a-time loop"]
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}x")
    print(json.dumps({"tokens_per_s": results, "ratios": ratios, "device": "cuda" if torch.cuda.is_available()
                      else "cpu", "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
