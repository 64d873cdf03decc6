"""EBR baseline: a two-tower user → query retrieval model (the paper's strongest non-generative recall channel).

* **Text features**: every text (query, behaviour content, profile field) is a bag of hashed character trigrams plus
  word unigrams (``aigq.rewards.text.ngram_ids``), embedded by one shared ``EmbeddingBag`` (mean) of width
  ``eval.ebr_dim`` — no query ids, so unseen text still gets a vector.
* **User tower**: [profile bag ; attention-free recency-weighted mean of the ``eval.ebr_history`` most recent
  behaviours (learnt weight per position) ; the most recent behaviour] → MLP → unit vector.
* **Query tower**: query bag → MLP → unit vector.
* **Training**: pairs (user context, query searched or clicked in the session) from the train days
  (``baselines.train_pairs``), in-batch softmax over cosine / ``eval.ebr_temperature`` (other rows' queries are the
  negatives; a row whose query equals the positive is masked out), Adam, ``eval.ebr_epochs`` epochs.
* **Retrieval**: top-K by cosine over the train-day query vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import nn

from aigq.config import AIGQConfig, EvalConfig
from aigq.data.categories import normalise
from aigq.rewards.context import context_from_prompt
from aigq.rewards.text import ngram_ids

PROFILE = ("gender", "age", "occupation", "city")


def _bag(texts: Sequence[str], buckets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """EmbeddingBag input (flat ids, offsets); an empty text gets id 0 (a shared "nothing" bucket)."""
    ids = [ngram_ids(t, buckets, 3, 3) if t else np.zeros(1, np.int64) for t in texts]
    ids = [x if len(x) else np.zeros(1, np.int64) for x in ids]
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in ids])[:-1]]) if ids else np.zeros(0, np.int64)
    flat = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    return torch.from_numpy(flat.astype(np.int64)), torch.from_numpy(offsets.astype(np.int64))


@dataclass
class Contexts:
    profiles: list[str]  # one text of profile tokens per user
    behaviours: list[list[str]]  # ≤ H contents, most recent first


def contexts(prompts: Sequence[str], history: int) -> Contexts:
    prof, behs = [], []
    for p in prompts:
        c = context_from_prompt(p)
        prof.append(" ".join(f"{k}={c.profile.get(k, '?')}" for k in PROFILE))
        behs.append([f"{t} {content}" for _, t, content in c.behaviours[:history]])
    return Contexts(prof, behs)


class TwoTower(nn.Module):
    def __init__(self, buckets: int, dim: int, history: int):
        super().__init__()
        self.buckets, self.history = buckets, history
        self.emb = nn.EmbeddingBag(buckets, dim, mode="mean", sparse=True)  # sparse grads: SparseAdam
        nn.init.normal_(self.emb.weight, std=0.1)
        self.pos = nn.Parameter(torch.zeros(history))
        self.user = nn.Sequential(nn.Linear(3 * dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.query = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))

    def _texts(self, texts: Sequence[str]) -> torch.Tensor:
        """One bag per distinct text (behaviours repeat a lot within a batch), gathered back in order."""
        uniq = list(dict.fromkeys(texts))
        where = {t: i for i, t in enumerate(uniq)}
        return self.emb(*_bag(uniq, self.buckets))[torch.tensor([where[t] for t in texts], dtype=torch.long)]

    def encode_users(self, ctx: Contexts) -> torch.Tensor:
        n, h = len(ctx.profiles), self.history
        prof = self._texts(ctx.profiles)
        flat, mask = [], torch.zeros(n, h)
        for i, b in enumerate(ctx.behaviours):
            flat += b[:h] + [""] * (h - len(b[:h]))
            mask[i, : len(b[:h])] = 1.0
        beh = self._texts(flat).view(n, h, -1)
        w = torch.softmax(self.pos, 0).unsqueeze(0) * mask
        mean = (w.unsqueeze(-1) * beh).sum(1) / w.sum(1, keepdim=True).clamp_min(1e-9)
        return nn.functional.normalize(self.user(torch.cat([prof, mean, beh[:, 0] * mask[:, :1]], 1)), dim=-1)

    def encode_queries(self, queries: Sequence[str]) -> torch.Tensor:
        return nn.functional.normalize(self.query(self._texts(queries)), dim=-1)


def in_batch_loss(u: torch.Tensor, q: torch.Tensor, qkeys: Sequence[str], temperature: float) -> torch.Tensor:
    """Softmax cross-entropy of each user against the batch's queries; duplicates of the positive are masked."""
    logits = u @ q.T / temperature
    keys = np.asarray(qkeys, dtype=object)
    dup = torch.from_numpy((keys[:, None] == keys[None, :]) & ~np.eye(len(keys), dtype=bool))
    logits = logits.masked_fill(dup, float("-inf"))
    return nn.functional.cross_entropy(logits, torch.arange(len(keys)))


@dataclass
class EBR:
    model: TwoTower
    vocab: list[str]
    history: int
    losses: list[float] = field(default_factory=list)  # mean loss per epoch
    _qvec: torch.Tensor | None = None

    @torch.no_grad()
    def recommend(self, prompts: Sequence[str], k: int, batch: int = 512) -> list[list[str]]:
        self.model.eval()
        if self._qvec is None:
            self._qvec = torch.cat([self.model.encode_queries(self.vocab[i : i + batch])
                                    for i in range(0, len(self.vocab), batch)]) if self.vocab else None
        if self._qvec is None:
            return [[] for _ in prompts]
        out: list[list[str]] = []
        for i in range(0, len(prompts), batch):
            u = self.model.encode_users(contexts(prompts[i : i + batch], self.history))
            top = torch.topk(u @ self._qvec.T, min(k, len(self.vocab)), dim=1).indices.tolist()
            out += [[self.vocab[j] for j in row] for row in top]
        return out


def train_ebr(pairs: pl.DataFrame, e: EvalConfig, say: Callable[[str], None] | None = None) -> EBR:
    """Fit the two towers on (prompt, query) pairs (see the module docstring)."""
    torch.manual_seed(e.seed)
    rng = np.random.default_rng(e.seed)
    prompts, queries = pairs["prompt"].to_list(), pairs["query"].to_list()
    ctx = contexts(prompts, e.ebr_history)
    qkeys = [normalise(q) for q in queries]
    model = TwoTower(e.ebr_buckets, e.ebr_dim, e.ebr_history)
    dense = [p for name, p in model.named_parameters() if not name.startswith("emb.")]
    opts = [torch.optim.SparseAdam([model.emb.weight], lr=e.ebr_lr), torch.optim.Adam(dense, lr=e.ebr_lr)]
    ebr = EBR(model, vocab=list(dict.fromkeys(queries)), history=e.ebr_history)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: one thread is as fast and leaves the other core free
    try:
        for epoch in range(e.ebr_epochs):
            model.train()
            order, total, n = rng.permutation(len(queries)), 0.0, 0
            for s in range(0, len(order) - 1, e.ebr_batch):
                idx = order[s : s + e.ebr_batch]
                if len(idx) < 2:
                    continue
                sub = Contexts([ctx.profiles[i] for i in idx], [ctx.behaviours[i] for i in idx])
                loss = in_batch_loss(model.encode_users(sub), model.encode_queries([queries[i] for i in idx]),
                                     [qkeys[i] for i in idx], e.ebr_temperature)
                for opt in opts:
                    opt.zero_grad()
                loss.backward()
                for opt in opts:
                    opt.step()
                total, n = total + loss.item(), n + 1
            ebr.losses.append(total / max(n, 1))
            if say:
                say(f"EBR epoch {epoch + 1}/{e.ebr_epochs}: in-batch loss {ebr.losses[-1]:.3f}")
    finally:
        torch.set_num_threads(threads)
    return ebr


_FITTED: dict[str, EBR] = {}  # one fit per (samples, eval settings) per process: `ebr` and `ebr-all` share it


def fit_ebr(cfg: AIGQConfig, samples_dir=None, say: Callable[[str], None] | None = None) -> EBR:
    from aigq.evaluation.baselines import train_pairs

    d = Path(samples_dir or cfg.samples_dir())
    path = d / "think.parquet"
    key = f"{d.resolve()}|{path.stat().st_mtime_ns if path.is_file() else 0}|{cfg.eval.model_dump_json()}"
    if key not in _FITTED:
        _FITTED.clear()
        _FITTED[key] = train_ebr(train_pairs(d), cfg.eval, say)
    fitted = _FITTED[key]
    return EBR(fitted.model, vocab=fitted.vocab, history=fitted.history, losses=fitted.losses)
