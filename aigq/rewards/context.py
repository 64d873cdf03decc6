"""The user side of the CTR model: a profile and the recent behaviours, from the log tables or from a prompt.

A :class:`UserContext` is exactly what an AIGQ prompt shows (``aigq.data.prompt``): profile fields and behaviours
``(days_ago, type, content)`` most recent first, content being the searched query or the item's description. The
CTR model is trained on contexts built from the logs (:func:`anchor_contexts`: before each HintQ exposure,
:func:`exposure_impressions`, or before each next-search anchor of a plain search log, :func:`next_search_impressions`)
and scores contexts parsed back from a policy prompt (:func:`context_from_prompt`), so the reward sees what the
policy saw.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from aigq.data import prompt as P
from aigq.data.holdout import before_cut
from aigq.data.schema import day_expr

_PROFILE_KEYS = {label.lower(): key for label, key in P.PROFILE_FIELDS}
@dataclass
class UserContext:
    profile: dict[str, str] = field(default_factory=dict)  # gender, age, occupation, city (absent = unknown)
    behaviours: list[tuple[int, str, str]] = field(default_factory=list)  # (days_ago, type, content), recent first


def _days(time_text: str) -> int:
    """``<Today>`` / ``Today`` → 0, ``<1_day_ago>`` / ``1 day ago`` → 1, ``<N_days_ago>`` / ``N days ago`` → N."""
    m = re.search(r"\d+", time_text)
    return int(m.group()) if m and "today" not in time_text.lower() else 0


def context_from_prompt(prompt: Any) -> UserContext:
    """Parse a prompt written by ``aigq.data.prompt.format_prompt`` (compressed or plain) back into a context; the
    behaviour lines go through the shared ``prompt.parse_behaviours``. Anything unparseable yields an empty context
    (the CTR model then scores from the query and nothing else)."""
    text = prompt.decode("utf-8", errors="replace") if isinstance(prompt, bytes | bytearray) else str(prompt or "")
    ctx = UserContext()
    m = re.search(r"User Profile:\s*\{(.*?)\}", text, re.S)
    if m:
        for part in m.group(1).split(","):
            k, _, v = part.partition(":")
            key, v = _PROFILE_KEYS.get(k.strip().lower()), v.strip()
            if key and v and v != P.UNKNOWN:
                ctx.profile[key] = v
    behs = P.parse_behaviours(text.split(P.OUTPUT_PREFIX)[0])
    ctx.behaviours = [(_days(t), typ.lower(), content.strip()) for _, (t, typ, content) in sorted(behs.items())]
    return ctx


def context_from_row(profile: dict[str, Any] | None, behaviours: list[dict[str, Any]] | None) -> UserContext:
    """A context from a profile row and behaviour dicts ``{days_ago, type, content}`` (most recent first)."""
    prof = {k: str(v) for k, v in (profile or {}).items() if v is not None and k in _PROFILE_KEYS.values()}
    behs = [(int(b["days_ago"]), str(b["type"]), str(b["content"])) for b in behaviours or []]
    return UserContext(prof, behs)


def behaviours_table(tables: dict[str, pl.DataFrame], types: list[str], start_date: str,
                     keep_session: bool = False) -> pl.DataFrame:
    """All behaviours (user_id, ts, day, type, content) sorted by (user_id, ts): searches carry their query, item
    events the item's description (else title), as the prompt shows them."""
    items = tables["items"].select("item_id", desc=pl.coalesce("description", "title")).unique("item_id")
    ev = tables["events"].filter(pl.col("type").is_in(types)).join(items, on="item_id", how="left")
    ev = ev.select(
        "user_id",
        "ts",
        "type",
        *(["session_id"] if keep_session else []),
        content=pl.when(pl.col("type") == "search").then(pl.col("query")).otherwise(pl.col("desc")),
    ).filter(pl.col("content").is_not_null() & (pl.col("content").str.strip_chars() != ""))
    return ev.with_columns(day=day_expr(pl.col("ts"), start_date)).sort("user_id", "ts", "content")


def anchor_contexts(tables: dict[str, pl.DataFrame], start_date: str, points: pl.DataFrame, history_len: int,
                    history_days: int, types: list[str]) -> pl.DataFrame:
    """The user side of each point (``ctx``, user_id, ts, day: an exposure or a next-search anchor) → one row per
    point, sorted by ctx: ctx, user_id, day, profile fields, ``behaviours`` = list of structs {days_ago, type,
    content}, the last ``history_len`` behaviours **strictly before** the point's ts, within ``history_days``, most
    recent first (a clicked hint becomes a search right after its exposure; an anchor search is its own label: none
    may leak into its own context)."""
    # Int64: an unsigned row index would wrap in ``bidx - history_len`` (the table's first users lost their history)
    beh = behaviours_table(tables, types, start_date).with_row_index("bidx").with_columns(pl.col("bidx").cast(pl.Int64))
    hi = points.select("ctx", "user_id", "ts").sort("user_id", "ts").join_asof(
        beh.select("user_id", "ts", "bidx"), on="ts", by="user_id", strategy="backward", allow_exact_matches=False,
        check_sortedness=False,
    )
    rows = (
        hi.filter(pl.col("bidx").is_not_null())
        .select("ctx", "user_id", b=pl.int_ranges(pl.col("bidx"), pl.col("bidx") - history_len, -1))
        .explode("b")
        .filter(pl.col("b") >= 0)
    )
    got = beh.select(bu="user_id", bday="day", btype="type", bcontent="content").gather(rows["b"])
    rows = pl.concat([rows, got], how="horizontal").join(points.select("ctx", "day"), on="ctx")
    rows = rows.filter((pl.col("bu") == pl.col("user_id")) & (pl.col("day") - pl.col("bday") <= history_days))
    behs = rows.sort("ctx", "b", descending=[False, True]).group_by("ctx", maintain_order=True).agg(
        behaviours=pl.struct(days_ago=(pl.col("day") - pl.col("bday")), type="btype", content="bcontent")
    )
    users = tables["users"].unique("user_id").select("user_id", "gender", "age", "occupation", "city")
    ctx = points.select("ctx", "user_id", "day").join(users, on="user_id", how="left").join(behs, on="ctx", how="left")
    return ctx.sort("ctx")


def exposure_impressions(
    tables: dict[str, pl.DataFrame], start_date: str, days: list[int], history_len: int, history_days: int,
    types: list[str], cuts: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """HintQ exposures of ``days`` (with ``cuts``: only those strictly before their user's train cut,
    ``aigq.data.holdout``) → (impressions, contexts).

    * impressions: one row per shown query — ctx (context row), exposure_id, user_id, day, slot (0..2), query,
      clicked, plus ``candidates`` (the ranker's top-K of the exposure, for evaluators);
    * contexts: one row per exposure (:func:`anchor_contexts`).
    """
    ex = tables["exposures"].with_columns(day=day_expr(pl.col("ts"), start_date)).filter(pl.col("day").is_in(days))
    if cuts is not None:
        ex = before_cut(ex, cuts)
    ex = ex.filter(pl.col("shown").list.len() == 3).sort("exposure_id").with_row_index("ctx")
    ctx = anchor_contexts(tables, start_date, ex.select("ctx", "user_id", "ts", "day"), history_len, history_days,
                          types)
    imp = (
        ex.select("ctx", "exposure_id", "user_id", "day", "shown", "clicked", candidates="ranker_topk")
        .with_columns(slot=pl.int_ranges(0, 3))
        .explode("shown", "clicked", "slot")
        .rename({"shown": "query"})
        .with_columns(pl.col("clicked").fill_null(False), pl.col("slot").cast(pl.Int8))
    )
    return imp, ctx


# ---------------------------------------------------------------- next searches (no exposure log)

HARD_TOP = 64  # co-occurring queries kept per query for hard negatives ([GAP], ours)


@dataclass
class NegativePool:
    """What negatives are drawn from: the training window's searches (strictly before the train cuts).

    * ``popular``: query, count — sampled ∝ count^power;
    * ``cooc``: (a, b, sessions) — the number of search sessions holding both queries, the ``HARD_TOP`` most
      frequent b per a;
    * ``own``: (user_id, a, b, sessions) — each user's own share of ``cooc``, subtracted so that a hard negative is
      what OTHER users' sessions suggest.
    """

    popular: pl.DataFrame
    cooc: pl.DataFrame
    own: pl.DataFrame
    power: float = 0.75

    def counts(self) -> dict[str, int]:
        return dict(self.popular.iter_rows())


def negative_pool(searches: pl.DataFrame, start_date: str, days: list[int], cuts: pl.DataFrame,
                  power: float = 0.75) -> NegativePool:
    """The pool of the training window ``days`` from ``next_search.searches_with_success`` rows, before ``cuts``."""
    s = before_cut(searches.filter(day_expr(pl.col("ts"), start_date).is_in(days)), cuts)
    popular = s.group_by("query").len("count").sort("query").with_columns(pl.col("count").cast(pl.Int64))
    sess = s.select("user_id", "session_id", "query").unique()
    pairs = (sess.join(sess, on=["user_id", "session_id"], suffix="_b", nulls_equal=True)
             .filter(pl.col("query") != pl.col("query_b")).select("user_id", a="query", b="query_b"))
    own = pairs.group_by("user_id", "a", "b").len("sessions").sort("user_id", "a", "b")
    cooc = (own.group_by("a", "b").agg(pl.col("sessions").sum()).sort(["a", "sessions", "b"], descending=[False, True, False])
            .group_by("a", maintain_order=True).head(HARD_TOP))
    return NegativePool(popular, cooc, own, power)


def _hard_negatives(a: pl.DataFrame, s: pl.DataFrame, pool: NegativePool, pos: pl.DataFrame, n_pos: pl.DataFrame,
                    per_pos: int, rng: np.random.Generator) -> pl.DataFrame:
    """key, query: up to ``per_pos`` × positives queries per anchor that OTHER users searched in one session with the
    user's latest search before the anchor, not among the anchor's positives; weighted sampling without replacement
    (Efraimidis–Spirakis: the smallest −log(u)/w per anchor)."""
    if per_pos == 0 or pool.cooc.height == 0:
        return pl.DataFrame(schema={"key": pl.Int64, "query": pl.String})
    latest = (a.select("key", "user_id", "ts").sort("user_id", "ts")
              .join_asof(s.select("user_id", "ts", last="query"), on="ts", by="user_id", strategy="backward",
                         allow_exact_matches=False, check_sortedness=False)
              .drop_nulls("last"))
    c = latest.join(pool.cooc, left_on="last", right_on="a").join(
        pool.own, left_on=["user_id", "last", "b"], right_on=["user_id", "a", "b"], how="left", suffix="_own")
    c = c.select("key", query="b", w=pl.col("sessions") - pl.col("sessions_own").fill_null(0))
    c = c.filter(pl.col("w") > 0).join(pos.select("key", "query"), on=["key", "query"], how="anti")
    c = c.sort("key", "query").join(n_pos, on="key")
    c = c.with_columns(r=pl.lit(pl.Series(-np.log(rng.random(c.height)))) / pl.col("w").cast(pl.Float64))
    c = c.sort("key", "r").with_columns(rank=pl.int_range(pl.len()).over("key"))
    return c.filter(pl.col("rank") < pl.col("n") * per_pos).select("key", "query")


def _popular_negatives(want: pl.DataFrame, pool: NegativePool, taken: pl.DataFrame, rng: np.random.Generator,
                       rounds: int = 4) -> pl.DataFrame:
    """key, query: ``want.n`` draws per anchor ∝ count^power, never a query already in ``taken`` (the anchor's
    positives and hard negatives) nor a repeat; a few redraw rounds fill what rejection left short."""
    out = pl.DataFrame(schema={"key": pl.Int64, "query": pl.String})
    if pool.popular.height == 0:
        return out
    queries = pool.popular["query"]
    w = pool.popular["count"].to_numpy().astype(np.float64) ** pool.power
    p = w / w.sum()
    want = want.filter(pl.col("n") > 0).sort("key")
    for _ in range(rounds):
        if want.height == 0:
            break
        keys = np.repeat(want["key"].to_numpy(), want["n"].to_numpy())
        got = pl.DataFrame({"key": keys, "query": queries.gather(rng.choice(len(p), size=len(keys), p=p))})
        got = got.unique(["key", "query"], maintain_order=True).join(taken, on=["key", "query"], how="anti")
        got = got.join(out, on=["key", "query"], how="anti")
        out = pl.concat([out, got])
        want = (want.join(got.group_by("key").len("g"), on="key", how="left")
                .select("key", n=pl.col("n") - pl.col("g").fill_null(0)).filter(pl.col("n") > 0).sort("key"))
    return out


def next_search_impressions(
    tables: dict[str, pl.DataFrame], start_date: str, days: list[int], history_len: int, history_days: int,
    types: list[str], *, cuts: pl.DataFrame, pool: NegativePool, anchor: str = "session", horizon_days: int = 1,
    neg_popular: int = 4, neg_hard: int = 2, seed: int = 0, searches: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Next searches of a plain search log on ``days`` → (impressions, contexts), the frames of
    :func:`exposure_impressions` (so the click likelihood trains on them unchanged, slot 0: e(0) = 1).

    * anchors and positives are ``aigq.data.next_search``'s (the Direct labels' definition): each anchor's distinct
      horizon-label queries, strictly before the user's cut in ``cuts``, are ``clicked=True`` rows;
    * per positive, ``neg_hard`` hard negatives (:func:`_hard_negatives`; a shortfall is topped up from popularity)
      and ``neg_popular`` popularity-sampled negatives from ``pool`` (the training window's searches), never one of
      the anchor's positives, ``clicked=False``; deterministic for ``seed``;
    * impressions: ctx, user_id, ts (the anchor's), day, slot (0), query, clicked, source (next_search / hard /
      popular);
    * contexts: one row per anchor (:func:`anchor_contexts`).
    """
    from aigq.data import next_search as N

    s = N.searches_with_success(tables["events"]) if searches is None else searches
    a = N.anchors(s, anchor, start_date, min(days), max(days), cuts).filter(pl.col("day").is_in(days))
    a = a.with_row_index("key").with_columns(pl.col("key").cast(pl.Int64))
    lab = N.horizon_labels(a, s, cuts, horizon_days, start_date)
    pos = lab.select("key", "query").unique(["key", "query"], maintain_order=True)
    a = a.join(pos.select("key").unique(), on="key", how="semi").sort("key").with_row_index("ctx")
    n_pos = pos.group_by("key").len("n").with_columns(pl.col("n").cast(pl.Int64)).sort("key")
    rng = np.random.default_rng(seed)
    hard = _hard_negatives(a, s, pool, pos, n_pos, neg_hard, rng)
    short = n_pos.join(hard.group_by("key").len("h"), on="key", how="left").select(
        "key", n=pl.col("n") * (neg_popular + neg_hard) - pl.col("h").fill_null(0)).sort("key")
    popular = _popular_negatives(short, pool, pl.concat([pos, hard]), rng)
    imp = pl.concat([pos.with_columns(clicked=pl.lit(True), source=pl.lit("next_search")),
                     hard.with_columns(clicked=pl.lit(False), source=pl.lit("hard")),
                     popular.with_columns(clicked=pl.lit(False), source=pl.lit("popular"))])
    imp = imp.join(a.select("key", "ctx", "user_id", "ts", "day"), on="key").select(
        "ctx", "user_id", "ts", "day", slot=pl.lit(0, pl.Int8), query="query", clicked="clicked", source="source")
    imp = imp.sort(["ctx", "clicked", "source", "query"], descending=[False, True, False, False])
    points = a.select("ctx", "user_id", "ts", "day")
    return imp, anchor_contexts(tables, start_date, points, history_len, history_days, types)


def contexts_of(frame: pl.DataFrame) -> list[UserContext]:
    """Rows of :func:`anchor_contexts` → :class:`UserContext` objects (row order kept)."""
    out = []
    for r in frame.iter_rows(named=True):
        prof = {k: r[k] for k in ("gender", "age", "occupation", "city") if r.get(k) is not None}
        out.append(context_from_row(prof, r.get("behaviours")))
    return out
