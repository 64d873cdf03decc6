"""World v2's compositional query space and its public query-understanding table (issue 17).

A v2 query is a **concept**: a leaf (a head noun, e.g. "coffee table") plus 0–3 facet values of distinct facet
types (colour, material, style, size, price tier, brand). Its text is the facet words in a fixed order followed by
the singular noun: ``"luxury grey velvet coffee table"``.

* **Leaves** are finer than WANDS' 190 product classes: each class name is split into its head nouns
  ("Coffee & Cocktail Tables" → "coffee table", "cocktail table"; :func:`head_nouns`), and the class becomes the
  leaf's parent. So the category tree of a v2 world is leaf (head noun) → parent (WANDS class).
* **The lexicon** (facet words, noun forms → leaf) is public: it is written to ``world/lexicon.json`` and every
  channel, the reward model and the evaluator parse text with the same :class:`Lexicon`.
* **The parser** is deterministic and strict: the normalised text is split into words and matched greedily,
  longest phrase first, against facet words and noun forms (singular or plural). Text parses iff every word is
  consumed, exactly one noun is found and no facet type occurs twice; anything else is unparseable (``None``) and
  gets the click model's base rate. There is no fuzzy matching, on purpose (world-calibration.md: lenient matching
  of generated text would tune the world to the method).
* **The shuffled-lexicon control** (``world.shuffle_lexicon``) permutes the facet *words* over all facet values
  (so "oak" may name a colour), keeping the world internally consistent while breaking what a pretrained model knows
  about English.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aigq.data.vocabulary import BRANDS

# Facet types in render order (an English adjective order: brand, price, size, style, colour, material).
FACET_WORDS: dict[str, list[str]] = {
    "brand": [b.lower() for b in BRANDS if "&" not in b],
    "price": ["cheap", "affordable", "premium", "luxury"],
    "size": ["small", "large", "mini", "oversized", "tall", "wide"],
    "style": ["modern", "vintage", "rustic", "mid century modern", "farmhouse", "boho", "industrial",
              "minimalist", "coastal", "traditional"],
    "colour": ["white", "black", "grey", "blue", "green", "navy", "pink", "beige", "brown", "red", "gold",
               "yellow"],
    "material": ["wooden", "metal", "oak", "velvet", "leather", "linen", "glass", "rattan", "marble", "walnut"],
}
FACET_TYPES: tuple[str, ...] = tuple(FACET_WORDS)

_WORD = re.compile(r"[^\w\s]+", re.UNICODE)
_WS = re.compile(r"\s+")


def norm(text: object) -> str:
    """Lower-case, punctuation → space, whitespace collapsed: the parser's normal form (``None`` → "")."""
    if text is None:
        return ""
    return _WS.sub(" ", _WORD.sub(" ", str(text).lower())).strip()


def singular(word: str) -> str:
    """English singular of a plural head word by suffix rules ("tables" → "table", "benches" → "bench")."""
    if word.endswith("lves"):
        return word[:-3] + "f"
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if re.search(r"(ch|sh|ss|x|zz)es$", word):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def head_nouns(category: str) -> list[str]:
    """The head nouns (singular, normalised) a WANDS class name lists, in order, without duplicates.

    "Coffee & Cocktail Tables" → ["coffee table", "cocktail table"] (a bare modifier borrows the last part's noun);
    "Mattress Toppers and Pads" → ["mattress topper", "mattress pad"] (a bare noun borrows the first part's
    modifiers); "Dressers & Chests" → ["dresser", "chest"]; "Accent Chests / Cabinets" → ["accent chest",
    "accent cabinet"].
    """
    text = category.lower().replace("é", "e")
    parts = [norm(p) for p in re.split(r"\s*(?:&|/|,|\band\b)\s*", text)]
    parts = [p for p in parts if p]
    if not parts:
        return [norm(category)]
    words = [p.split() for p in parts]
    out: list[str] = []
    for i, w in enumerate(words):
        if len(w) == 1 and i < len(words) - 1 and len(words[-1]) >= 2 and not w[0].endswith("s"):
            w = [w[0], words[-1][-1]]  # "coffee" + "tables"
        elif len(w) == 1 and i > 0 and len(words[0]) >= 2 and len(words) == 2:
            w = words[0][:-1] + w  # "mattress" + "pads"
        phrase = " ".join([*w[:-1], singular(w[-1])])
        if phrase not in out:
            out.append(phrase)
    return out


def plural(noun: str) -> str:
    head, _, last = noun.rpartition(" ")
    if last.endswith("lf"):
        last = last[:-1] + "ves"
    elif re.search(r"(ch|sh|s|x|z)$", last):
        last += "es"
    elif re.search(r"[^aeiou]y$", last):
        last = last[:-1] + "ies"
    elif not last.endswith("s"):
        last += "s"
    return f"{head} {last}".strip()


@dataclass
class Lexicon:
    """Leaves (index = leaf id) and facet words (``words[t][v]`` = the text of value v of facet type t)."""

    leaves: list[str]  # leaf category labels, e.g. "Coffee Tables"
    parents: list[str]  # parent per leaf (the WANDS class)
    nouns: list[str]  # singular head noun per leaf, the rendered form
    words: list[list[str]]  # per facet type (FACET_TYPES order), the word per value
    _phrases: dict[tuple[str, ...], tuple[int, int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        ph: dict[tuple[str, ...], tuple[int, int]] = {}
        for li, n in enumerate(self.nouns):  # kind −1 = noun, value = leaf id
            for form in (n, plural(n)):
                ph.setdefault(tuple(form.split()), (-1, li))
        for t, ws in enumerate(self.words):
            for v, w in enumerate(ws):
                key = tuple(norm(w).split())
                if key in ph:
                    raise ValueError(f"lexicon: facet word {w!r} is also a noun or another facet word")
                ph[key] = (t, v)
        self._phrases = ph
        self._max_len = max(len(k) for k in ph)

    @property
    def n_leaves(self) -> int:
        return len(self.leaves)

    @property
    def n_values(self) -> list[int]:
        return [len(w) for w in self.words]

    def render(self, leaf: int, values: dict[int, int]) -> str:
        """Text of a concept: facet words in FACET_TYPES order, then the singular noun."""
        return " ".join([*(self.words[t][values[t]] for t in sorted(values)), self.nouns[leaf]])

    def parse(self, text: object) -> tuple[int, dict[int, int]] | None:
        """(leaf, {facet type: value}) or None when the text is not a concept (see the module docstring)."""
        toks = norm(text).split()
        leaf, values, i = -1, {}, 0
        while i < len(toks):
            for n in range(min(self._max_len, len(toks) - i), 0, -1):
                hit = self._phrases.get(tuple(toks[i : i + n]))
                if hit is not None:
                    break
            else:
                return None
            kind, val = hit
            if kind == -1:
                if leaf >= 0:
                    return None
                leaf = val
            else:
                if kind in values:
                    return None
                values[kind] = val
            i += n
        return (leaf, values) if leaf >= 0 else None

    def to_json(self) -> dict:
        return {"facet_types": list(FACET_TYPES), "words": self.words,
                "leaves": [{"category": c, "parent": p, "noun": n}
                           for c, p, n in zip(self.leaves, self.parents, self.nouns, strict=True)]}

    def write(self, world: str | Path) -> None:
        (Path(world) / "lexicon.json").write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def from_json(cls, raw: dict) -> Lexicon:
        leaves = raw["leaves"]
        return cls([x["category"] for x in leaves], [x["parent"] for x in leaves], [x["noun"] for x in leaves],
                   [list(w) for w in raw["words"]])

    @classmethod
    def from_world(cls, world: str | Path) -> Lexicon | None:
        """The world's public lexicon, or None for a world without one (v1 or imported)."""
        path = Path(world) / "lexicon.json"
        return cls.from_json(json.loads(path.read_text())) if path.is_file() else None


def build_lexicon(classes: list[str], shuffle: bool = False, seed: int = 0) -> Lexicon:
    """Leaves from the classes' head nouns (a noun claimed by an earlier class is skipped), the built-in facet
    words; ``shuffle`` permutes the facet words over all facet values (the shuffled-lexicon control)."""
    leaves, parents, nouns, seen = [], [], [], set()
    for c in classes:
        for n in head_nouns(c):
            if n in seen or any(n == norm(w) for ws in FACET_WORDS.values() for w in ws):
                continue
            seen.add(n)
            nouns.append(n)
            leaves.append(plural(n).title())
            parents.append(c)
    words = [list(FACET_WORDS[t]) for t in FACET_TYPES]
    if shuffle:
        flat = [w for ws in words for w in ws]
        perm = np.random.default_rng([seed, 17]).permutation(len(flat))
        flat = [flat[i] for i in perm]
        out, k = [], 0
        for ws in words:
            out.append(flat[k : k + len(ws)])
            k += len(ws)
        words = out
    return Lexicon(leaves, parents, nouns, words)
