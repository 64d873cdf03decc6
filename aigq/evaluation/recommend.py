"""Arm lists: every recommender under evaluation (baselines, policy variants) answers in one frame shape.

**The arm-lists frame convention** (shared by offline metrics, ``aigq eval`` and the simulated A/B):

    pl.DataFrame(user_id: Int64, day: Int32, queries: List[String])

* one row per (user_id, day) asked for — the rows of the test frame given, in its order;
* ``queries`` is ranked **best first**, de-duplicated (after ``categories.normalise``), at most K long (K = 30 for
  Table 1; the A/B shows the first 3), never null (an arm with nothing to say gives ``[]``);
* the arm saw only what is in the row's prompt (profile + behaviours strictly before 00:00 of ``day``) and what it
  learnt from train days; never the day's targets and never ``world/hidden``.

``arm_lists(cfg, arm, test_frame, k)`` builds one arm's frame. ``test_frame`` is ``samples/test.parquet`` (or any
frame with ``user_id, day, prompt``). Arms: ``ARMS`` below; policy arms (``direct-il-sft+il-grpo`` …) resolve their
policy folder with ``aigq.evaluation.suite.policy_dir``, or take it explicitly as ``<arm>@<folder>``. A missing policy folder or samples file is a
``FileNotFoundError`` with a message saying what to run.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from aigq.config import AIGQConfig
from aigq.data.categories import normalise

ARM_SCHEMA = {"user_id": pl.Int64, "day": pl.Int32, "queries": pl.List(pl.String)}
BASELINES = ("ebr", "popularity", "co-click", "zero-shot")
# Strong transparent baselines over the public query-understanding table (issue 17, ``facets.py``).
STRONG = ("facet-rule", "co-click+backoff", "ebr-all")
POLICY_ARMS = tuple(f"{v}-{s}" for v in ("direct", "think")
                    for s in ("sft", "il-sft", "il-sft+grpo", "il-sft+il-grpo"))
ARMS = BASELINES + STRONG + POLICY_ARMS


def dedup(queries: Sequence[str | None], k: int) -> list[str]:
    """First occurrence of each normalised query, original text kept, blanks dropped, at most ``k``."""
    seen: set[str] = set()
    out: list[str] = []
    for q in queries:
        key = normalise(q)
        if key and key not in seen:
            seen.add(key)
            out.append(str(q).strip())
            if len(out) >= k:
                break
    return out


def arm_frame(keys: pl.DataFrame, lists: Sequence[Sequence[str]], k: int) -> pl.DataFrame:
    """Build a conforming frame from ``keys`` (user_id, day) and one ranked list per row (de-duplicated, cut to k)."""
    if keys.height != len(lists):
        raise ValueError(f"{keys.height} rows but {len(lists)} lists")
    return pl.DataFrame({"user_id": keys["user_id"], "day": keys["day"],
                         "queries": [dedup(lst, k) for lst in lists]}, schema=ARM_SCHEMA)


def check_arm_frame(df: pl.DataFrame, k: int | None = None) -> pl.DataFrame:
    """Raise ``ValueError`` unless ``df`` follows the convention (columns, dtypes, no nulls, ≤ k)."""
    for col, dtype in ARM_SCHEMA.items():
        if col not in df.columns or df.schema[col] != dtype:
            raise ValueError(f"arm lists need column {col}: {dtype} (got {df.schema.get(col)})")
    if df["queries"].null_count():
        raise ValueError("arm lists: null query list")
    if k is not None and df.height and int(df["queries"].list.len().max()) > k:
        raise ValueError(f"arm lists longer than k={k}")
    return df


def arm_lists(cfg: AIGQConfig, arm: str, test_frame: pl.DataFrame, k: int | None = None, say=None) -> pl.DataFrame:
    """One arm's ranked lists for every row of ``test_frame`` (see the module docstring)."""
    k = k or cfg.eval.k
    keys = test_frame.select("user_id", "day")
    if arm in ("popularity", "co-click"):
        from aigq.evaluation import baselines as B

        model = B.fit_popularity(cfg) if arm == "popularity" else B.fit_coclick(cfg)
        return arm_frame(keys, model.recommend(test_frame["prompt"].to_list(), k), k)
    if arm in ("ebr", "ebr-all"):
        from aigq.evaluation import ebr

        model = ebr.fit_ebr(cfg, say=say)
        if arm == "ebr-all":  # the same towers, scoring the whole known query space (facets.query_space)
            from aigq.evaluation.facets import query_space

            model = ebr.EBR(model.model, vocab=query_space(cfg), history=model.history)
        return arm_frame(keys, model.recommend(test_frame["prompt"].to_list(), k), k)
    if arm in ("facet-rule", "co-click+backoff"):
        from aigq.evaluation import facets

        rule = facets.fit_facet_rule(cfg) if arm == "facet-rule" else facets.fit_coclick_backoff(cfg)
        return arm_frame(keys, rule.recommend(test_frame["prompt"].to_list(), k), k)
    if arm == "zero-shot":
        from aigq.evaluation import policy

        return arm_frame(keys, policy.zero_shot_lists(cfg, test_frame, k, say=say), k)
    base, _, folder = arm.partition("@")  # "<policy arm>@<folder>": that arm's prompts, an explicit policy folder
    if base in POLICY_ARMS:
        from pathlib import Path

        from aigq.evaluation import policy

        return arm_frame(keys, policy.policy_lists(cfg, base, test_frame, k, say=say,
                                                   folder=Path(folder) if folder else None), k)
    raise ValueError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")
