"""The records that stages pass to each other on disk, one JSONL line each."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class PromptRecord(BaseModel):
    """One prompt: a `prompt` string or a `messages` list. `answer` is for evaluation only, never for training."""

    model_config = ConfigDict(extra="allow")
    id: str | None = None
    prompt: str | None = None
    messages: list[Message] | None = None
    answer: str | None = None

    @model_validator(mode="after")
    def _one_of_prompt_or_messages(self):
        if self.messages is None and self.prompt is None:
            raise ValueError("needs a 'prompt' string or a 'messages' list")
        if self.messages is None:
            self.messages = [Message(role="user", content=self.prompt)]
        if not self.messages:
            raise ValueError("'messages' is empty")
        return self


class Sample(BaseModel):
    """One completion of one prompt, as a generation engine returned it."""

    prompt_id: str
    sample_index: int
    messages: list[Message]
    text: str
    num_tokens: int
    finish_reason: Literal["stop", "length"]
    logprob: float | None = Field(None, description="sum of the sampled tokens' log-probs (untempered), if asked")


class ScoredSample(Sample):
    score: float | None = Field(None, description="higher is better; None means the scorer abstained")
    answer: str | None = None
    votes: int | None = None
    num_samples: int | None = None
    scorer: str = ""


class PreferencePair(BaseModel):
    """TRL's conversational preference format plus what selfalign's losses need."""

    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    prompt_id: str
    weight: float = 1.0
    chosen_score: float | None = None
    rejected_score: float | None = None


class RankedList(BaseModel):
    """All kept completions of one prompt with their scores, for listwise losses (LiPO-λ)."""

    prompt: list[Message]
    completions: list[list[Message]]
    scores: list[float]
    prompt_id: str

    @model_validator(mode="after")
    def _same_length(self):
        if len(self.completions) != len(self.scores):
            raise ValueError("'completions' and 'scores' differ in length")
        return self
