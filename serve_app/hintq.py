"""The ``hintq`` application: the online HintQ endpoint (paper §4, Figure 2c). It never waits on an LLM.

``POST /hintq`` ``{"user_id": 7, "k": 3}`` →

1. **recall** from three channels: the user's AIGQ-Direct cache (M newest runs; newer runs and earlier slots
   score higher), the AIGQ-Think index keyed by the user's latest ``think_lookup_behaviours`` behaviours (Eq. 19
   scores, discounted by behaviour recency), and — only when those two give fewer than k — the fallback:
   co-searched queries of the user's recent searches, then popular searches (cold-start and unknown users);
2. **de-duplicate** (case/whitespace-insensitive; the first channel keeps the entry) and drop **blocklisted**
   queries (``serve.blocklist``, hot-updatable through ``user_config``);
3. **rank** with the CTR model p̂(click | user, query) — batched across concurrent requests with
   ``@serve.batch`` — or by recall score when no CTR model exists yet; return the top k with channel and scores.

Unknown users get the fallback, not an error. :class:`HintQCore` holds steps 1–3 without Serve so the benchmark's
bare FastAPI app runs exactly the same reads and ranking.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Request
from ray import serve

from aigq.rewards.context import UserContext
from serve_app.common import AppContext, StoreHealth, app_context, ingress_app
from serve_app.models import HintQRequest, HintQResponse, parse_body
from serve_app.records import Records, norm, trigger_key

CHANNELS = ("direct", "think", "coclick", "popular")


def latest_ctr_model(root: Path) -> Path | None:
    days = sorted(p for p in root.glob("day-*") if (p / "model.json").is_file()) if root.is_dir() else []
    return days[-1] if days else None


class Blocklist:
    def __init__(self, terms: list[str]):
        self.terms = [norm(t) for t in terms if norm(t)]
        self._re = re.compile("|".join(rf"(?<!\w){re.escape(t)}(?!\w)" for t in self.terms)) if self.terms else None

    def blocked(self, query: str) -> bool:
        return bool(self._re and self._re.search(norm(query)))


class HintQCore:
    """Recall + de-duplication + blocklist + ranking; ``scorer`` None → rank by recall score."""

    def __init__(self, records: Records, cfg, scorer=None, blocklist: list[str] | None = None):
        self.records, self.cfg, self.sc, self.scorer = records, cfg, cfg.serve, scorer
        self.blocklist = Blocklist(self.sc.blocklist if blocklist is None else blocklist)

    def recall(self, user: int, k: int) -> tuple[UserContext, list[dict[str, Any]], bool]:
        rec, n = self.records, self.sc.recall_per_channel
        ctx, behs = rec.context(user, self.cfg.samples.history_days)
        cands: dict[str, dict[str, Any]] = {}

        def add(query: str, source: str, score: float) -> None:
            key = norm(query)
            if key and key not in cands and not self.blocklist.blocked(query) and len(query) <= 128:
                cands[key] = {"query": query.strip(), "source": source, "recall_score": round(float(score), 6)}

        got = 0
        for r_age, run in enumerate(rec.get_direct(user)):
            for j, q in enumerate(run.queries):
                if got < n:
                    add(q, "direct", 0.8 ** r_age / (1 + j))
                    got += 1
        keys = list(dict.fromkeys(trigger_key(b.type, b.content) for b in behs))[: self.sc.think_lookup_behaviours]
        found = rec.think_lookup(keys)
        think = sorted(((s * 0.9 ** keys.index(x), q) for x, entries in found.items() for q, s in entries),
                       reverse=True)
        for s, q in think[:n]:
            add(q, "think", s)
        fallback = len(cands) < k
        if fallback:
            searches = [b.content for b in behs if b.type == "search"][:3]
            co = rec.coclick(searches)
            for x in (norm(s) for s in searches):
                for q, s in co.get(x, [])[:n]:
                    add(q, "coclick", s)
            for q, s in rec.popular()[:n]:
                add(q, "popular", s)
        return ctx, list(cands.values()), fallback

    def rank(self, cands: list[dict[str, Any]], probs: np.ndarray | None, k: int) -> list[dict[str, Any]]:
        for c, p in zip(cands, probs if probs is not None else [None] * len(cands), strict=True):
            c["score"] = round(float(p), 6) if p is not None else c["recall_score"]
        return sorted(cands, key=lambda c: (-c["score"], -c["recall_score"]))[:k]

    def score_many(self, items: list[tuple[UserContext, list[str]]]) -> list[np.ndarray]:
        """One CTR forward pass for several requests' candidates."""
        ctxs = [c for c, _ in items]
        idx = np.concatenate([np.full(len(q), i, np.int64) for i, (_, q) in enumerate(items)] + [np.zeros(0, np.int64)])
        flat = [q for _, qs in items for q in qs]
        p = self.scorer.score(ctxs, idx, flat) if flat else np.zeros(0)
        out, lo = [], 0
        for _, qs in items:
            out.append(p[lo:lo + len(qs)])
            lo += len(qs)
        return out

    def answer(self, user: int, k: int | None = None) -> dict[str, Any]:
        """The whole request without batching (the bare baseline and tests)."""
        k = k or self.sc.hintq_k
        ctx, cands, fallback = self.recall(user, k)
        probs = self.score_many([(ctx, [c["query"] for c in cands])])[0] if self.scorer and cands else None
        return self.response(user, cands, probs, k, fallback)

    def response(self, user: int, cands, probs, k: int, fallback: bool) -> dict[str, Any]:
        return {"user_id": user, "queries": self.rank(cands, probs, k), "fallback": fallback,
                "ranker": "ctr" if probs is not None else "recall", "candidates": len(cands)}


def load_scorer(ctx: AppContext, folder: str | None):
    from aigq.rewards.ctr import CTRScorer
    from serve_app.policy import resolve_ctr_model

    if folder and folder.startswith("runs:/"):  # the train-ctr run's logged artefacts (no shared filesystem needed);
        # named by its URI, so a reconfigure with the same URI does not load it again
        return CTRScorer.load(resolve_ctr_model(folder, ctx.tracking_uri())), folder
    path = ctx.path(folder) if folder else latest_ctr_model(ctx.path(ctx.cfg.ctr_root()))
    return (CTRScorer.load(path), str(path)) if path is not None else (None, None)


# the answer needs read; /status admin; /healthz open
app = ingress_app("AIGQ HintQ (online)", {("POST", "/"): "read"})


@serve.deployment
@serve.ingress(app)
class HintQ(StoreHealth):
    def __init__(self, args: dict[str, Any]):
        import torch

        torch.set_num_threads(int(os.environ.get("AIGQ_SERVE_THREADS", "1")))
        self.ctx = app_context(args)
        scorer, self.ctr_path = load_scorer(self.ctx, self.ctx.cfg.serve.ctr_model)
        self.core = HintQCore(self.ctx.records, self.ctx.cfg, scorer)
        self._score.set_max_batch_size(self.ctx.cfg.serve.batch_max_size)
        self._score.set_batch_wait_timeout_s(self.ctx.cfg.serve.batch_wait_s)
        self.batches = self.scored = 0

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Hot updates: ``blocklist`` (terms added to ``serve.blocklist``) and ``ctr_model`` (a CTR model folder)."""
        if "blocklist" in user_config:
            self.core.blocklist = Blocklist(self.ctx.cfg.serve.blocklist + list(user_config["blocklist"] or []))
        if user_config.get("ctr_model") and user_config["ctr_model"] != self.ctr_path:
            self.core.scorer, self.ctr_path = load_scorer(self.ctx, user_config["ctr_model"])

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _score(self, items: list[tuple[UserContext, list[str]]]) -> list[np.ndarray]:
        self.batches += 1
        self.scored += len(items)
        return await asyncio.to_thread(self.core.score_many, items)

    @app.post("/", response_model=HintQResponse)
    async def hintq(self, request: Request) -> dict[str, Any]:
        body: HintQRequest = await parse_body(request, HintQRequest, self.ctx.cfg.serve.max_body_bytes)
        k = body.k or self.ctx.cfg.serve.hintq_k
        ctx, cands, fallback = await asyncio.to_thread(self.core.recall, body.user_id, k)  # store reads off the loop
        probs = await self._score((ctx, [c["query"] for c in cands])) if self.core.scorer and cands else None
        return self.core.response(body.user_id, cands, probs, k, fallback)

    @app.get("/status")
    async def status(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "ctr_model": self.ctr_path, "blocklist": self.core.blocklist.terms,
                "batches": self.batches, "scored_requests": self.scored, "store": self.ctx.store.describe(),
                "think_index": await asyncio.to_thread(self.ctx.records.think_version)}


def build(args: dict[str, Any]) -> serve.Application:
    """Serve application builder (``import_path: serve_app.hintq:build``)."""
    return HintQ.bind(args)
