"""The log tables every world folder holds, simulated or imported, and how to find them on disk.

A world is a folder::

    world/
      meta.json                 source (simulator | importer), start_date, days, seed, counts
      users/part-*.parquet      USERS
      items/part-*.parquet      ITEMS         (item-to-text: `description` is the text the prompt shows)
      queries/part-*.parquet    QUERIES       (query → leaf category, the catalogue's query classifier)
      categories/part-*.parquet CATEGORIES    (leaf → parent, for related-category logic)
      events/part-*.parquet     EVENTS        (search / click / cart / buy)
      exposures/part-*.parquet  EXPOSURES     (HintQ: 3 shown queries, clicks, the ranker's top-K)
      hidden/                   the simulator's hidden user model: read ONLY by the simulated A/B evaluator
      quarantine/<table>.parquet  rows rejected by validation, each with a `reason`

Timestamps are naive UTC datetimes (microseconds). ``day`` (1-based, day 1 = ``start_date``) is derived, not stored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

EVENT_TYPES = ("search", "click", "cart", "buy")
ITEM_EVENT_TYPES = ("click", "cart", "buy")
TS = pl.Datetime("us")

USERS = {
    "user_id": pl.Int64,
    "gender": pl.String,
    "age": pl.Int32,
    "city": pl.String,
    "occupation": pl.String,
    "first_seen": TS,
}
ITEMS = {
    "item_id": pl.Int64,
    "title": pl.String,
    "category": pl.String,
    "category_path": pl.String,
    "brand": pl.String,
    "price": pl.Float64,
    "description": pl.String,
}
QUERIES = {"query": pl.String, "category": pl.String}
CATEGORIES = {"category": pl.String, "parent": pl.String}
EVENTS = {
    "user_id": pl.Int64,
    "ts": TS,
    "type": pl.String,
    "query": pl.String,
    "item_id": pl.Int64,
    "category": pl.String,
    "session_id": pl.Int64,
}
EXPOSURES = {
    "exposure_id": pl.Int64,
    "user_id": pl.Int64,
    "ts": TS,
    "session_id": pl.Int64,
    "shown": pl.List(pl.String),
    "clicked": pl.List(pl.Boolean),
    "ranker_topk": pl.List(pl.String),
}

TABLES: dict[str, dict[str, pl.DataType]] = {
    "users": USERS,
    "items": ITEMS,
    "queries": QUERIES,
    "categories": CATEGORIES,
    "events": EVENTS,
    "exposures": EXPOSURES,
}
# Tables a world may lack (an imported plain search log has no HintQ exposures).
OPTIONAL_TABLES = ("exposures",)
# The importer's category for an item the log names no category for (items need one); it carries no category
# information, so the category mapper and the CTR model's category index skip it.
UNKNOWN_CATEGORY = "unknown"


def table_dir(world: str | Path, name: str) -> Path:
    return Path(world) / name


def table_files(world: str | Path, name: str) -> list[Path]:
    return sorted(table_dir(world, name).glob("*.parquet"))


def empty_frame(name: str) -> pl.DataFrame:
    return pl.DataFrame(schema=TABLES[name])


def write_part(world: str | Path, name: str, df: pl.DataFrame, part: int = 0) -> Path:
    """Write one parquet part of a table, cast to its schema (column order included)."""
    d = table_dir(world, name)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"part-{part:05d}.parquet"
    df.select([pl.col(c).cast(t) for c, t in TABLES[name].items()]).write_parquet(path)
    return path


def read_meta(world: str | Path) -> dict[str, Any]:
    path = Path(world) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{world} is not a world folder (no meta.json); run `aigq simulate` or `aigq import-log`")
    return json.loads(path.read_text())


def write_meta(world: str | Path, meta: dict[str, Any]) -> None:
    Path(world).mkdir(parents=True, exist_ok=True)
    (Path(world) / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))


def day_expr(ts: pl.Expr, start_date: str) -> pl.Expr:
    """1-based day index of a timestamp (day 1 = start_date)."""
    start = pl.lit(start_date).str.to_date()
    return (ts.dt.date() - start).dt.total_days().cast(pl.Int32) + 1
