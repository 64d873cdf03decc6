"""Non-generative baselines of Table 1: popularity and co-click (the paper's "traditional" behaviour → query
co-occurrence). EBR (the two-tower model) is in ``ebr.py``. All learn from **train days only**.

Training pairs (:func:`train_pairs`): the AIGQ-Think samples of the train days (``samples/think.parquet``, one per
day-level session; its prompt = profile + behaviours strictly before the session) with the label queries whose
source is a *search* or a *clicked hint* — the same kind of truth as the test targets (searched / clicked that day);
the ranker's top-K labels are dropped. Every pair: (user, day, context prompt, query).

* **popularity**: the queries most often searched / clicked over the last ``eval.popularity_days`` train days,
  the same list for everyone.
* **co-click**: P(q | b) = c(b, q) / c(b), where c(b, q) counts training sessions whose context has behaviour ``b``
  (a searched query or a clicked item's description, normalised) among its ``eval.coclick_history`` most recent
  behaviours and whose label has query ``q``. A user's score for q is Σ_i decay^(i-1) · P(q | b_i) over their own
  most recent behaviours b_1 (most recent) … b_H; ranked by score, the rest of the K slots are filled by popularity.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from aigq.config import AIGQConfig
from aigq.data import prompt as P
from aigq.evaluation.categories import normalise

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


def behaviour_keys(prompt: str, n: int) -> list[str]:
    """The normalised contents of the prompt's ``n`` most recent behaviours (index 1 first)."""
    behs = P.parse_behaviours(prompt)
    return [normalise(behs[i][2]) for i in sorted(behs)[:n]]


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


def fit_coclick(cfg: AIGQConfig, samples_dir: Path | None = None, per_key: int = 50) -> CoClick:
    """Count behaviour → query co-occurrence over the training pairs (see the module docstring)."""
    e = cfg.eval
    pairs = train_pairs(samples_dir or cfg.samples_dir())
    sessions = pairs.group_by("user_id", "day", "prompt", maintain_order=True).agg(pl.col("query").unique())
    keys = [list(dict.fromkeys(behaviour_keys(p, e.coclick_history))) for p in sessions["prompt"].to_list()]
    ctx = sessions.select(pl.int_range(pl.len()).alias("sid"), "query").with_columns(
        key=pl.Series(keys, dtype=pl.List(pl.String)))
    n_b = ctx.explode("key").drop_nulls("key").group_by("key").len().rename({"len": "n_b"})
    co = (ctx.explode("key").drop_nulls("key").explode("query").drop_nulls("query")
          .with_columns(qn=pl.col("query").map_elements(normalise, return_dtype=pl.String))
          .group_by("key", "qn").len().join(n_b, on="key")
          .with_columns(p=pl.col("len") / pl.col("n_b"))
          .sort(["key", "p", "qn"], descending=[False, True, False])
          .group_by("key", maintain_order=True).head(per_key))
    table: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for key, qn, p in co.select("key", "qn", "p").iter_rows():
        table[key].append((qn, float(p)))
    texts = dict(pairs.with_columns(qn=pl.col("query").map_elements(normalise, return_dtype=pl.String))
                 .group_by("qn", "query").len().sort("len", descending=True).unique("qn", keep="first")
                 .select("qn", "query").iter_rows())
    return CoClick(dict(table), popular_queries(pairs, e.popularity_days), e.coclick_history, e.coclick_decay, texts)
