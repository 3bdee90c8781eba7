"""The judge stage's settings and the one place that turns them into a scorer: `selfalign judge`, the loop's judge
step and `selfalign eval` all build their scorers and judge backends here."""

from __future__ import annotations

from collections import Counter
from functools import partial
from pathlib import Path
from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from selfalign.judging.mbr import Utility
from selfalign.records import Sample, ScoredSample

ScoreGroup = Callable[[list[Sample]], list[ScoredSample]]


class JudgeConfig(BaseModel):
    """How samples are scored: a recipe's `judge:` step, or `selfalign judge --config`."""

    model_config = ConfigDict(extra="forbid")
    scorer: Literal["self-consistency", "execution", "llm-judge", "reward-model", "mbr"] = "self-consistency"
    check: Literal["equations", "program"] = Field("equations", description="execution: compute each sample's "
                                                   "written equations, or run it as a program")
    grounded: bool = Field(True, description="execution, equations: every operand must be a number of the question "
                           "or an earlier true result")
    answer_from_claims: bool = Field(True, description="execution, equations: the stated answer must be the result "
                                     "of one of the sample's true equations")
    cut_at_answer: bool = Field(True, description="execution, equations: a sample ends at its first stated answer "
                                "(what follows is cut, so the chosen completion teaches the policy to stop there)")
    mode: Literal["pointwise", "pairwise"] = Field("pairwise", description="llm-judge: 1-10 ratings or round robin")
    judge_model: str = Field("policy", description="'policy' (the model being trained: self-rewarding; outside "
                             "`selfalign run`, the default model), a model name or folder, or an endpoint's model")
    judge_base_url: str | None = Field(None, description="an OpenAI-compatible endpoint (.../v1)")
    judge_api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the endpoint's key")
    use_logprobs: bool = Field(True, description="pairwise: read preferences from answer-letter probabilities")
    utility: Utility = Field(
        "chrf", description="mbr: the utility of a sample against each pseudo-reference (llm-judge: judge_model's "
        "pairwise preference)")
    mbr_references: int | None = Field(8, ge=1, description="mbr: pseudo-references per sample (cost k x this; "
                                       "None: all k-1 others, cost k²)")
    embedding_model: str = Field("default", description="mbr with utility embedding: a sentence-embedding model "
                                 "(hub id or folder)")
    concurrency: int = Field(8, ge=1, description="endpoint requests in flight")
    judge_timeout: float = Field(300.0, gt=0, description="endpoint: seconds one request may take, retries included")
    strict_answers: bool = Field(False, description="self-consistency: only a sample that finished and states its "
                                 "answer in the asked form ('The answer is N', '#### N', \\boxed{}) votes; a cut-off "
                                 "or unformatted one abstains, and so can be rejected but never chosen")
    on_judge_error: Literal["stop", "abstain"] = Field("stop", description="endpoint: when a request's time is spent, "
                                                       "stop with an error, or count it as an abstention")

    @field_validator("strict_answers")
    @classmethod
    def _strict_only_for_votes(cls, strict: bool, info: ValidationInfo) -> bool:
        scorer = info.data.get("scorer")
        if strict and scorer != "self-consistency":
            raise ValueError(f"applies to the self-consistency scorer, not {scorer}")
        return strict

    def resume_settings(self) -> dict:
        """The settings a judge partial's scores depend on; how the endpoint is driven (concurrency, time budget)
        may change between a killed run and its rerun."""
        return self.model_dump(exclude={"concurrency", "judge_timeout"})


def make_judge_backend(model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                       concurrency: int = 8, cache_path: Path | None = None, max_tokens: int | None = None,
                       timeout: float = 300.0, on_error: str = "stop", stats: Counter | None = None):
    """An OpenAI-compatible endpoint when `base_url` is given, else a local transformers model."""
    from selfalign.judging.backends import LocalJudge, OpenAIJudge

    limit = {} if max_tokens is None else {"max_tokens": max_tokens}
    if base_url:
        return OpenAIJudge(model, base_url=base_url, api_key_env=api_key_env, concurrency=concurrency,
                           cache_path=cache_path, timeout=timeout, on_error=on_error, stats=stats, **limit)
    return LocalJudge(model, **({} if max_tokens is None else {"max_new_tokens": max_tokens}))


def make_scorer(config: JudgeConfig, cache_path: Path | None = None) -> tuple[ScoreGroup, Counter]:
    """(score_group, stats): a function that scores whole prompt groups, and the counter it reports into."""
    stats: Counter = Counter()
    judge_model = "default" if config.judge_model == "policy" else config.judge_model
    if config.scorer == "self-consistency":
        from selfalign.judging.self_consistency import score_self_consistency

        return partial(score_self_consistency, strict=config.strict_answers), stats
    if config.scorer == "execution":
        from selfalign.judging.execution import score_execution

        return partial(score_execution, check=config.check, grounded=config.grounded,
                       answer_from_claims=config.answer_from_claims, cut_at_answer=config.cut_at_answer,
                       stats=stats), stats
    if config.scorer == "mbr":
        from selfalign.judging.mbr import EmbeddingUtility, judge_utility, metric_utility, score_mbr

        if config.utility == "embedding":
            utility = EmbeddingUtility(config.embedding_model)
        elif config.utility == "llm-judge":
            backend = make_judge_backend(judge_model, config.judge_base_url, config.judge_api_key_env,
                                         config.concurrency, cache_path, timeout=config.judge_timeout,
                                         on_error=config.on_judge_error, stats=stats)
            utility = judge_utility(backend, config.use_logprobs, stats)
        else:
            utility = metric_utility(config.utility)
        return (lambda group: score_mbr(group, utility, config.mbr_references, config.utility)), stats
    if config.scorer == "reward-model":
        from selfalign.judging.reward_model import RewardModelScorer

        return RewardModelScorer(judge_model).score, stats
    from selfalign.judging.llm_judge import judge_pairwise, judge_pointwise

    backend = make_judge_backend(judge_model, config.judge_base_url, config.judge_api_key_env, config.concurrency,
                                 cache_path, timeout=config.judge_timeout, on_error=config.on_judge_error, stats=stats)
    if config.mode == "pointwise":
        return (lambda group: judge_pointwise(backend, group, stats=stats)), stats
    return (lambda group: judge_pairwise(backend, group, config.use_logprobs, stats=stats)), stats
