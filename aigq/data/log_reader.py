"""Reading a search log file into string rows: CSV (delimiter sniffed) or parquet, a layout's column names
(``ImportConfig`` or a preset such as AOL's), and timestamp parsing. ``aigq.data.importer`` turns the rows into a
world; see its docstring for the presets and the row rules.
"""

from __future__ import annotations

import codecs
import csv
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from aigq.config import ImportConfig
from aigq.data import schema
from aigq.data.validate import NotALogError

FIELDS = ("user", "query_time", "query", "clicked_item", "category", "click_time")


REQUIRED = ("user", "query_time", "query")


DELIMITERS = (",", "\t", ";", "|")


CHUNK = 250_000  # CSV rows buffered in Python lists before they become a polars frame


_EPOCH = r"^[+-]?\d+(\.\d*)?$"


_MAX_EPOCH = 253_402_300_799  # 9999-12-31T23:59:59Z


@dataclass(frozen=True)
class Layout:
    """How a log's columns map onto ``FIELDS``: a preset, or ``ImportConfig``'s names (``preset=columns``)."""

    columns: dict[str, str]  # field → column name; a field not listed is absent from this layout
    delimiter: str | None = None  # None = sniff from the header
    quoted: bool = True  # False: quote characters are plain text (AOL queries hold unbalanced ")
    no_query: tuple[str, ...] = ()  # query texts that mean "no query" (→ missing query)
    url_items: bool = False  # clicked items are URLs: an item's default title is the URL's host


PRESETS = {
    "aol": Layout(
        columns={"user": "AnonID", "query": "Query", "query_time": "QueryTime", "clicked_item": "ClickURL"},
        delimiter="\t",
        quoted=False,
        no_query=("-",),
        url_items=True,
    ),
}


def layout(cfg: ImportConfig) -> Layout:
    """The preset's layout, or ``cfg``'s column names and delimiter for ``preset=columns``."""
    if cfg.preset in PRESETS:
        return PRESETS[cfg.preset]
    return Layout(columns={f: getattr(cfg, f) for f in FIELDS}, delimiter=cfg.delimiter)


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


def _column_index(header: list[str], lay: Layout, path: Path) -> dict[str, int]:
    """Field → column position (exact name first, then case-insensitive); missing required → NotALogError."""
    names = [h.strip() for h in header]
    lower = [h.lower() for h in names]
    idx: dict[str, int] = {}
    for f, want in lay.columns.items():
        if want in names:
            idx[f] = names.index(want)
        elif want.lower() in lower:
            idx[f] = lower.index(want.lower())
    missing = [f"{lay.columns[f]!r} ({f})" for f in REQUIRED if f not in idx]
    if missing:
        raise NotALogError(
            f"{path}: not a search log: missing required column(s) {', '.join(missing)}; "
            f"columns found: {names}. Set the names with importer.<field>=... or importer.preset=... (ImportConfig)."
        )
    return idx


def sniff_delimiter(header_line: str) -> str:
    counts = {d: header_line.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def _frame(lines: list[int], cols: dict[str, list[str | None]]) -> pl.DataFrame:
    return pl.DataFrame({"line": lines, **cols}, schema={"line": pl.Int64, **{f: pl.String for f in FIELDS}})


def read_csv_rows(path: Path, lay: Layout) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows with all fields as strings + line, wrong-field-count rows) streamed with the csv module."""
    with path.open(encoding="utf-8-sig", newline="") as f:
        lineno, header_line = 0, ""
        for header_line in f:
            lineno += 1
            if header_line.strip():
                break
        if not header_line.strip():
            raise NotALogError(f"{path}: empty file (no header)")
        delim = lay.delimiter or sniff_delimiter(header_line)
        quoting = csv.QUOTE_MINIMAL if lay.quoted else csv.QUOTE_NONE
        header = next(csv.reader([header_line], delimiter=delim, skipinitialspace=True, quoting=quoting))
        idx = _column_index(header, lay, path)
        reader = csv.reader(f, delimiter=delim, skipinitialspace=True, quoting=quoting)
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


def read_parquet_rows(path: Path, lay: Layout) -> pl.DataFrame:
    try:
        df = pl.read_parquet(path)
    except Exception as exc:  # any reader failure means "not a parquet log"
        raise NotALogError(f"{path}: unreadable parquet file ({type(exc).__name__}: {exc})") from None
    idx = _column_index(df.columns, lay, path)
    cols = {
        k: _as_string(df.to_series(idx[k])) if k in idx else pl.Series([None] * df.height, dtype=pl.String)
        for k in FIELDS
    }
    return pl.DataFrame({"line": pl.int_range(1, df.height + 1, eager=True), **cols})


def is_parquet(path: Path) -> bool:
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
