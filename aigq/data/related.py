"""Retrieval-augmented prompts (issue 18 step 4, ``samples.related_queries``): the top-K co-click / next-query
candidates of a prompt's context, shown to the policy as a ``Related Queries: { … }`` line (``prompt.with_related``)
— the side information GQR and OneSug feed their generators, so the policy starts from what co-click knows.

The evidence is the co-click baseline's (``aigq/evaluation/baselines.py``), counted per day so that no prompt sees
its own future:

* *sessions*: each train-day Think sample (a day-level session; its context = the behaviours before it) whose
  ``samples.related_history`` most recent behaviours hold key ``b`` adds 1 to c(b) and, for each distinct searched /
  clicked-hint label query ``q``, 1 to c(b, q). Its evidence reaches to its day + ``label_horizon_days`` (labels
  may come from the next day): that is the day it counts as *known* on.
* *transitions*: each query → next different query step of a user's searches (same or next day, strictly before
  the user's train cut: never a test day or a held-out last query) adds 1 to c(q) and to c(q, q'); known on the
  day of q'.

A sample of day d sees the counts known on days < d (its own day's are never shown to it): P(q | b) = c(b, q) / c(b), and a query's score is
Σ_i decay^(i-1) · P(q | b_i) over the prompt's behaviours b_1 (most recent) … b_H; the K best (ties by text) are
shown as their most frequent spelling. Test samples (and serving, ``RelatedIndex``) see every train day's counts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from aigq.config import SamplesConfig
from aigq.data import prompt as P
from aigq.data.holdout import before_cut, searches, train_cuts
from aigq.data.schema import day_expr
from aigq.data.text import normalise

LABEL_SOURCES = ("search", "click")  # label queries that were searched or clicked (not the ranker's top-K)
RELATED_FILE = "related.parquet"  # the all-train-days table serving reads: key, qn, p, query (best spelling)
PER_KEY = 50  # candidates kept per behaviour key in the serving table ([GAP], ours = the co-click baseline's)


def behaviour_keys(prompt: str, n: int) -> list[str]:
    """The normalised contents of the prompt's ``n`` most recent behaviours (index 1 first)."""
    behs = P.parse_behaviours(prompt)
    return [normalise(behs[i][2]) for i in sorted(behs)[:n]]


def normalised(df: pl.DataFrame, col: str, out: str = "qn") -> pl.DataFrame:
    """``df`` with ``out`` = normalise(``col``), computed once per distinct text."""
    texts = df.select(pl.col(col).unique().drop_nulls())
    texts = texts.with_columns(pl.col(col).map_elements(normalise, return_dtype=pl.String).alias(out))
    return df.join(texts, on=col, how="left")


def search_transitions(events: pl.DataFrame, start_date: str, cuts: pl.DataFrame,
                       max_gap_days: int = 1) -> pl.DataFrame:
    """Each user's query → next different query steps among their searches strictly before their cut (``cuts``:
    ``holdout.train_cuts``): user_id, ts (of q), next_ts (of q'), key (normalised q), qn (normalised q'), query
    (q' as searched). Consecutive searches of one (normalised) query are one; a step counts when q' came on q's day
    or at most ``max_gap_days`` days later."""
    s = before_cut(searches(events), cuts).sort("user_id", "ts", "query")
    s = normalised(s, "query").filter(pl.col("qn").str.len_chars() > 0)
    # plain shifts over the user-sorted frame, guarded by the user id (per-user windows are slow on many users)
    same_prev = (pl.col("user_id") == pl.col("user_id").shift(1)).fill_null(False)
    s = s.filter(~(same_prev & (pl.col("qn") == pl.col("qn").shift(1))))
    same_next = pl.col("user_id") == pl.col("user_id").shift(-1)
    nxt = {c: pl.when(same_next).then(pl.col(c).shift(-1)) for c in ("qn", "query", "ts")}
    s = s.with_columns(next_qn=nxt["qn"], next_query=nxt["query"], next_ts=nxt["ts"])
    gap = day_expr(pl.col("next_ts"), start_date) - day_expr(pl.col("ts"), start_date)
    s = s.filter(pl.col("next_qn").is_not_null() & (gap <= max_gap_days))
    return s.select("user_id", "ts", "next_ts", key="qn", qn="next_qn", query="next_query")


def _keys_frame(rows: pl.DataFrame, history: int) -> pl.DataFrame:
    """(row, key, rank) for each row's distinct behaviour keys (rank 0 = most recent)."""
    keys = [list(dict.fromkeys(k for k in behaviour_keys(p, history) if k)) for p in rows["prompt"].to_list()]
    f = pl.DataFrame({"row": rows["row"], "key": keys}, schema={"row": pl.Int64, "key": pl.List(pl.String)})
    return f.explode("key").drop_nulls("key").with_columns(rank=pl.int_range(pl.len()).over("row"))


@dataclass
class Evidence:
    """Co-click counts by the day they became known: c(b) in ``n_b`` (key, known, n) and c(b, q) in ``n_bq``
    (key, qn, known, n); ``texts``: normalised query → its most frequent spelling."""

    n_b: pl.DataFrame
    n_bq: pl.DataFrame
    texts: pl.DataFrame  # qn, query


def evidence(think: pl.DataFrame, transitions: pl.DataFrame, start_date: str, cfg: SamplesConfig) -> Evidence:
    """The counts of the module docstring from the train-day Think samples and ``transitions``
    (:func:`search_transitions`: user_id, ts, next_ts, key, qn, query)."""
    sess = think.select("prompt", "target", known=(pl.col("day") + cfg.label_horizon_days).cast(pl.Int64),
                        src=pl.col("metadata").struct.field("label_sources"))
    sess = sess.with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
    keys = _keys_frame(sess, cfg.related_history).join(sess.select("row", "known"), on="row")
    labels = (sess.select("row", "target", "src").explode("target", "src")
              .filter(pl.col("src").is_in(LABEL_SOURCES) & pl.col("target").is_not_null()))
    labels = normalised(labels, "target").filter(pl.col("qn").str.len_chars() > 0)
    pairs = keys.join(labels.select("row", "qn").unique(), on="row")
    tr = transitions.select("key", "qn", "query", known=day_expr(pl.col("next_ts"), start_date).cast(pl.Int64))
    n_b = pl.concat([keys.select("key", "known"), tr.select("key", "known")]).group_by("key", "known").len("n")
    n_bq = pl.concat([pairs.select("key", "qn", "known"), tr.select("key", "qn", "known")]).group_by(
        "key", "qn", "known").len("n")
    said = pl.concat([labels.select("qn", query=pl.col("target")), tr.select("qn", "query")])
    texts = (said.group_by("qn", "query").len().sort(["len", "query"], descending=[True, False])
             .unique("qn", keep="first", maintain_order=True).select("qn", "query"))
    return Evidence(n_b, n_bq, texts)


def related_for(rows: pl.DataFrame, ev: Evidence, cfg: SamplesConfig, cap_day: int | None = None) -> list[list[str]]:
    """For each row (``prompt``, ``day``) its ``cfg.related_queries`` related queries from the evidence known on days
    before the row's day (and before ``cap_day`` when given: the first test day)."""
    rows = rows.select("prompt", "day").with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
    keys = _keys_frame(rows, cfg.related_history).join(rows.select("row", "day"), on="row")
    limit = pl.col("day") if cap_day is None else pl.min_horizontal(pl.col("day"), pl.lit(cap_day))
    keys = keys.with_columns(limit=limit.cast(pl.Int64)).drop("day")
    n_b = (keys.join(ev.n_b, on="key").filter(pl.col("known") < pl.col("limit"))
           .group_by("row", "key").agg(n_b=pl.col("n").sum()))
    n_bq = (keys.join(ev.n_bq, on="key").filter(pl.col("known") < pl.col("limit"))
            .group_by("row", "key", "rank", "qn").agg(n_bq=pl.col("n").sum()))
    # summed in (row, qn, rank) order: the same floats whatever order the joins and group-bys left the rows in
    score = (n_bq.join(n_b, on=["row", "key"])
             .with_columns(s=(pl.col("n_bq") / pl.col("n_b")) * pl.lit(cfg.related_decay).pow(pl.col("rank")))
             .sort("row", "qn", "rank").group_by("row", "qn", maintain_order=True).agg(pl.col("s").sum()))
    top = (score.sort(["row", "s", "qn"], descending=[False, True, False]).group_by("row", maintain_order=True)
           .head(cfg.related_queries).join(ev.texts, on="qn", how="left", maintain_order="left")
           .with_columns(pl.coalesce("query", "qn").alias("query")))
    got = top.group_by("row", maintain_order=True).agg("query")
    out: list[list[str]] = [[] for _ in range(rows.height)]
    for r, qs in got.iter_rows():
        out[r] = qs
    return out


def serving_table(ev: Evidence, cap_day: int) -> pl.DataFrame:
    """The table of every count known before ``cap_day`` (the first test day): key, qn, p = P(q | b), query;
    the ``PER_KEY`` most likely per key (what :class:`RelatedIndex` reads)."""
    n_b = ev.n_b.filter(pl.col("known") < cap_day).group_by("key").agg(n_b=pl.col("n").sum())
    n_bq = ev.n_bq.filter(pl.col("known") < cap_day).group_by("key", "qn").agg(n_bq=pl.col("n").sum())
    return (n_bq.join(n_b, on="key").select("key", "qn", p=pl.col("n_bq") / pl.col("n_b"))
            .sort(["key", "p", "qn"], descending=[False, True, False]).group_by("key", maintain_order=True)
            .head(PER_KEY).join(ev.texts, on="qn", how="left", maintain_order="left")
            .with_columns(pl.coalesce("query", "qn").alias("query")))


@dataclass
class RelatedIndex:
    """Serving's related queries (Direct cache, Think index): the samples' all-train-days table, scored for a prompt
    exactly as ``related_for`` scores a test sample."""

    table: dict[str, list[tuple[str, float]]]
    texts: dict[str, str]
    cfg: SamplesConfig

    @classmethod
    def load(cls, samples_dir: Path, cfg: SamplesConfig) -> RelatedIndex:
        path = Path(samples_dir) / RELATED_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: samples.related_queries = {cfg.related_queries} needs "
                                    "`aigq build-samples` run with it")
        df = pl.read_parquet(path)
        table: dict[str, list[tuple[str, float]]] = defaultdict(list)
        for key, qn, p in df.select("key", "qn", "p").iter_rows():
            table[key].append((qn, float(p)))
        return cls(dict(table), dict(df.select("qn", "query").unique("qn").iter_rows()), cfg)

    def __call__(self, prompt: str) -> Sequence[str]:
        acc: dict[str, float] = defaultdict(float)
        keys = list(dict.fromkeys(k for k in behaviour_keys(prompt, self.cfg.related_history) if k))
        for i, key in enumerate(keys):
            for q, p in self.table.get(key, ()):
                acc[q] += self.cfg.related_decay**i * p
        best = sorted(acc.items(), key=lambda kv: (-kv[1], kv[0]))[: self.cfg.related_queries]
        return [self.texts.get(q, q) for q, _ in best]


def related_index(cfg: SamplesConfig, samples_dir: Path) -> RelatedIndex | None:
    """Serving's related-queries source: the samples folder's index when ``cfg.related_queries`` > 0, else None."""
    return RelatedIndex.load(samples_dir, cfg) if cfg.related_queries else None


# ---------------------------------------------------------------- the samples' post-pass (aigq build-samples)

SPLITS = ("direct", "think", "test", "last_query")
HELD_OUT = ("test", "last_query")  # evaluated splits: their related queries are scored against the targets


def related_evidence(think: pl.DataFrame, events: pl.DataFrame, start_date: str, days: int,
                     cfg: SamplesConfig) -> Evidence:
    """The evidence of every prompt (state across all users): the train-day Think samples (``think``: the whole
    build's, before their related lines) and the search transitions of ``events`` before each user's cut."""
    first_test = days - cfg.test_days + 1
    cuts = train_cuts(events, start_date, first_test_day=first_test, holdout=cfg.last_query_holdout)
    return evidence(think.filter(pl.col("day") < first_test), search_transitions(events, start_date, cuts),
                    start_date, cfg)


def augment_frame(df: pl.DataFrame, split: str, ev: Evidence, cfg: SamplesConfig, first_test: int,
                  count: P.TokenCounter | None = None) -> tuple[pl.DataFrame, dict[str, int]]:
    """``df`` (samples of ``split``) with each prompt's related-queries line, refit to ``cfg.max_prompt_tokens``;
    and its counts (``rows``, ``covered``: prompts with a related query, ``hit``: held-out rows whose related
    queries hold one of the targets) for :func:`related_stats`. Row by row: any cut of the rows gives the same."""
    if not df.height:
        return df, {"rows": 0, "covered": 0, "hit": 0}
    rel = related_for(df, ev, cfg, cap_day=first_test)
    prompts = [P.with_related(p, r) for p, r in zip(df["prompt"].to_list(), rel, strict=True)]
    if cfg.max_prompt_tokens is not None:
        prompts = P.fit_prompts(prompts, cfg.max_prompt_tokens, count or P.approx_tokens)[0]
    hit = 0
    if split in HELD_OUT:
        hit = sum(bool({normalise(q) for q in r} & {normalise(t) for t in ts or []})
                  for r, ts in zip(rel, df["target"].to_list(), strict=True))
    counts = {"rows": len(rel), "covered": sum(bool(r) for r in rel), "hit": hit}
    return df.with_columns(prompt=pl.Series(prompts, dtype=pl.String)), counts


def related_stats(counts: dict[str, dict[str, int]]) -> dict[str, float]:
    """Per split with rows (:func:`augment_frame`'s counts, summed over any cut of its rows): the share of prompts
    with at least one related query, and for the held-out splits the share whose related queries hold one of the
    sample's targets (what co-click alone would have got right)."""
    stats: dict[str, float] = {}
    for split in SPLITS:
        c = counts.get(split)
        if not c or not c["rows"]:
            continue
        stats[f"related.{split}.coverage"] = c["covered"] / c["rows"]
        if split in HELD_OUT:
            stats[f"related.{split}.target_hit"] = c["hit"] / c["rows"]
    return stats


def _rewrite(df: pl.DataFrame, path: Path) -> None:
    """``df`` over the parquet file ``path``, with the file's schema and key-value metadata (special tokens, samples
    config: ``sample_io.SampleWriter``)."""
    schema = pq.read_schema(path)
    pq.write_table(df.select(schema.names).to_arrow().cast(schema), path)


def augment_samples(out: Path, tables: dict[str, pl.DataFrame], start_date: str, days: int, cfg: SamplesConfig,
                    count: P.TokenCounter | None = None) -> dict[str, float]:
    """Give every sample file in ``out`` its related-queries line (``cfg.related_queries`` > 0), refit to
    ``cfg.max_prompt_tokens``, and write :data:`RELATED_FILE` for serving. Returns :func:`related_stats`.
    ``actors.samples`` does the same over user shards: the evidence once, :func:`augment_frame` per shard."""
    first_test = days - cfg.test_days + 1
    ev = related_evidence(pl.read_parquet(out / "think.parquet"), tables["events"], start_date, days, cfg)
    counts: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        path = out / f"{split}.parquet"
        if not path.is_file():
            continue
        df = pl.read_parquet(path)
        if not df.height:
            continue
        df, counts[split] = augment_frame(df, split, ev, cfg, first_test, count)
        _rewrite(df, path)
    serving_table(ev, first_test).write_parquet(out / RELATED_FILE)
    return related_stats(counts)
