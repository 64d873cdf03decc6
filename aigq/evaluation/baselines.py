"""Non-generative baselines of Table 1: popularity and co-click (the paper's "traditional" behaviour → query
co-occurrence). EBR (the two-tower model) is in ``ebr.py``. All learn from **train days only**.

Training pairs (:func:`train_pairs`): the AIGQ-Think samples of the train days (``samples/think.parquet``, one per
day-level session; its prompt = profile + behaviours strictly before the session) with the label queries whose
source is a *search* or a *clicked hint* — the same kind of truth as the test targets (searched / clicked that day);
the ranker's top-K labels are dropped. Every pair: (user, day, context prompt, query).

* **popularity**: the queries most often searched / clicked over the last ``eval.popularity_days`` train days,
  the same list for everyone.
* **co-click**: P(q | b) = c(b, q) / c(b) over two kinds of evidence counted into one table:

  - *sessions*: each training session whose context has behaviour ``b`` (a searched query or a clicked item's
    description, normalised) among its ``eval.coclick_history`` most recent behaviours adds 1 to c(b) and, for
    every query ``q`` of its label, 1 to c(b, q) — behaviour → the next day-session's searches;
  - *query → next-query transitions* (:func:`search_transitions`): from the world's search events, each time a user
    searched ``q`` and their next *different* query ``q'`` came the same day or the next day, 1 is added to c(q)
    and to c(q, q') (behaviour key = the normalised query). These are the within-session steps that the session
    pairs never see and that the last-query protocol asks for (the previous query → the held-out one). Only
    searches strictly before the user's train cut count (``aigq.data.holdout.train_cuts``: 00:00 of the first
    test day, and with ``samples.last_query_holdout`` the user's held-out last query), so neither protocol's
    targets are ever learnt.

  A user's score for q is Σ_i decay^(i-1) · P(q | b_i) over their own most recent behaviours b_1 (most recent) …
  b_H — so their latest searched query votes for its transitions; ranked by score, the rest of the K slots are
  filled by popularity.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from aigq.config import AIGQConfig
from aigq.data.holdout import train_cuts
from aigq.data.related import behaviour_keys, search_transitions
from aigq.data.related import normalised as _normalised

TRUE_SOURCES = ("search", "click")


def read_split(samples_dir: Path, name: str) -> pl.DataFrame:
    path = Path(samples_dir) / f"{name}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `aigq build-samples` first")
    return pl.read_parquet(path)


def train_pairs(samples_dir: Path) -> pl.DataFrame:
    """(user_id, day, prompt, query) from train-day Think samples, search / clicked-hint labels only."""
    think = read_split(samples_dir, "think")
    return (think.select("user_id", "day", "prompt", "target",
                         src=pl.col("metadata").struct.field("label_sources"))
            .explode("target", "src").filter(pl.col("src").is_in(TRUE_SOURCES) & pl.col("target").is_not_null())
            .select("user_id", "day", "prompt", query=pl.col("target")))


@dataclass
class Popularity:
    ranked: list[str]

    def recommend(self, prompts: Sequence[str], k: int) -> list[list[str]]:
        return [self.ranked[:k] for _ in prompts]


def popular_queries(pairs: pl.DataFrame, days: int, n: int = 500) -> list[str]:
    if pairs.height == 0:
        return []
    last = int(pairs["day"].max())
    recent = pairs.filter(pl.col("day") > last - days)
    counts = recent.group_by("query").len().sort(["len", "query"], descending=[True, False])
    return counts["query"].head(n).to_list()


def fit_popularity(cfg: AIGQConfig, samples_dir: Path | None = None) -> Popularity:
    return Popularity(popular_queries(train_pairs(samples_dir or cfg.samples_dir()), cfg.eval.popularity_days))


@dataclass
class CoClick:
    table: dict[str, list[tuple[str, float]]]  # behaviour key → [(query, P(q | b))], best first
    popular: list[str]
    history: int
    decay: float
    texts: dict[str, str] = field(default_factory=dict)  # normalised query → its most frequent original text

    def scores(self, prompt: str) -> dict[str, float]:
        acc: dict[str, float] = defaultdict(float)
        for i, key in enumerate(behaviour_keys(prompt, self.history)):
            w = self.decay**i
            for q, p in self.table.get(key, ()):
                acc[q] += w * p
        return acc

    def recommend(self, prompts: Sequence[str], k: int) -> list[list[str]]:
        out = []
        for prompt in prompts:
            s = self.scores(prompt)
            ranked = [self.texts.get(q, q) for q, _ in sorted(s.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]
            out.append(ranked + [q for q in self.popular[: 2 * k] if q not in set(ranked)][: k - len(ranked)])
        return out


def world_transitions(cfg: AIGQConfig) -> pl.DataFrame:
    """:func:`search_transitions` of ``cfg``'s world, before each user's train cut (day split + last-query
    holdout, ``samples.last_query_holdout``)."""
    from aigq.data.validate import validate_world

    world = validate_world(cfg.world_dir(), write_quarantine=False)
    events, start, days = world.tables["events"], str(world.meta["start_date"]), int(world.meta["days"])
    cuts = train_cuts(events, start, first_test_day=days - cfg.samples.test_days + 1,
                      holdout=cfg.samples.last_query_holdout)
    return search_transitions(events, start, cuts)


def coclick_counts(session_keys: Sequence[Sequence[str]], session_queries: Sequence[Sequence[str]],
                   transitions: pl.DataFrame | None = None) -> pl.DataFrame:
    """(key, qn, n_bq, n_b): the co-click counts of the module docstring — c(b, q) and c(b) — from sessions (the
    normalised behaviour keys of each session's context and its label queries) plus ``transitions`` (key, qn)."""
    ctx = pl.DataFrame({"sid": list(range(len(session_keys))),
                        "key": [list(dict.fromkeys(k)) for k in session_keys],
                        "query": [list(q) for q in session_queries]},
                       schema={"sid": pl.Int64, "key": pl.List(pl.String), "query": pl.List(pl.String)})
    keyed = ctx.explode("key").drop_nulls("key")
    n_b = [keyed.group_by("key").len()]
    pairs = [_normalised(keyed.explode("query").drop_nulls("query"), "query").select("key", "qn")]
    if transitions is not None and transitions.height:
        n_b.append(transitions.group_by("key").len())
        pairs.append(transitions.select("key", "qn"))
    n_b_all = pl.concat(n_b).group_by("key").agg(n_b=pl.col("len").sum())
    return (pl.concat(pairs).group_by("key", "qn").agg(n_bq=pl.len()).join(n_b_all, on="key")
            .sort("key", "qn"))


def fit_coclick(cfg: AIGQConfig, samples_dir: Path | None = None, per_key: int = 50,
                transitions: bool | pl.DataFrame = True) -> CoClick:
    """Count behaviour → query co-occurrence over the training pairs and, with ``transitions`` (True: the world's,
    :func:`world_transitions`; or a frame of them; False: none), query → next-query steps (module docstring)."""
    e = cfg.eval
    pairs = train_pairs(samples_dir or cfg.samples_dir())
    sessions = pairs.group_by("user_id", "day", "prompt", maintain_order=True).agg(pl.col("query").unique())
    keys = [behaviour_keys(p, e.coclick_history) for p in sessions["prompt"].to_list()]
    tr = world_transitions(cfg) if transitions is True else transitions if isinstance(transitions, pl.DataFrame) \
        else None
    co = (coclick_counts(keys, sessions["query"].to_list(), tr)
          .with_columns(p=pl.col("n_bq") / pl.col("n_b"))
          .sort(["key", "p", "qn"], descending=[False, True, False])
          .group_by("key", maintain_order=True).head(per_key))
    table: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for key, qn, p in co.select("key", "qn", "p").iter_rows():
        table[key].append((qn, float(p)))
    said = [pairs.select("query")] + ([tr.select("query")] if tr is not None and tr.height else [])
    texts = dict(_normalised(pl.concat(said), "query").group_by("qn", "query").len()
                 .sort(["len", "query"], descending=[True, False]).unique("qn", keep="first", maintain_order=True)
                 .select("qn", "query").iter_rows())
    return CoClick(dict(table), popular_queries(pairs, e.popularity_days), e.coclick_history, e.coclick_decay, texts)
