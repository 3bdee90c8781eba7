"""Self-consistency scoring (ScPO, Prasad et al. 2024, arXiv:2411.04109): votes of equal final answers.

A sample's score is V(y)/k, the share of the k samples of its prompt whose answer equals its own. A sample with no
extractable answer casts no vote and gets no score, so it can never be chosen.
"""

from __future__ import annotations

from selfalign.judging.answers import count_votes, extract_answer
from selfalign.records import Sample, ScoredSample, group_by_prompt


def score_self_consistency(samples: list[Sample]) -> list[ScoredSample]:
    scored = []
    for group in group_by_prompt(samples).values():
        grouped, votes = count_votes([extract_answer(s.text) for s in group])
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
