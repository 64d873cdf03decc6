"""From scored rollouts to learner input: per-token advantages (Eqs. 11–13, 17 or plain GRPO), the difficulty
filter, and the rollout statistics the driver logs. Pure logic over ``Rollout`` and ``GroupReward`` (no Ray).

Plain GRPO's list reward ([GAP], ours): R(o_i) = mean_j R_query(q_ij) + R_seq(o_i) (an empty list counts the lowest
query reward). The same R, min-max normalised by the reward config's attainable bounds, is the difficulty
statistic: a prompt is kept when the mean over its G lists lies in [difficulty_low, difficulty_high].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from aigq.config import GRPOConfig, RewardsConfig
from aigq.data import prompt as P
from aigq.learner import grpo
from aigq.learner.grpo_trainer import RLExample
from aigq.learner.token_roles import token_roles
from aigq.rewards.compose import GroupReward
from aigq.rollout.engine import Rollout


def reward_bounds(c: RewardsConfig) -> tuple[float, float]:
    """Attainable [min, max] of R(o) = mean_j R_query + R_seq under the reward config."""
    q_hi = c.w_ctr * c.ctr_beta + c.w_rouge + c.w_length + c.w_trigger
    q_lo = -c.w_rep_query
    s_hi = c.w_format + c.w_diversity
    s_lo = -c.w_format - c.w_rep
    clip = c.reward_clip
    return max(q_lo, -clip) + max(s_lo, -clip), min(q_hi, clip) + min(s_hi, clip)


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
    lo, hi = reward_bounds(rcfg)
    totals = torch.tensor([list_reward(lr, -rcfg.w_rep_query) for lr in lists], dtype=torch.float64)
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
        adv = grpo.plain_grpo_advantages(slots, totals.float(), cfg.adv_eps, cfg.adv_clip)
    else:
        j_max = max([len(lr.query["total"]) for lr in lists] + [1])
        r_q = torch.zeros((g, j_max))
        q_mask = torch.zeros((g, j_max), dtype=torch.bool)
        for i, lr in enumerate(lists):
            q = lr.query["total"]
            r_q[i, :len(q)] = torch.tensor(q, dtype=torch.float32)
            q_mask[i, :len(q)] = True
        r_seq = torch.tensor([lr.seq["total"] for lr in lists], dtype=torch.float32)
        slot_adv = grpo.query_advantages(r_q, q_mask, r_seq, cfg.lam, cfg.adv_eps)
        seq_term = cfg.lam * grpo.sequence_advantage(r_seq, cfg.adv_eps)
        t_adv = None
        if cfg.variant == "think":
            k_max = max([len(lr.trigger_groups) for lr in lists] + [1])
            r_t = torch.zeros((g, k_max))
            t_mask = torch.zeros((g, k_max), dtype=torch.bool)
            for i, lr in enumerate(lists):
                r_t[i, :len(lr.trigger_groups)] = torch.tensor(lr.trigger_groups, dtype=torch.float32)
                t_mask[i, :len(lr.trigger_groups)] = True
            t_adv = grpo.trigger_advantages(r_t, t_mask, cfg.adv_eps)
        adv = grpo.token_advantages(slots, slot_adv, seq_term, trig if t_adv is not None else None, t_adv,
                                    cfg.adv_clip)
    keep = bool(grpo.difficulty_keep(torch.tensor([difficulty]), cfg.difficulty_low, cfg.difficulty_high)[0])
    examples = []
    for i, r in enumerate(rollouts):
        n = len(r.token_ids)
        examples.append(RLExample(tuple(r.prompt_ids) + tuple(r.token_ids), len(r.prompt_ids),
                                  tuple(adv[i, :n].tolist()), (True,) * n))
    return GroupAdvantages(examples, keep, difficulty, zero_std)
