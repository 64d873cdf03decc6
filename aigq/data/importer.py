"""Import a plain search log (user, query time, query, clicked item, category, click time) into a world folder.

Input is CSV (any of , TAB ; | as delimiter, sniffed from the header unless ``ImportConfig.delimiter`` is set) or
parquet (detected by its magic bytes). Column names come from ``ImportConfig`` (``preset=columns``) or from a preset
(``PRESETS``: field names, delimiter, quoting, the query text that means "no query", whether items are URLs);
clicked item, category and click time may be absent or empty. ``preset=aol`` reads the classic public AOL query log
(tab-separated ``AnonID Query QueryTime ItemRank ClickURL``, no quoting): a clicked ``ClickURL`` is the item, titled
by its host name (``http://www.weather.com`` → ``weather.com``) so a click reads as text; ``ItemRank`` is ignored;
the query ``-`` (AOL's query-less "next page") is a missing query. Timestamps are ISO-8601 (``T`` or space, optional
fraction, optional ``Z``/offset → naive UTC) or epoch seconds, or ``ImportConfig.time_format`` (strptime, used alone)
when given.

Row rules, first failure wins, in the order of ``REASONS``: wrong field count (CSV), missing user_id, missing ts
(empty query time), bad timestamp (query time, or the click time of a clicked row, unparsable), missing query
(empty after normalising), click before query. Rejected rows go to ``world/quarantine/import.parquet`` with the raw
fields as strings, the 1-based source line (CSV: where the record starts; parquet: the row number) and ``reason``.

Good rows with the same (user, query time, query) are ONE search (a query with several clicks is logged as one row
per click): it gives one ``search`` event, and each of its rows with a clicked item one ``click`` event (ts = click
time, else query time + k s for the search's k-th click in file order). ``session_id`` numbers a user's sessions
1, 2, ... (a new one after a gap of more than 30 minutes; ids are per user, so key sessions by (user_id, session_id)).
Non-integer user/item ids get a dense rank of their sorted strings, the mapping saved to ``user_ids.parquet`` /
``item_ids.parquet``. Importing clears the world's table parts first (a previous world's parts or exposures would
otherwise mix in).

A log AIGQ cannot learn from fails with a one-line ``NotALogError`` (``check_users``): no valid rows, a single user,
or no user with ≥ 2 searches (next-search labels and the last-query evaluation need them).

Optional side tables (``ImportConfig.items`` / ``.categories``; CSV with a header row, delimiter sniffed, columns by
position): ``item_id,title[,category]`` and ``category_id,name[,parent]``. Items found there get the real title (and
``description`` = title, the text the prompt shows for a click) and, when given, that category; category ids in
events, items, queries and categories are replaced by their names, and the parent (a category id, named through the
same table) is the categories table's parent and the items' ``category_path`` "Parent > Leaf". Side-table rows with
no id, no title/name, or an id seen before are rejected (counted in the report and meta.json, written to
``world/quarantine/import_<table>.parquet`` with a 1-based data ``row``); log ids missing from a side table keep the
id text. Without side tables a click reads as "<category id> item <item id>" (or the URL's host for ``aol``) and a
category as its id: the text carries no meaning the policy could learn from.

Reading the file (CSV / parquet, layouts, timestamps) lives in ``aigq.data.log_reader``, the side tables in
``aigq.data.side_tables``; this module holds the row rules, the tables built from the rows and ``import_log``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import polars as pl

from aigq.config import ImportConfig
from aigq.data import schema
from aigq.data.log_reader import (
    FIELDS,
    Layout,
    is_parquet,
    layout,
    parse_timestamps,
    read_csv_rows,
    read_parquet_rows,
)
from aigq.data.side_tables import SIDE_COLUMNS, SideReport, apply_side_tables, read_side_tables
from aigq.data.validate import QUARANTINE, NotALogError, apply_rules

# Side tables (``importer.items`` / ``importer.categories``): column names by position; a rejected row's reason is
# "missing <first>", "missing <second>" or "duplicate <first>".
REASONS = ("wrong field count", "missing user_id", "missing ts", "bad timestamp", "missing query", "click before query")
SESSION_GAP = timedelta(minutes=30)
QUARANTINE_SCHEMA = {"line": pl.Int64, **{f: pl.String for f in FIELDS}, "raw": pl.String, "reason": pl.String}


@dataclass
class ImportReport:
    rows_in: int
    rows_ok: int
    rejected: int
    by_reason: dict[str, int]
    world: Path
    quarantine: Path | None
    counts: dict[str, int] = field(default_factory=dict)  # rows written per table
    preset: str = "columns"
    side: dict[str, SideReport] = field(default_factory=dict)  # "items" / "categories" when given


def _check_rows(
    raw: pl.DataFrame, time_format: str | None, no_query: tuple[str, ...] = ()
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Normalise fields (``u``, ``q``, ``item``, ``cat``, ``qts``, ``cts``) and split into (ok, rejected).

    A query whose text is one of ``no_query`` (AOL's ``-``) counts as missing."""

    def clean(c: str) -> pl.Expr:
        v = pl.col(c).str.strip_chars()
        return pl.when(v != "").then(v)

    q = clean("query").str.replace_all(r"\s+", " ").str.to_lowercase()
    df = raw.with_columns(
        u=clean("user"),
        item=clean("clicked_item"),
        cat=clean("category"),
        q=pl.when(~q.is_in(list(no_query))).then(q) if no_query else q,
        qts=parse_timestamps(raw["query_time"], time_format),
        cts=parse_timestamps(raw["click_time"], time_format),
    )
    clicked, cts_given = pl.col("item").is_not_null(), clean("click_time").is_not_null()
    return apply_rules(
        df,
        [
            ("missing user_id", pl.col("u").is_null()),
            ("missing ts", clean("query_time").is_null()),
            ("bad timestamp", pl.col("qts").is_null() | (clicked & cts_given & pl.col("cts").is_null())),
            ("missing query", pl.col("q").is_null()),
            ("click before query", clicked & (pl.col("cts") < pl.col("qts"))),
        ],
    )


def _int_ids(strings: pl.Series, name: str) -> pl.DataFrame:
    """Original id string → int64: the integer itself when every id is a canonical integer, else a dense rank."""
    uniq = strings.unique().sort()
    as_int = uniq.cast(pl.Int64, strict=False)
    if as_int.null_count() == 0 and (as_int.cast(pl.String) == uniq).all():
        return pl.DataFrame({"original": uniq, name: as_int})
    return pl.DataFrame({"original": uniq, name: pl.int_range(1, uniq.len() + 1, eager=True)})


def _mode(df: pl.DataFrame, key: str, value: str) -> pl.DataFrame:
    """Most frequent non-null ``value`` per ``key`` (ties: alphabetically first)."""
    return (
        df.filter(pl.col(value).is_not_null())
        .group_by(key, value)
        .len()
        .sort([key, "len", value], descending=[False, True, False])
        .group_by(key, maintain_order=True)
        .first()
        .drop("len")
    )


def _write_ids(world: Path, name: str, ids: pl.DataFrame, key: str) -> None:
    path = world / name
    if (ids["original"] == ids[key].cast(pl.String)).all():
        path.unlink(missing_ok=True)
    else:
        ids.write_parquet(path)


def _host(url: pl.Expr) -> pl.Expr:
    """A URL's host without ``www.`` (``http://www.weather.com/x`` → ``weather.com``): a clicked URL's title."""
    return (
        url.str.replace(r"^[A-Za-z][A-Za-z0-9+.-]*://", "")
        .str.replace(r"[/?#].*$", "")
        .str.replace(r"^www\.", "")
        .str.to_lowercase()
    )


def check_users(good: pl.DataFrame, path: str | Path) -> None:
    """``NotALogError`` unless the good rows (``u``, ``qts``, ``q``) hold ≥ 2 users and a user with ≥ 2 searches.

    AIGQ learns across users, and next-search labels and the last-query evaluation need a user's second search."""
    per_user = good.unique(["u", "qts", "q"]).group_by("u").len()
    if per_user.height == 1:
        raise NotALogError(f"{path}: has 1 user ({per_user['u'].item()!r}): AIGQ learns across users; need ≥ 2")
    if per_user.height and per_user["len"].max() < 2:  # type: ignore[operator]
        raise NotALogError(
            f"{path}: no user searched twice: next-search labels and the last-query evaluation need users with "
            f"≥ 2 searches ({per_user.height} users, 1 search each)"
        )


def _build_tables(
    good: pl.DataFrame,
    lay: Layout,
    side_items: pl.DataFrame | None = None,
    parents: pl.DataFrame | None = None,
) -> tuple[dict[str, pl.DataFrame], pl.DataFrame, pl.DataFrame]:
    """(tables, user id map, item id map) from the checked rows (categories already named).

    ``side_items``: ``original, s_title, s_cat`` from the items side table; ``parents``: ``category, parent`` names."""
    uids = _int_ids(good["u"], "user_id")
    iids = _int_ids(good["item"].drop_nulls(), "item_id")
    rows = good.join(uids, left_on="u", right_on="original", how="left").sort("line")
    search_key = ("user_id", "qts", "q")
    searches = (
        rows.group_by(search_key, maintain_order=True)
        .agg(cat=pl.col("cat").drop_nulls().first(), line=pl.col("line").min())
        .select(
            "user_id",
            ts="qts",
            type=pl.lit("search"),
            query="q",
            item_id=pl.lit(None, dtype=pl.Int64),
            category="cat",
            order=pl.lit(0),
            line="line",
        )
    )
    kth = pl.int_range(1, pl.len() + 1).over(search_key)  # the k-th click of its search, in file order
    clicks = (
        rows.filter(pl.col("item").is_not_null())
        .join(iids, left_on="item", right_on="original", how="left")
        .select(
            "user_id",
            ts=pl.coalesce("cts", pl.col("qts") + pl.duration(seconds=kth)),
            type=pl.lit("click"),
            query=pl.lit(None, dtype=pl.String),
            item_id="item_id",
            category="cat",
            order=pl.lit(1),
            line="line",
        )
    )
    ev = pl.concat([searches, clicks]).sort("user_id", "ts", "order", "line")
    first = pl.col("user_id") != pl.col("user_id").shift()
    new = (first | ((pl.col("ts") - pl.col("ts").shift()) > SESSION_GAP)).fill_null(True)
    events = ev.with_columns(session_id=new.cast(pl.Int64).cum_sum().over("user_id")).drop("order", "line")

    users = (
        events.group_by("user_id")
        .agg(first_seen=pl.col("ts").min())
        .sort("user_id")
        .with_columns(
            gender=pl.lit("unknown"),
            age=pl.lit(None, dtype=pl.Int32),
            city=pl.lit("unknown"),
            occupation=pl.lit("unknown"),
        )
    )
    if side_items is None:
        side_items = pl.DataFrame(schema={"original": pl.String, "s_title": pl.String, "s_cat": pl.String})
    if parents is None:
        parents = pl.DataFrame(schema={"category": pl.String, "parent": pl.String})
    item_cat = _mode(good.filter(pl.col("item").is_not_null()), "item", "cat")
    default_title = _host(pl.col("original")) if lay.url_items else pl.col("original")
    plain_text = default_title if lay.url_items else pl.format("{} item {}", pl.col("category"), pl.col("original"))
    items = (
        iids.join(item_cat, left_on="original", right_on="item", how="left")
        .join(side_items, on="original", how="left")
        .with_columns(category=pl.coalesce("s_cat", "cat", pl.lit(schema.UNKNOWN_CATEGORY)))
        .join(parents, on="category", how="left")
        .sort("item_id")
        .select(
            "item_id",
            title=pl.coalesce("s_title", default_title),
            category="category",
            category_path=pl.when(pl.col("parent").is_not_null() & (pl.col("parent") != pl.col("category")))
            .then(pl.format("{} > {}", "parent", "category"))
            .otherwise("category"),
            brand=pl.lit("unknown"),
            price=pl.lit(None, dtype=pl.Float64),
            description=pl.coalesce("s_title", plain_text),
        )
    )
    queries = _mode(good, "q", "cat").rename({"q": "query", "cat": "category"}).sort("query")
    cats = pl.concat([good["cat"].drop_nulls(), items["category"]]).unique().sort()
    categories = (
        pl.DataFrame({"category": cats})
        .join(parents, on="category", how="left")
        .select("category", parent=pl.coalesce("parent", "category"))
    )
    return (
        {"users": users, "items": items, "queries": queries, "categories": categories, "events": events},
        uids,
        iids,
    )


def _save_rejects(world: Path, name: str, rejected: pl.DataFrame | None) -> Path | None:
    """Overwrite ``world/quarantine/<name>.parquet`` with ``rejected``; none (or no rows) removes a stale file."""
    path = world / QUARANTINE / f"{name}.parquet"
    if rejected is None or rejected.height == 0:
        path.unlink(missing_ok=True)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    rejected.write_parquet(path)
    return path


def import_log(path: str | Path, world: str | Path, cfg: ImportConfig) -> ImportReport:
    """Import the log at ``path`` into ``world`` (tables, meta.json, id maps, quarantine); see the module doc."""
    path, world = Path(path), Path(world)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such log file")
    lay = layout(cfg)
    side, side_reports, side_rejected = read_side_tables(cfg)
    if is_parquet(path):
        raw, wrong = (
            read_parquet_rows(path, lay),
            pl.DataFrame(schema={"line": pl.Int64, "raw": pl.String, "reason": pl.String}),
        )
    else:
        raw, wrong = read_csv_rows(path, lay)
    rows_in = raw.height + wrong.height
    if rows_in == 0:
        raise NotALogError(f"{path}: a header but no data rows")
    good, rejected = _check_rows(raw, cfg.time_format, lay.no_query)
    rejected = pl.concat([wrong, rejected.select("line", *FIELDS, "reason")], how="diagonal_relaxed")
    rejected = rejected.select([pl.col(c).cast(t) for c, t in QUARANTINE_SCHEMA.items()]).sort("line")
    counts = dict(rejected.group_by("reason").len().iter_rows()) if rejected.height else {}
    by_reason = {r: counts[r] for r in REASONS if r in counts}

    qpath = _save_rejects(world, "import", rejected)
    if good.height == 0:
        raise NotALogError(f"{path}: no valid rows out of {rows_in} ({by_reason}); see {qpath}")
    check_users(good, path)

    good, side_items, parents = apply_side_tables(good, side, side_reports)
    tables, uids, iids = _build_tables(good, lay, side_items, parents)
    for name in schema.TABLES:
        for f in schema.table_files(world, name):
            f.unlink()
    for name, df in tables.items():
        schema.write_part(world, name, df)
    _write_ids(world, "user_ids.parquet", uids, "user_id")
    _write_ids(world, "item_ids.parquet", iids, "item_id")
    for kind in SIDE_COLUMNS:
        found = _save_rejects(world, f"import_{kind}", side_rejected.get(kind))
        if kind in side_reports:
            side_reports[kind].quarantine = found

    ts = tables["events"]["ts"]
    first_day, last_day = ts.min().date(), ts.max().date()  # type: ignore[union-attr]
    n = {name: df.height for name, df in tables.items()}
    schema.write_meta(
        world,
        {
            "source": "importer",
            "input": str(path),
            "preset": cfg.preset,
            "start_date": first_day.isoformat(),
            "days": (last_day - first_day).days + 1,
            "rows_in": rows_in,
            "rows_ok": good.height,
            "rejected": rejected.height,
            "side_tables": {k: r.as_meta() for k, r in side_reports.items()},
            **n,
        },
    )
    return ImportReport(
        rows_in=rows_in,
        rows_ok=good.height,
        rejected=rejected.height,
        by_reason=by_reason,
        world=world,
        quarantine=qpath,
        counts=n,
        preset=cfg.preset,
        side=side_reports,
    )
