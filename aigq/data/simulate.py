"""The simulated e-commerce world: users, items, behaviour events and HintQ exposures from a hidden user model.

Users are simulated in chunks of ``world.chunk_users``, fully vectorised in numpy, and each chunk is streamed to
its own parquet part, so a million users never sit in memory at once. The world is a pure function of
(config, seed): the same seed gives byte-identical tables.

Hidden user model (``hidden.py`` has the click model; the mixture is written to ``world/hidden/interests``):
- each user has a mixture over 1..``interests_max`` leaf categories (Dirichlet weights, categories drawn by a Zipf
  category popularity); each interest drifts on geometric days to a sibling category (half the time) or a new one;
- with ``profile_affinity`` a > 0, demographics shape interests: each leaf category c has hidden skews G_c, A_c ~
  N(0, 1), and a user's interest categories (first and drifted-to) are drawn ∝ pop_c · exp(a·(g·G_c + z·A_c)), g = ±1
  by gender, z = (age − 34)/11 — a signal in the profile that co-occurrence of behaviours cannot see (a = 0: the
  categories ignore the profile, and every table is byte-identical to one simulated before the knob existed);
- a session explores a sibling of its intent category with probability ``serendipity``;
- cold-start users arrive in the last ``cold_start_days`` days with few sessions;
- queries inside a category and items inside a category follow Zipf popularity (real queries first).

A session is: optionally a HintQ exposure at its start (the legacy production recommender: popularity + co-click,
i.e. candidates from the categories of the user's last sessions and globally popular queries, ranked by log
popularity + a co-click boost + noise; the 3 top queries are shown, clicks follow the hidden click model with
position bias, and a clicked hint becomes a search); then 1+Poisson searches in the intent category, Poisson item
clicks per search, carts and buys.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from aigq.config import WorldConfig
from aigq.data import schema
from aigq.data.hidden import ClickParams, click_probability, hidden_dir, write_params
from aigq.data.vocabulary import BRANDS, MODIFIERS, Vocabulary, load_vocabulary

DAY_S = 86_400
GENDERS = ["Female", "Male"]
CITIES = [
    "Beijing",
    "Shanghai",
    "Hangzhou",
    "Shenzhen",
    "Guangzhou",
    "Chengdu",
    "Wuhan",
    "Nanjing",
    "Xi'an",
    "Chongqing",
    "Seattle",
    "Boston",
    "Austin",
    "Denver",
    "London",
    "Berlin",
]
OCCUPATIONS = [
    "Student",
    "Engineer",
    "Teacher",
    "Medical Staff",
    "Designer",
    "Sales",
    "Civil Servant",
    "Freelancer",
    "Retired",
    "Homemaker",
    "Manager",
    "Worker",
]
TYPE_NAMES = np.array(schema.EVENT_TYPES)
N_CAND = 16  # legacy ranker candidates per exposure before de-duplication


@dataclass
class _Static:
    """World-level arrays shared by all chunks."""

    vocab: Vocabulary
    cat_cum: np.ndarray  # category popularity CDF
    q_key: np.ndarray  # category id + within-category CDF: searchsorted target for query sampling
    q_pop: np.ndarray  # global query popularity (sums to 1)
    q_popnorm: np.ndarray  # log popularity scaled to [0, 1]
    item_cum: np.ndarray  # within-category item popularity CDF
    sib_flat: np.ndarray
    sib_off: np.ndarray
    sib_cnt: np.ndarray
    parent_id: np.ndarray
    cat_p: np.ndarray  # category popularity (sums to 1)
    cat_skew: np.ndarray  # (C, 2) hidden gender / age skew per category (used when world.profile_affinity > 0)


def _zipf(n: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


def _build_static(wc: WorldConfig, seed: int) -> _Static:
    v = load_vocabulary(wc.vocabulary, wc.templates_per_category, seed)
    rng = np.random.default_rng([seed, 3])
    C = v.n_categories
    cat_p = _zipf(C, wc.category_zipf)[rng.permutation(C)]
    within = np.empty(len(v.queries))
    q_key = np.empty(len(v.queries))
    for c in range(C):
        idx = np.nonzero(v.q_cat == c)[0]
        p = _zipf(len(idx), wc.query_zipf)
        within[idx] = p
        cum = np.cumsum(p)
        cum[-1] = 1.0
        q_key[idx] = c + cum
    q_pop = within * cat_p[v.q_cat]
    logp = np.log(q_pop)
    popnorm = (logp - logp.min()) / max(logp.max() - logp.min(), 1e-12)
    parents = sorted(set(v.parents))
    parent_id = np.array([parents.index(p) for p in v.parents])
    sibs = []
    for c in range(C):
        s = [o for o in np.nonzero(parent_id == parent_id[c])[0] if o != c]
        sibs.append(
            s or [int(o) for o in rng.choice([o for o in range(C) if o != c] or [c], size=min(3, max(C - 1, 1)))]
        )
    cat_cum = np.cumsum(cat_p)
    cat_cum[-1] = 1.0
    item_cum = np.cumsum(_zipf(wc.items_per_category, wc.item_zipf))
    item_cum[-1] = 1.0
    return _Static(
        vocab=v,
        cat_cum=cat_cum,
        q_key=q_key,
        q_pop=q_pop,
        q_popnorm=popnorm,
        item_cum=item_cum,
        sib_flat=np.concatenate([np.asarray(s, dtype=np.int64) for s in sibs]),
        sib_off=np.cumsum([0] + [len(s) for s in sibs[:-1]]),
        sib_cnt=np.array([len(s) for s in sibs]),
        parent_id=parent_id,
        cat_p=cat_p,
        cat_skew=np.random.default_rng([seed, 7]).standard_normal((C, 2)),
    )


def _sample_cat(st: _Static, u: np.ndarray) -> np.ndarray:
    return np.minimum(np.searchsorted(st.cat_cum, u, side="right"), len(st.cat_cum) - 1)


def _user_cat_cum(st: _Static, affinity: float, gender: np.ndarray, age: np.ndarray) -> np.ndarray:
    """(n, C) per-user category CDF ∝ pop_c · exp(affinity·(g·G_c + z·A_c)) (module docstring)."""
    g, z = np.where(gender == 0, 1.0, -1.0), (age - 34.0) / 11.0
    logit = np.log(st.cat_p)[None, :] + affinity * (g[:, None] * st.cat_skew[None, :, 0] + z[:, None] * st.cat_skew[None, :, 1])
    w = np.exp(logit - logit.max(1, keepdims=True))
    cum = np.cumsum(w / w.sum(1, keepdims=True), 1)
    cum[:, -1] = 1.0
    return cum


def _sample_user_cat(cum: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Categories for draws ``u`` (n, K) from each user's own CDF ``cum`` (n, C)."""
    return np.minimum((cum[:, None, :] < u[..., None]).sum(-1), cum.shape[1] - 1)


def _sample_query(st: _Static, cat: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.minimum(np.searchsorted(st.q_key, cat + u, side="right"), len(st.q_key) - 1)


def _sibling(st: _Static, cat: np.ndarray, u: np.ndarray) -> np.ndarray:
    return st.sib_flat[st.sib_off[cat] + (u * st.sib_cnt[cat]).astype(np.int64)]


def _static_tables(st: _Static, wc: WorldConfig, seed: int) -> dict[str, pl.DataFrame]:
    v, rng, n_items = st.vocab, np.random.default_rng([seed, 11]), wc.items_per_category
    cat = np.repeat(np.arange(v.n_categories), n_items)
    brand = np.array(BRANDS)[rng.integers(0, len(BRANDS), len(cat))]
    mod = np.array(MODIFIERS)[rng.integers(0, len(MODIFIERS), len(cat))]
    noun = np.array([n[:-1] if n.endswith("s") and not n.endswith("ss") else n for n in v.nouns()])[cat]
    cats, parents = np.array(v.categories), np.array(v.parents)
    base_price = np.exp(rng.normal(3.5, 0.8, v.n_categories))
    items = pl.DataFrame(
        {
            "item_id": np.arange(1, len(cat) + 1),
            "title": np.char.title(np.char.add(np.char.add(brand, " "), np.char.add(np.char.add(mod, " "), noun))),
            "category": cats[cat],
            "category_path": np.char.add(np.char.add(parents[cat], " > "), cats[cat]),
            "brand": brand,
            "price": np.round(base_price[cat] * np.exp(rng.normal(0, 0.4, len(cat))), 2),
            "description": np.char.add(np.char.add(mod, " "), np.char.add(noun, np.char.add(" by ", brand))),
        }
    )
    queries = pl.DataFrame({"query": v.queries, "category": cats[v.q_cat]})
    categories = pl.DataFrame({"category": v.categories, "parent": v.parents})
    popularity = queries.with_columns(parent=parents[v.q_cat], pop=st.q_popnorm)
    return {"items": items, "queries": queries, "categories": categories, "query_popularity": popularity}


def _chunk(
    st: _Static, wc: WorldConfig, seed: int, ci: int, uid0: int, n: int, start_us: int
) -> dict[str, pl.DataFrame]:
    rng = np.random.default_rng([seed, 1000 + ci])
    D, K, V = wc.days, wc.interests_max, st.vocab
    uid = np.arange(uid0, uid0 + n, dtype=np.int64)
    cold = rng.random(n) < wc.cold_start_share
    late = rng.integers(1, max(D - wc.cold_start_days, 1) + 1, n)
    first = np.where(cold, rng.integers(D - wc.cold_start_days + 1, D + 1, n), np.where(rng.random(n) < 0.7, 1, late))
    # demographics: their own stream, so that profile_affinity = 0 leaves every other draw as it was
    prof = np.random.default_rng([seed, 3000 + ci])
    gender, age = prof.integers(0, 2, n), np.clip(prof.normal(34, 11, n), 16, 75).astype(np.int32)
    ucum = _user_cat_cum(st, wc.profile_affinity, gender, age) if wc.profile_affinity > 0 else None

    def draw_cat(u: np.ndarray) -> np.ndarray:  # one category per draw: the user's own CDF, else the global one
        return _sample_cat(st, u) if ucum is None else _sample_user_cat(ucum, u)

    w, chg, segs = interest_mixture(rng, wc, first, draw_cat, lambda c, u: _sibling(st, c, u))
    # sessions, sorted by (user, day, start second)
    lam = rng.gamma(1.5, wc.sessions_per_day / 1.5, n) * np.where(cold, 0.6, 1.0)
    ns = rng.poisson(lam[:, None] * (np.arange(1, D + 1)[None, :] >= first[:, None]))
    ud = np.repeat(np.arange(n * D), ns.ravel())
    s_u, s_day, s_sec = ud // D, ud % D + 1, rng.integers(0, DAY_S - 3600, len(ud))
    s_u, s_day, s_sec, s_ord, s_id = sort_sessions(uid, s_u, s_day, s_sec)
    NS = len(s_u)
    slot = np.minimum((np.cumsum(w, 1)[s_u] < rng.random(NS)[:, None]).sum(1), K - 1)
    seg = (s_day[:, None] >= chg[s_u, slot]).sum(1)
    cat = segs[s_u, slot, seg]
    cat = np.where(rng.random(NS) < wc.serendipity, _sibling(st, cat, rng.random(NS)), cat)
    prev1, prev2 = np.roll(cat, 1), np.roll(cat, 2)
    prev1[s_ord < 1], prev2[s_ord < 2] = -1, -1
    # HintQ exposures by the legacy recommender (popularity + co-click on the last sessions' categories)
    e = np.nonzero(rng.random(NS) < wc.hint_exposure_rate)[0]
    NE, p1, p2 = len(e), prev1[e][:, None], prev2[e][:, None]
    cc = _sample_cat(st, rng.random((NE, N_CAND)))
    cc[:, 0:6] = np.where(p1 >= 0, p1, cc[:, 0:6])
    cc[:, 6:9] = np.where(p2 >= 0, p2, cc[:, 6:9])
    cc[:, 9:12] = np.where(p1 >= 0, _sibling(st, np.maximum(p1, 0).repeat(3, 1), rng.random((NE, 3))), cc[:, 9:12])
    cq = _sample_query(st, cc, rng.random((NE, N_CAND)))
    score = np.log(st.q_pop[cq]) + 1.5 * (cc == p1) + 0.8 * (cc == p2) + 0.5 * rng.gumbel(size=(NE, N_CAND))
    topk = ranker_topk(cq, score, wc.ranker_top_k)
    ok = (topk[:, :3] >= 0).all(1)
    e, topk = e[ok], topk[ok]
    shown, eu, ed = topk[:, :3], s_u[e], s_day[e]
    cur = np.take_along_axis(segs[eu], (ed[:, None, None] >= chg[eu]).sum(2)[..., None], 2)[..., 0]  # (NE, K)
    we, sh_cat = w[eu], V.q_cat[shown]
    same = cur[:, None, :] == sh_cat[:, :, None]
    interest = (same * we[:, None, :]).sum(2)
    related = ((st.parent_id[cur][:, None, :] == st.parent_id[sh_cat][:, :, None]) & ~same & (we[:, None, :] > 0)).any(
        2
    )
    params = click_params(wc)
    p_click = click_probability(interest, related.astype(float), st.q_popnorm[shown], np.arange(3)[None, :], params)
    clicked = rng.random(p_click.shape) < p_click
    # events: clicked hints become searches, then the organic session
    he, hpos = np.nonzero(clicked)
    m = 1 + rng.poisson(wc.searches_per_session, NS)
    sr_s = np.repeat(np.arange(NS), m)
    sr_j = np.arange(len(sr_s)) - np.repeat(np.cumsum(m) - m, m)
    sr_q = _sample_query(st, cat[sr_s], rng.random(len(sr_s)))
    c = np.minimum(rng.poisson(wc.clicks_per_search, len(sr_s)), 30)
    ck_s, ck_key = np.repeat(sr_s, c), np.repeat(10 + 100 * sr_j, c)
    ck_key = ck_key + 1 + 3 * (np.arange(len(ck_s)) - np.repeat(np.cumsum(c) - c, c))
    ck_item = cat[ck_s] * wc.items_per_category + np.searchsorted(st.item_cum, rng.random(len(ck_s)), side="right") + 1
    cart = rng.random(len(ck_s)) < wc.cart_rate
    buy = cart & (rng.random(len(ck_s)) < wc.buy_rate)
    ev_s = np.concatenate([e[he], sr_s, ck_s, ck_s[cart], ck_s[buy]])
    ev_key = np.concatenate([hpos, 10 + 100 * sr_j, ck_key, ck_key[cart] + 1, ck_key[buy] + 2])
    ev_type = np.concatenate(
        [np.zeros(len(he) + len(sr_s), np.int64), np.full(len(ck_s), 1), np.full(cart.sum(), 2), np.full(buy.sum(), 3)]
    )
    ev_q = np.concatenate([shown[he, hpos], sr_q, np.full(len(ck_s) + cart.sum() + buy.sum(), -1)])
    ev_item = np.concatenate([np.full(len(he) + len(sr_s), -1), ck_item, ck_item[cart], ck_item[buy]])
    o = np.lexsort((ev_key, ev_s))
    ev_s, ev_type, ev_q, ev_item = ev_s[o], ev_type[o], ev_q[o], ev_item[o]
    ev_sec = event_seconds(rng, ev_s, s_day, s_sec)
    ev_cat = np.where(ev_q >= 0, V.q_cat[np.maximum(ev_q, 0)], (ev_item - 1) // wc.items_per_category)
    qs, cats = pl.Series(V.queries), pl.Series(V.categories)
    events = pl.DataFrame(
        {
            "user_id": uid[s_u[ev_s]],
            "ts": pl.Series(start_us + (ev_sec * 1e6).astype(np.int64)).cast(schema.TS),
            "type": TYPE_NAMES[ev_type],
            "query": qs.gather(pl.Series(ev_q).replace(-1, None)),
            "item_id": pl.Series(ev_item).replace(-1, None),
            "category": cats.gather(ev_cat),
            "session_id": s_id[ev_s],
        }
    )
    K_r = topk.shape[1]
    exposures = pl.DataFrame(
        {
            "exposure_id": s_id[e],
            "user_id": uid[eu],
            "ts": pl.Series(start_us + (((ed - 1) * DAY_S + s_sec[e]) * 1e6).astype(np.int64)).cast(schema.TS),
            "session_id": s_id[e],
            "shown": qs.gather(pl.Series(shown.ravel())).reshape((len(e), 3)).cast(pl.List(pl.String)),
            "clicked": pl.Series(clicked.ravel()).reshape((len(e), 3)).cast(pl.List(pl.Boolean)),
            "ranker_topk": qs.gather(pl.Series(topk.ravel()).replace(-1, None))
            .reshape((len(e), K_r))
            .cast(pl.List(pl.String))
            .list.drop_nulls(),
        }
    )
    # always drawn, so that the stream stays as it was; with profile_affinity the profile the interests came from
    gender_col, age_col = rng.integers(0, 2, n), np.clip(rng.normal(34, 11, n), 16, 75).astype(np.int32)
    if wc.profile_affinity > 0:
        gender_col, age_col = gender, age
    users = pl.DataFrame(
        {
            "user_id": uid,
            "gender": np.array(GENDERS)[gender_col],
            "age": age_col,
            "city": np.array(CITIES)[rng.integers(0, len(CITIES), n)],
            "occupation": np.array(OCCUPATIONS)[rng.integers(0, len(OCCUPATIONS), n)],
            "first_seen": pl.Series(start_us + (first - 1) * DAY_S * 1_000_000).cast(schema.TS),
        }
    )
    # hidden interests: one row per (user, interest, segment) with the days it is active
    ii, fr, to = interest_segments(first, chg, w, D)
    interests = pl.DataFrame(
        {
            "user_id": uid[ii[0]],
            "slot": ii[1].astype(np.int32),
            "weight": w[ii[0], ii[1]],
            "category": cats.gather(segs[ii]),
            "from_day": fr[ii].astype(np.int32),
            "to_day": to[ii].astype(np.int32),
            "cold_start": cold[ii[0]],
        }
    )
    return {"users": users, "events": events, "exposures": exposures, "interests": interests}


def interest_mixture(rng: np.random.Generator, wc: WorldConfig, first: np.ndarray,
                     draw: Callable[[np.ndarray], np.ndarray], sibling: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    """Each user's interests (module docstring): mixture weights ``w`` (n, K), change days ``chg`` (n, K, S−1) and
    the category of each of the S segments ``segs`` (n, K, S); ``draw(u)`` maps uniforms to categories, ``sibling(c,
    u)`` to a sibling of c (world v1's categories or world v2's leaves)."""
    n, K, S, D = len(first), wc.interests_max, 3, wc.days
    k = np.clip(1 + rng.poisson(max(wc.interests_mean - 1, 0), n), 1, K)
    g = rng.gamma(1.0, size=(n, K)) * (np.arange(K)[None, :] < k[:, None])
    w = g / g.sum(1, keepdims=True)
    gaps = rng.geometric(wc.drift_per_day, (n, K, S - 1)) if wc.drift_per_day > 0 else np.full((n, K, S - 1), 10 * D)
    chg = first[:, None, None] + np.cumsum(gaps, axis=2)
    segs = np.empty((n, K, S), dtype=np.int64)
    segs[..., 0] = draw(rng.random((n, K)))
    for s in range(1, S):
        sib = sibling(segs[..., s - 1], rng.random((n, K)))
        segs[..., s] = np.where(rng.random((n, K)) < 0.5, sib, draw(rng.random((n, K))))
    return w, chg, segs


def sort_sessions(uid: np.ndarray, s_u: np.ndarray, s_day: np.ndarray, s_sec: np.ndarray):
    """Sessions sorted by (user, day, start second) → (s_u, s_day, s_sec, ordinal within the user, session id)."""
    order = np.lexsort((s_sec, s_day, s_u))
    s_u, s_day, s_sec = s_u[order], s_day[order], s_sec[order]
    s_ord = np.arange(len(s_u)) - np.searchsorted(s_u, s_u, side="left")
    return s_u, s_day, s_sec, s_ord, uid[s_u] * (1 << 20) + s_ord


def ranker_topk(cq: np.ndarray, score: np.ndarray, k: int) -> np.ndarray:
    """The legacy ranker's top ``k`` candidate ids per exposure (duplicates scored −inf; −1 pads short rows)."""
    score = score.copy()
    srt = np.argsort(cq, axis=1, kind="stable")
    sq = np.take_along_axis(cq, srt, 1)
    dup = np.zeros_like(sq, dtype=bool)
    dup[:, 1:] = sq[:, 1:] == sq[:, :-1]
    np.put_along_axis(score, srt, np.where(dup, -np.inf, np.take_along_axis(score, srt, 1)), 1)
    rank = np.argsort(-score, axis=1, kind="stable")[:, :k]
    return np.where(np.isfinite(np.take_along_axis(score, rank, 1)), np.take_along_axis(cq, rank, 1), -1)


def event_seconds(rng: np.random.Generator, ev_s: np.ndarray, s_day: np.ndarray, s_sec: np.ndarray) -> np.ndarray:
    """Seconds since the world's start of events sorted by session: exponential gaps (mean 45 s) from the session's
    start, capped inside its hour."""
    gap = rng.exponential(45.0, len(ev_s)) + 1.0
    cs = np.cumsum(gap)
    first_ev = np.searchsorted(ev_s, ev_s, side="left")
    offset = np.minimum(cs - cs[first_ev] + gap[first_ev], 3500.0)
    return (s_day[ev_s] - 1) * DAY_S + s_sec[ev_s] + 5.0 + offset


def interest_segments(first: np.ndarray, chg: np.ndarray, w: np.ndarray, D: int):
    """Hidden interest rows: indices (user, slot, segment) of the live segments and their (from_day, to_day)."""
    n, K = w.shape
    fr = np.concatenate([first[:, None, None].repeat(K, 1), chg], axis=2)
    to = np.minimum(np.concatenate([chg - 1, np.full((n, K, 1), D)], axis=2), D)
    keep = (w[..., None] > 0) & (fr <= D) & (fr <= to)
    return np.nonzero(keep), fr, to


def click_params(wc: WorldConfig) -> ClickParams:
    return ClickParams(wc.click_base, wc.click_interest, wc.click_related, wc.click_popularity, tuple(wc.position_bias))


def _inject_malformed(events: pl.DataFrame, exposures: pl.DataFrame, rate: float, rng: np.random.Generator):
    """Corrupt a share of rows on purpose (one of six kinds each) so validation and quarantine are exercised."""
    kind = np.full(len(events), -1)
    bad = np.nonzero(rng.random(len(events)) < rate)[0]
    kind[bad] = np.arange(len(bad)) % 6
    k = pl.Series(kind)
    events = events.with_columns(
        user_id=pl.when(k == 0).then(None).when(k == 5).then(10**12).otherwise(pl.col("user_id")),
        type=pl.when(k == 1)
        .then(pl.lit("view_item"))
        .when(k == 2)
        .then(pl.lit("click"))
        .when(k == 4)
        .then(pl.lit("search"))
        .otherwise(pl.col("type")),
        item_id=pl.when(k == 2).then(10**12).otherwise(pl.col("item_id")),
        query=pl.when(k == 4).then(None).otherwise(pl.col("query")),
        ts=pl.when(k == 3).then(pl.datetime(1999, 1, 1)).otherwise(pl.col("ts")),
    )
    bad_e = pl.Series(rng.random(len(exposures)) < rate)
    exposures = exposures.with_columns(shown=pl.when(bad_e).then(pl.col("shown").list.head(2)).otherwise("shown"))
    return events, exposures, {"events": len(bad), "exposures": int(bad_e.sum())}


def simulate_world(
    wc: WorldConfig, seed: int, out: str | Path, progress: Callable[[int, int], None] | None = None
) -> dict:
    """Simulate the world described by ``wc`` into folder ``out``; returns the counts also written to meta.json."""
    out = Path(out)
    if wc.query_space == "compositional":
        from aigq.data import world_v2

        return world_v2.simulate(wc, seed, out, progress)
    st = _build_static(wc, seed)
    for name, df in _static_tables(st, wc, seed).items():
        if name == "query_popularity":
            hidden_dir(out).mkdir(parents=True, exist_ok=True)
            df.write_parquet(hidden_dir(out) / "query_popularity.parquet")
        else:
            schema.write_part(out, name, df)
    write_params(out, click_params(wc))
    start_us = int(dt.datetime.fromisoformat(wc.start_date).replace(tzinfo=dt.UTC).timestamp()) * 1_000_000
    counts = {"users": 0, "events": 0, "exposures": 0, "clicked_exposures": 0}
    injected = {"events": 0, "exposures": 0}
    n_chunks = -(-wc.users // wc.chunk_users)
    for ci in range(n_chunks):
        uid0 = 1 + ci * wc.chunk_users
        tables = _chunk(st, wc, seed, ci, uid0, min(wc.chunk_users, wc.users - uid0 + 1), start_us)
        counts["clicked_exposures"] += int(tables["exposures"]["clicked"].list.any().sum())
        if wc.malformed_rate > 0:
            rng = np.random.default_rng([seed, 5000 + ci])
            tables["events"], tables["exposures"], inj = _inject_malformed(
                tables["events"], tables["exposures"], wc.malformed_rate, rng
            )
            injected = {t: injected[t] + inj[t] for t in injected}
        for name in ("users", "events", "exposures"):
            schema.write_part(out, name, tables[name], ci)
            counts[name] += len(tables[name])
        (hidden_dir(out) / "interests").mkdir(parents=True, exist_ok=True)
        tables["interests"].write_parquet(hidden_dir(out) / "interests" / f"part-{ci:05d}.parquet")
        if progress:
            progress(ci + 1, n_chunks)
    meta = {
        "source": "simulator",
        "seed": seed,
        "start_date": wc.start_date,
        "days": wc.days,
        "vocabulary": wc.vocabulary,
        "categories": st.vocab.n_categories,
        "queries": len(st.vocab.queries),
        "items": st.vocab.n_categories * wc.items_per_category,
        "profile_affinity": wc.profile_affinity,
        "injected_malformed": injected,
        **counts,
    }
    schema.write_meta(out, meta)
    return meta

