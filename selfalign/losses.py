"""Preference losses as pure functions on per-sequence log-probabilities, and the registry that names them.

Inputs are summed completion log-probs under the policy (`policy_*_logps`) and the reference (`ref_*_logps`),
shape (B,), plus lengths, weights or scores where a loss needs them. Each returns `(losses, chosen_rewards,
rejected_rewards)` with per-example losses (B,) and detached implicit rewards; the caller reduces and logs.

Adding a loss is one function here plus one `LOSSES` entry at the bottom: the trainer passes each function the
tensors its parameter names ask for (see `LossSpec`), and the hyperparameters its entry maps from `TrainConfig`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor


def _rewards(beta: float, policy_logps: Tensor, ref_logps: Tensor) -> Tensor:
    return (beta * (policy_logps - ref_logps)).detach()


def dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, beta: float = 0.1, label_smoothing: float = 0.0):
    """DPO (Rafailov et al. 2023, arXiv:2305.18290); with `label_smoothing` ε > 0, conservative DPO (cDPO).

        h = [log π(y+|x) - log π_ref(y+|x)] - [log π(y-|x) - log π_ref(y-|x)]
        L = -(1 - ε) log σ(β h) - ε log σ(-β h)

    "Your language model is secretly a reward model": the policy's log-ratio is an implicit reward r = β log π/π_ref.
    β in 0.01-0.5 (0.1 usual); ε assumes labels flip with probability ε (cDPO, Mitchell 2023), 0-0.2.
    """
    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    return losses, _rewards(beta, policy_chosen_logps, ref_chosen_logps), _rewards(beta, policy_rejected_logps,
                                                                                   ref_rejected_logps)


def hinge_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
               ref_rejected_logps: Tensor, beta: float = 0.1):
    """SLiC-HF's calibration loss (Zhao et al. 2023, arXiv:2305.10425, Eq. 1), on log-ratios as TRL's `hinge`.

        h = [log π(y+|x) - log π_ref(y+|x)] - [log π(y-|x) - log π_ref(y-|x)],   L = max(0, 1 - β h)

    "Calibrate the sequence likelihood": a pair stops contributing once its margin reaches 1/β, so confident pairs
    are not pushed further. β 0.01-1 (1/β is the margin, in nats).
    """
    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return torch.relu(1 - beta * h), _rewards(beta, policy_chosen_logps, ref_chosen_logps), \
        _rewards(beta, policy_rejected_logps, ref_rejected_logps)


def ipo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, chosen_lengths: Tensor, rejected_lengths: Tensor, beta: float = 0.1):
    """IPO (Azar et al. 2023, arXiv:2310.12036, Eq. 17), log-ratios averaged per token as TRL does.

        h = [log π/π_ref](y+)/|y+| - [log π/π_ref](y-)/|y-|,   L = (h - 1/(2β))²

    A squared loss regresses the margin to 1/(2β) instead of pushing it to infinity, so it does not overfit
    deterministic preferences. β (τ in the paper) 0.01-1.
    """
    h = (policy_chosen_logps - ref_chosen_logps) / chosen_lengths - (policy_rejected_logps - ref_rejected_logps) / \
        rejected_lengths
    losses = (h - 1 / (2 * beta)) ** 2
    return losses, _rewards(beta, policy_chosen_logps, ref_chosen_logps), _rewards(beta, policy_rejected_logps,
                                                                                   ref_rejected_logps)


def ln_dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
                ref_rejected_logps: Tensor, chosen_lengths: Tensor, rejected_lengths: Tensor, beta: float = 0.1):
    """Length-normalized DPO (LN-DPO; Meng et al. 2024 arXiv:2405.14734 §2; TRL's `sigmoid_norm`).

        h = [log π/π_ref](y+)/|y+| - [log π/π_ref](y-)/|y-|,   L = -log σ(β h)

    Dividing by length removes DPO's pull toward longer answers. Per-token ratios are small: use a larger β (1-5).
    """
    h = (policy_chosen_logps - ref_chosen_logps) / chosen_lengths - (policy_rejected_logps - ref_rejected_logps) / \
        rejected_lengths
    return -F.logsigmoid(beta * h), _rewards(beta, policy_chosen_logps, ref_chosen_logps), \
        _rewards(beta, policy_rejected_logps, ref_rejected_logps)


def rpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, chosen_lengths: Tensor, beta: float = 0.1, alpha: float = 1.0):
    """DPO + NLL on the chosen answer (RPO; Pang et al. 2024 arXiv:2404.19733, Liu et al. 2024 arXiv:2405.16436).

        L = L_DPO - α log π(y+|x) / |y+|

    The NLL term keeps the chosen answer's likelihood from falling, which plain DPO allows. α 0.2-1.
    """
    losses, chosen_rewards, rejected_rewards = dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                                        ref_rejected_logps, beta)
    return losses - alpha * policy_chosen_logps / chosen_lengths, chosen_rewards, rejected_rewards


def simpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, chosen_lengths: Tensor,
               rejected_lengths: Tensor, beta: float = 2.0, gamma: float = 0.5):
    """SimPO (Meng et al. 2024, arXiv:2405.14734): reference-free, length-normalized, with a target margin γ.

        L = -log σ(β log π(y+|x)/|y+| - β log π(y-|x)/|y-| - γ)

    "The average log-likelihood is the implicit reward", so no reference model is needed. β 2-10, γ 0.3-1.6.
    Rewards returned are β times the average log-likelihoods.
    """
    chosen = beta * policy_chosen_logps / chosen_lengths
    rejected = beta * policy_rejected_logps / rejected_lengths
    return -F.logsigmoid(chosen - rejected - gamma), chosen.detach(), rejected.detach()


def scpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
              ref_rejected_logps: Tensor, chosen_lengths: Tensor, weights: Tensor, beta: float = 0.1,
              alpha: float = 1.0):
    """ScPO, Self-Consistency Preference Optimization (Prasad et al. 2024, arXiv:2411.04109, Eq. 2).

        L = -w log σ(β h) - α w log π(y+|x)/|y+|,   w = (V(y+) - V(y-)) / k

    with h the DPO log-ratio margin against the previous iterate and V the votes among k samples: "pairs where the
    model is more consistent get more weight". α 0-1 (the paper's NLL weight), β 0.1-0.5.
    """
    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    losses = -weights * F.logsigmoid(beta * h) - alpha * weights * policy_chosen_logps / chosen_lengths
    return losses, _rewards(beta, policy_chosen_logps, ref_chosen_logps), _rewards(beta, policy_rejected_logps,
                                                                                   ref_rejected_logps)


def lipo_lambda_loss(policy_logps: Tensor, ref_logps: Tensor, scores: Tensor, mask: Tensor | None = None,
                     beta: float = 0.1, lambda_weights: bool = True):
    """LiPO-λ (Liu et al. 2024, arXiv:2402.01878, Eq. 11): listwise, a LambdaLoss over the list's implicit rewards.

        s_i = β [log π(y_i|x) - log π_ref(y_i|x)]
        L = Σ_{ψ_i > ψ_j} Δ_ij · (-log σ(s_i - s_j)),   Δ_ij = |G_i - G_j| · |1/D(τ_i) - 1/D(τ_j)|
        G = 2^ψ - 1,   D(τ) = log2(1 + τ),   τ_i = rank of s_i in the list (1 = highest), Δ without gradient

    Shapes: (B, K) for logps, scores ψ and `mask` (True where a completion exists). With K = 2 and Δ = 1
    (`lambda_weights=False`) this is DPO. Returns per-list losses (B,) and the rewards s (B, K) twice (chosen and
    rejected have no meaning for a list).
    """
    if mask is None:
        mask = torch.ones_like(scores, dtype=torch.bool)
    s = beta * (policy_logps - ref_logps)
    pair_mask = (scores[:, :, None] > scores[:, None, :]) & mask[:, :, None] & mask[:, None, :]
    if lambda_weights:
        with torch.no_grad():
            masked_s = s.detach().masked_fill(~mask, float("-inf"))
            order = masked_s.argsort(dim=1, descending=True)
            ranks = torch.empty_like(order)
            ranks.scatter_(1, order, torch.arange(1, s.shape[1] + 1, device=s.device).expand_as(order))
            gains = 2 ** scores - 1
            inv_discount = 1 / torch.log2(1 + ranks.to(s.dtype))
            delta = (gains[:, :, None] - gains[:, None, :]).abs() * \
                (inv_discount[:, :, None] - inv_discount[:, None, :]).abs()
    else:
        delta = torch.ones_like(pair_mask, dtype=s.dtype)
    pairwise = -F.logsigmoid(s[:, :, None] - s[:, None, :])
    losses = (delta * pairwise * pair_mask).sum(dim=(1, 2))
    return losses, s.detach(), s.detach()


def srpo_loss(r_w_given_l: Tensor, r_l_given_l: Tensor, r_w_given_w: Tensor, r_l_given_w: Tensor, r_w: Tensor,
              r_l: Tensor, beta: float = 0.1, alpha: float = 0.8):
    """SRPO, Self-Improving Robust Preference Optimization (Choi et al. 2024, arXiv:2406.01660), offline loss.

        self = (½ - β[r(w|l) - r(l|l)])² + (½ - β[r(w|w) - r(l|w)])²
        gen  = (β[r(w|l) + r(w) - r(l|w) - r(l)] - 1)²
        L    = α·self + (1 - α)·gen

    r(a|b) = log π(a | x, b)/π_ref(a | x, b) is the log-ratio of answer a given the revision prompt built from answer
    b, and r(a) the plain log-ratio. The policy learns to improve (revise) answers and to generate answers that need
    little revision; the squared (IPO-like) form makes it robust to the preference distribution. α = 0.8 default.
    Rewards returned: β r(w) and β r(l).
    """
    self_term = (0.5 - beta * (r_w_given_l - r_l_given_l)) ** 2 + (0.5 - beta * (r_w_given_w - r_l_given_w)) ** 2
    gen_term = (beta * (r_w_given_l + r_w - r_l_given_w - r_l) - 1) ** 2
    return alpha * self_term + (1 - alpha) * gen_term, (beta * r_w).detach(), (beta * r_l).detach()


def kto_loss(policy_completion_logps: Tensor, ref_completion_logps: Tensor, policy_kl_logps: Tensor,
             ref_kl_logps: Tensor, labels: Tensor, beta: float = 0.1, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0):
    """KTO, Kahneman-Tversky Optimization (Ethayarajh et al. 2024, arXiv:2402.01306, Eq. 7), on single completions.

        r  = log π(y|x) - log π_ref(y|x)
        z0 = max(0, mean_batch[log π(y'|x) - log π_ref(y'|x)])     (y' a completion of another prompt; no gradient)
        L  = λ_D (1 - σ(β (r - z0)))   if y is desirable
             λ_U (1 - σ(β (z0 - r)))   if y is undesirable

    A prospect-theory value against the reference point z0, an estimate of KL(π || π_ref) from mismatched
    (prompt, completion) pairs: no pairs are needed, so every scored sample can train. λ_D, λ_U correct class
    imbalance (the paper: keep λ_D n_D / (λ_U n_U) in [1, 4/3]). β 0.01-0.5 (0.1 usual). `labels` (B,): 1 desirable,
    0 undesirable. Same loss and reduction as TRL's KTOTrainer (`loss_type="kto"`). Rewards returned: β r twice.
    """
    logratios = policy_completion_logps - ref_completion_logps
    z0 = (policy_kl_logps - ref_kl_logps).mean().detach().clamp(min=0)
    desirable = labels.to(torch.bool)
    losses = torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (logratios - z0))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (z0 - logratios))))
    rewards = (beta * logratios).detach()
    return losses, rewards, rewards


def dro_loss(policy_completion_logps: Tensor, ref_completion_logps: Tensor, rewards: Tensor, values: Tensor,
             beta: float = 0.1):
    """DRO, Direct Reward Optimisation (Richemond et al. 2024, "Offline Regularised Reinforcement Learning for Large
    Language Models Alignment", arXiv:2405.19107): a mean-squared objective on single (x, y, r) triples.

        L(θ, V) = ½ (r - V(x) - τ log π(y|x)/π_ref(y|x))²

    with τ = `beta` the KL-regularisation strength and V(x) a learned value (its optimum is the soft value
    τ log E_ref[exp(r/τ)]). DRO-V's two updates are kept apart: the policy term uses V without gradient and the value
    term the log-ratio without gradient, so one backward gives each its own gradient:
        L = ½ (r - sg[V] - τ ρ)² + ½ (r - V - τ sg[ρ])²,   ρ = log π(y|x) - log π_ref(y|x).
    τ 0.01-1 relative to the reward's scale (rewards in [0, 1]: 0.1). `values` (B,) come from the trainer's value
    head. Rewards returned: τ ρ (the implicit reward) and the residual r - V - τ ρ.
    """
    logratios = policy_completion_logps - ref_completion_logps
    policy_term = 0.5 * (rewards - values.detach() - beta * logratios) ** 2
    value_term = 0.5 * (rewards - values - beta * logratios.detach()) ** 2
    implicit = (beta * logratios).detach()
    return policy_term + value_term, implicit, (rewards - values - beta * logratios).detach()


# ---------------------------------------------------------------------------------------------------------------
# The registry. A loss's parameters are filled by name from what its record kind provides (training/data.py builds
# one column of sequences per name):
#   pair  (columns chosen, rejected) and srpo (columns w, l, w_given_l, l_given_l, w_given_w, l_given_w):
#         policy_<col>_logps, ref_<col>_logps, <col>_lengths, r_<col> (= policy - ref log-ratio), weights (B,)
#   list  (K completions): policy_logps, ref_logps, lengths, scores, mask (B, K), weights (B,)
#   labeled (KTO: columns completion, kl: the completion of another prompt) and rewarded (DRO: column completion):
#         as pair, plus labels (B,) 1 desirable / 0 undesirable, rewards (B,), values (B,) from the value head
# and the hyperparameters from `options` (function keyword -> TrainConfig field). Reference-free losses get no ref.

RecordKindName = Literal["pair", "list", "srpo", "labeled", "rewarded"]


@dataclass(frozen=True)
class LossSpec:
    function: Callable
    records: RecordKindName  # what one training record is: a pair, a ranked list, an SRPO pair (6 sequences)
    needs_reference: bool = True
    needs_value: bool = False  # the trainer adds a value head V(x) and passes its outputs as `values`
    options: dict[str, str] = field(default_factory=lambda: {"beta": "beta"})  # keyword -> TrainConfig field
    defaults: dict[str, float] = field(default_factory=lambda: {"beta": 0.1})  # field -> value when the user sets none
    summary: str = ""


LOSSES: dict[str, LossSpec] = {
    "dpo": LossSpec(dpo_loss, "pair", summary="DPO (sigmoid)"),
    "cdpo": LossSpec(dpo_loss, "pair", options={"beta": "beta", "label_smoothing": "label_smoothing"},
                     defaults={"beta": 0.1, "label_smoothing": 0.1}, summary="conservative DPO (label smoothing ε)"),
    "hinge": LossSpec(hinge_loss, "pair", summary="SLiC-HF hinge on the DPO margin"),
    "ipo": LossSpec(ipo_loss, "pair", summary="IPO (per-token log-ratios, TRL's convention)"),
    "ln_dpo": LossSpec(ln_dpo_loss, "pair", defaults={"beta": 2.0}, summary="length-normalized DPO"),
    "rpo": LossSpec(rpo_loss, "pair", options={"beta": "beta", "alpha": "alpha"}, summary="DPO + NLL on chosen"),
    "simpo": LossSpec(simpo_loss, "pair", needs_reference=False, options={"beta": "beta", "gamma": "simpo_gamma"},
                      defaults={"beta": 2.0}, summary="SimPO (reference-free)"),
    "scpo": LossSpec(scpo_loss, "pair", options={"beta": "beta", "alpha": "alpha"},
                     summary="ScPO (vote-margin weighted DPO + NLL)"),
    "lipo": LossSpec(lipo_lambda_loss, "list", options={"beta": "beta", "lambda_weights": "lipo_lambda_weights"},
                     summary="LiPO-λ (listwise)"),
    "srpo": LossSpec(srpo_loss, "srpo", options={"beta": "beta", "alpha": "alpha"},
                     defaults={"beta": 0.1, "alpha": 0.8}, summary="SRPO (self-revision)"),
    "kto": LossSpec(kto_loss, "labeled", options={"beta": "beta", "desirable_weight": "desirable_weight",
                                                  "undesirable_weight": "undesirable_weight"},
                    summary="KTO (single desirable/undesirable completions)"),
    "dro": LossSpec(dro_loss, "rewarded", needs_value=True, summary="DRO-V (single completions with a reward)"),
}


# TRL's names for the same losses (DPOConfig.loss_type), accepted wherever a loss is named.
LOSS_ALIASES = {"sigmoid": "dpo", "sigmoid_norm": "ln_dpo"}


def loss_inputs(records: RecordKindName, columns: tuple[str, ...] | None, policy_logps: Tensor,
                ref_logps: Tensor | None, lengths: Tensor, weights: Tensor, scores: Tensor, mask: Tensor,
                **per_record: Tensor) -> dict:
    """The named tensors a record kind provides to a loss, from (B, S) per-sequence log-probs and lengths, plus
    per-record tensors (B,) passed by name (labels, rewards, values)."""
    if ref_logps is None:
        ref_logps = torch.zeros_like(policy_logps)
    lengths = lengths.clamp(min=1)
    if columns is None:  # a list of K completions
        return {"policy_logps": policy_logps, "ref_logps": ref_logps, "lengths": lengths, "scores": scores,
                "mask": mask, "weights": weights}
    named = {"weights": weights, **per_record}
    for index, column in enumerate(columns):
        named[f"policy_{column}_logps"] = policy_logps[:, index]
        named[f"ref_{column}_logps"] = ref_logps[:, index]
        named[f"{column}_lengths"] = lengths[:, index]
        named[f"r_{column}"] = policy_logps[:, index] - ref_logps[:, index]
    return named


def compute_loss(spec: LossSpec, inputs: dict, config) -> tuple[Tensor, Tensor, Tensor]:
    """Call the spec's function with the tensors its parameters name and the configured hyperparameters."""
    kwargs = {}
    for name, parameter in inspect.signature(spec.function).parameters.items():
        if name in spec.options:
            kwargs[name] = getattr(config, spec.options[name])
        elif name in inputs:
            kwargs[name] = inputs[name]
        elif parameter.default is inspect.Parameter.empty:
            raise TypeError(f"{spec.function.__name__}: no input named {name!r} for {spec.records} records")
    return spec.function(**kwargs)
