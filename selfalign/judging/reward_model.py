"""Reward-model scoring with any `AutoModelForSequenceClassification` checkpoint (one logit = the reward)."""

from __future__ import annotations

import torch

from selfalign.records import Sample, ScoredSample


class RewardModelScorer:
    def __init__(self, model: str, device: str = "auto", batch_size: int = 8, max_length: int = 2048,
                 trust_remote_code: bool = False):
        from transformers import AutoModelForSequenceClassification

        from selfalign.models import load_tokenizer, pick_device, pick_dtype, resolve_model

        device = pick_device(device)
        path = resolve_model(model)
        self.tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "right"
        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, dtype=pick_dtype(device), trust_remote_code=trust_remote_code, use_safetensors=True).to(device).eval()
        if self.model.config.pad_token_id is None:  # sequence classifiers find the last token through the pad id
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.name, self.batch_size, self.max_length = f"reward-model:{model}", batch_size, max_length

    def _texts(self, samples: list[Sample]) -> list[str]:
        return [self.tokenizer.apply_chat_template(
            [m.model_dump() for m in s.messages] + [{"role": "assistant", "content": s.text}], tokenize=False)
            for s in samples]

    @torch.no_grad()
    def rewards(self, samples: list[Sample]) -> list[float]:
        texts = self._texts(samples)
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                                   truncation=True, max_length=self.max_length, add_special_tokens=False)
            logits = self.model(**batch.to(self.model.device)).logits
            out.extend(logits[:, 0].float().cpu().tolist())
        return out

    def score(self, samples: list[Sample]) -> list[ScoredSample]:
        return [ScoredSample(**s.model_dump(), score=r, scorer=self.name)
                for s, r in zip(samples, self.rewards(samples))]
