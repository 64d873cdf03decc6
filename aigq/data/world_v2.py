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

The static concept space (leaves, rooms, popularity, items) and the pure functions the hidden model shares are in
``concepts.py``. The hidden click model (``hidden.py``) reads the same quantities back: interest rows (mixture segments, plus
mission rows with weight ``mission_weight`` and satiation rows with weight −1; interest is clipped at 0), the
favourites in ``hidden/taste``, and ``hidden/v2.json`` (τ, click_taste, the popularity tables and bounds).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from aigq.config import WorldConfig
from aigq.data import schema
from aigq.data.concepts import (
    DAY_S,
    ITEM_QUERY_MATCH,
    ITEM_TASTE,
    N_CAND,
    ROOMS,
    V2Static,
    _pick,
    decode,
    draw_facets,
    encode,
    pop_logp,
    render,
    taste_lift,
)
from aigq.data.hidden import click_probability, hidden_dir, write_params
from aigq.data.lexicon import FACET_TYPES


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
    from aigq.data.simulate import (
        CITIES,
        GENDERS,
        OCCUPATIONS,
        TYPE_NAMES,
        event_seconds,
        interest_mixture,
        interest_segments,
        ranker_topk,
        sort_sessions,
    )

    rng = np.random.default_rng([seed, 2000 + ci])
    D, K, lex, tau = wc.days, wc.interests_max, st.lex, wc.taste
    nv, n_items = lex.n_values, wc.items_per_category
    uid = np.arange(uid0, uid0 + n, dtype=np.int64)
    first, s_u, s_day = _sessions(rng, wc, n)
    fav = np.stack([np.searchsorted(np.cumsum(p)[:-1], rng.random(n), side="right") for p in st.fval_p], 1)

    def leaf_of(u: np.ndarray) -> np.ndarray:
        return np.minimum(np.searchsorted(st.leaf_cum, u, side="right"), lex.n_leaves - 1)

    def draw_leaf(shape):
        return leaf_of(rng.random(shape))

    w, chg, segs = interest_mixture(rng, wc, first, leaf_of, lambda c, u: _pick(st.sib, c, u))
    s_sec = rng.integers(0, DAY_S - 3600, len(s_u))
    s_u, s_day, s_sec, s_ord, s_id = sort_sessions(uid, s_u, s_day, s_sec)
    NS = len(s_u)
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
    cv = draw_facets(rng, st, _categorical(rng, wc.facet_counts, NE * N_CAND), None, 0.0)
    logp = pop_logp(st.leaf_p, st.fval_p, wc.facet_counts, cc.ravel(), cv).reshape(NE, N_CAND)
    cq = encode(cc.ravel(), cv, nv).reshape(NE, N_CAND)
    score = logp + 1.5 * (cc == p1) + 0.8 * (cc == p2) + 0.5 * rng.gumbel(size=(NE, N_CAND))
    topk = ranker_topk(cq, score, wc.ranker_top_k)
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
    sr_vals = draw_facets(rng, st, nf, fav[sr_user], tau)
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
    ck_item = sr_leaf[ck_r] * n_items + np.argmax(sc + rng.gumbel(size=sc.shape), 1) + 1
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
    ev_sec = event_seconds(rng, ev_s, s_day, s_sec)
    # text of every concept this chunk wrote (searches, shown, the ranker's top-K)
    codes = np.unique(np.concatenate([sr_q, topk[topk >= 0].ravel()]))
    c_leaf, c_vals = decode(codes, nv)
    texts = render(lex, c_leaf, c_vals)
    leaves = pl.Series(lex.leaves)

    def text_of(code: np.ndarray) -> pl.Series:
        idx = np.searchsorted(codes, np.maximum(code, 0))
        return texts.gather(pl.Series(idx)).set(pl.Series(code < 0), None) if len(code) else pl.Series([], dtype=pl.String)

    ev_leaf = np.where(ev_q >= 0, decode(np.maximum(ev_q, 0), nv)[0], (ev_item - 1) // n_items)
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
    ii, fr, to = interest_segments(first, chg, w, D)
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


def simulate(wc: WorldConfig, seed: int, out: Path, progress: Callable[[int, int], None] | None = None) -> dict:
    """Simulate world v2 into ``out`` (``simulate.simulate_world`` dispatches here): the v1 folder layout plus the
    public ``lexicon.json`` and the hidden taste; returns the counts also written to meta.json."""
    from aigq.data import concepts
    from aigq.data.simulate import _inject_malformed, click_params

    st = concepts.build_static(wc, seed)
    for name, df in concepts.static_tables(st, wc, seed).items():
        schema.write_part(out, name, df)
    st.lex.write(out)
    params = click_params(wc)
    write_params(out, params)
    write_hidden(st, wc, out)
    start_us = int(dt.datetime.fromisoformat(wc.start_date).replace(tzinfo=dt.UTC).timestamp()) * 1_000_000
    counts = {"users": 0, "events": 0, "exposures": 0, "clicked_exposures": 0}
    injected = {"events": 0, "exposures": 0}
    queries = []
    n_chunks = -(-wc.users // wc.chunk_users)
    for ci in range(n_chunks):
        uid0 = 1 + ci * wc.chunk_users
        t = chunk(st, wc, seed, ci, uid0, min(wc.chunk_users, wc.users - uid0 + 1), start_us, params)
        counts["clicked_exposures"] += int(t["exposures"]["clicked"].list.any().sum())
        if wc.malformed_rate > 0:
            t["events"], t["exposures"], inj = _inject_malformed(
                t["events"], t["exposures"], wc.malformed_rate, np.random.default_rng([seed, 5000 + ci]))
            injected = {k: injected[k] + inj[k] for k in injected}
        for name in ("users", "events", "exposures"):
            schema.write_part(out, name, t[name], ci)
            counts[name] += len(t[name])
        for name in ("interests", "taste"):
            (hidden_dir(out) / name).mkdir(parents=True, exist_ok=True)
            t[name].write_parquet(hidden_dir(out) / name / f"part-{ci:05d}.parquet")
        queries.append(t["queries"])
        if progress:
            progress(ci + 1, n_chunks)
    q = pl.concat(queries).unique("query", keep="first").sort("query")
    schema.write_part(out, "queries", q.select("query", "category"))
    parents = pl.DataFrame({"category": st.lex.leaves, "parent": st.lex.parents})
    q.join(parents, on="category", how="left").select("query", "category", "parent", "pop").write_parquet(
        hidden_dir(out) / "query_popularity.parquet")
    meta = {
        "source": "simulator", "world_version": 2, "seed": seed, "start_date": wc.start_date, "days": wc.days,
        "vocabulary": wc.vocabulary, "categories": st.lex.n_leaves, "queries": q.height,
        "items": st.lex.n_leaves * wc.items_per_category, "taste": wc.taste, "missions": wc.missions,
        "activity": wc.activity, "shuffle_lexicon": wc.shuffle_lexicon, "injected_malformed": injected,
        **counts,
    }
    schema.write_meta(out, meta)
    return meta


def write_hidden(st: V2Static, wc: WorldConfig, out: Path) -> None:
    d = hidden_dir(out)
    d.mkdir(parents=True, exist_ok=True)
    (d / "v2.json").write_text(json.dumps({
        "taste": wc.taste, "click_taste": wc.click_taste, "facet_counts": list(wc.facet_counts),
        "leaf_p": st.leaf_p.tolist(), "fval_p": [p.tolist() for p in st.fval_p], "lo": st.lo, "hi": st.hi,
        "rooms": list(ROOMS), "room": st.room.tolist(),
    }))
