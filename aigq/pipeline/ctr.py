"""The daily CTR reward model stage (paper Eq. 15): ``aigq train-ctr``, the demo, the daily loop and the Table-1
suite train φ_T through :func:`train_ctr_stage`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from aigq.config import AIGQConfig
from aigq.tracking import Tracker


def train_ctr_stage(cfg: AIGQConfig, tracker: Tracker, day: int, world: Path | None = None, cold: bool = False,
                    oracle: bool = True, log: Any = None) -> dict[str, Any]:
    """Validate the world, resolve the objective (``ctr.objective``: auto → clicks with HintQ exposures, else
    next_search) and the train cuts (the sample split's first test day and held-out last queries,
    ``ctr_train.ctr_cuts``), train φ_day (warm from day-1's model when present), evaluate, save, log to MLflow; then,
    on a simulated world (with exposures on the held-out days) and with ``oracle``, run the test-only hidden-model
    evaluator (separate module)."""
    from aigq.data.hidden import hidden_dir
    from aigq.data.validate import validate_world
    from aigq.rewards.ctr_train import ctr_cuts, resolve_objective, train_day

    world = Path(world or cfg.world_dir())
    validated = validate_world(world, write_quarantine=False)
    start, n_days = validated.meta["start_date"], int(validated.meta["days"])
    if not 1 <= day <= n_days:
        raise ValueError(f"day {day} is outside the world's days 1..{n_days}")
    objective = resolve_objective(cfg.ctr, validated.tables)
    ctr_cfg = cfg.ctr.model_copy(update={"objective": objective})
    cuts = ctr_cuts(validated.tables, start, n_days, day, cfg.samples)
    with tracker.run("train-ctr", cfg, tags={"aigq.world": str(world), "aigq.ctr.day": str(day),
                                             "aigq.ctr.objective": objective}):
        res = train_day(validated.tables, start, n_days, day, ctr_cfg, cfg.ctr_root(), cold=cold,
                        log=lambda ep, loss: (tracker.metrics({"train.loss": loss}, step=ep), log and log(ep, loss)),
                        cuts=cuts, samples=cfg.samples)
        metrics = dict(res.metrics)
        params = {"ctr_run.objective": objective,
                  "ctr_run.train_days": f"{res.train_days[0]}..{res.train_days[-1]}",
                  "ctr_run.eval_days": ",".join(map(str, res.eval_days)) or "none",
                  "ctr_run.warm_start_from": str(res.warm_start) if res.warm_start else "none",
                  "ctr_run.last_query_holdout": str(cfg.samples.last_query_holdout)}
        if objective == "next_search":
            params.update({"ctr_run.neg_popular": str(ctr_cfg.neg_popular), "ctr_run.neg_hard": str(ctr_cfg.neg_hard),
                           "ctr_run.success_rate": str(ctr_cfg.success_rate)})
        tracker.params(params)
        if oracle and (hidden_dir(world) / "click_model.json").is_file() and res.eval_days:  # {} without exposures
            # TEST-ONLY: the simulator's hidden click model, read by the separate evaluator, after training.
            from aigq.evaluation.ctr_oracle import oracle_spearman
            from aigq.rewards.ctr import CTRScorer

            scorer = CTRScorer.load(res.folder)
            metrics.update(oracle_spearman(world, validated.tables, start, res.eval_days, scorer, scorer.cfg))
        tracker.metrics({k: v for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)})
        tracker.artifact(res.folder / "model.json", "ctr")
        for side in ("success.parquet", "categories.parquet", "category_parents.parquet"):  # what CTRScorer.load reads
            if (res.folder / side).is_file():
                tracker.artifact(res.folder / side, "ctr")
        if cfg.ctr.log_model:  # then runs:/<run id>/ctr is a whole model (serve.ctr_model can name it)
            tracker.artifact(res.folder / "model.safetensors", "ctr")
    return {"folder": str(res.folder), "objective": objective, "train_days": res.train_days,
            "eval_days": res.eval_days, "warm_start": str(res.warm_start) if res.warm_start else None, **metrics}


def last_train_day(cfg: AIGQConfig) -> int:
    """The world's last training day T (its days minus ``samples.test_days``): the demo's and HintQ's CTR day."""
    from aigq.data.schema import read_meta

    return int(read_meta(cfg.world_dir())["days"]) - cfg.samples.test_days
