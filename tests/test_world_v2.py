"""World v2 (issue 17): v1 byte-identical with every knob off, the public lexicon and its strict parser, taste,
missions, the hidden click model's agreement with the simulator, the calibration targets, the controls."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from aigq.config import ConfigError, WorldConfig, build_config, load_config
from aigq.data.categories import CategoryMapper
from aigq.data.hidden import HiddenModel
from aigq.data.lexicon import FACET_WORDS, Lexicon, build_lexicon, head_nouns
from aigq.data.simulate import simulate_world
from aigq.data.validate import read_table
from aigq.data.world_stats import check_targets, world_stats
from aigq.evaluation.ab import QueryResolver

ROOT = Path(__file__).resolve().parents[1]

# Content digests of a v1 world simulated at commit df656c4 (before world v2 existed): every table, every row.
V1_DIGESTS = {
    "categories/part-00000.parquet": "7b1d36162f3457b8",
    "events/part-00000.parquet": "9da212257d0b306e",
    "events/part-00001.parquet": "cf67fc11e7997a21",
    "exposures/part-00000.parquet": "4dce0e9002a18914",
    "exposures/part-00001.parquet": "79ceb514b9c049b0",
    "hidden/interests/part-00000.parquet": "6eb2871b77730aff",
    "hidden/interests/part-00001.parquet": "36b820beb613fb0c",
    "hidden/query_popularity.parquet": "08eda4faa8f373fb",
    "items/part-00000.parquet": "2588ba80b754ca47",
    "queries/part-00000.parquet": "5907e62924dc5d73",
    "users/part-00000.parquet": "cd58189ade1f72b1",
    "users/part-00001.parquet": "4c8c4f13940bcc63",
}


def _digest(world: Path) -> dict[str, str]:
    out = {}
    for f in sorted(world.rglob("*.parquet")):
        df = pl.read_parquet(f)
        df = df.with_columns(pl.col(c).cast(pl.List(pl.String)).list.join("|")
                             for c, t in df.schema.items() if isinstance(t, pl.List))
        out[str(f.relative_to(world))] = hashlib.sha256(df.write_csv().encode()).hexdigest()[:16]
    return out


def _v2(**kw) -> WorldConfig:
    """configs/world_v2.yaml's world, resized."""
    w = load_config(ROOT / "configs" / "world_v2.yaml").world.model_dump()
    w.update(malformed_rate=0.0, **kw)
    return WorldConfig(**w)


@pytest.fixture(scope="module")
def v2_world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("v2") / "world"
    simulate_world(_v2(users=3000), seed=0, out=out)
    return out


def test_every_v2_knob_off_is_world_v1_byte_for_byte(tmp_path):
    off = dict(query_space="vocabulary", taste=0.0, missions=False, activity="daily", shuffle_lexicon=False,
               session_switch=0.0)
    simulate_world(WorldConfig(users=300, days=8, chunk_users=150, malformed_rate=0.01, **off), seed=5,
                   out=tmp_path / "w")
    assert _digest(tmp_path / "w") == V1_DIGESTS
    assert not (tmp_path / "w" / "lexicon.json").exists() and not (tmp_path / "w" / "hidden" / "v2.json").exists()


@pytest.mark.parametrize("knob", ["taste=0.5", "missions=true", "activity=lognormal", "shuffle_lexicon=true"])
def test_v2_knobs_need_the_compositional_query_space(knob):
    with pytest.raises(ConfigError, match="query_space: compositional"):
        build_config({}, [f"world.{knob}"])


def test_head_nouns_split_wands_class_names():
    assert head_nouns("Coffee & Cocktail Tables") == ["coffee table", "cocktail table"]
    assert head_nouns("Mattress Toppers and Pads") == ["mattress topper", "mattress pad"]
    assert head_nouns("Dressers & Chests") == ["dresser", "chest"]
    assert head_nouns("Accent Chests / Cabinets") == ["accent chest", "accent cabinet"]
    assert head_nouns("Benches") == ["bench"]
    assert head_nouns("Wall Mounted Shelves") == ["wall mounted shelf"]


def test_parser_is_strict_and_round_trips():
    lex = build_lexicon(["Sofas", "Coffee & Cocktail Tables", "Area Rugs"])
    sofa, colour, material, style = (lex.nouns.index("sofa"), list(FACET_WORDS).index("colour"),
                                     list(FACET_WORDS).index("material"), list(FACET_WORDS).index("style"))
    hit = lex.parse("Grey  VELVET sofas!")  # case, punctuation, plural and spacing are normalised
    assert hit == (sofa, {colour: FACET_WORDS["colour"].index("grey"), material: FACET_WORDS["material"].index("velvet")})
    assert lex.render(*hit) == "grey velvet sofa"
    assert lex.parse("mid century modern coffee table") == (lex.nouns.index("coffee table"),
                                                            {style: FACET_WORDS["style"].index("mid century modern")})
    # unparseable: an unknown word, no noun, two nouns, a facet type twice — never a near match
    for text in ["comfy sofa", "grey velvet", "sofa area rug", "grey blue sofa", "sofaa", ""]:
        assert lex.parse(text) is None, text


def test_every_query_of_a_v2_world_parses_back_to_its_category(v2_world):
    lex = Lexicon.from_world(v2_world)
    q = read_table(v2_world, "queries")
    assert q.height > 5000
    for text, cat in q.sample(2000, seed=0).iter_rows():
        hit = lex.parse(text)
        assert hit is not None and lex.leaves[hit[0]] == cat and lex.render(*hit) == text


def test_v2_world_lands_within_the_calibration_targets(v2_world):
    tables = {t: read_table(v2_world, t) for t in ("events", "queries", "categories", "exposures")}
    stats = world_stats(tables)
    assert all(ok for _, ok in check_targets(stats)), check_targets(stats)
    assert stats["leaf_categories"] > 190  # finer than WANDS' classes


def test_v2_is_deterministic(tmp_path):
    wc = _v2(users=400)
    simulate_world(wc, 3, tmp_path / "a")
    simulate_world(wc, 3, tmp_path / "b")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")


def test_hidden_click_model_agrees_with_the_simulated_clicks(v2_world):
    """The evaluator's hidden model (parsing the shown text back) predicts the simulator's realised HintQ clicks."""
    hidden = HiddenModel(v2_world)
    exp = read_table(v2_world, "exposures")
    start = pl.lit("2025-10-01").str.to_date()
    shown = (exp.with_columns(day=((pl.col("ts").dt.date() - start).dt.total_days() + 1).cast(pl.Int32))
             .filter(pl.col("shown").list.len() == 3)
             .select("user_id", "day", "shown", "clicked").explode("shown", "clicked")
             .with_columns(slot=pl.int_range(pl.len()) % 3))
    p = hidden.click_probability(shown.select("user_id", "day", pl.col("shown").alias("query"), "slot"))
    clicked = shown["clicked"].cast(pl.Float64).to_numpy()
    se = np.sqrt(p.mean() * (1 - p.mean()) / len(p))
    assert abs(p.mean() - clicked.mean()) < 4 * se + 0.002
    hi = p > np.quantile(p, 0.9)
    assert clicked[hi].mean() > 2 * clicked[~hi].mean()  # the model ranks the clicks, not only their level


def test_unparseable_text_gets_the_base_rate_and_no_category(v2_world):
    hidden = HiddenModel(v2_world)
    user = int(read_table(v2_world, "users")["user_id"][0])
    req = pl.DataFrame({"user_id": [user] * 2, "day": pl.Series([5, 5], dtype=pl.Int32),
                        "query": ["comfy sofa thing", "xyzzy"], "slot": [0, 0]})
    p = hidden.click_probability(req)
    base = 1 / (1 + np.exp(-hidden.params.base))
    assert np.allclose(p, base)
    res = QueryResolver.for_hidden(hidden).resolve(["comfy sofa thing", "grey sofa"])
    assert res["category"].to_list() == [None, "Sofas"] and res["match"].to_list() == ["unknown", "parsed"]
    assert CategoryMapper.from_world(v2_world).map(["grey sofas", "grey sofa thing"]) == ["Sofas", None]


def _fav_and_other(hidden: HiddenModel, user: int, facet: int) -> tuple[int, int]:
    i = int(np.searchsorted(hidden._taste_users, user))
    fav = int(hidden._fav[i, facet])
    p = hidden._fval_p[facet]
    other = int(np.argsort(np.abs(p - p[fav]))[1])  # the value with the nearest popularity
    return fav, other


def test_taste_lifts_clicks_on_the_favourite_facet_and_the_null_taste_world_does_not(v2_world, tmp_path):
    null = tmp_path / "null"
    simulate_world(_v2(users=3000, taste=0.0), seed=0, out=null)
    colour = list(FACET_WORDS).index("colour")
    for world, tasteful in ((v2_world, True), (null, False)):
        hidden = HiddenModel(world)
        lex = hidden.lexicon
        users = hidden._taste_users[:50]
        rows = []
        for u in users:
            fav, other = _fav_and_other(hidden, int(u), colour)
            rows += [(int(u), lex.render(lex.nouns.index("sofa"), {colour: v})) for v in (fav, other)]
        req = pl.DataFrame(rows, schema=["user_id", "query"], orient="row").with_columns(
            day=pl.lit(10, pl.Int32), slot=pl.lit(0))
        f = hidden.features(req)
        lift = f["lift"].to_numpy().reshape(-1, 2)
        if tasteful:
            assert (lift[:, 0] > 0).all() and (lift[:, 1] < 0).all()
        else:
            assert (lift == 0).all()


def test_searches_follow_taste(v2_world):
    """With τ = 0.5 a searched facet value is the user's favourite far more often than popularity alone gives."""
    hidden = HiddenModel(v2_world)
    ev = read_table(v2_world, "events").filter(pl.col("type") == "search").head(20000)
    res = hidden.resolve(ev["query"].to_list())
    f = ev.select("user_id", "query").join(res, on="query", how="left")
    colour = list(FACET_WORDS).index("colour")
    f = f.filter(pl.col(f"v{colour}") >= 0)
    pos = np.searchsorted(hidden._taste_users, f["user_id"].to_numpy())
    fav = hidden._fav[pos, colour]
    share = float((f[f"v{colour}"].to_numpy() == fav).mean())
    chance = float((hidden._fval_p[colour] ** 2).sum())
    assert share > 0.45 > 2 * chance


def test_missions_send_buyers_to_a_complement_and_sate_the_bought_leaf(tmp_path):
    def after_buy(world: Path) -> tuple[float, float]:
        ev = read_table(world, "events").sort("user_id", "ts")
        start = pl.lit("2025-10-01").str.to_date()
        ev = ev.with_columns(day=(pl.col("ts").dt.date() - start).dt.total_days() + 1)
        buys = ev.filter(pl.col("type") == "buy").select("user_id", bday="day", bcat="category")
        later = (ev.filter(pl.col("type") == "search").join(buys, on="user_id")
                 .filter((pl.col("day") > pl.col("bday")) & (pl.col("day") <= pl.col("bday") + 7)))
        hidden = HiddenModel(world)
        room = dict(zip(hidden.lexicon.leaves, __import__("json").loads(
            (world / "hidden" / "v2.json").read_text())["room"], strict=True))
        parent = dict(zip(hidden.lexicon.leaves, hidden.lexicon.parents, strict=True))
        same_room = later.select(pl.struct("category", "bcat").map_elements(
            lambda r: room[r["category"]] == room[r["bcat"]] and parent[r["category"]] != parent[r["bcat"]],
            return_dtype=pl.Boolean).mean()).item()
        return float(same_room), float((later["category"] == later["bcat"]).mean())

    on, off = tmp_path / "on", tmp_path / "off"
    simulate_world(_v2(users=2000), seed=1, out=on)
    simulate_world(_v2(users=2000, missions=False, session_buy_rate=0.0), seed=1, out=off)
    room_on, same_on = after_buy(on)
    room_off, same_off = after_buy(off)
    assert room_on > 2 * room_off and room_on > 0.3
    assert same_on < same_off


def test_refinement_goes_from_broad_to_specific(v2_world):
    hidden = HiddenModel(v2_world)
    ev = read_table(v2_world, "events").filter(pl.col("type") == "search").sort("user_id", "ts")
    ev = ev.with_columns(r=pl.int_range(pl.len()).over("user_id", "category"))
    res = hidden.resolve(ev["query"].unique().to_list())
    n = res.select("query", k=pl.sum_horizontal(pl.col(f"v{t}") >= 0 for t in range(6)))
    ev = ev.join(n, on="query")
    first, third = ev.filter(pl.col("r") == 0)["k"].mean(), ev.filter(pl.col("r") == 2)["k"].mean()
    assert third > first + 0.8


def test_shuffled_lexicon_permutes_facet_words_and_complements(tmp_path):
    simulate_world(_v2(users=300), 0, tmp_path / "a")
    simulate_world(_v2(users=300, shuffle_lexicon=True), 0, tmp_path / "b")
    a, b = Lexicon.from_world(tmp_path / "a"), Lexicon.from_world(tmp_path / "b")
    flat_a, flat_b = [w for ws in a.words for w in ws], [w for ws in b.words for w in ws]
    assert sorted(flat_a) == sorted(flat_b) and flat_a != flat_b and a.nouns == b.nouns
    ra = __import__("json").loads((tmp_path / "a" / "hidden" / "v2.json").read_text())["room"]
    rb = __import__("json").loads((tmp_path / "b" / "hidden" / "v2.json").read_text())["room"]
    assert sorted(ra) == sorted(rb) and ra != rb


def test_control_configs_extend_world_v2():
    v2 = load_config(ROOT / "configs" / "world_v2.yaml")
    null = load_config(ROOT / "configs" / "world_v2_null_taste.yaml")
    shuf = load_config(ROOT / "configs" / "world_v2_shuffled.yaml")
    tiny = load_config(ROOT / "configs" / "tiny_cpu.yaml")
    assert v2.world.query_space == "compositional" and v2.world.taste > 0 and v2.model == tiny.model
    assert null.world.taste == 0 and null.world.model_dump(exclude={"taste"}) == v2.world.model_dump(exclude={"taste"})
    assert shuf.world.shuffle_lexicon and shuf.run.output_dir != v2.run.output_dir != null.run.output_dir


def test_extends_loop_is_a_clear_error(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "a.yaml")
