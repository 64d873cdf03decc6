"""The daily AIGQ-Think x2q job (paper §4): a day's triggers → Think policy → trigger → ranked queries index.

``run_think_index(cfg, day)`` (``aigq think-index --day T``, a batch on the Ray cluster):

1. reads and validates the world's logs; the day's *active users* are those with a behaviour on day T;
2. writes each active user's prompt as of the next morning (behaviours up to day T, the shared prompt format);
3. runs the Think policy over them on ``RolloutWorker`` actors (greedy), parses ``T_k => Q_k`` lines and maps each
   trigger index back to its behaviour: every trigger ``x ∈ T_k`` maps to the whole ``Q_k`` (x ↦ Q_k);
   a policy trained for AIGQ-Direct (``aigq_variant`` in its config.json) is skipped with a message: it writes
   plain lists, no groups, so it would fill nothing;
4. ranks each trigger's queries by Eq. 19 (:func:`build_index`) and writes the index to the store under a new
   version, which goes live in one write; also the popularity / co-search fallback tables and, for replays, the
   serving clock; and loads active users' profiles and recent behaviours into the store.

Eq. 19, S(x, q) = α·S_rel(x, q) + (1 − α)·S_eff(q) ([GAP] choices ours):

* S_rel(x, q) = mean over the Think runs in which x is a trigger of 1/(1 + position of q in x's Q_k) (0 when q is
  not in it): how consistently and how early the reasoning associates q with x, in (0, 1];
* S_eff(q) = w·CTR_norm(q) + (1 − w)·pop_norm(q): the CTR model's mean p̂ of q over the contexts it was generated
  for, min–max normalised over the index, and log(1 + searches of q in the popularity window) / log(1 + max).
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from datetime import UTC, date, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from aigq.config import AIGQConfig
from aigq.data import prompt as P
from aigq.data.related import related_index
from aigq.models.factory import variant_mismatch
from aigq.say import Say
from serve_app.records import Behaviour, Records, norm, trigger_key


def trigger_groups(prompt: str, output: str) -> list[tuple[list[str], list[str]]]:
    """A Think output's (trigger keys, queries) per interest point; trigger indices that name no behaviour of the
    prompt are dropped (a group left without triggers feeds no index entry)."""
    behs = P.parse_behaviours(prompt)
    out = []
    for idx, queries in P.parse_think_target(output)[1]:
        keys = list(dict.fromkeys(trigger_key(behs[i][1], behs[i][2]) for i in idx if i in behs))
        out.append((keys, queries))
    return out


def build_index(runs: list[tuple[str, str]], ctr: dict[str, float] | None, popularity: dict[str, int],
                alpha: float, ctr_weight: float, keep: int) -> tuple[dict[str, list[tuple[str, float]]], dict]:
    """``runs``: (prompt, Think output) pairs → {trigger key: [(query, S), …] best first} (Eq. 19), stats."""
    rel: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    n_runs: Counter[str] = Counter()
    surface: dict[str, str] = {}
    parsed = 0
    for prompt, output in runs:
        groups = trigger_groups(prompt, output)
        parsed += any(keys for keys, _ in groups)
        contrib: dict[str, dict[str, float]] = defaultdict(dict)  # this run: x → q → 1/(1 + position)
        for keys, queries in groups:
            for j, q in enumerate(queries):
                surface.setdefault(norm(q), q.strip())
                for x in keys:
                    contrib[x][norm(q)] = max(contrib[x].get(norm(q), 0.0), 1.0 / (1 + j))
        for x, per in contrib.items():
            n_runs[x] += 1
            for q, c in per.items():
                rel[x][q] += c
    qs = {q for per in rel.values() for q in per}
    ctr_norm = _minmax({q: ctr[q] for q in qs if q in ctr}) if ctr else {}
    top = max((popularity.get(q, 0) for q in qs), default=0)
    pop_norm = {q: math.log1p(popularity.get(q, 0)) / math.log1p(top) if top else 0.0 for q in qs}
    w = ctr_weight if ctr_norm else 0.0
    index = {}
    for x, per in rel.items():
        scored = [(surface[q], round(alpha * min(1.0, s / n_runs[x]) +
                                     (1 - alpha) * (w * ctr_norm.get(q, 0.0) + (1 - w) * pop_norm[q]), 6))
                  for q, s in per.items()]
        index[x] = sorted(scored, key=lambda t: (-t[1], t[0]))[:keep]
    stats = {"runs": len(runs), "runs_with_triggers": parsed, "triggers": len(index), "queries": len(qs),
             "entries": sum(map(len, index.values())), "s_eff": "ctr+popularity" if w else "popularity"}
    return index, stats


def _minmax(values: dict[str, float]) -> dict[str, float]:
    if not values:
        return {}
    lo, hi = min(values.values()), max(values.values())
    return {k: (v - lo) / (hi - lo) if hi > lo else 1.0 for k, v in values.items()}


def fallback_tables(beh: pl.DataFrame, events: pl.DataFrame, day: int, window: int, keep: int,
                    start: date) -> tuple[list[tuple[str, float]], dict[str, list[tuple[str, float]]], dict[str, int]]:
    """Popular searches of days (T−window, T] (score = count / max) and co-searched queries (same session)."""
    win = beh.filter((pl.col("type") == "search") & pl.col("day").is_between(day - window + 1, day))
    counts = win.group_by(q=pl.col("content").str.to_lowercase().str.strip_chars()).len().sort(["len", "q"],
                                                                                                descending=[True, False])
    pop = dict(zip(counts["q"].to_list(), counts["len"].to_list(), strict=True))
    top = max(pop.values(), default=1)
    popular = [(q, round(n / top, 6)) for q, n in list(pop.items())[:keep]]
    first, last = start + timedelta(days=day - window), start + timedelta(days=day - 1)  # day d = start + d − 1
    s = events.filter((pl.col("type") == "search") & pl.col("query").is_not_null()
                      & pl.col("ts").dt.date().is_between(first, last))
    s = s.select("session_id", q=pl.col("query").str.to_lowercase().str.strip_chars()).unique()
    pairs = s.join(s, on="session_id").filter(pl.col("q") != pl.col("q_right"))
    co = pairs.group_by("q", "q_right").len().sort(["q", "len", "q_right"], descending=[False, True, False])
    coclick: dict[str, list[tuple[str, float]]] = {}
    for q, grp in co.group_by("q", maintain_order=True):
        n_max = grp["len"].max()
        coclick[q[0]] = [(r, round(n / n_max, 6)) for r, n in zip(grp["q_right"], grp["len"], strict=True)][:20]
    return popular, coclick, {norm(q): n for q, n in pop.items()}


def user_prompts(beh: pl.DataFrame, users: pl.DataFrame, day: int, cfg: AIGQConfig,
                 user_ids: list[int]) -> dict[int, str]:
    """Prompts as of the morning of day T+1 (behaviours of days ≤ T; the shared prompt format)."""
    sc = cfg.samples
    b = beh.filter(pl.col("user_id").is_in(user_ids) & (pl.col("day") <= day)
                   & (pl.col("day") > day - sc.history_days - 1) & pl.col("type").is_in(sc.behaviour_types))
    b = b.sort(["user_id", "ts"], descending=[False, True]).group_by("user_id", maintain_order=True).head(
        sc.history_len)
    prof = {r["user_id"]: r for r in users.filter(pl.col("user_id").is_in(user_ids)).iter_rows(named=True)}
    out: dict[int, list[tuple[int, str, str]]] = {u: [] for u in user_ids}
    for r in b.iter_rows(named=True):
        out[r["user_id"]].append((day + 1 - r["day"], r["type"], r["content"]))
    related = related_index(sc, cfg.samples_dir())  # samples.related_queries: the samples' related-queries index
    return {u: P.format_prompt(prof.get(u, {}), rows, sc, related=related) for u, rows in out.items()}


def run_think_index(cfg: AIGQConfig, day: int, records: Records, policy: Path | None, world: Path | None = None,
                    ctr_folder: Path | None = None, sync_users: bool = True, say: Say | None = None) -> dict[str, Any]:
    """The whole daily job (see the module docstring); returns figures."""
    from actors.rollout import RolloutPool
    from aigq.data.validate import validate_world
    from aigq.ray_boot import ensure_ray
    from aigq.rewards.context import behaviours_table, context_from_prompt
    from rollout.engine import Sampling

    say = say or (lambda _m: None)
    t0 = time.perf_counter()
    v = validate_world(Path(world or cfg.world_dir()), write_quarantine=False)
    start, n_days = date.fromisoformat(str(v.meta["start_date"])[:10]), int(v.meta["days"])
    if not 1 <= day <= n_days:
        raise ValueError(f"--day {day} is outside the world's days 1..{n_days}")
    beh = behaviours_table(v.tables, list(cfg.ctr.behaviour_types), str(start))
    active = sorted(beh.filter(pl.col("day") == day)["user_id"].unique().to_list())
    if cfg.serve.think_users_per_day:
        active = active[: cfg.serve.think_users_per_day]
    prompts = user_prompts(beh, v.tables["users"], day, cfg, active)
    say(f"day {day}: {len(active)} active users → Think prompts")
    runs: list[tuple[str, str]] = []
    why = variant_mismatch(policy, "think") if policy is not None else None
    if why:
        policy = None  # a Direct policy writes no T_k => Q_k groups: as good as none
    if policy is None:
        say(f"no Think policy{f' ({why})' if why else ''}: the index stays empty (fallback tables, clock and users "
            "are still written)")
    elif prompts:
        ensure_ray(cfg)
        pool = RolloutPool(cfg.serve.engine, policy, variant="think", n_workers=cfg.serve.think_workers,
                           num_cpus=cfg.rollout.cpus_per_worker, engine_kw={"dtype": cfg.rollout.dtype})
        try:
            users = list(prompts)
            groups = pool.generate([prompts[u] for u in users], Sampling(n=1, temperature=0.0,
                                                                         max_tokens=cfg.serve.think_max_new_tokens))
        finally:
            pool.shutdown()
        runs = [(prompts[u], g[0].text) for u, g in zip(users, groups, strict=True)]
    t1 = time.perf_counter()
    popular, coclick, pop = fallback_tables(beh, v.tables["events"], day, cfg.serve.popularity_days,
                                            cfg.serve.popular_kept, start)
    ctr = None
    if ctr_folder is not None:
        from aigq.rewards.ctr import CTRScorer

        scorer = CTRScorer.load(ctr_folder)
        ctxs, idx, qs = [], [], []
        for c, (prompt, out) in enumerate(runs):
            ctxs.append(context_from_prompt(prompt))
            for q in P.parse_output(out, "think"):
                idx.append(c)
                qs.append(q)
        if qs:
            p = scorer.score(ctxs, idx, qs)
            acc: dict[str, list[float]] = defaultdict(list)
            for q, pv in zip(qs, p, strict=True):
                acc[norm(q)].append(float(pv))
            ctr = {q: sum(v) / len(v) for q, v in acc.items()}
    sc = cfg.serve
    index, stats = build_index(runs, ctr, pop, sc.think_alpha, sc.think_eff_ctr_weight, sc.think_queries_per_trigger)
    version = f"day-{day:03d}-{int(time.time())}"
    meta = {"day": day, "policy": str(policy) if policy is not None else None,
            "ctr_model": str(ctr_folder) if ctr_folder else None, **stats}
    records.write_think_index(version, index, meta)
    records.write_fallback(popular, coclick)
    records.set_serving_day(start + timedelta(days=day))  # day T+1 (day 1 = start)
    loaded = 0
    if sync_users:
        loaded = _sync_users(records, beh, v.tables["users"], day, cfg.samples.history_days)
    return {"version": version, "active_users": len(active), "seconds_generate": round(t1 - t0, 2),
            "seconds_total": round(time.perf_counter() - t0, 2), "popular": len(popular),
            "coclick_keys": len(coclick), "users_loaded": loaded, **stats}


def _sync_users(records: Records, beh: pl.DataFrame, users: pl.DataFrame, day: int, history_days: int) -> int:
    recent = beh.filter(pl.col("day").is_between(day - history_days, day))
    ids = recent["user_id"].unique().to_list()
    profiles = {r["user_id"]: {k: r[k] for k in ("gender", "age", "occupation", "city") if r.get(k) is not None}
                for r in users.filter(pl.col("user_id").is_in(ids)).iter_rows(named=True)}
    keep = records.history_kept
    b = recent.sort(["user_id", "ts"], descending=[False, True]).group_by("user_id", maintain_order=True).head(keep)
    lists: dict[int, list[Behaviour]] = defaultdict(list)
    for r in b.iter_rows(named=True):
        lists[r["user_id"]].append(Behaviour(r["ts"].replace(tzinfo=UTC).timestamp(), r["type"], r["content"]))
    records.load_users(profiles, dict(lists))
    return len(ids)
