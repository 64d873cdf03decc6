"""Query vocabulary and category tree of a simulated world.

Query text comes from a real vocabulary when given — the shipped WANDS queries (MIT, Wayfair) by default, or any
``query<TAB>category`` file — plus template queries per leaf category; with ``"templates"`` every query is a
template over a small built-in category tree. The leaf → parent tree of a real vocabulary is read off the category
name: its last word ("Coffee & Cocktail Tables" → "Tables"), which groups WANDS' 190 product classes into related
families for the simulator's serendipity and the samples' parent-category fallback.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

MODIFIERS = [
    "modern",
    "small",
    "large",
    "white",
    "black",
    "grey",
    "blue",
    "green",
    "wooden",
    "metal",
    "outdoor",
    "vintage",
    "cheap",
    "round",
    "oak",
    "velvet",
    "rustic",
    "kids",
    "leather",
    "gold",
    "mid century",
    "farmhouse",
    "boho",
    "industrial",
    "glass",
    "set of 2",
    "navy",
    "pink",
    "linen",
    "minimalist",
]
BRANDS = [
    "Loxley",
    "Andover",
    "Birch Lane",
    "Mercury Row",
    "Zipcode",
    "Latitude",
    "Ebern",
    "Highland",
    "Red Barrel",
    "Wrought",
    "Lark Manor",
    "Foundstone",
    "Orren Ellis",
    "Greyleigh",
    "Sand & Stable",
    "Corrigan",
    "Three Posts",
    "Winston Porter",
    "Hashtag Home",
    "Etta Avenue",
]
# Used when vocabulary == "templates": parent → leaves.
BUILTIN_TREE = {
    "Clothing": ["Down Jackets", "Knit Hats", "Dresses", "Sneakers", "Martin Boots", "Polo Shirts"],
    "Home": ["Sachets", "Scented Candles", "Throw Pillows", "Bath Towels", "Table Lamps"],
    "Electronics": ["Phone Cases", "Earbuds", "Chargers", "Smart Watches", "Keyboards"],
    "Food": ["Green Tea", "Mooncakes", "Instant Noodles", "Coffee Beans", "Dried Fruit"],
    "Beauty": ["Lipsticks", "Face Masks", "Sunscreen", "Hair Dryers"],
    "Sports": ["Yoga Mats", "Running Shoes", "Dumbbells", "Camping Tents"],
}

_SPACES = re.compile(r"\s+")


def normalise_query(text: str) -> str:
    """Lowercase, strip, collapse whitespace: the one normal form every query string takes."""
    return _SPACES.sub(" ", text.strip().lower())


def parent_of(category: str) -> str:
    """The category's family: its last word ("Coffee & Cocktail Tables" → "Tables")."""
    words = re.findall(r"[\w'é]+", category)
    return words[-1].title() if words else category


@dataclass(frozen=True)
class Vocabulary:
    categories: list[str]  # leaf categories, index = category id
    parents: list[str]  # parent family per category
    queries: list[str]  # grouped by category: q_cat is non-decreasing
    q_cat: np.ndarray  # category id per query
    q_real: np.ndarray  # bool: from the real vocabulary (not a template)

    @property
    def n_categories(self) -> int:
        return len(self.categories)

    def nouns(self) -> list[str]:
        return [c.lower().replace("&", "and") for c in self.categories]


def _read_pairs(path: Path) -> list[tuple[str, str]]:
    """``query<TAB>category`` rows; WANDS' ``query_id<TAB>query<TAB>query_class`` layout is recognised too."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    if not rows:
        raise ValueError(f"vocabulary {path} is empty")
    header = [h.strip().lower() for h in rows[0]]
    if "query_class" in header and "query" in header:
        qi, ci = header.index("query"), header.index("query_class")
        rows = rows[1:]
    else:
        qi, ci = 0, 1
        if header[:2] == ["query", "category"]:
            rows = rows[1:]
    pairs = []
    for r in rows:
        if len(r) > max(qi, ci) and r[qi].strip() and r[ci].strip():
            pairs.append((normalise_query(r[qi]), r[ci].strip()))
    if not pairs:
        raise ValueError(f"vocabulary {path}: no `query<TAB>category` rows found")
    return pairs


def builtin_wands() -> Path:
    return Path(str(resources.files("aigq") / "resources" / "vocab" / "wands_query.tsv"))


def load_vocabulary(spec: str, templates_per_category: int, seed: int) -> Vocabulary:
    """Build the vocabulary named by ``spec`` ("builtin:wands", a file path, or "templates")."""
    rng = np.random.default_rng([seed, 7])
    if spec == "templates":
        pairs: list[tuple[str, str]] = []
        tree = BUILTIN_TREE
        cats = [leaf for leaves in tree.values() for leaf in leaves]
        parent_map = {leaf: p for p, leaves in tree.items() for leaf in leaves}
    else:
        path = builtin_wands() if spec == "builtin:wands" else Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"vocabulary file not found: {path}")
        pairs = _read_pairs(path)
        cats = sorted({c for _, c in pairs})
        parent_map = {c: parent_of(c) for c in cats}
    by_cat: dict[str, list[tuple[str, bool]]] = {c: [] for c in cats}
    seen: set[str] = set()
    for q, c in pairs:
        if q not in seen:
            seen.add(q)
            by_cat[c].append((q, True))
    for c in cats:
        noun = c.lower().replace("&", "and")
        mods = rng.permutation(len(MODIFIERS))
        added = 0
        for m in mods:
            q = normalise_query(f"{MODIFIERS[m]} {noun}")
            if added >= templates_per_category:
                break
            if q not in seen:
                seen.add(q)
                by_cat[c].append((q, False))
                added += 1
        if not by_cat[c]:  # templates_per_category == 0 and no real query: the category name itself
            by_cat[c].append((normalise_query(noun), False))
            seen.add(normalise_query(noun))
    queries, q_cat, q_real = [], [], []
    for ci, c in enumerate(cats):
        for q, real in by_cat[c]:
            queries.append(q)
            q_cat.append(ci)
            q_real.append(real)
    return Vocabulary(
        categories=cats,
        parents=[parent_map[c] for c in cats],
        queries=queries,
        q_cat=np.asarray(q_cat, dtype=np.int64),
        q_real=np.asarray(q_real, dtype=bool),
    )
