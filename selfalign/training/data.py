"""Preference data as groups of (prompt, completion) sequences that go through the model in one forward.

A DPO-family pair is 2 sequences (chosen, rejected); a ranked list is K; an SRPO pair is 6 (the two answers after
the plain prompt and after the revision prompts built from each answer). Prompt tokens are masked out of the
log-probs through `completion_mask`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from selfalign.datasets_io import read_records
from selfalign.losses import LOSSES
from selfalign.records import Message, PreferencePair, RankedList
from selfalign.revision import revision_messages

def _pair_sequences(record: PreferencePair) -> list[tuple[list[Message], list[Message]]]:
    return [(record.prompt, record.chosen), (record.prompt, record.rejected)]


def _srpo_sequences(record: PreferencePair) -> list[tuple[list[Message], list[Message]]]:
    """The two answers after the plain prompt, then after the revision prompt built from each answer."""
    after_rejected = revision_messages(record.prompt, record.rejected[-1].content)
    after_chosen = revision_messages(record.prompt, record.chosen[-1].content)
    return [(record.prompt, record.chosen), (record.prompt, record.rejected),
            (after_rejected, record.chosen), (after_rejected, record.rejected),
            (after_chosen, record.chosen), (after_chosen, record.rejected)]


def _list_sequences(record: RankedList) -> list[tuple[list[Message], list[Message]]]:
    return [(record.prompt, completion) for completion in record.completions]


@dataclass(frozen=True)
class RecordKind:
    """What one training record is, how it becomes sequences, and the names of those sequences' columns (the
    names losses ask for, see selfalign.losses); `columns` None means a ranked list of any length."""
    record_type: type
    sequences: Callable
    columns: tuple[str, ...] | None


RECORD_KINDS = {
    "pair": RecordKind(PreferencePair, _pair_sequences, ("chosen", "rejected")),
    # SRPO's r(a) and r(a|b): w = chosen, l = rejected, "w_given_l" = w after the revision prompt built from l.
    "srpo": RecordKind(PreferencePair, _srpo_sequences, ("w", "l", "w_given_l", "l_given_l", "w_given_w", "l_given_w")),
    "list": RecordKind(RankedList, _list_sequences, None),
}


def record_kind(loss_type: str) -> RecordKind:
    return RECORD_KINDS[LOSSES[loss_type].records]


def read_preferences(source: str | Path, loss_type: str, split: str = "train") -> list[PreferencePair | RankedList]:
    """Preference records from a JSONL or Parquet file or a hub dataset, in TRL's standard or conversational form."""
    return read_records(source, record_kind(loss_type).record_type, split=split)


def sequences_of(record, loss_type: str) -> list[tuple[list[Message], list[Message]]]:
    return record_kind(loss_type).sequences(record)


def tokenize_pair(tokenizer, prompt: list[Message], completion: list[Message], max_length: int,
                  max_prompt_length: int) -> tuple[list[int], list[int]]:
    """Prompt ids (chat template with the generation prompt) and completion ids (the rest of the templated turn)."""
    prompt_rows = [m.model_dump() for m in prompt]
    prompt_text = tokenizer.apply_chat_template(prompt_rows, add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(prompt_rows + [m.model_dump() for m in completion], tokenize=False)
    if full_text.startswith(prompt_text):
        completion_text = full_text[len(prompt_text):]
    else:  # templates that rewrite earlier turns: fall back to the raw content and the end-of-turn token
        completion_text = "".join(m.content for m in completion) + tokenizer.eos_token
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"][-max_prompt_length:]
    completion_ids = tokenizer(completion_text, add_special_tokens=False)["input_ids"]
    return prompt_ids, completion_ids[:max(1, max_length - len(prompt_ids))]


def tokenize_records(tokenizer, records, loss_type: str, max_length: int, max_prompt_length: int) -> list[dict]:
    examples = []
    for index, record in enumerate(records):
        sequences = [tokenize_pair(tokenizer, p, c, max_length, max_prompt_length)
                     for p, c in sequences_of(record, loss_type)]
        examples.append({
            "index": index,
            "sequences": sequences,
            "weight": getattr(record, "weight", 1.0),
            "scores": list(record.scores) if isinstance(record, RankedList) else [1.0, 0.0],
        })
    return examples


def collate(examples: list[dict], pad_token_id: int) -> dict:
    """Flatten B examples x S sequences into B*S right-padded rows. Lists shorter than S are padded by repeating
    their first sequence with `sequence_mask` False, so every example has the same S."""
    group = max(len(e["sequences"]) for e in examples)
    rows, sequence_mask, scores = [], [], []
    for e in examples:
        missing = group - len(e["sequences"])
        rows.extend(e["sequences"] + [e["sequences"][0]] * missing)
        sequence_mask.append([True] * len(e["sequences"]) + [False] * missing)
        scores.append(e["scores"] + [0.0] * missing)
    width = max(len(p) + len(c) for p, c in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    completion_mask = torch.zeros_like(input_ids)
    for row, (prompt_ids, completion_ids) in enumerate(rows):
        ids = prompt_ids + completion_ids
        input_ids[row, :len(ids)] = torch.tensor(ids)
        attention_mask[row, :len(ids)] = 1
        completion_mask[row, len(prompt_ids):len(ids)] = 1
    return {
        "input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask,
        "group_size": group, "weights": torch.tensor([float(e["weight"]) for e in examples]),
        "scores": torch.tensor(scores), "sequence_mask": torch.tensor(sequence_mask),
        "index": torch.tensor([e["index"] for e in examples]),
    }


def sequence_logps(model, input_ids, attention_mask, completion_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of the completion tokens of each row, and the completion lengths."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1].float()
    labels = input_ids[:, 1:]
    mask = completion_mask[:, 1:].to(logits.dtype)
    token_logps = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    return (token_logps * mask).sum(-1), mask.sum(-1)
