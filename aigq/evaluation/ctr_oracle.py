"""TEST-ONLY evaluator: how well the CTR model ranks queries like the simulator's hidden click model does.

This module reads ``world/hidden`` (``aigq.data.hidden.HiddenModel``). It is the only reward-side code allowed to:
nothing that trains or scores (``aigq.rewards``, ``actors``) imports it — a test checks that. It runs after
training, in tests, benchmarks and ``aigq train-ctr`` on a simulated world, and only measures.

Pairs: every query of the ranker's top-K of every exposure on the held-out days, for that exposure's user and day.
Hidden side: p(click | user, day, query, slot 0) (slot fixed: position bias is not relevance). Model side: the CTR
model's p̂(click | examined) for the same user context. Reported: Spearman over all pairs and the mean per-exposure
Spearman (ranking the K candidates of one request, what the reward needs to get right).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from aigq.config import CTRConfig
from aigq.data.hidden import HiddenModel
from aigq.rewards.ctr import CTRScorer
from aigq.rewards.ctr_train import click_data, spearman


def oracle_spearman(world: str | Path, tables: dict[str, pl.DataFrame], start_date: str, days: list[int],
                    scorer: CTRScorer, cfg: CTRConfig) -> dict[str, float]:
    if not days:
        return {}
    data = click_data(tables, start_date, days, cfg)
    if len(data) == 0:
        return {}
    cand = (data.imp.filter(pl.col("slot") == 0).select("ctx", "user_id", "day", query="candidates")
            .explode("query").drop_nulls("query").unique(["ctx", "query"], maintain_order=True))
    hidden = HiddenModel(world).click_probability(cand.select("user_id", "day", "query", slot=pl.lit(0)))
    model = scorer.score(data.contexts, cand["ctx"].to_numpy(), cand["query"].to_list())
    df = cand.with_columns(h=pl.Series(hidden), m=pl.Series(model))
    per = [spearman(g["h"].to_numpy(), g["m"].to_numpy()) for _, g in df.group_by("ctx") if len(g) >= 3]
    per = [x for x in per if np.isfinite(x)]
    return {
        "oracle.pairs": len(df),
        "oracle.spearman": spearman(hidden, model),
        "oracle.spearman_per_exposure": float(np.mean(per)) if per else float("nan"),
    }
