"""Baselines on a small simulated world: popularity, co-click and EBR beat random lists; EBR's in-batch loss falls
and it retrieves queries of the category a user has been searching."""

from collections import Counter

import numpy as np
import polars as pl
import pytest
from cli_world import cli_world

from aigq.config import load_config
from aigq.data import prompt as P
from aigq.data.categories import CategoryMapper
from aigq.data.schema import day_expr
from aigq.evaluation import baselines as B
from aigq.evaluation import ebr
from aigq.evaluation import metrics as M
from aigq.evaluation.offline import eval_frame
from aigq.evaluation.recommend import arm_frame, arm_lists, check_arm_frame

FAST_EBR = ["eval.ebr_epochs=3", "eval.ebr_buckets=16384", "eval.ebr_dim=32", "eval.ebr_batch=128"]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalbase")
    base = cli_world(tmp / "out", 300, 12, "tracking.enabled=false")
    return load_config(None, [*base, *FAST_EBR])


def _score(cfg, lists, test):
    mapper = CategoryMapper.from_world(cfg.world_dir())
    return M.summarise(M.per_row(lists, test, mapper, M.Embedder("ngram"), cfg.eval.k))


def test_baselines_beat_random_lists(cfg):
    test = eval_frame(cfg)
    vocab = sorted(set(B.train_pairs(cfg.samples_dir())["query"].to_list()))
    rng = np.random.default_rng(0)
    rand = arm_frame(test, [list(rng.choice(vocab, size=cfg.eval.k, replace=False)) for _ in range(test.height)],
                     cfg.eval.k)
    r = _score(cfg, rand, test)
    for arm in ("popularity", "co-click", "ebr"):
        lists = check_arm_frame(arm_lists(cfg, arm, test), cfg.eval.k)
        assert lists.select("user_id", "day").equals(test.select("user_id", "day"))
        s = _score(cfg, lists, test)
        assert s["cate_hr"] > r["cate_hr"] and s["query_hr"] > r["query_hr"], (arm, s, r)
    # co-click personalises: users get different lists; popularity gives everyone the same one
    assert arm_lists(cfg, "co-click", test)["queries"].n_unique() > 1
    assert arm_lists(cfg, "popularity", test)["queries"].n_unique() == 1


def test_ebr_loss_falls_and_it_retrieves_the_searched_category(cfg):
    """Over 4 training seeds, ≥ 1/3 of the top-5s (of users who searched 4 queries of one category) lie in that
    category; chance is ~1/188. One seed alone is noisy on this 300-user world: 2 to 11 hits of 15 per seed."""
    pairs = B.train_pairs(cfg.samples_dir())
    queries = pl.read_parquet(cfg.world_dir() / "queries")
    mapper = CategoryMapper.from_world(cfg.world_dir())
    cats = Counter(c for c in mapper.map(pairs["query"].to_list()) if c)
    hits = 0
    for seed in range(4):
        model = ebr.train_ebr(pairs, cfg.eval.model_copy(update={"seed": seed}))
        assert model.losses[-1] < 0.9 * model.losses[0]
        for cat, _ in cats.most_common(3):  # the three categories with the most training queries
            qs = queries.filter(pl.col("category") == cat)["query"].head(4).to_list()
            prompt = P.format_prompt({"gender": "Female", "age": 30}, [(1, "search", q) for q in qs], cfg.samples)
            top = model.recommend([prompt], 5)[0]
            hits += sum(c == cat for c in mapper.map(top))
    assert hits >= 20, hits


def test_missing_samples_is_a_clear_error(tmp_path):
    cfg = load_config(None, [f"run.output_dir={tmp_path}", "tracking.enabled=false"])
    with pytest.raises(FileNotFoundError, match="build-samples"):
        B.fit_popularity(cfg)


# ---------------------------------------------------------------- issue 16: co-click's query → next-query steps

START = "2026-01-01"


def _searches(rows):
    """Search events from (user, day, "HH:MM", query); day 1 = START."""
    from datetime import datetime, timedelta

    ev = [{"user_id": u, "ts": datetime(2026, 1, 1) + timedelta(days=d - 1, hours=int(t[:2]), minutes=int(t[3:])),
           "type": "search", "query": q, "item_id": None, "category": None, "session_id": 1} for u, d, t, q in rows]
    from aigq.data.schema import TABLES

    return pl.DataFrame(ev, schema=TABLES["events"], orient="row")


def test_transitions_respect_the_held_out_last_query_and_the_day_cut():
    """Test days start at day 4. User 1 steps sofa → rug → lamp and user 2 sofa → lamp → desk; lamp and desk are
    their held-out last queries, so only the steps before them are learnt (repeats collapse). User 3: chair (day 1)
    → table (day 3) is two days apart, not a step; table → mirror crosses the day cut."""
    from aigq.data.holdout import train_cuts

    ev = _searches([(1, 1, "09:00", "Sofa"), (1, 1, "09:05", "sofa"), (1, 1, "09:10", "rug"), (1, 2, "10:00", "lamp"),
                    (2, 1, "08:00", "sofa"), (2, 1, "08:30", "lamp"), (2, 2, "08:00", "desk"),
                    (3, 1, "07:00", "chair"), (3, 3, "07:00", "table"), (3, 4, "08:00", "mirror")])
    cuts = train_cuts(ev, START, first_test_day=4, holdout=True)
    steps = B.search_transitions(ev, START, cuts)
    got = sorted(zip(steps["user_id"].to_list(), steps["key"].to_list(), steps["qn"].to_list(), strict=True))
    assert got == [(1, "sofa", "rug"), (2, "sofa", "lamp")]
    open_cuts = train_cuts(ev, START, first_test_day=5, holdout=False)
    got = {(u, k, q) for u, k, q in B.search_transitions(ev, START, open_cuts).select("user_id", "key", "qn").rows()}
    assert {(1, "rug", "lamp"), (2, "lamp", "desk"), (3, "table", "mirror")} <= got


def test_coclick_counts_merge_sessions_and_transitions_by_hand():
    """Two sessions: [a, b] → {x}, [a] → {y}; one transition a → x. c(a) = 3, c(a, x) = 2, c(a, y) = 1, c(b) = 1."""
    tr = pl.DataFrame({"key": ["a"], "qn": ["x"]})
    co = B.coclick_counts([["a", "b"], ["a"]], [["x"], ["y"]], tr)
    got = {(k, q): (n_bq, n_b) for k, q, n_bq, n_b in co.select("key", "qn", "n_bq", "n_b").rows()}
    assert got == {("a", "x"): (2, 3), ("a", "y"): (1, 3), ("b", "x"): (1, 1)}
    no_tr = B.coclick_counts([["a", "b"], ["a"]], [["x"], ["y"]])
    assert dict(((k, q), n) for k, q, n in no_tr.select("key", "qn", "n_bq").rows())[("a", "x")] == 1


def test_coclick_learns_world_transitions_before_the_cut_only(cfg):
    """On the simulated world, every learnt step lies strictly before its user's train cut, and co-click with steps
    votes for a searched query's next queries."""
    from aigq.data.holdout import last_queries
    from aigq.data.validate import validate_world

    steps = B.world_transitions(cfg)
    world = validate_world(cfg.world_dir(), write_quarantine=False)
    held = last_queries(world.tables["events"], world.meta["start_date"]).select("user_id", held="ts")
    late = steps.join(held, on="user_id").filter(pl.col("next_ts") >= pl.col("held"))
    assert steps.height > 0 and late.height == 0
    first_test = day_expr(pl.col("next_ts"), world.meta["start_date"]) > int(world.meta["days"]) - 2
    assert steps.filter(first_test).height == 0
    key, nxt = steps.group_by("key", "qn").len().sort("len", descending=True).row(0)[:2]
    model = B.fit_coclick(cfg)
    assert nxt in [q for q, _ in model.table[key]]
    assert key not in B.fit_coclick(cfg, transitions=False).table or \
        model.table[key] != B.fit_coclick(cfg, transitions=False).table[key]
