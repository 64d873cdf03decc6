"""World v2 (issue 17): the simulator's second hidden user model, used when ``world.query_space == "compositional"``.

It keeps world v1's frame (``simulate.py``: users in chunks, drifting interest mixtures, the legacy HintQ ranker,
sessions of searches and item clicks) and changes what ``../shared/world-calibration.md`` found missing:

* **compositional queries** (``lexicon.py``): a search is a concept — the session's leaf (a head noun) plus 0–3
  facet values drawn from per-type popularity; leaves are WANDS classes split into head nouns; its popularity is
  composed from the leaf's and the facet values' (``pop_logp``), so a string never logged is as attractive as its
  concept;
* **taste** (``world.taste`` = τ): each user has one favourite value per facet type; a facet takes the favourite
  with chance τ, else a popularity draw. The taste *lift* of value v for user u is log(P_u(v)/p(v)) with
  P_u(v) = τ·[v = fav] + (1−τ)·p(v) — exactly 0 for τ = 0 (the null-taste control). It shapes searches (the draw),
  item clicks (+0.5·lift of the item's facets) and clicks on suggestions (+``click_taste``·clip(lift, −3, 3));
* **missions** (``world.missions``): a session ends in a buy with chance ``session_buy_rate``; the buy picks a
  mission leaf among the bought leaf's complements (same room, another class; the room graph is fixed from class
  names before any training, ``rooms``); for ``mission_days`` after the buy day the bought leaf is sated (sessions
  that would go there go to the mission leaf) and a session goes to the mission leaf with chance ``mission_rate``;
  refinement: a search's facet count is min(3, r + b), r = the user's earlier searches in that leaf (across
  sessions), b ~ ``refine_counts`` — broad first, specific later;
* **heavy-tailed activity** (``world.activity = lognormal``): sessions per user log-normal, arrivals spread over the
  days, the next session on the same day with chance ``same_day_rate`` else after a geometric gap;
* the click level is ``click_base`` (set low in ``configs/world_v2.yaml``).

The hidden click model (``hidden.py``) reads the same quantities back: interest rows (mixture segments, plus
mission rows with weight ``mission_weight`` and satiation rows with weight −1; interest is clipped at 0), the
favourites in ``hidden/taste``, and ``hidden/v2.json`` (τ, click_taste, the popularity tables and bounds).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from aigq.config import WorldConfig
from aigq.data import schema
from aigq.data.hidden import click_probability, hidden_dir
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
    L, T = lex.n_leaves, len(FACET_TYPES)
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
    I = wc.items_per_category
    item_vals = np.stack([np.searchsorted(np.cumsum(p)[:-1], rng.random((L, I)), side="right") for p in fval_p], 2)
    nf = np.log(np.asarray(wc.facet_counts, dtype=np.float64) + 1e-12)
    best = np.sort([np.log(p.max()) for p in fval_p])[::-1]
    worst = np.sort([np.log(p.min()) for p in fval_p])
    hi = np.log(leaf_p.max()) + max(nf[k] + best[:k].sum() for k in range(4))
    lo = np.log(leaf_p.min()) + min(nf[k] + worst[:k].sum() for k in range(4))
    return V2Static(lex, leaf_p, leaf_cum, parent_id, _csr(sib), _csr(comp), room, fval_p, type_logp, item_vals,
                    np.log(_zipf(I, wc.item_zipf)), float(lo), float(hi))


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


def _draw_facets(rng: np.random.Generator, st: V2Static, nf: np.ndarray, fav: np.ndarray | None,
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


def _sessions(rng: np.random.Generator, wc: WorldConfig, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first day per user, session user, session day), sessions unsorted."""
    D = wc.days
    if wc.activity == "daily":
        cold = rng.random(n) < wc.cold_start_share
        late = rng.integers(1, max(D - wc.cold_start_days, 1) + 1, n)
        first = np.where(cold, rng.integers(D - wc.cold_start_days + 1, D + 1, n),
                         np.where(rng.random(n) < 0.7, 1, late))
        lam = rng.gamma(1.5, wc.sessions_per_day / 1.5, n) * np.where(cold, 0.6, 1.0)
        ns = rng.poisson(lam[:, None] * (np.arange(1, D + 1)[None, :] >= first[:, None]))
        ud = np.repeat(np.arange(n * D), ns.ravel())
        return first, ud // D, ud % D + 1
    ns = np.maximum(1, np.rint(rng.lognormal(np.log(wc.activity_median), wc.activity_sigma, n))).astype(np.int64)
    ns = np.minimum(ns, 20 * D)
    first = rng.integers(1, D + 1, n)
    s_u = np.repeat(np.arange(n), ns)
    start = np.repeat(np.cumsum(ns) - ns, ns)
    # heavy users come back sooner: their mean gap shrinks so that their sessions fit the days
    mean_gap = np.clip(0.8 * D / np.maximum(1.0, ns * (1 - wc.same_day_rate)), 1.0, wc.revisit_gap_days)
    gap = np.where(rng.random(len(s_u)) < wc.same_day_rate, 0, rng.geometric(1.0 / mean_gap[s_u]))
    gap[np.arange(len(s_u)) == start] = 0
    cs = np.cumsum(gap)
    s_day = first[s_u] + cs - cs[start]
    keep = s_day <= D
    return first, s_u[keep], s_day[keep]


def _categorical(rng: np.random.Generator, p: list[float], n: int) -> np.ndarray:
    cum = np.cumsum(np.asarray(p, np.float64) / sum(p))
    return np.minimum(np.searchsorted(cum, rng.random(n), side="right"), len(p) - 1)


def _missions(rng: np.random.Generator, st: V2Static, wc: WorldConfig, s_u: np.ndarray, s_day: np.ndarray,
              s_ord: np.ndarray, cat: np.ndarray, n: int):
    """Sessions in order of their ordinal, vectorised over users: a buy sets (bought leaf, mission leaf, day); for
    ``mission_days`` after it the bought leaf is sated and a session goes to the mission leaf with ``mission_rate``.
    Returns (cat, bought, mission leaf per session or −1, sated leaf per session or −1, buy rows)."""
    NS = len(s_u)
    bought = rng.random(NS) < wc.session_buy_rate
    u_mis, u_pick = rng.random(NS), rng.random(NS)
    sess_mis, sess_sat, buy_mis = np.full(NS, -1), np.full(NS, -1), np.full(NS, -1)
    last_leaf, last_mis, last_day = np.full(n, -1), np.full(n, -1), np.full(n, -(10**6))
    by_ord = np.argsort(s_ord, kind="stable")
    bounds = np.searchsorted(s_ord[by_ord], np.arange(int(s_ord.max(initial=-1)) + 2))
    for k in range(len(bounds) - 1):
        ix = by_ord[bounds[k] : bounds[k + 1]]
        u, d = s_u[ix], s_day[ix]
        act = (last_leaf[u] >= 0) & (d > last_day[u]) & (d <= last_day[u] + wc.mission_days)
        sess_mis[ix] = np.where(act, last_mis[u], -1)
        sess_sat[ix] = np.where(act, last_leaf[u], -1)
        go = act & ((cat[ix] == last_leaf[u]) | (u_mis[ix] < wc.mission_rate))
        cat[ix] = np.where(go, last_mis[u], cat[ix])
        b = bought[ix]
        if b.any():
            ub, cb = u[b], cat[ix][b]
            m = _pick(st.comp, cb, u_pick[ix][b])
            last_leaf[ub], last_mis[ub], last_day[ub] = cb, m, d[b]
            buy_mis[ix[b]] = m
    return cat, bought, sess_mis, sess_sat, buy_mis


def _mission_rows(wc: WorldConfig, s_u, s_day, cat, bought, buy_mis) -> dict[str, np.ndarray]:
    """Hidden rows of the missions: mission leaf (weight mission_weight) and sated leaf (weight −1), active from the
    day after the buy until mission_days later or the next buy's day."""
    b = np.nonzero(bought)[0]  # sessions are sorted by (user, day, second)
    u, d = s_u[b], s_day[b]
    nxt = np.r_[d[1:], wc.days]
    nxt = np.where(np.r_[u[1:] == u[:-1], False], nxt, wc.days)
    to = np.minimum(np.minimum(d + wc.mission_days, nxt), wc.days)
    fr = d + 1
    ok = fr <= to
    u, fr, to = u[ok], fr[ok], to[ok]
    return {"u": np.r_[u, u], "slot": np.r_[np.full(len(u), -1), np.full(len(u), -2)],
            "weight": np.r_[np.full(len(u), wc.mission_weight), np.full(len(u), -1.0)],
            "leaf": np.r_[buy_mis[b][ok], cat[b][ok]], "from": np.r_[fr, fr], "to": np.r_[to, to]}


def _click_features(st: V2Static, wc: WorldConfig, segs, chg, w, eu, ed, leaf, sess_mis, sess_sat):
    """interest and related of shown leaves (n, 3) for exposure users/days: as ``HiddenModel`` computes them from
    the interest, mission and satiation rows."""
    cur = np.take_along_axis(segs[eu], (ed[:, None, None] >= chg[eu]).sum(2)[..., None], 2)[..., 0]  # (NE, K)
    we = w[eu]
    same = cur[:, None, :] == leaf[:, :, None]
    interest = (same * we[:, None, :]).sum(2)
    interest = interest + wc.mission_weight * (leaf == sess_mis[:, None]) - 1.0 * (leaf == sess_sat[:, None])
    pl_, pc = st.parent_id[leaf], st.parent_id[cur]
    related = ((pc[:, None, :] == pl_[:, :, None]) & ~same & (we[:, None, :] > 0)).any(2)
    m = np.maximum(sess_mis, 0)[:, None]
    related |= (sess_mis[:, None] >= 0) & (st.parent_id[m] == pl_) & (leaf != m)
    return np.maximum(interest, 0.0), related.astype(float)


def chunk(st: V2Static, wc: WorldConfig, seed: int, ci: int, uid0: int, n: int, start_us: int,
          params) -> dict[str, pl.DataFrame]:
    from aigq.data.simulate import CITIES, GENDERS, OCCUPATIONS, TYPE_NAMES

    rng = np.random.default_rng([seed, 2000 + ci])
    D, K, S, lex, tau = wc.days, wc.interests_max, 3, st.lex, wc.taste
    nv, I = lex.n_values, wc.items_per_category
    uid = np.arange(uid0, uid0 + n, dtype=np.int64)
    first, s_u, s_day = _sessions(rng, wc, n)
    fav = np.stack([np.searchsorted(np.cumsum(p)[:-1], rng.random(n), side="right") for p in st.fval_p], 1)

    def draw_leaf(shape):
        return np.minimum(np.searchsorted(st.leaf_cum, rng.random(shape), side="right"), lex.n_leaves - 1)

    k = np.clip(1 + rng.poisson(max(wc.interests_mean - 1, 0), n), 1, K)
    g = rng.gamma(1.0, size=(n, K)) * (np.arange(K)[None, :] < k[:, None])
    w = g / g.sum(1, keepdims=True)
    gaps = rng.geometric(wc.drift_per_day, (n, K, S - 1)) if wc.drift_per_day > 0 else np.full((n, K, S - 1), 10 * D)
    chg = first[:, None, None] + np.cumsum(gaps, axis=2)
    segs = np.empty((n, K, S), dtype=np.int64)
    segs[..., 0] = draw_leaf((n, K))
    for s in range(1, S):
        sib = _pick(st.sib, segs[..., s - 1], rng.random((n, K)))
        segs[..., s] = np.where(rng.random((n, K)) < 0.5, sib, draw_leaf((n, K)))
    s_sec = rng.integers(0, DAY_S - 3600, len(s_u))
    order = np.lexsort((s_sec, s_day, s_u))
    s_u, s_day, s_sec = s_u[order], s_day[order], s_sec[order]
    NS = len(s_u)
    s_ord = np.arange(NS) - np.searchsorted(s_u, s_u, side="left")
    s_id = uid[s_u] * (1 << 20) + s_ord
    slot = np.minimum((np.cumsum(w, 1)[s_u] < rng.random(NS)[:, None]).sum(1), K - 1)
    seg = (s_day[:, None] >= chg[s_u, slot]).sum(1)
    cat = segs[s_u, slot, seg]
    cat = np.where(rng.random(NS) < wc.serendipity, _pick(st.sib, cat, rng.random(NS)), cat)
    if wc.missions:
        cat, bought, sess_mis, sess_sat, buy_mis = _missions(rng, st, wc, s_u, s_day, s_ord, cat, n)
    else:
        bought, sess_mis, sess_sat, buy_mis = np.zeros(NS, bool), np.full(NS, -1), np.full(NS, -1), np.full(NS, -1)
    prev1, prev2 = np.roll(cat, 1), np.roll(cat, 2)
    prev1[s_ord < 1], prev2[s_ord < 2] = -1, -1
    # HintQ exposures by the legacy recommender: popularity + co-click on the last sessions' leaves, no taste
    e = np.nonzero(rng.random(NS) < wc.hint_exposure_rate)[0]
    NE, p1, p2 = len(e), prev1[e][:, None], prev2[e][:, None]
    cc = draw_leaf((NE, N_CAND))
    cc[:, 0:6] = np.where(p1 >= 0, p1, cc[:, 0:6])
    cc[:, 6:9] = np.where(p2 >= 0, p2, cc[:, 6:9])
    cc[:, 9:12] = np.where(p1 >= 0, _pick(st.sib, np.maximum(p1, 0).repeat(3, 1), rng.random((NE, 3))), cc[:, 9:12])
    cv = _draw_facets(rng, st, _categorical(rng, wc.facet_counts, NE * N_CAND), None, 0.0)
    logp = pop_logp(st.leaf_p, st.fval_p, wc.facet_counts, cc.ravel(), cv).reshape(NE, N_CAND)
    cq = encode(cc.ravel(), cv, nv).reshape(NE, N_CAND)
    score = logp + 1.5 * (cc == p1) + 0.8 * (cc == p2) + 0.5 * rng.gumbel(size=(NE, N_CAND))
    srt = np.argsort(cq, axis=1, kind="stable")
    sq = np.take_along_axis(cq, srt, 1)
    dup = np.zeros_like(sq, dtype=bool)
    dup[:, 1:] = sq[:, 1:] == sq[:, :-1]
    np.put_along_axis(score, srt, np.where(dup, -np.inf, np.take_along_axis(score, srt, 1)), 1)
    rank = np.argsort(-score, axis=1, kind="stable")[:, : wc.ranker_top_k]
    topk = np.where(np.isfinite(np.take_along_axis(score, rank, 1)), np.take_along_axis(cq, rank, 1), -1)
    ok = (topk[:, :3] >= 0).all(1)
    e, topk = e[ok], topk[ok]
    shown, eu, ed = topk[:, :3], s_u[e], s_day[e]
    sh_leaf, sh_vals = decode(shown.ravel(), nv)
    sh_leaf = sh_leaf.reshape(-1, 3)
    interest, related = _click_features(st, wc, segs, chg, w, eu, ed, sh_leaf, sess_mis[e], sess_sat[e])
    pop = (pop_logp(st.leaf_p, st.fval_p, wc.facet_counts, sh_leaf.ravel(), sh_vals) - st.lo) / (st.hi - st.lo)
    lift = taste_lift(fav[np.repeat(eu, 3)], tau, st.fval_p, sh_vals)
    extra = wc.click_taste * np.clip(lift, -3, 3).reshape(-1, 3)
    p_click = click_probability(interest, related, pop.reshape(-1, 3), np.arange(3)[None, :], params, extra)
    clicked = rng.random(p_click.shape) < p_click
    he, hpos = np.nonzero(clicked)
    # searches: the session's leaf, facets by refinement (missions) or the base counts, values by taste
    m = 1 + rng.poisson(wc.searches_per_session, NS)
    sr_s = np.repeat(np.arange(NS), m)
    sr_j = np.arange(len(sr_s)) - np.repeat(np.cumsum(m) - m, m)
    sr_leaf, sr_user = cat[sr_s], s_u[sr_s]
    if wc.session_switch > 0:  # a later search of a session moves to another of the user's interests that day
        sw = np.nonzero((sr_j > 0) & (rng.random(len(sr_s)) < wc.session_switch))[0]
        su, sd = sr_user[sw], s_day[sr_s[sw]]
        sl = np.minimum((np.cumsum(w, 1)[su] < rng.random(len(sw))[:, None]).sum(1), K - 1)
        sr_leaf = sr_leaf.copy()
        sr_leaf[sw] = segs[su, sl, (sd[:, None] >= chg[su, sl]).sum(1)]
    if wc.missions:  # refinement: r = the user's earlier searches in this leaf, across sessions
        o = np.lexsort((np.arange(len(sr_s)), sr_leaf, sr_user))
        key = sr_user[o] * (lex.n_leaves + 1) + sr_leaf[o]
        start = np.r_[0, np.nonzero(key[1:] != key[:-1])[0] + 1]
        r = np.empty(len(o), np.int64)
        r[o] = np.arange(len(o)) - np.repeat(start, np.diff(np.r_[start, len(o)]))
        nf = np.minimum(3, r + _categorical(rng, wc.refine_counts, len(sr_s)))
    else:
        nf = _categorical(rng, wc.facet_counts, len(sr_s))
    sr_vals = _draw_facets(rng, st, nf, fav[sr_user], tau)
    sr_q = encode(sr_leaf, sr_vals, nv)
    # item clicks: Zipf popularity + the query's facets + the user's taste
    c = np.minimum(rng.poisson(wc.clicks_per_search, len(sr_s)), 30)
    if wc.missions:  # a session that buys has at least one click in its last search
        last = np.r_[sr_s[1:] != sr_s[:-1], True] & bought[sr_s]
        c = np.where(last, np.maximum(c, 1), c)
    ck_r = np.repeat(np.arange(len(sr_s)), c)
    ck_s = sr_s[ck_r]
    iv = st.item_vals[sr_leaf[ck_r]]  # (Nc, I, T)
    qv = sr_vals[ck_r][:, None, :]
    sc = st.item_logw[None, :] + ITEM_QUERY_MATCH * ((iv == qv) & (qv >= 0)).sum(2)
    if tau > 0:
        fu = fav[sr_user[ck_r]]
        for t, p in enumerate(st.fval_p):
            pv = p[iv[..., t]]
            sc = sc + ITEM_TASTE * np.log((tau * (iv[..., t] == fu[:, None, t]) + (1 - tau) * pv) / pv)
    ck_item = sr_leaf[ck_r] * I + np.argmax(sc + rng.gumbel(size=sc.shape), 1) + 1
    ck_key = np.repeat(10 + 100 * sr_j, c) + 1 + 3 * (np.arange(len(ck_s)) - np.repeat(np.cumsum(c) - c, c))
    cart = rng.random(len(ck_s)) < wc.cart_rate
    if wc.missions:
        buy = np.r_[ck_s[1:] != ck_s[:-1], True] & bought[ck_s] if len(ck_s) else np.zeros(0, bool)
        cart = cart | buy
    else:
        buy = cart & (rng.random(len(ck_s)) < wc.buy_rate)
    ev_s = np.concatenate([e[he], sr_s, ck_s, ck_s[cart], ck_s[buy]])
    ev_key = np.concatenate([hpos, 10 + 100 * sr_j, ck_key, ck_key[cart] + 1, ck_key[buy] + 2])
    ev_type = np.concatenate([np.zeros(len(he) + len(sr_s), np.int64), np.full(len(ck_s), 1),
                              np.full(cart.sum(), 2), np.full(buy.sum(), 3)])
    ev_q = np.concatenate([shown[he, hpos], sr_q, np.full(len(ck_s) + cart.sum() + buy.sum(), -1)])
    ev_item = np.concatenate([np.full(len(he) + len(sr_s), -1), ck_item, ck_item[cart], ck_item[buy]])
    o = np.lexsort((ev_key, ev_s))
    ev_s, ev_type, ev_q, ev_item = ev_s[o], ev_type[o], ev_q[o], ev_item[o]
    gap = rng.exponential(45.0, len(ev_s)) + 1.0
    cs = np.cumsum(gap)
    first_ev = np.searchsorted(ev_s, ev_s, side="left")
    offset = np.minimum(cs - cs[first_ev] + gap[first_ev], 3500.0)
    ev_sec = (s_day[ev_s] - 1) * DAY_S + s_sec[ev_s] + 5.0 + offset
    # text of every concept this chunk wrote (searches, shown, the ranker's top-K)
    codes = np.unique(np.concatenate([sr_q, topk[topk >= 0].ravel()]))
    c_leaf, c_vals = decode(codes, nv)
    texts = render(lex, c_leaf, c_vals)
    leaves = pl.Series(lex.leaves)

    def text_of(code: np.ndarray) -> pl.Series:
        idx = np.searchsorted(codes, np.maximum(code, 0))
        return texts.gather(pl.Series(idx)).set(pl.Series(code < 0), None) if len(code) else pl.Series([], dtype=pl.String)

    ev_leaf = np.where(ev_q >= 0, decode(np.maximum(ev_q, 0), nv)[0], (ev_item - 1) // I)
    events = pl.DataFrame({
        "user_id": uid[s_u[ev_s]],
        "ts": pl.Series(start_us + (ev_sec * 1e6).astype(np.int64)).cast(schema.TS),
        "type": TYPE_NAMES[ev_type],
        "query": text_of(ev_q),
        "item_id": pl.Series(ev_item).replace(-1, None),
        "category": leaves.gather(pl.Series(ev_leaf)),
        "session_id": s_id[ev_s],
    })
    K_r = topk.shape[1]
    exposures = pl.DataFrame({
        "exposure_id": s_id[e],
        "user_id": uid[eu],
        "ts": pl.Series(start_us + (((ed - 1) * DAY_S + s_sec[e]) * 1e6).astype(np.int64)).cast(schema.TS),
        "session_id": s_id[e],
        "shown": text_of(shown.ravel()).reshape((len(e), 3)).cast(pl.List(pl.String)),
        "clicked": pl.Series(clicked.ravel()).reshape((len(e), 3)).cast(pl.List(pl.Boolean)),
        "ranker_topk": text_of(topk.ravel()).reshape((len(e), K_r)).cast(pl.List(pl.String)).list.drop_nulls(),
    })
    users = pl.DataFrame({
        "user_id": uid,
        "gender": np.array(GENDERS)[rng.integers(0, 2, n)],
        "age": np.clip(rng.normal(34, 11, n), 16, 75).astype(np.int32),
        "city": np.array(CITIES)[rng.integers(0, len(CITIES), n)],
        "occupation": np.array(OCCUPATIONS)[rng.integers(0, len(OCCUPATIONS), n)],
        "first_seen": pl.Series(start_us + (first - 1) * DAY_S * 1_000_000).cast(schema.TS),
    })
    fr = np.concatenate([first[:, None, None].repeat(K, 1), chg], axis=2)
    to = np.minimum(np.concatenate([chg - 1, np.full((n, K, 1), D)], axis=2), D)
    keep = (w[..., None] > 0) & (fr <= D) & (fr <= to)
    ii = np.nonzero(keep)
    rows = {"u": ii[0], "slot": ii[1], "weight": w[ii[0], ii[1]], "leaf": segs[ii], "from": fr[ii], "to": to[ii]}
    if wc.missions:
        mr = _mission_rows(wc, s_u, s_day, cat, bought, buy_mis)
        rows = {key: np.concatenate([rows[key], mr[key]]) for key in rows}
    interests = pl.DataFrame({
        "user_id": uid[rows["u"]], "slot": rows["slot"].astype(np.int32), "weight": rows["weight"].astype(float),
        "category": leaves.gather(pl.Series(rows["leaf"])), "from_day": rows["from"].astype(np.int32),
        "to_day": rows["to"].astype(np.int32), "cold_start": pl.Series(np.zeros(len(rows["u"]), bool)),
    })
    taste = pl.DataFrame({"user_id": np.repeat(uid, len(FACET_TYPES)),
                          "facet": np.tile(np.arange(len(FACET_TYPES), dtype=np.int32), n),
                          "value": fav.ravel().astype(np.int32)})
    queries = pl.DataFrame({"query": texts, "category": leaves.gather(pl.Series(c_leaf)),
                            "pop": (pop_logp(st.leaf_p, st.fval_p, wc.facet_counts, c_leaf, c_vals) - st.lo)
                            / (st.hi - st.lo)})
    return {"users": users, "events": events, "exposures": exposures, "interests": interests, "taste": taste,
            "queries": queries}


def static_tables(st: V2Static, wc: WorldConfig, seed: int) -> dict[str, pl.DataFrame]:
    lex, I = st.lex, wc.items_per_category
    L = lex.n_leaves
    rng = np.random.default_rng([seed, 37])
    leaf = np.repeat(np.arange(L), I)
    vals = st.item_vals.reshape(L * I, -1)
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
        "item_id": np.arange(1, L * I + 1),
        "title": (brand + " " + desc).str.to_titlecase(),
        "category": pl.Series(lex.leaves).gather(pl.Series(leaf)),
        "category_path": (pl.Series(lex.parents) + " > " + pl.Series(lex.leaves)).gather(pl.Series(leaf)),
        "brand": brand.str.to_titlecase(),
        "price": np.round(base[leaf] * np.exp(0.35 * tier + rng.normal(0, 0.2, L * I)), 2),
        "description": desc + " by " + brand.str.to_titlecase(),
    })
    categories = pl.DataFrame({"category": lex.leaves, "parent": lex.parents})
    return {"items": items, "categories": categories}


def write_hidden(st: V2Static, wc: WorldConfig, out: Path) -> None:
    d = hidden_dir(out)
    d.mkdir(parents=True, exist_ok=True)
    (d / "v2.json").write_text(json.dumps({
        "taste": wc.taste, "click_taste": wc.click_taste, "facet_counts": list(wc.facet_counts),
        "leaf_p": st.leaf_p.tolist(), "fval_p": [p.tolist() for p in st.fval_p], "lo": st.lo, "hi": st.hi,
        "rooms": list(ROOMS), "room": st.room.tolist(),
    }))
