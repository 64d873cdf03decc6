"""From scored rollouts to learner input: per-token advantages (Eqs. 11–13, 17 or plain GRPO), the difficulty
filter, and the rollout statistics the driver logs. Pure logic over ``Rollout`` and ``GroupReward`` (no Ray).

Plain GRPO's list reward ([GAP], ours): R(o_i) = mean_j R_query(q_ij) + R_seq(o_i) (an empty list counts the lowest
query reward). The same R, min-max normalised by the range R can attain under the reward config
(:func:`reward_bounds`), is the difficulty statistic: a prompt is kept when the mean over its G lists lies in
[difficulty_low, difficulty_high].

Precision: the group statistics are computed in float64 (``grpo.group_normalise`` also measures deviations from one
member of the group, so a group of equal rewards has deviations of exactly 0 and, ε being inside the square root,
advantages of exactly 0); the per-token advantages are cast to float32 at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from aigq.config import GRPOConfig, RewardsConfig
from aigq.data import prompt as P
from aigq.rewards.compose import GroupReward
from learner import grpo
from learner.grpo_trainer import RLExample
from learner.token_roles import token_roles
from rollout.engine import Rollout

# R_fmt (``rules.format_reward``): −1 when nothing parses; otherwise 1 − 0.25·[separators] − 0.25·[empty items]
# − 0.25·[garbage items] − 0.5·min(1, |n − expected|/expected) ∈ [−0.25, 1].
FMT_EMPTY, FMT_PARSED_MIN, FMT_MAX = -1.0, -0.25, 1.0


def _span(w: float, lo: float, hi: float) -> tuple[float, float]:
    """[min, max] of w·x for x ∈ [lo, hi]."""
    return min(w * lo, w * hi), max(w * lo, w * hi)


def _sum_clip(spans: list[tuple[float, float]], clip: float) -> tuple[float, float]:
    lo, hi = sum(a for a, _ in spans), sum(b for _, b in spans)
    return min(max(lo, -clip), clip), min(max(hi, -clip), clip)


def query_reward_range(c: RewardsConfig, variant: str | None = None) -> tuple[float, float]:
    """[min, max] of one query's R_query = clip(w_ctr·r_CTR + w_rouge·ROUGE + w_length·r_len + w_trigger·r_trig
    − w_rep_query·rep, ±clip): r_CTR = clip(γ·p̂, 0, β) ∈ [0, min(β, γ)] (p̂ is a probability), ROUGE, r_len,
    r_trig, rep ∈ [0, 1]; r_trig is always 0 for Direct (``variant="direct"``; None = either variant)."""
    trig_hi = 0.0 if variant == "direct" else 1.0
    return _sum_clip([_span(c.w_ctr, 0.0, min(c.ctr_beta, c.ctr_gamma)), _span(c.w_rouge, 0.0, 1.0),
                      _span(c.w_length, 0.0, 1.0), _span(c.w_trigger, 0.0, trig_hi),
                      _span(-c.w_rep_query, 0.0, 1.0)], c.reward_clip)


def empty_query_reward(c: RewardsConfig, variant: str | None = None) -> float:
    """What an empty list counts as its mean query reward in R(o): the lowest query reward."""
    return query_reward_range(c, variant)[0]


def reward_bounds(c: RewardsConfig, variant: str | None = None) -> tuple[float, float]:
    """The range [min, max] that R(o) = mean_j R_query + R_seq can attain under the reward config (its closure:
    some ends are only approached), the normalisation of the difficulty statistic, so that the filter's
    [difficulty_low, difficulty_high] = [0.1, 0.95] refers to the rewards a list can actually get.

    Two kinds of list (``compose.RewardComposer`` and its ``floor``):

    * **empty** (nothing parses, or a group that could not be scored): R_fmt = −1, R_rep = diversity = 0 and the
      mean query reward is :func:`empty_query_reward`, so R = q_lo + clip(−w_format) exactly;
    * **parsed** (n ≥ 1 queries): mean_j R_query ∈ [q_lo, q_hi] (:func:`query_reward_range`); R_fmt ∈ [−0.25, 1]
      (all three −0.25 checks fail and the count is off by ≥ expected), R_rep = −mean(rep) ∈ [−1, 0], diversity ∈
      [0, 1], so R_seq ∈ clip(w_format·[−0.25, 1] + w_rep·[−1, 0] + w_diversity·[0, 1]).

    The result is the union of both. With non-negative weights the ends are reached or approached (the extremes of
    the terms ask for the same list): the top by the reference list itself with p̂ ≥ β/γ (every query's components
    at 1, rep 0, R_fmt 1; diversity 1 needs queries that share no trigram); the bottom by ever longer lists of one
    duplicated garbage item with empty items and bad separators (the first query is never a repeat, so rep's mean
    → 1 and R → the bound as n grows).
    With negative weights the ends are a sound outer bound. Default weights: R_query ∈ [−0.5, 2.2], parsed
    R_seq ∈ [−1.25, 1] → R ∈ [−1.75, 3.2]; an empty list gets −0.5 − 1 = −1.5, which normalises to 0.05 < 0.1,
    so a group that produces nothing is filtered (the previous bound, −2.5 from R_fmt = −1 plus R_rep = −1 —
    never reached together — put it at 0.175 and the low bound never fired)."""
    q_lo, q_hi = query_reward_range(c, variant)
    s_lo, s_hi = _sum_clip([_span(c.w_format, FMT_PARSED_MIN, FMT_MAX), _span(c.w_rep, -1.0, 0.0),
                            _span(c.w_diversity, 0.0, 1.0)], c.reward_clip)
    empty = q_lo + min(max(c.w_format * FMT_EMPTY, -c.reward_clip), c.reward_clip)
    return min(q_lo + s_lo, empty), max(q_hi + s_hi, empty)


def list_reward(lr, q_floor: float) -> float:
    q = lr.query["total"]
    return (float(np.mean(q)) if q else q_floor) + lr.seq["total"]


def _merged_trigger_index(text: str) -> list[int]:
    """Parsed Think line k → the rewards' interest point index (consecutive lines with one T_k are one point)."""
    out, k, prev = [], -1, object()
    for t, _ in P.parse_think_target(text)[1]:
        if t != prev:
            k += 1
        out.append(k)
        prev = t
    return out


@dataclass
class GroupAdvantages:
    examples: list[RLExample]
    kept: bool
    difficulty: float  # mean normalised list reward of the group
    zero_std: bool  # every list got the same total reward


def group_advantages(rollouts: Sequence[Rollout], reward: GroupReward, tokenizer, cfg: GRPOConfig,
                     rcfg: RewardsConfig) -> GroupAdvantages:
    """Advantages for the G rollouts of one prompt (in the order given)."""
    lists = reward.lists
    if len(lists) != len(rollouts):
        raise ValueError(f"group {reward.group_id}: {len(rollouts)} rollouts but {len(lists)} reward lists")
    g = len(rollouts)
    lo, hi = reward_bounds(rcfg, cfg.variant)
    q_floor = empty_query_reward(rcfg, cfg.variant)
    totals = torch.tensor([list_reward(lr, q_floor) for lr in lists], dtype=torch.float64)
    difficulty = float(((totals - lo) / max(hi - lo, 1e-9)).clamp(0, 1).mean())
    zero_std = bool(grpo.zero_std_groups(totals[None])[0])
    roles = [token_roles(tokenizer, r.token_ids, cfg.variant) for r in rollouts]
    width = max(len(r.token_ids) for r in rollouts)
    slots = torch.full((g, width), grpo.PAD, dtype=torch.long)
    trig = torch.full((g, width), -1, dtype=torch.long)
    for i, (s, t) in enumerate(roles):
        n_q = len(lists[i].query["total"])
        s = [x if x < n_q else grpo.SEP for x in s]  # defensive: a slot the rewards did not score → sequence term
        slots[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        if cfg.variant == "think":
            merged = _merged_trigger_index(rollouts[i].text)
            n_k = len(lists[i].trigger_groups)
            t = [merged[x] if 0 <= x < len(merged) and merged[x] < n_k else -1 for x in t]
            trig[i, :len(t)] = torch.tensor(t, dtype=torch.long)
    if cfg.algorithm == "grpo":
        adv = grpo.plain_grpo_advantages(slots, totals, cfg.adv_eps, cfg.adv_clip)
    else:
        j_max = max([len(lr.query["total"]) for lr in lists] + [1])
        r_q = torch.zeros((g, j_max), dtype=torch.float64)
        q_mask = torch.zeros((g, j_max), dtype=torch.bool)
        for i, lr in enumerate(lists):
            q = lr.query["total"]
            r_q[i, :len(q)] = torch.tensor(q, dtype=torch.float64)
            q_mask[i, :len(q)] = True
        r_seq = torch.tensor([lr.seq["total"] for lr in lists], dtype=torch.float64)
        slot_adv = grpo.query_advantages(r_q, q_mask, r_seq, cfg.lam, cfg.adv_eps)
        seq_term = cfg.lam * grpo.sequence_advantage(r_seq, cfg.adv_eps)
        t_adv = None
        if cfg.variant == "think":
            k_max = max([len(lr.trigger_groups) for lr in lists] + [1])
            r_t = torch.zeros((g, k_max), dtype=torch.float64)
            t_mask = torch.zeros((g, k_max), dtype=torch.bool)
            for i, lr in enumerate(lists):
                r_t[i, :len(lr.trigger_groups)] = torch.tensor(lr.trigger_groups, dtype=torch.float64)
                t_mask[i, :len(lr.trigger_groups)] = True
            t_adv = grpo.trigger_advantages(r_t, t_mask, cfg.adv_eps)
        adv = grpo.token_advantages(slots, slot_adv, seq_term, trig if t_adv is not None else None, t_adv,
                                    cfg.adv_clip)
    adv = adv.float()  # statistics in float64 above; the learner's advantages are float32
    keep = bool(grpo.difficulty_keep(torch.tensor([difficulty]), cfg.difficulty_low, cfg.difficulty_high)[0])
    examples = []
    for i, r in enumerate(rollouts):
        n = len(r.token_ids)
        examples.append(RLExample(tuple(r.prompt_ids) + tuple(r.token_ids), len(r.prompt_ids),
                                  tuple(adv[i, :n].tolist()), (True,) * n))
    return GroupAdvantages(examples, keep, difficulty, zero_std)
