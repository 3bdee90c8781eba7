"""Self-consistency scoring (ScPO, Prasad et al. 2024, arXiv:2411.04109): votes of equal final answers.

A sample's score is V(y)/k, the share of the k samples of its prompt whose answer equals its own. A sample with no
extractable answer casts no vote and gets no score, so it can never be chosen.

With `strict`, a sample votes only if it finished (not cut at max_new_tokens) and states its answer in an explicit form
(`#### N`, "The answer is N", `\\boxed{}`). A small model that rambles to the token limit leaves a last number that is
mostly noise; on SmolLM2-135M's arithmetic samples, the strict majority was right twice as often (docs/results.md,
Efficacy).
"""

from __future__ import annotations

from selfalign.judging.answers import count_votes, explicit_answer, extract_answer
from selfalign.records import Sample, ScoredSample, group_by_prompt


def _answer(sample: Sample, strict: bool) -> str | None:
    if not strict:
        return extract_answer(sample.text)
    return explicit_answer(sample.text) if sample.finish_reason == "stop" else None


def score_self_consistency(samples: list[Sample], strict: bool = False) -> list[ScoredSample]:
    scored = []
    for group in group_by_prompt(samples).values():
        grouped, votes = count_votes([_answer(s, strict) for s in group])
        for sample, answer in zip(group, grouped):
            vote_count = votes[answer] if answer is not None else 0
            scored.append(ScoredSample(
                **sample.model_dump(),
                answer=answer,
                votes=vote_count,
                num_samples=len(group),
                score=vote_count / len(group) if answer is not None else None,
                scorer="self-consistency",
            ))
    return scored
