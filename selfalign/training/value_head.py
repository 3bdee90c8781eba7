"""DRO's value head V(x): a linear map of the policy's prompt representation, trained beside the policy.

It lives on the policy module (so DDP, checkpoints and resume carry it) under `VALUE_HEAD`, and is saved beside the
policy as OUT/value_head.safetensors, never inside it: exports and merges do not see it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from selfalign.losses import LOSSES
from selfalign.training.forward import prompt_states

VALUE_HEAD = "selfalign_value_head"


def add_value_head(model, records) -> torch.nn.Module:
    """A linear value head on the policy's prompt representation (see `prompt_states`), starting at the data's mean
    reward: V(x) = w·h(x) + b. The paper's DRO-V trains a separate value network; a head on the policy's own features
    needs no second model in memory (the choice is ours, see docs/training.md)."""
    head = torch.nn.Linear(model.config.hidden_size, 1, dtype=torch.float32)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(sum(r.reward for r in records) / len(records))
    model.add_module(VALUE_HEAD, head)
    return head


def values_for(batch, model, accelerator, cfg, group) -> torch.Tensor | None:
    """V(x) of each record's prompt (its first sequence's), for losses with a value head."""
    if not LOSSES[cfg.loss_type].needs_value:
        return None
    states = prompt_states(model, batch, accelerator.device)[::group]
    return getattr(accelerator.unwrap_model(model), VALUE_HEAD)(states).squeeze(-1)


def split_value_head(unwrapped, state_dict: dict, folder: Path) -> dict:
    """The policy's state dict without the value head; the head, if any, is written to folder/value_head.safetensors
    and taken off the module."""
    if not hasattr(unwrapped, VALUE_HEAD):
        return state_dict
    from safetensors.torch import save_file

    head = {k.split(VALUE_HEAD + ".", 1)[1]: v.contiguous() for k, v in state_dict.items() if VALUE_HEAD + "." in k}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(head, str(folder / "value_head.safetensors"))
    delattr(unwrapped, VALUE_HEAD)
    return {k: v for k, v in state_dict.items() if VALUE_HEAD + "." not in k}
