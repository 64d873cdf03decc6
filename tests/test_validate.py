"""validate_world: schema checks, one reason per bad row, quarantine files, NotALogError for non-logs."""

from __future__ import annotations

from datetime import datetime

import polars as pl
import pytest

from aigq.data import schema
from aigq.data.validate import REASONS, NotALogError, validate_events, validate_world

META = {"source": "test", "start_date": "2025-10-01", "days": 3}
T = datetime(2025, 10, 2, 12, 0)


def _frame(name: str, rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=schema.TABLES[name], orient="row")


def _users() -> pl.DataFrame:
    row = ("f", 30, "x", "y", T)
    return _frame("users", [(1, *row), (2, *row), (3, *row), (None, *row), (1, *row)])


def _items() -> pl.DataFrame:
    def it(i, cat):
        return (i, "t", cat, cat, "b", 1.0, "d")
    # item 14: broken first copy, good second copy → the good one survives
    return _frame("items", [it(10, "a"), it(11, "b"), it(None, "a"), it(12, None), it(13, "  "), it(10, "a"),
                            it(14, None), it(14, "a")])


EVENT_ROWS = [  # (user_id, ts, type, query, item_id, expected reason or None)
    (1, datetime(2025, 10, 1, 10, 0), "search", "red shoes", None, None),
    (1, datetime(2025, 10, 1, 10, 1), "click", None, 10, None),
    (2, datetime(2025, 10, 3, 23, 59), "buy", None, 11, None),
    (3, datetime(2025, 10, 2), "cart", None, 14, None),
    (None, T, "search", "x", None, "missing user_id"),
    (1, None, "search", "x", None, "missing ts"),
    (1, datetime(2025, 9, 30, 23, 59), "search", "x", None, "bad timestamp"),
    (1, datetime(2025, 10, 4), "search", "x", None, "bad timestamp"),
    (1, T, "view_item", "x", None, "unknown event type"),
    (1, T, None, "x", None, "unknown event type"),
    (1, T, "search", "  ", None, "missing query"),
    (1, T, "search", None, None, "missing query"),
    (1, T, "click", None, None, "missing item_id"),
    (99, T, "search", "x", None, "dangling user_id"),
    (1, T, "click", None, 999, "dangling item_id"),
    (1, T, "buy", None, 12, "dangling item_id"),  # item 12 itself was quarantined
]

EXPOSURE_ROWS = [  # (exposure_id, user_id, ts, shown, clicked, expected reason or None)
    (1, 1, T, ["a", "b", "c"], [True, False, False], None),
    (2, 2, T, ["a", "b", "d"], [False, False, False], None),
    (None, 1, T, ["a", "b", "c"], [False] * 3, "missing exposure_id"),
    (3, None, T, ["a", "b", "c"], [False] * 3, "missing user_id"),
    (4, 1, None, ["a", "b", "c"], [False] * 3, "missing ts"),
    (5, 1, datetime(2025, 11, 1), ["a", "b", "c"], [False] * 3, "bad timestamp"),
    (6, 1, T, ["a", "b"], [False] * 2, "bad shown list"),
    (7, 1, T, ["a", "", "c"], [False] * 3, "bad shown list"),
    (8, 1, T, ["a", None, "c"], [False] * 3, "bad shown list"),
    (9, 1, T, ["a", "b", "c"], [False] * 2, "bad shown list"),
    (10, 1, T, ["a", "b", "c"], None, "bad shown list"),
    (11, 1, T, None, [False] * 3, "bad shown list"),
    (12, 99, T, ["a", "b", "c"], [False] * 3, "dangling user_id"),
]


def _write_world(world, *, exposures: bool = True) -> None:
    schema.write_meta(world, META)
    schema.write_part(world, "users", _users())
    schema.write_part(world, "items", _items())
    schema.write_part(world, "queries", _frame("queries", [("red shoes", "a"), (None, "a"), ("lamp", None),
                                                          ("red shoes", "b"), ("sofa", "b")]))
    schema.write_part(world, "categories", _frame("categories", [("a", "A"), ("b", None), (None, "A"), ("a", "A")]))
    ev = _frame("events", [(u, ts, ty, q, it, "a", 1) for u, ts, ty, q, it, _ in EVENT_ROWS])
    schema.write_part(world, "events", ev.head(6), part=0)  # two parts, read together
    schema.write_part(world, "events", ev.slice(6), part=1)
    if exposures:
        schema.write_part(world, "exposures", _frame("exposures", [(e, u, ts, 1, s, c, ["a"]) for e, u, ts, s, c, _
                                                                   in EXPOSURE_ROWS]))


def _reasons(world, name: str) -> list[str]:
    return pl.read_parquet(world / "quarantine" / f"{name}.parquet")["reason"].to_list()


def test_every_bad_row_is_quarantined_with_its_reason(tmp_path):
    _write_world(tmp_path)
    vw = validate_world(tmp_path)

    assert _reasons(tmp_path, "users") == ["missing user_id", "duplicate user_id"]
    assert vw.tables["users"]["user_id"].to_list() == [1, 2, 3]
    assert _reasons(tmp_path, "items") == ["missing item_id", "missing category", "missing category",
                                           "duplicate item_id", "missing category"]
    assert vw.tables["items"]["item_id"].to_list() == [10, 11, 14]
    assert _reasons(tmp_path, "queries") == ["missing query", "missing category", "duplicate query"]
    assert vw.tables["queries"].rows() == [("red shoes", "a"), ("sofa", "b")]
    assert _reasons(tmp_path, "categories") == ["missing category", "duplicate category"]
    assert vw.tables["categories"]["category"].to_list() == ["a", "b"]

    assert _reasons(tmp_path, "events") == [r for *_, r in EVENT_ROWS if r]
    assert vw.tables["events"].height == sum(r is None for *_, r in EVENT_ROWS)
    q = pl.read_parquet(tmp_path / "quarantine" / "events.parquet")
    assert q.columns == [*schema.EVENTS, "reason"]  # original columns kept
    assert q.filter(pl.col("reason") == "dangling item_id")["item_id"].to_list() == [999, 12]

    assert _reasons(tmp_path, "exposures") == [r for *_, r in EXPOSURE_ROWS if r]
    assert vw.tables["exposures"]["exposure_id"].to_list() == [1, 2]

    for name, rep in vw.reports.items():
        assert rep.rows_in == rep.rows_ok + rep.rejected == rep.rows_ok + sum(rep.by_reason.values()), name
        assert rep.rows_ok == vw.tables[name].height
    assert vw.reports["events"].by_reason == {"missing user_id": 1, "missing ts": 1, "bad timestamp": 2,
                                              "unknown event type": 2, "missing query": 2, "missing item_id": 1,
                                              "dangling user_id": 1, "dangling item_id": 2}
    s = vw.summary()
    assert s["events.rows_in"] == len(EVENT_ROWS) and s["events.rejected.unknown event type"] == 2
    assert s["users.rejected.duplicate user_id"] == 1 and s["categories.rejected.missing category"] == 1
    assert all(f"{t}.rejected.{r}" in s for t, rs in REASONS.items() for r in rs)
    assert vw.meta["source"] == "test"


def test_clean_world_and_quarantine_housekeeping(tmp_path):
    _write_world(tmp_path, exposures=False)
    vw = validate_world(tmp_path, write_quarantine=False)
    assert not (tmp_path / "quarantine").exists()
    assert vw.tables["exposures"].height == 0 and vw.tables["exposures"].schema == pl.Schema(schema.EXPOSURES)
    validate_world(tmp_path)
    assert (tmp_path / "quarantine" / "users.parquet").exists()
    # fix users: the stale quarantine file goes away, the rest is overwritten
    schema.write_part(tmp_path, "users", _users().head(3))
    vw = validate_world(tmp_path)
    assert not (tmp_path / "quarantine" / "users.parquet").exists()
    assert vw.reports["users"].rejected == 0 and vw.reports["users"].by_reason == {}


def test_extra_columns_dropped_and_types_cast(tmp_path):
    _write_world(tmp_path)
    users = _users().head(3).with_columns(pl.col("user_id").cast(pl.Int32), pl.col("age").cast(pl.Float64),
                                          extra=pl.lit("zzz"))
    users.write_parquet(tmp_path / "users" / "part-00000.parquet")
    vw = validate_world(tmp_path)
    assert vw.tables["users"].schema == pl.Schema(schema.USERS)


def test_validate_events_is_pure():
    ev = pl.DataFrame([(u, ts, ty, q, it, "a", 1) for u, ts, ty, q, it, _ in EVENT_ROWS],
                      schema=schema.EVENTS, orient="row")
    users, items = pl.DataFrame({"user_id": [1, 2, 3]}), pl.DataFrame({"item_id": [10, 11, 14]})
    ok, rej = validate_events(ev, users, items, "2025-10-01", 3)
    assert ok.columns == list(schema.EVENTS) and ok.height == 4
    assert rej["reason"].to_list() == [r for *_, r in EVENT_ROWS if r]


def test_not_a_log(tmp_path):
    with pytest.raises(NotALogError, match="meta.json"):
        validate_world(tmp_path)
    _write_world(tmp_path)
    (tmp_path / "events" / "part-00001.parquet").write_bytes(b"PAR1 this is not parquet \x00\x01")
    with pytest.raises(NotALogError, match="not a readable parquet"):
        validate_world(tmp_path)


def test_missing_column_is_named(tmp_path):
    _write_world(tmp_path)
    _users().drop("city", "age").write_parquet(tmp_path / "users" / "part-00000.parquet")
    with pytest.raises(NotALogError, match=r"'users'.*missing required column\(s\) age, city"):
        validate_world(tmp_path)


def test_uncastable_column_is_named(tmp_path):
    _write_world(tmp_path)
    _users().with_columns(pl.lit("abc").alias("user_id")).write_parquet(tmp_path / "users" / "part-00000.parquet")
    with pytest.raises(NotALogError, match=r"users\.user_id.*cannot cast"):
        validate_world(tmp_path)


def test_missing_or_empty_required_table(tmp_path):
    _write_world(tmp_path)
    for f in schema.table_files(tmp_path, "events"):
        f.unlink()
    with pytest.raises(NotALogError, match="no 'events' table"):
        validate_world(tmp_path)
    schema.write_part(tmp_path, "events", schema.empty_frame("events"))
    with pytest.raises(NotALogError, match="'events' is empty"):
        validate_world(tmp_path)


def test_meta_without_window(tmp_path):
    _write_world(tmp_path)
    schema.write_meta(tmp_path, {"source": "test"})
    with pytest.raises(NotALogError, match="start_date"):
        validate_world(tmp_path)
