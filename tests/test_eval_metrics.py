"""Offline metrics (Table 1), the query → category mapper and the arm-lists convention on hand-worked examples."""

import math

import numpy as np
import polars as pl
import pytest

from aigq.config import SamplesConfig
from aigq.data import prompt as P
from aigq.data.categories import CategoryMapper, normalise, trigram_cosine
from aigq.evaluation import metrics as M
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
    import aigq.data.categories as C

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
    assert "search next" not in text  # no related-queries line, no sentence
    text = natural_prompt(P.with_related(prompt, ["desk chair", "desk lamp"]))
    assert "Shoppers like me often search next: desk chair, desk lamp." in text
    assert parse_free_list('1. oak desk, 2. "red lamp"\n- rug ; 3. 4. 5.') == ["oak desk", "red lamp", "rug"]


def test_offline_evaluation_never_reads_the_hidden_model():
    """Metrics, baselines and policy arms see only public tables and samples (the A/B evaluator and ctr_oracle are the
    only readers of world/hidden)."""
    import pathlib

    import aigq.evaluation as pkg

    root = pathlib.Path(pkg.__file__).parent
    for name in ("../data/categories", "metrics", "baselines", "ebr", "policy", "recommend", "suite", "offline",
                 "report", "../pipeline/suite"):
        src = (root / f"{name}.py").read_text()
        assert "aigq.data.hidden" not in src and "HiddenModel" not in src and '"hidden"' not in src, name


# ---------------------------------------------------------------- issue 16: MRR, HR@k, cold slice, bootstrap


def test_query_rank_mrr_and_hr_cutoffs_by_hand():
    gen, truth = ["red lamp", "Oak Desk", "sofa"], ["sofa!", "oak desk"]
    assert M.query_rank(gen, truth, k=3) == 2  # "Oak Desk" is the first match, at rank 2 ("sofa" matches at 3)
    assert M.reciprocal_rank(gen, truth, k=3) == 0.5
    assert M.query_rank(gen, truth, k=1) == 0 and M.reciprocal_rank(gen, truth, k=1) == 0.0  # none within K = 1
    assert M.reciprocal_rank(["a", "b", "c"], ["C"], k=30) == pytest.approx(1 / 3)
    assert M.reciprocal_rank([], ["c"], k=30) == 0.0 and M.reciprocal_rank(["c"], [""], k=30) == 0.0
    assert M.hr_cutoffs(30, [1, 3, 10, 30, 50]) == [1, 3, 10, 30]  # > K is left out, K always in
    assert M.hr_cutoffs(5, [10, 3, 1, 3]) == [1, 3, 5]


def _rows_by_hand():
    """Four rows, targets one query each; lists and their first-match ranks: 1, 2, none, 3; rows 1 and 3 cold."""
    cfg = SamplesConfig()
    prompt = P.format_prompt({"gender": "F"}, [(1, "search", "oak desk")], cfg)
    test = pl.DataFrame({"user_id": [1, 2, 3, 4], "day": [5, 5, 6, 7], "prompt": [prompt] * 4,
                         "target": [["oak desk"], ["velvet sofa"], ["rug"], ["standing desk"]],
                         "metadata": [{"cold_start": c} for c in (True, False, True, False)]})
    lists = pl.DataFrame({"user_id": [1, 2, 3, 4], "day": [5, 5, 6, 7],
                          "queries": [["Oak Desk", "lamp"], ["lamp", "velvet sofa"], ["lamp"],
                                      ["lamp", "oak desk", "standing desk"]]},
                         schema={"user_id": pl.Int64, "day": pl.Int32, "queries": pl.List(pl.String)})
    return lists, test.with_columns(pl.col("day").cast(pl.Int32))


def test_per_row_hr_at_k_mrr_and_cold_slice_by_hand():
    lists, test = _rows_by_hand()
    rows = M.per_row(lists, test, CategoryMapper(KNOWN), M.Embedder("ngram"), k=30, hr_ks=[1, 3, 10])
    assert rows["mrr"].to_list() == pytest.approx([1.0, 0.5, 0.0, 1 / 3])
    assert rows["query_hr@1"].to_list() == [1.0, 0.0, 0.0, 0.0]
    assert rows["query_hr@3"].to_list() == [1.0, 1.0, 0.0, 1.0]
    assert rows["query_hr@30"].to_list() == rows["query_hr"].to_list() == [1.0, 1.0, 0.0, 1.0]
    s = M.summarise(rows)  # no bootstrap: no interval keys
    assert s["mrr"] == pytest.approx((1 + 0.5 + 0 + 1 / 3) / 4)
    assert s["query_hr@1"] == 0.25 and s["query_hr@3"] == 0.75 and s["query_hr@10"] == 0.75
    # cold rows = users 1 and 3: ranks 1 and none
    assert s["cold_user_days"] == 2.0 and s["user_days"] == 4.0
    assert s["cold.mrr"] == 0.5 and s["cold.query_hr@1"] == 0.5 and s["cold.query_hr"] == s["cold_query_hr"] == 0.5
    # Cate HR: user 1 Desks∩Desks, 2 Sofas∩Sofas, 3 rug/lamp unknown, 4 Desks∩Desks → 0.75; cold: 1 of 2
    assert s["cate_hr"] == 0.75 and s["cold.cate_hr"] == s["cold_cate_hr"] == 0.5
    assert s["mean_list_len"] == pytest.approx(8 / 4) and s["cold.mean_list_len"] == 1.5
    assert not any(key.endswith(("_lo", "_hi")) for key in s)


def test_no_categories_leaves_cate_figures_undefined_and_no_cold_rows_gives_nan():
    lists, test = _rows_by_hand()
    test = test.with_columns(metadata=pl.lit({"cold_start": False}))
    for mapper in (None, CategoryMapper([])):
        rows = M.per_row(lists, test, mapper, M.Embedder("ngram"), k=30)
        assert rows["cate_hr"].null_count() == 4 and rows["unique_cates"].null_count() == 4
        s = M.summarise(rows, bootstrap=50)
        assert math.isnan(s["cate_hr"]) and math.isnan(s["cate_hr_lo"]) and math.isnan(s["unique_cates"])
        assert s["query_hr"] == 0.75 and s["query_hr_lo"] <= 0.75 <= s["query_hr_hi"]
        assert s["cold_user_days"] == 0.0 and math.isnan(s["cold.query_hr"]) and math.isnan(s["cold_cate_hr"])


def test_bootstrap_matches_the_textbook_percentile_bootstrap():
    rng = np.random.default_rng(3)
    x = np.stack([(rng.random(40) < 0.3).astype(float), rng.random(40)], axis=1)
    x[::5, 1] = np.nan  # undefined cells are left out of each resample's mean
    est, lo, hi = M.bootstrap_intervals(x, resamples=300, confidence=0.9, seed=7)
    idx = np.random.default_rng(7).integers(0, 40, size=(300, 40))  # the same draws, one resample per row
    boots = np.stack([np.nanmean(x[i], axis=0) for i in idx])
    assert est == pytest.approx(np.nanmean(x, axis=0))
    ref_lo, ref_hi = np.quantile(boots, [0.05, 0.95], axis=0)
    assert lo == pytest.approx(np.fmin(ref_lo, est)) and hi == pytest.approx(np.fmax(ref_hi, est))
    # chunked resamples (small max_cells) are the same resamples
    chunks = np.concatenate(list(M.resample_counts(40, 300, 7, max_cells=40 * 7)))
    assert (chunks == np.concatenate(list(M.resample_counts(40, 300, 7)))).all() and chunks.sum() == 300 * 40


def test_interval_holds_the_estimate_shrinks_with_more_rows_and_is_seeded():
    hits = np.array([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0])  # 0.4
    widths = []
    for reps in (2, 20, 200):
        est, lo, hi = M.bootstrap_intervals(np.tile(hits, reps), resamples=400, confidence=0.95, seed=0)
        assert est[0] == pytest.approx(0.4) and lo[0] <= est[0] <= hi[0]
        widths.append(hi[0] - lo[0])
    assert widths[0] > widths[1] > widths[2] > 0
    # 2000 rows of p = 0.4: the normal approximation's width 2 · 1.96 · sqrt(0.24 / 2000) = 0.0429
    assert widths[2] == pytest.approx(2 * 1.96 * math.sqrt(0.24 / 2000), rel=0.15)
    est, lo, hi = M.bootstrap_intervals(np.full(30, 0.1), resamples=100)  # no spread: a point
    assert lo[0] <= est[0] <= hi[0] and hi[0] - lo[0] < 1e-12 and est[0] == pytest.approx(0.1)
    assert M.bootstrap_intervals(hits, 0)[1][0] != M.bootstrap_intervals(hits, 0)[1][0]  # no resamples: NaN
    a, b = M.bootstrap_intervals(hits, 100, seed=1), M.bootstrap_intervals(hits, 100, seed=1)
    assert (a[1] == b[1]).all() and (a[2] == b[2]).all()


def test_summarise_gives_every_figure_and_its_cold_slice_an_interval():
    lists, test = _rows_by_hand()
    rows = M.per_row(lists, test, CategoryMapper(KNOWN), M.Embedder("ngram"), k=30, hr_ks=[1, 3])
    s = M.summarise(rows, bootstrap=200, confidence=0.95, seed=0)
    figures = [key for key in s if not key.endswith(("_lo", "_hi"))
               and key not in ("user_days", "cold_user_days", "cold_cate_hr", "cold_query_hr")]
    assert {"query_hr@1", "query_hr@3", "query_hr@30", "mrr", "cold.mrr", "cold.query_hr@1", "cate_hr",
            "sem_sim", "novelty", "unique_cates"} <= set(figures)
    for key in figures:
        assert s[f"{key}_lo"] <= s[key] <= s[f"{key}_hi"], key
    assert s["query_hr@1_lo"] == 0.0 and s["query_hr@1_hi"] > 0.25  # 4 rows: a wide interval
