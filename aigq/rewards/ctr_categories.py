"""Category side information of the CTR model: text → leaf category and parent, from the world's public catalogue.

DIN (Zhou et al. 2018) feeds every item id together with its category id: a user who clicked three sofas is likely
to click a fourth sofa query even when the words differ. A text-only model has to learn that from sparse clicks;
here the query and each behaviour are resolved to a **leaf category** and its **parent** with the evaluation's
:class:`~aigq.data.categories.CategoryMapper` over the public ``queries`` (query → leaf) and ``items``
(description / title → leaf, ``category_path`` "Parent > Leaf" → parent) tables — never ``world/hidden`` — and the
model gets two fixed per-behaviour features: same leaf as the query, and same parent but another leaf
(``ctr.Featurizer``). Unknown text (mapper below its threshold) matches nothing.

The lookup travels with the model (``categories.parquet``: text, category; ``category_parents.parquet``), so a model
folder scores anywhere — Serve, reward actors, the A/B — without the world's tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from aigq.data.categories import CategoryMapper, known_texts

TEXTS_FILE, PARENTS_FILE = "categories.parquet", "category_parents.parquet"


class CategoryIndex:
    """``ids(texts)`` → (leaf id, parent id) arrays, −1 = unknown. ``known``: (text, category) in priority order."""

    def __init__(self, known: pl.DataFrame, parents: pl.DataFrame, threshold: float):
        self.known, self.parents = known.select("text", "category"), parents
        self.mapper = CategoryMapper(self.known.iter_rows(), threshold)
        leaves = sorted(set(self.known["category"].drop_nulls().to_list()))
        self._leaf = {c: i for i, c in enumerate(leaves)}
        par = dict(parents.select("category", "parent").iter_rows())
        names = sorted({p for p in par.values() if p})
        pid = {p: i for i, p in enumerate(names)}
        self._parent = np.array([pid.get(par.get(c), -1) for c in leaves] + [-1], dtype=np.int64)

    @classmethod
    def from_tables(cls, tables: dict[str, pl.DataFrame], threshold: float) -> CategoryIndex:
        """From the world's public ``queries`` and ``items`` tables (queries first: their labels are exact)."""
        items = tables.get("items")
        known = known_texts(tables["queries"], items).drop_nulls()
        parents = pl.DataFrame(schema={"category": pl.String, "parent": pl.String})
        if items is not None and "category_path" in items.columns:
            parents = items.select(
                "category", parent=pl.col("category_path").str.split(">").list.reverse().list.get(1, null_on_oob=True)
                .str.strip_chars()).drop_nulls().unique("category", keep="first", maintain_order=True)
        return cls(known, parents, threshold)

    def save(self, folder: str | Path) -> None:
        self.known.write_parquet(Path(folder) / TEXTS_FILE)
        self.parents.write_parquet(Path(folder) / PARENTS_FILE)

    @classmethod
    def load(cls, folder: str | Path, threshold: float) -> CategoryIndex:
        folder = Path(folder)
        if not (folder / TEXTS_FILE).is_file():
            raise FileNotFoundError(f"{folder} has no {TEXTS_FILE}: a CTR model with category features needs it")
        return cls(pl.read_parquet(folder / TEXTS_FILE), pl.read_parquet(folder / PARENTS_FILE), threshold)

    def ids(self, texts: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        cats = self.mapper.map([t if isinstance(t, str) else None for t in texts])
        leaf = np.array([self._leaf.get(c, -1) if c is not None else -1 for c in cats], dtype=np.int64)
        return leaf, self._parent[leaf]  # leaf −1 → the sentinel −1 at the end of _parent


def match_features(q_leaf: np.ndarray, q_parent: np.ndarray, h_leaf: np.ndarray, h_parent: np.ndarray,
                   ctx: np.ndarray) -> np.ndarray:
    """(N, L, 2) float: behaviour i of query n's context has the query's leaf / the query's parent but another leaf.
    Unknown (−1) never matches. Hand example in ``tests/test_ctr.py``."""
    hl, hp = h_leaf[ctx], h_parent[ctx]  # (N, L)
    same = (hl == q_leaf[:, None]) & (q_leaf[:, None] >= 0)
    sibling = (hp == q_parent[:, None]) & (q_parent[:, None] >= 0) & ~same
    return np.stack([same, sibling], -1).astype(np.float32)
