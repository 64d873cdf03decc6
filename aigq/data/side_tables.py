"""Optional side tables of an imported log (``aigq import-log --items --categories``): item id → title (and
category), category id → name (and parent), read, checked row by row and applied to the log's good rows. See
``aigq.data.importer``'s docstring for the rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from aigq.config import ImportConfig
from aigq.data.log_reader import sniff_delimiter
from aigq.data.validate import NotALogError, apply_rules

SIDE_COLUMNS = {"items": ("item_id", "title", "category"), "categories": ("category_id", "name", "parent")}


@dataclass
class SideReport:
    """One side table: rows read, kept and rejected (by reason), and how many of the log's ids it named."""

    path: Path
    rows_in: int
    rows_ok: int
    by_reason: dict[str, int]
    matched: int = 0  # distinct ids of the log's rows (clicked items, or categories) found in the table
    quarantine: Path | None = None

    def as_meta(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "rows_in": self.rows_in,
            "rows_ok": self.rows_ok,
            "rejected": self.rows_in - self.rows_ok,
            "by_reason": self.by_reason,
            "matched": self.matched,
        }


def side_reasons(kind: str) -> tuple[str, str, str]:
    """A side table's reject reasons in rule order: missing id, missing title (name), duplicate id."""
    key, text, _ = SIDE_COLUMNS[kind]
    return f"missing {key}", f"missing {text}", f"duplicate {key}"


def read_side(path: Path, kind: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Side table ``kind`` at ``path`` → (ok rows ``row, id, title, extra``, rejected rows + ``reason``).

    Columns by position after a header row (``SIDE_COLUMNS``); blank fields are missing. Rules, first failure wins:
    missing id, missing title (a category's name), duplicate id (a later copy among the rows passing the others)."""
    names = SIDE_COLUMNS[kind]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {kind} table (importer.{kind})")
    with path.open(encoding="utf-8-sig") as f:
        header_line = f.readline()
    try:
        df = pl.read_csv(
            path,
            separator=sniff_delimiter(header_line),
            infer_schema=False,
            truncate_ragged_lines=True,
            row_index_name="row",
            row_index_offset=1,
        )
    except Exception as exc:  # any reader failure means "not a side table"
        raise NotALogError(f"{path}: unreadable {kind} table ({type(exc).__name__}: {exc})") from None
    cols = df.columns[1:4]
    if len(cols) < 2:
        raise NotALogError(
            f"{path}: a {kind} table needs columns {names[0]},{names[1]}[,{names[2]}]; columns found: {cols}"
        )

    def clean(c: str | None) -> pl.Expr:
        if c is None:
            return pl.lit(None, dtype=pl.String)
        v = pl.col(c).str.strip_chars()
        return pl.when(v != "").then(v)

    df = df.select(
        pl.col("row").cast(pl.Int64),
        id=clean(cols[0]),
        title=clean(cols[1]),
        extra=clean(cols[2] if len(cols) > 2 else None),
    )
    missing_id, missing_title, duplicate = side_reasons(kind)
    return apply_rules(
        df,
        [
            (missing_id, pl.col("id").is_null()),
            (missing_title, pl.col("title").is_null()),
            (duplicate, lambda ok: ~pl.struct(pl.col("id"), ok.alias("__ok")).is_first_distinct()),
        ],
    )


def read_side_tables(cfg: ImportConfig) -> tuple[dict[str, pl.DataFrame], dict[str, SideReport], dict[str, pl.DataFrame]]:
    """(ok rows, reports, rejected rows) of the side tables ``cfg`` names, keyed "items" / "categories"."""
    ok: dict[str, pl.DataFrame] = {}
    reports: dict[str, SideReport] = {}
    rejected: dict[str, pl.DataFrame] = {}
    for kind in SIDE_COLUMNS:
        given = getattr(cfg, kind)
        if not given:
            continue
        path = Path(given)
        ok[kind], rej = read_side(path, kind)
        counts = dict(rej.group_by("reason").len().iter_rows()) if rej.height else {}
        by_reason = {r: counts[r] for r in side_reasons(kind) if r in counts}
        reports[kind] = SideReport(path, ok[kind].height + rej.height, ok[kind].height, by_reason)
        rejected[kind] = rej.rename(dict(zip(("id", "title", "extra"), SIDE_COLUMNS[kind], strict=True)))
    return ok, reports, rejected


def named(expr: pl.Expr, cats: pl.DataFrame | None) -> pl.Expr:
    """Category id → its name from the categories side table; ids it lacks stay as they are."""
    return expr if cats is None else expr.replace(cats["id"], cats["title"])


def apply_side_tables(
    good: pl.DataFrame, side: dict[str, pl.DataFrame], reports: dict[str, SideReport]
) -> tuple[pl.DataFrame, pl.DataFrame | None, pl.DataFrame | None]:
    """(good rows with category names, items side ``original, s_title, s_cat``, parents ``category, parent``);
    counts the log ids each side table names in ``reports[...].matched``."""
    cats = side.get("categories")
    side_items = parents = None
    if "items" in side:
        it = side["items"]
        side_items = it.select(original="id", s_title="title", s_cat=named(pl.col("extra"), cats))
        reports["items"].matched = good["item"].drop_nulls().unique().is_in(it["id"].implode()).sum()
    if cats is not None:
        reports["categories"].matched = good["cat"].drop_nulls().unique().is_in(cats["id"].implode()).sum()
        good = good.with_columns(cat=named(pl.col("cat"), cats))
        parents = (
            cats.filter(pl.col("extra").is_not_null())
            .select(category="title", parent=named(pl.col("extra"), cats))
            .unique("category", keep="first", maintain_order=True)
        )
    return good, side_items, parents
