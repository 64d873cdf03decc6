"""``aigq eval``'s engine: every arm's lists for the same test user-days, scored with the same metrics.

The evaluated user-days are ``samples/test.parquet`` (one row per test user-day: prompt before 00:00, target = what
was searched / clicked that day, cold-start flag), or a seeded sample of ``eval.max_user_days`` of them. Each arm's
lists are also written to ``<run.output_dir>/eval/lists/<arm>.parquet`` (the arm-lists frame of
``recommend.py``), so other evaluators (the simulated A/B) can reuse them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from aigq.config import AIGQConfig
from aigq.evaluation import metrics as M
from aigq.evaluation.categories import CategoryMapper
from aigq.evaluation.recommend import ARMS, arm_lists, check_arm_frame

Say = Callable[[str], None]


@dataclass
class ArmResult:
    arm: str
    status: str  # "ok", "not trained", "not prepared", "failed: …"
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def eval_dir(cfg: AIGQConfig) -> Path:
    return Path(cfg.run.output_dir) / "eval"


def eval_frame(cfg: AIGQConfig) -> pl.DataFrame:
    """The evaluated test user-days (all, or a seeded sample of ``eval.max_user_days``), sorted by (user, day)."""
    path = cfg.samples_dir() / "test.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `aigq build-samples` (or `aigq demo`) first")
    test = pl.read_parquet(path)
    if test.height == 0:
        raise ValueError(f"{path} has no test user-days")
    n = cfg.eval.max_user_days
    if n and n < test.height:
        test = test.sample(n=n, seed=cfg.eval.seed)
    return test.sort("user_id", "day")


def earlier_results(cfg: AIGQConfig, user_days: int) -> dict[str, ArmResult]:
    """Arms evaluated by an earlier ``aigq eval`` of this output folder on the same number of user-days (same
    ``eval.seed`` sample), so ``--arms X`` adds or refreshes rows without re-running every arm."""
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


def evaluate(cfg: AIGQConfig, arms: Sequence[str] = ARMS, say: Say = print) -> tuple[list[ArmResult], pl.DataFrame]:
    """Lists + metrics for every arm; an arm that cannot run gets a status instead of figures (the others go on)."""
    test = eval_frame(cfg)
    k = cfg.eval.k
    mapper = CategoryMapper.from_world(cfg.world_dir(), cfg.eval.category_threshold, cfg.eval.category_use_items)
    embed = M.Embedder(cfg.eval.sem_sim)
    say(f"evaluating {len(arms)} arms on {test.height} test user-days (K = {k}, Sem. Sim. by {embed.kind})")
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
        summary = M.summarise(M.per_row(lists, test, mapper, embed, k, cfg.eval.novelty_types))
        results.append(ArmResult(arm, "ok", summary, time.perf_counter() - t0))
        say(f"{arm}: Cate HR@{k} {summary['cate_hr']:.4f}, Query HR@{k} {summary['query_hr']:.4f} "
            f"({results[-1].seconds:.0f} s)")
    return results, test
