"""From per-sequence log-probs of a batch to the configured loss and its metrics, through the loss registry."""

from __future__ import annotations

import torch

from selfalign.losses import LOSSES, compute_loss, loss_inputs
from selfalign.training.data import record_kind


def preference_loss(cfg, logps: torch.Tensor, ref_logps: torch.Tensor | None, lengths: torch.Tensor,
                    batch: dict, values: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """`logps`, `ref_logps`, `lengths`: (B, S); `values` (B,) from the value head when the loss needs one. Returns
    the mean loss and detached metrics."""
    spec = LOSSES[cfg.loss_type]
    kind = record_kind(cfg.loss_type)
    device = logps.device
    scores, mask = batch["scores"].to(device), batch["sequence_mask"].to(device)
    per_record = {name: batch[name].to(device) for name in ("labels", "rewards") if name in batch}
    if values is not None:
        per_record["values"] = values
    inputs = loss_inputs(spec.records, kind.columns, logps, ref_logps, lengths, batch["weights"].to(device), scores,
                         mask, **per_record)
    per_example, chosen_rewards, rejected_rewards = compute_loss(spec, inputs, cfg)
    if kind.columns is None:
        return per_example.mean(), _list_metrics(per_example, chosen_rewards, logps, scores, mask)
    if spec.records in ("labeled", "rewarded"):
        return per_example.mean(), _single_metrics(per_example, inputs, chosen_rewards, rejected_rewards, spec.records)
    chosen_logps, rejected_logps = logps[:, 0].detach(), logps[:, 1].detach()  # the first two columns: y+ and y-
    metrics = {
        "loss": per_example.mean().item(),
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
        "logps/chosen": chosen_logps.mean().item(),
        "logps/rejected": rejected_logps.mean().item(),
        "ranking_accuracy": (chosen_logps > rejected_logps).float().mean().item(),
    }
    return per_example.mean(), metrics


def _list_metrics(per_list, rewards, logps, scores, mask) -> dict:
    better = (scores[:, :, None] > scores[:, None, :]) & mask[:, :, None] & mask[:, None, :]
    pairs = better.sum().clamp(min=1)
    reward_right = ((rewards[:, :, None] > rewards[:, None, :]) & better).sum() / pairs
    policy_right = ((logps.detach()[:, :, None] > logps.detach()[:, None, :]) & better).sum() / pairs
    top = scores.masked_fill(~mask, float("-inf")).argmax(1, keepdim=True)
    return {
        "loss": per_list.mean().item(),
        "rewards/accuracies": reward_right.item(),
        "rewards/top": rewards.gather(1, top).mean().item(),
        "logps/top": logps.detach().gather(1, top).mean().item(),
        "ranking_accuracy": policy_right.item(),
    }


def _single_metrics(per_example, inputs, rewards, second, records) -> dict:
    """KTO: the implicit reward by class and the KL reference point; DRO: the value and the squared residual."""
    metrics = {"loss": per_example.mean().item(), "logps/completion": inputs["policy_completion_logps"].mean().item()}
    if records == "labeled":
        desirable = inputs["labels"].bool()
        if desirable.any():
            metrics["rewards/desirable"] = rewards[desirable].mean().item()
        if (~desirable).any():
            metrics["rewards/undesirable"] = rewards[~desirable].mean().item()
        kl = (inputs["policy_kl_logps"] - inputs["ref_kl_logps"]).mean().clamp(min=0)
        metrics["kl"] = kl.item()
    else:
        metrics["rewards/implicit"] = rewards.mean().item()
        metrics["value"] = inputs["values"].mean().item()
        metrics["reward"] = inputs["rewards"].mean().item()
        metrics["residual_sq"] = (second ** 2).mean().item()
    return metrics
