"""``aigq eval``'s engine: every arm's lists for the same evaluated rows, scored with the same metrics.

Two protocols (``eval.protocol``, ``aigq eval --protocol``) pick the evaluated rows:

* ``days`` (the paper's): ``samples/test.parquet``, one row per test user-day (prompt = profile + behaviours before
  00:00, target = what was searched / clicked that day, cold-start flag).
* ``last-query`` (the standard next-query protocol for real logs): ``samples/last_query.parquet``, the same columns,
  one row per user with ≥ 2 distinct searched queries (prompt = profile + behaviours strictly before the user's last
  distinct query, target = that query; ``aigq.data.holdout``).

Either all rows or a seeded sample of ``eval.max_user_days`` of them. Each arm's lists are also written to
``<eval dir>/lists/<arm>.parquet`` (the arm-lists frame of ``recommend.py``), so other evaluators (the simulated
A/B) can reuse them; the eval dir is ``<run.output_dir>/eval`` for ``days`` and ``<run.output_dir>/eval/last-query``
for ``last-query``, so the protocols' tables, lists and cached rows never mix.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from aigq.config import AIGQConfig
from aigq.data.categories import CategoryMapper
from aigq.evaluation import metrics as M
from aigq.evaluation.recommend import ARMS, arm_lists, check_arm_frame
from aigq.say import Say


@dataclass
class ArmResult:
    arm: str
    status: str  # "ok", "not trained", "not prepared", "failed: …"
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


SPLITS = {"days": "test", "last-query": "last_query"}  # protocol → samples/<split>.parquet


def eval_dir(cfg: AIGQConfig) -> Path:
    """``<run.output_dir>/eval`` (days) or ``<run.output_dir>/eval/last-query`` (last-query)."""
    base = cfg.out_dir() / "eval"
    return base if cfg.eval.protocol == "days" else base / cfg.eval.protocol


def split_path(cfg: AIGQConfig, samples_dir: Path | None = None) -> Path:
    """The evaluated rows' parquet of ``eval.protocol`` in ``samples_dir`` (default: the run's samples)."""
    return Path(samples_dir or cfg.samples_dir()) / f"{SPLITS[cfg.eval.protocol]}.parquet"


def row_noun(cfg: AIGQConfig) -> str:
    """What one evaluated row is, for tables and messages."""
    return "test user-days" if cfg.eval.protocol == "days" else "users' last queries"


def eval_frame(cfg: AIGQConfig) -> pl.DataFrame:
    """The evaluated rows of ``eval.protocol`` (all, or a seeded sample of ``eval.max_user_days``), sorted by
    (user, day)."""
    path = split_path(cfg)
    if not path.is_file():
        what = "" if cfg.eval.protocol == "days" else " (the last-query protocol's rows)"
        raise FileNotFoundError(f"{path}{what} not found: run `aigq build-samples` (or `aigq demo`) first")
    test = pl.read_parquet(path)
    if test.height == 0:
        raise ValueError(f"{path} has no {row_noun(cfg)}")
    n = cfg.eval.max_user_days
    if n and n < test.height:
        test = test.sample(n=n, seed=cfg.eval.seed)
    return test.sort("user_id", "day")


def earlier_results(cfg: AIGQConfig, user_days: int) -> dict[str, ArmResult]:
    """Arms evaluated by an earlier ``aigq eval`` of this output folder and protocol (its own eval dir) on the same
    number of rows (same ``eval.seed`` sample), so ``--arms X`` adds or refreshes rows without re-running every arm."""
    import json

    path = eval_dir(cfg) / "metrics.json"
    if not path.is_file():
        return {}
    out = {}
    for arm, d in json.loads(path.read_text()).items():
        if d.get("status") == "ok" and int(d.get("user_days", -1)) == user_days:
            metrics = {k: float(v) for k, v in d.items() if k not in ("status", "seconds")}
            out[arm] = ArmResult(arm, "ok", metrics, float(d.get("seconds", 0.0)))
    return out


def _status(arm: str, exc: Exception) -> str:
    if isinstance(exc, FileNotFoundError):
        return "not prepared" if arm == "zero-shot" else "not trained" if "policy" in str(exc) else f"missing: {exc}"
    return f"failed: {type(exc).__name__}: {exc}"


def _mapper(cfg: AIGQConfig, say: Say) -> CategoryMapper | None:
    """The world's query → category mapper; None (Cate HR / Unique Cates undefined) when the world has none."""
    try:
        mapper = CategoryMapper.from_world(cfg.world_dir(), cfg.eval.category_threshold, cfg.eval.category_use_items)
    except (FileNotFoundError, ValueError) as exc:
        say(f"no query categories ({exc}): Cate HR and Unique Cates are left undefined")
        return None
    if not mapper.categories:
        say("the world's queries have no categories: Cate HR and Unique Cates are left undefined")
        return None
    return mapper


def evaluate(cfg: AIGQConfig, arms: Sequence[str] = ARMS, say: Say = print) -> tuple[list[ArmResult], pl.DataFrame]:
    """Lists + metrics for every arm; an arm that cannot run gets a status instead of figures (the others go on)."""
    test = eval_frame(cfg)
    e = cfg.eval
    k = e.k
    mapper = _mapper(cfg, say)
    embed = M.Embedder(e.sem_sim)
    say(f"evaluating {len(arms)} arms on {test.height} {row_noun(cfg)} (protocol {e.protocol}, K = {k}, "
        f"Sem. Sim. by {embed.kind}, {e.bootstrap} bootstrap resamples)")
    lists_dir = eval_dir(cfg) / "lists"
    lists_dir.mkdir(parents=True, exist_ok=True)
    results: list[ArmResult] = []
    for arm in arms:
        t0 = time.perf_counter()
        try:
            lists = check_arm_frame(arm_lists(cfg, arm, test, k, say=say), k)
        except (FileNotFoundError, ValueError, RuntimeError, ImportError, OSError) as exc:
            results.append(ArmResult(arm, _status(arm, exc), seconds=time.perf_counter() - t0))
            say(f"{arm}: {results[-1].status}")
            continue
        lists.write_parquet(lists_dir / f"{arm.replace('/', '_')}.parquet")  # arm@folder: one file name
        rows = M.per_row(lists, test, mapper, embed, k, e.novelty_types, e.hr_ks)
        summary = M.summarise(rows, e.bootstrap, e.confidence, e.seed)
        results.append(ArmResult(arm, "ok", summary, time.perf_counter() - t0))
        say(f"{arm}: Cate HR@{k} {summary['cate_hr']:.4f}, Query HR@{k} {summary['query_hr']:.4f}, "
            f"MRR {summary['mrr']:.4f} ({results[-1].seconds:.0f} s)")
    return results, test
