import numpy as np
import polars as pl
import pytest

from aigq.config import WorldConfig
from aigq.data import schema
from aigq.data.hidden import HiddenModel
from aigq.data.simulate import simulate_world
from aigq.data.vocabulary import load_vocabulary, parent_of


def _read(world, name):
    return pl.read_parquet(schema.table_files(world, name))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("w") / "world"
    meta = simulate_world(WorldConfig(users=600, chunk_users=250), seed=3, out=out)
    return out, meta


def test_same_seed_same_world_other_seed_other_world(tmp_path):
    wc = WorldConfig(users=200, days=6, chunk_users=80)
    simulate_world(wc, 1, tmp_path / "a")
    simulate_world(wc, 1, tmp_path / "b")
    simulate_world(wc, 2, tmp_path / "c")
    for name in ("users", "items", "events", "exposures"):
        assert _read(tmp_path / "a", name).equals(_read(tmp_path / "b", name)), name
    assert not _read(tmp_path / "a", "events").equals(_read(tmp_path / "c", "events"))


def test_world_streams_in_chunks_and_tables_are_consistent(world):
    out, meta = world
    assert len(schema.table_files(out, "events")) == 3  # 600 users / 250 per chunk
    users, items, events, ex = (_read(out, n) for n in ("users", "items", "events", "exposures"))
    queries = _read(out, "queries")
    assert users["user_id"].to_list() == list(range(1, 601))
    assert meta["events"] == len(events) > 10_000 and meta["exposures"] == len(ex)
    assert set(events["type"].unique()) == set(schema.EVENT_TYPES)
    days = events.select(schema.day_expr(pl.col("ts"), "2025-10-01")).to_series()
    assert days.min() >= 1 and days.max() <= 32
    # referential integrity: every click hits a real item, every query is in the catalogue's query table
    assert events.filter(pl.col("type") != "search")["item_id"].is_in(items["item_id"].implode()).all()
    assert events.filter(pl.col("type") == "search")["query"].is_in(queries["query"].implode()).all()
    # the 3 shown queries are the head of the legacy ranker's top-K, all distinct
    assert (ex["shown"] == ex["ranker_topk"].list.head(3)).all()
    assert (ex["ranker_topk"].list.n_unique() == ex["ranker_topk"].list.len()).all()
    assert (ex["clicked"].list.len() == 3).all()


def test_clicked_hint_becomes_a_search_in_the_same_session(world):
    out, _ = world
    ex = _read(out, "exposures").filter(pl.col("clicked").list.any()).head(200)
    clicked = ex.explode(["shown", "clicked"]).filter("clicked").select("session_id", query="shown", ets="ts")
    searches = _read(out, "events").filter(pl.col("type") == "search").select("session_id", "query", "ts")
    joined = clicked.join(searches, on=["session_id", "query"], how="left")
    assert joined["ts"].null_count() == 0
    assert (joined["ts"] > joined["ets"]).all()


def test_position_bias_and_hidden_click_model_agree_with_logged_clicks(world):
    out, _ = world
    ex = _read(out, "exposures")
    slot_ctr = [ex["clicked"].list.get(i).mean() for i in range(3)]
    assert slot_ctr[0] > slot_ctr[1] > slot_ctr[2] > 0
    req = (
        ex.with_columns(day=schema.day_expr(pl.col("ts"), "2025-10-01"), slot=pl.lit([0, 1, 2]))
        .explode(["shown", "clicked", "slot"])
        .select("user_id", "day", pl.col("shown").alias("query"), "slot", "clicked")
    )
    p = HiddenModel(out).click_probability(req)
    y = req["clicked"].to_numpy()
    assert abs(p.mean() - y.mean()) < 0.02  # calibrated: the simulator clicked with exactly these probabilities
    # clicked shown queries had higher hidden probability than unclicked ones (AUC by rank statistic)
    ranks = np.argsort(np.argsort(p)) + 1
    auc = (ranks[y].sum() - y.sum() * (y.sum() + 1) / 2) / (y.sum() * (~y).sum())
    assert auc > 0.7


def test_cold_start_users_arrive_late_with_few_behaviours(world):
    out, _ = world
    hidden = pl.read_parquet(out / "hidden" / "interests" / "*.parquet")
    cold_ids = hidden.filter("cold_start")["user_id"].unique()
    users = _read(out, "users")
    cold = users.filter(pl.col("user_id").is_in(cold_ids.implode()))
    assert len(cold) > 30
    first_day = cold.select(schema.day_expr(pl.col("first_seen"), "2025-10-01")).to_series()
    assert (first_day >= 30).all()  # cold_start_days = 3 of 32
    per_user = _read(out, "events").group_by("user_id").len()
    cold_mean = per_user.filter(pl.col("user_id").is_in(cold_ids.implode()))["len"].mean()
    warm_mean = per_user.filter(~pl.col("user_id").is_in(cold_ids.implode()))["len"].mean()
    assert cold_mean < warm_mean / 4


def test_hidden_model_is_apart_from_the_logs(world):
    out, _ = world
    assert (out / "hidden" / "click_model.json").is_file()
    for name in schema.TABLES:
        for f in schema.table_files(out, name):
            assert "hidden" not in f.parts


def test_vocabulary_from_file_and_templates(tmp_path):
    f = tmp_path / "v.tsv"
    f.write_text("query\tcategory\nRed  Dress\tDresses\nsummer dress\tDresses\nwool hat\tKnit Hats\n\tEmpty\n")
    v = load_vocabulary(str(f), templates_per_category=2, seed=0)
    assert v.categories == ["Dresses", "Knit Hats"]
    assert v.queries[:2] == ["red dress", "summer dress"] and v.q_real.sum() == 3
    assert len(v.queries) == 3 + 2 * 2
    t = load_vocabulary("templates", templates_per_category=3, seed=0)
    assert not t.q_real.any() and len(t.queries) == 3 * t.n_categories
    assert parent_of("Coffee & Cocktail Tables") == "Tables"
    with pytest.raises(FileNotFoundError):
        load_vocabulary(str(tmp_path / "nope.tsv"), 1, 0)


def test_custom_vocabulary_world(tmp_path):
    f = tmp_path / "v.tsv"
    f.write_text("".join(f"q{i} thing\tCat{i % 4}\n" for i in range(40)))
    meta = simulate_world(WorldConfig(users=50, days=4, vocabulary=str(f), templates_per_category=0), 0, tmp_path / "w")
    assert meta["categories"] == 4 and meta["queries"] == 40
    q = _read(tmp_path / "w", "events").filter(pl.col("type") == "search")["query"]
    assert q.str.ends_with(" thing").all()


def test_profile_affinity_ties_interest_categories_to_demographics(tmp_path):
    from aigq.data.simulate import _build_static

    def skew_alignment(affinity):
        """Correlation, over categories, of the hidden gender / age skew with the women's share / mean age of the
        users interested in the category (a category's rows weigh by how many users hold it)."""
        wc = WorldConfig(users=1500, days=4, profile_affinity=affinity)
        out = tmp_path / f"a{affinity}"
        simulate_world(wc, 5, out)
        st = _build_static(wc, 5)
        skew = pl.DataFrame({"category": st.vocab.categories, "G": st.cat_skew[:, 0], "A": st.cat_skew[:, 1]})
        users = _read(out, "users").select("user_id", female=(pl.col("gender") == "Female").cast(pl.Float64), age="age")
        ints = (pl.read_parquet(out / "hidden" / "interests" / "*.parquet").join(users, on="user_id")
                .group_by("category").agg(pl.col("female").mean(), pl.col("age").mean(), n=pl.len())
                .filter(pl.col("n") >= 10).join(skew, on="category"))
        return ints.select(pl.corr("female", "G"), pl.corr("age", "A")).row(0)

    g0, a0 = skew_alignment(0.0)
    g1, a1 = skew_alignment(1.0)
    assert abs(g0) < 0.3 and abs(a0) < 0.3  # 0: the profile says nothing about the categories (−0.17, −0.02)
    # 0.91, 0.91: women lean to the categories of positive gender skew, older users to those of positive age skew
    assert g1 > 0.6 and a1 > 0.6
