"""Query → leaf-category mapping for Cate HR@K, Unique Cates and the A/B discovery share.

The paper maps queries to leaf categories with an (unspecified) query classifier ([GAP]). Ours is built only from a
world's **public** tables — never ``world/hidden``:

* ``queries`` (query → leaf category, the vocabulary the logs were written with), and
* ``items`` (item description / title → leaf category), a weaker source used only for the nearest-neighbour step.

``CategoryMapper.map(queries)`` resolves each query in three steps:

1. **exact**: the normalised query (NFKC, lower-case, punctuation → space, whitespace collapsed) equals a known
   query's normalised text → that query's category (when a text is listed under several categories, the first in
   table order wins);
2. **nearest**: else the known text (queries first, then item texts) with the highest character-trigram cosine
   (binary trigram sets of `` text ``, hashed, :func:`trigram_cosine`) — if that cosine is ≥ ``threshold`` →
   its category;
3. else ``None`` (unknown: counts as no category hit and adds nothing to Unique Cates).

A world-v2 world (``world/lexicon.json``, ``aigq.data.lexicon``) replaces step 2 by its public strict parser: text
that is not exactly a known query is a concept's leaf or unknown, never a fuzzy neighbour (``from_world``).

Hand example (tested in ``tests/test_eval_metrics.py``): known ``{"velvet sofa": Sofas, "oak desk": Desks}``,
threshold 0.5: ``"Velvet  Sofa!"`` → Sofas (exact after normalising), ``"velvet sofas"`` → Sofas (trigram
cosine 0.87), ``"garden hose"`` → None.

Results are memoised per mapper, so mapping the same generated queries for many arms costs one lookup each.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from aigq.data.text import normalise  # noqa: F401  (re-exported: the evaluation modules import it from here)

if TYPE_CHECKING:
    from aigq.data.lexicon import Lexicon

BUCKETS = 1 << 20  # trigram hash space (collisions negligible at this size)
MEMO_CAP = 200_000  # memoised fuzzy lookups kept at most (the CTR model maps every scored text)


def trigrams(text: str) -> np.ndarray:
    """Sorted unique hashed character trigrams of `` normalise(text) `` (CRC-32, stable across processes)."""
    t = normalise(text)
    if not t:
        return np.zeros(0, dtype=np.int64)
    padded = f" {t} "
    grams = {padded[i : i + 3] for i in range(max(1, len(padded) - 2))}
    return np.unique(np.fromiter((zlib.crc32(g.encode()) % BUCKETS for g in grams), dtype=np.int64))


def trigram_cosine(a: str, b: str) -> float:
    """|A ∩ B| / sqrt(|A|·|B|) over the two texts' trigram sets; 0 when either is empty."""
    ta, tb = trigrams(a), trigrams(b)
    if len(ta) == 0 or len(tb) == 0:
        return 0.0
    return float(len(np.intersect1d(ta, tb, assume_unique=True)) / np.sqrt(len(ta) * len(tb)))


def _matrix(sets: Sequence[np.ndarray]):
    from scipy import sparse

    lens = np.array([len(s) for s in sets], dtype=np.int64)
    flat = np.concatenate([*sets, np.zeros(0, np.int64)]) if sets else np.zeros(0, np.int64)
    norm = np.repeat(1.0 / np.sqrt(np.maximum(lens, 1)), lens).astype(np.float32)
    return sparse.csr_matrix((norm, flat, np.concatenate([[0], np.cumsum(lens)])), shape=(len(sets), BUCKETS))


def known_texts(queries: pl.DataFrame, items: pl.DataFrame | None = None) -> pl.DataFrame:
    """(text, category) in the mapper's priority order: the ``queries`` table's queries, then ``items``' descriptions
    and titles (when given); the importer's placeholder for "no category" (``schema.UNKNOWN_CATEGORY``) is no
    category and is left out."""
    from aigq.data.schema import UNKNOWN_CATEGORY

    parts = [queries.select(text="query", category="category")]
    if items is not None and items.height:
        parts += [items.select(text=c, category="category") for c in ("description", "title") if c in items.columns]
    return pl.concat(parts).filter(pl.col("category") != UNKNOWN_CATEGORY)


class CategoryMapper:
    """See the module docstring. ``known``: (text, category) pairs in priority order (queries before items)."""

    def __init__(self, known: Iterable[tuple[str, str]], threshold: float = 0.5, lexicon: Lexicon | None = None):
        self.threshold = float(threshold)
        self.lexicon = lexicon  # world v2: the strict parser replaces the fuzzy step
        self._exact: dict[str, str] = {}
        texts: list[str] = []
        cats: list[str] = []
        for text, cat in known:
            key = normalise(text)
            if not key or cat is None:
                continue
            if key not in self._exact:
                self._exact[key] = cat
                texts.append(key)
                cats.append(cat)
        self._texts, self._cats = texts, np.array(cats, dtype=object)
        self._m = _matrix([trigrams(t) for t in texts]) if texts else None
        self._memo: dict[str, str | None] = {}

    @classmethod
    def from_tables(cls, queries: pl.DataFrame, items: pl.DataFrame | None = None,
                    threshold: float = 0.5) -> CategoryMapper:
        """From the public ``queries`` (query, category) and optionally ``items`` (description/title, category)."""
        return cls(known_texts(queries, items).iter_rows(), threshold)

    @classmethod
    def from_world(cls, world: str | Path, threshold: float = 0.5, use_items: bool = True) -> CategoryMapper:
        """Reads ``world/queries`` (and ``world/items``) through the validated reader; never ``world/hidden``."""
        from aigq.data.lexicon import Lexicon
        from aigq.data.validate import read_table, validate_items, validate_queries

        queries = validate_queries(read_table(world, "queries"))[0]
        lexicon = Lexicon.from_world(world)
        if lexicon is not None:  # world v2: exact text, else the public parser; never a fuzzy match
            return cls(known_texts(queries).iter_rows(), threshold, lexicon)
        items = validate_items(read_table(world, "items"))[0] if use_items else None
        return cls.from_tables(queries, items, threshold)

    @property
    def categories(self) -> list[str]:
        return sorted(set(self._cats.tolist()))

    def map(self, queries: Sequence[str | None]) -> list[str | None]:
        """Leaf category per query (``None`` = unknown); see the module docstring for the three steps."""
        keys = [normalise(q) for q in queries]
        todo = [q for q in dict.fromkeys(keys) if q not in self._memo]
        if len(self._memo) + len(todo) > MEMO_CAP:  # a long-lived server maps unbounded request text
            self._memo.clear()
        fuzzy = []
        for q in todo:
            if not q:
                self._memo[q] = None
            elif q in self._exact:
                self._memo[q] = self._exact[q]
            elif self.lexicon is not None:
                hit = self.lexicon.parse(q)
                self._memo[q] = self.lexicon.leaves[hit[0]] if hit is not None else None
            else:
                fuzzy.append(q)
        if fuzzy and self._m is not None:
            sims = (_matrix([trigrams(q) for q in fuzzy]) @ self._m.T).tocsr()
            for i, q in enumerate(fuzzy):
                row = sims.getrow(i)
                if row.nnz == 0:
                    self._memo[q] = None
                    continue
                j = int(row.indices[np.argmax(row.data)])
                self._memo[q] = self._cats[j] if row.data.max() >= self.threshold - 1e-9 else None
        else:
            for q in fuzzy:
                self._memo[q] = None
        return [self._memo[q] for q in keys]

    def map_lists(self, lists: Sequence[Sequence[str]]) -> list[list[str | None]]:
        """``map`` over a list of query lists (one flat lookup)."""
        flat = self.map([q for lst in lists for q in lst])
        out, i = [], 0
        for lst in lists:
            out.append(flat[i : i + len(lst)])
            i += len(lst)
        return out
