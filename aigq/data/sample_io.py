"""Sample files: streaming parquet writer, split statistics (computed lazily, so a 10M-event build never holds its
output in memory) and the samples folder's ``meta.json``.

A samples folder holds ``direct.parquet``, ``think.parquet``, ``test.parquet``, ``last_query.parquet`` (schema ``OUTPUT_SCHEMA`` of
``aigq.data.samples``; parquet key-value metadata ``aigq.special_tokens`` and ``aigq.samples_config``) and
``meta.json`` (special tokens, config, row counts, statistics, separators).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from aigq.config import SamplesConfig
from aigq.data import prompt as P

SPLITS = ("direct", "think", "test", "last_query")
LABEL_SOURCES = ("click", "search_click", "search", "rank", "gen")


def split_stats(name: str, lf: pl.LazyFrame) -> dict[str, float]:
    """``{name}.samples``, ``.users``, ``.mean_target_len``, ``.mean_behaviours``, ``.cold_start_share``,
    ``.trigger_coverage`` (share of label queries with a non-empty trigger set) and ``.source_share.{source}``
    (share of label queries from each source). Only ``.samples`` when the split is empty."""
    meta = pl.col("metadata").struct
    base = lf.select(
        samples=pl.len(), users=pl.col("user_id").n_unique(), mean_target_len=pl.col("target").list.len().mean(),
        mean_behaviours=meta.field("n_behaviours").mean(),
        cold_start_share=meta.field("cold_start").cast(pl.Float64).mean(),
    ).collect(engine="streaming").row(0, named=True)
    out = {f"{name}.samples": float(base["samples"])}
    if not base["samples"]:
        return out
    out.update({f"{name}.{k}": float(v or 0.0) for k, v in base.items() if k != "samples"})
    trig = pl.col("triggers").explode().drop_nulls()
    src = meta.field("label_sources").explode().drop_nulls()
    shares = lf.select(
        trigger_coverage=(trig.list.len() > 0).cast(pl.Float64).mean(),
        **{s: (src == s).cast(pl.Float64).mean() for s in LABEL_SOURCES},
    ).collect(engine="streaming").row(0, named=True)
    out[f"{name}.trigger_coverage"] = float(shares.pop("trigger_coverage") or 0.0)
    out.update({f"{name}.source_share.{s}": float(v or 0.0) for s, v in shares.items()})
    return out


def frame_stats(frames: dict[str, pl.DataFrame]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, df in frames.items():
        out.update(split_stats(name, df.lazy()))
    return out


def folder_stats(out_dir: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in SPLITS:
        out.update(split_stats(name, pl.scan_parquet(Path(out_dir) / f"{name}.parquet")))
    return out


def _kv(special_tokens: list[str], cfg: SamplesConfig) -> dict[str, str]:
    return {"aigq.special_tokens": json.dumps(special_tokens), "aigq.samples_config": cfg.model_dump_json()}


class SampleWriter:
    """Appends sample chunks to ``{split}.parquet`` as row groups, so memory holds one chunk at a time. Closing
    writes an (empty) file for every split that got no rows, then ``meta.json`` with statistics read back lazily."""

    def __init__(self, out_dir: Path, cfg: SamplesConfig, special_tokens: list[str], schema: dict[str, pl.DataType]):
        self.out_dir, self.cfg, self.special_tokens = Path(out_dir), cfg, special_tokens
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._polars_schema = schema
        self._schema = pl.DataFrame(schema=schema).to_arrow().schema.with_metadata(_kv(special_tokens, cfg))
        self._writers: dict[str, pq.ParquetWriter] = {}
        self.rows = dict.fromkeys(SPLITS, 0)

    def write(self, split: str, df: pl.DataFrame) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if df.height == 0:
            return
        if split not in self._writers:
            self._writers[split] = pq.ParquetWriter(self.out_dir / f"{split}.parquet", self._schema)
        table = df.select(list(self._polars_schema)).to_arrow().cast(self._schema.remove_metadata())
        self._writers[split].write_table(pa.Table.from_batches(table.to_batches(), schema=self._schema))
        self.rows[split] += df.height

    def close(self) -> dict[str, float]:
        for split in SPLITS:
            writer = self._writers.pop(split, None)
            if writer is not None:
                writer.close()
            else:
                pq.write_table(self._schema.empty_table(), self.out_dir / f"{split}.parquet")
        stats = folder_stats(self.out_dir)
        write_meta(self.out_dir, self.special_tokens, self.cfg, self.rows, stats)
        return stats

    def __enter__(self) -> SampleWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:  # leave no half-written file that looks complete
            for w in self._writers.values():
                w.close()
            self._writers.clear()


def write_meta(out_dir: Path, special_tokens: list[str], cfg: SamplesConfig, rows: dict[str, int],
               stats: dict[str, float]) -> None:
    meta = {"special_tokens": special_tokens, "samples_config": cfg.model_dump(), "rows": rows, "stats": stats,
            "query_sep": P.QUERY_SEP, "behaviour_sep": P.BEHAVIOUR_SEP}
    (Path(out_dir) / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
