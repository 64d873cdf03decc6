"""Simulated A/B (aigq/evaluation/ab.py): UCTR and its intervals on a hand-made example, common random numbers,
discovery shares, the hidden click model's preference for lists that match the user's hidden interest, generated
text resolved to a category, and the CLI's errors."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from aigq.config import WorldConfig
from aigq.data.hidden import HiddenModel, click_probability
from aigq.data.schema import day_expr
from aigq.data.simulate import simulate_world
from aigq.data.validate import validate_world
from aigq.evaluation import ab
from aigq.evaluation.ab_inputs import window_requests

ARM = {"user_id": pl.Int64, "day": pl.Int32, "queries": pl.List(pl.String)}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = tmp_path_factory.mktemp("ab") / "world"
    simulate_world(WorldConfig(users=400, days=6), seed=3, out=w)
    return w, HiddenModel(w), validate_world(w, write_quarantine=False)


def _interest_lists(hidden: HiddenModel, keys: pl.DataFrame, match: bool) -> pl.DataFrame:
    """Per user-day: the most popular queries of the user's strongest interest active that day (match) or of a
    category none of the user's interests of that day has (no match)."""
    act = (keys.join(hidden.interests, on="user_id")
           .filter((pl.col("from_day") <= pl.col("day")) & (pl.col("day") <= pl.col("to_day"))))
    by_cat = hidden.queries.sort("pop", descending=True).group_by("category", maintain_order=True).agg(
        qs=pl.col("query").head(5))
    cats = by_cat["category"].to_list()
    rows = []
    for (u, d), g in act.group_by("user_id", "day", maintain_order=True):
        mine = set(g["category"].to_list())
        cat = g.sort("weight", descending=True)["category"][0] if match else next(c for c in cats if c not in mine)
        rows.append((u, d, cat))
    pick = pl.DataFrame(rows, schema={"user_id": pl.Int64, "day": pl.Int32, "category": pl.String}, orient="row")
    return pick.join(by_cat, on="category").select("user_id", "day", queries="qs").cast(ARM)


def test_uctr_wilson_and_gain_on_a_hand_made_example():
    # 4 users, arm b clicks for users 1, 2, 3 (3/4), arm a for user 1 only (1/4); user 4 has two requests
    rows = []
    for arm, clicked_users in (("a", {1}), ("b", {1, 2, 3})):
        for rid, user in ((10, 1), (11, 2), (12, 3), (13, 4), (14, 4)):
            for slot in range(3):
                rows.append({"arm": arm, "request_id": rid, "user_id": user, "day": 1, "slot": slot,
                             "query": f"q{slot}", "source": "direct" if slot == 0 else "popular",
                             "clicked": slot == 1 and user in clicked_users,
                             "p_click": 0.5 if (arm == "b" and slot == 0) else 0.1})
    imp = pl.DataFrame(rows)
    t = {r["arm"]: r for r in ab.summarise(imp, "a", resamples=400).iter_rows(named=True)}
    assert t["a"]["users"] == t["b"]["users"] == 4 and t["b"]["requests"] == 5 and t["b"]["impressions"] == 15
    assert t["a"]["uctr"] == pytest.approx(0.25) and t["b"]["uctr"] == pytest.approx(0.75)
    assert t["b"]["ctr"] == pytest.approx(3 / 15) and t["b"]["pvr"] == pytest.approx(1 / 3)
    assert t["b"]["gain"] == pytest.approx(2.0)  # 0.75 / 0.25 − 1
    assert t["a"]["gain"] == 0.0 and (t["a"]["gain_lo"], t["a"]["gain_hi"]) == (0.0, 0.0)
    assert (t["b"]["uctr_lo"], t["b"]["uctr_hi"]) == pytest.approx(ab.wilson(3, 4))
    # expected UCTR = mean over users of 1 − Π (1 − p): users 1–3 see 3 impressions, user 4 six
    ea = np.mean([1 - 0.9**3] * 3 + [1 - 0.9**6])
    eb = np.mean([1 - 0.5 * 0.9**2] * 3 + [1 - 0.25 * 0.9**4])
    assert t["a"]["euctr"] == pytest.approx(ea) and t["b"]["euctr"] == pytest.approx(eb)
    assert t["b"]["egain"] == pytest.approx(eb / ea - 1) and t["b"]["egain_lo"] <= t["b"]["egain"] <= t["b"]["egain_hi"]
    # Wilson 3/10 (textbook values) and the paired bootstrap of a ratio that is 1 on every resample
    assert ab.wilson(3, 10) == pytest.approx((0.1078, 0.6032), abs=1e-4)
    assert ab.wilson(0, 0)[0] != ab.wilson(0, 0)[0]  # NaN for an empty population
    x = np.array([1.0, 0, 1, 0, 1])
    assert ab.paired_bootstrap_gain(x, x, 200, 0.95, 0) == (0.0, 0.0)
    lo, hi = ab.paired_bootstrap_gain(np.array([1.0, 1, 1, 0]), np.array([1.0, 0, 0, 0]), 500, 0.95, 0)
    assert lo <= 2.0 <= hi
    with pytest.raises(ValueError, match="control arm"):
        ab.summarise(imp, "nope")


def test_common_random_numbers_identical_arms_identical_clicks(world):
    w, hidden, v = world
    keys = v.tables["exposures"].select("user_id", day=day_expr(pl.col("ts"), v.meta["start_date"])).unique()
    keys = keys.filter(pl.col("day") >= 4)
    pop = hidden.queries.sort("pop", descending=True)["query"].head(10).to_list()
    popular = keys.with_columns(queries=pl.lit(pop, dtype=pl.List(pl.String))).cast(ARM)
    interest = _interest_lists(hidden, keys, match=True)
    req = window_requests(v.tables, v.meta["start_date"], keys)
    res = ab.QueryResolver.for_hidden(hidden)
    arms = {"a": ["popular"], "b": ["popular"], "c": ["interest", "popular"]}
    imp = ab.run_ab({"popular": popular, "interest": interest}, arms, req, hidden, res, seed=5)
    a, b, c = (imp.filter(pl.col("arm") == x).sort("request_id", "slot") for x in "abc")
    assert a["clicked"].to_list() == b["clicked"].to_list() and a["u"].to_list() == b["u"].to_list()
    assert a["clicked"].sum() > 0
    # arms that show the same query in the same slot of a request draw the same number and agree on the click
    same = a.join(c, on=["request_id", "slot", "query"], suffix="_c")
    assert same.height > 0 and (same["u"] == same["u_c"]).all() and (same["clicked"] == same["clicked_c"]).all()
    t = {r["arm"]: r for r in ab.summarise(imp, "a", resamples=200).iter_rows(named=True)}
    assert t["b"]["gain"] == 0.0 and (t["b"]["gain_lo"], t["b"]["gain_hi"]) == (0.0, 0.0)
    # another seed gives other draws; the draws are uniform
    u = ab.crn_uniform(5, np.arange(20_000), np.zeros(20_000, int))
    assert np.array_equal(u, ab.crn_uniform(5, np.arange(20_000), np.zeros(20_000, int)))
    assert not np.array_equal(u, ab.crn_uniform(6, np.arange(20_000), np.zeros(20_000, int)))
    assert abs(u.mean() - 0.5) < 0.01 and abs((u < 0.1).mean() - 0.1) < 0.01


def test_list_matching_the_hidden_interest_gets_more_clicks(world):
    w, hidden, v = world
    keys = v.tables["exposures"].select("user_id", day=day_expr(pl.col("ts"), v.meta["start_date"])).unique()
    keys = keys.filter(pl.col("day") >= 4)
    ch = {"match": _interest_lists(hidden, keys, True), "other": _interest_lists(hidden, keys, False)}
    req = window_requests(v.tables, v.meta["start_date"], keys)
    imp = ab.run_ab(ch, {"other": ["other"], "match": ["match"]}, req, hidden, ab.QueryResolver.for_hidden(hidden))
    t = {r["arm"]: r for r in ab.summarise(imp, "other", resamples=300).iter_rows(named=True)}
    assert t["match"]["ctr"] > 2 * t["other"]["ctr"]
    assert t["match"]["uctr"] > t["other"]["uctr"] and t["match"]["gain_lo"] > 0


def test_generated_text_gets_its_mapped_category_and_popularity_zero(world):
    w, hidden, v = world
    q = hidden.queries.sort("pop", descending=True).row(0, named=True)
    gen = q["query"] + " deluxe edition"
    res = ab.QueryResolver.for_hidden(hidden, mapper=lambda texts: [q["category"] if t == gen else None
                                                                     for t in texts])
    r = {x["query"]: x for x in res.resolve([q["query"].upper(), gen, "zzz"]).iter_rows(named=True)}
    assert r[q["query"].upper()]["match"] == "vocabulary" and r[q["query"].upper()]["pop"] == pytest.approx(q["pop"])
    assert (r[gen]["match"], r[gen]["category"], r[gen]["pop"]) == ("mapped", q["category"], 0.0)
    assert r["zzz"]["match"] == "unknown" and r["zzz"]["category"] is None
    user = hidden.interests.filter(pl.col("category") == q["category"]).row(0, named=True)
    shown = pl.DataFrame({"user_id": [user["user_id"]] * 3, "day": [user["from_day"]] * 3,
                          "query": [q["query"], gen, "zzz"], "slot": [0, 0, 0]})
    p = ab.click_probabilities(shown, hidden, res)
    prm = hidden.params
    base = prm.position_bias[0] / (1 + np.exp(-prm.base))
    assert p[2] == pytest.approx(base)  # no category: nothing but the base rate
    f = hidden.features(shown.head(1)).row(0, named=True)  # the vocabulary query's own features
    assert f["interest"] > 0 and p[0] == pytest.approx(hidden.click_probability(shown.head(1))[0])
    assert p[1] == pytest.approx(click_probability(f["interest"], f["related"], 0.0, 0, prm))  # same, popularity 0
    assert base < p[1] < p[0]


def test_discovery_shares_on_a_hand_example():
    shown = pl.DataFrame({"user_id": [1, 1, 1, 2], "day": [5, 5, 5, 5],
                          "query": ["Oak Desk", "teak bench", "red rug", "oak desk"],
                          "source": ["direct", "think", "popular", "direct"]})
    control = pl.DataFrame({"user_id": [1, 1], "day": [5, 5], "query": ["oak  desk", "blue rug"]})
    cats = {"oak desk": "Desks", "Oak Desk": "Desks", "teak bench": "Benches", "red rug": "Rugs",
            "oak  desk": "Desks", "blue rug": "Rugs"}
    d = ab.discovery(shown, control, lambda texts: [cats.get(t) for t in texts])
    # AIGQ-shown (user, day, query): (1, oak desk) covered by control, (1, teak bench) not, (2, oak desk) not
    assert d["discovery.shown_aigq_queries"] == 3 and d["discovery.queries"] == pytest.approx(2 / 3)
    # categories: (1, Desks) covered, (1, Benches) not, (2, Desks) not (control has nothing for user 2)
    assert d["discovery.categories"] == pytest.approx(2 / 3)
    assert np.isnan(ab.discovery(shown.filter(pl.col("source") == "popular"), control, None)["discovery.queries"])


def test_ab_cli_rejects_bad_input_with_a_message(tmp_path):
    from aigq.cli import app

    r = CliRunner().invoke(app, ["ab", "--lists", "direct", f"run.output_dir={tmp_path}", "tracking.enabled=false"])
    assert r.exit_code == 1 and "NAME=VALUE" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["ab", f"run.output_dir={tmp_path}", "tracking.enabled=false"])
    assert r.exit_code == 1 and "hidden model" in r.output and "Traceback" not in r.output
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(ValueError, match="not a parquet file"):
        from aigq.evaluation.ab_inputs import read_lists

        read_lists(bad)
