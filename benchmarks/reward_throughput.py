"""Reward throughput: lists scored per second by the RewardActor pool with 1 and 2 actors.

    .venv/bin/python benchmarks/reward_throughput.py [--ctr outputs/tiny/ctr/day-030] [--groups 256] [--g 8]

Groups are real prompts of a simulated world (its HintQ exposures' contexts rendered with the shared prompt format)
with G lists of 10 queries each, built from the exposure's ranker top-K (shuffled, with duplicates in some lists).
Without ``--ctr`` a small world is simulated and a CTR model trained first (about a minute). Prints one markdown
row per actor count; paste them into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from aigq.config import CTRConfig, RewardsConfig, SamplesConfig, WorldConfig
from aigq.data.prompt import format_prompt, format_target
from aigq.data.simulate import simulate_world
from aigq.data.validate import validate_world
from aigq.rewards.compose import RewardGroup
from aigq.rewards.ctr_train import click_data, train_day


def build(ctr: str | None, world: str | None, n_groups: int, G: int, tmp: Path) -> tuple[str, list[RewardGroup]]:
    if world is None:
        world = str(tmp / "world")
        simulate_world(WorldConfig(users=400, days=10), seed=0, out=world)
    v = validate_world(world, write_quarantine=False)
    days = int(v.meta["days"])
    if ctr is None:
        ctr = str(train_day(v.tables, v.meta["start_date"], days, days - 1, CTRConfig(epochs_cold=2), tmp / "ctr").folder)
    data = click_data(v.tables, v.meta["start_date"], list(range(max(1, days - 3), days + 1)), CTRConfig())
    rng = np.random.default_rng(0)
    groups = []
    for ctx_id, g in data.imp.group_by("ctx", maintain_order=True):
        ctx = data.contexts[ctx_id[0]]
        ref = g["candidates"][0].to_list()[:10]
        prompt = format_prompt(ctx.profile, ctx.behaviours, SamplesConfig())
        outs = []
        for i in range(G):
            lst = list(rng.permutation(ref))
            if i % 3 == 0:
                lst[-2:] = lst[:2]  # a repetitive list now and then
            outs.append(format_target(lst))
        groups.append(RewardGroup(f"g{len(groups)}", outs, ref, prompt=prompt))
        if len(groups) == n_groups:
            break
    return ctr, groups


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctr", help="CTR model folder (day-T); default: train one on a small world")
    ap.add_argument("--world", help="world folder for the prompts; default: simulate a small one")
    ap.add_argument("--groups", type=int, default=256)
    ap.add_argument("--g", type=int, default=8, help="lists per group (G)")
    ap.add_argument("--actors", default="1,2")
    ap.add_argument("--similarity", default="ngram", choices=["ngram", "encoder", "auto"])
    args = ap.parse_args()

    import ray

    from actors.reward import RewardPool

    with tempfile.TemporaryDirectory() as tmp:
        ctr, groups = build(args.ctr, args.world, args.groups, args.g, Path(tmp))
        n_lists = sum(len(g.outputs) for g in groups)
        from aigq.ray_boot import prepare_ray_auth

        prepare_ray_auth(start=True)  # Ray's token authentication on: a local head listens on all interfaces
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        cfg = RewardsConfig(similarity=args.similarity, batch_groups=8, num_cpus_per_actor=1)
        print(f"# {len(groups)} groups × G={args.g} = {n_lists} lists of ≤10 queries; similarity={args.similarity}; "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
        cmd = (f"python benchmarks/reward_throughput.py --groups {args.groups} --g {args.g} --similarity "
               f"{args.similarity}" + (f" --ctr {args.ctr}" if args.ctr else "") + (f" --world {args.world}" if args.world else ""))
        print("| date | benchmark | actors | groups | lists | seconds | lists/s | command |")
        for n in [int(x) for x in args.actors.split(",")]:
            pool = RewardPool(ctr, cfg, num_actors=n)
            pool.score(groups[: 2 * n])  # warm-up: actors load the model
            t0 = time.perf_counter()
            out = pool.score(groups)
            dt = time.perf_counter() - t0
            assert len(out) == len(groups)
            pool.shutdown()
            print(f"| {time.strftime('%Y-%m-%d')} | reward_throughput | {n} | {len(groups)} | {n_lists} | "
                  f"{dt:.2f} | {n_lists / dt:.0f} | `{cmd}` |")
        ray.shutdown()


if __name__ == "__main__":
    main()
