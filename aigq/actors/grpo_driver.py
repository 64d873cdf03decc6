"""The IL-GRPO driver (``aigq grpo``), paper §3.5: one loop over Ray actors, readable top to bottom.

    for each iteration:  sample prompts → generate (RolloutPool, G lists each, on-policy)
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
from pathlib import Path
from typing import Any

import numpy as np

from aigq.config import AIGQConfig, dump_yaml
from aigq.tracking import Tracker

Say = Callable[[str], None]


def grpo_dir(cfg: AIGQConfig) -> Path:
    return Path(cfg.run.output_dir) / "grpo"


def _inputs(cfg: AIGQConfig, samples_dir: Path) -> dict[str, Any]:
    """Fail fast on anything missing: start policy, CTR model, samples. Returns paths and prompt sets."""
    from aigq.cli_rewards import ctr_root
    from aigq.learner import data as D
    from aigq.learner.checkpoint import latest_checkpoint, read_checkpoint

    g = cfg.grpo
    if g.resume == "latest":  # none yet → a fresh run (so a re-submitted job resumes or starts, either way)
        resume = latest_checkpoint(grpo_dir(cfg) / "checkpoints")
    else:
        resume = read_checkpoint(Path(g.resume)).path if g.resume else None
    policy = Path(g.init_policy) if g.init_policy else Path(cfg.run.output_dir) / "sft" / "policy"
    if resume is None and not (policy / "config.json").is_file():
        raise FileNotFoundError(f"no start policy at {policy}: run `aigq sft` first or set grpo.init_policy")
    days = sorted(ctr_root(cfg).glob("day-*")) if ctr_root(cfg).is_dir() else []
    if not days:
        raise FileNotFoundError(f"no CTR model under {ctr_root(cfg)}: run `aigq train-ctr --day T` first")
    df = D.read_samples(Path(samples_dir) / f"{g.variant}.parquet")
    train, held = D.split_eval(df, cfg.sft.eval_days)
    if train.height == 0 or held.height == 0:
        raise ValueError(f"{samples_dir}: need train and held-out {g.variant} samples (got {train.height} and "
                         f"{held.height}; held-out = the last sft.eval_days={cfg.sft.eval_days} train days)")
    return {"resume": resume, "policy": resume / "model" if resume else policy, "ctr": days[-1],
            "train": train, "eval": held.head(g.eval_prompts)}


def cpus_needed(cfg: AIGQConfig) -> float:
    """Logical CPUs the learner group, rollout workers and reward actors reserve together."""
    return (cfg.learner.num_workers * cfg.learner.cpus_per_worker + cfg.rollout.num_workers *
            cfg.rollout.cpus_per_worker + cfg.rewards.num_actors * cfg.rewards.num_cpus_per_actor)


def check_cluster(cfg: AIGQConfig) -> None:
    """Fail fast (instead of waiting forever for actors that cannot be placed) when the cluster is too small."""
    import ray

    have, need = ray.cluster_resources().get("CPU", 0), cpus_needed(cfg)
    if need > have:
        raise ValueError(
            f"IL-GRPO needs {need:g} CPUs (learner {cfg.learner.num_workers}×{cfg.learner.cpus_per_worker} + rollout "
            f"{cfg.rollout.num_workers}×{cfg.rollout.cpus_per_worker:g} + rewards {cfg.rewards.num_actors}×"
            f"{cfg.rewards.num_cpus_per_actor:g}) but the Ray cluster offers {have:g}; lower those counts")


def _groups(frame, rollouts, variant: str):
    from aigq.rewards.compose import RewardGroup

    return [RewardGroup(group_id=sid, outputs=[r.text for r in rs], reference=list(ref), prompt=p,
                        ref_triggers=[list(t) for t in trig] if variant == "think" else None, variant=variant)
            for sid, p, ref, trig, rs in zip(frame["sample_id"], frame["prompt"], frame["target"], frame["triggers"],
                                             rollouts, strict=True)]


def _mean(rewards, key: str) -> float:
    vals = [r.summary()[key] for r in rewards]
    return float(np.mean(vals)) if vals else 0.0


def run_grpo(cfg: AIGQConfig, tracker: Tracker, samples_dir: Path | None = None, say: Say | None = None,
             on_iteration: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from aigq.actors.learner import LearnerGroup, ensure_ray
    from aigq.actors.reward import RewardPool
    from aigq.actors.rollout import RolloutPool
    from aigq.learner.rl_batch import group_advantages
    from aigq.rollout.engine import Sampling

    say, g, rc = say or (lambda _m: None), cfg.grpo, cfg.rollout
    inp = _inputs(cfg, Path(samples_dir or cfg.samples_dir()))
    train, evals, ckpt_root = inp["train"], inp["eval"], grpo_dir(cfg) / "checkpoints"
    tokenizer = AutoTokenizer.from_pretrained(str(inp["policy"]), local_files_only=True)
    ensure_ray(cfg.learner, num_cpus=cpus_needed(cfg))  # a local Ray: the phases take turns on the cores
    check_cluster(cfg)
    say(f"starting learner ×{cfg.learner.num_workers}, rollout ×{rc.num_workers} ({rc.engine}), "
        f"reward ×{cfg.rewards.num_actors}; policy {inp['policy']}, CTR {inp['ctr']}")
    learner = LearnerGroup(cfg, inp["policy"], g.iterations, tokenizer.pad_token_id, inp["resume"], mode="grpo")
    rollout = RolloutPool(rc.engine, inp["policy"], g.variant, rc.num_workers, rc.cpus_per_worker,
                          {"dtype": rc.dtype}, rc.max_restarts, rc.max_shard_retries)
    rewards = RewardPool(inp["ctr"], cfg.rewards, cfg.rewards.expected_count or cfg.samples.label_cap)
    sampling = Sampling(n=g.group_size, temperature=rc.temperature, top_k=rc.top_k, max_tokens=rc.max_tokens)
    greedy = Sampling(n=1, temperature=0.0, max_tokens=rc.max_tokens)
    start = learner.iteration
    rollout.sync(learner.weights_blob(), version=start)
    history: list[dict[str, float]] = []
    with tracker.run("grpo", cfg, tags={"aigq.algorithm": g.algorithm, "aigq.engine": rc.engine}):
        tracker.params({"grpo.start_policy": str(inp["policy"]), "grpo.ctr_model": str(inp["ctr"])})
        for it in range(start, g.iterations):
            t, m = {}, {"policy_version": it}
            t0 = time.perf_counter()
            rng = np.random.default_rng([cfg.run.seed, it])  # a resumed run samples the same prompts
            batch = train[rng.choice(train.height, min(g.prompts_per_iteration, train.height), replace=False)]
            groups = rollout.generate(batch["prompt"].to_list(), Sampling(**{**sampling.__dict__,
                                                                              "seed": cfg.run.seed * 100_003 + it}))
            t["generate"], t0 = time.perf_counter() - t0, time.perf_counter()
            scored = rewards.score(_groups(batch, groups, g.variant))
            t["score"], t0 = time.perf_counter() - t0, time.perf_counter()
            adv = [group_advantages(rs, r, tokenizer, g, cfg.rewards) for rs, r in zip(groups, scored, strict=True)]
            kept = [a for a in adv if a.kept]
            if kept:
                m.update(learner.grpo_update([e for a in kept for e in a.examples], it))
            t["train"], t0 = time.perf_counter() - t0, time.perf_counter()
            rollout.sync(learner.weights_blob(), version=it + 1)
            t["sync"] = time.perf_counter() - t0
            tokens = sum(len(r.token_ids) for rs in groups for r in rs)
            m.update({f"reward/{k}": _mean(scored, k) for k in scored[0].summary()} if scored else {})
            m.update({f"reward_std/{k}": float(np.std([x.summary()[k] for x in scored])) for k in
                      ("query.total", "seq.total", "query.ctr")})
            m.update({"groups/kept_frac": len(kept) / len(adv), "groups/zero_std_frac":
                      float(np.mean([a.zero_std for a in adv])), "groups/difficulty": float(np.mean(
                          [a.difficulty for a in adv])), "rollout/tokens_per_s": tokens / t["generate"],
                      "rollout/parse_rate": float(np.mean([bool(r.queries) for rs in groups for r in rs])),
                      **{f"seconds/{k}": v for k, v in t.items()}})
            if (it + 1) % g.eval_every == 0 or it + 1 == g.iterations:
                ev = rewards.score(_groups(evals, rollout.generate(evals["prompt"].to_list(), greedy), g.variant))
                m.update({"eval/query.total": _mean(ev, "query.total"), "eval/query.ctr": _mean(ev, "query.ctr"),
                          "eval/seq.total": _mean(ev, "seq.total")})
            tracker.metrics(m, step=it + 1)
            history.append(m)
            say(f"iter {it + 1}/{g.iterations}: reward {m.get('reward/query.total', 0):.3f} "
                f"ctr {m.get('reward/query.ctr', 0):.3f} kept {len(kept)}/{len(adv)} "
                f"({t['generate']:.1f}s gen, {t['train']:.1f}s train)")
            if on_iteration:
                on_iteration(it + 1, g.iterations)
            if (it + 1) % g.checkpoint_every == 0 or it + 1 == g.iterations:
                learner.save_checkpoint(ckpt_root, dump_yaml(cfg), {"iteration": it + 1}, g.keep_checkpoints)
        figures = _figures(history)
        policy = grpo_dir(cfg) / "policy"
        learner.save_policy(policy)
        figures.update({"policy": str(policy), "weights_identical": len(set(learner.weights_digests())) == 1,
                        "rollout_retries": rollout.stats["retries"], "reward_retries": rewards.stats["retries"]})
        tracker.metrics({f"grpo.{k}": v for k, v in figures.items() if isinstance(v, int | float | bool)})
        tracker.artifacts(policy, "policy")
    for pool in (rollout, rewards, learner):
        pool.shutdown()
    return figures


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
    return out
