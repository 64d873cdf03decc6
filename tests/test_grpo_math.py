"""IL-GRPO maths against hand-worked numbers (digest §3.4–§3.6)."""

from __future__ import annotations

import math

import pytest
import torch

from learner import grpo
from learner.grpo import PAD, SEP

S = 1 / math.sqrt(2 / 3)  # 1 / population std of [0, 1, 2]


def test_group_normalise_population_std_eps_inside_sqrt():
    x = torch.tensor([1.0, 3.0])  # μ = 2, σ² = 1
    assert torch.allclose(grpo.group_normalise(x, eps=0.0), torch.tensor([-1.0, 1.0]))
    assert torch.allclose(grpo.group_normalise(x, eps=3.0), torch.tensor([-0.5, 0.5]))  # 1/sqrt(1+3)
    # constant group → 0 advantage, no NaN
    assert torch.equal(grpo.group_normalise(torch.tensor([2.0, 2.0, 2.0])), torch.zeros(3))


def test_query_advantages_per_slot_plus_lambda_sequence_eq11():
    # G = 3 rollouts, J = 2 slots; rollout 2 has no slot 1 (excluded from slot 1's statistics).
    r_query = torch.tensor([[0.0, 4.0], [1.0, 2.0], [2.0, 99.0]])
    mask = torch.tensor([[True, True], [True, True], [True, False]])
    r_seq = torch.tensor([1.0, 1.0, 4.0])  # μ = 2, σ = √2 → [−1/√2, −1/√2, √2]
    a = grpo.query_advantages(r_query, mask, r_seq, lam=0.5, eps=0.0)
    h = 0.5 / math.sqrt(2)
    expected = torch.tensor([[-S - h, 1 - h], [0 - h, -1 - h], [S + 2 * h, 0.0]])
    assert torch.allclose(a, expected, atol=1e-6)


def test_token_advantages_broadcast_to_own_query_only_and_clip():
    slot_adv = torch.tensor([[-1.6, 0.6], [1.9, 0.0]])
    seq_term = torch.tensor([-0.3, 0.7])
    slots = torch.tensor([[0, 0, SEP, 1, 1, SEP, PAD], [0, SEP, PAD, PAD, PAD, PAD, PAD]])
    adv = grpo.token_advantages(slots, slot_adv, seq_term, clip=1.5)
    assert torch.allclose(adv, torch.tensor([[-1.5, -1.5, -0.3, 0.6, 0.6, -0.3, 0.0],
                                             [1.5, 0.7, 0.0, 0.0, 0.0, 0.0, 0.0]]))


def test_think_trigger_tokens_get_only_the_trigger_advantage_eq17():
    r_trig = torch.tensor([[1.0], [0.0]])  # one interest point, G = 2 → [1, −1]
    trig_adv = grpo.trigger_advantages(r_trig, torch.ones_like(r_trig, dtype=torch.bool), eps=0.0)
    slots = torch.tensor([[SEP, SEP, 0, 0], [SEP, SEP, 0, PAD]])  # [trigger tokens][query tokens]
    triggers = torch.tensor([[0, 0, -1, -1], [0, -1, -1, -1]])
    adv = grpo.token_advantages(slots, torch.tensor([[0.4], [-0.4]]), torch.tensor([0.2, -0.2]),
                                token_triggers=triggers, trigger_adv=trig_adv)
    assert torch.allclose(adv, torch.tensor([[1.0, 1.0, 0.4, 0.4], [-1.0, -0.2, -0.4, 0.0]]))
    with pytest.raises(ValueError):
        grpo.token_advantages(slots, torch.zeros(2, 1), torch.zeros(2), token_triggers=triggers)


def test_plain_grpo_is_one_sequence_advantage_on_every_token():
    slots = torch.tensor([[0, SEP, 1], [0, PAD, PAD]])
    adv = grpo.plain_grpo_advantages(slots, torch.tensor([3.0, 1.0]), eps=0.0)
    assert torch.equal(adv, torch.tensor([[1.0, 1.0, 1.0], [-1.0, 0.0, 0.0]]))


def test_difficulty_filter_and_zero_std_groups():
    keep = grpo.difficulty_keep(torch.tensor([0.05, 0.1, 0.5, 0.95, 0.99]))
    assert keep.tolist() == [False, True, True, True, False]
    assert grpo.zero_std_groups(torch.tensor([[1.0, 1.0], [1.0, 2.0]])).tolist() == [True, False]


def test_entropy_adaptive_clip_eq18_uses_batch_80th_percentile():
    ent = torch.arange(1, 11, dtype=torch.float32) / 10  # 0.1 … 1.0
    mask = torch.ones(10, dtype=torch.bool)
    tau = grpo.entropy_threshold(ent, mask)
    assert tau.item() == pytest.approx(0.82)  # linear interpolation at 0.8 · 9 = 7.2
    eps = grpo.adaptive_clip_eps(ent, tau, eps_low=0.2, eps_high=0.28)
    assert eps.tolist() == pytest.approx([0.2] * 8 + [0.28] * 2)
    masked = mask.clone()
    masked[8:] = False  # masked tokens do not count: τ over 0.1 … 0.8
    assert grpo.entropy_threshold(ent, masked).item() == pytest.approx(0.66)


def test_entropy_coef_linear_decay_and_k3():
    assert grpo.entropy_coef(0, 10, 0.01, 0.0) == 0.01
    assert grpo.entropy_coef(5, 10, 0.01, 0.0) == pytest.approx(0.005)
    assert grpo.entropy_coef(50, 10, 0.01, 0.0) == 0.0
    kl = grpo.k3_kl(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)]))
    assert kl.item() == pytest.approx(0.5 + math.log(2) - 1)
    assert grpo.k3_kl(torch.tensor([0.3]), torch.tensor([0.3])).item() == 0.0


def test_policy_loss_hand_worked_and_clip_fractions():
    logp_old = torch.log(torch.tensor([0.5, 0.5]))
    logp = torch.log(torch.tensor([0.8, 0.25]))  # ratios 1.6 and 0.5
    adv, eps, mask = torch.tensor([1.0, -1.0]), torch.tensor([0.2, 0.2]), torch.tensor([True, True])
    out = grpo.policy_loss(logp, logp_old, adv, eps, mask, global_tokens=2)
    # token 1: −min(1.6, 1.2) = −1.2 ; token 2: −min(−0.5, −0.8) = 0.8 ; token mean = −0.2
    assert out.loss.item() == pytest.approx(-0.2)
    assert out.clip_high_frac.item() == 0.5 and out.clip_low_frac.item() == 0.5 and out.tokens == 2


def test_policy_loss_token_mean_is_invariant_to_how_the_batch_is_split():
    torch.manual_seed(0)
    n = 12
    theta = torch.randn(n, requires_grad=True)
    logp_old, adv = torch.randn(n) - 2, torch.randn(n)
    ent = torch.rand(n)
    mask = torch.rand(n) > 0.2
    eps = grpo.adaptive_clip_eps(ent, grpo.entropy_threshold(ent, mask), 0.2, 0.28)
    g = int(mask.sum())

    def loss(idx):
        lp = theta[idx] * 0.1 + logp_old[idx]
        return grpo.policy_loss(lp, logp_old[idx], adv[idx], eps[idx], mask[idx], g, entropy=theta[idx].sigmoid(),
                                ent_coef=0.01).loss

    whole = loss(torch.arange(n))
    (g_whole,) = torch.autograd.grad(whole, theta)
    halves = [loss(torch.arange(0, 5)), loss(torch.arange(5, n))]
    (g_split,) = torch.autograd.grad(sum(halves), theta)
    assert torch.allclose(whole, sum(halves)) and torch.allclose(g_whole, g_split)
