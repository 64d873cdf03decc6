"""IL-GRPO maths (paper §3.5, digest §3.4–§3.6): pure torch functions over small tensors, one per equation.

Shapes: a *group* is the G rollouts (lists) of one prompt; ``J`` query slots per list, ``K`` interest points
(AIGQ-Think trigger sets), ``T`` generated tokens. Batched variants carry a leading group axis ``B``. Nothing here
knows about Ray, models or tokenizers: the learner gathers log-probabilities and calls these.

Token roles (``token_slots``): ``>= 0`` = the token belongs to query slot j; ``SEP`` = separators, trailing tokens
(EOS, anything after the last slot) and, for Think, rationale tokens; ``PAD`` = not a generated token (ignored).
Rule for ``SEP`` tokens ([GAP], ours, digest §3.4 [I]): they get only the sequence term λ·Â_seq.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PAD = -2  # not a generated token
SEP = -1  # separator / trailing / rationale token: sequence advantage only


def group_normalise(x: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """(x − μ) / sqrt(σ² + ε) along dim 0 (the G rollouts of a group), population variance (1/G), ε inside the
    square root (Eqs. 12–13). ``mask`` (same shape, bool) excludes entries from the statistics (a rollout that has
    no slot j); excluded entries come back as 0.

    Deviations are measured from one member of each column first (x − x_ref, mathematically a no-op): equal
    rewards then give deviations, μ and σ² of exactly 0, so a group without variance gets exactly 0 (a float mean
    of equal values can be off by an ulp, which ε^-½ would blow up). Callers pass float64 for exact statistics."""
    if mask is None:
        mask = torch.ones_like(x, dtype=torch.bool)
    m = mask.to(x.dtype)
    n = m.sum(0).clamp_min(1.0)
    ref = x.gather(0, mask.long().argmax(0, keepdim=True))  # the first member of each column
    d = torch.where(mask, x - ref, torch.zeros_like(x))
    mu = d.sum(0) / n
    var = (((d - mu) ** 2) * m).sum(0) / n
    return torch.where(mask, (d - mu) / torch.sqrt(var + eps), torch.zeros_like(x))


def sequence_advantage(r_seq: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Â_seq(o_i) = (R_seq(o_i) − μ^S) / σ^S over the G rollouts (Eq. 13). [G] → [G]."""
    return group_normalise(r_seq, eps=eps)


def query_advantages(r_query: torch.Tensor, slot_mask: torch.Tensor, r_seq: torch.Tensor, lam: float,
                     eps: float = 1e-6) -> torch.Tensor:
    """Eq. 11: A_{i,j} = (R_query(q_{i,j}) − μ^Q_j)/σ^Q_j + λ·(R_seq(o_i) − μ^S)/σ^S, the query statistics per slot j
    across the G rollouts (Eq. 12). ``r_query``/``slot_mask`` [G, J] (mask False where rollout i has no slot j),
    ``r_seq`` [G] → [G, J] (0 where masked)."""
    a = group_normalise(r_query, slot_mask, eps) + lam * sequence_advantage(r_seq, eps)[:, None]
    return torch.where(slot_mask, a, torch.zeros_like(a))


def trigger_advantages(r_trigger: torch.Tensor, trigger_mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Eq. 17 (AIGQ-Think): Â_{i,k} = (r_trigger(T_{i,k}) − μ^T_k)/σ^T_k, statistics per interest point k across the
    G rollouts. [G, K] → [G, K]; trigger tokens get only this (strict signal separation)."""
    return group_normalise(r_trigger, trigger_mask, eps)


def token_advantages(token_slots: torch.Tensor, slot_adv: torch.Tensor, seq_term: torch.Tensor,
                     token_triggers: torch.Tensor | None = None, trigger_adv: torch.Tensor | None = None,
                     clip: float = 2.0) -> torch.Tensor:
    """Broadcast advantages to tokens (Eqs. 11, 17), then clip to ±``clip`` (paper: 2.0).

    ``token_slots`` [G, T]: slot j ≥ 0 → ``slot_adv[i, j]`` (query tokens: only their own query's advantage);
    ``SEP`` → ``seq_term[i]`` (= λ·Â_seq, the documented rule for separators/trailing/rationale tokens); ``PAD`` → 0.
    ``token_triggers`` [G, T] (Think): k ≥ 0 → ``trigger_adv[i, k]`` only, overriding the slot role."""
    g = torch.arange(token_slots.shape[0])[:, None].expand_as(token_slots)
    adv = torch.where(token_slots == SEP, seq_term[:, None].expand_as(token_slots).to(slot_adv.dtype),
                      torch.zeros(token_slots.shape, dtype=slot_adv.dtype))
    q = token_slots >= 0
    adv[q] = slot_adv[g[q], token_slots[q]]
    if token_triggers is not None:
        if trigger_adv is None:
            raise ValueError("token_triggers given without trigger_adv")
        t = token_triggers >= 0
        adv[t] = trigger_adv[g[t], token_triggers[t]]
    return adv.clamp(-clip, clip)


def plain_grpo_advantages(token_slots: torch.Tensor, r_total: torch.Tensor, eps: float = 1e-6,
                          clip: float = 2.0) -> torch.Tensor:
    """The paper's "GRPO" baseline: one sequence-level advantage, group-normalised total reward, on every generated
    token. ``r_total`` [G] → [G, T]."""
    a = sequence_advantage(r_total, eps)[:, None].expand(token_slots.shape)
    return torch.where(token_slots != PAD, a, torch.zeros_like(a)).clamp(-clip, clip)


def difficulty_keep(norm_reward_mean: torch.Tensor, low: float = 0.1, high: float = 0.95) -> torch.Tensor:
    """Difficulty filter (§3.5.4): keep a prompt when the mean over its G rollouts of the normalised reward (in
    [0, 1]) lies in [low, high] (paper: [0.1, 0.95]). [B] → bool [B]."""
    return (norm_reward_mean >= low) & (norm_reward_mean <= high)


def zero_std_groups(rewards: torch.Tensor, tol: float = 1e-8) -> torch.Tensor:
    """Groups whose G rewards are all equal (no learning signal). [B, G] → bool [B]."""
    return rewards.std(dim=1, unbiased=False) <= tol


def entropy_threshold(entropy: torch.Tensor, mask: torch.Tensor, q: float = 0.8) -> torch.Tensor:
    """τ of Eq. 18: the q-quantile (paper: 80th percentile) of the token entropies of the current batch. With DDP
    the learner passes the gathered entropies of the whole global batch, so τ does not depend on the split."""
    vals = entropy[mask.bool()]
    return torch.quantile(vals.float(), q) if vals.numel() else torch.tensor(0.0)


def adaptive_clip_eps(entropy: torch.Tensor, tau: torch.Tensor | float, eps_low: float,
                      eps_high: float) -> torch.Tensor:
    """Eq. 18: ε(e_t) = ε_high if e_t ≥ τ else ε_low — high-entropy (forking) tokens may move further."""
    return torch.where(entropy >= tau, torch.full_like(entropy, eps_high), torch.full_like(entropy, eps_low))


def entropy_coef(step: int, total_steps: int, start: float, end: float) -> float:
    """β(s), the entropy bonus weight, decaying linearly from ``start`` at step 0 to ``end`` at ``total_steps``."""
    frac = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return start + (end - start) * frac


def k3_kl(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(π_θ ‖ π_ref): exp(r) − r − 1 with r = log π_ref − log π_θ (≥ 0)."""
    r = logp_ref - logp
    return torch.exp(r) - r - 1.0


@dataclass
class PolicyLossOutput:
    loss: torch.Tensor  # scalar to backpropagate (this shard's share of the global token mean)
    pg_loss: torch.Tensor  # detached components, summed over this shard's tokens / global token count
    entropy: torch.Tensor
    kl: torch.Tensor
    clip_high_frac: torch.Tensor  # share of this shard's tokens clipped at 1 + ε (positive advantage)
    clip_low_frac: torch.Tensor  # share clipped at 1 − ε (negative advantage)
    tokens: int


def policy_loss(logp: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, eps: torch.Tensor,
                mask: torch.Tensor, global_tokens: int, entropy: torch.Tensor | None = None, ent_coef: float = 0.0,
                logp_ref: torch.Tensor | None = None, kl_coef: float = 0.0) -> PolicyLossOutput:
    """Clipped surrogate with per-token ε (digest §3.6, reconstructed objective), entropy bonus −β(s)·H and optional
    k3 KL, aggregated as a **token mean over the global batch**: every term is summed over this shard's tokens and
    divided by ``global_tokens`` (all ranks' generated tokens), so summing the ranks' losses — which DDP's gradient
    averaging does after the learner scales by world size — equals the single-worker loss on the whole batch."""
    m = mask.to(logp.dtype)
    ratio = torch.exp(logp - logp_old)
    clipped = torch.clamp(ratio, 1.0 - eps, 1.0 + eps)
    pg = -torch.minimum(ratio * adv, clipped * adv)
    total = pg
    ent = entropy if entropy is not None else torch.zeros_like(logp)
    if entropy is not None and ent_coef:
        total = total - ent_coef * entropy
    kl = k3_kl(logp, logp_ref) if logp_ref is not None else torch.zeros_like(logp)
    if logp_ref is not None and kl_coef:
        total = total + kl_coef * kl
    denom = float(max(global_tokens, 1))
    n = m.sum().clamp_min(1.0)
    with torch.no_grad():
        hi = ((ratio > 1.0 + eps) & (adv > 0)).to(m.dtype)
        lo = ((ratio < 1.0 - eps) & (adv < 0)).to(m.dtype)
        return_parts = ((pg * m).sum() / denom, (ent * m).sum() / denom, (kl * m).sum() / denom,
                        (hi * m).sum() / n, (lo * m).sum() / n)
    return PolicyLossOutput((total * m).sum() / denom, *return_parts, tokens=int(m.sum().item()))
