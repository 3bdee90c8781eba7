"""The records that stages pass to each other on disk, one JSONL line each."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from typing import Any, Iterable, Literal, TypeVar

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
    token_ids: list[int] | None = Field(None, description="the sampled token ids (with the log-probs): what the "
                                        "trainer checks before it takes `logprob` as the reference")


class ScoredSample(Sample):
    score: float | None = Field(None, description="higher is better; None means the scorer abstained")
    answer: str | None = None
    votes: int | None = None
    num_samples: int | None = None
    scorer: str = ""
    verdict: str | None = Field(None, description="execution scorer: why the sample passed its check or not")


def derived_prompt_id(messages: list[Message] | list[dict]) -> str:
    """A stable id for a prompt that has none: a hash of its messages (the same prompt always gets the same id)."""
    rows = [m.model_dump() if isinstance(m, BaseModel) else m for m in messages]
    return "p-" + hashlib.sha256(json.dumps(rows, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def _as_messages(value: Any, role: str) -> Any:
    """TRL's standard form (plain text) to its conversational form (a list of messages)."""
    return [{"role": role, "content": value}] if isinstance(value, str) else value


def _split_common_prefix(chosen: str, rejected: str) -> dict:
    """TRL's implicit prompt in standard (text) form: the prompt is the text chosen and rejected share, the answers
    what follows (a space before the split stays with the answers), as `trl.extract_prompt` splits them."""
    cut = 0
    while cut < min(len(chosen), len(rejected)) and chosen[cut] == rejected[cut]:
        cut += 1
    if cut > 0 and chosen[cut - 1] == " ":
        cut -= 1
    if cut == 0:
        raise ValueError("no 'prompt', and chosen and rejected share no leading text to take it from")
    return {"prompt": chosen[:cut], "chosen": chosen[cut:], "rejected": rejected[cut:]}


def _trl_preference_form(values: Any, completion_keys: tuple[str, ...]) -> Any:
    """Accept TRL's forms: standard (strings) or conversational (messages), with an explicit or implicit prompt (the
    shared leading messages of chosen and rejected, as in trl-lib/ultrafeedback_binarized); derive a missing id."""
    if not isinstance(values, dict):
        return values
    values = dict(values)
    if values.get("prompt") is None and isinstance(values.get("chosen"), str) and isinstance(values.get("rejected"),
                                                                                               str):
        values.update(_split_common_prefix(values["chosen"], values["rejected"]))
    if values.get("prompt") is not None:
        values["prompt"] = _as_messages(values["prompt"], "user")
    for key in completion_keys:
        if key in values:
            values[key] = _as_messages(values[key], "assistant")
    if values.get("prompt") is None and completion_keys == ("chosen", "rejected"):
        chosen, rejected = values.get("chosen"), values.get("rejected")
        if isinstance(chosen, list) and isinstance(rejected, list):
            shared = 0
            while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
                shared += 1
            if shared == 0:
                raise ValueError("no 'prompt', and chosen and rejected share no leading messages to take it from")
            values.update(prompt=chosen[:shared], chosen=chosen[shared:], rejected=rejected[shared:])
    if values.get("prompt_id") is None and isinstance(values.get("prompt"), list):
        values["prompt_id"] = derived_prompt_id(values["prompt"])
    return values


class PreferencePair(BaseModel):
    """TRL's preference format (conversational or standard, explicit or implicit prompt) plus what selfalign's losses
    need. `prompt_id` is derived from the prompt when absent."""

    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    prompt_id: str
    weight: float = 1.0
    chosen_score: float | None = None
    rejected_score: float | None = None
    # The sampler's log-probs under the policy that sampled them (TRL's precomputed-reference column names), with
    # the token ids they belong to; the trainer uses them as the reference where its own tokens are the same.
    ref_chosen_logps: float | None = None
    ref_rejected_logps: float | None = None
    chosen_token_ids: list[int] | None = None
    rejected_token_ids: list[int] | None = None

    @model_validator(mode="before")
    @classmethod
    def _trl_forms(cls, values: Any) -> Any:
        return _trl_preference_form(values, ("chosen", "rejected"))


class RankedList(BaseModel):
    """All kept completions of one prompt with their scores, for listwise losses (LiPO-λ)."""

    prompt: list[Message]
    completions: list[list[Message]]
    scores: list[float]
    prompt_id: str
    ref_logps: list[float] | None = None  # as PreferencePair's ref_*_logps, one per completion
    completion_token_ids: list[list[int]] | None = None

    @model_validator(mode="before")
    @classmethod
    def _trl_forms(cls, values: Any) -> Any:
        values = _trl_preference_form(values, ())
        if isinstance(values, dict) and isinstance(values.get("completions"), list):
            values["completions"] = [_as_messages(c, "assistant") for c in values["completions"]]
        return values

    @model_validator(mode="after")
    def _same_length(self):
        if len(self.completions) != len(self.scores):
            raise ValueError("'completions' and 'scores' differ in length")
        if len(self.completions) < 2:
            raise ValueError("a ranked list needs at least 2 completions")
        return self


class SingleCompletion(BaseModel):
    """One scored completion, unpaired (TRL's unpaired preference format: prompt, completion, label): for KTO a
    `label` (True desirable, False undesirable), for DRO a real `reward`; `build-pairs --mode singles` writes both."""

    prompt: list[Message]
    completion: list[Message]
    prompt_id: str
    label: bool | None = None
    reward: float | None = None
    ref_logps: float | None = None  # as PreferencePair's ref_*_logps
    completion_token_ids: list[int] | None = None

    @model_validator(mode="before")
    @classmethod
    def _trl_forms(cls, values: Any) -> Any:
        return _trl_preference_form(values, ("completion",))


class LabeledCompletion(SingleCompletion):
    """A single completion that KTO can train on: `label` is required (true desirable, false undesirable)."""

    label: bool


class RewardedCompletion(SingleCompletion):
    """A single completion that DRO can train on: `reward` is required and finite."""

    reward: float = Field(allow_inf_nan=False)


def prompt_id_of(record: PromptRecord, position: int) -> str:
    """A prompt's explicit id, else its line position (0-based) in the prompts file."""
    return record.id if record.id is not None else str(position)


SampleLike = TypeVar("SampleLike", bound=Sample)


def group_by_prompt(samples: Iterable[SampleLike]) -> dict[str, list[SampleLike]]:
    """Samples grouped by prompt id, prompts in first-seen order, samples in file order within each."""
    groups: dict[str, list[SampleLike]] = defaultdict(list)
    for sample in samples:
        groups[sample.prompt_id].append(sample)
    return dict(groups)
