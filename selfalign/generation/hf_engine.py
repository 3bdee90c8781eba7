"""The transformers `generate` engine: batched, left padded, prompts sorted by length, memory-bounded batches."""

from __future__ import annotations

import torch

from selfalign.generation import SamplingSettings, cut_at_stop, fit_to_context, left_pad, prompt_ids
from selfalign.models import load_model, load_tokenizer
from selfalign.progress import progress_bar
from selfalign.records import PromptRecord, Sample


class HFEngine:
    name = "hf"

    def __init__(self, model: str, device: str = "auto", dtype: str = "auto", max_batch_tokens: int = 65536,
                 trust_remote_code: bool = False, model_obj=None, tokenizer=None):
        """`max_batch_tokens` bounds (prompt + new tokens) x sequences per batch, which bounds KV-cache memory.

        `model_obj`/`tokenizer` let a caller that already holds the model in memory (a policy judging itself) reuse it.
        """
        self.tokenizer = tokenizer or load_tokenizer(model, trust_remote_code=trust_remote_code)
        self.model = model_obj if model_obj is not None else load_model(model, device, dtype, trust_remote_code)
        self.model_name, self._load_args = model, (device, dtype, trust_remote_code)
        self.max_batch_tokens = max_batch_tokens
        self.context_length = getattr(self.model.config, "max_position_embeddings", None)
        from selfalign.precision import Precision

        weights = str(self.model.dtype).removeprefix("torch.")
        self.precision = Precision(weights, "asked for" if dtype != "auto" else "transformers engine: bf16 on a bf16 "
                                   "GPU, fp32 on CPU")

    def _batches(self, encoded: list[list[int]], settings: SamplingSettings) -> list[list[int]]:
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        batches, current, longest = [], [], 0
        for i in order:
            longest_if_added = max(longest, len(encoded[i]))
            cost = (len(current) + 1) * settings.n * (longest_if_added + settings.max_new_tokens)
            if current and cost > self.max_batch_tokens:
                batches.append(current)
                current, longest_if_added = [], len(encoded[i])
            current.append(i)
            longest = longest_if_added
        if current:
            batches.append(current)
        return batches

    @torch.no_grad()
    def generate(self, prompts: list[PromptRecord], settings: SamplingSettings, progress: bool = False) -> list[Sample]:
        ids = prompt_ids(prompts)
        prompts, encoded = fit_to_context(self.tokenizer, prompts, self.context_length, settings)
        eos_ids = self._eos_ids()
        pad_id = self.tokenizer.pad_token_id
        device = self.model.device
        results: dict[int, list[Sample]] = {}
        batches = self._batches(encoded, settings)
        bar = progress_bar(total=len(prompts), desc="generate (hf)", unit="prompts", disable=not progress)
        for batch_index, batch in enumerate(batches):
            input_ids, attention = left_pad([encoded[i] for i in batch], pad_id)
            width = input_ids.shape[1]
            torch.manual_seed(settings.seed + batch_index)  # same seed, same batches -> same samples
            sampling = settings.temperature > 0
            processors = None
            if settings.stop_at_answer:
                from transformers import LogitsProcessorList

                from selfalign.generation.answer_stop import hf_logits_processor

                processors = LogitsProcessorList([hf_logits_processor(self.tokenizer, self.tokenizer.eos_token_id,
                                                                      width)])
            out = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                do_sample=sampling,
                temperature=settings.temperature if sampling else None,
                top_p=settings.top_p if sampling else None,
                min_p=settings.min_p if sampling and settings.min_p > 0 else None,
                top_k=0 if sampling else None,  # transformers defaults top_k=50; vLLM does not
                max_new_tokens=settings.max_new_tokens,
                num_return_sequences=settings.n,
                pad_token_id=pad_id,
                eos_token_id=eos_ids,
                stop_strings=settings.stop or None,
                tokenizer=self.tokenizer if settings.stop else None,
                logits_processor=processors,
                return_dict_in_generate=True,
                output_logits=settings.logprobs,
            )
            new_tokens = out.sequences[:, width:].cpu()
            token_logprobs = None
            if settings.logprobs:  # raw (untempered) logits, as vLLM's raw_logprobs mode reports
                logits = torch.stack(out.logits, dim=1).float().cpu()
                token_logprobs = logits.log_softmax(-1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
            for row in range(new_tokens.shape[0]):
                prompt_index = batch[row // settings.n]
                tokens = new_tokens[row].tolist()
                length, hit_eos = len(tokens), False
                for position, token in enumerate(tokens):
                    if token in eos_ids:
                        length, hit_eos = position + 1, True
                        break
                text = self.tokenizer.decode(tokens[:length], skip_special_tokens=True)
                text, hit_stop = cut_at_stop(text, settings.stop)
                sample = Sample(
                    prompt_id=ids[prompt_index],
                    sample_index=row % settings.n,
                    messages=prompts[prompt_index].messages,
                    text=text,
                    num_tokens=length,
                    finish_reason="stop" if (hit_eos or hit_stop or length < settings.max_new_tokens) else "length",
                    logprob=float(token_logprobs[row, :length].sum()) if token_logprobs is not None else None,
                    token_ids=tokens[:length] if settings.logprobs else None,
                )
                results.setdefault(prompt_index, []).append(sample)
            bar.update(len(batch))
        bar.close()
        return [s for i in range(len(prompts)) for s in results[i]]

    def _eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        ids.add(self.tokenizer.eos_token_id)
        return sorted(i for i in ids if i is not None)

    def load_policy(self, model: str) -> None:
        """Serve another checkpoint (same tokenizer): the model is loaded anew (seconds, for transformers)."""
        if model != self.model_name:
            self.model = load_model(model, *self._load_args)
            self.model_name = model

    def close(self) -> None:
        self.model = None
