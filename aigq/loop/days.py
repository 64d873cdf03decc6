"""The daily loop's day simulation (``aigq loop``; paper Eq. 15, Figure 3): what the DEPLOYED system shows on day
T+1, the clicks the hidden click model gives it, and the loop copy of the world those logs are written into.

The loop (:mod:`aigq.loop.runner`) keeps, per arm, a **loop copy of the world** (``<loop dir>/<arm>/world``: the
validated public tables, no ``hidden/``). Day T+1's *HintQ requests* are the world's own exposure requests of that
day (exposure_id, user, time, session: when each user opened the homepage; at most ``loop.users_per_day`` users, the
lowest ids — the loop's traffic bucket). For each of those users the deployed HintQ is asked once (one list per
user-day: the store does not change during the simulated day); the top 3 it returns are shown at each of the
user's requests that day, and slot s of request r is clicked when u(seed, r, s) < p(click | user, day, query, s)
(``aigq.evaluation.ab``: the hidden click model with position bias, generated text resolved to a leaf category,
common random numbers so both arms draw the same u for the same request and slot).

:func:`apply_day` rewrites day T+1 in the loop world: its exposures become the simulated ones (shown, clicked,
``ranker_topk`` = the shown list; requests of users beyond the cap and requests HintQ could not fill with 3 queries
are dropped), the searches that the legacy recommender's clicked hints had produced that day are removed, and each
new click becomes a search right after its exposure, before the session's organic events (as in the simulator).
Organic behaviour is untouched. The next day's CTR retrain (warm start, Eq. 15) thus learns from what was deployed.

Per-day figures (:func:`day_metrics`): impressions, clicks, CTR of shown queries, PVR share = share of shown
queries whose HintQ source is an AIGQ channel (``direct`` cache or ``think`` index), the share of each source, and
the day's UCTR (users with ≥ 1 click / users with ≥ 1 request).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from aigq.data import schema
from aigq.data.hidden import HiddenModel
from aigq.evaluation.ab import AIGQ_CHANNELS, QueryResolver, impressions

PUBLIC_TABLES = ("users", "items", "queries", "categories", "events", "exposures")
ANSWER_SCHEMA = {"user_id": pl.Int64, "slot": pl.Int64, "query": pl.String, "source": pl.String}


def copy_world(tables: dict[str, pl.DataFrame], meta: dict, dst: Path) -> Path:
    """Write validated public tables + meta.json to ``dst`` (replacing it): the loop copy of the world."""
    if dst.exists():
        shutil.rmtree(dst)
    for name in PUBLIC_TABLES:
        if name in tables:
            schema.write_part(dst, name, tables[name])
    schema.write_meta(dst, {**meta, "loop_copy": True})
    return dst


def day_requests(tables: dict[str, pl.DataFrame], start_date: str, day: int, users_cap: int | None) -> pl.DataFrame:
    """Day ``day``'s HintQ requests (exposure_id, user_id, ts, session_id, day) of the first ``users_cap`` users."""
    ex = tables["exposures"].with_columns(day=schema.day_expr(pl.col("ts"), start_date)).filter(pl.col("day") == day)
    ex = ex.select("exposure_id", "user_id", "ts", "session_id", "day").sort("exposure_id")
    if users_cap:
        keep = ex["user_id"].unique().sort().head(users_cap)
        ex = ex.filter(pl.col("user_id").is_in(keep.implode()))
    return ex


@dataclass
class DaySim:
    day: int
    requests: pl.DataFrame  # all requests of the day (before the cap)
    impressions: pl.DataFrame  # request_id, user_id, day, slot, query, source, p_click, u, clicked
    exposures: pl.DataFrame  # the simulated exposures (EXPOSURES schema)
    searches: pl.DataFrame  # new search events from clicked hints (EVENTS schema)


def simulate_day(tables: dict[str, pl.DataFrame], start_date: str, day: int, answers: pl.DataFrame,
                 hidden: HiddenModel, resolver: QueryResolver, seed: int, users_cap: int | None = None) -> DaySim:
    """``answers``: what the deployed HintQ returned per user (user_id, slot, query, source) → the day's clicks and
    the exposures / searches to write (see the module docstring)."""
    all_req = day_requests(tables, start_date, day, None)
    req = day_requests(tables, start_date, day, users_cap)
    full = answers.group_by("user_id").agg(n=pl.len()).filter(pl.col("n") >= 3)["user_id"]
    shown = (answers.cast(ANSWER_SCHEMA).filter(pl.col("user_id").is_in(full.implode()) & (pl.col("slot") < 3))
             .with_columns(day=pl.lit(day, pl.Int32)).select("user_id", "day", "slot", "query", "source"))
    imp = impressions(shown, req.select(request_id="exposure_id", user_id="user_id", day="day"), hidden, resolver,
                      seed)
    by_req = imp.sort("request_id", "slot").group_by("request_id", maintain_order=True).agg(
        shown=pl.col("query"), clicked=pl.col("clicked"))
    exposures = (req.join(by_req, left_on="exposure_id", right_on="request_id")
                 .with_columns(ranker_topk=pl.col("shown")).select(list(schema.EXPOSURES)))
    cats = resolver.resolve(imp["query"].unique().to_list()).select("query", "category")
    clicks = (imp.filter("clicked").join(req.select("exposure_id", "ts", "session_id"), left_on="request_id",
                                         right_on="exposure_id")
              .with_columns(r=pl.int_range(pl.len()).over("request_id")).join(cats, on="query", how="left"))
    searches = clicks.select(
        "user_id", ts=pl.col("ts") + pl.duration(seconds=1) * (pl.col("r") + 1),  # before the session's 1st event
        type=pl.lit("search"), query="query", item_id=pl.lit(None, pl.Int64), category="category",
        session_id="session_id")
    return DaySim(day, all_req, imp, exposures.cast(schema.EXPOSURES), searches.cast(schema.EVENTS))


def legacy_hint_searches(tables: dict[str, pl.DataFrame], start_date: str, day: int) -> pl.Series:
    """Row indices (in ``tables['events']``) of the searches that day ``day``'s recorded clicked hints produced: in
    each clicked exposure's session, the first n events when they are searches for its n clicked queries in slot
    order (how the simulator writes them)."""
    ex = tables["exposures"].with_columns(day=schema.day_expr(pl.col("ts"), start_date)).filter(pl.col("day") == day)
    hits = (ex.select("session_id", "shown", "clicked", slot=pl.int_ranges(0, pl.col("shown").list.len()))
            .explode("shown", "clicked", "slot").filter(pl.col("clicked").fill_null(False))
            .sort("session_id", "slot").with_columns(r=pl.int_range(pl.len()).over("session_id")))
    ev = (tables["events"].with_row_index("_row").filter(pl.col("session_id").is_in(hits["session_id"].implode()))
          .sort("session_id", "ts", "_row").with_columns(r=pl.int_range(pl.len()).over("session_id")))
    m = ev.join(hits.select("session_id", "r", "shown"), on=["session_id", "r"])
    return m.filter((pl.col("type") == "search") & (pl.col("query") == pl.col("shown")))["_row"]


def apply_day(tables: dict[str, pl.DataFrame], start_date: str, sim: DaySim) -> dict[str, pl.DataFrame]:
    """Tables with day ``sim.day``'s HintQ traffic replaced by the simulated one (module docstring)."""
    drop = legacy_hint_searches(tables, start_date, sim.day)
    events = tables["events"].with_row_index("_row").filter(~pl.col("_row").is_in(drop.implode())).drop("_row")
    events = pl.concat([events.cast(schema.EVENTS), sim.searches]).sort("user_id", "ts")
    ex = tables["exposures"]
    ex = ex.filter(schema.day_expr(pl.col("ts"), start_date) != sim.day).cast(schema.EXPOSURES)
    exposures = pl.concat([ex, sim.exposures]).sort("exposure_id")
    return {**tables, "events": events, "exposures": exposures}


def write_tables(world: Path, tables: dict[str, pl.DataFrame], names: tuple[str, ...] = ("events", "exposures")) -> None:
    for name in names:
        d = schema.table_dir(world, name)
        tmp = d.with_name(d.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        tables[name].select([pl.col(c).cast(t) for c, t in schema.TABLES[name].items()]).write_parquet(
            tmp / "part-00000.parquet")
        if d.exists():
            shutil.rmtree(d)
        tmp.rename(d)


def day_metrics(sim: DaySim, aigq: tuple[str, ...] = AIGQ_CHANNELS) -> dict[str, float]:
    """The day's figures (module docstring); sources = HintQ's channel names."""
    imp = sim.impressions
    n = imp.height
    out: dict[str, float] = {"requests": float(imp["request_id"].n_unique()) if n else 0.0,
                             "users": float(imp["user_id"].n_unique()) if n else 0.0,
                             "impressions": float(n), "clicks": float(imp["clicked"].sum()) if n else 0.0}
    out["ctr"] = out["clicks"] / n if n else float("nan")
    out["pvr"] = float(imp["source"].is_in(list(aigq)).mean()) if n else float("nan")
    if n:
        per = imp.group_by("user_id").agg(c=pl.col("clicked").any())
        out["uctr"] = float(per["c"].mean())
        for src, cnt in imp.group_by("source").len().iter_rows():
            out[f"share.{src}"] = cnt / n
    out["dropped_requests"] = float(sim.requests.height - out["requests"])
    return out
