"""Offline metrics (Table 1), the query → category mapper and the arm-lists convention on hand-worked examples."""

import math

import numpy as np
import polars as pl
import pytest

from aigq.config import SamplesConfig
from aigq.data import prompt as P
from aigq.evaluation import metrics as M
from aigq.evaluation.categories import CategoryMapper, normalise, trigram_cosine
from aigq.evaluation.policy import natural_prompt, parse_free_list
from aigq.evaluation.recommend import arm_frame, check_arm_frame, dedup

KNOWN = [("velvet sofa", "Sofas"), ("oak desk", "Desks"), ("standing desk", "Desks")]


def test_mapper_exact_then_nearest_trigram_then_none():
    m = CategoryMapper(KNOWN, threshold=0.5)
    # " velvet sofas " has 12 trigrams, " velvet sofa " 11; all but "fas", "as " / "fa " are shared (10):
    # 10 / sqrt(12 · 11) = 0.870 ≥ 0.5
    assert trigram_cosine("velvet sofas", "velvet sofa") == pytest.approx(10 / math.sqrt(12 * 11))
    assert m.map(["Velvet  Sofa!", "velvet sofas", "garden hose", None, ""]) == ["Sofas", "Sofas", None, None, None]
    assert m.map(["oak desks"]) == ["Desks"]
    assert CategoryMapper(KNOWN, threshold=0.99).map(["velvet sofas"]) == [None]  # below the threshold
    assert m.map_lists([["oak desk"], [], ["velvet sofa", "xyz"]]) == [["Desks"], [], ["Sofas", None]]
    assert normalise("  Kids' Wall-Décor ") == "kids wall décor"


def test_mapper_memo_is_bounded(monkeypatch):
    import aigq.evaluation.categories as C

    monkeypatch.setattr(C, "MEMO_CAP", 4)
    m = CategoryMapper(KNOWN, threshold=0.5)
    texts = [f"velvet sofas {i}" for i in range(10)] + ["Velvet  Sofa!"]
    first = m.map(texts)
    assert len(m._memo) == 11  # one call's texts stay memoised for its own answer, even past the cap
    m.map(["oak desks"])
    assert len(m._memo) == 1 and m.map(texts) == first  # cleared past the cap; answers do not depend on the memo


def test_mapper_from_tables_uses_items_only_as_a_fallback():
    q = pl.DataFrame({"query": ["oak desk"], "category": ["Desks"]})
    items = pl.DataFrame({"description": ["oak desk by Zipcode", "blue wool rug by Orren"],
                          "category": ["Office Desks", "Rugs"]})
    m = CategoryMapper.from_tables(q, items, threshold=0.5)
    assert m.map(["oak desk", "blue wool rugs"]) == ["Desks", "Rugs"]


def test_hit_rates_unique_cates_and_novelty_by_hand():
    gen, truth = ["red lamp", "Oak Desk", "sofa"], ["oak desk!", "rug"]
    assert M.query_hit(gen, truth, k=3) == 1.0  # "Oak Desk" == "oak desk!" after normalising
    assert M.query_hit(gen, truth, k=1) == 0.0  # only "red lamp" is inside K = 1
    assert M.cate_hit(["Lamps", "Desks", None], ["Desks", "Rugs"], k=2) == 1.0
    assert M.cate_hit(["Lamps", "Desks", None], ["Desks", "Rugs"], k=1) == 0.0
    assert M.cate_hit([None], [None], k=5) == 0.0  # unknown never hits
    assert M.unique_cates(["Lamps", "Desks", "Lamps", None], k=4) == 2.0
    assert M.novelty(["red lamp", "oak desk", "sofa", "rug"], ["Oak desk", "rug"], k=4) == 0.5
    assert M.novelty([], ["x"], k=4) is None


def test_sem_sim_is_mean_over_truth_of_best_generated_cosine():
    g = np.array([[1.0, 0.0], [0.6, 0.8]])
    t = np.array([[1.0, 0.0], [0.0, 1.0]])
    # truth 1: best = 1.0 (g1); truth 2: best = 0.8 (g2) → mean 0.9
    assert M.sem_sim(g, t) == pytest.approx(0.9)
    assert M.sem_sim(np.zeros((0, 2)), t) == 0.0


def test_per_row_and_summary_with_cold_start_slice():
    cfg = SamplesConfig()
    prompt = P.format_prompt({"gender": "F"}, [(1, "search", "oak desk"), (2, "click", "velvet sofa by X")], cfg)
    test = pl.DataFrame({"user_id": [1, 2], "day": [9, 9], "prompt": [prompt, prompt],
                         "target": [["standing desk"], ["velvet sofa"]],
                         "metadata": [{"cold_start": False}, {"cold_start": True}]})
    lists = pl.DataFrame({"user_id": [1, 2], "day": [9, 9], "queries": [["oak desk", "lamp"], ["oak desk"]]},
                         schema={"user_id": pl.Int64, "day": pl.Int64, "queries": pl.List(pl.String)})
    rows = M.per_row(lists, test, CategoryMapper(KNOWN), M.Embedder("ngram"), k=30)
    assert rows["cate_hr"].to_list() == [1.0, 0.0]  # user 1: Desks ∩ Desks; user 2: Desks vs Sofas
    assert rows["query_hr"].to_list() == [0.0, 0.0]
    assert rows["unique_cates"].to_list() == [1.0, 1.0]  # "lamp" has no category
    assert rows["novelty"].to_list() == [0.5, 0.0]  # "oak desk" was searched before the day
    s = M.summarise(rows)
    assert s["cate_hr"] == 0.5 and s["cold_cate_hr"] == 0.0 and s["cold_user_days"] == 1.0
    assert 0.0 < s["sem_sim"] < 1.0


def test_arm_frame_convention():
    assert dedup(["A b", "a B", "", None, "c", "d"], k=2) == ["A b", "c"]
    keys = pl.DataFrame({"user_id": [3], "day": [31]})
    f = check_arm_frame(arm_frame(keys, [["x", "y", "x"]], k=30), k=30)
    assert f.schema["day"] == pl.Int32 and f["queries"].to_list() == [["x", "y"]]
    with pytest.raises(ValueError):
        check_arm_frame(f.with_columns(pl.col("day").cast(pl.Int64)))
    with pytest.raises(ValueError):
        check_arm_frame(f, k=1)


def test_zero_shot_prompt_and_lenient_parsing():
    prompt = P.format_prompt({"gender": "Female", "age": 30}, [(0, "search", "oak desk"), (1, "click", "red lamp")],
                             SamplesConfig())
    text = natural_prompt(prompt)
    assert "searched recently: oak desk." in text and "looked at recently: red lamp." in text and "10" in text
    assert parse_free_list('1. oak desk, 2. "red lamp"\n- rug ; 3. 4. 5.') == ["oak desk", "red lamp", "rug"]


def test_offline_evaluation_never_reads_the_hidden_model():
    """Metrics, baselines and policy arms see only public tables and samples (the A/B evaluator and ctr_oracle are the
    only readers of world/hidden)."""
    import pathlib

    import aigq.evaluation as pkg

    root = pathlib.Path(pkg.__file__).parent
    for name in ("categories", "metrics", "baselines", "ebr", "policy", "recommend", "suite", "offline", "report"):
        src = (root / f"{name}.py").read_text()
        assert "aigq.data.hidden" not in src and "HiddenModel" not in src and '"hidden"' not in src, name
