"""One policy's IL-SFT optimisation state and train step, usable alone (tests, one process) or inside a DDP
LearnerWorker (``wrap`` = DistributedDataParallel). Pure torch: no Ray.

Loss normalisation across a DDP group: Eq. 5 averaged over the *global* batch's target tokens. Each worker scales
its summed NLL by ``world_size / global_tokens``; DDP averages gradients (÷ world_size), so the update equals the
single-process update on the whole global batch. Gradient accumulation over micro-batches syncs only on the last.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn

from aigq.config import SFTConfig
from learner.sft import TargetLM


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class SFTTrainer:
    """``amp``: a context factory the forward passes run in (``efficient.autocast_for``: bf16 autocast); only the
    parameters with ``requires_grad`` are optimised (all of them in a full fine-tune; LoRA / frozen layers:
    ``learner.efficient``)."""

    def __init__(self, model: nn.Module, cfg: SFTConfig, total_steps: int, world_size: int = 1,
                 wrap: Callable[[nn.Module], nn.Module] | None = None,
                 amp: Callable[[], AbstractContextManager] | None = None):
        self.model, self.cfg, self.total_steps, self.world_size = model, cfg, total_steps, world_size
        self.amp = amp or nullcontext
        self.target_lm = TargetLM(model)
        self.net = wrap(self.target_lm) if wrap else self.target_lm
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, cfg.warmup_steps, total_steps, cfg.lr_min_ratio))
        self.step = 0

    def train_step(self, micro_batches: Sequence[dict[str, torch.Tensor]], global_tokens: int) -> dict[str, float]:
        """One optimizer step over this worker's shard (its micro-batches); returns the shard's summed NLL and
        token count (the driver adds them up over workers: loss = Σ nll / Σ tokens)."""
        if not micro_batches or global_tokens <= 0:
            raise ValueError("train_step needs at least one micro-batch with target tokens")
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        scale = self.world_size / global_tokens
        nll_sum, tokens = 0.0, 0
        for k, mb in enumerate(micro_batches):
            last = k == len(micro_batches) - 1
            with nullcontext() if last or not hasattr(self.net, "no_sync") else self.net.no_sync():
                with self.amp():
                    nll, n = self.net(**mb)
                (nll * scale).backward()
            nll_sum += float(nll.detach())
            tokens += int(n)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return {"nll_sum": nll_sum, "tokens": tokens, "grad_norm": grad_norm, "lr": lr}

    @torch.no_grad()
    def evaluate(self, micro_batches: Sequence[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Summed NLL and token count over held-out micro-batches (no gradient, no DDP traffic)."""
        self.target_lm.eval()
        nll_sum, tokens = 0.0, 0
        for mb in micro_batches:
            with self.amp():
                nll, n = self.target_lm(**mb)
            nll_sum += float(nll)
            tokens += int(n)
        return {"nll_sum": nll_sum, "tokens": tokens}

    def state(self) -> dict[str, Any]:
        return {"step": self.step, "total_steps": self.total_steps, "world_size": self.world_size}


def get_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as JSON-able values (checkpoints never pickle)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": _listify(random.getstate()), "torch": torch.get_rng_state().tolist(),
             "numpy": {"keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    v, internal, g = state["python"]
    random.setstate((v, tuple(internal), g))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    n = state["numpy"]
    np.random.set_state(("MT19937", np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _listify(x: Any) -> Any:
    return [_listify(v) for v in x] if isinstance(x, tuple | list) else x
