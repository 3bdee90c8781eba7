"""Choosing one output from K samples at inference: MBR (the consensus sample, arXiv:2410.02902) or self-verification
(best-of-N where the policy rates its own K answers, 1-10, and the best rating wins).

`selfalign generate --select mbr|self-verify --n K` writes the chosen sample per prompt; `selfalign eval heldout
--select ...` reports the accuracy of the chosen sample beside greedy, sampled and majority@k.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from selfalign.judging.mbr import Utility
from selfalign.records import Sample, ScoredSample

SelectMethod = Literal["mbr", "self-verify"]


class SelectConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: SelectMethod = "mbr"
    utility: Utility = "chrf"
    mbr_references: int | None = Field(8, ge=1)
    embedding_model: str = "default"
    n: int = Field(4, ge=2, description="`selfalign eval gsm8k|mt-bench|alpaca-eval --select`: samples per answer")
    temperature: float = Field(0.7, gt=0, description="... and their temperature")

    def tag(self) -> str:
        """A file-name tag, so that answers chosen one way never resume answers chosen another way."""
        utility = f"-{self.utility}" if self.method == "mbr" else ""
        return f"select-{self.method}{utility}-n{self.n}-t{self.temperature:g}"


def make_selector(config: SelectConfig, model: str) -> tuple[Callable[[list[Sample]], list[ScoredSample]], Counter]:
    """(select, stats): `select` scores every sample (MBR score or self-rating) and returns one per prompt, the
    highest-scoring (the earliest on a tie or when all abstained). `model` is the policy: MBR's llm-judge utility and
    self-verify judge with it."""
    from selfalign.judging.mbr import select_best
    from selfalign.judging.scorers import JudgeConfig, make_scorer

    if config.method == "mbr":
        judge = JudgeConfig(scorer="mbr", utility=config.utility, mbr_references=config.mbr_references,
                            embedding_model=config.embedding_model, judge_model=model)
    else:  # the policy rates its own answers: the pointwise LLM judge with the policy as judge
        judge = JudgeConfig(scorer="llm-judge", mode="pointwise", judge_model=model)
    score, stats = make_scorer(judge)
    return (lambda samples: select_best(score(samples))), stats
