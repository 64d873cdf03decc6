"""World v2's static concept space (issue 17): leaves, rooms and complements, facet and leaf popularity, items —
and the pure functions both the simulator (``world_v2.py``) and the hidden click model (``hidden.py``) use: a
concept's composed popularity (:func:`pop_logp`), a user's taste lift (:func:`taste_lift`), concept codes
(:func:`encode` / :func:`decode`) and their text (:func:`render`). See ``world_v2.py`` for the model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from aigq.config import WorldConfig
from aigq.data.lexicon import FACET_TYPES, Lexicon, build_lexicon
from aigq.data.vocabulary import load_vocabulary

DAY_S = 86_400
N_CAND = 16
ITEM_QUERY_MATCH = 1.5  # item-click logit per facet the item shares with the query
ITEM_TASTE = 0.5  # item-click logit per unit of taste lift
# Rooms of the complement graph, by keywords of the WANDS class name (first room that matches; unmatched classes
# get a seeded room). Fixed here, before any training; the shuffled-lexicon control permutes it.
ROOMS: dict[str, tuple[str, ...]] = {
    "outdoor": ("outdoor", "patio", "garden", "pergola", "awning", "planter", "lawn", "deck", "fenc", "mailbox",
                "picnic", "swing", "playhouse", "landscape", "log storage", "fountain", "string light", "umbrella",
                "weather"),
    "bath": ("bath", "shower", "toilet", "towel", "tub", "vanit", "sauna", "hamper"),
    "kitchen": ("kitchen", "cook", "crock", "espresso", "bread", "canister", "food storage", "strainer", "pantry",
                "range hood", "refrigerator", "trash"),
    "dining": ("dining", "bar", "stool", "sideboard", "glassware", "flatware", "plates", "serving", "bowls"),
    "bedroom": ("bed", "mattress", "dresser", "nightstand", "headboard", "sheet", "armoire", "closet", "crib"),
    "living": ("sofa", "sectional", "coffee", "end table", "console", "tv stand", "accent", "recliner", "ottoman",
               "living room", "chaise", "rug", "bookcase", "massage"),
    "office": ("desk", "office", "computer", "lectern", "memo", "chairmat", "projector", "shelving", "storage"),
    "decor": ("wall", "mirror", "lamp", "light", "chandelier", "sconce", "vase", "curtain", "candle", "frame",
              "decor", "faux", "wreath", "christmas", "fan", "tray", "object", "clock"),
    "utility": ("door", "knob", "pull", "lever", "tile", "molding", "washing", "dryer", "laundry", "smoke", "gate",
                "rack", "hook"),
}


@dataclass
class V2Static:
    lex: Lexicon
    leaf_p: np.ndarray  # (L,) leaf popularity
    leaf_cum: np.ndarray
    parent_id: np.ndarray
    sib: tuple[np.ndarray, np.ndarray, np.ndarray]  # flat, offset, count: same parent class
    comp: tuple[np.ndarray, np.ndarray, np.ndarray]  # complements: same room, another class
    room: np.ndarray
    fval_p: list[np.ndarray]  # per facet type, value popularity
    type_logp: np.ndarray  # (T,) log weight of a facet type being used
    item_vals: np.ndarray  # (L, I, T) item facet values
    item_logw: np.ndarray  # (I,) log Zipf popularity inside a leaf
    lo: float
    hi: float  # log-popularity bounds of the concept space (popnorm = (logp − lo)/(hi − lo))


def _zipf(n: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


def _csr(groups: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cnt = np.array([len(g) for g in groups])
    return (np.concatenate([np.asarray(g, np.int64) for g in groups]), np.cumsum(np.r_[0, cnt[:-1]]), cnt)


def _pick(csr: tuple[np.ndarray, np.ndarray, np.ndarray], leaf: np.ndarray, u: np.ndarray) -> np.ndarray:
    flat, off, cnt = csr
    return flat[off[leaf] + np.minimum((u * cnt[leaf]).astype(np.int64), cnt[leaf] - 1)]


def room_of(cls: str, rng: np.random.Generator) -> int:
    low = cls.lower()
    for i, keys in enumerate(ROOMS.values()):
        if any(k in low for k in keys):
            return i
    return int(rng.integers(0, len(ROOMS)))


def build_static(wc: WorldConfig, seed: int) -> V2Static:
    classes = load_vocabulary(wc.vocabulary, 0, seed).categories
    lex = build_lexicon(classes, wc.shuffle_lexicon, seed)
    rng = np.random.default_rng([seed, 23])
    L = lex.n_leaves
    leaf_p = _zipf(L, wc.category_zipf)[rng.permutation(L)]
    leaf_cum = np.cumsum(leaf_p)
    leaf_cum[-1] = 1.0
    parents = sorted(set(lex.parents))
    parent_id = np.array([parents.index(p) for p in lex.parents])
    room_rng = np.random.default_rng([seed, 29])
    room = np.array([room_of(p, room_rng) for p in lex.parents])
    if wc.shuffle_lexicon:  # the control: complement edges permuted (rooms reassigned over the leaves)
        room = room[np.random.default_rng([seed, 31]).permutation(L)]
    sib, comp = [], []
    for i in range(L):
        s = [j for j in np.nonzero(parent_id == parent_id[i])[0] if j != i]
        c = [j for j in np.nonzero(room == room[i])[0] if parent_id[j] != parent_id[i]]
        sib.append(s or [int(j) for j in rng.choice(L, 3, replace=False) if j != i][:2] or [i])
        comp.append(c or sib[-1])
    fval_p = [_zipf(n, 1.0)[rng.permutation(n)] for n in lex.n_values]
    type_logp = np.log(np.array(wc.facet_type_weights, dtype=np.float64))
    n_items = wc.items_per_category
    item_vals = np.stack([np.searchsorted(np.cumsum(p)[:-1], rng.random((L, n_items)), side="right") for p in fval_p], 2)
    nf = np.log(np.asarray(wc.facet_counts, dtype=np.float64) + 1e-12)
    best = np.sort([np.log(p.max()) for p in fval_p])[::-1]
    worst = np.sort([np.log(p.min()) for p in fval_p])
    hi = np.log(leaf_p.max()) + max(nf[k] + best[:k].sum() for k in range(4))
    lo = np.log(leaf_p.min()) + min(nf[k] + worst[:k].sum() for k in range(4))
    return V2Static(lex, leaf_p, leaf_cum, parent_id, _csr(sib), _csr(comp), room, fval_p, type_logp, item_vals,
                    np.log(_zipf(n_items, wc.item_zipf)), float(lo), float(hi))


def pop_logp(st_leaf_p: np.ndarray, fval_p: list[np.ndarray], facet_counts: list[float], leaf: np.ndarray,
             vals: np.ndarray) -> np.ndarray:
    """Composed log-popularity of concepts: log p(leaf) + log p(facet count) + Σ log p(value). vals: (n, T), −1 =
    absent."""
    k = (vals >= 0).sum(1)
    out = np.log(st_leaf_p[leaf]) + np.log(np.asarray(facet_counts)[np.minimum(k, 3)] + 1e-12)
    for t, p in enumerate(fval_p):
        out = out + np.where(vals[:, t] >= 0, np.log(p[np.maximum(vals[:, t], 0)]), 0.0)
    return out


def taste_lift(fav: np.ndarray, tau: float, fval_p: list[np.ndarray], vals: np.ndarray) -> np.ndarray:
    """Σ over present facets of log(P_u(v)/p(v)) (module docstring); fav, vals: (n, T); 0 when τ = 0."""
    out = np.zeros(len(vals))
    if tau <= 0:
        return out
    for t, p in enumerate(fval_p):
        v = vals[:, t]
        pv = p[np.maximum(v, 0)]
        lift = np.log((tau * (v == fav[:, t]) + (1 - tau) * pv) / pv)
        out += np.where(v >= 0, lift, 0.0)
    return out


def encode(leaf: np.ndarray, vals: np.ndarray, n_values: list[int]) -> np.ndarray:
    code = leaf.astype(np.int64)
    for t, n in enumerate(n_values):
        code = code * (n + 1) + (vals[:, t] + 1)
    return code


def decode(code: np.ndarray, n_values: list[int]) -> tuple[np.ndarray, np.ndarray]:
    code = code.astype(np.int64).copy()
    vals = np.empty((len(code), len(n_values)), np.int64)
    for t in range(len(n_values) - 1, -1, -1):
        vals[:, t] = code % (n_values[t] + 1) - 1
        code //= n_values[t] + 1
    return code, vals


def render(lex: Lexicon, leaf: np.ndarray, vals: np.ndarray) -> pl.Series:
    """Concept texts (Lexicon.render, vectorised with polars)."""
    cols = [pl.Series([*ws, None])[pl.Series(np.where(vals[:, t] >= 0, vals[:, t], len(ws)))]
            for t, ws in enumerate(lex.words)]
    cols.append(pl.Series(lex.nouns)[pl.Series(leaf)])
    return pl.DataFrame({str(i): c for i, c in enumerate(cols)}).select(
        pl.concat_str(pl.all(), separator=" ", ignore_nulls=True))[:, 0]


def draw_facets(rng: np.random.Generator, st: V2Static, nf: np.ndarray, fav: np.ndarray | None,
                 tau: float) -> np.ndarray:
    """(n, T) values: nf facet types by weight without replacement (Gumbel top-k), each the favourite with chance τ
    else a popularity draw; −1 = absent."""
    n, T = len(nf), len(st.fval_p)
    keys = st.type_logp[None, :] + rng.gumbel(size=(n, T))
    rank = np.argsort(np.argsort(-keys, 1), 1)
    vals = np.full((n, T), -1, np.int64)
    for t, p in enumerate(st.fval_p):
        v = np.searchsorted(np.cumsum(p)[:-1], rng.random(n), side="right")
        if fav is not None and tau > 0:
            v = np.where(rng.random(n) < tau, fav[:, t], v)
        vals[:, t] = np.where(rank[:, t] < nf, v, -1)
    return vals

def static_tables(st: V2Static, wc: WorldConfig, seed: int) -> dict[str, pl.DataFrame]:
    lex, n_items = st.lex, wc.items_per_category
    L = lex.n_leaves
    rng = np.random.default_rng([seed, 37])
    leaf = np.repeat(np.arange(L), n_items)
    vals = st.item_vals.reshape(L * n_items, -1)
    brand_t = FACET_TYPES.index("brand")
    no_brand = vals.copy()
    no_brand[:, brand_t] = -1
    for t in (FACET_TYPES.index("price"), FACET_TYPES.index("size")):
        no_brand[:, t] = -1
    desc = render(lex, leaf, no_brand)
    brand = pl.Series(lex.words[brand_t]).gather(pl.Series(vals[:, brand_t]))
    tier = vals[:, FACET_TYPES.index("price")]
    base = np.exp(rng.normal(3.5, 0.8, L))
    items = pl.DataFrame({
        "item_id": np.arange(1, L * n_items + 1),
        "title": (brand + " " + desc).str.to_titlecase(),
        "category": pl.Series(lex.leaves).gather(pl.Series(leaf)),
        "category_path": (pl.Series(lex.parents) + " > " + pl.Series(lex.leaves)).gather(pl.Series(leaf)),
        "brand": brand.str.to_titlecase(),
        "price": np.round(base[leaf] * np.exp(0.35 * tier + rng.normal(0, 0.2, L * n_items)), 2),
        "description": desc + " by " + brand.str.to_titlecase(),
    })
    categories = pl.DataFrame({"category": lex.leaves, "parent": lex.parents})
    return {"items": items, "categories": categories}

