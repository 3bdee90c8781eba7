"""The loss registry and the trainer's dispatch through it: every registered loss, from hand-built log-probs to the
value worked out by hand; per-loss defaults; every entry's inputs bind; config errors name the registered losses."""

import math

import pytest
import torch

from selfalign.losses import LOSSES, compute_loss, loss_inputs
from selfalign.training.config import TrainConfig
from selfalign.training.data import RECORD_KINDS
from selfalign.training.objective import preference_loss


def softplus_neg(x):  # -log sigmoid(x), written out
    return math.log(1 + math.exp(-x))


# One pair: policy log-probs (chosen, rejected) = (-10, -12), reference (-11, -11), lengths (5, 4), weight 0.5.
# Log-ratios r+ = 1, r- = -1, so the DPO margin h = 2; per-token ratios 1/5 and -1/4, margin 0.45.
PAIR = dict(logps=[[-10.0, -12.0]], ref=[[-11.0, -11.0]], lengths=[[5.0, 4.0]], weights=[0.5])
PAIR_WORKED = {
    "dpo": softplus_neg(0.1 * 2),                                           # β 0.1
    "cdpo": 0.9 * softplus_neg(0.2) + 0.1 * softplus_neg(-0.2),              # ε 0.1 (cdpo's default)
    "hinge": max(0.0, 1 - 0.1 * 2),                                          # β 0.1
    "ipo": (0.45 - 1 / (2 * 0.1)) ** 2,                                      # (h/|y| - 1/2β)²
    "ln_dpo": softplus_neg(2.0 * 0.45),                                      # β 2.0 (ln_dpo's default)
    "rpo": softplus_neg(0.2) - 1.0 * (-10.0 / 5),                            # α 1.0
    "simpo": softplus_neg(2.0 * (-10.0 / 5) - 2.0 * (-12.0 / 4) - 0.5),      # β 2.0, γ 0.5; no reference
    "scpo": 0.5 * softplus_neg(0.2) - 1.0 * 0.5 * (-10.0 / 5),               # w 0.5, α 1.0
}
# SRPO: columns w, l, w|l, l|l, w|w, l|w with log-ratios 1, -1, 2, -2, 3, -3 (reference -11 everywhere); β 0.1, α 0.8.
SRPO_WORKED = 0.8 * ((0.5 - 0.1 * (2 + 2)) ** 2 + (0.5 - 0.1 * (3 + 3)) ** 2) + 0.2 * (0.1 * (2 + 1 + 3 + 1) - 1) ** 2
# LiPO-λ: one list of 3, rewards s = β(logp - ref) = (0.1, -0.1, 0), scores ψ = (2, 0, 1). Ranks by s: 1, 3, 2.
# Gains G = 2^ψ - 1 = (3, 0, 1); 1/D = 1/log2(1 + rank) = (1, 1/2, 1/log2 3).
_inv_d = (1.0, 0.5, 1 / math.log2(3))
LIPO_WORKED = (3 * abs(_inv_d[0] - _inv_d[1]) * softplus_neg(0.2)      # pair (0, 1)
               + 2 * abs(_inv_d[0] - _inv_d[2]) * softplus_neg(0.1)    # pair (0, 2)
               + 1 * abs(_inv_d[2] - _inv_d[1]) * softplus_neg(0.1))   # pair (2, 1)


def _batch(logps, ref, lengths, weights, scores=None):
    logps, ref, lengths = (torch.tensor(x, dtype=torch.float64) for x in (logps, ref, lengths))
    scores = torch.tensor(scores if scores is not None else [[1.0, 0.0]] * len(weights), dtype=torch.float64)
    return logps, ref, lengths, {"weights": torch.tensor(weights, dtype=torch.float64), "scores": scores,
                                 "sequence_mask": torch.ones_like(logps, dtype=torch.bool)}


@pytest.mark.parametrize("loss_type", sorted(PAIR_WORKED))
def test_pair_losses_dispatch_to_their_worked_values(loss_type):
    logps, ref, lengths, batch = _batch(**PAIR)
    cfg = TrainConfig(loss_type=loss_type)
    loss, metrics = preference_loss(cfg, logps, None if not LOSSES[loss_type].needs_reference else ref, lengths, batch)
    assert float(loss) == pytest.approx(PAIR_WORKED[loss_type], rel=1e-12)
    assert metrics["logps/chosen"] == -10.0 and metrics["logps/rejected"] == -12.0


def test_srpo_dispatch_reads_its_six_columns_by_name():
    logps, ref, lengths, batch = _batch([[-10.0, -12.0, -9.0, -13.0, -8.0, -14.0]], [[-11.0] * 6], [[4.0] * 6], [1.0])
    loss, _ = preference_loss(TrainConfig(loss_type="srpo"), logps, ref, lengths, batch)
    assert float(loss) == pytest.approx(SRPO_WORKED, rel=1e-12)
    assert SRPO_WORKED == pytest.approx(0.034)


def test_lipo_dispatch_to_its_worked_value():
    logps, ref, lengths, batch = _batch([[-10.0, -12.0, -11.0]], [[-11.0] * 3], [[4.0] * 3], [1.0],
                                        scores=[[2.0, 0.0, 1.0]])
    loss, metrics = preference_loss(TrainConfig(loss_type="lipo"), logps, ref, lengths, batch)
    assert float(loss) == pytest.approx(LIPO_WORKED, rel=1e-6)
    assert metrics["rewards/accuracies"] == 1.0  # every better-scored completion has the higher reward


def test_kto_dispatch_reads_completion_and_kl_columns_and_labels():
    """Two singles, β 0.1: log-ratios r = 1 (desirable) and -1 (undesirable); KL column log-ratios 0.5 and 1.5, so
    z0 = 1.0. Desirable: 1 - σ(0.1 (1 - 1)) = 0.5; undesirable: 1 - σ(0.1 (1 - (-1))) = 1 - σ(0.2)."""
    logps, ref, lengths, batch = _batch([[-10.0, -10.5], [-12.0, -9.5]], [[-11.0, -11.0]] * 2, [[4.0, 4.0]] * 2,
                                        [1.0, 1.0])
    batch["labels"] = torch.tensor([1.0, 0.0], dtype=torch.float64)
    loss, metrics = preference_loss(TrainConfig(loss_type="kto"), logps, ref, lengths, batch)
    assert float(loss) == pytest.approx((0.5 + 1 - 1 / (1 + math.exp(-0.2))) / 2, rel=1e-12)
    assert metrics["kl"] == pytest.approx(1.0) and metrics["rewards/desirable"] == pytest.approx(0.1)


def test_dro_dispatch_reads_rewards_and_values():
    """One single, τ 0.1: log-ratio 1, reward 0.8, value 0.5: L = 2 · ½ (0.8 - 0.5 - 0.1)² = 0.04."""
    logps, ref, lengths, batch = _batch([[-10.0]], [[-11.0]], [[4.0]], [1.0])
    batch["rewards"] = torch.tensor([0.8], dtype=torch.float64)
    loss, metrics = preference_loss(TrainConfig(loss_type="dro"), logps, ref, lengths, batch,
                                    values=torch.tensor([0.5], dtype=torch.float64))
    assert float(loss) == pytest.approx(0.04, rel=1e-12)
    assert metrics["value"] == 0.5 and metrics["residual_sq"] == pytest.approx(0.04)


def test_every_registered_loss_has_a_worked_dispatch_test():
    assert set(LOSSES) <= set(PAIR_WORKED) | {"srpo", "lipo", "kto", "dro"}


@pytest.mark.parametrize("loss_type", sorted(LOSSES))
def test_every_entry_binds_to_its_record_kind(loss_type):
    """Each parameter of the function is a provided tensor, a configured option, or has a default."""
    spec = LOSSES[loss_type]
    kind = RECORD_KINDS[spec.records]
    size = len(kind.columns) if kind.columns else 3
    logps = torch.randn(2, size)
    inputs = loss_inputs(spec.records, kind.columns, logps, logps - 1, torch.full((2, size), 4.0), torch.ones(2),
                         torch.arange(size).float().expand(2, size), torch.ones(2, size, dtype=torch.bool),
                         labels=torch.tensor([1.0, 0.0]), rewards=torch.rand(2), values=torch.rand(2))
    losses, chosen, rejected = compute_loss(spec, inputs, TrainConfig(loss_type=loss_type))
    assert losses.shape == (2,) and torch.isfinite(losses).all()


def test_per_loss_defaults_apply_only_when_unset():
    assert TrainConfig(loss_type="simpo").beta == 2.0
    assert TrainConfig(loss_type="ln_dpo").beta == 2.0
    assert TrainConfig(loss_type="dpo").beta == 0.1
    assert TrainConfig(loss_type="cdpo").label_smoothing == 0.1
    assert TrainConfig(loss_type="srpo").alpha == 0.8
    assert TrainConfig(loss_type="simpo", beta=3.0).beta == 3.0
    assert TrainConfig(loss_type="cdpo", label_smoothing=0.0).label_smoothing == 0.0
    assert TrainConfig(loss_type="rpo").alpha == 1.0


def test_unknown_loss_lists_the_registered_ones():
    with pytest.raises(ValueError, match="unknown loss_type 'dpoo': choose one of dpo, cdpo"):
        TrainConfig(loss_type="dpoo")


def test_trl_loss_names_are_accepted_as_aliases(tmp_path):
    from typer.testing import CliRunner

    from selfalign.cli import app
    from selfalign.losses import LOSS_ALIASES
    from selfalign.training.config import TrainConfig

    assert TrainConfig(loss_type="sigmoid").loss_type == "dpo"
    norm = TrainConfig(loss_type="sigmoid_norm")
    assert norm.loss_type == "ln_dpo" and norm.beta == 2.0  # the loss's own defaults follow the alias
    assert set(LOSS_ALIASES) == {"sigmoid", "sigmoid_norm"}
    pairs = tmp_path / "p.jsonl"
    pairs.write_text("")
    result = CliRunner().invoke(app, ["train", "--pairs", str(pairs), "--out", str(tmp_path / "o"),
                                      "--loss-type", "nonsense"])
    assert result.exit_code == 2 and "sigmoid = dpo" in " ".join(result.output.split())
