"""Preference data as groups of (prompt, completion) sequences that go through the model in one forward.

A DPO-family pair is 2 sequences (chosen, rejected); a ranked list is K; an SRPO pair is 6 (the two answers after
the plain prompt and after the revision prompts built from each answer); a KTO single is 2 (its completion, and a
completion of another prompt after its prompt, for the KL estimate); a DRO single is 1. Prompt tokens are masked out of the
log-probs through `completion_mask`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from selfalign.datasets_io import read_records
from selfalign.io import DataFileError
from selfalign.losses import LOSSES
from selfalign.records import (LabeledCompletion, Message, PreferencePair, RankedList, RewardedCompletion,
                               SingleCompletion)
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


def _single_sequences(record: LabeledCompletion | RewardedCompletion) -> list[tuple[list[Message], list[Message]]]:
    return [(record.prompt, record.completion)]


@dataclass(frozen=True)
class RecordKind:
    """What one training record is, how it becomes sequences, and the names of those sequences' columns (the
    names losses ask for, see selfalign.losses); `columns` None means a ranked list of any length."""
    record_type: type
    sequences: Callable
    columns: tuple[str, ...] | None
    mismatched_column: bool = False  # the last column is filled by `tokenize_records`: another prompt's completion


RECORD_KINDS = {
    "pair": RecordKind(PreferencePair, _pair_sequences, ("chosen", "rejected")),
    # SRPO's r(a) and r(a|b): w = chosen, l = rejected, "w_given_l" = w after the revision prompt built from l.
    "srpo": RecordKind(PreferencePair, _srpo_sequences, ("w", "l", "w_given_l", "l_given_l", "w_given_w", "l_given_w")),
    "list": RecordKind(RankedList, _list_sequences, None),
    # KTO: the completion, then (this prompt, another prompt's completion) for the KL reference point z0.
    "labeled": RecordKind(LabeledCompletion, _single_sequences, ("completion", "kl"), mismatched_column=True),
    "rewarded": RecordKind(RewardedCompletion, _single_sequences, ("completion",)),
}


def record_kind(loss_type: str) -> RecordKind:
    return RECORD_KINDS[LOSSES[loss_type].records]


def read_preferences(source: str | Path, loss_type: str, split: str = "train") -> list[PreferencePair | RankedList]:
    """Preference records from any source `read_records` takes, in TRL's standard or conversational form. Rows of
    another kind (KTO's unpaired rows given to a pair loss) fail with the losses that read them named."""
    try:
        return read_records(source, record_kind(loss_type).record_type, split=split)
    except DataFileError as e:
        hint = _other_kind_hint(source, split, loss_type)
        if hint is None:
            raise
        raise DataFileError(e.path, e.line, e.field, f"{e.problem}; {hint}", unit=e.unit) from None


# The columns that say which kind a row is, most specific first.
_KIND_COLUMNS = [("labeled", {"completion", "label"}), ("rewarded", {"completion", "reward"}),
                 ("list", {"completions", "scores"}), ("pair", {"chosen", "rejected"})]


def _other_kind_hint(source, split: str, loss_type: str) -> str | None:
    from selfalign.datasets_io import source_rows

    try:
        _, rows, _ = source_rows(source, split)
        first = next(iter(rows), (0, {}))[1]
    except Exception:  # the source itself is unreadable: the original error says so
        return None
    own = LOSSES[loss_type].records
    for kind, columns in _KIND_COLUMNS:
        if columns <= set(first) and not (kind == "pair" and own in ("pair", "srpo")) and kind != own:
            losses = sorted(name for name, spec in LOSSES.items() if spec.records == kind)
            return (f"these rows have {', '.join(sorted(columns))} ({kind} records), which "
                    f"{'/'.join(losses)} train{'s' if len(losses) == 1 else ''} on: pass --loss-type "
                    f"{'dpo' if 'dpo' in losses else losses[0]}")
    return None


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
    completion_ids = _end_at_end_of_turn(tokenizer, tokenizer(completion_text, add_special_tokens=False)["input_ids"])
    return prompt_ids, completion_ids[:max(1, max_length - len(prompt_ids))]


def _end_at_end_of_turn(tokenizer, completion_ids: list[int]) -> list[int]:
    """Drop what a chat template writes after the end-of-turn token (ChatML's newline): the policy stops sampling at
    that token, so what follows is not part of log π(y|x), and the sampler's log-probs can only match without it."""
    eos = tokenizer.eos_token_id
    if eos is None or eos not in completion_ids:
        return completion_ids
    last = len(completion_ids) - 1 - completion_ids[::-1].index(eos)
    if tokenizer.decode(completion_ids[last + 1:]).strip():
        return completion_ids
    return completion_ids[:last + 1]


def _recorded_samples(record, loss_type: str) -> list[tuple[list[int], float]] | None:
    """(token ids, log-prob) of each of the record's sequences as the sampler recorded them, or None. SRPO's revision
    sequences were never sampled, so only plain pairs and lists carry them."""
    if LOSSES[loss_type].records == "srpo":
        return None
    if isinstance(record, RankedList):
        token_ids, logps = record.completion_token_ids, record.ref_logps
    elif isinstance(record, SingleCompletion):
        token_ids, logps = [record.completion_token_ids], [record.ref_logps]
    else:
        token_ids = [record.chosen_token_ids, record.rejected_token_ids]
        logps = [record.ref_chosen_logps, record.ref_rejected_logps]
    if token_ids is None or logps is None or None in token_ids or None in logps:
        return None
    return list(zip(token_ids, logps))


def _is_sample_of(tokenizer, token_ids: list[int], completion: list[Message]) -> bool:
    """Whether the recorded tokens are this completion's (not edited since it was sampled)."""
    return len(completion) == 1 and tokenizer.decode(token_ids, skip_special_tokens=True) == completion[0].content


def tokenize_records(tokenizer, records, loss_type: str, max_length: int, max_prompt_length: int) -> list[dict]:
    """Each record as a group of (prompt ids, completion ids). A completion that carries the token ids it was sampled
    with is trained on those ids (retokenizing its text can differ: a model may sample a two-newline token where the
    tokenizer writes two newlines), and then the sampler's log-probs are its exact reference (`sampler_reference`),
    unless a cut at max_prompt_length or max_length changed the sequence."""
    examples = []
    kind = record_kind(loss_type)
    for index, record in enumerate(records):
        recorded = _recorded_samples(record, loss_type)
        sequences, exact = [], recorded is not None
        for position, (prompt, completion) in enumerate(sequences_of(record, loss_type)):
            prompt_ids, completion_ids = tokenize_pair(tokenizer, prompt, completion, max_length, max_prompt_length)
            if recorded is not None and _is_sample_of(tokenizer, recorded[position][0], completion):
                sampled = list(recorded[position][0])
                completion_ids = sampled[:max(1, max_length - len(prompt_ids))]
                exact = exact and completion_ids == sampled and len(prompt_ids) < max_prompt_length
            else:
                exact = False
            sequences.append((prompt_ids, completion_ids))
        examples.append({
            "index": index,
            "sequences": sequences,
            "weight": getattr(record, "weight", 1.0),
            "scores": list(record.scores) if isinstance(record, RankedList) else [1.0, 0.0],
            "sampler_reference": [float(logp) for _, logp in recorded] if exact else None,
            "label": float(bool(getattr(record, "label", None))),
            "reward": float(getattr(record, "reward", None) or 0.0),
        })
    if kind.mismatched_column:
        _add_mismatched_completions(examples, records, max_length)
    return examples


def _add_mismatched_completions(examples: list[dict], records, max_length: int) -> None:
    """KTO's KL sequences: each record's prompt with the completion of the nearest earlier record (cyclically) that
    answers another prompt. TRL rotates completions by one within a batch; here a prompt's k samples sit side by
    side, so a plain rotation would mostly pair a prompt with its own samples and estimate the matched, not the
    mismatched, KL. The sampler never produced these sequences, so their reference is always computed."""
    if len({r.prompt_id for r in records}) < 2:  # the trainer says so first, naming the file
        raise ValueError("KTO's KL estimate needs completions of at least two prompts")
    for index, example in enumerate(examples):
        partner = (index - 1) % len(examples)
        while records[partner].prompt_id == records[index].prompt_id:
            partner = (partner - 1) % len(examples)
        prompt_ids = example["sequences"][0][0]
        other_completion = examples[partner]["sequences"][0][1]
        example["sequences"].append((prompt_ids, other_completion[:max(1, max_length - len(prompt_ids))]))
        example["sampler_reference"] = None


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
        "labels": torch.tensor([e["label"] for e in examples]), "rewards": torch.tensor([e["reward"] for e in examples]),
        "scores": torch.tensor(scores), "sequence_mask": torch.tensor(sequence_mask),
        "index": torch.tensor([e["index"] for e in examples]),
        **_shared_prompt_layout(rows, group, pad_token_id),
    }


def _shared_prompt_layout(rows: list[tuple[list[int], list[int]]], group: int, pad_token_id: int) -> dict:
    """The same rows as distinct prompts (within each group of `group` rows) plus completions that point at theirs:
    what `shared_prompt_logps` feeds the model, so a prompt goes through it once per group, not once per row."""
    prompts, row_prompt = [], []
    for start in range(0, len(rows), group):
        seen: dict[tuple[int, ...], int] = {}
        for prompt_ids, _ in rows[start:start + group]:
            key = tuple(prompt_ids)
            if key not in seen:
                seen[key] = len(prompts)
                prompts.append(prompt_ids)
            row_prompt.append(seen[key])
    prompt_width = max(map(len, prompts))
    completion_width = max(len(c) for _, c in rows)
    # Prompts are left-padded: every prompt's last token is in the last column, the one position whose logits
    # (the first completion token's) the prompt forward computes.
    prompt_input = torch.full((len(prompts), prompt_width), pad_token_id, dtype=torch.long)
    prompt_mask = torch.zeros_like(prompt_input)
    for row, ids in enumerate(prompts):
        prompt_input[row, prompt_width - len(ids):] = torch.tensor(ids)
        prompt_mask[row, prompt_width - len(ids):] = 1
    completion_input = torch.full((len(rows), completion_width), pad_token_id, dtype=torch.long)
    completion_attention = torch.zeros_like(completion_input)
    for row, (_, ids) in enumerate(rows):
        completion_input[row, :len(ids)] = torch.tensor(ids)
        completion_attention[row, :len(ids)] = 1
    return {"prompt_input_ids": prompt_input, "prompt_attention_mask": prompt_mask,
            "completion_input_ids": completion_input, "completion_attention_mask": completion_attention,
            "row_prompt": torch.tensor(row_prompt)}
