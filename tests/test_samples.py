"""Sample builder (paper §3.2–§3.3, Eqs. 1–5) on a hand-built 5-day log: days 1–3 train, days 4–5 test."""

from __future__ import annotations

import json
from datetime import datetime

import polars as pl
import pyarrow.parquet as pq
import pytest

from aigq.config import SamplesConfig
from aigq.data import prompt as P
from aigq.data.samples import OUTPUT_SCHEMA, build_samples, build_samples_to, write_samples
from aigq.data.schema import TABLES

START, DAYS = "2025-10-01", 5


def T(day: int, h: int, m: int = 0, s: int = 0) -> datetime:
    return datetime(2025, 10, day, h, m, s)


def _frame(name: str, rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=TABLES[name], orient="row") if rows else pl.DataFrame(schema=TABLES[name])


def _ev(user, ts, type_, query=None, item=None):
    return {"user_id": user, "ts": ts, "type": type_, "query": query, "item_id": item, "category": None,
            "session_id": 0}


def _exp(eid, user, ts, shown, clicked, topk):
    return {"exposure_id": eid, "user_id": user, "ts": ts, "session_id": 0, "shown": shown, "clicked": clicked,
            "ranker_topk": topk}


E30_TOPK = ["trail shoes", "winter boots", "frying pan", "mystery", "lego set", "sandals", "teddy bear"]


@pytest.fixture
def tables() -> dict[str, pl.DataFrame]:
    """User 1: days 1–4 (E20 no click, E30 two clicks, E40 on a test day); user 2: only days 4–5 (cold start);
    user 3: one search on day 1 and no profile row. Category tree: shoes{running, boots, sandals},
    kitchen{pans}, toys{lego, plush}; "mystery" is in no table."""
    users = [
        {"user_id": 1, "gender": "F", "age": 44, "city": "Beijing", "occupation": "Medical Staff", "first_seen": T(1, 0)},
        {"user_id": 2, "gender": "M", "age": None, "city": "Hangzhou", "occupation": None, "first_seen": T(4, 0)},
    ]
    items = [
        {"item_id": i, "title": f"t{i}", "category": c, "category_path": None, "brand": None, "price": 1.0,
         "description": d}
        for i, c, d in [(1, "running", "Light running shoe"), (2, "boots", "Leather ankle boot"),
                        (3, "pans", "Cast iron pan")]
    ]
    qc = [("running shoes", "running"), ("trail shoes", "running"), ("winter boots", "boots"),
          ("ankle boots", "boots"), ("sandals", "sandals"), ("frying pan", "pans"), ("lego set", "lego"),
          ("teddy bear", "plush")]
    cats = [("running", "shoes"), ("boots", "shoes"), ("sandals", "shoes"), ("pans", "kitchen"), ("lego", "toys"),
            ("plush", "toys")]
    events = [
        _ev(1, T(1, 10), "search", "running shoes"),
        _ev(1, T(1, 10, 5), "click", item=1),
        _ev(1, T(2, 9), "click", item=3),
        _ev(1, T(2, 9, 30), "cart", item=1),
        _ev(1, T(3, 8), "click", item=2),  # before day-3 t_first: context, not label
        _ev(1, T(3, 9), "search", "trail shoes"),  # exactly at E30's ts: never in d-30's prompt
        _ev(1, T(3, 9, 10), "search", "frying pan"),
        _ev(1, T(3, 9, 20), "click", item=3),
        _ev(1, T(4, 10), "search", "lego set"),
        _ev(1, T(4, 12), "search", "lego set"),
        _ev(1, T(4, 12, 30), "search", "frying pan"),
        _ev(2, T(4, 23, 59, 59), "click", item=1),
        _ev(2, T(5, 0), "click", item=3),  # exactly 00:00 of day 5: not in x-2-5's context
        _ev(2, T(5, 10), "search", "winter boots"),
        _ev(3, T(1, 7), "search", "lego set"),
    ]
    three = ["frying pan", "running shoes", "lego set"]
    exposures = [
        _exp(20, 1, T(2, 10), three, [False] * 3, three),
        _exp(30, 1, T(3, 9), ["winter boots", "frying pan", "lego set"], [True, False, True], E30_TOPK),
        _exp(40, 1, T(4, 11), ["running shoes", "trail shoes", "winter boots"], [False, True, False], ["running shoes"]),
        _exp(50, 2, T(5, 11), ["sandals", "lego set", "frying pan"], [False] * 3, ["sandals"]),
    ]
    return {
        "users": _frame("users", users),
        "items": _frame("items", items),
        "queries": pl.DataFrame(qc, schema=TABLES["queries"], orient="row"),
        "categories": pl.DataFrame(cats, schema=TABLES["categories"], orient="row"),
        "events": _frame("events", events),
        "exposures": _frame("exposures", exposures),
    }


def build(tables, **kw):
    gen = kw.pop("llm_gen", None)
    chunk = kw.pop("chunk_size", 250_000)
    return build_samples(tables, START, DAYS, SamplesConfig(**kw), llm_gen=gen, chunk_size=chunk)


def row(df: pl.DataFrame, sample_id: str) -> dict:
    rows = df.filter(pl.col("sample_id") == sample_id).to_dicts()
    assert len(rows) == 1, f"{sample_id}: {len(rows)} rows"
    return rows[0]


def sources(r: dict) -> list[str]:
    return r["metadata"]["label_sources"]


D30_SEQ = (
    "<1><Today><click> Leather ankle boot;; <2><1_day_ago><click> Cast iron pan;; "
    "<3><2_days_ago><click> Light running shoe;; <4><2_days_ago><search> running shoes"
)
PROFILE_1 = "User Profile: { Gender: F, Age: 44, Occupation: Medical Staff, City: Beijing }."


# ---------------------------------------------------------------- prompt helpers


def test_target_round_trip_and_lenient_parse():
    qs = ["winter boots", "frying pan", "lego set"]
    assert P.format_target(qs) == "<q1> winter boots ; <q2> frying pan ; <q3> lego set ;"
    assert P.parse_target(P.format_target(qs)) == qs
    assert P.parse_target(" a;b ;  ; c ") == ["a", "b", "c"]
    assert P.parse_target("") == []


def test_special_tokens():
    cfg = SamplesConfig(history_len=3, history_days=2)
    assert P.special_tokens(cfg) == ["<1>", "<2>", "<3>", "<Today>", "<1_day_ago>", "<2_days_ago>", "<search>",
                                     "<click>", "<cart>", "<buy>"]


def test_python_prompt_matches_builder(tables):
    s = build(tables)
    beh = [(0, "click", "Leather ankle boot"), (1, "click", "Cast iron pan"), (2, "click", "Light running shoe"),
           (2, "search", "running shoes"), (40, "search", "too old")]  # most recent first; the last one is too old
    profile = {"gender": "F", "age": 44, "occupation": "Medical Staff", "city": "Beijing"}
    assert P.format_prompt(profile, beh, SamplesConfig()) == row(s.direct, "d-30")["prompt"]


# ---------------------------------------------------------------- Direct (Eq. 3) and leakage


def test_direct_exact_prompt_and_no_leakage(tables):
    r = row(build(tables).direct, "d-30")
    assert r["prompt"] == f"Please Recommend the next 10 queries.\n{PROFILE_1}\nUser Behavior Sequence: {{ {D30_SEQ} }}"
    assert "trail shoes" not in r["prompt"]  # searched at exactly the exposure ts
    assert "frying pan" not in r["prompt"] and "<5>" not in r["prompt"]  # later behaviours
    assert (r["user_id"], r["day"], r["variant"]) == (1, 3, "direct")
    m = r["metadata"]
    assert (m["n_behaviours"], m["n_history"], m["cold_start"], m["rerank"], m["compress"]) == (4, 4, True, True, True)


def test_direct_plain_prompt(tables):
    r = row(build(tables, compress=False).direct, "d-30")
    instr = SamplesConfig().instruction_plain.format(n=10)
    seq = (
        "1 | Today | click | Leather ankle boot;; 2 | 1 day ago | click | Cast iron pan;; "
        "3 | 2 days ago | click | Light running shoe;; 4 | 2 days ago | search | running shoes"
    )
    assert r["prompt"] == f"{instr}\n{PROFILE_1}\nUser Behavior Sequence: {{ {seq} }}"


def test_direct_label_order_eq3(tables):
    s = build(tables)
    assert s.direct["sample_id"].to_list() == ["d-30"]  # E20 has no click; E40 is a test day
    r = row(s.direct, "d-30")
    assert r["target"] == ["winter boots", "lego set", "trail shoes", "frying pan", "mystery", "sandals", "teddy bear"]
    assert sources(r) == ["click", "click", "rank", "rank", "rank", "rank", "rank"]
    r = row(build(tables, rank_top_k=3, label_cap=4).direct, "d-30")
    assert r["target"] == ["winter boots", "lego set", "trail shoes", "frying pan"]
    r = row(build(tables, label_cap=1).direct, "d-30")
    assert r["target"] == ["winter boots"] and r["triggers"] == [[1]]


def test_direct_rerank_off_is_ranker_order(tables):
    r = row(build(tables, rerank=False).direct, "d-30")
    assert r["target"] == E30_TOPK and set(sources(r)) == {"rank"}
    assert row(build(tables, rerank=False, rank_top_k=2).direct, "d-30")["target"] == E30_TOPK[:2]


def test_direct_triggers(tables):
    r = row(build(tables).direct, "d-30")
    # boots leaf → [1]; lego/toys absent → []; running → [3, 4]; pans → [2]; unknown → [];
    # sandals: no sandals behaviour, parent-shoes fallback → [1, 3, 4]; plush/toys absent → [].
    assert r["triggers"] == [[1], [], [3, 4], [2], [], [1, 3, 4], []]
    assert row(build(tables, trigger_max=2).direct, "d-30")["triggers"][5] == [1, 3]


def test_history_truncation(tables):
    r = row(build(tables, history_len=2).direct, "d-30")
    assert "<2><1_day_ago><click> Cast iron pan }" in r["prompt"] and "<3>" not in r["prompt"]
    assert (r["metadata"]["n_behaviours"], r["metadata"]["n_history"]) == (2, 4)
    r = row(build(tables, history_days=1).direct, "d-30")  # day-1 behaviours are 2 days old
    assert r["prompt"].endswith("{ <1><Today><click> Leather ankle boot;; <2><1_day_ago><click> Cast iron pan }")
    assert r["triggers"][2] == [1]  # trail shoes: running behaviours fell out; parent shoes → boots at <1>


# ---------------------------------------------------------------- Think (Eqs. 2, 4)


def test_think_sessions_and_label_order(tables):
    s = build(tables)
    assert s.think["sample_id"].to_list() == ["t-1-1", "t-1-2", "t-1-3", "t-3-1"]
    r = row(s.think, "t-1-3")
    # context = behaviours before t_first (09:00): the 08:00 click is context, not label
    assert r["prompt"].endswith(f"{{ {D30_SEQ} }}")
    # click → search → rank; "mystery" (unknown category) and "teddy bear" (toys, unrelated) dropped;
    # "sandals" kept (sibling of boots/running under shoes)
    assert r["target"] == ["winter boots", "lego set", "trail shoes", "frying pan", "sandals"]
    assert sources(r) == ["click", "click", "search", "search", "rank"]
    assert r["triggers"] == [[1], [], [3, 4], [2], [1, 3, 4]]
    r = row(s.think, "t-1-2")  # E20 rank only: lego set (toys) has no related behaviour
    assert (r["target"], sources(r)) == (["frying pan", "running shoes"], ["rank", "rank"])
    r = row(s.think, "t-3-1")  # no profile row, no prior behaviour
    assert r["prompt"] == (
        "Please Recommend the next 10 queries.\nUser Profile: { Gender: unknown, Age: unknown, "
        "Occupation: unknown, City: unknown }.\nUser Behavior Sequence: { }"
    )
    assert r["target"] == ["lego set"] and r["triggers"] == [[]] and r["metadata"]["n_behaviours"] == 0


def test_think_filter_none_keeps_all(tables):
    r = row(build(tables, think_filter="none").think, "t-1-3")
    assert r["target"] == ["winter boots", "lego set", "trail shoes", "frying pan", "mystery", "sandals", "teddy bear"]


def test_think_rerank_off_is_chronological(tables):
    r = row(build(tables, rerank=False).think, "t-1-3")
    # 09:00 search trail shoes, then E30's ranker list (its clicks come after), then 09:10 search (a duplicate)
    assert r["target"] == ["trail shoes", "winter boots", "frying pan", "lego set", "sandals"]
    assert sources(r) == ["search", "click", "search", "click", "rank"]


def test_think_llm_gen_last_and_filtered(tables):
    def gen(df: pl.DataFrame) -> pl.DataFrame:
        assert set(df.columns) >= {"sample_id", "prompt"}
        return pl.DataFrame({"sample_id": ["t-1-3"], "queries": [["ankle boots", "teddy bear", "winter boots"]]})

    r = row(build(tables, llm_gen=gen).think, "t-1-3")
    assert r["target"][-2:] == ["sandals", "ankle boots"] and sources(r)[-1] == "gen"
    assert r["triggers"][-1] == [1]


# ---------------------------------------------------------------- test split


def test_test_split(tables):
    s = build(tables)
    assert s.test["sample_id"].to_list() == ["x-1-4", "x-2-5"]
    r = row(s.test, "x-1-4")
    assert r["target"] == ["lego set", "trail shoes", "frying pan"] and sources(r) == ["search", "click", "search"]
    assert r["triggers"] == [[], [], []]
    assert r["prompt"].split("{ ")[2].startswith("<1><1_day_ago><click> Cast iron pan;; <2><1_day_ago><search> frying")
    assert (r["metadata"]["n_history"], r["metadata"]["cold_start"]) == (7, False)
    r = row(s.test, "x-2-5")
    assert r["prompt"].endswith(
        "User Profile: { Gender: M, Age: unknown, Occupation: unknown, City: Hangzhou }.\n"
        "User Behavior Sequence: { <1><1_day_ago><click> Light running shoe }"
    )
    assert r["target"] == ["winter boots"] and r["metadata"]["cold_start"] is True
    for df in (s.direct, s.think):
        assert df["day"].max() <= DAYS - 2
    assert s.test["day"].min() > DAYS - 2


def test_behaviour_types_cart(tables):
    r = row(build(tables, behaviour_types=["search", "click", "cart"]).test, "x-1-4")
    assert "<cart> Light running shoe" in r["prompt"] and r["metadata"]["n_history"] == 8


# ---------------------------------------------------------------- determinism, schema, output


def test_deterministic_and_chunk_independent(tables):
    a, b = build(tables), build(tables, chunk_size=1)
    shuffled = {k: v.sample(fraction=1.0, shuffle=True, seed=3) for k, v in tables.items()}
    c = build(shuffled)
    for x, y in ((a, b), (a, c)):
        for name in ("direct", "think", "test"):
            assert getattr(x, name).equals(getattr(y, name)), name
    for df in (a.direct, a.think, a.test):
        assert dict(df.schema) == OUTPUT_SCHEMA
        assert (df["target"].list.len() == df["triggers"].list.len()).all()


def test_empty_exposures(tables):
    t = dict(tables)
    del t["exposures"]
    s = build(t, label_source="exposures")
    assert s.direct.height == 0 and dict(s.direct.schema) == OUTPUT_SCHEMA
    assert build(t).direct.height > 0  # auto: a world without exposures gets next-search labels
    assert row(s.think, "t-1-3")["target"] == ["trail shoes", "frying pan"]
    assert row(s.test, "x-1-4")["target"] == ["lego set", "frying pan"]


def test_write_samples(tables, tmp_path):
    cfg = SamplesConfig()
    s = build(tables)
    write_samples(s, tmp_path / "samples", cfg)
    meta = json.loads((tmp_path / "samples" / "meta.json").read_text())
    assert meta["rows"] == {"direct": 1, "think": 4, "test": 2, "last_query": 1}
    assert meta["special_tokens"] == s.special_tokens
    assert meta["samples_config"] == cfg.model_dump() | {"label_source": "exposures"}  # auto, resolved
    assert pl.read_parquet(tmp_path / "samples" / "think.parquet").equals(s.think)
    kv = pl.read_parquet_metadata(tmp_path / "samples" / "direct.parquet")
    assert json.loads(kv["aigq.special_tokens"]) == s.special_tokens
    st = s.stats()
    assert st["think.samples"] == 4.0 and st["test.cold_start_share"] == 0.5
    assert st["direct.source_share.click"] == 2 / 7 and st["direct.trigger_coverage"] == 4 / 7


def test_streamed_build_writes_the_same_files_chunk_by_chunk(tables, tmp_path):
    """build_samples_to (one chunk in memory at a time) writes exactly what the in-memory build holds, for any chunk
    size, with statistics equal to SampleSet.stats() and an empty but typed file for an empty split."""
    cfg = SamplesConfig()
    s = build(tables)
    for chunk in (1, 3):
        out = tmp_path / f"streamed{chunk}"
        stats = build_samples_to(tables, START, DAYS, cfg, out, chunk_size=chunk, shard_users=chunk)
        for split in ("direct", "think", "test", "last_query"):
            assert pl.read_parquet(out / f"{split}.parquet").equals(getattr(s, split)), (chunk, split)
        assert stats == s.stats()
        assert json.loads((out / "meta.json").read_text())["rows"] == {"direct": 1, "think": 4, "test": 2,
                                                                       "last_query": 1}
        assert pq.ParquetFile(out / "think.parquet").num_row_groups == -(-4 // chunk)  # one row group per chunk
    t = dict(tables)
    del t["exposures"]
    build_samples_to(t, START, DAYS, cfg.model_copy(update={"label_source": "exposures"}), tmp_path / "noexp")
    empty = pl.read_parquet(tmp_path / "noexp" / "direct.parquet")
    assert empty.height == 0 and dict(empty.schema) == OUTPUT_SCHEMA


# ---------------------------------------------------------------- a plain search log (issue 16)


def _sev(user, ts, type_, session, query=None, item=None):
    return {**_ev(user, ts, type_, query, item), "session_id": session}


@pytest.fixture
def search_log(tables) -> dict[str, pl.DataFrame]:
    """No exposures. User 7: day 1 session 1 a (→ click) b c (→ click), day 2 session 2 d b, day 3 session 3 e,
    day 4 (test) f. User 8: x on day 1, y on day 2 (its held-out last query lies on a train day)."""
    ev = [
        _sev(7, T(1, 9), "search", 1, "a"), _sev(7, T(1, 9, 1), "click", 1, item=1),
        _sev(7, T(1, 9, 2), "search", 1, "b"), _sev(7, T(1, 9, 3), "search", 1, "c"),
        _sev(7, T(1, 9, 4), "click", 1, item=3),
        _sev(7, T(2, 10), "search", 2, "d"), _sev(7, T(2, 10, 5), "search", 2, "b"),
        _sev(7, T(3, 20), "search", 3, "e"), _sev(7, T(4, 10), "search", 4, "f"),
        _sev(8, T(1, 12), "search", 1, "x"), _sev(8, T(2, 12), "search", 1, "y"),
    ]
    return {**tables, "events": _frame("events", ev), "exposures": _frame("exposures", [])}


def test_next_search_labels_session_anchor(search_log):
    """A session start is the anchor; the label is the searches from it to the end of the next day, de-duplicated,
    those followed by an item click first (interest-guided re-ranking), in time order otherwise."""
    d = build(search_log).direct.filter(pl.col("user_id") == 7).sort("sample_id")
    got = {r["metadata"]["anchor_ts"]: (r["target"], sources(r)) for r in d.to_dicts()}
    sc, se = "search_click", "search"
    assert got == {T(1, 9): (["a", "c", "b", "d"], [sc, sc, se, se]),
                   T(2, 10): (["d", "b", "e"], [se, se, se]),  # f is on a test day: never a label
                   T(3, 20): (["e"], [se])}
    plain = build(search_log, rerank=False).direct.filter(pl.col("user_id") == 7)
    assert plain.sort("sample_id")["target"].to_list()[0] == ["a", "b", "c", "d"]
    horizon0 = build(search_log, label_horizon_days=0).direct.filter(pl.col("user_id") == 7).sort("sample_id")
    assert horizon0["target"].to_list()[0] == ["a", "c", "b"]


def test_next_search_context_strictly_before_anchor(search_log):
    """No label behaviour leaks into its own prompt: the context is every behaviour strictly before the anchor, and
    a user's first session (no prior behaviour) still gets a cold-start sample."""
    d = build(search_log).direct.filter(pl.col("user_id") == 7).sort("sample_id")
    first, second = d.to_dicts()[0], d.to_dicts()[1]
    assert first["metadata"]["n_history"] == 0 and first["metadata"]["cold_start"]
    assert second["metadata"]["n_history"] == 5  # a, click, b, c, click — not d, b of its own session
    shown = [c for _, (_, _, c) in P.parse_behaviours(second["prompt"]).items()]
    assert "d" not in shown and {"a", "b", "c"} <= set(shown)
    for r in build(search_log, anchor="search").direct.to_dicts():
        before = search_log["events"].filter((pl.col("user_id") == r["user_id"])
                                             & (pl.col("ts") < r["metadata"]["anchor_ts"]))
        assert r["metadata"]["n_history"] == before.height


def test_next_search_each_search_anchor(search_log):
    d = build(search_log, anchor="search").direct.filter(pl.col("user_id") == 7)
    assert d.height == 6  # a, b, c (day 1), d, b (day 2), e (day 3)
    at_b = d.filter(pl.col("metadata").struct.field("anchor_ts") == T(1, 9, 2)).row(0, named=True)
    assert at_b["target"] == ["c", "b", "d"]


def test_last_query_holdout(search_log):
    """Each user with ≥ 2 distinct queries gets a last_query row (target: the last distinct query, context before
    it); with the hold-out on, no train sample of any split sees it or anything after it."""
    s = build(search_log)
    lq = {r["user_id"]: r for r in s.last_query.to_dicts()}
    assert set(lq) == {7, 8} and lq[8]["target"] == ["y"] and lq[7]["target"] == ["f"]
    assert lq[8]["day"] == 2 and [c for _, (_, _, c) in P.parse_behaviours(lq[8]["prompt"]).items()] == ["x"]
    for split in (s.direct, s.think):
        assert all("y" not in t for t in split.filter(pl.col("user_id") == 8)["target"].to_list())
    assert s.think.filter((pl.col("user_id") == 8) & (pl.col("day") == 2)).height == 0
    off = build(search_log, last_query_holdout=False)
    assert off.direct.filter(pl.col("user_id") == 8)["target"].to_list() == [["x", "y"]]  # one session


def test_next_search_chunking_is_invisible(search_log):
    whole = build(search_log, anchor="search")
    for chunk in (1, 2):
        parts = build(search_log, anchor="search", chunk_size=chunk)
        for split in ("direct", "think", "last_query"):
            assert getattr(parts, split).equals(getattr(whole, split)), (chunk, split)


def test_user_shards_build_the_same_files(search_log, tmp_path):
    """Shard by shard of users (the memory bound of a big build) writes exactly the whole-log build's files."""
    cfg = SamplesConfig(anchor="search")
    build_samples_to(search_log, START, DAYS, cfg, tmp_path / "whole")
    build_samples_to(search_log, START, DAYS, cfg, tmp_path / "shards", shard_users=1)
    for split in ("direct", "think", "test", "last_query"):
        whole = pl.read_parquet(tmp_path / "whole" / f"{split}.parquet")
        assert pl.read_parquet(tmp_path / "shards" / f"{split}.parquet").equals(whole), split
    assert json.loads((tmp_path / "shards" / "meta.json").read_text()) == \
        json.loads((tmp_path / "whole" / "meta.json").read_text())
