"""Every loss against a brute-force reference written plainly with Python floats and loops."""

import math

import pytest
import torch

from selfalign import losses

torch.manual_seed(0)
B = 5
PC, PR, RC, RR = (torch.randn(B, dtype=torch.float64) * 5 - 20 for _ in range(4))
LC, LR = torch.randint(3, 30, (B,)).double(), torch.randint(3, 30, (B,)).double()
W = torch.rand(B, dtype=torch.float64)


def logsig(x):
    return -math.log(1 + math.exp(-x))


def each(i):
    return float(PC[i]), float(PR[i]), float(RC[i]), float(RR[i]), float(LC[i]), float(LR[i]), float(W[i])


@pytest.mark.parametrize("beta, eps", [(0.1, 0.0), (0.5, 0.0), (0.1, 0.2)])
def test_dpo_and_cdpo(beta, eps):
    got, chosen_r, rejected_r = losses.dpo_loss(PC, PR, RC, RR, beta, eps)
    for i in range(B):
        pc, pr, rc, rr, *_ = each(i)
        h = (pc - rc) - (pr - rr)
        assert float(got[i]) == pytest.approx(-(1 - eps) * logsig(beta * h) - eps * logsig(-beta * h))
        assert float(chosen_r[i]) == pytest.approx(beta * (pc - rc))
        assert float(rejected_r[i]) == pytest.approx(beta * (pr - rr))


def test_ipo():
    got, _, _ = losses.ipo_loss(PC, PR, RC, RR, LC, LR, beta=0.3)
    for i in range(B):
        pc, pr, rc, rr, lc, lr, _ = each(i)
        assert float(got[i]) == pytest.approx(((pc - rc) / lc - (pr - rr) / lr - 1 / 0.6) ** 2)


def test_ln_dpo():
    got, _, _ = losses.ln_dpo_loss(PC, PR, RC, RR, LC, LR, beta=2.0)
    for i in range(B):
        pc, pr, rc, rr, lc, lr, _ = each(i)
        assert float(got[i]) == pytest.approx(-logsig(2.0 * ((pc - rc) / lc - (pr - rr) / lr)))


def test_rpo():
    got, _, _ = losses.rpo_loss(PC, PR, RC, RR, LC, beta=0.1, alpha=0.5)
    for i in range(B):
        pc, pr, rc, rr, lc, _, _ = each(i)
        assert float(got[i]) == pytest.approx(-logsig(0.1 * ((pc - rc) - (pr - rr))) - 0.5 * pc / lc)


def test_simpo():
    got, chosen_r, _ = losses.simpo_loss(PC, PR, LC, LR, beta=2.5, gamma=0.7)
    for i in range(B):
        pc, pr, _, _, lc, lr, _ = each(i)
        assert float(got[i]) == pytest.approx(-logsig(2.5 * pc / lc - 2.5 * pr / lr - 0.7))
        assert float(chosen_r[i]) == pytest.approx(2.5 * pc / lc)


def test_scpo():
    got, _, _ = losses.scpo_loss(PC, PR, RC, RR, LC, W, beta=0.2, alpha=0.7)
    for i in range(B):
        pc, pr, rc, rr, lc, _, w = each(i)
        h = (pc - rc) - (pr - rr)
        assert float(got[i]) == pytest.approx(-w * logsig(0.2 * h) - 0.7 * w * pc / lc)


def test_scpo_with_unit_weight_and_no_nll_is_dpo():
    scpo, _, _ = losses.scpo_loss(PC, PR, RC, RR, LC, torch.ones(B, dtype=torch.float64), beta=0.1, alpha=0.0)
    dpo, _, _ = losses.dpo_loss(PC, PR, RC, RR, beta=0.1)
    torch.testing.assert_close(scpo, dpo)


def _lipo_brute(policy, ref, scores, beta):
    """The LiPO-λ formula for one list, pair by pair."""
    k = len(policy)
    s = [beta * (policy[i] - ref[i]) for i in range(k)]
    ranked = sorted(range(k), key=lambda i: -s[i])
    tau = {i: ranked.index(i) + 1 for i in range(k)}
    total = 0.0
    for i in range(k):
        for j in range(k):
            if scores[i] > scores[j]:
                gain = abs((2 ** scores[i] - 1) - (2 ** scores[j] - 1))
                disc = abs(1 / math.log2(1 + tau[i]) - 1 / math.log2(1 + tau[j]))
                total += gain * disc * -logsig(s[i] - s[j])
    return total


def test_lipo_lambda_hand_computed_list():
    """K=3, rewards s = (0.2, 0.5, -0.1) so ranks τ = (2, 1, 3); scores ψ = (2, 1, 0)."""
    policy = torch.tensor([[-10.0, -8.0, -13.0]], dtype=torch.float64)
    ref = torch.tensor([[-12.0, -13.0, -12.0]], dtype=torch.float64)
    scores = torch.tensor([[2.0, 1.0, 0.0]], dtype=torch.float64)
    got, s, _ = losses.lipo_lambda_loss(policy, ref, scores, beta=0.1)
    assert s.tolist()[0] == pytest.approx([0.2, 0.5, -0.1])
    # by hand: G = (3, 1, 0); 1/D(τ) = (1/log2 3, 1, 1/2)
    d1, d2, d3 = 1 / math.log2(3), 1.0, 0.5
    expected = (2 * abs(d1 - d2) * -logsig(0.2 - 0.5)      # (1 over 2)
                + 3 * abs(d1 - d3) * -logsig(0.2 + 0.1)    # (1 over 3)
                + 1 * abs(d2 - d3) * -logsig(0.5 + 0.1))   # (2 over 3)
    assert float(got[0]) == pytest.approx(expected)
    assert float(got[0]) == pytest.approx(_lipo_brute([-10, -8, -13], [-12, -13, -12], [2, 1, 0], 0.1))


def test_lipo_lambda_random_lists_with_mask():
    torch.manual_seed(1)
    policy, ref = torch.randn(4, 5, dtype=torch.float64) * 3, torch.randn(4, 5, dtype=torch.float64) * 3
    scores = torch.randint(0, 4, (4, 5)).double()
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[2, 3:] = False
    got, _, _ = losses.lipo_lambda_loss(policy, ref, scores, mask, beta=0.3)
    for b in range(4):
        keep = [i for i in range(5) if mask[b, i]]
        expected = _lipo_brute([float(policy[b, i]) for i in keep], [float(ref[b, i]) for i in keep],
                               [float(scores[b, i]) for i in keep], 0.3)
        assert float(got[b]) == pytest.approx(expected)


def test_lipo_k2_unit_delta_is_dpo():
    policy = torch.stack([PC, PR], dim=1)
    ref = torch.stack([RC, RR], dim=1)
    scores = torch.tensor([[1.0, 0.0]] * B, dtype=torch.float64)
    lipo, _, _ = losses.lipo_lambda_loss(policy, ref, scores, beta=0.1, lambda_weights=False)
    dpo, _, _ = losses.dpo_loss(PC, PR, RC, RR, beta=0.1)
    torch.testing.assert_close(lipo, dpo)


def test_lipo_delta_has_no_gradient_but_rewards_do():
    policy = torch.tensor([[-10.0, -8.0, -13.0]], requires_grad=True)
    got, _, _ = losses.lipo_lambda_loss(policy, torch.zeros(1, 3), torch.tensor([[2.0, 1.0, 0.0]]), beta=0.1)
    got.sum().backward()
    assert policy.grad is not None and policy.grad.abs().sum() > 0


def test_srpo():
    r = [torch.randn(B, dtype=torch.float64) for _ in range(6)]
    got, _, _ = losses.srpo_loss(*r, beta=0.2, alpha=0.8)
    for i in range(B):
        wl, ll, ww, lw, w, l = (float(x[i]) for x in r)
        self_term = (0.5 - 0.2 * (wl - ll)) ** 2 + (0.5 - 0.2 * (ww - lw)) ** 2
        gen_term = (0.2 * (wl + w - lw - l) - 1) ** 2
        assert float(got[i]) == pytest.approx(0.8 * self_term + 0.2 * gen_term)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_hinge(beta):
    got, chosen_r, _ = losses.hinge_loss(PC, PR, RC, RR, beta)
    for i in range(B):
        pc, pr, rc, rr, *_ = each(i)
        assert float(got[i]) == pytest.approx(max(0.0, 1 - beta * ((pc - rc) - (pr - rr))))
        assert float(chosen_r[i]) == pytest.approx(beta * (pc - rc))
    if beta == 0.5:
        assert (got == 0).any() and (got > 0).any(), "the data must reach both sides of the hinge"


@pytest.mark.parametrize("beta, wd, wu", [(0.1, 1.0, 1.0), (0.5, 1.33, 0.8)])
def test_kto(beta, wd, wu):
    kl_policy, kl_ref = torch.randn(B, dtype=torch.float64) - 20, torch.randn(B, dtype=torch.float64) - 21
    labels = torch.tensor([1, 0, 1, 1, 0], dtype=torch.float64)
    got, rewards, _ = losses.kto_loss(PC, RC, kl_policy, kl_ref, labels, beta, wd, wu)
    z0 = max(0.0, sum(float(kl_policy[i]) - float(kl_ref[i]) for i in range(B)) / B)
    assert z0 > 0
    for i in range(B):
        r = float(PC[i]) - float(RC[i])
        sigma = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
        want = wd * (1 - sigma(beta * (r - z0))) if labels[i] else wu * (1 - sigma(beta * (z0 - r)))
        assert float(got[i]) == pytest.approx(want)
        assert float(rewards[i]) == pytest.approx(beta * r)


def test_kto_reference_point_is_clamped_at_zero_and_has_no_gradient():
    policy_kl = torch.full((B,), -30.0, dtype=torch.float64, requires_grad=True)
    got, _, _ = losses.kto_loss(PC, RC, policy_kl, torch.full((B,), -20.0, dtype=torch.float64),
                                torch.ones(B, dtype=torch.float64), beta=0.1)
    for i in range(B):  # z0 = max(0, -10) = 0
        assert float(got[i]) == pytest.approx(1 - 1 / (1 + math.exp(-0.1 * (float(PC[i]) - float(RC[i])))))
    policy_kl2 = torch.full((B,), -10.0, dtype=torch.float64, requires_grad=True)
    got, _, _ = losses.kto_loss(PC, RC, policy_kl2, torch.full((B,), -20.0, dtype=torch.float64),
                                torch.ones(B, dtype=torch.float64), beta=0.1)
    assert not got.requires_grad, "z0 is a detached estimate, as in the paper and TRL"


def test_dro():
    tau = 0.3
    rewards, values = torch.rand(B, dtype=torch.float64), torch.rand(B, dtype=torch.float64)
    got, implicit, residual = losses.dro_loss(PC, RC, rewards, values, beta=tau)
    for i in range(B):
        rho = float(PC[i]) - float(RC[i])
        r_i, v_i = float(rewards[i]), float(values[i])
        assert float(got[i]) == pytest.approx(2 * 0.5 * (r_i - v_i - tau * rho) ** 2)  # two equal terms in value
        assert float(implicit[i]) == pytest.approx(tau * rho)
        assert float(residual[i]) == pytest.approx(r_i - v_i - tau * rho)


def test_dro_policy_and_value_gradients_are_those_of_the_squared_loss_each_with_the_other_fixed():
    """∂L/∂log π = -τ (r - V - τρ) with V fixed; ∂L/∂V = -(r - V - τρ) with the policy fixed."""
    tau = 0.2
    policy = PC.clone().requires_grad_(True)
    values = torch.rand(B, dtype=torch.float64, requires_grad=True)
    rewards = torch.rand(B, dtype=torch.float64)
    got, _, _ = losses.dro_loss(policy, RC, rewards, values, beta=tau)
    got.sum().backward()
    for i in range(B):
        residual = float(rewards[i]) - float(values[i].detach()) - tau * (float(PC[i]) - float(RC[i]))
        assert float(policy.grad[i]) == pytest.approx(-tau * residual)
        assert float(values.grad[i]) == pytest.approx(-residual)
