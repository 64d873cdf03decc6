"""Next-search supervision from a plain search log (issue 16): anchors, horizon labels and search success.

A shop without a HintQ exposure log still knows what each user searched next. This module turns the search events
into (anchor, next searches) pairs that both the AIGQ-Direct samples (``samples.label_source=next_searches``) and
the next-search reward model (``ctr.objective=next_search``) learn from, with one definition:

* **search success**: a search is successful when an item event (click / cart / buy) of the same user and session
  follows it before the user's next search (the paper's feedback prior: a query that led to a click outweighs one
  that did not).
* **anchor** (``samples.anchor``): ``session`` = the first search of each search session (the context is everything
  before the session), ``search`` = every search (the context also holds the session's earlier searches).
* **horizon labels**: the searches from the anchor (inclusive) up to 00:00 after the anchor's day plus
  ``label_horizon_days`` days, and strictly before the user's train cut (``aigq.data.holdout``), in time order.

Everything is index arithmetic over the searches sorted by (user_id, ts, query): a join_asof finds each anchor's
first and last search, so memory is the anchors times their window, never a user × user join.
"""

from __future__ import annotations

import polars as pl

from aigq.data.holdout import before_cut
from aigq.data.schema import ITEM_EVENT_TYPES, TS, day_expr

SEARCHES = {"user_id": pl.Int64, "ts": TS, "query": pl.String, "session_id": pl.Int64, "success": pl.Boolean}


def searches_with_success(events: pl.DataFrame) -> pl.DataFrame:
    """Search events with a non-blank query and their ``success`` flag, sorted by (user_id, ts, query) — the order
    of ``holdout.searches`` — with a row index ``sidx``."""
    is_search = pl.col("type") == "search"
    ev = events.filter((is_search & (pl.col("query").str.strip_chars().str.len_chars() > 0))
                       | pl.col("type").is_in(list(ITEM_EVENT_TYPES)))
    # at one instant a search comes before the item events it led to
    ev = ev.select("user_id", "ts", "type", "query", "session_id").sort("user_id", "ts", ~is_search, "query")
    # run = the latest search so far over the user-sorted frame (a global count: an item event before a user's first
    # search carries another user's run and the join on user_id drops it; no per-user window, which is slow)
    ev = ev.with_columns(run=is_search.cast(pl.Int64).cum_sum())
    hit = (ev.filter(~is_search).select("user_id", "run", "session_id").unique()
           .with_columns(success=pl.lit(True)))
    s = ev.filter(is_search).join(hit, on=["user_id", "run", "session_id"], how="left", nulls_equal=True)
    s = s.select("user_id", "ts", "query", "session_id", pl.col("success").fill_null(False)).cast(SEARCHES)
    return s.sort("user_id", "ts", "query", maintain_order=True).with_row_index("sidx")


def anchors(s: pl.DataFrame, how: str, start_date: str, first_day: int, last_day: int,
            cuts: pl.DataFrame) -> pl.DataFrame:
    """Anchors (user_id, ts, day) on days first_day..last_day strictly before the user's cut, sorted by (user, ts).
    ``how``: ``session`` (first search of each session; a null session id counts as one session) or ``search``."""
    if how == "session":
        a = s.group_by("user_id", "session_id").agg(pl.col("ts").min()).select("user_id", "ts")
    elif how == "search":
        a = s.select("user_id", "ts")
    else:
        raise ValueError(f"unknown anchor {how!r}: session or search")
    a = a.unique().with_columns(day=day_expr(pl.col("ts"), start_date))
    a = before_cut(a.filter(pl.col("day").is_between(first_day, last_day)), cuts)
    return a.sort("user_id", "ts")


def horizon_labels(a: pl.DataFrame, s: pl.DataFrame, cuts: pl.DataFrame, horizon_days: int,
                   start_date: str) -> pl.DataFrame:
    """For anchors ``a`` (key, user_id, ts, day): one row per search in each anchor's window — key, query, t (the
    search's ts), success, sidx — in (key, t) order. ``s`` is :func:`searches_with_success` (or a user range of
    it, with its original ``sidx``)."""
    end = pl.lit(start_date).str.to_date().cast(TS) + pl.duration(days=pl.col("day") + horizon_days)
    w = (a.select("key", "user_id", "ts", "day").join(cuts, on="user_id", how="left")
         .with_columns(end=pl.min_horizontal(end, "cut")).sort("user_id", "ts"))
    right = s.select("user_id", "ts", "sidx")
    asof = {"by": "user_id", "check_sortedness": False}  # sorted by ts within each user on both sides
    lo = w.join_asof(right, on="ts", strategy="forward", **asof).select("key", lo="sidx")
    hi = (w.sort("user_id", "end").join_asof(right, left_on="end", right_on="ts", strategy="backward",
                                              allow_exact_matches=False, **asof).select("key", hi="sidx"))
    rng = lo.join(hi, on="key").filter(pl.col("lo").is_not_null() & pl.col("hi").is_not_null()
                                       & (pl.col("hi") >= pl.col("lo")))
    ex = rng.select("key", sidx=pl.int_ranges("lo", pl.col("hi") + 1, dtype=pl.UInt32)).explode("sidx")
    first = s["sidx"][0] if s.height else 0
    got = s.select("query", t="ts", success="success").gather(ex["sidx"] - first)
    return pl.concat([ex, got], how="horizontal").select("key", "query", "t", "success", "sidx").sort("key", "t",
                                                                                                      "sidx")
