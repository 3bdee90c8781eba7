"""From per-sequence log-probs of a batch to the configured loss and its metrics."""

from __future__ import annotations

import torch

from selfalign import losses


def preference_loss(cfg, logps: torch.Tensor, ref_logps: torch.Tensor | None, lengths: torch.Tensor,
                    batch: dict) -> tuple[torch.Tensor, dict]:
    """`logps`, `ref_logps`, `lengths`: (B, S). Returns the mean loss and detached metrics."""
    t = cfg.loss_type
    weights = batch["weights"].to(logps.device)
    if ref_logps is None:
        ref_logps = torch.zeros_like(logps)  # SimPO is reference-free
    pc, pr, rc, rr = logps[:, 0], logps[:, 1], ref_logps[:, 0], ref_logps[:, 1]
    lc, lr = lengths[:, 0].clamp(min=1), lengths[:, 1].clamp(min=1)
    if t in ("dpo", "cdpo"):
        out = losses.dpo_loss(pc, pr, rc, rr, cfg.beta, cfg.label_smoothing if t == "cdpo" else 0.0)
    elif t == "ipo":
        out = losses.ipo_loss(pc, pr, rc, rr, lc, lr, cfg.beta)
    elif t == "ln_dpo":
        out = losses.ln_dpo_loss(pc, pr, rc, rr, lc, lr, cfg.beta)
    elif t == "rpo":
        out = losses.rpo_loss(pc, pr, rc, rr, lc, cfg.beta, cfg.alpha)
    elif t == "simpo":
        out = losses.simpo_loss(pc, pr, lc, lr, cfg.beta, cfg.simpo_gamma)
    elif t == "scpo":
        out = losses.scpo_loss(pc, pr, rc, rr, lc, weights, cfg.beta, cfg.alpha)
    elif t == "srpo":
        r = logps - ref_logps  # columns: w, l, w|l, l|l, w|w, l|w
        out = losses.srpo_loss(r[:, 2], r[:, 3], r[:, 4], r[:, 5], r[:, 0], r[:, 1], cfg.beta, cfg.alpha)
    elif t == "lipo":
        mask = batch["sequence_mask"].to(logps.device)
        per_list, rewards, _ = losses.lipo_lambda_loss(logps, ref_logps, batch["scores"].to(logps.device), mask,
                                                       cfg.beta, cfg.lipo_lambda_weights)
        return per_list.mean(), _list_metrics(per_list, rewards, logps, batch["scores"].to(logps.device), mask)
    else:
        raise ValueError(f"unknown loss_type {t!r}")
    per_example, chosen_rewards, rejected_rewards = out
    metrics = {
        "loss": per_example.mean().item(),
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
        "logps/chosen": pc.mean().item(),
        "logps/rejected": pr.mean().item(),
        "ranking_accuracy": (pc.detach() > pr.detach()).float().mean().item(),
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
