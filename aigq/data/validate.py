"""Check every world table against its schema on read; bad rows go to quarantine with a reason, never dropped.

Reading (``read_table``): each parquet part must hold the schema's columns (else ``NotALogError`` naming them),
each column is cast to the schema dtype (a column that cannot be cast is a ``NotALogError`` naming it), extra
columns are dropped. Row rules, checked in the order of ``REASONS``; a rejected row carries the FIRST rule it fails:

- users:      missing user_id, duplicate user_id (the first copy is kept)
- items:      missing item_id, missing category, duplicate item_id
- queries:    missing query, missing category, duplicate query (ours: a query maps to one category)
- categories: missing category, duplicate category (ours; ``parent`` may be null)
- events:     missing user_id, missing ts, bad timestamp (outside [start_date, start_date + days)), unknown event
              type, missing query (search without a non-empty query), missing item_id (click/cart/buy without
              one), dangling user_id (not among the clean users), dangling item_id (not among the clean items)
- exposures:  missing exposure_id, missing user_id, missing ts, bad timestamp, bad shown list (not exactly 3
              non-empty strings, or ``clicked`` missing / of another length), dangling user_id

"Missing" for a string key also covers a blank string. Duplicates are judged among rows that pass the earlier
rules, so a broken first copy does not take a good later copy down with it. Rejected rows keep the schema columns
plus ``reason`` and are written to ``world/quarantine/<table>.parquet``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from aigq.data import schema

REASONS: dict[str, tuple[str, ...]] = {
    "users": ("missing user_id", "duplicate user_id"),
    "items": ("missing item_id", "missing category", "duplicate item_id"),
    "queries": ("missing query", "missing category", "duplicate query"),
    "categories": ("missing category", "duplicate category"),
    "events": (
        "missing user_id",
        "missing ts",
        "bad timestamp",
        "unknown event type",
        "missing query",
        "missing item_id",
        "dangling user_id",
        "dangling item_id",
    ),
    "exposures": (
        "missing exposure_id",
        "missing user_id",
        "missing ts",
        "bad timestamp",
        "bad shown list",
        "dangling user_id",
    ),
}
# A world whose users or events table has no rows at all is not a log.
NONEMPTY_TABLES = ("users", "events")
QUARANTINE = "quarantine"

# A rule is (reason, fails) where fails is an expression (true = reject) or a function of the "passed all earlier
# rules" expression (used by the duplicate rules).
Rule = tuple[str, "pl.Expr | Callable[[pl.Expr], pl.Expr]"]


class NotALogError(ValueError):
    """The file or folder is not a log at all (missing columns, unreadable file, no meta.json, empty table)."""


@dataclass
class TableReport:
    rows_in: int
    rows_ok: int
    rejected: int
    by_reason: dict[str, int]


@dataclass
class ValidatedWorld:
    meta: dict[str, Any]
    tables: dict[str, pl.DataFrame]
    reports: dict[str, TableReport]

    def summary(self) -> dict[str, int]:
        """Flat counts for MLflow metrics: ``<table>.rows_in|rows_ok|rejected`` and ``<table>.rejected.<reason>``
        (every known reason, zeros included, so runs compare key for key)."""
        out: dict[str, int] = {}
        for name, r in self.reports.items():
            out[f"{name}.rows_in"], out[f"{name}.rows_ok"], out[f"{name}.rejected"] = r.rows_in, r.rows_ok, r.rejected
            for reason in REASONS.get(name, ()):
                out[f"{name}.rejected.{reason}"] = r.by_reason.get(reason, 0)
        return out


def apply_rules(df: pl.DataFrame, rules: list[Rule]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split ``df`` into (ok rows, rejected rows + ``reason``); the reason is the first rule whose check is true."""
    fails: list[tuple[str, pl.Expr]] = []
    for reason, rule in rules:
        if not isinstance(rule, pl.Expr):
            prior_ok = ~pl.any_horizontal([f for _, f in fails]) if fails else pl.lit(True)
            rule = rule(prior_ok)
        fails.append((reason, rule.fill_null(False)))
    chain: Any = pl
    for reason, f in fails:
        chain = chain.when(f).then(pl.lit(reason))
    tagged = df.with_columns(chain.otherwise(pl.lit(None, dtype=pl.String)).alias("reason"))
    return tagged.filter(pl.col("reason").is_null()).drop("reason"), tagged.filter(pl.col("reason").is_not_null())


def _blank(col: str) -> pl.Expr:
    return pl.col(col).is_null() | (pl.col(col).str.strip_chars() == "")


def _dup(key: str) -> Callable[[pl.Expr], pl.Expr]:
    """Later copies of ``key`` among the rows that passed the earlier rules."""
    return lambda prior_ok: ~pl.struct(pl.col(key), prior_ok.alias("__ok")).is_first_distinct()


def _bad_ts(start_date: str, days: int) -> pl.Expr:
    start = datetime.fromisoformat(str(start_date))
    return (pl.col("ts") < start) | (pl.col("ts") >= start + timedelta(days=int(days)))


def _dangling(col: str, known: pl.DataFrame, key: str) -> pl.Expr:
    return pl.col(col).is_not_null() & ~pl.col(col).is_in(known[key].implode())


def validate_users(users: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    return apply_rules(
        users, [("missing user_id", pl.col("user_id").is_null()), ("duplicate user_id", _dup("user_id"))]
    )


def validate_items(items: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    return apply_rules(
        items,
        [
            ("missing item_id", pl.col("item_id").is_null()),
            ("missing category", _blank("category")),
            ("duplicate item_id", _dup("item_id")),
        ],
    )


def validate_queries(queries: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    return apply_rules(
        queries,
        [
            ("missing query", _blank("query")),
            ("missing category", _blank("category")),
            ("duplicate query", _dup("query")),
        ],
    )


def validate_categories(categories: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    return apply_rules(categories, [("missing category", _blank("category")), ("duplicate category", _dup("category"))])


def validate_events(
    events: pl.DataFrame, users: pl.DataFrame, items: pl.DataFrame, start_date: str, days: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Events against the clean ``users``/``items`` and the world's time window."""
    typ = pl.col("type")
    return apply_rules(
        events,
        [
            ("missing user_id", pl.col("user_id").is_null()),
            ("missing ts", pl.col("ts").is_null()),
            ("bad timestamp", _bad_ts(start_date, days)),
            ("unknown event type", typ.is_null() | ~typ.is_in(list(schema.EVENT_TYPES))),
            ("missing query", (typ == "search") & _blank("query")),
            ("missing item_id", typ.is_in(list(schema.ITEM_EVENT_TYPES)) & pl.col("item_id").is_null()),
            ("dangling user_id", _dangling("user_id", users, "user_id")),
            ("dangling item_id", _dangling("item_id", items, "item_id")),
        ],
    )


def validate_exposures(
    exposures: pl.DataFrame, users: pl.DataFrame, start_date: str, days: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """HintQ exposures: exactly 3 non-empty shown queries, a ``clicked`` flag per shown query, a known user."""
    shown, clicked = pl.col("shown"), pl.col("clicked")
    non_empty = shown.list.eval(pl.element().str.strip_chars().str.len_chars() > 0).list.sum()
    good_list = (shown.list.len() == 3) & (non_empty == 3) & (clicked.list.len() == shown.list.len())
    return apply_rules(
        exposures,
        [
            ("missing exposure_id", pl.col("exposure_id").is_null()),
            ("missing user_id", pl.col("user_id").is_null()),
            ("missing ts", pl.col("ts").is_null()),
            ("bad timestamp", _bad_ts(start_date, days)),
            ("bad shown list", ~good_list.fill_null(False)),
            ("dangling user_id", _dangling("user_id", users, "user_id")),
        ],
    )


def _cast(df: pl.DataFrame, name: str, source: Path) -> pl.DataFrame:
    for col, dtype in schema.TABLES[name].items():
        if df.schema[col] == dtype:
            continue
        try:
            df = df.with_columns(pl.col(col).cast(dtype, strict=True))
        except pl.exceptions.PolarsError as exc:
            raise NotALogError(
                f"{name}.{col} in {source}: cannot cast {df.schema[col]} to {dtype} ({type(exc).__name__})"
            ) from None
    return df


def read_table(world: str | Path, name: str) -> pl.DataFrame:
    """All parts of table ``name``, required columns checked and cast to the schema, extra columns dropped.

    An optional table (exposures) with no parts is an empty frame; a required one is a ``NotALogError``.
    """
    files = schema.table_files(world, name)
    cols = list(schema.TABLES[name])
    if not files:
        if name in schema.OPTIONAL_TABLES:
            return schema.empty_frame(name)
        raise NotALogError(f"{world}: no '{name}' table (no parquet parts in {schema.table_dir(world, name)})")
    frames = []
    for f in files:
        try:
            found = list(pl.read_parquet_schema(f))
            df = pl.read_parquet(f, columns=[c for c in cols if c in found])
        except Exception as exc:  # any reader failure means "not a parquet part"
            raise NotALogError(f"{f}: not a readable parquet file ({type(exc).__name__}: {exc})") from None
        missing = [c for c in cols if c not in found]
        if missing:
            raise NotALogError(
                f"table '{name}' ({f}): missing required column(s) {', '.join(missing)}; "
                f"columns found: {', '.join(found) or '(none)'}"
            )
        frames.append(_cast(df.select(cols), name, f))
    return pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0]


def _report(rows_in: int, rejected: pl.DataFrame, name: str) -> TableReport:
    counts = dict(rejected.group_by("reason").len().iter_rows()) if rejected.height else {}
    by_reason = {r: counts[r] for r in REASONS[name] if r in counts}
    return TableReport(
        rows_in=rows_in, rows_ok=rows_in - rejected.height, rejected=rejected.height, by_reason=by_reason
    )


def save_quarantine(world: str | Path, name: str, rejected: pl.DataFrame) -> Path | None:
    """Overwrite ``world/quarantine/<name>.parquet`` with ``rejected``; no rejects removes a stale file."""
    path = Path(world) / QUARANTINE / f"{name}.parquet"
    if rejected.height == 0:
        path.unlink(missing_ok=True)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    rejected.write_parquet(path)
    return path


def _window(world: Path, meta: dict[str, Any]) -> tuple[str, int]:
    start, days = meta.get("start_date"), meta.get("days")
    try:
        datetime.fromisoformat(str(start))
        days = int(days)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise NotALogError(
            f"{world}/meta.json: needs start_date (YYYY-MM-DD) and days; got start_date={start!r}, "
            f"days={meta.get('days')!r}"
        ) from None
    return str(start), days


def validate_world(world: str | Path, write_quarantine: bool = True) -> ValidatedWorld:
    """Read and check every table of ``world``; clean rows in ``tables``, counts in ``reports``."""
    world = Path(world)
    if not world.is_dir():
        raise NotALogError(f"{world}: no such world folder")
    try:
        meta = schema.read_meta(world)
    except FileNotFoundError as exc:
        raise NotALogError(str(exc)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NotALogError(f"{world}/meta.json: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise NotALogError(f"{world}/meta.json: expected a JSON object")
    start, days = _window(world, meta)

    tables: dict[str, pl.DataFrame] = {}
    reports: dict[str, TableReport] = {}
    rejects: dict[str, pl.DataFrame] = {}

    def run(name: str, check: Callable[[pl.DataFrame], tuple[pl.DataFrame, pl.DataFrame]]) -> None:
        raw = read_table(world, name)
        if name in NONEMPTY_TABLES and raw.height == 0:
            raise NotALogError(f"{world}: table '{name}' is empty")
        tables[name], rejects[name] = check(raw)
        reports[name] = _report(raw.height, rejects[name], name)

    run("users", validate_users)
    run("items", validate_items)
    run("queries", validate_queries)
    run("categories", validate_categories)
    run("events", lambda df: validate_events(df, tables["users"], tables["items"], start, days))
    run("exposures", lambda df: validate_exposures(df, tables["users"], start, days))
    if write_quarantine:
        for name, rej in rejects.items():
            save_quarantine(world, name, rej)
    return ValidatedWorld(meta=meta, tables=tables, reports=reports)
