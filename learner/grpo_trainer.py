"""One policy's IL-GRPO update, usable alone (tests, one process) or inside a DDP LearnerWorker. Pure torch: no Ray.

An update round over one rollout batch (this worker's shard of it):

1. **Old policy pass** (no grad): log-probabilities and entropies of every generated token under the current
   weights — the ratio's denominator and Eq. 18's entropies. The entropy threshold τ is the q-quantile over the
   *global* batch (entropies all-gathered across ranks), so it does not depend on how the batch is split.
2. **Updates**: the shard is cut into ``mini_batches`` parts; each part is one optimizer step on the clipped
   surrogate (``grpo.policy_loss``) with per-token ε from the old entropies, the entropy bonus β(s) and optional
   k3 KL. Each part's loss is a token mean over that part's generated tokens across all ranks (each worker scales
   by world size; DDP averages gradients), so the update equals the single-process update on the whole batch.

**One update per round** (``mini_batches: 1``, no dropout, ``grpo.fuse_old_pass``): the ratio is exactly 1 at the
only step, so step 1 is skipped: the old log-probs are the training forward's own, detached (as TRL does), the clip
never binds, and τ is computed afterwards from the same forward's entropies — the same update and figures with one
forward pass fewer per round (``tests/test_grpo_learner.py`` checks the weights match the two-pass round).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from aigq.config import GRPOConfig
from learner import grpo


@dataclass(frozen=True)
class RLExample:
    """One rollout as learner input: prompt + generated ids, the per-generated-token advantage, and whether each
    generated token enters the loss."""

    ids: tuple[int, ...]
    n_prompt: int
    adv: tuple[float, ...]  # one per generated token
    mask: tuple[bool, ...]  # one per generated token


def collate_rl(examples: Sequence[RLExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; per position t ≥ 1: ``gen_mask`` (token t is a generated, trained token) and ``adv``.
    Position t's log-probability comes from the logits at t − 1."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(examples), width), dtype=torch.long)
    gen = torch.zeros((len(examples), width), dtype=torch.bool)
    adv = torch.zeros((len(examples), width), dtype=torch.float32)
    for i, e in enumerate(examples):
        n = len(e.ids)
        ids[i, :n] = torch.tensor(e.ids)
        attn[i, :n] = 1
        gen[i, e.n_prompt:n] = torch.tensor(e.mask, dtype=torch.bool)
        adv[i, e.n_prompt:n] = torch.tensor(e.adv, dtype=torch.float32)
    return {"input_ids": ids, "attention_mask": attn, "gen_mask": gen, "adv": adv}


class TokenLogProbs(nn.Module):
    """Wraps a causal LM: (input_ids, attention_mask) → log p(token t | < t) and the entropy of that distribution,
    both [B, T] with position 0 = 0. The module DDP wraps, so one forward feeds the loss."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
        logp_all = torch.log_softmax(logits, dim=-1)
        logp = logp_all.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        pad = torch.zeros_like(logp[:, :1])
        return torch.cat([pad, logp], 1), torch.cat([pad, entropy], 1)


def gather_entropies(values: torch.Tensor) -> torch.Tensor:
    """All ranks' values concatenated (identity without an initialised process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    parts: list[torch.Tensor | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, values.cpu())
    return torch.cat([p for p in parts if p is not None])


def has_dropout(model: nn.Module) -> bool:
    """Whether train mode changes the forward: a dropout module with p > 0, or a Hugging Face config's attention /
    hidden dropout (applied functionally inside attention)."""
    if any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()):
        return True
    conf = getattr(model, "config", None)
    return any(float(getattr(conf, k, 0.0) or 0.0) > 0 for k in ("attention_dropout", "hidden_dropout",
                                                                  "dropout", "resid_pdrop", "attn_pdrop"))


class GRPOTrainer:
    def __init__(self, model: nn.Module, cfg: GRPOConfig, total_steps: int, world_size: int = 1,
                 wrap: Callable[[nn.Module], nn.Module] | None = None, ref_model: nn.Module | None = None,
                 amp: Callable[[], AbstractContextManager] | None = None):
        """``amp``: context factory for the forward passes (bf16 autocast); only parameters with
        ``requires_grad`` are optimised (LoRA / frozen layers, ``learner.efficient``)."""
        self.model, self.cfg, self.total_steps, self.world_size = model, cfg, total_steps, world_size
        self.amp = amp or nullcontext
        self.lp = TokenLogProbs(model)
        self.net = wrap(self.lp) if wrap else self.lp
        self.ref = TokenLogProbs(ref_model).eval() if ref_model is not None else None
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=0.0)
        # constant LR (the paper gives one value); a scheduler object keeps checkpoints uniform with IL-SFT's
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _s: 1.0)
        self.step = 0  # optimizer steps so far
        self.iteration = 0  # update rounds so far (β(s) decays over rounds)

    @torch.no_grad()
    def _old_pass(self, mbs: Sequence[dict[str, torch.Tensor]]) -> list[tuple[torch.Tensor, ...]]:
        self.lp.eval()
        out = []
        for mb in mbs:
            with self.amp():
                logp, ent = self.lp(mb["input_ids"], mb["attention_mask"])
                ref = self.ref(mb["input_ids"], mb["attention_mask"])[0] if self.ref is not None else None
            out.append((logp, ent, ref))
        return out

    def fused(self, n_parts: int) -> bool:
        """Whether this round's old-policy pass is the training forward itself: one update (the ratio is exactly 1,
        so the clip never binds and ε does not matter) and a forward that train mode does not change (no dropout)."""
        return self.cfg.fuse_old_pass and n_parts == 1 and not has_dropout(self.model)

    def _ref_pass(self, mb: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if self.ref is None:
            return None
        with torch.no_grad(), self.amp():
            return self.ref(mb["input_ids"], mb["attention_mask"])[0]

    def _tau(self, ents: list[torch.Tensor]) -> torch.Tensor:
        """Eq. 18's entropy threshold over the *global* batch (all ranks' generated-token entropies)."""
        all_ents = gather_entropies(torch.cat(ents) if ents else torch.zeros(0))
        return grpo.entropy_threshold(all_ents, torch.ones_like(all_ents, dtype=torch.bool), self.cfg.entropy_quantile)

    def update(self, parts: Sequence[Sequence[dict[str, torch.Tensor]]], part_tokens: Sequence[int],
               device: torch.device | None = None) -> dict[str, float]:
        """One update round. ``parts[u]`` = this worker's micro-batches of mini-batch u; ``part_tokens[u]`` = the
        generated, trained tokens of mini-batch u over *all* ranks. Returns sums (÷ nothing) for the driver."""
        cfg = self.cfg
        flat = [mb for part in parts for mb in part]
        fused = self.fused(len(parts))
        old = None if fused else self._old_pass(flat)
        tau = None if fused else self._tau([e[mb["gen_mask"]] for (_, e, _), mb in zip(old, flat, strict=True)])
        fused_ents: list[torch.Tensor] = []
        ent_coef = grpo.entropy_coef(self.iteration, self.total_steps, cfg.ent_coef_start, cfg.ent_coef_end)
        sums = {"pg_loss": 0.0, "entropy": 0.0, "kl": 0.0, "clip_high": 0.0, "clip_low": 0.0, "tokens": 0,
                "grad_norm": 0.0}
        self.net.train()
        k = 0
        for part, tokens in zip(parts, part_tokens, strict=True):
            self.optimizer.zero_grad(set_to_none=True)
            for j, mb in enumerate(part):
                last = j == len(part) - 1
                with nullcontext() if last or not hasattr(self.net, "no_sync") else self.net.no_sync():
                    with self.amp():
                        logp, ent = self.net(mb["input_ids"], mb["attention_mask"])
                    if fused:  # ratio ≡ 1: the old log-probs are this forward's, detached; τ after the round
                        logp_old, logp_ref = logp.detach(), self._ref_pass(mb)
                        eps = torch.full_like(logp, cfg.eps_high)
                        fused_ents.append(ent.detach()[mb["gen_mask"]])
                    else:
                        logp_old, ent_old, logp_ref = old[k]
                        eps = grpo.adaptive_clip_eps(ent_old, tau, cfg.eps_low, cfg.eps_high)
                    k += 1
                    out = grpo.policy_loss(logp, logp_old, mb["adv"], eps, mb["gen_mask"], tokens, entropy=ent,
                                           ent_coef=ent_coef, logp_ref=logp_ref, kl_coef=cfg.kl_coef)
                    (out.loss * self.world_size).backward()
                n = out.tokens
                sums["pg_loss"] += float(out.pg_loss) * tokens
                sums["entropy"] += float(out.entropy) * tokens
                sums["kl"] += float(out.kl) * tokens
                sums["clip_high"] += float(out.clip_high_frac) * n
                sums["clip_low"] += float(out.clip_low_frac) * n
                sums["tokens"] += n
            if not part:  # this rank has no rollouts in this part: still join the gradient all-reduce
                self._empty_backward(device)
            sums["grad_norm"] += float(torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip))
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
        if fused:
            tau = self._tau(fused_ents)  # the same all-gather on every rank, after the round's backward passes
        self.iteration += 1
        sums["tau"] = float(tau)
        sums["ent_coef"] = ent_coef
        return sums

    def state(self) -> dict[str, int]:
        return {"step": self.step, "iteration": self.iteration, "total_steps": self.total_steps,
                "world_size": self.world_size}

    def _empty_backward(self, device: torch.device | None) -> None:
        ids = torch.zeros((1, 2), dtype=torch.long, device=device)
        with self.amp():
            logp, ent = self.net(ids, torch.ones_like(ids))
        ((logp.sum() + ent.sum()) * 0.0).backward()
