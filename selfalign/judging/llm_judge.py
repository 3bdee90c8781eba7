"""LLM-as-judge scoring: pointwise 1-10 ratings (MT-Bench style) and position-debiased pairwise preferences.

Pairwise judging asks both orders. With log-probabilities, the preference for a over b is the mean of
P(a wins | a shown first) and P(a wins | a shown second), read from the answer letters; without, each order gives a
verdict and two orders that disagree count as a tie. Unparsable verdicts are abstentions, counted, never a 0.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict

from selfalign.judging.prompts import (pairwise_messages, parse_pair_verdict, parse_rating, pointwise_messages)
from selfalign.records import Sample, ScoredSample, group_by_prompt


def question_of(sample: Sample) -> str:
    return "\n\n".join(m.content for m in sample.messages if m.role == "user")


def judge_pointwise(judge, samples: list[Sample], references: dict[str, str] | None = None,
                    stats: Counter | None = None) -> list[ScoredSample]:
    """Rate each sample 1-10; `references` maps prompt id to a reference answer for graded categories."""
    references = references or {}
    chats = [pointwise_messages(question_of(s), s.text, references.get(s.prompt_id)) for s in samples]
    judgments = judge.complete(chats)
    stats = stats if stats is not None else Counter()
    scored = []
    for sample, judgment in zip(samples, judgments):
        rating = parse_rating(judgment)
        stats["abstained" if rating is None else "rated"] += 1
        scored.append(ScoredSample(**sample.model_dump(), score=rating, scorer=f"llm-judge-pointwise:{judge.name}"))
    return scored


def pairwise_preferences(judge, question: str, pairs: list[tuple[str, str]], use_logprobs: bool = True,
                         stats: Counter | None = None) -> list[float | None]:
    """For each (a, b): P(a preferred over b) in [0, 1], debiased over both orders; None is an abstention."""
    stats = stats if stats is not None else Counter()
    if use_logprobs:
        forward = judge.letter_probs([pairwise_messages(question, a, b, letter_only=True) for a, b in pairs])
        backward = judge.letter_probs([pairwise_messages(question, b, a, letter_only=True) for a, b in pairs])
        if all(p is not None for p in forward + backward):
            stats["pairs_logprob"] += len(pairs)
            return [(f["A"] + r["B"]) / 2 for f, r in zip(forward, backward)]
        stats["logprobs_unavailable"] += 1
    forward = judge.complete([pairwise_messages(question, a, b, letter_only=False) for a, b in pairs])
    backward = judge.complete([pairwise_messages(question, b, a, letter_only=False) for a, b in pairs])
    preferences = []
    for first, second in zip(forward, backward):
        preference, outcome = combine_verdicts(parse_pair_verdict(first), parse_pair_verdict(second))
        stats[outcome] += 1
        preferences.append(preference)
    return preferences


def combine_verdicts(a_first: str | None, a_second: str | None) -> tuple[float | None, str]:
    """P(a over b) from the verdict with a shown first and the verdict with a shown second (where a is 'B').

    Either unparsable -> abstention (None); the two orders disagreeing -> a tie (0.5), since position bias, not
    quality, decided at least one of them.
    """
    if a_first is None or a_second is None:
        return None, "abstained"
    first = {"A": 1.0, "B": 0.0, "tie": 0.5}[a_first]
    second = {"A": 0.0, "B": 1.0, "tie": 0.5}[a_second]
    if first != second:
        return 0.5, "order_disagreement_tie"
    return first, "pairs_verdict"


def judge_pairwise(judge, samples: list[Sample], use_logprobs: bool = True,
                   stats: Counter | None = None) -> list[ScoredSample]:
    """Score each sample by its mean preference against every other sample of the same prompt (round robin)."""
    scored = []
    for group in group_by_prompt(samples).values():
        index_pairs = list(itertools.combinations(range(len(group)), 2))
        prefs = pairwise_preferences(judge, question_of(group[0]), [(group[i].text, group[j].text)
                                                                     for i, j in index_pairs], use_logprobs, stats)
        wins: dict[int, list[float]] = defaultdict(list)
        for (i, j), p in zip(index_pairs, prefs):
            if p is not None:
                wins[i].append(p)
                wins[j].append(1 - p)
        for index, sample in enumerate(group):
            score = sum(wins[index]) / len(wins[index]) if wins[index] else None
            scored.append(ScoredSample(**sample.model_dump(), score=score, scorer=f"llm-judge-pairwise:{judge.name}"))
    return scored
