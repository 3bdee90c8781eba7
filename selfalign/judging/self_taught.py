"""Self-Taught Evaluators (Wang et al. 2024, arXiv:2408.02666): a judge that improves without human labels.

    1. contrasting pairs: for an instruction x, the model writes a subtly different instruction x'; its answer to x
       is better for x than its answer to x', an order known without a label;
    2. the current judge gives several reasoned verdicts on each pair, in both positions;
    3. verdicts that pick the known-better answer are kept (chosen), those that do not are rejected;
    4. the judge is trained on them (DPO of a kept vs a rejected verdict for the same judge prompt), and the loop
       repeats with the trained judge.

Judge accuracy is measured on held-out contrasting pairs: the share of verdicts (greedy, both positions) that pick
the known-better answer, and position consistency (the two positions name the same answer).
"""

from __future__ import annotations

import random
from collections import defaultdict

from pydantic import BaseModel, ConfigDict, Field

from selfalign.generation import SamplingSettings
from selfalign.judging.prompts import pairwise_messages, parse_letter_verdict, parse_pair_verdict
from selfalign.records import Message, PreferencePair, PromptRecord
from selfalign.training.config import TrainConfig

MODIFY_INSTRUCTION = (
    "Below is an instruction. Write a new instruction that is closely related to it and looks similar, but asks for "
    "something subtly different, so that a good answer to the new instruction would be a worse answer to the "
    "original one. Write only the new instruction.\n\n"
    "Instruction:\n{question}"
)


class ContrastPair(BaseModel):
    """An instruction, the subtly changed one, and the model's answers to each: `better` answers `question`."""

    prompt_id: str
    question: str
    modified_question: str
    better: str
    worse: str


class Verdict(BaseModel):
    """One judgment of a contrasting pair shown in one order ('better_first': the better answer is A)."""

    prompt_id: str
    better_first: bool
    messages: list[Message]
    text: str
    verdict: str | None
    correct: bool


class SelfTaughtConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    heldout: int = Field(16, ge=1, description="contrasting pairs kept out of training, for the judge's accuracy")
    verdicts: int = Field(4, ge=2, description="sampled verdicts per pair and position")
    temperature: float = Field(0.8, gt=0, description="sampling temperature of the answers and the verdicts")
    answer_max_new_tokens: int = Field(192, ge=1, description="the most tokens of each answer to a prompt")
    verdict_max_new_tokens: int = Field(256, ge=1, description="the most tokens of each verdict")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(
        loss_type="dpo", learning_rate=5e-5, report_to=[], max_length=1024, max_prompt_length=768),
        description="the judge's training (DPO of kept vs rejected verdicts, LoRA); `model` is set per iteration")
    reasoning: bool = Field(True, description="reasoned verdicts ending in [[A]]/[[B]], as in the paper; False: the "
                            "judge answers with the letter only (a small model rarely keeps the verdict format)")
    seed: int = Field(0, description="seeds the judge's engine, and (plus the round) its verdicts and the pairs "
                      "built from them")


def _question(record: PromptRecord) -> str:
    return "\n\n".join(m.content for m in record.messages if m.role == "user")


def build_contrast_pairs(engine, prompts: list[PromptRecord], cfg: SelfTaughtConfig) -> list[ContrastPair]:
    """Greedy: the changed instruction, the answer to x, the answer to x'. Pairs whose changed instruction or answers
    came out empty or identical are dropped (their order would not be known)."""
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=cfg.answer_max_new_tokens)
    ids = [p.id or str(i) for i, p in enumerate(prompts)]
    asks = [PromptRecord(id=pid, messages=[Message(role="user", content=MODIFY_INSTRUCTION.format(question=_question(p)))])
            for pid, p in zip(ids, prompts)]
    modified = [s.text.strip() for s in engine.generate(asks, greedy, progress=True)]
    originals = [PromptRecord(id=pid, messages=p.messages) for pid, p in zip(ids, prompts)]
    changed = [PromptRecord(id=pid, prompt=text or "-") for pid, text in zip(ids, modified)]
    better = engine.generate(originals, greedy, progress=True)
    worse = engine.generate(changed, greedy, progress=True)
    pairs = []
    for pid, p, x2, yw, yl in zip(ids, prompts, modified, better, worse):
        if x2 and x2 != _question(p) and yw.text.strip() and yw.text.strip() != yl.text.strip():
            pairs.append(ContrastPair(prompt_id=pid, question=_question(p), modified_question=x2, better=yw.text,
                                      worse=yl.text))
    return pairs


def _judge_chat(pair: ContrastPair, better_first: bool, reasoning: bool) -> list[dict]:
    a, b = (pair.better, pair.worse) if better_first else (pair.worse, pair.better)
    return pairwise_messages(pair.question, a, b, letter_only=not reasoning)


def judge_verdicts(engine, pairs: list[ContrastPair], n: int, temperature: float, max_new_tokens: int,
                   seed: int = 0, reasoning: bool = True) -> list[Verdict]:
    """n verdicts per pair and position (n = 1 at temperature 0: the greedy verdict)."""
    parse = parse_pair_verdict if reasoning else parse_letter_verdict
    requests, keys = [], []
    for pair in pairs:
        for better_first in (True, False):
            keys.append((pair, better_first))
            requests.append(PromptRecord(id=f"{pair.prompt_id}|{'AB' if better_first else 'BA'}",
                                         messages=_judge_chat(pair, better_first, reasoning)))
    settings = SamplingSettings(n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    samples = engine.generate(requests, settings, progress=True)
    by_request = defaultdict(list)
    for s in samples:
        by_request[s.prompt_id].append(s)
    verdicts = []
    for (pair, better_first), request in zip(keys, requests):
        for s in by_request[request.id]:
            verdict = parse(s.text)
            verdicts.append(Verdict(prompt_id=pair.prompt_id, better_first=better_first, messages=request.messages,
                                    text=s.text, verdict=verdict,
                                    correct=verdict == ("A" if better_first else "B")))
    return verdicts


def verdict_pairs(verdicts: list[Verdict], seed: int = 0) -> tuple[list[PreferencePair], dict]:
    """Per judge prompt (pair and position): one kept verdict (chosen) against one wrong or unparsable verdict
    (rejected), both drawn at random. Prompts whose verdicts are all right or all wrong give no pair."""
    rng = random.Random(seed)
    groups: dict[tuple[str, bool], list[Verdict]] = defaultdict(list)
    for v in verdicts:
        groups[(v.prompt_id, v.better_first)].append(v)
    records, report = [], defaultdict(int)
    for (prompt_id, better_first), group in groups.items():
        right = [v for v in group if v.correct]
        wrong = [v for v in group if not v.correct]
        if not right or not wrong:
            report["dropped_all_right" if right else "dropped_all_wrong"] += 1
            continue
        chosen, rejected = rng.choice(right), rng.choice(wrong)
        records.append(PreferencePair(prompt=list(chosen.messages), chosen=[Message(role="assistant", content=chosen.text)],
                                      rejected=[Message(role="assistant", content=rejected.text)],
                                      prompt_id=f"{prompt_id}|{'AB' if better_first else 'BA'}"))
    report.update(judge_prompts=len(groups), records=len(records),
                  verdicts_right=sum(v.correct for v in verdicts), verdicts=len(verdicts))
    return records, dict(report)


def judge_accuracy(verdicts: list[Verdict]) -> dict:
    """From greedy verdicts in both positions: accuracy (verdicts picking the better answer; abstentions count as
    wrong) with a 95% bootstrap interval over pairs, position consistency, and the abstention rate."""
    by_pair: dict[str, dict[bool, Verdict]] = defaultdict(dict)
    for v in verdicts:
        by_pair[v.prompt_id][v.better_first] = v
    per_pair = [sum(v.correct for v in both.values()) / len(both) for both in by_pair.values()]
    consistent = [both[True].verdict is not None and both[False].verdict is not None and
                  {"A": "B", "B": "A", "tie": "tie"}[both[True].verdict] == both[False].verdict
                  for both in by_pair.values() if len(both) == 2]
    rng, n = random.Random(0), len(per_pair)
    means = sorted(sum(per_pair[rng.randrange(n)] for _ in range(n)) / n for _ in range(2000)) if n else []
    return {"pairs": n, "accuracy": sum(per_pair) / n if n else None,
            "accuracy_ci95": [means[50], means[1949]] if n else None,
            "position_consistency": sum(consistent) / len(consistent) if consistent else None,
            "abstained": sum(v.verdict is None for v in verdicts) / len(verdicts) if verdicts else None}
