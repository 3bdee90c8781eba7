"""Minimum Bayes Risk consensus scoring (Wu et al. 2024, "Better Instruction-Following Through Minimum Bayes Risk",
arXiv:2410.02902): with no answer to extract and no judge to trust, a sample is as good as it agrees with the others.

    score(y_i) = 1/|R_i| Σ_{j ∈ R_i} u(y_i, y_j),   R_i = up to `max_references` other samples of the same prompt

u is a utility in [0, 1] of a hypothesis against a pseudo-reference: chrF, BLEU (sacrebleu), ROUGE-L (rouge-score),
the cosine similarity of sentence embeddings, or an LLM judge's position-debiased preference of the hypothesis over
the reference. The cost is k·|R| utility calls per prompt (k² with no cap): the cap keeps a large k affordable. The
highest-scoring sample is the MBR choice; the paper's MBR self-training pairs it (chosen) with the lowest (rejected).
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Literal

from selfalign.records import Sample, ScoredSample, group_by_prompt

UTILITIES = ("chrf", "rouge-l", "bleu", "embedding", "llm-judge")  # the one list: configs and --help read it
Utility = Literal[UTILITIES]
# (hypothesis, pseudo-references) -> one utility in [0, 1] per reference, None where a judge abstained
BatchUtility = Callable[[str, str, list[str]], list[float | None]]


def metric_utility(name: str) -> BatchUtility:
    """A reference-based text metric as a utility in [0, 1]."""
    if name == "chrf":
        from sacrebleu.metrics import CHRF

        chrf = CHRF()
        return lambda question, hypothesis, refs: [chrf.sentence_score(hypothesis, [r]).score / 100 for r in refs]
    if name == "bleu":
        from sacrebleu.metrics import BLEU

        bleu = BLEU(effective_order=True)  # sentence-level BLEU: orders longer than the text do not zero it
        return lambda question, hypothesis, refs: [bleu.sentence_score(hypothesis, [r]).score / 100 for r in refs]
    if name == "rouge-l":
        from rouge_score.rouge_scorer import RougeScorer

        rouge = RougeScorer(["rougeL"], use_stemmer=True)
        return lambda question, hypothesis, refs: [rouge.score(r, hypothesis)["rougeL"].fmeasure for r in refs]
    raise ValueError(f"no text metric named {name!r}")


class EmbeddingUtility:
    """Cosine similarity of mean-pooled last hidden states of a sentence-embedding model (any transformers encoder
    or decoder, by hub id or folder), each text embedded once per prompt group."""

    def __init__(self, model: str):
        import torch
        from transformers import AutoModel, AutoTokenizer

        from selfalign.models import loading, resolve_model

        with loading(f"embedding model {model!r}"):
            path = resolve_model(model)
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path, dtype=torch.float32, use_safetensors=True).eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.cache: dict[str, object] = {}

    def embed(self, texts: list[str]):
        import torch

        todo = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if todo:
            batch = self.tokenizer(todo, return_tensors="pt", padding=True, truncation=True, max_length=512)
            with torch.no_grad():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
            self.cache.update(zip(todo, pooled))
        return [self.cache[t] for t in texts]

    def __call__(self, question: str, hypothesis: str, refs: list[str]) -> list[float]:
        h, *rs = self.embed([hypothesis, *refs])
        return [float((h @ r).clamp(min=0)) for r in rs]  # cosine, negatives (rare) floored to keep [0, 1]

    def reset(self) -> None:
        self.cache.clear()


def judge_utility(judge, use_logprobs: bool = True, stats: Counter | None = None) -> BatchUtility:
    """An LLM judge's preference for the hypothesis over each pseudo-reference, asked in both orders."""
    from selfalign.judging.llm_judge import pairwise_preferences

    return lambda question, hypothesis, refs: pairwise_preferences(judge, question, [(hypothesis, r) for r in refs],
                                                                   use_logprobs, stats)


def mbr_scores(texts: list[str], utility: BatchUtility, max_references: int | None = None,
               question: str = "") -> list[float | None]:
    """Each text's mean utility against up to `max_references` others (the next ones after it, cyclically, so every
    sample serves as a reference equally often). None where every utility abstained or there is no other text."""
    k = len(texts)
    count = k - 1 if max_references is None else min(max_references, k - 1)
    scores = []
    for i, text in enumerate(texts):
        references = [texts[(i + offset) % k] for offset in range(1, count + 1)]
        values = [u for u in utility(question, text, references) if u is not None] if references else []
        scores.append(sum(values) / len(values) if values else None)
    return scores


def score_mbr(samples: list[Sample], utility: BatchUtility, max_references: int | None, name: str) -> list[ScoredSample]:
    from selfalign.judging.llm_judge import question_of

    scored = []
    for group in group_by_prompt(samples).values():
        scores = mbr_scores([s.text for s in group], utility, max_references, question_of(group[0]))
        scored.extend(ScoredSample(**s.model_dump(), score=score, num_samples=len(group), scorer=f"mbr:{name}")
                      for s, score in zip(group, scores))
        if hasattr(utility, "reset"):
            utility.reset()
    return scored


def select_best(scored: list[ScoredSample]) -> list[ScoredSample]:
    """One sample per prompt: the highest score (the earliest sample on a tie; unscored samples last)."""
    return [max(group, key=lambda s: (s.score if s.score is not None else float("-inf"), -s.sample_index))
            for group in group_by_prompt(scored).values()]
