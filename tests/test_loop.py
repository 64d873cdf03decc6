"""The daily loop (aigq/loop/days.py, aigq/loop/runner.py): which days it runs, the day simulation from deployed lists
(clicks from the hidden model, the loop world rewritten), and a small loop end to end with the in-process HintQ,
where the next day's CTR retrain learns from the simulated day."""

from __future__ import annotations

import json

import polars as pl
import pytest
from tiny_policy import build_policy, write_samples

from aigq.config import WorldConfig, load_config
from aigq.data.hidden import HiddenModel
from aigq.data.schema import day_expr
from aigq.data.simulate import simulate_world
from aigq.data.validate import validate_world
from aigq.evaluation.ab import QueryResolver
from aigq.loop.days import apply_day, day_metrics, legacy_hint_searches, simulate_day
from aigq.loop.runner import plan_days

DAYS = 6


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    simulate_world(WorldConfig(users=300, days=DAYS), seed=11, out=root / "world")
    return root, HiddenModel(root / "world"), validate_world(root / "world", write_quarantine=False)


def _answers(hidden: HiddenModel, users: list[int], day: int, match: bool) -> pl.DataFrame:
    """3 queries per user from the user's strongest interest of ``day`` (match) or from a category the user has
    no interest in that day, as HintQ would return them (slot, query, source)."""
    act = hidden.interests.filter((pl.col("from_day") <= day) & (pl.col("to_day") >= day))
    by_cat = hidden.queries.sort("pop", descending=True).group_by("category", maintain_order=True).agg(
        qs=pl.col("query").head(3))
    qs = dict(by_cat.iter_rows())
    rows = []
    for u in users:
        g = act.filter(pl.col("user_id") == u).sort("weight", descending=True)
        mine = set(g["category"].to_list())
        cat = g["category"][0] if match and g.height else next(c for c in qs if c not in mine and len(qs[c]) == 3)
        rows += [{"user_id": u, "slot": j, "query": q, "source": "direct"} for j, q in enumerate(qs[cat][:3])]
    return pl.DataFrame(rows, schema={"user_id": pl.Int64, "slot": pl.Int64, "query": pl.String, "source": pl.String})


def test_plan_days_starts_at_the_last_train_day_or_earlier_when_the_world_is_short():
    assert plan_days(32, 2, 2, None) == (30, "")
    start, note = plan_days(32, 2, 3, None)
    assert start == 29 and "30..30" in note
    assert plan_days(32, 2, 3, 25)[0] == 25
    with pytest.raises(ValueError, match="days 31..33"):
        plan_days(32, 2, 3, 30)
    with pytest.raises(ValueError, match="more than"):
        plan_days(5, 2, 5, None)


def test_legacy_hint_searches_are_exactly_the_clicked_hints(world):
    _, _, v = world
    start = v.meta["start_date"]
    ex = v.tables["exposures"].filter(day_expr(pl.col("ts"), start) == 4)
    clicked = int(ex["clicked"].list.sum().sum())
    rows = legacy_hint_searches(v.tables, start, 4)
    assert clicked > 0 and len(rows) == clicked
    ev = v.tables["events"][rows.to_list()]
    assert (ev["type"] == "search").all() and (ev.select(day_expr(pl.col("ts"), start))["ts"] == 4).all()


def test_day_simulation_uses_the_deployed_lists(world):
    _, hidden, v = world
    start, day = v.meta["start_date"], 5
    users = (v.tables["exposures"].filter(day_expr(pl.col("ts"), start) == day)["user_id"].unique().sort()
             .to_list())
    res = QueryResolver.for_hidden(hidden)
    good = simulate_day(v.tables, start, day, _answers(hidden, users, day, True), hidden, res, seed=1)
    bad = simulate_day(v.tables, start, day, _answers(hidden, users, day, False), hidden, res, seed=1)
    mg, mb = day_metrics(good), day_metrics(bad)
    assert mg["impressions"] == mb["impressions"] == 3 * good.requests.height
    assert mg["ctr"] > 2 * mb["ctr"] and mg["clicks"] > 0 and mg["pvr"] == 1.0
    again = simulate_day(v.tables, start, day, _answers(hidden, users, day, True), hidden, res, seed=1)
    assert again.impressions["clicked"].to_list() == good.impressions["clicked"].to_list()  # common random numbers
    # the loop world: day 5's exposures are the deployed lists with the simulated clicks; hint searches follow them
    new = apply_day(v.tables, start, good)
    ex5 = new["exposures"].filter(day_expr(pl.col("ts"), start) == day).sort("exposure_id")
    want = _answers(hidden, users, day, True).group_by("user_id", maintain_order=True).agg(shown=pl.col("query"))
    got = ex5.join(want, on="user_id", suffix="_want")
    assert ex5.height == good.requests.height and (got["shown"] == got["shown_want"]).all()
    assert int(ex5["clicked"].list.sum().sum()) == mg["clicks"]
    searches = lambda t: t["events"].filter((pl.col("type") == "search") & (day_expr(pl.col("ts"), start) == day))  # noqa: E731
    old_clicked = int(v.tables["exposures"].filter(day_expr(pl.col("ts"), start) == day)["clicked"].list.sum().sum())
    assert searches(new).height == searches(v.tables).height - old_clicked + mg["clicks"]
    assert len(legacy_hint_searches(new, start, day)) == mg["clicks"]  # the new clicks are found the same way
    for d in (4, 6):  # other days untouched
        a, b = (t["exposures"].filter(day_expr(pl.col("ts"), start) == d).sort("exposure_id") for t in (new, v.tables))
        assert a.equals(b.cast(a.schema))
    # a user cap keeps the lowest ids; their requests only
    capped = simulate_day(v.tables, start, day, _answers(hidden, users, day, True), hidden, res, 1, users_cap=10)
    assert capped.impressions["user_id"].n_unique() == 10 and set(capped.impressions["user_id"]) <= set(users[:10])


def test_small_loop_end_to_end_in_process(world, tmp_path):
    """frozen arm, in-process HintQ (no Ray): 2 days; day T+1's exposures are HintQ's answers, and the CTR model
    of day T+1 is trained warm from day T on exactly those exposures."""
    from aigq.loop.runner import run_loop
    from aigq.rewards.ctr_train import model_dir
    from aigq.tracking import Tracker

    root, hidden, _ = world
    samples = write_samples(tmp_path / "samples", n=24)
    policy = build_policy(tmp_path / "policy", samples)
    over = {"run.output_dir": str(root), "tracking.enabled": "false", "loop.out_dir": str(tmp_path / "loop"),
            "loop.arms": "[frozen]", "loop.serve": "false", "loop.think": "false", "loop.init_policy": str(policy),
            "loop.ctr_cold_window_days": 3, "ctr.hash_buckets": 4096, "ctr.dim": 8, "ctr.hidden": 8,
            "ctr.pretrain_pairs": 200, "ctr.epochs_warm": 1, "ctr.epochs_cold": 1, "serve.max_new_tokens": 16,
            "samples.test_days": 1}
    cfg = load_config(None, [f"{k}={v}" for k, v in over.items()])
    out = run_loop(cfg, Tracker(cfg.tracking), 2)
    assert out["plan"]["start_day"] == DAYS - 2 and [r["day"] for r in out["rows"]] == [DAYS - 1, DAYS]
    arm = tmp_path / "loop" / "frozen"
    loop_world = validate_world(arm / "world", write_quarantine=False)
    start = loop_world.meta["start_date"]
    ex = loop_world.tables["exposures"].with_columns(day=day_expr(pl.col("ts"), start))
    for r in out["rows"]:
        sim = ex.filter(pl.col("day") == r["day"])
        assert sim.height == r["requests"] and int(sim["clicked"].list.sum().sum()) == r["clicks"]
        assert 0 <= r["pvr"] <= 1 and r["share.direct"] + r.get("share.coclick", 0) + r.get("share.popular", 0) \
            == pytest.approx(1.0)
        assert (sim["shown"] == sim["ranker_topk"]).all()  # what HintQ returned, not the legacy ranker's lists
    # day DAYS−1's simulated exposures are what φ_{DAYS−1} was trained on (warm from φ_{DAYS−2})
    meta = json.loads((model_dir(arm / "ctr", DAYS - 1) / "model.json").read_text())["meta"]
    assert meta["warm_start"] and meta["train_days"] == [DAYS - 1]
    assert meta["metrics"]["train.impressions"] == 3 * out["rows"][0]["requests"]
    assert json.loads((tmp_path / "loop" / "loop.json").read_text())["rows"][0]["arm"] == "frozen"
