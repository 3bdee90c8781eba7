"""Summed completion log-probs of a batch of (prompt, completion) rows: the plain forward, one row per sequence, and
the shared-prompt forward, where the sequences of a group that share a prompt (the 2 of a pair, the K of a list, the
pairs of SRPO's three prompts) run it through the model once and reuse its key/value cache.

Both give the same log-probs and gradients (tests/test_forward.py): the completions attend to the cached prompt
keys and values through the same attention mask, at the same positions. The prompt's cache keeps its autograd graph,
so the gradient of every completion's loss reaches the prompt's activations.
"""

from __future__ import annotations

import torch


def sequence_logps(model, input_ids, attention_mask, completion_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of the completion tokens of each row, and the completion lengths."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1].float()
    labels = input_ids[:, 1:]
    mask = completion_mask[:, 1:].to(logits.dtype)
    token_logps = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    return (token_logps * mask).sum(-1), mask.sum(-1)


def shared_prompt_logps(model, batch: dict, device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """As `sequence_logps` on the batch's rows, with each distinct prompt of a group forwarded once. None when the
    model returns no key/value cache (gradient checkpointing turns it off); the caller then runs the plain path."""
    prompt_ids = batch["prompt_input_ids"].to(device)
    prompt_mask = batch["prompt_attention_mask"].to(device)
    completion_ids = batch["completion_input_ids"].to(device)
    completion_mask = batch["completion_attention_mask"].to(device)
    row_prompt = batch["row_prompt"].to(device)

    # Prompts are left-padded (positions count real tokens only): the last column is every prompt's last token,
    # and only its logits are computed, the first completion token's. The full-vocabulary logits of prompt tokens,
    # which the plain path computes and masks out, are a large part of a small model's step.
    prompt_lengths = prompt_mask.sum(-1)
    prompt_positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    prompt_out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=prompt_positions,
                       use_cache=True, logits_to_keep=1)
    cache = prompt_out.past_key_values
    if cache is None:
        return None
    cache.reorder_cache(row_prompt)  # one cache row per completion row (a gather: the graph is kept)
    positions = prompt_lengths[row_prompt, None] + torch.arange(completion_ids.shape[1], device=device)
    attention = torch.cat([prompt_mask[row_prompt], completion_mask], dim=1)  # the prompts' padding stays masked
    logits = model(input_ids=completion_ids, attention_mask=attention, position_ids=positions,
                   past_key_values=cache, use_cache=True).logits
    logits = torch.cat([prompt_out.logits[row_prompt, -1:], logits[:, :-1]], dim=1).float()
    mask = completion_mask.to(logits.dtype)
    token_logps = logits.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    return (token_logps * mask).sum(-1), mask.sum(-1)


def batch_logps(model, batch: dict, device, share_prompt: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's per-row completion log-probs and lengths, by the shared-prompt path when asked and possible."""
    if share_prompt:
        result = shared_prompt_logps(model, batch, device)
        if result is not None:
            return result
    return sequence_logps(model, batch["input_ids"].to(device), batch["attention_mask"].to(device),
                          batch["completion_mask"].to(device))


@torch.no_grad()
def prompt_states(model, batch: dict, device) -> torch.Tensor:
    """Each row's prompt representation: the last layer's hidden state at the prompt's last token, (rows, hidden),
    in fp32 and without gradient, so a value head trained on it does not move the policy (DRO-V's separate policy
    and value updates)."""
    prompt_ids = batch["prompt_input_ids"].to(device)
    prompt_mask = batch["prompt_attention_mask"].to(device)
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=False,
                output_hidden_states=True, logits_to_keep=1)
    return out.hidden_states[-1][:, -1].float()[batch["row_prompt"].to(device)]
