"""The next-search reward (issue 16): p(user searches q next | context) on a search-only world — objective
resolution, positives = the Direct horizon labels, negatives never a positive and from the training window only,
nothing at or after a user's train cut (the held-out last query is never a positive), a model that beats chance
next to the popularity AUC, and the smoothed search-success rate that multiplies the score."""

import json

import numpy as np
import polars as pl
import pytest

from aigq.config import CTRConfig, SamplesConfig, WorldConfig
from aigq.data import next_search as N
from aigq.data.holdout import last_queries, train_cuts
from aigq.data.simulate import simulate_world
from aigq.data.validate import validate_world
from aigq.rewards.context import (
    UserContext,
    anchor_contexts,
    behaviours_table,
    negative_pool,
    next_search_impressions,
)
from aigq.rewards.ctr import CTRScorer, SuccessRates, load_categories, load_model
from aigq.rewards.ctr_train import ctr_cuts, next_search_data, resolve_objective, train_day

DAYS, T = 12, 10  # world days; φ_T trains on days 1..10, evaluates on 11..12
CFG = CTRConfig(hash_buckets=1 << 15, epochs_cold=2, pretrain_epochs=1, eval_days=2)
SAMPLES = SamplesConfig(test_days=2)
TYPES = ["search", "click", "cart", "buy"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ns")
    simulate_world(WorldConfig(users=400, days=DAYS, hint_exposure_rate=0.0), seed=3, out=root / "world")
    v = validate_world(root / "world", write_quarantine=False)
    assert v.tables["exposures"].height == 0  # a plain search log: no HintQ exposure log
    return root, v.tables, v.meta["start_date"]


@pytest.fixture(scope="module")
def trained(world):
    root, tables, start = world
    cuts = ctr_cuts(tables, start, DAYS, T, SAMPLES)
    return train_day(tables, start, DAYS, T, CFG, root / "models", cuts=cuts, samples=SAMPLES)


def _train_rows(tables, start, cuts, seed=0, pool_days=None):
    s = N.searches_with_success(tables["events"])
    pool = negative_pool(s, start, pool_days or list(range(1, T + 1)), cuts, CFG.neg_popular_power)
    imp, ctx = next_search_impressions(tables, start, list(range(1, T + 1)), CFG.history_len, CFG.history_days,
                                       TYPES, cuts=cuts, pool=pool, neg_popular=CFG.neg_popular,
                                       neg_hard=CFG.neg_hard, seed=seed, searches=s)
    return s, pool, imp, ctx


def test_objective_auto_resolution_both_ways(world, tmp_path):
    _, tables, _ = world
    assert resolve_objective(CTRConfig(), tables) == "next_search"
    simulate_world(WorldConfig(users=30, days=3), seed=1, out=tmp_path / "w")
    with_hints = validate_world(tmp_path / "w", write_quarantine=False).tables
    assert with_hints["exposures"].height > 0
    assert resolve_objective(CTRConfig(), with_hints) == "clicks"
    # an explicit objective is kept either way
    assert resolve_objective(CTRConfig(objective="next_search"), with_hints) == "next_search"
    assert resolve_objective(CTRConfig(objective="clicks"), tables) == "clicks"


def test_positives_are_the_horizon_labels_and_negatives_never_a_positive(world):
    _, tables, start = world
    cuts = ctr_cuts(tables, start, DAYS, T, SAMPLES)
    s, pool, imp, ctx = _train_rows(tables, start, cuts)
    # the same anchors and labels as the sample builder's (aigq.data.next_search), distinct queries per anchor
    a = N.anchors(s, SAMPLES.anchor, start, 1, T, cuts).with_row_index("key").with_columns(pl.col("key").cast(pl.Int64))
    lab = N.horizon_labels(a, s, cuts, SAMPLES.label_horizon_days, start).join(a, on="key")
    want = set(lab.select("user_id", "ts", "query").unique().iter_rows())
    pos = imp.filter(pl.col("clicked"))
    assert set(pos.select("user_id", "ts", "query").iter_rows()) == want
    assert pos.height == len(want) and imp["ctx"].n_unique() == ctx.height == a.height
    assert (imp["slot"] == 0).all()  # no position: e(0) = 1
    # no negative is one of its anchor's positives, and none repeats within its anchor
    neg = imp.filter(~pl.col("clicked"))
    assert neg.join(pos, on=["ctx", "query"], how="semi").height == 0
    assert neg.select("ctx", "query").is_unique().all()
    # counts: neg_hard + neg_popular per positive (hard shortfalls topped up from popularity)
    n_pos = pos.group_by("ctx").len("p")
    per = neg.group_by("ctx").len("n").join(n_pos, on="ctx")
    assert (per["n"] == per["p"] * (CFG.neg_popular + CFG.neg_hard)).mean() > 0.95
    hard = neg.filter(pl.col("source") == "hard").group_by("ctx").len("h").join(n_pos, on="ctx")
    assert hard.height > 0.5 * n_pos.height and (hard["h"] <= hard["p"] * CFG.neg_hard).all()
    # negatives come from the training window's searches only
    assert set(neg["query"]) <= set(pool.popular["query"])
    # deterministic for a seed, different for another
    _, _, again, _ = _train_rows(tables, start, cuts)
    _, _, other, _ = _train_rows(tables, start, cuts, seed=1)
    assert again.equals(imp) and not other.equals(imp)
    assert pos.equals(other.filter(pl.col("clicked")))


def test_hard_negatives_come_from_other_users_sessions(world):
    _, tables, start = world
    cuts = ctr_cuts(tables, start, DAYS, T, SAMPLES)
    s, pool, imp, _ = _train_rows(tables, start, cuts)
    hard = imp.filter(pl.col("source") == "hard")
    latest = (imp.select("ctx", "user_id", "ts").unique().sort("user_id", "ts")
              .join_asof(s.select("user_id", "ts", last="query"), on="ts", by="user_id", strategy="backward",
                         allow_exact_matches=False, check_sortedness=False))
    h = hard.join(latest.select("ctx", "last"), on="ctx")
    # co-searched with the user's latest search in some OTHER user's session of the window
    w = s.filter(pl.col("ts") < pl.lit(start).str.to_date().cast(pl.Datetime("us")) + pl.duration(days=T))
    sess = w.join(cuts, on="user_id").filter(pl.col("ts") < pl.col("cut")).select("user_id", "session_id", "query")
    pairs = sess.join(sess, on=["user_id", "session_id"], suffix="_b").select(
        "user_id", last="query", query="query_b").unique()
    ok = h.join(pairs, on=["last", "query"]).filter(pl.col("user_id") != pl.col("user_id_right"))
    assert ok.select("ctx", "query").unique().height == h.height > 0
    assert pool.cooc.height > 0


def test_no_training_row_at_or_after_a_users_cut(world):
    """The held-out last query (samples.last_query_holdout) is never a training positive; every anchor, label and
    pool search lies strictly before the user's cut."""
    _, tables, start = world
    cuts = ctr_cuts(tables, start, DAYS, T, SAMPLES)
    expect = train_cuts(tables["events"], start, DAYS - SAMPLES.test_days + 1, True)
    assert cuts.sort("user_id").equals(expect.sort("user_id"))
    s, pool, imp, ctx = _train_rows(tables, start, cuts)
    rows = imp.join(cuts, on="user_id")
    assert (rows["ts"] < rows["cut"]).all()
    # each positive is a search of its user in [anchor, cut)
    pos = imp.filter(pl.col("clicked")).select("ctx", "user_id", "ts", "query")
    hits = (pos.join(s.select("user_id", "query", t="ts"), on=["user_id", "query"]).join(cuts, on="user_id")
            .filter((pl.col("t") >= pl.col("ts")) & (pl.col("t") < pl.col("cut"))))
    assert hits.select("ctx", "query").unique().height == pos.height
    # the held-out last query: new to its user before the cut → never their positive (it would be without the cut)
    held = last_queries(tables["events"], start).filter(pl.col("day") <= T)
    seen = s.join(held.select("user_id", held_ts="ts"), on="user_id").filter(pl.col("ts") < pl.col("held_ts"))
    new = held.join(seen.select("user_id", "query").unique(), on=["user_id", "query"], how="anti")
    assert new.height >= 10
    assert pos.join(new, on=["user_id", "query"], how="semi").height == 0
    no_holdout = ctr_cuts(tables, start, DAYS, T, SAMPLES.model_copy(update={"last_query_holdout": False}))
    _, _, leaky, _ = _train_rows(tables, start, no_holdout)
    assert leaky.filter(pl.col("clicked")).join(new, on=["user_id", "query"], how="semi").height > 0
    # the pool counts only searches of the window strictly before the cuts
    w = s.join(cuts, on="user_id").filter(pl.col("ts") < pl.col("cut"))
    w = w.filter(pl.col("ts") < pl.lit(start).str.to_date().cast(pl.Datetime("us")) + pl.duration(days=T))
    assert dict(pool.popular.iter_rows()) == dict(w.group_by("query").len().iter_rows())
    # contexts: the last behaviours strictly before the anchor (so before the cut), most recent first
    beh = behaviours_table(tables, TYPES, start)
    anchors = imp.group_by("ctx").agg(pl.col("user_id").first(), pl.col("ts").first(), pl.col("day").first())
    got = dict(ctx.select("ctx", "behaviours").iter_rows())
    for c, u, ts, day in anchors.sort("ctx").gather_every(37).iter_rows():
        b = beh.filter((pl.col("user_id") == u) & (pl.col("ts") < ts) & (day - pl.col("day") <= CFG.history_days))
        want = [{"days_ago": day - r["day"], "type": r["type"], "content": r["content"]}
                for r in b.tail(CFG.history_len).reverse().iter_rows(named=True)]
        assert (got[c] or []) == want
    assert ctx["behaviours"].is_not_null().mean() > 0.5


def test_first_users_of_the_behaviour_table_keep_their_history(world):
    """anchor_contexts' row arithmetic in Int64: user 1 (the table's first rows) gets its earlier behaviours."""
    _, tables, start = world
    beh = behaviours_table(tables, TYPES, start)
    first = beh.filter(pl.col("user_id") == beh["user_id"].min())
    pts = first.tail(1).select(ctx=pl.lit(0, pl.UInt32), user_id="user_id", ts="ts", day="day")
    c = anchor_contexts(tables, start, pts, 20, 30, TYPES)
    assert c["behaviours"].list.len()[0] == min(20, first.height - 1) > 0


def test_next_search_model_trains_and_beats_chance_next_to_popularity(world, trained):
    root, tables, start = world
    res = trained
    m = res.metrics
    assert res.objective == "next_search" and res.train_days == list(range(1, T + 1)) and res.eval_days == [11, 12]
    print(f"\nsearch-only world: held-out AUC {m['eval.auc']:.3f} vs popularity {m['eval.popularity_auc']:.3f} "
          f"(vs hard negatives {m['eval.auc_vs_hard']:.3f} / {m['eval.popularity_auc_vs_hard']:.3f})")
    assert m["eval.impressions"] > 1000 and m["eval.positives"] > 100
    assert m["eval.auc"] > 0.6 and m["eval.auc"] > m["eval.popularity_auc"]
    assert m["eval.auc_lift_vs_popularity"] == pytest.approx(m["eval.auc"] - m["eval.popularity_auc"])
    assert m["eval.logloss"] < m["eval.logloss_base_rate"]
    meta = json.loads((res.folder / "model.json").read_text())["meta"]
    assert meta["objective"] == "next_search" and meta["negatives"] == {
        "popular": CFG.neg_popular, "popular_power": CFG.neg_popular_power, "hard": CFG.neg_hard}
    assert meta["success_rate"] is False and meta["metrics"]["eval.auc"] == pytest.approx(m["eval.auc"])
    assert not (res.folder / "success.parquet").exists()
    scorer = CTRScorer.load(res.folder)
    assert scorer.objective == "next_search" and scorer.success is None
    ctx = UserContext({"gender": "Female"}, [(0, "search", "velvet sofa")])
    p = scorer.score_one(ctx, ["velvet sofa", "garden hose", ""])
    assert p.shape == (3,) and np.all((p > 0) & (p < 1))
    # eval rows are next searches of the held-out days vs negatives of the training window, no cut
    s = N.searches_with_success(tables["events"])
    pool = negative_pool(s, start, res.train_days, ctr_cuts(tables, start, DAYS, T, SAMPLES))
    open_cuts = train_cuts(tables["events"], start, DAYS + 1, False)
    held = next_search_data(tables, start, res.eval_days, CFG, SAMPLES, open_cuts, pool, CFG.seed + 1, s)
    assert len(held) == m["eval.impressions"] and set(held.imp["day"]) == {11, 12}


def test_nothing_to_train_on_is_a_clear_error(world, tmp_path):
    _, tables, start = world
    no_search = {**tables, "events": tables["events"].filter(pl.col("type") != "search")}
    with pytest.raises(ValueError, match="no searches with a next search .* nothing to train on"):
        train_day(no_search, start, DAYS, T, CFG, tmp_path)
    with pytest.raises(ValueError, match="no HintQ exposures"):
        train_day(tables, start, DAYS, T, CFG.model_copy(update={"objective": "clicks"}), tmp_path)


def test_success_rate_hand_worked():
    s = pl.DataFrame({"query": ["Sofa", "sofa ", "sofa", "lamp"], "success": [True, True, False, False]})
    r = SuccessRates.from_searches(s, prior=2.0)
    assert r.global_rate == pytest.approx(0.5)
    got = r(["sofa", "  SOFA", "lamp", "never searched", None, b"sofa"])
    assert got == pytest.approx([(2 + 1) / (3 + 2), 0.6, (0 + 1) / (1 + 2), 0.5, 0.5, 0.5])


def test_success_rate_multiplies_the_score_and_round_trips(world, trained, tmp_path):
    _, tables, start = world
    cuts = ctr_cuts(tables, start, DAYS, T, SAMPLES)
    cfg = CFG.model_copy(update={"success_rate": True, "success_prior": 3.0, "epochs_cold": 1, "pretrain_epochs": 0})
    res = train_day(tables, start, DAYS, T, cfg, tmp_path, cuts=cuts, samples=SAMPLES)
    assert (res.folder / "success.parquet").is_file()
    assert json.loads((res.folder / "model.json").read_text())["meta"]["success_rate"] is True
    assert "eval.auc_with_success" in res.metrics
    # the table: the training window's searches before the cuts, smoothed at the global rate
    s = N.searches_with_success(tables["events"]).join(cuts, on="user_id").filter(pl.col("ts") < pl.col("cut"))
    s = s.filter(pl.col("ts") < pl.lit(start).str.to_date().cast(pl.Datetime("us")) + pl.duration(days=T))
    q = s.group_by("query").agg(n=pl.len(), k=pl.col("success").sum()).sort("n", descending=True).row(0, named=True)
    g = s["success"].mean()
    want = (q["k"] + 3.0 * g) / (q["n"] + 3.0)
    scorer = CTRScorer.load(res.folder)
    assert scorer.success.global_rate == pytest.approx(g) and scorer.success([q["query"]])[0] == pytest.approx(want)
    model, mcfg, _ = load_model(res.folder)
    plain = CTRScorer(model, mcfg, load_categories(res.folder, model, mcfg))
    ctx = UserContext({}, [(0, "search", q["query"])])
    queries = [q["query"], "a query nobody searched 7"]
    both = scorer.score_one(ctx, queries)
    assert both == pytest.approx(plain.score_one(ctx, queries) * np.array([want, g]))
    # saved again without success rates: the stale table goes, scoring is the model alone
    res2 = train_day(tables, start, DAYS, T, cfg.model_copy(update={"success_rate": False}), tmp_path, cuts=cuts,
                     samples=SAMPLES)
    assert res2.folder == res.folder and not (res.folder / "success.parquet").exists()
    again = CTRScorer.load(res.folder)
    model, mcfg, _ = load_model(res.folder)
    assert again.success is None
    assert again.score_one(ctx, queries) == pytest.approx(
        CTRScorer(model, mcfg, load_categories(res.folder, model, mcfg)).score_one(ctx, queries))


def test_warm_start_keeps_the_objective(world, trained):
    root, tables, start = world
    cuts = ctr_cuts(tables, start, DAYS, T + 1, SAMPLES)
    res11 = train_day(tables, start, DAYS, T + 1, CFG, root / "models", cuts=cuts, samples=SAMPLES)
    assert res11.warm_start == trained.folder and res11.train_days == [T + 1] and res11.objective == "next_search"
    assert res11.metrics["train.positives"] > 0 and res11.eval_days == [T + 2]
    with pytest.raises(ValueError, match="objective next_search differs from clicks"):
        train_day({**tables, "exposures": pl.DataFrame()}, start, DAYS, T + 2,
                  CFG.model_copy(update={"objective": "clicks"}), root / "models", cuts=cuts, samples=SAMPLES)
