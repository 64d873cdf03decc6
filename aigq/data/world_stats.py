"""Calibration statistics of a world's search behaviour (``../shared/world-calibration.md``), as small pure polars
functions: no Ray, no I/O. ``benchmarks/world_stats.py`` reads a world and prints them side by side.

Vocabulary used by every function:

- **query events**: events of type ``search`` with a non-blank query (``query_events`` builds them). Query text is
  compared in ONE normal form, ``normalise_expr`` (= ``aigq.data.vocabulary.normalise_query``: strip, lowercase,
  collapse whitespace), stored in column ``q``.
- **a query event's category** (column ``cat``): the event's own ``category``, else the ``queries`` table's category
  of its normalised text; blank or ``"unknown"`` (``schema.UNKNOWN_CATEGORY``) counts as unknown (null).
- **order**: a user's events by ``ts``, ties broken by their row order in the events table (column ``seq``).
- **words**: the normalised text split on single spaces; **characters**: the normalised text's length.
- **consecutive different pair**: two query events of one user, adjacent among that user's query events, whose
  normalised texts differ (``consecutive_pairs``).
"""

from __future__ import annotations

import math
from datetime import timedelta

import polars as pl

from aigq.data import schema

Frame = pl.DataFrame | pl.LazyFrame
WITHIN = timedelta(minutes=30)


def _lazy(df: Frame) -> pl.LazyFrame:
    return df.lazy() if isinstance(df, pl.DataFrame) else df


def _ratio(num: int | float, den: int | float) -> float | None:
    return float(num) / float(den) if den else None


def normalise_expr(col: str | pl.Expr) -> pl.Expr:
    """``vocabulary.normalise_query`` as a polars expression: strip, lowercase, collapse whitespace runs to one space."""
    e = pl.col(col) if isinstance(col, str) else col
    return e.str.strip_chars().str.to_lowercase().str.replace_all(r"\s+", " ")


def _known_cat(col: str) -> pl.Expr:
    """``col`` with blank and ``"unknown"`` as null."""
    c = pl.col(col).str.strip_chars()
    return pl.when(c.is_null() | (c == "") | (c == schema.UNKNOWN_CATEGORY)).then(None).otherwise(pl.col(col))


def query_events(events: Frame, queries: Frame | None = None) -> pl.DataFrame:
    """The query events (search, non-blank query) with ``user_id, ts, session_id, seq, q, cat``, sorted by user then
    time (``seq`` = row position in ``events``, the tie-break). ``cat``: the event's category, else the ``queries``
    table's category for the same normalised text, else null."""
    ev = (
        _lazy(events)
        .with_row_index("seq")
        .filter((pl.col("type") == "search") & pl.col("query").is_not_null())
        .with_columns(q=normalise_expr("query"), ev_cat=_known_cat("category"))
        .filter(pl.col("q") != "")
    )
    if queries is not None:
        qt = (
            _lazy(queries)
            .select(q=normalise_expr("query"), q_cat=_known_cat("category"))
            .filter(pl.col("q_cat").is_not_null())
            .unique("q", keep="first", maintain_order=True)
        )
        ev = ev.join(qt, on="q", how="left").with_columns(cat=pl.coalesce("ev_cat", "q_cat"))
    else:
        ev = ev.with_columns(cat=pl.col("ev_cat"))
    return (
        ev.select("user_id", "ts", "session_id", pl.col("seq").cast(pl.Int64), "q", "cat")
        .sort("user_id", "ts", "seq")
        .collect()
    )


def queries_per_user(qe: pl.DataFrame) -> tuple[float | None, float | None]:
    """(mean query events per user, mean distinct normalised queries per user), over users with ≥ 1 query event."""
    per = qe.group_by("user_id").agg(n=pl.len(), d=pl.col("q").n_unique())
    if per.height == 0:
        return None, None
    return float(per["n"].mean()), float(per["d"].mean())  # type: ignore[arg-type]


def single_query_user_share(qe: pl.DataFrame) -> float | None:
    """Share of users with ≥ 1 query event who have exactly 1 query event."""
    per = qe.group_by("user_id").len()
    return _ratio(int((per["len"] == 1).sum()), per.height)


def multi_day_user_share(events: Frame) -> float | None:
    """Share of users with ≥ 1 event (any type) whose events fall on more than one calendar day (UTC date of ``ts``;
    world day = date)."""
    per = _lazy(events).group_by("user_id").agg(days=pl.col("ts").dt.date().n_unique()).collect()
    return _ratio(int((per["days"] > 1).sum()), per.height)


def repeat_query_rate(qe: pl.DataFrame) -> float | None:
    """Share of query events whose normalised text the same user already searched at an earlier query event (every
    copy after a user's first is a repeat, consecutive copies included)."""
    if qe.height == 0:
        return None
    repeats = qe.select((~pl.struct("user_id", "q").is_first_distinct()).sum()).item()
    return repeats / qe.height


def consecutive_pairs(qe: pl.DataFrame, categories: Frame | None = None) -> pl.DataFrame:
    """A user's adjacent query events (``qe`` sorted by user then time) with different normalised text: one row per
    pair with ``q, prev_q, cat, prev_cat, par, prev_par, same_session, gap``. ``par`` = the ``categories`` table's
    parent of ``cat`` (null when the leaf is unknown, not in the table or has no/blank/"unknown" parent);
    ``same_session``: both session ids known and equal; ``gap`` = time between the two events."""
    df = qe.lazy()
    if categories is not None:
        parents = (
            _lazy(categories)
            .select(cat=_known_cat("category"), par=_known_cat("parent"))
            .filter(pl.col("cat").is_not_null())
            .unique("cat", keep="first", maintain_order=True)
        )
        df = df.join(parents, on="cat", how="left", maintain_order="left")
    else:
        df = df.with_columns(par=pl.lit(None, dtype=pl.String))
    prev = {c: pl.col(c).shift(1).over("user_id") for c in ("q", "cat", "par", "session_id", "ts")}
    return (
        df.with_columns(**{f"prev_{c}": e for c, e in prev.items()})
        .filter(pl.col("prev_q").is_not_null() & (pl.col("q") != pl.col("prev_q")))
        .select(
            "user_id", "q", "prev_q", "cat", "prev_cat", "par", "prev_par",
            same_session=(pl.col("session_id") == pl.col("prev_session_id")).fill_null(False),
            gap=pl.col("ts") - pl.col("prev_ts"),
        )
        .collect()
    )


def same_leaf_share(pairs: pl.DataFrame, within_session: bool = False) -> tuple[float | None, int]:
    """(share of consecutive different pairs whose two leaf categories are equal, number of usable pairs). A pair is
    usable when both categories are known; ``within_session`` keeps only pairs in the same session."""
    p = pairs.filter(pl.col("same_session")) if within_session else pairs
    p = p.filter(pl.col("cat").is_not_null() & pl.col("prev_cat").is_not_null())
    return _ratio(int((p["cat"] == p["prev_cat"]).sum()), p.height), p.height


def same_subtree_share(pairs: pl.DataFrame) -> tuple[float | None, int]:
    """(share of consecutive different pairs in the same subtree, number of usable pairs). Same subtree = the same
    leaf, or both leaves' parents known and equal. Usable: both leaves known and (same leaf or both parents known)."""
    same_leaf = pl.col("cat") == pl.col("prev_cat")
    both_par = pl.col("par").is_not_null() & pl.col("prev_par").is_not_null()
    p = pairs.filter(pl.col("cat").is_not_null() & pl.col("prev_cat").is_not_null() & (same_leaf | both_par))
    hit = p.select((same_leaf | (pl.col("par") == pl.col("prev_par"))).fill_null(False).sum()).item()
    return _ratio(hit, p.height), p.height


def shared_word_share(pairs: pl.DataFrame, within: timedelta | None = None) -> tuple[float | None, int]:
    """(share of consecutive different pairs whose normalised texts share at least one word, number of pairs
    counted). ``within``: only pairs whose second event is at most that long after the first (e.g. 30 minutes)."""
    p = pairs if within is None else pairs.filter(pl.col("gap") <= within)
    if p.height == 0:
        return None, 0
    common = pl.col("q").str.split(" ").list.set_intersection(pl.col("prev_q").str.split(" ")).list.len() > 0
    return p.select(common.sum()).item() / p.height, p.height


def words_chars_per_query(qe: pl.DataFrame) -> tuple[float | None, float | None]:
    """(mean words, mean characters) of the normalised text over query events (words: split on single spaces)."""
    if qe.height == 0:
        return None, None
    row = qe.select(w=pl.col("q").str.split(" ").list.len().mean(), c=pl.col("q").str.len_chars().mean()).row(0)
    return float(row[0]), float(row[1])


def sample_query_events(qe: pl.DataFrame, n: int, seed: int) -> tuple[pl.DataFrame, bool]:
    """(a seeded uniform sample of ``n`` query events without replacement, kept in ``qe``'s order; True when the world
    had fewer than ``n`` and ALL its query events are returned)."""
    if qe.height <= n:
        return qe, qe.height < n
    idx = qe.with_row_index("_i").sample(n, seed=seed)["_i"].sort()
    return qe[idx], False


def distinct_per_event(qe: pl.DataFrame) -> float | None:
    """Distinct normalised queries / query events (depends on the number of events: compare at a fixed size)."""
    return _ratio(qe["q"].n_unique(), qe.height)


def top_share(qe: pl.DataFrame, frac: float = 0.01) -> float | None:
    """Traffic share of the top ``frac`` of distinct queries by count: the k = max(1, floor(frac × distinct)) most
    frequent normalised queries' events / all query events."""
    if qe.height == 0:
        return None
    counts = qe["q"].value_counts()["count"].sort(descending=True)
    k = max(1, math.floor(frac * len(counts)))
    return int(counts.head(k).sum()) / qe.height


def seen_once_share(qe: pl.DataFrame) -> float | None:
    """Traffic from queries seen once: query events whose normalised text occurs exactly once among ``qe`` / all."""
    if qe.height == 0:
        return None
    counts = qe["q"].value_counts()
    return int((counts["count"] == 1).sum()) / qe.height


def unseen_later_share(qe: pl.DataFrame, later: float = 0.2) -> tuple[float | None, int]:
    """(share of the later query events whose normalised text never occurs among the earlier ones, number of later
    events). Query events are ordered by (``ts``, ``seq``) across all users; the later part is the last
    floor(``later`` × n) of them, the earlier part all before it."""
    n_late = math.floor(later * qe.height)
    if n_late == 0:
        return None, 0
    s = qe.sort("ts", "seq")
    early, late = s.head(qe.height - n_late), s.tail(n_late)
    unseen = int((~late["q"].is_in(early["q"].unique().implode())).sum())
    return unseen / n_late, n_late


def exposure_ctr(exposures: Frame) -> tuple[float | None, float | None]:
    """(impression CTR: clicked shown queries / all shown queries, share of exposures with ≥ 1 click); (None, None)
    when there are no exposures."""
    row = (
        _lazy(exposures)
        .select(
            n=pl.len(),
            shown=pl.col("shown").list.len().sum(),
            clicks=pl.col("clicked").list.sum().sum(),
            any_click=(pl.col("clicked").list.sum() > 0).sum(),
        )
        .collect()
        .row(0, named=True)
    )
    if not row["n"]:
        return None, None
    return _ratio(row["clicks"], row["shown"]), row["any_click"] / row["n"]


def light_session_share(events: Frame, max_behaviours: int = 5) -> float | None:
    """Share of sessions (requests) whose user had at most ``max_behaviours`` events (any type) before the session's
    first event — world-calibration.md's "requests from users with ≤ 5 behaviours"; events without a session id are
    left out."""
    ev = (
        _lazy(events)
        .with_row_index("seq")
        .filter(pl.col("session_id").is_not_null())
        .sort("user_id", "ts", "seq")
        .with_row_index("pos")
    )
    first_pos = ev.group_by("user_id").agg(p0=pl.col("pos").min())
    sess = ev.group_by("user_id", "session_id").agg(p=pl.col("pos").min()).join(first_pos, on="user_id")
    row = sess.select(n=pl.len(), light=((pl.col("p") - pl.col("p0")) <= max_behaviours).sum()).collect().row(0)
    return _ratio(row[1], row[0])


def leaf_categories(categories: Frame, fallback: Frame | None = None) -> int:
    """Number of leaf categories: known ``category`` values of the categories table that are not the parent of
    another category; when that table has none, the distinct known ``cat`` values of ``fallback`` (query events)."""
    cats = _lazy(categories).select(cat=_known_cat("category"), par=_known_cat("parent")).collect()
    inner = cats.filter(pl.col("par") != pl.col("cat"))["par"].drop_nulls().implode()
    leaves = cats["cat"].drop_nulls().unique()
    n = int((~leaves.is_in(inner)).sum())
    if n == 0 and fallback is not None:
        return int(_lazy(fallback).select(pl.col("cat").drop_nulls().n_unique()).collect().item())
    return n


def world_stats(
    tables: dict[str, pl.DataFrame], sample_events: int = 1637, seed: int = 0
) -> dict[str, float | int | bool | None]:
    """Every statistic of the calibration table for one world's (validated) tables, flat, keyed by name."""
    events = tables["events"]
    qe = query_events(events, tables.get("queries"))
    pairs = consecutive_pairs(qe, tables.get("categories"))
    sample, short = sample_query_events(qe, sample_events, seed)
    out: dict[str, float | int | bool | None] = {}
    out["queries_per_user"], out["distinct_queries_per_user"] = queries_per_user(qe)
    out["single_query_users"] = single_query_user_share(qe)
    out["multi_day_users"] = multi_day_user_share(events)
    out["light_sessions"] = light_session_share(events)
    out["repeat_query_rate"] = repeat_query_rate(qe)
    out["pairs"] = pairs.height
    out["same_leaf"], out["same_leaf_pairs"] = same_leaf_share(pairs)
    out["same_subtree"], out["same_subtree_pairs"] = same_subtree_share(pairs)
    out["same_leaf_session"], out["same_leaf_session_pairs"] = same_leaf_share(pairs, within_session=True)
    out["shared_word"], _ = shared_word_share(pairs)
    out["shared_word_30min"], out["pairs_30min"] = shared_word_share(pairs, WITHIN)
    out["words_per_query"], out["chars_per_query"] = words_chars_per_query(qe)
    out["sample_events"], out["sample_is_all"] = sample.height, short
    out["distinct_per_event"] = distinct_per_event(sample)
    out["top1pct_share"] = top_share(sample)
    out["seen_once_share"] = seen_once_share(sample)
    out["unseen_later"], out["later_events"] = unseen_later_share(qe)
    out["unseen_later_sample"], _ = unseen_later_share(sample)
    exp = tables.get("exposures")
    out["impression_ctr"], out["exposures_clicked"] = exposure_ctr(exp) if exp is not None else (None, None)
    out["exposures"] = exp.height if exp is not None else 0
    out["leaf_categories"] = leaf_categories(tables["categories"], qe)
    out["users"] = qe["user_id"].n_unique()
    out["users_any_event"] = events["user_id"].n_unique()
    out["query_events"] = qe.height
    out["events"] = events.height
    return out


# World v2 targets (issue 17, "Calibration"): (key, label, op, bound); impression CTR only where exposures exist.
TARGETS: tuple[tuple[str, str, str, float], ...] = (
    ("distinct_per_event", "distinct queries / query events (at N) ≥ 0.5", ">=", 0.5),
    ("seen_once_share", "traffic from queries seen once (at N) ≥ 40 %", ">=", 0.40),
    ("single_query_users", "users with exactly 1 query ≥ 30 %", ">=", 0.30),
    ("impression_ctr", "impression CTR ≤ 5 %", "<=", 0.05),
    ("unseen_later_sample", "later 20 % queries never seen earlier (at N) ≥ 40 %", ">=", 0.40),
    ("light_sessions", "sessions of users with ≤ 5 earlier behaviours ≥ 25 %", ">=", 0.25),
    ("light_sessions", "sessions of users with ≤ 5 earlier behaviours ≤ 35 %", "<=", 0.35),
)


def check_targets(stats: dict[str, float | int | bool | None]) -> list[tuple[str, bool | None]]:
    """(label, passed) per v2 target; passed is None when the statistic is undefined (impression CTR without
    exposures: not applicable; anything else undefined fails)."""
    out: list[tuple[str, bool | None]] = []
    for key, label, op, bound in TARGETS:
        v = stats.get(key)
        if v is None:
            out.append((label, None if key == "impression_ctr" else False))
            continue
        out.append((label, bool(v >= bound) if op == ">=" else bool(v <= bound)))
    return out
