"""Import a plain search log (user, query time, query, clicked item, category, click time) into a world folder.

Input is CSV (any of , TAB ; | as delimiter, sniffed from the header unless ``ImportConfig.delimiter`` is set) or
parquet (detected by its magic bytes). Column names come from ``ImportConfig``; clicked item, category and click
time may be absent or empty. Timestamps are ISO-8601 (``T`` or space, optional fraction, optional ``Z``/offset →
naive UTC) or epoch seconds, or ``ImportConfig.time_format`` (strptime, used alone) when given.

Row rules, first failure wins, in the order of ``REASONS``: wrong field count (CSV), missing user_id, missing ts
(empty query time), bad timestamp (query time, or the click time of a clicked row, unparsable), missing query
(empty after normalising), click before query. Rejected rows go to ``world/quarantine/import.parquet`` with the raw
fields as strings, the 1-based source line (CSV: where the record starts; parquet: the row number) and ``reason``.

Every good row gives a ``search`` event and, with a clicked item, a ``click`` event (ts = click time, or query time
+ 1 s). ``session_id`` numbers a user's sessions 1, 2, ... (a new one after a gap of more than 30 minutes; ids are
per user, so key sessions by (user_id, session_id)). Non-integer user/item ids get a dense rank of their sorted
strings, the mapping saved to ``user_ids.parquet`` / ``item_ids.parquet``. Importing clears the world's table
parts first (a previous world's parts or exposures would otherwise mix in).
"""

from __future__ import annotations

import codecs
import csv
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from aigq.config import ImportConfig
from aigq.data import schema
from aigq.data.validate import QUARANTINE, NotALogError, apply_rules

FIELDS = ("user", "query_time", "query", "clicked_item", "category", "click_time")
REQUIRED = ("user", "query_time", "query")
REASONS = ("wrong field count", "missing user_id", "missing ts", "bad timestamp", "missing query", "click before query")
DELIMITERS = (",", "\t", ";", "|")
SESSION_GAP = timedelta(minutes=30)
CHUNK = 250_000  # CSV rows buffered in Python lists before they become a polars frame
_EPOCH = r"^[+-]?\d+(\.\d*)?$"
_MAX_EPOCH = 253_402_300_799  # 9999-12-31T23:59:59Z
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


def _py_ts(text: str, fmt: str | None) -> datetime | None:
    try:
        dt = datetime.strptime(text, fmt) if fmt else datetime.fromisoformat(text)
    except ValueError:
        return None
    return dt.astimezone(UTC).replace(tzinfo=None) if dt.tzinfo is not None else dt


def parse_timestamps(values: pl.Series, time_format: str | None = None) -> pl.Series:
    """Strings → naive UTC datetimes (µs); null where empty or unparsable.

    Plain ISO (optional ``Z``) and epoch seconds take a vectorised path; the rest (offsets, dates, ``time_format``)
    goes through Python once per distinct string.
    """
    s = values.cast(pl.String).str.strip_chars()
    s = pl.select(pl.when(s != "").then(s)).to_series()
    if time_format is None:
        c = pl.col("s")
        iso = (
            c.str.strip_suffix("Z")
            .str.replace(" ", "T", literal=True)
            .str.to_datetime("%Y-%m-%dT%H:%M:%S%.f", time_unit="us", strict=False)
        )
        num = c.cast(pl.Float64, strict=False)
        epoch = pl.when(c.str.contains(_EPOCH) & (num >= 0) & (num <= _MAX_EPOCH)).then(
            (num * 1e6).round().cast(pl.Int64).cast(schema.TS)
        )
        fast = pl.DataFrame({"s": s}).select(pl.coalesce(iso, epoch)).to_series()
        todo = s.filter(fast.is_null() & s.is_not_null() & ~s.str.contains(_EPOCH))
    else:
        fast = pl.Series([None] * len(s), dtype=schema.TS)
        todo = s.drop_nulls()
    todo = todo.unique()
    if todo.len():
        parsed = pl.Series([_py_ts(t, time_format) for t in todo.to_list()], dtype=schema.TS)
        slow = s.replace_strict(todo, parsed, default=None, return_dtype=schema.TS)
        fast = pl.select(pl.coalesce(fast, slow)).to_series()
    return fast.alias(values.name)


def _column_index(header: list[str], cfg: ImportConfig, path: Path) -> dict[str, int]:
    """Field → column position (exact name first, then case-insensitive); missing required → NotALogError."""
    names = [h.strip() for h in header]
    lower = [h.lower() for h in names]
    idx: dict[str, int] = {}
    for f in FIELDS:
        want = getattr(cfg, f)
        if want in names:
            idx[f] = names.index(want)
        elif want.lower() in lower:
            idx[f] = lower.index(want.lower())
    missing = [f"{getattr(cfg, f)!r} ({f})" for f in REQUIRED if f not in idx]
    if missing:
        raise NotALogError(
            f"{path}: not a search log: missing required column(s) {', '.join(missing)}; "
            f"columns found: {names}. Set the names with importer.<field>=... (ImportConfig)."
        )
    return idx


def _sniff(header_line: str) -> str:
    counts = {d: header_line.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def _frame(lines: list[int], cols: dict[str, list[str | None]]) -> pl.DataFrame:
    return pl.DataFrame({"line": lines, **cols}, schema={"line": pl.Int64, **{f: pl.String for f in FIELDS}})


def _read_csv(path: Path, cfg: ImportConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows with all fields as strings + line, wrong-field-count rows) streamed with the csv module."""
    with path.open(encoding="utf-8-sig", newline="") as f:
        lineno, header_line = 0, ""
        for header_line in f:
            lineno += 1
            if header_line.strip():
                break
        if not header_line.strip():
            raise NotALogError(f"{path}: empty file (no header)")
        delim = cfg.delimiter or _sniff(header_line)
        header = next(csv.reader([header_line], delimiter=delim, skipinitialspace=True))
        idx = _column_index(header, cfg, path)
        reader = csv.reader(f, delimiter=delim, skipinitialspace=True)
        chunks: list[pl.DataFrame] = []
        lines: list[int] = []
        cols: dict[str, list[str | None]] = {k: [] for k in FIELDS}
        bad: list[tuple[int, str]] = []
        prev = 0
        try:
            for row in reader:
                start, prev = lineno + prev + 1, reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                if len(row) != len(header):
                    bad.append((start, delim.join(row)))
                    continue
                lines.append(start)
                for k in FIELDS:
                    cols[k].append(row[idx[k]] if k in idx else None)
                if len(lines) >= CHUNK:
                    chunks.append(_frame(lines, cols))
                    lines, cols = [], {k: [] for k in FIELDS}
        except (csv.Error, UnicodeDecodeError) as exc:
            raise NotALogError(f"{path}: unreadable CSV near line {lineno + reader.line_num}: {exc}") from None
    chunks.append(_frame(lines, cols))
    wrong = pl.DataFrame(bad, schema={"line": pl.Int64, "raw": pl.String}, orient="row")
    return pl.concat(chunks), wrong.with_columns(reason=pl.lit("wrong field count"))


def _as_string(s: pl.Series) -> pl.Series:
    if isinstance(s.dtype, pl.Datetime) and s.dtype.time_zone is not None:
        s = s.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return s.cast(pl.String)


def _read_parquet(path: Path, cfg: ImportConfig) -> pl.DataFrame:
    try:
        df = pl.read_parquet(path)
    except Exception as exc:  # any reader failure means "not a parquet log"
        raise NotALogError(f"{path}: unreadable parquet file ({type(exc).__name__}: {exc})") from None
    idx = _column_index(df.columns, cfg, path)
    cols = {
        k: _as_string(df.to_series(idx[k])) if k in idx else pl.Series([None] * df.height, dtype=pl.String)
        for k in FIELDS
    }
    return pl.DataFrame({"line": pl.int_range(1, df.height + 1, eager=True), **cols})


def _sniff_binary(path: Path) -> bool:
    """True for parquet; NotALogError for an empty, binary or non-UTF-8 file."""
    with path.open("rb") as f:
        head = f.read(1 << 16)
    if head.startswith(b"PAR1"):
        return True
    if not head.strip(b" \t\r\n\xef\xbb\xbf"):
        raise NotALogError(f"{path}: empty file")
    if b"\x00" in head:
        raise NotALogError(f"{path}: binary file, neither a CSV nor a parquet log")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        raise NotALogError(f"{path}: not UTF-8 text, neither a CSV nor a parquet log") from None
    return False


def _check_rows(raw: pl.DataFrame, time_format: str | None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Normalise fields (``u``, ``q``, ``item``, ``cat``, ``qts``, ``cts``) and split into (ok, rejected)."""

    def clean(c: str) -> pl.Expr:
        v = pl.col(c).str.strip_chars()
        return pl.when(v != "").then(v)

    df = raw.with_columns(
        u=clean("user"),
        item=clean("clicked_item"),
        cat=clean("category"),
        q=clean("query").str.replace_all(r"\s+", " ").str.to_lowercase(),
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


def _build_tables(good: pl.DataFrame) -> tuple[dict[str, pl.DataFrame], pl.DataFrame, pl.DataFrame]:
    """(tables, user id map, item id map) from the checked rows."""
    uids = _int_ids(good["u"], "user_id")
    iids = _int_ids(good["item"].drop_nulls(), "item_id")
    rows = good.join(uids, left_on="u", right_on="original", how="left")
    searches = rows.select(
        "user_id",
        ts="qts",
        type=pl.lit("search"),
        query="q",
        item_id=pl.lit(None, dtype=pl.Int64),
        category="cat",
        order=pl.lit(0),
        line="line",
    )
    clicks = (
        rows.filter(pl.col("item").is_not_null())
        .join(iids, left_on="item", right_on="original", how="left")
        .select(
            "user_id",
            ts=pl.coalesce("cts", pl.col("qts") + timedelta(seconds=1)),
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
    item_cat = _mode(good.filter(pl.col("item").is_not_null()), "item", "cat")
    items = (
        iids.join(item_cat, left_on="original", right_on="item", how="left")
        .with_columns(pl.col("cat").fill_null("unknown"))
        .sort("item_id")
        .select(
            "item_id",
            title="original",
            category="cat",
            category_path="cat",
            brand=pl.lit("unknown"),
            price=pl.lit(None, dtype=pl.Float64),
            description=pl.format("{} item {}", pl.col("cat"), pl.col("original")),
        )
    )
    queries = _mode(good, "q", "cat").rename({"q": "query", "cat": "category"}).sort("query")
    cats = pl.concat([good["cat"].drop_nulls(), items["category"]]).unique().sort()
    categories = pl.DataFrame({"category": cats, "parent": cats})
    return (
        {"users": users, "items": items, "queries": queries, "categories": categories, "events": events},
        uids,
        iids,
    )


def import_log(path: str | Path, world: str | Path, cfg: ImportConfig) -> ImportReport:
    """Import the log at ``path`` into ``world`` (tables, meta.json, id maps, quarantine); see the module doc."""
    path, world = Path(path), Path(world)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such log file")
    if _sniff_binary(path):
        raw, wrong = (
            _read_parquet(path, cfg),
            pl.DataFrame(schema={"line": pl.Int64, "raw": pl.String, "reason": pl.String}),
        )
    else:
        raw, wrong = _read_csv(path, cfg)
    rows_in = raw.height + wrong.height
    if rows_in == 0:
        raise NotALogError(f"{path}: a header but no data rows")
    good, rejected = _check_rows(raw, cfg.time_format)
    rejected = pl.concat([wrong, rejected.select("line", *FIELDS, "reason")], how="diagonal_relaxed")
    rejected = rejected.select([pl.col(c).cast(t) for c, t in QUARANTINE_SCHEMA.items()]).sort("line")
    counts = dict(rejected.group_by("reason").len().iter_rows()) if rejected.height else {}
    by_reason = {r: counts[r] for r in REASONS if r in counts}

    qpath: Path | None = world / QUARANTINE / "import.parquet"
    if rejected.height:
        qpath.parent.mkdir(parents=True, exist_ok=True)
        rejected.write_parquet(qpath)
    else:
        qpath.unlink(missing_ok=True)
        qpath = None
    if good.height == 0:
        raise NotALogError(f"{path}: no valid rows out of {rows_in} ({by_reason}); see {qpath}")

    tables, uids, iids = _build_tables(good)
    for name in schema.TABLES:
        for f in schema.table_files(world, name):
            f.unlink()
    for name, df in tables.items():
        schema.write_part(world, name, df)
    _write_ids(world, "user_ids.parquet", uids, "user_id")
    _write_ids(world, "item_ids.parquet", iids, "item_id")

    ts = tables["events"]["ts"]
    first_day, last_day = ts.min().date(), ts.max().date()  # type: ignore[union-attr]
    n = {name: df.height for name, df in tables.items()}
    schema.write_meta(
        world,
        {
            "source": "importer",
            "input": str(path),
            "start_date": first_day.isoformat(),
            "days": (last_day - first_day).days + 1,
            "rows_in": rows_in,
            "rows_ok": good.height,
            "rejected": rejected.height,
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
    )
