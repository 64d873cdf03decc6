"""Baselines on a small simulated world: popularity, co-click and EBR beat random lists; EBR's in-batch loss falls
and it retrieves queries of the category a user has been searching."""

from collections import Counter

import numpy as np
import polars as pl
import pytest
from cli_world import cli_world

from aigq.config import load_config
from aigq.data import prompt as P
from aigq.evaluation import baselines as B
from aigq.evaluation import ebr
from aigq.evaluation import metrics as M
from aigq.evaluation.categories import CategoryMapper
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
    pairs = B.train_pairs(cfg.samples_dir())
    model = ebr.train_ebr(pairs, cfg.eval)
    assert model.losses[-1] < 0.9 * model.losses[0]
    queries = pl.read_parquet(cfg.world_dir() / "queries")
    mapper = CategoryMapper.from_world(cfg.world_dir())
    cats = Counter(c for c in mapper.map(pairs["query"].to_list()) if c)
    hits = 0
    for cat, _ in cats.most_common(3):  # the three categories with the most training queries
        qs = queries.filter(pl.col("category") == cat)["query"].head(4).to_list()
        prompt = P.format_prompt({"gender": "Female", "age": 30}, [(1, "search", q) for q in qs], cfg.samples)
        top = model.recommend([prompt], 5)[0]
        hits += sum(c == cat for c in mapper.map(top))
    assert hits >= 9, hits  # ≥ 60 % of the top-5s are in the category the user searched


def test_missing_samples_is_a_clear_error(tmp_path):
    cfg = load_config(None, [f"run.output_dir={tmp_path}", "tracking.enabled=false"])
    with pytest.raises(FileNotFoundError, match="build-samples"):
        B.fit_popularity(cfg)
