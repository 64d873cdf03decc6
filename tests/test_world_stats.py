"""World calibration statistics (``aigq/data/world_stats.py``, ``benchmarks/world_stats.py``) on a hand-built log
where every figure is worked out by hand, and the script on a small simulated world."""

from __future__ import annotations

import importlib.util
import json
import shutil
from datetime import datetime
from fractions import Fraction
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from aigq.cli import app
from aigq.data import world_stats as W
from aigq.data.schema import TABLES
from aigq.data.vocabulary import normalise_query

ROOT = Path(__file__).resolve().parents[1]


def T(day: int, h: int, m: int = 0, s: int = 0) -> datetime:
    return datetime(2025, 10, day, h, m, s)


def _frame(name: str, rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=TABLES[name], orient="row") if rows else pl.DataFrame(schema=TABLES[name])


def _ev(user, ts, type_, query=None, cat=None, session=0, item=None):
    return {"user_id": user, "ts": ts, "type": type_, "query": query, "item_id": item, "category": cat,
            "session_id": session}


def _exp(eid, clicked):
    return {"exposure_id": eid, "user_id": 1, "ts": T(1, 12), "session_id": 0, "shown": ["x", "y", "z"],
            "clicked": clicked, "ranker_topk": []}


def approx(x) -> pytest.approx:
    return pytest.approx(float(x), abs=1e-12)


@pytest.fixture
def tables() -> dict[str, pl.DataFrame]:
    """Category tree: P{a, b}, Q{c}, d (no parent), e (its own parent, as the importer writes a parentless leaf),
    P → root (an inner node), "unknown". Queries table: red/blue shoe → a, boot → b, pan → c, lamp → d.

    User 1, nine query events (plus a blank search and a click):
      1 "Red  Shoe " (→ "red shoe", a, s1, d1 10:00)   2 "blue shoe" (a, s1, 10:10)   3 "red shoe" (a, s1, 10:20)
      4 "boot" (b, s2, 11:00)   5 "BOOT" (b, s3, d2 09:00)   6 "pan" (event category "unknown" → table's c, s3, 09:10)
      7 "mystery" (no category anywhere, s3, 09:20)   8 "lamp" (d, s3, 09:25)
      9 "desk lamp" (event category c, not in the queries table; s3, 09:55 = exactly 30 min later)
    User 2: "pan" (c, d1 12:00) + a click on day 3. User 3: "lamp" (d, d3 08:00). User 4: clicks on days 1 and 2.
    The events are stored in reverse time order: every statistic must order by time itself."""
    cats = [("a", "P"), ("b", "P"), ("c", "Q"), ("d", None), ("e", "e"), ("P", "root"), ("unknown", "unknown")]
    qc = [("red shoe", "a"), ("blue shoe", "a"), ("boot", "b"), ("pan", "c"), ("lamp", "d")]
    events = [
        _ev(1, T(1, 10, 0), "search", "Red  Shoe ", session=1),
        _ev(1, T(1, 10, 5), "click", item=1, cat="a", session=1),
        _ev(1, T(1, 10, 10), "search", "blue shoe", session=1),
        _ev(1, T(1, 10, 20), "search", "red shoe", session=1),
        _ev(1, T(1, 11, 0), "search", "boot", session=2),
        _ev(1, T(2, 9, 0), "search", "BOOT", session=3),
        _ev(1, T(2, 9, 10), "search", "pan", cat="unknown", session=3),
        _ev(1, T(2, 9, 20), "search", "mystery", session=3),
        _ev(1, T(2, 9, 25), "search", "lamp", session=3),
        _ev(1, T(2, 9, 30), "search", "   ", session=3),  # blank: not a query event
        _ev(1, T(2, 9, 55), "search", "desk lamp", cat="c", session=3),
        _ev(2, T(1, 12), "search", "pan", session=4),
        _ev(2, T(3, 8), "click", item=1, session=5),
        _ev(3, T(3, 8), "search", "lamp", session=6),
        _ev(4, T(1, 9), "click", item=1, session=7),
        _ev(4, T(2, 9), "click", item=1, session=8),
    ]
    exposures = [_exp(1, [True, False, False]), _exp(2, [False, False, False]), _exp(3, [True, True, False])]
    return {
        "queries": pl.DataFrame(qc, schema=TABLES["queries"], orient="row"),
        "categories": pl.DataFrame(cats, schema=TABLES["categories"], orient="row"),
        "events": _frame("events", events[::-1]),
        "exposures": _frame("exposures", exposures),
    }


@pytest.fixture
def qe(tables) -> pl.DataFrame:
    return W.query_events(tables["events"], tables["queries"])


@pytest.fixture
def pairs(qe, tables) -> pl.DataFrame:
    return W.consecutive_pairs(qe, tables["categories"])


def test_normal_form_is_normalise_query():
    texts = ["  Red   Shoe ", "ÄPFEL\tbaum", "a\n b", "x", "Sofa  Table  "]
    got = pl.DataFrame({"q": texts}).select(W.normalise_expr("q"))["q"].to_list()
    assert got == [normalise_query(t) for t in texts]


def test_query_events_text_and_category(qe):
    u1 = qe.filter(pl.col("user_id") == 1)
    assert u1["q"].to_list() == ["red shoe", "blue shoe", "red shoe", "boot", "boot", "pan", "mystery", "lamp",
                                 "desk lamp"]
    assert u1["cat"].to_list() == ["a", "a", "a", "b", "b", "c", None, "d", "c"]
    assert qe.height == 11


def test_per_user_statistics(qe, tables):
    n, d = W.queries_per_user(qe)
    assert n == approx(Fraction(11, 3)) and d == approx(Fraction(9, 3))  # distinct: 7 + 1 + 1
    assert W.single_query_user_share(qe) == approx(Fraction(2, 3))
    assert W.multi_day_user_share(tables["events"]) == approx(Fraction(3, 4))  # users 1, 2, 4 of 4
    assert W.repeat_query_rate(qe) == approx(Fraction(2, 11))  # the 2nd "red shoe" and "BOOT"


def test_consecutive_pairs(pairs):
    # boot → BOOT is a repeat, not a pair; the blank search is not a query event
    assert list(zip(pairs["prev_q"], pairs["q"], strict=True)) == [
        ("red shoe", "blue shoe"), ("blue shoe", "red shoe"), ("red shoe", "boot"), ("boot", "pan"),
        ("pan", "mystery"), ("mystery", "lamp"), ("lamp", "desk lamp")]
    # usable (both leaves known): pairs 1–4 and 7; same leaf: 1, 2
    assert W.same_leaf_share(pairs) == (approx(Fraction(2, 5)), 5)
    # usable: 1, 2 (same leaf), 3 (P = P), 4 (P ≠ Q); 7 (d has no parent, c ≠ d) is left out
    assert W.same_subtree_share(pairs) == (approx(Fraction(3, 4)), 4)
    # same session: 1, 2 (s1), 4–7 (s3); usable 1, 2, 4, 7
    assert W.same_leaf_share(pairs, within_session=True) == (approx(Fraction(2, 4)), 4)
    # sharing a word: 1, 2 ("shoe"), 7 ("lamp"); ≤ 30 min: all but 3 (40 min); 7 is exactly 30 min
    assert W.shared_word_share(pairs) == (approx(Fraction(3, 7)), 7)
    assert W.shared_word_share(pairs, W.WITHIN) == (approx(Fraction(3, 6)), 6)


def test_text_length(qe):
    w, c = W.words_chars_per_query(qe)
    assert w == approx(Fraction(15, 11)) and c == approx(Fraction(63, 11))


def test_size_dependent_statistics(qe):
    # counts: red shoe 2, blue shoe 1, boot 2, pan 2, mystery 1, lamp 2, desk lamp 1
    assert W.distinct_per_event(qe) == approx(Fraction(7, 11))
    assert W.top_share(qe) == approx(Fraction(2, 11))  # 1 % of 7 distinct → at least 1 query
    assert W.top_share(qe, frac=0.3) == approx(Fraction(4, 11))  # floor(2.1) = 2 queries of count 2
    assert W.seen_once_share(qe) == approx(Fraction(3, 11))
    # by time, the last floor(0.2 × 11) = 2 events: "desk lamp" (new) and user 3's "lamp" (seen at d2 09:25)
    assert W.unseen_later_share(qe) == (approx(Fraction(1, 2)), 2)
    # the last 5: d2 09:10 pan, 09:20 mystery, 09:25 lamp, 09:55 desk lamp, d3 lamp; earlier: user 2's pan (d1 12:00)
    assert W.unseen_later_share(qe, later=0.5) == (approx(Fraction(4, 5)), 5)


def test_sample(qe):
    s, short = W.sample_query_events(qe, 5, seed=3)
    assert s.height == 5 and not short
    assert s.equals(W.sample_query_events(qe, 5, seed=3)[0])
    assert s.equals(qe.filter(pl.col("seq").is_in(s["seq"].implode())))  # rows of qe, in its order
    assert s["seq"].to_list() == sorted(s["seq"].to_list(), reverse=True)  # qe stores user 1 by time: seq falls
    full, short = W.sample_query_events(qe, 100, seed=3)
    assert short and full.equals(qe)


def test_exposures_and_counts(tables, qe):
    assert W.exposure_ctr(tables["exposures"]) == (approx(Fraction(3, 9)), approx(Fraction(2, 3)))
    assert W.exposure_ctr(_frame("exposures", [])) == (None, None)
    assert W.leaf_categories(tables["categories"]) == 5  # a, b, c, d, e (P is a parent; "unknown" is none)
    assert W.leaf_categories(_frame("categories", []), qe) == 4  # no categories table: a, b, c, d of the queries


def test_world_stats_and_targets(tables):
    s = W.world_stats(tables, sample_events=100, seed=0)
    assert s["sample_events"] == 11 and s["sample_is_all"] is True
    assert s["queries_per_user"] == approx(Fraction(11, 3)) and s["repeat_query_rate"] == approx(Fraction(2, 11))
    assert (s["pairs"], s["same_leaf_pairs"], s["same_subtree_pairs"], s["same_leaf_session_pairs"]) == (7, 5, 4, 4)
    assert s["unseen_later"] == s["unseen_later_sample"] == approx(0.5)
    assert (s["users"], s["users_any_event"], s["query_events"], s["events"], s["exposures"]) == (3, 4, 11, 16, 3)
    assert s["leaf_categories"] == 5 and s["impression_ctr"] == approx(Fraction(1, 3))
    # distinct/events 7/11 ≥ 0.5 pass; seen once 3/11 < 40 % fail; single-query 2/3 pass; CTR 1/3 > 5 % fail;
    # unseen later 1/2 ≥ 40 % pass; sessions of users with ≤ 5 earlier behaviours 8/8: ≥ 25 % pass, ≤ 35 % fail
    assert s["light_sessions"] == 1.0
    # with ≤ 4: user 1's third session (5 earlier events) is not light
    assert W.light_session_share(tables["events"], 4) == approx(Fraction(7, 8))
    assert [ok for _, ok in W.check_targets(s)] == [True, False, True, False, True, True, False]
    no_exp = W.world_stats({**tables, "exposures": _frame("exposures", [])}, sample_events=4, seed=1)
    assert no_exp["impression_ctr"] is None and no_exp["sample_events"] == 4 and not no_exp["sample_is_all"]
    assert dict(W.check_targets(no_exp))["impression CTR ≤ 5 %"] is None  # no exposures: not applicable


def _script():
    spec = importlib.util.spec_from_file_location("world_stats_script", ROOT / "benchmarks" / "world_stats.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_script_on_simulated_worlds(tmp_path, capsys):
    out = tmp_path / "sim"
    res = CliRunner().invoke(app, ["simulate", f"run.output_dir={out}", "world.users=150", "world.days=8",
                                   "tracking.enabled=false"])
    assert res.exit_code == 0, res.output
    a, b = out / "world", tmp_path / "copy" / "world"
    shutil.copytree(a, b)
    script = _script()
    capsys.readouterr()
    assert script.main([str(a), str(b), "--sample-events", "300", "--json", str(tmp_path / "s.json")]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0] == f"| statistic | real log | {a} | {b} |"
    for label, key, _ in script.ROWS:
        row = next(ln for ln in lines if ln.startswith(f"| {label} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 4 and cells[1] == script.REAL_LOG[key]
        assert cells[2] == cells[3]  # same world, same seed: same figures
    for label in ("users with exactly 1 query", "query events", "sample size N (query events)"):
        assert any(ln.startswith(f"| {label} | ") for ln in lines)
    assert "| sample size N (query events) | 1,637 (all) | 300 | 300 |" in lines
    for _, label, _, _ in W.TARGETS:
        assert any(ln.startswith(f"| {label} | ") for ln in lines)
    data = json.loads((tmp_path / "s.json").read_text())
    assert set(data["worlds"]) == {str(a), str(b)} and data["worlds"][str(a)]["sample_events"] == 300
    # a v1-style world misses the v2 targets (its CTR alone is far above 5 %): --targets exits 1
    assert data["worlds"][str(a)]["impression_ctr"] > 0.05
    assert script.main([str(a), "--targets"]) == 1
