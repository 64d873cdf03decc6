"""``aigq build-samples`` over user shards on Ray (``samples.ray_shards`` = N > 0; issue 21 item 4).

The same polars code as the single-process build (``aigq.data.samples``, ``aigq.data.related``), cut by users:

1. **Global state, once, in the driver**: the samples config the folder records (``label_source=auto`` resolved on
   the whole world's exposures: a shard alone may have none; ``samples.recorded_config``) and the catalogue tables
   (items, queries, categories: one object in the object store that every task reads).
2. **Per shard, N tasks**: the tables cut into N contiguous user-id ranges (``samples.user_shards``); each task builds
   its users' Direct / Think / test / last-query samples (``samples.build_part``, memory-bounded by the same
   sub-shards and chunks as the single-process build) and returns one parquet part per split as bytes — no
   filesystem shared with the driver is assumed.
3. **Related queries** (``samples.related_queries`` > 0): the co-click evidence counts across users, so the driver
   computes it once from every shard's Think part and the whole log's search transitions
   (``related.related_evidence``) and puts it in the object store; one task per (shard, split) part adds the
   related-queries line to its prompts (``related.augment_frame``: row by row) and returns the part and its counts;
   the statistics are the summed counts' shares (``related.related_stats``) and the driver writes the serving table.
4. **Combine**: the parts are appended split by split, shard after shard, to the samples folder
   (``samples.write_parts``). Every split is sorted by user first and the shards are ascending user ranges, so the
   folder holds the single-process build's rows in its order, and ``meta.json`` and the statistics are computed from
   the combined files as there.

Ray is started or joined only through ``aigq.ray_boot.ensure_ray(cfg, "train")``. Each task asks for one CPU and
its worker runs polars on one thread (``POLARS_MAX_THREADS=1``), so N tasks use N cores, not N × all of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import ray

from aigq.config import AIGQConfig, SamplesConfig
from aigq.data import prompt as P
from aigq.data import related as R
from aigq.data import samples as S
from aigq.data.sample_io import SPLITS
from aigq.say import Say

_ONE_CORE = {"env_vars": {"POLARS_MAX_THREADS": "1"}}  # polars sizes its pool at import, from this


@ray.remote(num_cpus=1, runtime_env=_ONE_CORE)
def build_shard(users: dict[str, pl.DataFrame], catalogue: dict[str, pl.DataFrame], start_date: str, days: int,
                cfg: SamplesConfig, llm_gen: S.LLMGen | None, chunk_size: int, shard_users: int,
                count_tokens: P.TokenCounter | None) -> tuple[bytes, ...]:
    """One user shard's parts, in ``SPLITS`` order (``num_returns=len(SPLITS)``: one object per split)."""
    parts = S.build_part({**catalogue, **users}, start_date, days, cfg, llm_gen, chunk_size, shard_users,
                         count_tokens)
    return tuple(parts[name] for name in SPLITS)


@ray.remote(num_cpus=1, runtime_env=_ONE_CORE)
def augment_part(part: bytes, split: str, ev: R.Evidence, cfg: SamplesConfig, first_test: int,
                 count_tokens: P.TokenCounter | None) -> tuple[bytes, dict[str, int]]:
    """One shard's part of ``split`` with its related-queries lines, and its counts (``num_returns=2``)."""
    df, counts = R.augment_frame(S.read_part(part), split, ev, cfg, first_test, count_tokens)
    return S.part_bytes([df]), counts


def _split_tables(shard: dict[str, pl.DataFrame | None]) -> dict[str, pl.DataFrame]:
    return {name: df for name, df in shard.items() if df is not None and "user_id" in df.columns}


def build_samples_on_ray(cfg: AIGQConfig, tables: dict[str, Any], start_date: str, days: int, out_dir: Path,
                         count_tokens: P.TokenCounter | None = None, llm_gen: S.LLMGen | None = None,
                         chunk_size: int = 50_000, shard_users: int = 250_000,
                         say: Say | None = None) -> dict[str, float]:
    """What ``build_samples_to`` (and, with ``samples.related_queries``, ``related.augment_samples``) write into
    ``out_dir``, built by ``cfg.samples.ray_shards`` Ray tasks over user shards (module docstring). Returns the
    same statistics: the folder's, then the related-queries shares."""
    from aigq.ray_boot import ensure_ray

    ensure_ray(cfg, "train", say=say)
    n = max(1, cfg.samples.ray_shards)
    scfg = S.recorded_config(tables, cfg.samples)
    catalogue = ray.put({name: df for name, df in tables.items()
                         if df is not None and "user_id" not in df.columns})
    shards = [build_shard.options(num_returns=len(SPLITS)).remote(
        _split_tables(shard), catalogue, start_date, days, scfg, llm_gen, chunk_size, shard_users, count_tokens)
        for shard in S.user_shards(tables, S.shard_size(tables, n))]
    del catalogue
    related: dict[str, float] = {}
    if scfg.related_queries:
        first_test = days - scfg.test_days + 1
        think = pl.concat([S.read_part(ray.get(refs[SPLITS.index("think")])) for refs in shards])
        ev = R.related_evidence(think, tables["events"], start_date, days, scfg)
        del think
        ev_ref = ray.put(ev)
        augmented = [[augment_part.options(num_returns=2).remote(ref, name, ev_ref, scfg, first_test, count_tokens)
                      for name, ref in zip(SPLITS, refs, strict=True)] for refs in shards]
        shards = [[part for part, _ in refs] for refs in augmented]
        counts = {name: {"rows": 0, "covered": 0, "hit": 0} for name in SPLITS}
        for refs in augmented:
            for name, (_, c) in zip(SPLITS, refs, strict=True):
                for k, v in ray.get(c).items():
                    counts[name][k] += v
        related = R.related_stats(counts)

    def parts() -> Iterator[tuple[str, bytes]]:  # split by split, shard after shard; one part in memory at a time
        for i, name in enumerate(SPLITS):
            for refs in shards:
                yield name, ray.get(refs[i])

    stats = S.write_parts(Path(out_dir), scfg, parts())
    if scfg.related_queries:
        R.serving_table(ev, first_test).write_parquet(Path(out_dir) / R.RELATED_FILE)
    stats.update(related)
    return stats
