"""``aigq loop --days N``: the daily closed loop (paper Eq. 15, §4, Figure 3), one arm after the other.

For each arm (``daily_rl``: the policy is RL-updated every day; ``frozen``: the starting policy stays deployed, the
CTR ranker is still retrained) and each day T = start … start+N−1::

    day T's logs (loop copy of the world) → CTR retrain φ_T, warm from φ_{T−1} (train_ctr_stage, Eq. 15)
      → [daily_rl] IL-GRPO: loop.grpo_iterations iterations from yesterday's policy against φ_T (run_grpo,
        grpo.init_policy, output <arm>/day-T/grpo)
      → Think index rebuilt from day T's triggers with ``serve.think_policy`` (run_think_index; also loads users'
        behaviours, the fallback tables and the serving clock = T+1 into the arm's store); the Think policy is not
        RL-updated by the loop (IL-GRPO trains the Direct variant); without one the index stays empty
      → hot rollout of the policy and φ_T to the running Serve apps (reconfigure: user_config, no restart)
      → nearline Direct refresh: the deployed DirectGenerator writes a run for each of day T+1's users
      → the deployed HintQ is asked for each of those users → clicks from the hidden model → day T+1 rewritten in
        the loop world (``aigq.loop``) → the figures of day T+1 (PVR share, CTR, UCTR) to MLflow (step = T+1)

**Which days** ([GAP], ours): the loop replays days of the simulated world: start = ``loop.start_day`` or the last
train day (world.days − samples.test_days), moved earlier when start + N would pass the world's last day (the
hidden model covers the world's days only), so ``--days 3`` on the 32-day tiny world runs T = 29, 30, 31 and
simulates days 30–32 (day 30 is also the last IL-SFT / IL-GRPO training day: noted in the output). A longer
loop needs a world simulated with more days (``world.days``) and a pipeline trained on its first days.

**The first CTR model**: the source run's φ_start is used when it exists (``<run>/ctr/day-<start>``), else
φ_{start−1} (retrained warm on day start), else one cold start on ``loop.ctr_cold_window_days`` (default
``ctr.cold_window_days``); both arms start from it.

``loop.serve=false`` replaces Serve by the same HintQ code in-process (:class:`LocalDeployment`: HintQCore and a
PolicyHolder on the arm's store); everything else is identical. Ray: ``learner.ray_address`` / $RAY_ADDRESS, else
a local Ray sized for IL-GRPO's pools plus the Serve replicas.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from aigq.config import AIGQConfig
from aigq.loop.deploy import LocalDeployment, ServeDeployment
from aigq.ray_boot import ensure_ray
from aigq.say import Say
from aigq.tracking import Tracker


def loop_dir(cfg: AIGQConfig) -> Path:
    return cfg.loop_dir()


def plan_days(n_days: int, test_days: int, days: int, start: int | None) -> tuple[int, str]:
    """(first day T, a note) for ``days`` iterations on a world of ``n_days`` days (module docstring)."""
    if days < 1:
        raise ValueError("--days must be ≥ 1")
    if days >= n_days:
        raise ValueError(f"--days {days} needs a world of more than {days} days (this one has {n_days})")
    last_train = n_days - test_days
    if start is not None:
        if not 1 <= start or start + days > n_days:
            raise ValueError(f"loop.start_day={start} with --days {days} simulates days {start + 1}..{start + days}, "
                             f"but the world has days 1..{n_days}: lower one of them or simulate a longer world")
        return start, ""
    t = min(last_train, n_days - days)
    note = "" if t == last_train else (f"the world has {n_days} days: the loop starts at day {t}, so simulated days "
                                       f"{t + 1}..{last_train} are also training days of the policy")
    return t, note


def start_policy(cfg: AIGQConfig) -> Path:
    if cfg.loop.init_policy:
        p = Path(cfg.loop.init_policy)
    else:
        p = cfg.newest_policy()
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"no start policy at {p}: run `aigq demo` (or `aigq sft` / `aigq grpo`) first, or set "
                                "loop.init_policy")
    return p


@dataclass
class Arm:
    name: str
    dir: Path
    policy: Path
    tables: dict[str, pl.DataFrame]
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def world(self) -> Path:
        return self.dir / "world"

    @property
    def ctr_dir(self) -> Path:
        return self.dir / "ctr"

    @property
    def store(self) -> Path:
        return self.dir / "store.db"

    def cfg(self, cfg: AIGQConfig) -> AIGQConfig:
        """The run's config pointed at this arm's folders (CTR models, store)."""
        return cfg.model_copy(update={
            "ctr": cfg.ctr.model_copy(update={"dir": str(self.ctr_dir)}),
            "serve": cfg.serve.model_copy(update={"sqlite_path": str(self.store.resolve()), "store": "sqlite",
                                                  "think_users_per_day": cfg.loop.think_users, "clock": "world",
                                                  "direct_samples": _direct_samples(cfg)})})

    def overrides(self, cfg: AIGQConfig) -> list[str]:
        """The same, as overrides for the Serve applications' args."""
        return [f"ctr.dir={self.ctr_dir.resolve()}", f"serve.sqlite_path={self.store.resolve()}",
                "serve.store=sqlite", "serve.clock=world", f"serve.direct_samples={_direct_samples(cfg)}"]


def _direct_samples(cfg: AIGQConfig) -> int:
    return cfg.loop_resolved().direct_samples


def bootstrap_ctr(cfg: AIGQConfig, tracker: Tracker, source_world: Path, start: int, root: Path,
                  say: Say) -> tuple[Path, bool]:
    """φ at the start (module docstring) → (folder of φ_start or φ_{start−1}, whether it is φ_start)."""
    from aigq.pipeline.ctr import train_ctr_stage
    from aigq.rewards.ctr_train import model_dir

    src, own = cfg.ctr_root(), model_dir(root / "ctr", start)
    if (own / "model.json").is_file():  # an earlier loop's cold start in this folder, same world
        say(f"CTR model at the start: {own} (an earlier loop's cold start)")
        return own, True
    for day, is_start in ((start, True), (start - 1, False)):
        if (model_dir(src, day) / "model.json").is_file():
            say(f"CTR model at the start: {model_dir(src, day)}")
            return model_dir(src, day), is_start
    lp = cfg.loop_resolved()
    window = lp.ctr_cold_window_days
    say(f"no CTR model for day {start} or {start - 1} under {src}: cold start on the last {window} days")
    short = cfg.ctr.model_copy(update={"dir": str(root / "ctr"), "cold_window_days": window,
                                       "pretrain_pairs": lp.ctr_pretrain_pairs})
    out = train_ctr_stage(cfg.model_copy(update={"ctr": short}), tracker, start, source_world, cold=True, oracle=False)
    return Path(out["folder"]), True


def grpo_day(cfg: AIGQConfig, arm: Arm, day: int, samples: Path, tracker: Tracker, say: Say) -> Path:
    """A few IL-GRPO iterations from the arm's current policy against its newest CTR model (φ_day)."""
    from actors.grpo_driver import run_grpo

    lp = cfg.loop_resolved()
    n = lp.grpo_iterations
    g = cfg.grpo.model_copy(update={"init_policy": str(arm.policy), "iterations": n, "resume": None,
                                    "prompts_per_iteration": lp.grpo_prompts,
                                    "eval_every": n, "checkpoint_every": n, "keep_checkpoints": 1})
    c = arm.cfg(cfg).model_copy(update={
        "grpo": g, "run": cfg.run.model_copy(update={"output_dir": str(arm.dir / f"day-{day:03d}")}),
        "rollout": cfg.rollout.model_copy(update={"engine": lp.rollout_engine}),
        "learner": cfg.learner.model_copy(update={"num_workers": lp.grpo_learner_workers}),
        "rewards": cfg.rewards.model_copy(update={"num_actors": lp.grpo_reward_actors})})
    fig = run_grpo(c, tracker, samples, say=lambda m: say(f"    {m}"))
    return Path(fig["policy"])


def run_loop(cfg: AIGQConfig, tracker: Tracker, days: int, config_path: Path | None = None,
             overrides: list[str] | None = None, say: Say | None = None,
             on_day: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The whole loop (module docstring); returns per-day rows, the plan and seconds."""
    from aigq.data.categories import CategoryMapper
    from aigq.data.hidden import HiddenModel
    from aigq.data.validate import validate_world
    from aigq.evaluation.ab import QueryResolver

    say = say or (lambda _m: None)
    t0 = time.perf_counter()
    # The loop is the online system: each day's models learn from all of that day's logs. Holding out each user's
    # last query is an offline protocol (aigq eval --protocol last-query), not a rule of daily training.
    cfg = cfg.model_copy(update={"samples": cfg.samples.model_copy(update={"last_query_holdout": False})})
    source = cfg.world_dir()
    hidden = HiddenModel(source)  # the day simulation's click model (simulated worlds only)
    v = validate_world(source, write_quarantine=False)
    start_date, n_days = str(v.meta["start_date"])[:10], int(v.meta["days"])
    start, note = plan_days(n_days, cfg.samples.test_days, days, cfg.loop.start_day)
    if note:
        say(f"[yellow]note:[/yellow] {note}")
    if cfg.loop.think and not cfg.serve.think_policy:
        say("[yellow]note:[/yellow] no serve.think_policy: the daily Think index stays empty (a Direct policy writes "
            "no T_k => Q_k groups); set serve.think_policy to a Think-trained policy for the think channel")
    policy0 = start_policy(cfg)
    samples = Path(cfg.loop_resolved().samples_dir)
    if "daily_rl" in cfg.loop.arms and not (samples / f"{cfg.grpo.variant}.parquet").is_file():
        raise FileNotFoundError(f"no {cfg.grpo.variant} samples in {samples}: run `aigq build-samples` first")
    root = loop_dir(cfg)
    root.mkdir(parents=True, exist_ok=True)
    resolver = QueryResolver.for_hidden(hidden, CategoryMapper.from_world(source, cfg.eval.category_threshold).map)
    plan = {"start_day": start, "days": days, "simulated_days": f"{start + 1}..{start + days}",
            "start_policy": str(policy0), "arms": ",".join(cfg.loop.arms), "serve": cfg.loop.serve}
    say(f"loop: days T = {start}..{start + days - 1} → simulated days {plan['simulated_days']}, arms "
        f"{plan['arms']}, start policy {policy0}, {'Ray Serve' if cfg.loop.serve else 'in-process HintQ'}")
    with tracker.run("loop", cfg, tags={"aigq.pipeline": "loop"}):
        tracker.params({f"loop_run.{k}": v for k, v in plan.items()})
        ctr0, ctr0_is_start = bootstrap_ctr(cfg, tracker, source, start, root, say)
        ensure_ray(cfg, "loop") if (cfg.loop.serve or cfg.loop.think or "daily_rl" in cfg.loop.arms) else None
        arms = []
        for name in cfg.loop.arms:
            arm = _new_arm(name, root, policy0, v.tables, v.meta, ctr0, start, ctr0_is_start)
            dep = (ServeDeployment(arm.cfg(cfg), config_path, [*(overrides or []), *arm.overrides(cfg)])
                   if cfg.loop.serve else LocalDeployment(arm.cfg(cfg)))
            try:
                with tracker.run(f"loop-{name}", cfg, tags={"aigq.loop.arm": name}):
                    for day in range(start, start + days):
                        row = _day(cfg, arm, dep, day, start, start_date, samples, hidden, resolver, tracker,
                                   skip_ctr=(day == start and ctr0_is_start), say=say)
                        arm.rows.append(row)
                        tracker.metrics({k: v for k, v in row.items() if isinstance(v, int | float)
                                         and k not in ("day", "T")}, step=row["day"])
                        if on_day:
                            on_day(row)
            finally:
                dep.close()
            arms.append(arm)
        rows = [r for a in arms for r in a.rows]
        seconds = time.perf_counter() - t0
        tracker.metrics({"loop.seconds": seconds})
        tracker.dict({"plan": plan, "rows": rows}, "loop.json")
        (root / "loop.json").write_text(json.dumps({"plan": plan, "rows": rows, "seconds": seconds}, indent=1))
    return {"plan": plan, "rows": rows, "seconds": seconds, "note": note, "dir": str(root)}


def _new_arm(name: str, root: Path, policy0: Path, tables: dict, meta: dict, ctr0: Path, start: int,
             ctr0_is_start: bool) -> Arm:
    from aigq.loop.days import copy_world
    from aigq.rewards.ctr_train import model_dir

    d = root / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    arm = Arm(name, d, policy0, dict(tables))
    copy_world(tables, meta, arm.world)
    shutil.copytree(ctr0, model_dir(arm.ctr_dir, start if ctr0_is_start else start - 1))
    return arm


def _day(cfg: AIGQConfig, arm: Arm, dep: Any, day: int, start: int, start_date: str, samples: Path, hidden: Any,
         resolver: Any, tracker: Tracker, skip_ctr: bool, say: Say) -> dict[str, Any]:
    """One iteration T = ``day`` of one arm; returns day T+1's figures."""
    from aigq.loop.days import apply_day, day_metrics, day_requests, simulate_day, write_tables
    from aigq.pipeline.ctr import train_ctr_stage
    from aigq.rewards.ctr_train import model_dir
    from serve_app.think_index import run_think_index

    acfg, t, lap = arm.cfg(cfg), {}, time.perf_counter()
    say(f"[bold]{arm.name}[/bold] day {day}: CTR retrain → {'IL-GRPO → ' if arm.name == 'daily_rl' else ''}"
        f"Think index → rollout → simulate day {day + 1}")
    if not skip_ctr:
        train_ctr_stage(acfg, tracker, day, arm.world, oracle=False)
    phi = model_dir(arm.ctr_dir, day)
    t["seconds.ctr"], lap = time.perf_counter() - lap, time.perf_counter()
    if arm.name == "daily_rl":
        arm.policy = grpo_day(cfg, arm, day, samples, tracker, say)
    t["seconds.grpo"], lap = time.perf_counter() - lap, time.perf_counter()
    think_policy = Path(cfg.serve.think_policy) if cfg.serve.think_policy and cfg.loop.think else None
    idx = run_think_index(acfg, day, dep.records, think_policy, arm.world, phi, sync_users=True)
    t["seconds.think"], lap = time.perf_counter() - lap, time.perf_counter()
    dep.rollout(arm.policy, think_policy or arm.policy, phi)
    t["seconds.rollout"], lap = time.perf_counter() - lap, time.perf_counter()
    req = day_requests(arm.tables, start_date, day + 1, cfg.loop.users_per_day)
    users = req["user_id"].unique().sort().to_list()
    refreshed = dep.refresh_direct(users)
    answers = dep.answer(users)
    t["seconds.serve"], lap = time.perf_counter() - lap, time.perf_counter()
    sim = simulate_day(arm.tables, start_date, day + 1, answers, hidden, resolver, cfg.loop.seed,
                       cfg.loop.users_per_day)
    arm.tables = apply_day(arm.tables, start_date, sim)
    write_tables(arm.world, arm.tables)
    t["seconds.simulate"] = time.perf_counter() - lap
    m = day_metrics(sim)
    row = {"arm": arm.name, "T": day, "day": day + 1, **m, "direct_runs": refreshed,
           "think_triggers": idx.get("triggers", 0), "policy": str(arm.policy), "ctr_model": str(phi), **t}
    say(f"  day {day + 1}: PVR {m['pvr']:.3f}, CTR {m['ctr']:.4f}, UCTR {m.get('uctr', float('nan')):.3f} over "
        f"{int(m['impressions'])} impressions; seconds " + ", ".join(f"{k[8:]} {v:.0f}" for k, v in t.items()))
    return row
