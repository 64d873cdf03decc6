"""Retrieval-augmented prompts (``samples.related_queries``, issue 18): the related-queries line leaves every prompt
parser unchanged, the counts behind it only come from what was known before a sample's day (never a test day or a
held-out last query), build-samples writes it into every split and the serving index, and serving's prompts carry
the same line as a test sample's."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import pytest
from cli_world import cli_world

from aigq.config import SamplesConfig, load_config
from aigq.data import prompt as P
from aigq.data import related as R
from aigq.data.holdout import train_cuts
from aigq.data.schema import TABLES
from aigq.rewards.context import context_from_prompt

START = "2026-01-01"
CFG = SamplesConfig(related_queries=3)
PROFILE = {"gender": "F", "age": 30, "occupation": None, "city": None}


def _prompt(*contents: str, cfg: SamplesConfig = CFG) -> str:
    """A prompt whose behaviours are searches of ``contents`` (most recent first), without a related line."""
    return P.format_prompt(PROFILE, [(1, "search", c) for c in contents], cfg.model_copy(update={"related_queries": 0}))


def test_related_line_sits_before_the_sequence_and_every_parser_reads_the_prompt_unchanged():
    plain = _prompt("oak desk", "floor lamp")
    rich = P.with_related(plain, ["desk chair", "a;b", " "])
    lines = rich.split("\n")
    assert lines[2] == "Related Queries: { desk chair ; a,b }" and lines[3].startswith("User Behavior Sequence:")
    assert P.parse_related(rich) == ["desk chair", "a,b"] and P.parse_related(plain) == []
    assert P.parse_behaviours(rich) == P.parse_behaviours(plain)
    assert context_from_prompt(rich) == context_from_prompt(plain)
    assert P.keep_recent(rich, 1) == P.with_related(P.keep_recent(plain, 1), ["desk chair", "a;b"])
    assert P.with_related(rich, []) == P.with_related(plain, [])  # replaces, never stacks
    assert "Related Queries: { }" in P.with_related(plain, [])
    # format_prompt: off → no line; on → the source's queries (none known → the empty line)
    assert "Related" not in P.format_prompt(PROFILE, [(1, "search", "oak desk")], SamplesConfig())
    on = P.format_prompt(PROFILE, [(1, "search", "oak desk")], CFG, related=lambda p: ["desk chair"])
    assert P.parse_related(on) == ["desk chair"]
    assert P.parse_related(P.format_prompt(PROFILE, [], CFG)) == []
    # the budget drops old behaviours, never the related line
    fitted = P.format_prompt(PROFILE, [(1, "search", f"query {i}") for i in range(10)],
                             CFG.model_copy(update={"max_prompt_tokens": 60}), related=lambda p: ["desk chair"])
    assert P.parse_related(fitted) == ["desk chair"] and len(P.parse_behaviours(fitted)) < 10


def _think(rows):
    """Think samples (day, context searches most recent first, label queries with their sources)."""
    return pl.DataFrame({
        "day": [d for d, _, _ in rows], "prompt": [_prompt(*ctx) for _, ctx, _ in rows],
        "target": [[q for q, _ in labels] for _, _, labels in rows],
        "metadata": [{"label_sources": [s for _, s in labels]} for _, _, labels in rows]})


def _searches(rows):
    ev = [{"user_id": u, "ts": datetime(2026, 1, 1) + timedelta(days=d - 1, hours=int(t[:2]), minutes=int(t[3:])),
           "type": "search", "query": q, "item_id": None, "category": None, "session_id": 1} for u, d, t, q in rows]
    return pl.DataFrame(ev, schema=TABLES["events"], orient="row")


def test_counts_are_only_seen_by_later_days_and_never_from_test_days():
    """Day 2's session sofa → {rug (searched), lamp (ranker top-K)} covers days 2–3 (labels reach one day on), so
    day 4 sees it first; user 9's sofa → cushion step on day 4 is seen from day 5; a step on test day 6 never."""
    think = _think([(2, ("Sofa",), [("rug", "search"), ("lamp", "ranker")])])
    ev = _searches([(9, 4, "09:00", "sofa"), (9, 4, "09:05", "Cushion"), (8, 6, "09:00", "sofa"), (8, 6, "09:01", "vase")])
    cuts = train_cuts(ev, START, first_test_day=6, holdout=False)
    evi = R.evidence(think, R.search_transitions(ev, START, cuts), START, CFG)
    rows = pl.DataFrame({"prompt": [_prompt("sofa")] * 5 + [_prompt("table")], "day": [3, 4, 5, 6, 7, 7]})
    got = R.related_for(rows, evi, CFG, cap_day=6)
    assert got == [[], ["rug"], ["Cushion", "rug"], ["Cushion", "rug"], ["Cushion", "rug"], []]
    # P(rug | sofa) = 1/2, P(cushion | sofa) = 1/2: a tie, broken by the normalised text; K caps the list
    assert R.related_for(rows.head(3), evi, CFG.model_copy(update={"related_queries": 1}), cap_day=6)[2] == ["Cushion"]
    # serving sees every train-day count, ranked as a test sample's
    idx = R.RelatedIndex.load(_write(tmp_table := R.serving_table(evi, 6)), CFG)
    assert idx(_prompt("sofa")) == got[3] and idx(_prompt("table")) == []
    assert set(tmp_table["key"]) == {"sofa"}


def _write(table: pl.DataFrame):
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp())
    table.write_parquet(d / R.RELATED_FILE)
    return d


def test_older_behaviours_vote_less():
    """sofa (most recent) → rug; desk (second) → lamp: rug first at decay 0.8."""
    think = _think([(1, ("sofa",), [("rug", "search")]), (1, ("desk",), [("lamp", "click")])])
    evi = R.evidence(think, R.search_transitions(_searches([]), START, pl.DataFrame(
        {"user_id": [], "cut": []}, schema={"user_id": pl.Int64, "cut": pl.Datetime("us")})), START, CFG)
    rows = pl.DataFrame({"prompt": [_prompt("sofa", "desk"), _prompt("desk", "sofa")], "day": [5, 5]})
    assert R.related_for(rows, evi, CFG) == [["rug", "lamp"], ["lamp", "rug"]]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("related") / "out"
    base = cli_world(out, 200, 12, "tracking.enabled=false", "samples.related_queries=5")
    return load_config(None, base)


def test_build_samples_writes_the_line_into_every_split_and_the_serving_index(world):
    sd = world.samples_dir()
    splits = {s: pl.read_parquet(sd / f"{s}.parquet") for s in R.SPLITS}
    for name, df in splits.items():
        assert df.height and all("\nRelated Queries: {" in p for p in df["prompt"]), name
    test = splits["test"]
    assert sum(bool(P.parse_related(p)) for p in test["prompt"]) > 0.5 * test.height  # most test contexts have some
    # nothing is known before the world's first day: its samples show no related query, later ones do
    think = splits["think"].with_columns(n=pl.col("prompt").map_elements(lambda p: len(P.parse_related(p)),
                                                                           return_dtype=pl.Int64))
    first = int(think["day"].min())
    assert think.filter(pl.col("day") == first)["n"].max() == 0 and think.filter(pl.col("day") > first + 2)["n"].max()
    idx = R.RelatedIndex.load(sd, world.samples)
    # serving scores a test prompt exactly as the builder did (test days see every train-day count)
    for p in test["prompt"].head(30).to_list():
        assert idx(p) == P.parse_related(p)


def test_serving_prompts_carry_the_same_line(world):
    from serve_app.direct import user_prompt

    class Records:  # the store's context of one user: profile + behaviours, most recent first
        def context(self, user, days):
            from aigq.rewards.context import UserContext

            return UserContext({"gender": "F"}, [(0, "search", "oak desk"), (1, "click", "lamp")]), None

    idx = R.related_index(world.samples, world.samples_dir())
    got = user_prompt(Records(), 1, world.samples, idx)
    assert P.parse_related(got) == list(idx(got))
    off = world.samples.model_copy(update={"related_queries": 0})
    assert R.related_index(off, world.samples_dir()) is None and "Related" not in user_prompt(Records(), 1, off)
    with pytest.raises(FileNotFoundError, match="related_queries"):
        R.related_index(world.samples, world.samples_dir() / "missing")
