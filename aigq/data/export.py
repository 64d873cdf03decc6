"""Export a world as a plain search log (issue 16): what a shop without HintQ would hand to ``aigq import-log``.

``export_search_log(world, out)`` writes ``out/search_log.csv`` (``user_id, query_time, query, clicked_item,
category, click_time``: one row per search with no item click, one row per clicked item otherwise — the importer's
default columns), ``out/items.csv`` (``item_id, title, category``) and ``out/categories.csv`` (``category_id,
name, parent``) for ``aigq import-log --items --categories``. An item click belongs to the latest search of the same
user and session before it (clicks before a session's first search are not in a search log and are left out); the
category column is the searched query's category. Carts, buys, HintQ exposures, profiles and the hidden model are
not exported: a search log does not have them.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from aigq.data.schema import TABLES

_ISO = "%Y-%m-%dT%H:%M:%S%.6f"


def search_log_rows(tables: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """The search log as a frame (see the module docstring), sorted by (user_id, query_time)."""
    ev = tables["events"].filter(pl.col("type").is_in(["search", "click"])).select(
        "user_id", "ts", "type", "query", "item_id", "category", "session_id")
    is_search = pl.col("type") == "search"
    ev = ev.sort("user_id", "ts", ~is_search, "query", "item_id").with_columns(
        run=is_search.cast(pl.Int64).cum_sum())  # global: the join below is on user_id too
    qcat = tables["queries"].unique("query", keep="first").select("query", qcat="category")
    s = ev.filter(is_search).join(qcat, on="query", how="left").select(
        "user_id", "run", "session_id", query_time="ts", query="query",
        category=pl.coalesce("category", "qcat"))
    c = ev.filter(~is_search).select("user_id", "run", "session_id", clicked_item="item_id",
                                                           click_time="ts")
    rows = s.join(c, on=["user_id", "run", "session_id"], how="left", nulls_equal=True)
    return rows.sort("user_id", "query_time", "click_time", nulls_last=True).select(
        "user_id", pl.col("query_time").dt.strftime(_ISO), "query", "clicked_item", "category",
        pl.col("click_time").dt.strftime(_ISO))


def export_search_log(tables: dict[str, pl.DataFrame], out: str | Path) -> dict[str, int]:
    """Write the three CSV files under ``out``; returns their row counts."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = search_log_rows(tables)
    rows.write_csv(out / "search_log.csv")
    items = tables.get("items", pl.DataFrame(schema=TABLES["items"]))
    items = items.select("item_id", title=pl.coalesce("description", "title"), category="category")
    items.sort("item_id").write_csv(out / "items.csv")
    cats = tables.get("categories", pl.DataFrame(schema=TABLES["categories"]))
    cats = cats.select(category_id="category", name="category", parent="parent").sort("category_id")
    cats.write_csv(out / "categories.csv")
    return {"search_log.csv": rows.height, "items.csv": items.height, "categories.csv": cats.height}
