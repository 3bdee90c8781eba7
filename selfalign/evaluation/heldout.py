"""Held-out answer accuracy of a policy: greedy, sampled (mean over k samples) and majority@k.

The loop's evaluation stage. Answers are compared after the same normalization the self-consistency scorer uses.
The generation-verification gap is majority@k minus greedy accuracy.
"""

from __future__ import annotations

import random

from pydantic import ConfigDict, Field

from selfalign.generation import SamplingFields, SamplingSettings
from selfalign.judging.answers import extract_answer, majority_answer, normalize_number
from selfalign.records import PromptRecord, group_by_prompt, prompt_id_of
from selfalign.selection import SelectConfig


class HeldoutConfig(SamplingFields):
    """The held-out evaluation: greedy accuracy, and with the sampling fields, sampled accuracy and majority@k."""

    model_config = ConfigDict(extra="forbid")
    data: str
    limit: int | None = None
    k: int = 8
    sampled_limit: int | None = None  # sampled/majority@k on the first N prompts only (greedy uses `limit`)
    max_new_tokens: int = Field(128, ge=1, description="the most tokens an answer may have")
    self_revision_rounds: int = 0
    select: SelectConfig | None = None  # also the accuracy of one sample chosen from the k (MBR or self-verify)


def answer_is_right(text: str, gold: str) -> bool:
    answer = extract_answer(text)
    return answer is not None and answer == (normalize_number(gold) or gold)


def evaluate_heldout(engine, prompts: list[PromptRecord], cfg: HeldoutConfig, seed: int = 0,
                     policy: str | None = None) -> dict:
    """`policy`: the model's name, for `select` methods that judge with it (the engine's model when not given)."""
    prompts = [p for p in prompts if p.answer is not None][:cfg.limit]
    if not prompts:
        raise ValueError(f"{cfg.data}: no held-out prompts with an 'answer' field")
    greedy = engine.generate(prompts, SamplingSettings(temperature=0.0, max_new_tokens=cfg.max_new_tokens,
                                                       stop_at_answer=cfg.stop_at_answer), progress=True)
    greedy_correct = [answer_is_right(s.text, p.answer) for s, p in zip(greedy, prompts)]
    result = {"num_prompts": len(prompts), "greedy_accuracy": sum(greedy_correct) / len(prompts),
              "greedy_correct": [int(c) for c in greedy_correct],
              "greedy_no_answer": sum(extract_answer(s.text) is None for s in greedy) / len(prompts),
              # the per-item samples file's rows (evaluation.files.write_heldout moves them out of eval.json)
              "greedy_items": [{"prompt_id": prompt_id_of(p, i), "output": s.text, "extracted": extract_answer(s.text),
                                "gold": p.answer, "correct": int(c)}
                               for i, (s, p, c) in enumerate(zip(greedy, prompts, greedy_correct))]}
    if cfg.k > 0:
        sampled_prompts = prompts[:cfg.sampled_limit]
        settings = SamplingSettings(n=cfg.k, temperature=cfg.temperature, top_p=cfg.top_p, min_p=cfg.min_p,
                                    max_new_tokens=cfg.max_new_tokens, seed=seed, stop_at_answer=cfg.stop_at_answer)
        sampled = engine.generate(sampled_prompts, settings, progress=True)
        by_prompt = group_by_prompt(sampled)
        ids = [prompt_id_of(p, i) for i, p in enumerate(sampled_prompts)]
        sample_acc, majority, any_right = [], [], []
        for pid, p in zip(ids, sampled_prompts):
            texts = [s.text for s in by_prompt[pid]]
            right = [answer_is_right(t, p.answer) for t in texts]
            sample_acc.append(sum(right) / len(right))
            top = majority_answer([extract_answer(t) for t in texts])
            majority.append(top is not None and top == (normalize_number(p.answer) or p.answer))
            any_right.append(any(right))
        n = len(sampled_prompts)
        if cfg.select is not None:
            from selfalign.selection import make_selector

            select, stats = make_selector(cfg.select, policy or getattr(engine, "model_name", None) or engine.model)
            chosen = {s.prompt_id: s for s in select(sampled)}
            picked = [answer_is_right(chosen[pid].text, p.answer) for pid, p in zip(ids, sampled_prompts)]
            result.update({f"selected_{cfg.select.method}_accuracy": sum(picked) / n,
                           "selected_correct": [int(c) for c in picked], "select_stats": dict(stats)})
        greedy_same_prompts = sum(greedy_correct[:n]) / n  # the gap compares like with like
        result.update(sampled_num_prompts=n, sampled_accuracy=sum(sample_acc) / n,
                      sampled_correct=sample_acc, majority_correct=[int(m) for m in majority],
                      **{f"majority_at_{cfg.k}": sum(majority) / n, f"pass_at_{cfg.k}": sum(any_right) / n},
                      generation_verification_gap=sum(majority) / n - greedy_same_prompts)
    if cfg.self_revision_rounds > 0:
        from selfalign.revision import self_revise

        histories = self_revise(engine, prompts, SamplingSettings(temperature=0.0, max_new_tokens=cfg.max_new_tokens),
                                cfg.self_revision_rounds)
        result["revised_accuracy"] = sum(answer_is_right(h[-1], p.answer)
                                         for h, p in zip(histories, prompts)) / len(prompts)
    return result


def paired_bootstrap(before: list[int], after: list[int], samples: int = 10000, seed: int = 0) -> dict:
    """Mean gain (after - before) on the same items with a percentile bootstrap 95% interval."""
    assert len(before) == len(after) and before
    rng = random.Random(seed)
    n = len(before)
    diffs = [a - b for a, b in zip(after, before)]
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(samples))
    return {"gain": sum(diffs) / n, "ci95_low": means[int(0.025 * samples)], "ci95_high": means[int(0.975 * samples) - 1],
            "n": n}
