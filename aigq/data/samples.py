"""IL-SFT / AIGQ-Think samples from the clean log tables (paper §3.2–§3.3, Eqs. 2–5), vectorised in polars.

Every sample is ``x = [P, S]`` (Eq. 5): the user's profile and the last L behaviours **strictly before** the sample's
anchor (an exposure's ts for Direct, the session's t_first for Think, 00:00 of the day for test), so no label
behaviour leaks into its own prompt. Prompt text is ``aigq.data.prompt``'s format (index 1 = most recent).

* **Direct (Eq. 3)** one sample per train-day HintQ exposure with ≥ 1 clicked shown query. Label (rerank on):
  clicked shown queries in shown order, then ``ranker_topk[:rank_top_k]``; rerank off: the ranker's top-K only, in
  production order. De-duplicated (first occurrence kept), capped at ``label_cap``.
* **Direct from next searches** (``label_source=next_searches``, or ``auto`` on a world without HintQ exposures,
  ``aigq.data.next_search``): one sample per train-day anchor (a search session's start, or each search:
  ``samples.anchor``); label = the searches from the anchor to the end of its day + ``label_horizon_days`` days;
  rerank on: searches followed by an item click first ("search_click"), then the others ("search"), each in time
  order; rerank off: time order. De-duplicated, capped. A first session (no prior behaviour) is a cold-start sample.
* **Think (Eqs. 2, 4)** one sample per user and train day. The day-level session (Eq. 2) runs from t_first, the
  user's first search-entry interaction of the day (a HintQ exposure or a search event), to the day's last event, so
  every exposure and search of the day is in it while earlier same-day clicks are context. Label (rerank on):
  clicked hint queries (time, then shown order) → searches (time order) → the exposures' ranker top-K (time, then
  ranker order) → ``llm_gen`` candidates; rerank off: the same candidates in chronological order of appearance (at
  one exposure the ranker's list precedes its clicks; generated ones last). Then de-duplicate (first position kept,
  the strongest source kept: click > search > rank > gen), filter, cap, and drop empty labels. Filter
  ``overlap`` (stand-in for the paper's LLM filter): click/search queries stay; rank/gen queries stay only if their
  category (``queries`` table; unknown → dropped) equals, or shares its parent (``categories``) with, the category
  of at least one context behaviour.
* **Trigger sets** (Direct and Think; Think's T_k, §3.4): for a label query with category c, the indices of the
  context behaviours whose category is c; if none, of those whose category's parent is c's parent (null parents never
  match); the ``trigger_max`` most recent (smallest indices, ascending); otherwise (or unknown c) empty.
* **Train cut** (``aigq.data.holdout``): every train anchor and label lies strictly before its user's cut — 00:00
  of the first test day, or earlier, with ``last_query_holdout``, the user's held-out last query.
* **Last query** one row per user with ≥ 2 distinct queries: target = the last distinct query, context = the
  behaviours strictly before it (the last-query protocol of ``aigq eval``); no cap, no triggers.
* **Test** one row per user and test day (the last ``test_days``) with ≥ 1 search or clicked hint query: target =
  the day's searched and clicked hint queries in time order (same instant: searches first, clicks in shown order),
  de-duplicated, not capped; triggers empty; context = behaviours before 00:00 of that day.

``metadata.cold_start`` (all tables) = the number of behaviours before the anchor within ``history_days``
(``n_history``, not capped at L) ≤ ``cold_start_max_behaviours``. Ties in time are broken deterministically
(behaviours: by content id; exposures: by exposure_id). Memory: behaviours are held as integer ids (their text is
looked up in a per-item / per-query table), and contexts and candidate labels are built chunk by chunk of
``chunk_size`` anchors; the output does not depend on the chunk size.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from aigq.config import SamplesConfig
from aigq.data import holdout as H
from aigq.data import next_search as N
from aigq.data import prompt as P
from aigq.data.sample_io import SPLITS, SampleWriter, frame_stats
from aigq.data.schema import ITEM_EVENT_TYPES, TABLES, TS, day_expr, empty_frame

# label source priority (Eq. 4 order); "search_click" = a next search that led to an item click (next_searches)
SOURCES = {0: "click", 1: "search_click", 2: "search", 3: "rank", 4: "gen"}
SEARCH_PRIOS = (1, 2)
METADATA = pl.Struct({
    "n_behaviours": pl.Int32,  # behaviours shown in the prompt (≤ L)
    "n_history": pl.Int32,  # behaviours before the anchor within history_days (not capped)
    "cold_start": pl.Boolean,
    "label_sources": pl.List(pl.String),  # aligned with target
    "rerank": pl.Boolean,
    "compress": pl.Boolean,
    "anchor_ts": TS,
})
OUTPUT_SCHEMA: dict[str, pl.DataType] = {
    "sample_id": pl.String, "user_id": pl.Int64, "day": pl.Int32, "variant": pl.String, "prompt": pl.String,
    "target": pl.List(pl.String), "triggers": pl.List(pl.List(pl.Int32)), "metadata": METADATA,
}
# llm_gen(frame of sample_id, user_id, day, prompt) → frame of sample_id, queries (list[str], in generation order).
LLMGen = Callable[[pl.DataFrame], pl.DataFrame]
HELD_OUT = ("test", "last_query")  # splits whose targets are evaluated, not trained on: no cap, no triggers
_CLICK_AFTER_RANK = 1_000_000  # rerank off: at one exposure the ranker's list precedes the clicks on it
_CAND = {"key": pl.Int64, "query": pl.String, "prio": pl.Int8, "t": TS, "src": pl.Int64, "sub": pl.Int32,
         "ord": pl.Int32}


@dataclass
class SampleSet:
    direct: pl.DataFrame  # AIGQ-Direct train samples (Eq. 3)
    think: pl.DataFrame  # AIGQ-Think train samples (Eqs. 2, 4)
    test: pl.DataFrame  # per user-day test targets
    last_query: pl.DataFrame  # per user: the held-out last distinct query (the last-query protocol)
    special_tokens: list[str]
    label_source: str = "exposures"  # samples.label_source as resolved (auto → exposures | next_searches)

    def stats(self) -> dict[str, float]:
        """See ``aigq.data.sample_io.split_stats``."""
        return frame_stats({name: getattr(self, name) for name in SPLITS})


# ---------------------------------------------------------------- behaviours as integer ids


@dataclass
class _World:
    """What every variant shares: behaviours (ids), their line tails, query → category ids, the config."""

    beh: pl.DataFrame  # sorted by (user_id, ts); row = bidx; tid, bday, category, parent
    tails: pl.Series  # tid → "<type> content" (or "type | content")
    qinfo: pl.DataFrame  # query → qcat, qpar (category ids)
    profile: pl.DataFrame  # user_id → profile text
    ncat: int  # number of category ids (composite (key, category) ids)
    cfg: SamplesConfig
    start_date: str
    chunk_size: int
    count: P.TokenCounter | None = None  # prompt token counter for samples.max_prompt_tokens (None: approximation)


def _table(tables: dict[str, pl.DataFrame], name: str) -> pl.DataFrame:
    df = tables.get(name)
    df = empty_frame(name) if df is None else df
    return df.select([pl.col(c).cast(t) for c, t in TABLES[name].items()])


def _first_per(df: pl.DataFrame, key: str) -> pl.DataFrame:
    """One row per key, independent of the input row order (the smallest row wins)."""
    return df.sort(pl.all(), nulls_last=True).unique(key, keep="first", maintain_order=True)


def _cid(e: pl.Expr, names: pl.Series) -> pl.Expr:
    """Category name → integer id (its position in the sorted ``names``)."""
    return e.replace_strict(names, pl.Series(range(names.len()), dtype=pl.Int32), default=None, return_dtype=pl.Int32)


def _day_start(day: pl.Expr, start_date: str) -> pl.Expr:
    return pl.lit(start_date).str.to_date().cast(TS) + pl.duration(days=day - 1)


def _nonblank(col: str) -> pl.Expr:
    return pl.col(col).str.strip_chars().str.len_chars() > 0


def _world(t: dict[str, pl.DataFrame], cfg: SamplesConfig, start_date: str, chunk_size: int) -> _World:
    """Behaviours = events of ``behaviour_types`` with content (search: the query; click/cart/buy: the item's
    description, else title), sorted by (user_id, ts, content id); category from the event, else item / query."""
    cats = [t["categories"]["category"], t["categories"]["parent"], t["queries"]["category"], t["items"]["category"]]
    names = pl.concat([*cats, t["events"]["category"]]).drop_nulls().unique().sort()
    parents = _first_per(t["categories"].drop_nulls("category"), "category").select(
        category=_cid(pl.col("category"), names), parent=_cid(pl.col("parent"), names))
    qinfo = (_first_per(t["queries"].drop_nulls("query"), "query")
             .select("query", category=_cid(pl.col("category"), names))
             .join(parents, on="category", how="left").select("query", qcat="category", qpar="parent"))
    items = (_first_per(t["items"], "item_id")
             .select("item_id", desc=pl.coalesce("description", "title"), icat=_cid(pl.col("category"), names))
             .filter(_nonblank("desc")).sort("item_id").with_row_index("irow"))
    searched = t["events"].lazy().filter(pl.col("type") == "search").select("query")
    qdict = (pl.concat([t["queries"].lazy().select("query"), searched]).drop_nulls().filter(_nonblank("query"))
             .unique().sort("query").with_row_index("qrow").join(qinfo.lazy(), on="query", how="left").collect())
    itypes = [x for x in ITEM_EVENT_TYPES if x in cfg.behaviour_types]
    n_i, base = items.height, len(itypes) * items.height
    tails = [items.select(P.behaviour_tail_expr(pl.lit(x), pl.col("desc"), cfg.compress)) for x in itypes]
    tails.append(qdict.select(P.behaviour_tail_expr(pl.lit("search"), pl.col("query"), cfg.compress)))
    ev = t["events"].lazy().filter(pl.col("type").is_in(list(cfg.behaviour_types))).select(
        "user_id", "ts", "type", "query", "item_id", ecat=_cid(pl.col("category"), names))
    slot = pl.col("type").replace_strict(itypes, list(range(len(itypes))), default=0, return_dtype=pl.Int64)
    b_items = ev.filter(pl.col("type") != "search").join(items.lazy().select("item_id", "irow", "icat"), on="item_id")
    b_items = b_items.select("user_id", "ts", tid=slot * n_i + pl.col("irow"), category=pl.coalesce("ecat", "icat"))
    b_srch = ev.filter(pl.col("type") == "search").join(qdict.lazy().select("query", "qrow", "qcat"), on="query")
    b_srch = b_srch.select(
        "user_id", "ts", tid=base + pl.col("qrow").cast(pl.Int64), category=pl.coalesce("ecat", "qcat"))
    beh = (pl.concat([b_items, b_srch]).join(parents.lazy(), on="category", how="left")
           .sort("user_id", "ts", "tid", "category", nulls_last=True)
           .select("user_id", "ts", pl.col("tid").cast(pl.Int32), "category", "parent",
                   bday=day_expr(pl.col("ts"), start_date)).collect())
    profile = _first_per(t["users"], "user_id").select("user_id", profile=P.profile_expr())
    return _World(beh, pl.concat(tails).to_series(), qinfo, profile, names.len() + 1, cfg, start_date, chunk_size)


def _locate(anchors: list[pl.DataFrame], w: _World) -> list[pl.DataFrame]:
    """Per anchor (all variants in one pass): ``hi`` = bidx of the last behaviour strictly before it (asof, exact
    matches excluded), ``n_history`` behaviours within history_days, ``n_beh`` = min(n_history, L) shown (bidx hi,
    hi-1, …)."""
    right = w.beh.select("user_id", "ts").with_row_index("bidx")
    asof = {"by": "user_id", "check_sortedness": False}  # both sides are sorted by ts within each user
    al = pl.concat([a.select("key", "user_id", "ts", "day", v=pl.lit(i, pl.Int8)) for i, a in enumerate(anchors)])
    hi = al.sort("user_id", "ts").join_asof(right, on="ts", strategy="backward", allow_exact_matches=False, **asof)
    ws = al.select("v", "key", "user_id", ws=_day_start(pl.col("day") - w.cfg.history_days, w.start_date))
    lo = ws.sort("user_id", "ws").join_asof(right, left_on="ws", right_on="ts", strategy="forward", **asof)
    loc = hi.select("v", "key", hi=pl.col("bidx").cast(pl.Int64))
    loc = loc.join(lo.select("v", "key", lo="bidx"), on=["v", "key"])
    n = pl.when(pl.col("hi") >= pl.col("lo")).then(pl.col("hi") - pl.col("lo") + 1).otherwise(0).fill_null(0)
    loc = loc.select("v", "key", "hi", n_history=n.cast(pl.Int32)).with_columns(
        n_beh=pl.min_horizontal("n_history", pl.lit(w.cfg.history_len, pl.Int32)))
    return [a.join(loc.filter(pl.col("v") == i).drop("v"), on="key", how="left").sort("key")
            for i, a in enumerate(anchors)]


def _context(chunk: pl.DataFrame, w: _World) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(key → joined behaviour text ``seq``, long context frame key/idx/category/parent for filter and triggers)."""
    ex = (chunk.filter(pl.col("n_beh") > 0)
          .select("key", "day", "hi", bidx=pl.int_ranges(pl.col("hi"), pl.col("hi") - pl.col("n_beh"), -1))
          .explode("bidx"))
    rows = w.beh.select("tid", "bday", "category", "parent").gather(ex["bidx"])
    ex = pl.concat([ex, rows], how="horizontal").with_columns(idx=(pl.col("hi") - pl.col("bidx") + 1).cast(pl.Int32))
    head = P.behaviour_head_expr(pl.col("idx"), pl.col("day") - pl.col("bday"), w.cfg)
    lines = ex.select("key", line=pl.concat_str([head, w.tails.gather(ex["tid"])]))
    seq = lines.group_by("key", maintain_order=True).agg("line")
    seq = seq.select("key", seq=pl.col("line").list.join(P.BEHAVIOUR_SEP))
    return seq, ex.select("key", "idx", "category", "parent")


# ---------------------------------------------------------------- labels


def _cands(df: pl.DataFrame, prio: int, ord_offset: int = 0) -> pl.DataFrame:
    """Candidate rows (key, query, prio, t, src, sub, ord) from a frame with key, query, t, src, sub."""
    out = df.select("key", "query", "t", "src", "sub", prio=pl.lit(prio, pl.Int8), ord=pl.col("sub") + ord_offset)
    return out.select([pl.col(c).cast(d) for c, d in _CAND.items()]).drop_nulls("query")


def _exposure_cands(e: pl.DataFrame, k: int) -> list[pl.DataFrame]:
    """Clicked shown queries (shown position) and the ranker's top-k (rank position) of keyed exposures."""
    ids = [pl.col("key"), pl.col("ts").alias("t"), pl.col("exposure_id").alias("src")]  # explode only what is needed
    pos = pl.int_ranges(pl.col("query").list.len(), dtype=pl.Int32).alias("sub")
    clicks = e.filter(pl.col("clicked").list.any()).select(*ids, "clicked", query="shown").with_columns(pos)
    clicks = clicks.explode(["query", "clicked", "sub"]).filter(pl.col("clicked"))
    rank = e.select(*ids, query="ranker_topk").with_columns(pos).explode(["query", "sub"]).filter(pl.col("sub") < k)
    return [_cands(clicks, 0, _CLICK_AFTER_RANK), _cands(rank, 3)]


def _rank(c: pl.DataFrame, chronological: bool) -> pl.DataFrame:
    """Order candidates (interest priority, or chronological), de-duplicate keeping the first position and the
    strongest source."""
    if chronological:  # at one instant: searches, then by exposure (its ranker list, then its clicks)
        order = [pl.col("key"), pl.col("t"), ~pl.col("prio").is_in(SEARCH_PRIOS), pl.col("src"), pl.col("ord")]
    else:  # priority order: the first occurrence already has the strongest source
        order = [pl.col("key"), pl.col("prio"), pl.col("t"), pl.col("src"), pl.col("sub")]
    c = c.sort(order, nulls_last=True, maintain_order=True)
    if chronological:
        c = c.with_columns(prio=pl.col("prio").min().over("key", "query"))
    return c.filter(pl.col("query").is_first_distinct().over("key"))


def _pos_in_key() -> pl.Expr:
    """0-based position of a row inside its run of equal ``key`` (rows grouped by key), without a group-by."""
    row = pl.int_range(pl.len())
    first = (pl.col("key") != pl.col("key").shift(1)).fill_null(True)
    return row - pl.when(first).then(row).forward_fill()


def _with_triggers(c: pl.DataFrame, ctx: pl.DataFrame, w: _World) -> pl.DataFrame:
    """Add ``tl`` / ``tp``: the ≤ trigger_max smallest context indices whose category / parent equals the query's
    (null when none), via a composite (key, category) id so only the pairs the labels ask for are grouped. ``ctx``
    rows are in (key, idx) order and a group-by keeps the row order inside each group, so ``head`` = smallest."""
    c = c.join(w.qinfo, on="query", how="left", maintain_order="left")
    for out, col, qcol in (("tl", "category", "qcat"), ("tp", "parent", "qpar")):
        c = c.with_columns(ck=pl.col("key") * w.ncat + pl.col(qcol))
        wanted = ctx.select("idx", ck=pl.col("key") * w.ncat + pl.col(col))
        wanted = wanted.filter(pl.col("ck").is_in(c["ck"].implode()))
        hits = wanted.group_by("ck").agg(pl.col("idx").head(w.cfg.trigger_max).alias(out))
        c = c.join(hits, on="ck", how="left", maintain_order="left")
    return c.drop("ck")


def _labels(c: pl.DataFrame, ctx: pl.DataFrame | None, w: _World, overlap: bool) -> pl.DataFrame:
    """Ranked, de-duplicated candidates → (optional overlap filter) → cap → target / label_sources / triggers
    lists. ``ctx`` None (test split): no cap, empty triggers."""
    empty = pl.lit([], dtype=pl.List(pl.Int32))
    if ctx is None:
        c = c.with_columns(trig=empty)
    else:
        c = _with_triggers(c, ctx, w)
        if overlap:  # a leaf (tl) or parent (tp) match exists exactly when the query overlaps the context
            c = c.filter((pl.col("prio") <= max(SEARCH_PRIOS)) | pl.col("tl").is_not_null()
                         | pl.col("tp").is_not_null())
        c = c.filter(_pos_in_key() < w.cfg.label_cap).with_columns(trig=pl.coalesce("tl", "tp", empty))
    src = pl.col("prio").replace_strict(SOURCES, return_dtype=pl.String)
    return c.group_by("key", maintain_order=True).agg(target="query", triggers="trig", label_sources=src)


# ---------------------------------------------------------------- assembly


def _assemble(a: pl.DataFrame, seq: pl.DataFrame, lab: pl.DataFrame, variant: str, w: _World) -> pl.DataFrame:
    cfg = w.cfg
    df = a.join(seq, on="key", how="left").join(lab, on="key", how="inner").join(w.profile, on="user_id", how="left")
    meta = pl.struct(
        n_behaviours="n_beh", n_history="n_history", cold_start=pl.col("n_history") <= cfg.cold_start_max_behaviours,
        label_sources="label_sources", rerank=pl.lit(cfg.rerank), compress=pl.lit(cfg.compress), anchor_ts="ts")
    profile = pl.col("profile").fill_null(P.format_profile({}))
    out = df.sort("key").select(
        "sample_id", "user_id", "day", pl.lit(variant).alias("variant"),
        prompt=P.prompt_expr(profile, pl.col("seq"), cfg), target="target", triggers="triggers", metadata=meta)
    if cfg.max_prompt_tokens is not None and out.height:  # the prompt budget: keep the most recent behaviours
        prompts, kept = P.fit_prompts(out["prompt"].to_list(), cfg.max_prompt_tokens, w.count or P.approx_tokens)
        shown = [n if k is None else min(n, k) for n, k in
                 zip(out["metadata"].struct.field("n_behaviours").to_list(), kept, strict=True)]
        # trigger indices of behaviours the budget dropped go too (Think's T_k name shown behaviours only)
        triggers = [t if k is None else [[i for i in g if i <= k] for g in t]
                    for t, k in zip(out["triggers"].to_list(), kept, strict=True)]
        out = out.with_columns(
            prompt=pl.Series(prompts, dtype=pl.String), triggers=pl.Series(triggers, dtype=out.schema["triggers"]),
            metadata=pl.col("metadata").struct.with_fields(pl.lit(pl.Series("n_behaviours", shown, dtype=pl.Int32))))
    return out.select([pl.col(c).cast(d) for c, d in OUTPUT_SCHEMA.items()])


def _chunks(anchors: pl.DataFrame, size: int) -> Iterator[pl.DataFrame]:
    for lo in range(0, anchors.height, size):
        yield anchors.slice(lo, size)


def _users_of(df: pl.DataFrame, a: pl.DataFrame) -> pl.DataFrame:
    """Rows of ``df`` whose user_id lies in the (contiguous, anchors are sorted by user) range of chunk ``a``."""
    return df.filter(pl.col("user_id").is_between(a["user_id"].min(), a["user_id"].max()))


def _run(anchors: pl.DataFrame, cands: Callable[[pl.DataFrame], pl.DataFrame], variant: str, w: _World,
         llm_gen: LLMGen | None = None) -> Iterator[pl.DataFrame]:
    """Context, candidates, ranking, filtering and assembly for one located variant, one chunk at a time."""
    for a in _chunks(anchors, w.chunk_size):
        seq, ctx = _context(a, w)
        c = cands(a)
        if llm_gen is not None:
            gen_in = a.join(seq, on="key", how="left").join(w.profile, on="user_id", how="left").select(
                "sample_id", "user_id", "day",
                prompt=P.prompt_expr(pl.col("profile").fill_null(P.format_profile({})), pl.col("seq"), w.cfg))
            gen = llm_gen(gen_in).select("sample_id", query=pl.col("queries").cast(pl.List(pl.String)))
            gen = gen.join(a.select("sample_id", "key"), on="sample_id").with_columns(
                sub=pl.int_ranges(pl.col("query").list.len(), dtype=pl.Int32), t=pl.lit(None, TS), src=pl.lit(0)
            ).explode(["query", "sub"])
            c = pl.concat([c, _cands(gen, 4)])
        if variant in HELD_OUT:
            lab = _labels(_rank(c, chronological=True), None, w, overlap=False)
        else:
            overlap = variant == "think" and w.cfg.think_filter == "overlap"
            lab = _labels(_rank(c, chronological=not w.cfg.rerank), ctx, w, overlap)
        yield _assemble(a, seq, lab, variant, w)


def _keyed(anchors: pl.DataFrame) -> pl.DataFrame:
    """Anchors in (user_id, ts, sample_id) order with key 0..n-1 (chunks then cover contiguous user ranges)."""
    return anchors.sort("user_id", "ts", "sample_id").with_row_index("key").with_columns(pl.col("key").cast(pl.Int64))


def resolve_label_source(cfg: SamplesConfig, exposures: pl.DataFrame) -> SamplesConfig:
    """``label_source=auto`` → ``exposures`` when the world has any HintQ exposure, else ``next_searches``."""
    if cfg.label_source != "auto":
        return cfg
    return cfg.model_copy(update={"label_source": "exposures" if exposures.height else "next_searches"})


def _next_search_direct(events: pl.DataFrame, cuts: pl.DataFrame, start_date: str, last_train: int,
                        cfg: SamplesConfig) -> tuple[pl.DataFrame, Callable[[pl.DataFrame], pl.DataFrame]]:
    """Direct anchors and candidates from next searches (``aigq.data.next_search``): rerank on, searches that led
    to an item click come first ("search_click"), then the others, each in time order; rerank off: time order."""
    s = N.searches_with_success(events)
    a = N.anchors(s, cfg.anchor, start_date, 1, last_train, cuts)
    anchors = _keyed(a.with_columns(sample_id=pl.format("n-{}-{}", pl.col("user_id"), pl.col("ts").dt.epoch("us"))))

    def cands(chunk: pl.DataFrame) -> pl.DataFrame:
        lab = N.horizon_labels(chunk, _users_of(s, chunk), cuts, cfg.label_horizon_days, start_date)
        prio = pl.when(pl.col("success")).then(SEARCH_PRIOS[0]).otherwise(SEARCH_PRIOS[1])
        lab = lab.select("key", "query", "t", src=pl.col("sidx").cast(pl.Int64), sub=pl.lit(0, pl.Int32), prio=prio)
        return pl.concat([_cands(lab.filter(pl.col("prio") == p), p) for p in SEARCH_PRIOS])

    return anchors, cands


def iter_samples(tables: dict[str, pl.DataFrame], start_date: str, days: int, cfg: SamplesConfig,
                 llm_gen: LLMGen | None = None, chunk_size: int = 50_000,
                 count_tokens: P.TokenCounter | None = None) -> Iterator[tuple[str, pl.DataFrame]]:
    """(split, chunk of samples) for Direct, Think and test (see the module docstring for every rule), one chunk of
    ``chunk_size`` anchors at a time. ``llm_gen``: optional batch generator of Think's LLM-Gen candidates, called
    once per chunk (see ``LLMGen``); None = none. ``count_tokens``: how ``samples.max_prompt_tokens`` counts a
    prompt's tokens (the policy's tokenizer, ``models.factory.prompt_token_counter``); None = ``P.approx_tokens``."""
    t = {name: _table(tables, name) for name in TABLES}
    cfg = resolve_label_source(cfg, t["exposures"])
    w = _world(t, cfg, start_date, chunk_size)
    w.count = count_tokens
    last_train = days - cfg.test_days
    last = H.last_queries(t["events"], start_date)  # the last-query split's targets, and the hold-out's cuts
    cuts = H.train_cuts(t["events"], start_date, last_train + 1, cfg.last_query_holdout, last)
    in_train, in_test = pl.col("day").is_between(1, last_train), pl.col("day").is_between(last_train + 1, days)
    exp = t["exposures"].with_columns(day=day_expr(pl.col("ts"), start_date))
    searches = (t["events"].filter((pl.col("type") == "search") & pl.col("query").is_not_null())
                .select("user_id", "ts", "query", day=day_expr(pl.col("ts"), start_date))
                .sort("user_id", "ts", "query").with_row_index("src")
                .with_columns(pl.col("src").cast(pl.Int64), sub=pl.lit(0, pl.Int32), t="ts"))

    # Direct (Eq. 3): train exposures with ≥ 1 clicked shown query; or a search log's next searches.
    if cfg.label_source == "exposures":
        d_exp = H.before_cut(exp.filter(in_train & pl.col("clicked").list.any()), cuts)
        d_anchors = _keyed(d_exp.select("user_id", "ts", "day", "exposure_id",
                                        sample_id=pl.format("d-{}", pl.col("exposure_id"))))

        def d_cands(a: pl.DataFrame) -> pl.DataFrame:
            e = _users_of(d_exp, a).join(a.select("key", "exposure_id"), on="exposure_id")
            clicks, rank = _exposure_cands(e, cfg.rank_top_k)
            return pl.concat([clicks, rank]) if cfg.rerank else rank
    else:
        d_anchors, d_cands = _next_search_direct(t["events"], cuts, start_date, last_train, cfg)

    # Think (Eqs. 2, 4): day-level session from the first search-entry interaction (t_first) of a train day.
    entry = pl.concat([exp.select("user_id", "day", "ts"), searches.select("user_id", "day", "ts")])
    sess = H.before_cut(entry.filter(in_train).group_by("user_id", "day").agg(pl.col("ts").min()), cuts)
    k_anchors = _keyed(sess.with_columns(sample_id=pl.format("t-{}-{}", pl.col("user_id"), pl.col("day"))))

    def k_cands(a: pl.DataFrame) -> pl.DataFrame:
        keys = a.select("key", "user_id", "day", t_first="ts")
        in_session = pl.col("ts") >= pl.col("t_first")
        e = H.before_cut(_users_of(exp, a).join(keys, on=["user_id", "day"]).filter(in_session), cuts)
        s = H.before_cut(_users_of(searches, a).join(keys, on=["user_id", "day"]).filter(in_session), cuts)
        return pl.concat([*_exposure_cands(e, cfg.rank_top_k), _cands(s, 2)])

    # Test: per user-day targets of the last test_days days; context before 00:00 of the day.
    x_exp, x_srch = exp.filter(in_test), searches.filter(in_test)
    x_days = pl.concat([x_exp.filter(pl.col("clicked").list.any()).select("user_id", "day"),
                        x_srch.select("user_id", "day")]).unique()
    x_anchors = _keyed(x_days.with_columns(ts=_day_start(pl.col("day"), start_date),
                                           sample_id=pl.format("x-{}-{}", pl.col("user_id"), pl.col("day"))))

    def x_cands(a: pl.DataFrame) -> pl.DataFrame:
        keys = a.select("key", "user_id", "day")
        clicks, _ = _exposure_cands(_users_of(x_exp, a).join(keys, on=["user_id", "day"]), 0)
        return pl.concat([clicks, _cands(_users_of(x_srch, a).join(keys, on=["user_id", "day"]), 2)])

    # Last query (the last-query protocol): each user's held-out last distinct query, context strictly before it.
    l_anchors = _keyed(last.select("user_id", "ts", "day", sample_id=pl.format("l-{}", pl.col("user_id"))))

    def l_cands(a: pl.DataFrame) -> pl.DataFrame:
        q = a.join(last.select("user_id", "query"), on="user_id")
        return _cands(q.select("key", "query", t="ts", src="key", sub=pl.lit(0, pl.Int32)), 2)

    located = _locate([d_anchors, k_anchors, x_anchors, l_anchors], w)
    w.beh = w.beh.drop("user_id", "ts")  # only needed by _locate
    for split, anchors, cands, gen in (("direct", located[0], d_cands, None), ("think", located[1], k_cands, llm_gen),
                                       ("test", located[2], x_cands, None), ("last_query", located[3], l_cands, None)):
        for part in _run(anchors, cands, split, w, gen):
            yield split, part


def build_samples(tables: dict[str, pl.DataFrame], start_date: str, days: int, cfg: SamplesConfig,
                  llm_gen: LLMGen | None = None, chunk_size: int = 50_000,
                  count_tokens: P.TokenCounter | None = None) -> SampleSet:
    """All samples in memory (tests, small worlds); ``build_samples_to`` streams big ones to disk."""
    parts: dict[str, list[pl.DataFrame]] = {name: [pl.DataFrame(schema=OUTPUT_SCHEMA)] for name in SPLITS}
    for split, part in iter_samples(tables, start_date, days, cfg, llm_gen, chunk_size, count_tokens):
        parts[split].append(part)
    frames = {name: pl.concat(p, rechunk=False) for name, p in parts.items()}
    label_source = resolve_label_source(cfg, _table(tables, "exposures")).label_source
    return SampleSet(**frames, special_tokens=P.special_tokens(cfg), label_source=label_source)


def user_shards(tables: dict[str, pl.DataFrame], shard_users: int) -> Iterator[dict[str, pl.DataFrame]]:
    """The tables cut into ranges of ``shard_users`` users (by user id; catalogue tables whole). Every sample is a
    function of one user's rows and the catalogue, so building shard by shard gives the same samples, in the same
    order, with a shard's working memory instead of the whole log's."""
    ids = _table(tables, "events")["user_id"].unique().sort()
    for lo in range(0, max(ids.len(), 1), shard_users):
        part = ids.slice(lo, shard_users)
        if part.len() == 0:
            yield tables
            return
        rng = pl.col("user_id").is_between(part[0], part[-1])
        yield {name: df.filter(rng) if "user_id" in df.columns else df for name, df in tables.items()}


def build_samples_to(tables: dict[str, pl.DataFrame], start_date: str, days: int, cfg: SamplesConfig,
                     out_dir: Path, llm_gen: LLMGen | None = None, chunk_size: int = 50_000,
                     shard_users: int = 250_000, count_tokens: P.TokenCounter | None = None) -> dict[str, float]:
    """Build and write shard by shard of ``shard_users`` users (:func:`user_shards`) and chunk by chunk
    (``sample_io.SampleWriter``): peak memory is the inputs plus one shard's work. Returns the statistics also
    written to ``meta.json``. The files equal ``write_samples(build_samples(...))``."""
    cfg = recorded_config(tables, cfg)  # meta.json records what was used
    with SampleWriter(out_dir, cfg, P.special_tokens(cfg), OUTPUT_SCHEMA) as writer:
        for shard in user_shards(tables, shard_users):
            for split, part in iter_samples(shard, start_date, days, cfg, llm_gen, chunk_size, count_tokens):
                writer.write(split, part)
        return writer.close()


def write_samples(s: SampleSet, out_dir: Path, cfg: SamplesConfig) -> None:
    """``direct/think/test/last_query.parquet`` (key-value metadata: special tokens, config) and ``meta.json``."""
    cfg = cfg.model_copy(update={"label_source": s.label_source, "ray_shards": 0})
    with SampleWriter(out_dir, cfg, s.special_tokens, OUTPUT_SCHEMA) as writer:
        for name in SPLITS:
            writer.write(name, getattr(s, name))
        writer.close()


# ---------------------------------------------------------------- user shards built apart (``actors.samples`` on Ray)
#
# Every sample is a function of one user's rows and the catalogue; the only state across users is the resolved
# ``label_source`` (``auto`` looks at the whole world's exposures), so it is resolved once (``recorded_config``) and
# handed to every shard. A shard's samples come back as parquet parts (bytes: no filesystem shared with the driver
# is assumed) and ``write_parts`` appends them, shard after shard, to the samples folder: users are cut into
# contiguous id ranges and every split is sorted by user first, so the rows and their order are the single-process
# build's, and the statistics and ``meta.json`` are computed from the combined files as there.


def recorded_config(tables: dict[str, pl.DataFrame], cfg: SamplesConfig) -> SamplesConfig:
    """The samples config a folder records (``meta.json``, parquet metadata): ``label_source`` resolved on the whole
    world, ``ray_shards`` 0 — how many processes built the folder does not change it (``write_parts``)."""
    return resolve_label_source(cfg, _table(tables, "exposures")).model_copy(update={"ray_shards": 0})


def shard_size(tables: dict[str, pl.DataFrame], shards: int) -> int:
    """Users per shard for ``user_shards`` to cut the world into ``shards`` ranges (fewer when it has fewer users)."""
    users = _table(tables, "events")["user_id"].n_unique()
    return max(1, -(-users // max(1, shards)))


def _part_schema():
    return pl.DataFrame(schema=OUTPUT_SCHEMA).to_arrow().schema


def part_bytes(frames: Iterable[pl.DataFrame]) -> bytes:
    """One parquet part in memory: ``frames`` (``OUTPUT_SCHEMA``) as row groups, in order."""
    schema, buf = _part_schema(), io.BytesIO()
    with pq.ParquetWriter(buf, schema) as writer:
        for df in frames:
            if df.height:
                writer.write_table(df.select(list(OUTPUT_SCHEMA)).to_arrow().cast(schema))
    return buf.getvalue()


def part_frames(data: bytes) -> Iterator[pl.DataFrame]:
    """The row groups of a part (:func:`part_bytes`), one frame at a time."""
    f = pq.ParquetFile(io.BytesIO(data))
    for i in range(f.num_row_groups):
        yield pl.from_arrow(f.read_row_group(i))


def read_part(data: bytes) -> pl.DataFrame:
    return pl.concat([pl.DataFrame(schema=OUTPUT_SCHEMA), *part_frames(data)], how="vertical_relaxed")


def build_part(tables: dict[str, pl.DataFrame], start_date: str, days: int, cfg: SamplesConfig,
               llm_gen: LLMGen | None = None, chunk_size: int = 50_000, shard_users: int = 250_000,
               count_tokens: P.TokenCounter | None = None) -> dict[str, bytes]:
    """One user shard's samples, split → parquet part (:func:`part_bytes`), built as ``build_samples_to`` builds
    (sub-shards of ``shard_users`` users, chunks of ``chunk_size`` anchors). ``cfg`` must be the whole world's
    :func:`recorded_config`: a shard alone may lack the exposures that decide ``label_source=auto``."""
    if cfg.label_source == "auto":
        raise ValueError("build_part needs samples.label_source resolved on the whole world (recorded_config)")
    bufs = {name: io.BytesIO() for name in SPLITS}
    schema = _part_schema()
    writers = {name: pq.ParquetWriter(bufs[name], schema) for name in SPLITS}
    try:
        for shard in user_shards(tables, shard_users):
            for split, part in iter_samples(shard, start_date, days, cfg, llm_gen, chunk_size, count_tokens):
                if part.height:
                    writers[split].write_table(part.select(list(OUTPUT_SCHEMA)).to_arrow().cast(schema))
    finally:
        for w in writers.values():
            w.close()
    return {name: buf.getvalue() for name, buf in bufs.items()}


def write_parts(out_dir: Path, cfg: SamplesConfig, parts: Iterable[tuple[str, bytes]]) -> dict[str, float]:
    """The samples folder from parts ``(split, bytes)``, appended in the order given (per split: shard after shard),
    row group by row group; then ``meta.json`` and the statistics, as ``build_samples_to`` writes them. ``cfg``:
    :func:`recorded_config`. Returns the statistics."""
    with SampleWriter(out_dir, cfg, P.special_tokens(cfg), OUTPUT_SCHEMA) as writer:
        for split, data in parts:
            for df in part_frames(data):
                writer.write(split, df)
        return writer.close()
