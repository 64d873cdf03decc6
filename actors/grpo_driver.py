"""The IL-GRPO driver (``aigq grpo``), paper §3.5: one loop over Ray actors, readable top to bottom.

    for each iteration:  sample prompts → generate (RolloutPool, G lists each, on-policy; or, with
                           grpo.one_step_off_policy, made one update earlier while the previous iteration trained)
                         → score (RewardPool: CTR + rule rewards, every component by name)
                         → advantages + difficulty filter (pure, ``learner.rl_batch``)
                         → update (LearnerGroup, DDP) → weight sync (learner → rollout workers, new version)
                         → log / evaluate / checkpoint

Starts from the IL-SFT policy (``outputs/<run>/sft/policy``) or ``grpo.init_policy``; rewards use the newest CTR
model under the CTR folder (``aigq train-ctr``). ``grpo.resume=latest`` continues from the last checkpoint (weights,
optimizer, RNG, iteration) after a driver crash; the prompts of iteration i depend only on (seed, i), so a resumed
run samples the same batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aigq.config import AIGQConfig, dump_yaml
from aigq.say import Say
from aigq.tracking import Tracker

if TYPE_CHECKING:
    import polars as pl

    from aigq.rewards.compose import RewardGroup
    from rollout.engine import Sampling

OnDispatch = Callable[[str, "Actors", int, int], None]  # (pool: "rollout" | "reward", actors, actor_index, batch)


def grpo_dir(cfg: AIGQConfig) -> Path:
    return cfg.grpo_dir()


@dataclass(frozen=True)
class GRPOInputs:
    """What a run starts from, checked before any actor starts (``_inputs``)."""

    policy: Path  # start policy folder: the SFT policy, or the resumed checkpoint's model folder
    ctr: Path  # newest CTR model folder (rewards)
    resume: Path | None  # checkpoint to continue from; None: a fresh run
    train: pl.DataFrame  # sample rows whose prompts each iteration draws from
    held_out: pl.DataFrame  # the first grpo.eval_prompts held-out rows, for the greedy evaluation


def _inputs(cfg: AIGQConfig, samples_dir: Path) -> GRPOInputs:
    """Fail fast on anything missing: start policy, CTR model, samples."""
    from learner import data as D
    from learner.checkpoint import latest_checkpoint, read_checkpoint

    g = cfg.grpo
    if g.resume == "latest":  # none yet → a fresh run (so a re-submitted job resumes or starts, either way)
        resume = latest_checkpoint(grpo_dir(cfg) / "checkpoints")
    else:
        resume = read_checkpoint(Path(g.resume)).path if g.resume else None
    policy = cfg.grpo_init_policy()
    if resume is None and not (policy / "config.json").is_file():
        raise FileNotFoundError(f"no start policy at {policy}: run `aigq sft` first or set grpo.init_policy")
    days = sorted(cfg.ctr_root().glob("day-*")) if cfg.ctr_root().is_dir() else []
    if not days:
        raise FileNotFoundError(f"no CTR model under {cfg.ctr_root()}: run `aigq train-ctr --day T` first")
    df = D.read_samples(Path(samples_dir) / f"{g.variant}.parquet")
    train, held = D.split_eval(df, cfg.sft.eval_days)
    if train.height == 0 or held.height == 0:
        raise ValueError(f"{samples_dir}: need train and held-out {g.variant} samples (got {train.height} and "
                         f"{held.height}; held-out = the last sft.eval_days={cfg.sft.eval_days} train days)")
    # a LoRA / frozen-layer checkpoint's model_dir is its base folder (the learner loads its tensors on top)
    return GRPOInputs(policy=read_checkpoint(resume).model_dir if resume else policy, ctr=days[-1], resume=resume,
                      train=train, held_out=held.head(g.eval_prompts))


def check_cluster(cfg: AIGQConfig) -> None:
    """Fail fast (instead of waiting forever for actors that cannot be placed) when the cluster is too small."""
    import ray

    have, need = ray.cluster_resources().get("CPU", 0), cfg.pipeline_cpus()
    if need > have:
        raise ValueError(
            f"IL-GRPO needs {need:g} CPUs (learner {cfg.learner.num_workers}×{cfg.learner.cpus_per_worker} + rollout "
            f"{cfg.rollout.num_workers}×{cfg.rollout.cpus_per_worker:g} + rewards {cfg.rewards.num_actors}×"
            f"{cfg.rewards.num_cpus_per_actor:g}) but the Ray cluster offers {have:g}; lower those counts")


def _reward_groups(frame: pl.DataFrame, rollouts, variant: str) -> list[RewardGroup]:
    """One RewardGroup per prompt row of ``frame``: the texts of its G rollouts, with the row's reference lists."""
    from aigq.rewards.compose import RewardGroup

    return [RewardGroup(group_id=sid, outputs=[r.text for r in rs], reference=list(ref), prompt=p,
                        ref_triggers=[list(t) for t in trig] if variant == "think" else None, variant=variant)
            for sid, p, ref, trig, rs in zip(frame["sample_id"], frame["prompt"], frame["target"], frame["triggers"],
                                             rollouts, strict=True)]


def _mean(group_rewards, key: str) -> float:
    vals = [r.summary()[key] for r in group_rewards]
    return float(np.mean(vals)) if vals else 0.0


@dataclass
class Actors:
    learner: Any  # LearnerGroup (DDP, GRPO mode)
    rollout: Any  # RolloutPool
    rewards: Any  # RewardPool
    sync: Any  # WeightSync: learner → rollout workers (blob or NCCL route)

    def shutdown(self) -> None:
        for pool in (self.rollout, self.rewards, self.learner):
            pool.shutdown()


def start_actors(cfg: AIGQConfig, inputs: GRPOInputs, pad_id: int, say: Say) -> Actors:
    from actors.learner import LearnerGroup
    from actors.reward import RewardPool
    from actors.rollout import RolloutPool
    from actors.shipping import maybe_ship
    from actors.weight_route import WeightSync, engine_kw, route_for
    from aigq.ray_boot import ensure_ray

    rc = cfg.rollout
    route = route_for(cfg)  # a route that cannot work fails here, before any actor starts
    ensure_ray(cfg)
    check_cluster(cfg)
    say(f"starting learner ×{cfg.learner.num_workers}, rollout ×{rc.num_workers} ({rc.engine}, {route} sync), "
        f"reward ×{cfg.rewards.num_actors}; policy {inputs.policy}, CTR {inputs.ctr}")
    # no shared filesystem (run.ship_models): the policy goes into the object store once, for learner and rollout
    ship = cfg.run.ship_models
    policy = maybe_ship(inputs.policy, ship)
    learner = LearnerGroup(cfg, policy, cfg.grpo.iterations, pad_id, inputs.resume, mode="grpo", ship=ship)
    rollout = RolloutPool(rc.engine, policy, cfg.grpo.variant, rc.num_workers, rc.cpus_per_worker,
                          engine_kw(cfg), rc.max_restarts, rc.max_shard_retries, num_gpus=rc.gpus_per_worker)
    rewards = RewardPool(inputs.ctr, cfg.rewards, cfg.reward_expected_count(), ship=ship)
    return Actors(learner, rollout, rewards, WeightSync(route, learner, rollout))


def run_grpo(cfg: AIGQConfig, tracker: Tracker, samples_dir: Path | None = None, say: Say | None = None,
             on_iteration: Callable[[int, int], None] | None = None,
             on_dispatch: OnDispatch | None = None) -> dict[str, Any]:
    """Run IL-GRPO; returns the figures (also logged). ``on_dispatch(pool, actors, actor_index, batch)`` is called
    after each rollout ("rollout") / reward ("reward") submission (monitoring; fault-injection tests)."""
    from transformers import AutoTokenizer

    say = say or (lambda _m: None)
    inputs = _inputs(cfg, Path(samples_dir or cfg.samples_dir()))
    tokenizer = AutoTokenizer.from_pretrained(str(inputs.policy), local_files_only=True)
    actors = start_actors(cfg, inputs, tokenizer.pad_token_id, say)
    try:
        with tracker.run("grpo", cfg, tags={"aigq.algorithm": cfg.grpo.algorithm, "aigq.engine": cfg.rollout.engine}):
            tracker.params({"grpo.start_policy": str(inputs.policy), "grpo.ctr_model": str(inputs.ctr)})
            history = _loop(cfg, actors, inputs, tokenizer, tracker, say, on_iteration, on_dispatch)
            figures = _figures(history)
            policy = grpo_dir(cfg) / "policy"
            actors.learner.save_policy(policy)
            figures.update({"policy": str(policy), "weights_identical": len(set(actors.learner.weights_digests())) == 1,
                            "rollout_retries": actors.rollout.stats["retries"],
                            "reward_retries": actors.rewards.stats["retries"]})
            tracker.metrics({f"grpo.{k}": v for k, v in figures.items() if isinstance(v, int | float | bool)})
            tracker.artifacts(policy, "policy")
    finally:
        actors.shutdown()
    return {**figures, "history": history}


def _loop(cfg: AIGQConfig, actors: Actors, inputs: GRPOInputs, tokenizer, tracker: Tracker, say: Say,
          on_iteration: Callable[[int, int], None] | None, on_dispatch: OnDispatch | None) -> list[dict[str, float]]:
    """The IL-GRPO iterations: generate → score → advantages → train → sync → log / evaluate / checkpoint."""
    from learner.rl_batch import group_advantages

    g = cfg.grpo
    on_rollout, on_reward = (_dispatch_hook(on_dispatch, pool, actors) for pool in ("rollout", "reward"))
    generate = partial(_generate, cfg, actors, inputs.train, on_rollout)  # it → (prompt rows, their G rollouts each)
    start = actors.learner.iteration
    actors.sync.first(version=start)
    history: list[dict[str, float]] = []
    ahead: Future | None = None  # one_step_off_policy: the next iteration's rollouts, made by the pre-update policy
    with ThreadPoolExecutor(1, thread_name_prefix="rollout-ahead") as background:
        for it in range(start, g.iterations):
            t = _Phases()
            # rollouts[i]: prompt i's G generated lists; group_rewards[i]: their rewards (scored as one RewardGroup)
            prompts, rollouts = ahead.result() if ahead else generate(it)
            t.lap("generate")
            ahead = background.submit(generate, it + 1) if g.one_step_off_policy and it + 1 < g.iterations else None
            group_rewards = actors.rewards.score(_reward_groups(prompts, rollouts, g.variant), on_dispatch=on_reward)
            t.lap("score")
            advantages = [group_advantages(rs, r, tokenizer, g, cfg.rewards)
                          for rs, r in zip(rollouts, group_rewards, strict=True)]
            kept = [x for x in advantages if x.kept]
            m = actors.learner.grpo_update([e for x in kept for e in x.examples], it) if kept else {}
            t.lap("train")
            if g.one_step_off_policy:
                if ahead:  # the workers finish the old policy's lists before they load the new one
                    ahead.result()
                t.lap("generate_ahead_wait")
            actors.sync(version=it + 1)
            t.lap("sync")
            m.update(_iteration_metrics(it, rollouts, group_rewards, advantages, t))
            if _due(it, g.eval_every, g.iterations):
                m.update(_greedy_eval(cfg, actors, inputs.held_out))
            tracker.metrics(m, step=it + 1)
            history.append(m)
            say(f"iter {it + 1}/{g.iterations}: reward {m['reward/query.total']:.3f} ctr {m['reward/query.ctr']:.3f} "
                f"kept {len(kept)}/{len(advantages)} ({t['generate']:.1f}s gen, {t['train']:.1f}s train)")
            if _due(it, g.checkpoint_every, g.iterations):
                actors.learner.save_checkpoint(grpo_dir(cfg) / "checkpoints", dump_yaml(cfg), {"iteration": it + 1},
                                               g.keep_checkpoints)
            if on_iteration:
                on_iteration(it + 1, g.iterations)
    return history


def _generate(cfg: AIGQConfig, actors: Actors, train: pl.DataFrame, on_rollout, it: int):
    """Iteration ``it``'s prompt rows and their G rollouts each, from the policy the rollout workers hold now."""
    prompts = _sample_prompts(cfg, train, it)
    return prompts, actors.rollout.generate(prompts["prompt"].to_list(), _sampling(cfg, it), on_dispatch=on_rollout)


def _dispatch_hook(on_dispatch: OnDispatch | None, pool: str, actors: Actors) -> Callable[[int, int], None] | None:
    """``on_dispatch`` bound to one pool, in the ``(actor_index, batch)`` form the pools call; None without one."""
    return partial(on_dispatch, pool, actors) if on_dispatch else None


def _sample_prompts(cfg: AIGQConfig, train: pl.DataFrame, it: int) -> pl.DataFrame:
    """Iteration ``it``'s prompt rows; they depend only on (run.seed, it), so a resumed run samples the same ones."""
    rng = np.random.default_rng([cfg.run.seed, it])
    return train[rng.choice(train.height, min(cfg.grpo.prompts_per_iteration, train.height), replace=False)]


def _sampling(cfg: AIGQConfig, it: int) -> Sampling:
    """On-policy sampling of G = grpo.group_size rollouts per prompt, seeded by (run.seed, it)."""
    from rollout.engine import Sampling

    rc = cfg.rollout
    return Sampling(n=cfg.grpo.group_size, temperature=rc.temperature, top_k=rc.top_k, max_tokens=rc.max_tokens,
                    seed=cfg.run.seed * 100_003 + it)


def _due(it: int, every: int, iterations: int) -> bool:
    """Whether iteration ``it`` (0-based) ends an ``every``-iteration period, or the run."""
    return (it + 1) % every == 0 or it + 1 == iterations


def _greedy_eval(cfg: AIGQConfig, actors: Actors, held_out: pl.DataFrame) -> dict[str, float]:
    """Mean rewards of one greedy (temperature 0) list per held-out prompt, as ``eval/<component>``."""
    from rollout.engine import Sampling

    greedy = Sampling(n=1, temperature=0.0, max_tokens=cfg.rollout.max_tokens)
    rollouts = actors.rollout.generate(held_out["prompt"].to_list(), greedy)
    group_rewards = actors.rewards.score(_reward_groups(held_out, rollouts, cfg.grpo.variant))
    return {f"eval/{k}": _mean(group_rewards, k) for k in ("query.total", "query.ctr", "query.rouge", "seq.total")}


class _Phases(dict):
    """Seconds per phase of one iteration."""

    def __init__(self) -> None:
        super().__init__()
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self[name], self._t = now - self._t, now


def _iteration_metrics(it: int, rollouts, group_rewards, advantages, t: dict[str, float]) -> dict[str, float]:
    """Each reward component's mean and std, group statistics, rollout throughput, seconds per phase."""
    summaries = [r.summary() for r in group_rewards]
    m: dict[str, float] = {"policy_version": it + 1, "rollouts/scored": sum(len(r.lists) for r in group_rewards),
                           "rollouts/generated": sum(len(rs) for rs in rollouts),
                           "rollout/policy_lag": float(np.mean([it - r.policy_version for rs in rollouts for r in rs]))}
    for k in summaries[0] if summaries else ():
        vals = [s[k] for s in summaries]
        m[f"reward/{k}"], m[f"reward_std/{k}"] = float(np.mean(vals)), float(np.std(vals))
    tokens = sum(len(r.token_ids) for rs in rollouts for r in rs)
    m.update({"groups/kept_frac": float(np.mean([x.kept for x in advantages])),
              "groups/zero_std_frac": float(np.mean([x.zero_std for x in advantages])),
              "groups/difficulty": float(np.mean([x.difficulty for x in advantages])),
              "rollout/tokens_per_s": tokens / max(t["generate"], 1e-9),
              "rollout/parse_rate": float(np.mean([bool(r.queries) for rs in rollouts for r in rs])),
              **{f"seconds/{k}": v for k, v in t.items()}})
    return m


def _figures(history: list[dict[str, float]]) -> dict[str, float]:
    """First vs last 20 % of iterations for the mean CTR and total query reward (the issue's acceptance figure)."""
    if not history:
        return {}
    k = max(1, len(history) // 5)
    out: dict[str, float] = {"iterations": len(history)}
    for key, name in (("reward/query.ctr", "ctr"), ("reward/query.total", "total"), ("reward/seq.total", "seq")):
        first = float(np.mean([h.get(key, 0.0) for h in history[:k]]))
        last = float(np.mean([h.get(key, 0.0) for h in history[-k:]]))
        out.update({f"{name}_first": first, f"{name}_last": last, f"{name}_gain": last - first})
    phases = [k for k in history[0] if k.startswith("seconds/")]
    out["seconds_per_iteration"] = float(np.mean([sum(h[k] for k in phases) for h in history]))
    out.update({k.replace("/", "_"): float(np.mean([h[k] for h in history])) for k in phases})
    return out
