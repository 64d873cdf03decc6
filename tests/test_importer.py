"""import_log: CSV quirks, timestamps, quarantine reasons, id maps, parquet input, NotALogError; then validation.
Also the AOL preset (on the hand-written ``tests/data/aol_sample.tsv``), side tables, and logs AIGQ cannot learn from
(through the function and the CLI)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from aigq.cli import app
from aigq.config import ImportConfig
from aigq.data import schema
from aigq.data.importer import import_log, parse_timestamps
from aigq.data.validate import NotALogError, validate_world

AOL_SAMPLE = Path(__file__).parent / "data" / "aol_sample.tsv"

# Hand-written: BOM, CRLF, spaces around fields, a quoted query with the delimiter and doubled quotes, a quoted
# field spanning a newline, a blank line, and one row of each kind of reject. Line numbers in the comments.
QUIRKY_CSV = (
    "\ufeffuser_id,query_time,query,clicked_item,category,click_time\r\n"  # 1
    "u1, 2025-10-01T10:00:00Z ,  Red   Shoes ,i1,shoes,2025-10-01 10:00:05\r\n"  # 2
    'u1,2025-10-01 10:10:00.5, "Sofa, ""Modern""" ,i2,sofas,\r\n'  # 3: click time missing → +1 s
    "\r\n"  # 4: blank
    'u2,2025-10-01T23:00:00+02:00,"lamp\r\nshade",,lighting,\r\n'  # 5-6: offset → 21:00 UTC, no click
    "u2,1759363200,TV stand,i3,tv,1759363260.5\r\n"  # 7: epoch seconds
    "u3,2025-10-02T08:00:00,desk\r\n"  # 8: wrong field count
    "u3,not-a-time,chair,,,\r\n"  # 9: bad timestamp
    "u3,2025-10-02T09:00:00,   ,i4,desks,\r\n"  # 10: missing query
    "u4,2025-10-02T09:00:00,desk,i4,desks,2025-10-02T08:59:00\r\n"  # 11: click before query
    " ,2025-10-02T09:00:00,desk,,,\r\n"  # 12: missing user
    "u4,2025-10-02T09:40:00,Desk  Lamp,i5,lighting,2025-10-02T09:41:00\r\n"  # 13
    "u1,2025-10-01T10:50:00,red shoes,i6,shoes,garbage\r\n"  # 14: bad click timestamp
    "u1,2025-10-01T10:50:00,red shoes,i6,shoes,\r\n"  # 15: 40 min after u1's last event → new session
)


def _events(world) -> pl.DataFrame:
    return pl.read_parquet(schema.table_files(world, "events"))


def test_quirky_csv(tmp_path):
    src = tmp_path / "log.csv"
    src.write_bytes(QUIRKY_CSV.encode("utf-8"))
    world = tmp_path / "world"
    rep = import_log(src, world, ImportConfig())

    assert (rep.rows_in, rep.rows_ok, rep.rejected) == (12, 6, 6)  # the blank line is not a row
    assert rep.by_reason == {"wrong field count": 1, "missing user_id": 1, "bad timestamp": 2, "missing query": 1,
                             "click before query": 1}
    assert rep.quarantine == world / "quarantine" / "import.parquet"
    q = pl.read_parquet(rep.quarantine)
    assert q.select("line", "reason").rows() == [(8, "wrong field count"), (9, "bad timestamp"),
                                                 (10, "missing query"), (11, "click before query"),
                                                 (12, "missing user_id"), (14, "bad timestamp")]
    assert q.row(0, named=True)["raw"] == "u3,2025-10-02T08:00:00,desk"
    assert q.filter(pl.col("line") == 9)["query_time"].item() == "not-a-time"
    assert q.filter(pl.col("line") == 14)["click_time"].item() == "garbage"

    ev = _events(world)
    assert ev["type"].value_counts().sort("type").rows() == [("click", 5), ("search", 6)]
    d = datetime
    assert ev.select("user_id", "ts", "type", "query", "item_id", "category", "session_id").rows() == [
        (1, d(2025, 10, 1, 10, 0), "search", "red shoes", None, "shoes", 1),
        (1, d(2025, 10, 1, 10, 0, 5), "click", None, 1, "shoes", 1),
        (1, d(2025, 10, 1, 10, 10, 0, 500000), "search", 'sofa, "modern"', None, "sofas", 1),
        (1, d(2025, 10, 1, 10, 10, 1, 500000), "click", None, 2, "sofas", 1),  # no click time: query time + 1 s
        (1, d(2025, 10, 1, 10, 50), "search", "red shoes", None, "shoes", 2),
        (1, d(2025, 10, 1, 10, 50, 1), "click", None, 5, "shoes", 2),
        (2, d(2025, 10, 1, 21, 0), "search", "lamp shade", None, "lighting", 1),
        (2, d(2025, 10, 2, 0, 0), "search", "tv stand", None, "tv", 2),
        (2, d(2025, 10, 2, 0, 1, 0, 500000), "click", None, 3, "tv", 2),
        (3, d(2025, 10, 2, 9, 40), "search", "desk lamp", None, "lighting", 1),
        (3, d(2025, 10, 2, 9, 41), "click", None, 4, "lighting", 1),
    ]
    assert pl.read_parquet(world / "user_ids.parquet").rows() == [("u1", 1), ("u2", 2), ("u4", 3)]
    assert pl.read_parquet(world / "item_ids.parquet").rows() == [("i1", 1), ("i2", 2), ("i3", 3), ("i5", 4),
                                                                  ("i6", 5)]
    items = pl.read_parquet(schema.table_files(world, "items"))
    assert items.select("item_id", "title", "category").rows() == [
        (1, "i1", "shoes"), (2, "i2", "sofas"), (3, "i3", "tv"), (4, "i5", "lighting"), (5, "i6", "shoes")]
    assert items.row(0, named=True) == {"item_id": 1, "title": "i1", "category": "shoes", "category_path": "shoes",
                                        "brand": "unknown", "price": None, "description": "shoes item i1"}
    queries = pl.read_parquet(schema.table_files(world, "queries"))
    assert dict(queries.rows()) == {"red shoes": "shoes", 'sofa, "modern"': "sofas", "lamp shade": "lighting",
                                    "tv stand": "tv", "desk lamp": "lighting"}
    meta = schema.read_meta(world)
    assert (meta["start_date"], meta["days"], meta["rows_in"], meta["rejected"]) == ("2025-10-01", 2, 12, 6)
    assert meta["source"] == "importer" and meta["input"] == str(src)
    vw = validate_world(world)
    assert sum(r.rejected for r in vw.reports.values()) == 0, vw.summary()


def test_clean_log_validates_with_zero_rejects(tmp_path):
    src = tmp_path / "log.csv"
    src.write_text("user_id,query_time,query,clicked_item,category,click_time\n"
                   "7,2025-10-01T10:00:00,red shoes,100,shoes,2025-10-01T10:00:10\n"
                   "7,2025-10-01T10:01:00,red shoes,101,shoes,\n"
                   "8,2025-10-03T23:59:59.900,lamp,,lighting,\n"
                   "8,2025-10-03T23:59:59.800,lamp,200,,\n")  # click at +1 s crosses midnight: days counts it
    world = tmp_path / "w"
    rep = import_log(src, world, ImportConfig())
    assert rep.rejected == 0 and rep.quarantine is None
    vw = validate_world(world)
    assert all(r.rejected == 0 for r in vw.reports.values()), vw.summary()
    assert vw.meta["start_date"] == "2025-10-01" and vw.meta["days"] == 4
    assert vw.meta["source"] == "importer" and vw.meta["rows_in"] == 4
    assert vw.tables["exposures"].height == 0
    assert vw.tables["users"]["user_id"].to_list() == [7, 8]  # integer ids kept, no id map
    assert not (world / "user_ids.parquet").exists() and not (world / "item_ids.parquet").exists()
    assert vw.tables["items"].filter(pl.col("item_id") == 200)["category"].item() == "unknown"
    assert vw.tables["queries"].rows() == [("lamp", "lighting"), ("red shoes", "shoes")]
    assert vw.tables["categories"].rows() == [(c, c) for c in ("lighting", "shoes", "unknown")]
    assert vw.tables["users"]["first_seen"].to_list() == [datetime(2025, 10, 1, 10), datetime(2025, 10, 3, 23, 59,
                                                                                             59, 800000)]


def test_tsv_with_renamed_columns_and_time_format(tmp_path):
    src = tmp_path / "log.tsv"
    src.write_text("uid\tt\tq\titem\tcat\n"
                   "5\t01/10/2025 08:30\tGarden Hose\t42\tgarden\n"
                   "5\t2025-10-01T08:31:00\those reel\t\tgarden\n"
                   "6\t02/10/2025 12:00\those reel\t\tgarden\n"
                   "6\t02/10/2025 12:30\tgarden hose\t\tgarden\n")  # user 6 searches twice (else not a log)
    cfg = ImportConfig(user="UID", query_time="t", query="q", clicked_item="item", category="cat",
                       click_time="clicked_at", time_format="%d/%m/%Y %H:%M")
    rep = import_log(src, tmp_path / "w", cfg)
    assert (rep.rows_in, rep.rows_ok, rep.by_reason) == (4, 3, {"bad timestamp": 1})  # ISO ≠ the given format
    ev = _events(tmp_path / "w")
    assert ev.select("user_id", "ts", "type", "item_id").rows() == [
        (5, datetime(2025, 10, 1, 8, 30), "search", None), (5, datetime(2025, 10, 1, 8, 30, 1), "click", 42),
        (6, datetime(2025, 10, 2, 12), "search", None), (6, datetime(2025, 10, 2, 12, 30), "search", None)]
    assert validate_world(tmp_path / "w").reports["events"].rejected == 0


def test_parquet_input(tmp_path):
    src = tmp_path / "log.parquet"
    pl.DataFrame({
        "user_id": [1, 1, 2, None],
        "query_time": pl.Series([datetime(2025, 10, 5, 9), datetime(2025, 10, 5, 9, 5), datetime(2025, 10, 6),
                                 datetime(2025, 10, 6)]).dt.replace_time_zone("UTC"),
        "query": ["Tent", "tent  poles", "stove", "x"],
        "clicked_item": ["a-1", None, "b-2", None],
        "category": ["camping", "camping", None, None],
    }).write_parquet(src)
    rep = import_log(src, tmp_path / "w", ImportConfig())
    assert (rep.rows_in, rep.rows_ok, rep.by_reason) == (4, 3, {"missing user_id": 1})
    assert pl.read_parquet(rep.quarantine)["line"].to_list() == [4]
    ev = _events(tmp_path / "w")
    assert ev["type"].to_list() == ["search", "click", "search", "search", "click"]
    assert ev["query"].drop_nulls().to_list() == ["tent", "tent poles", "stove"]
    assert ev["ts"][0] == datetime(2025, 10, 5, 9)
    assert validate_world(tmp_path / "w").reports["items"].rows_ok == 2


def test_parse_timestamps():
    s = pl.Series(["2025-10-01T10:00:00", "2025-10-01 10:00:00.25Z", "2025-10-01T12:00:00+02:00", "1759363200",
                   "1759363200.5", "2025-10-01", "", None, "2025-13-01T00:00:00", "-5", "yesterday"])
    assert parse_timestamps(s).to_list() == [
        datetime(2025, 10, 1, 10), datetime(2025, 10, 1, 10, 0, 0, 250000), datetime(2025, 10, 1, 10),
        datetime(2025, 10, 2), datetime(2025, 10, 2, 0, 0, 0, 500000), datetime(2025, 10, 1),
        None, None, None, None, None]


@pytest.mark.parametrize("content, match", [
    (b"", "empty file"),
    (b"\r\n\r\n", "empty file"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
    (b"\xff\xfe\xfa garbage \xc3", "not UTF-8"),
    (b"PAR1 not really parquet", "unreadable parquet"),
    (b"user;when;text\n1;2025-10-01;a\n",
     r"missing required column\(s\) 'user_id' \(user\), 'query_time' \(query_time\), 'query' \(query\); "
     r"columns found: \['user', 'when', 'text'\]"),
    (b"user_id,query_time,query\n", "no data rows"),
    (b"user_id,query_time,query\n1,soon,a\n", "no valid rows"),
])
def test_not_a_log(tmp_path, content, match):
    src = tmp_path / "log.csv"
    src.write_bytes(content)
    with pytest.raises(NotALogError, match=match):
        import_log(src, tmp_path / "w", ImportConfig())


def _table(world, name) -> pl.DataFrame:
    return pl.read_parquet(schema.table_files(world, name))


def test_aol_preset(tmp_path):
    world = tmp_path / "w"
    rep = import_log(AOL_SAMPLE, world, ImportConfig(preset="aol"))
    assert (rep.rows_in, rep.rows_ok, rep.rejected, rep.preset) == (44, 39, 5, "aol")
    assert rep.by_reason == {"wrong field count": 1, "missing user_id": 1, "bad timestamp": 1, "missing query": 2}
    q = pl.read_parquet(rep.quarantine)
    assert q.select("line", "reason").rows() == [(5, "missing query"), (37, "wrong field count"),
                                                 (38, "bad timestamp"), (39, "missing user_id"),
                                                 (45, "missing query")]  # lines 5 and 45: AOL's "-" next page
    assert q.filter(pl.col("line") == 5)["query"].item() == "-"

    ev = _events(world)
    # 39 good rows, but a query with several clicks is one row per click: 32 searches, 31 clicks
    assert ev["type"].value_counts().sort("type").rows() == [("click", 31), ("search", 32)]
    assert rep.counts["events"] == 63
    items = _table(world, "items")
    title = dict(items.select("item_id", "title").iter_rows())
    weather = ev.filter(pl.col("user_id") == 993, pl.col("ts") < datetime(2006, 3, 2))
    t0 = datetime(2006, 3, 1, 8, 5, 10)
    assert weather.select("ts", "type", "query").rows() == [
        (t0, "search", "weather"), (t0 + timedelta(seconds=1), "click", None),
        (t0 + timedelta(seconds=2), "click", None), (t0 + timedelta(seconds=3), "click", None)]
    assert [title[i] for i in weather["item_id"].drop_nulls()] == ["weather.com", "wunderground.com", "noaa.gov"]
    assert weather["session_id"].unique().to_list() == [1]
    # a clicked URL is an item titled (and described) by its host; the URL string is its id
    assert items.filter(pl.col("title") == "boston.redsox.mlb.com")["description"].item() == "boston.redsox.mlb.com"
    ids = pl.read_parquet(world / "item_ids.parquet")
    assert ids.filter(pl.col("original") == "http://www.weather.com")["item_id"].item() == \
        items.filter(pl.col("title") == "weather.com")["item_id"].item()
    assert items.height == 27 and set(items["category"]) == {"unknown"}
    # the same query five minutes apart is two searches; no quoting: an unbalanced quote is text
    assert ev.filter(pl.col("query") == "slow cooker").height == 2
    assert ev.filter(pl.col("user_id") == 217, pl.col("type") == "search")["query"].to_list() == [
        "lottery", "lottery", "ameriquest", 'cheap "flights', "powerball"]
    assert _table(world, "users")["user_id"].to_list() == [142, 217, 993, 1326, 2005, 3110, 4417, 5120, 8088]

    meta = schema.read_meta(world)
    assert (meta["preset"], meta["side_tables"], meta["start_date"], meta["days"]) == ("aol", {}, "2006-03-01", 6)
    vw = validate_world(world)
    assert sum(r.rejected for r in vw.reports.values()) == 0, vw.summary()
    # what an end-to-end run on this fixture relies on: ≥ 5 users with ≥ 3 distinct queries over ≥ 2 days
    searches = ev.filter(pl.col("type") == "search").group_by("user_id").agg(
        queries=pl.col("query").n_unique(), days=pl.col("ts").dt.date().n_unique())
    assert searches.filter(pl.col("queries") >= 3, pl.col("days") >= 2).height >= 5
    assert searches.filter(pl.col("queries") == 1).height == 2  # and users with a single query


def test_columns_layout_multi_click_is_one_search(tmp_path):
    src = tmp_path / "log.csv"
    src.write_text("user_id,query_time,query,clicked_item\n"
                   "1,2025-10-01T10:00:00,Sofa,a\n"
                   "1,2025-10-01T10:00:00,sofa,b\n"  # same user, time and (normalised) query: a second click
                   "1,2025-10-01T10:03:00,sofa,\n"
                   "2,2025-10-01T11:00:00,lamp,\n")
    rep = import_log(src, tmp_path / "w", ImportConfig())
    assert rep.rows_ok == 4
    ev = _events(tmp_path / "w")
    t0 = datetime(2025, 10, 1, 10)
    assert ev.select("user_id", "ts", "type", "item_id").rows() == [
        (1, t0, "search", None), (1, t0 + timedelta(seconds=1), "click", 1), (1, t0 + timedelta(seconds=2), "click", 2),
        (1, datetime(2025, 10, 1, 10, 3), "search", None), (2, datetime(2025, 10, 1, 11), "search", None)]


SIDE_LOG = ("user_id,query_time,query,clicked_item,category\n"
            "u1,2025-10-01T10:00:00,sofa,i1,c10\n"
            "u1,2025-10-01T10:05:00,lamp,i2,c20\n"
            "u1,2025-10-02T09:00:00,rug,i9,c99\n"  # i9 and c99 are in neither side table
            "u2,2025-10-01T12:00:00,sofa,i1,c10\n"
            "u2,2025-10-01T12:01:00,armchair,i3,\n")  # no category in the log: the items table gives c11
ITEMS_CSV = ("item_id,title,category\n"
             "i1,Grey Velvet Sofa,c10\n"
             "i2,Brass Floor Lamp,c20\n"
             "i3,Oak Armchair,c11\n"
             ",Nameless,c10\n"  # row 4: missing item_id
             "i2,Another Lamp,c20\n"  # row 5: duplicate item_id
             "i4,,c10\n")  # row 6: missing title
CATEGORIES_CSV = ("category_id,name,parent\n"
                  "c1,Furniture,\n"
                  "c10,Sofas,c1\n"
                  "c11,Chairs,c1\n"
                  "c20,Lamps,c2\n"  # parent c2 is not in the table: its id text stays
                  "c10,Couches,c1\n"  # row 5: duplicate category_id
                  ",Orphan,c1\n")  # row 6: missing category_id


def test_side_tables(tmp_path):
    for name, text in (("log.csv", SIDE_LOG), ("items.csv", ITEMS_CSV), ("categories.csv", CATEGORIES_CSV)):
        (tmp_path / name).write_text(text)
    world = tmp_path / "w"
    cfg = ImportConfig(items=str(tmp_path / "items.csv"), categories=str(tmp_path / "categories.csv"))
    rep = import_log(tmp_path / "log.csv", world, cfg)

    items = _table(world, "items")
    assert items.select("item_id", "title", "category", "category_path", "description").rows() == [
        (1, "Grey Velvet Sofa", "Sofas", "Furniture > Sofas", "Grey Velvet Sofa"),
        (2, "Brass Floor Lamp", "Lamps", "c2 > Lamps", "Brass Floor Lamp"),
        (3, "Oak Armchair", "Chairs", "Furniture > Chairs", "Oak Armchair"),
        (4, "i9", "c99", "c99", "c99 item i9")]  # not in the side tables: today's id text
    ev = _events(world)
    assert ev.filter(pl.col("type") == "search").select("query", "category").rows() == [
        ("sofa", "Sofas"), ("lamp", "Lamps"), ("rug", "c99"), ("sofa", "Sofas"), ("armchair", None)]
    assert dict(_table(world, "queries").rows()) == {"sofa": "Sofas", "lamp": "Lamps", "rug": "c99"}
    assert _table(world, "categories").rows() == [("Chairs", "Furniture"), ("Lamps", "c2"), ("Sofas", "Furniture"),
                                                  ("c99", "c99")]

    it, cat = rep.side["items"], rep.side["categories"]
    assert (it.rows_in, it.rows_ok, it.matched) == (6, 3, 3)
    assert it.by_reason == {"missing item_id": 1, "missing title": 1, "duplicate item_id": 1}
    assert (cat.rows_in, cat.rows_ok, cat.matched) == (6, 4, 2)  # the log's c10, c20 (not c99)
    assert cat.by_reason == {"missing category_id": 1, "duplicate category_id": 1}
    assert pl.read_parquet(it.quarantine).select("row", "item_id", "reason").rows() == [
        (4, None, "missing item_id"), (5, "i2", "duplicate item_id"), (6, "i4", "missing title")]
    assert cat.quarantine == world / "quarantine" / "import_categories.parquet"
    meta = schema.read_meta(world)
    assert meta["side_tables"]["items"] == {"path": str(tmp_path / "items.csv"), "rows_in": 6, "rows_ok": 3,
                                            "rejected": 3, "matched": 3, "by_reason": it.by_reason}
    assert meta["side_tables"]["categories"]["rejected"] == 2 and meta["preset"] == "columns"
    vw = validate_world(world)
    assert sum(r.rejected for r in vw.reports.values()) == 0, vw.summary()

    # without side tables: ids, as before
    rep = import_log(tmp_path / "log.csv", world, ImportConfig())
    assert rep.side == {} and not (world / "quarantine" / "import_items.parquet").exists()
    assert _table(world, "items").row(0, named=True)["description"] == "c10 item i1"


def test_side_table_errors(tmp_path):
    (tmp_path / "log.csv").write_text(SIDE_LOG)
    (tmp_path / "one_col.csv").write_text("item_id\ni1\n")
    with pytest.raises(FileNotFoundError, match="no such items table"):
        import_log(tmp_path / "log.csv", tmp_path / "w", ImportConfig(items=str(tmp_path / "missing.csv")))
    with pytest.raises(NotALogError, match=r"needs columns item_id,title\[,category\]"):
        import_log(tmp_path / "log.csv", tmp_path / "w", ImportConfig(items=str(tmp_path / "one_col.csv")))


BAD_LOGS = [
    ("user_id,query_time,query\n1,soon,a\n2,later,b\n", "no valid rows out of 2"),
    ("user_id,query_time,query\nu1,2025-10-01T10:00:00,a\nu1,2025-10-02T10:00:00,b\n",
     "has 1 user ('u1'): AIGQ learns across users; need ≥ 2"),
    # u1's two rows are one search with two clicks
    ("user_id,query_time,query,clicked_item\nu1,2025-10-01T10:00:00,a,i1\nu1,2025-10-01T10:00:00,a,i2\n"
     "u2,2025-10-02T10:00:00,b,\n",
     "no user searched twice: next-search labels and the last-query evaluation need users with ≥ 2 searches"),
]


@pytest.mark.parametrize("content, message", BAD_LOGS)
def test_logs_aigq_cannot_learn_from(tmp_path, content, message):
    src = tmp_path / "log.csv"
    src.write_text(content)
    with pytest.raises(NotALogError) as err:
        import_log(src, tmp_path / "w", ImportConfig())
    assert message in str(err.value)
    assert not schema.table_files(tmp_path / "w", "events")  # nothing half-written

    res = CliRunner().invoke(app, ["import-log", str(src), "--out", str(tmp_path / "w2"), "tracking.enabled=false"])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.output


def test_cli_aol_with_items_table(tmp_path):
    (tmp_path / "items.tsv").write_text("item_id\ttitle\nhttp://www.weather.com\tThe Weather Channel\n")
    world = tmp_path / "w"
    res = CliRunner().invoke(app, ["import-log", str(AOL_SAMPLE), "--preset", "aol", "--items",
                                   str(tmp_path / "items.tsv"), "--out", str(world), "tracking.enabled=false"])
    assert res.exit_code == 0, res.output
    assert "items table rows" in res.output
    items = _table(world, "items")
    assert items.filter(pl.col("description") == "The Weather Channel").height == 1
    assert items.filter(pl.col("title") == "wunderground.com").height == 1  # not in the side table: its host
    meta = schema.read_meta(world)
    assert meta["preset"] == "aol" and meta["side_tables"]["items"]["matched"] == 1
