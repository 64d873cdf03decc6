"""Data-stage scale benchmark: simulate a world and build IL-SFT / Think / test samples at ~1M and ~10M events.

Each stage runs in its own subprocess so its peak RSS is its own. Prints wall time, peak RSS and the 10×/1× time
ratio. The same per-user activity is used at both sizes (10× the users), so the ratio measures scaling in data
volume. Usage::

    .venv/bin/python benchmarks/pipeline_scale.py                 # ~1M and ~10M events
    .venv/bin/python benchmarks/pipeline_scale.py --events 1e6    # one size
    .venv/bin/python benchmarks/pipeline_scale.py --search-only   # a plain search log: next-search Direct labels
    .venv/bin/python benchmarks/pipeline_scale.py --search-only --count searches   # ~1M and ~10M search events
    .venv/bin/python benchmarks/pipeline_scale.py --config configs/world_v2.yaml   # world v2's activity and queries
    .venv/bin/python benchmarks/pipeline_scale.py --events 1e6 --ray-shards 0,1,2  # build: 1 process, 1 and 2 Ray tasks

``--search-only`` simulates with ``world.hint_exposure_rate=0`` (no HintQ exposures), so the Direct split is built
from next searches (``samples.label_source=auto``) and every user's last query is held out (``last_query``).

``--ray-shards 0,1,2`` builds the samples of each world once per value of ``samples.ray_shards`` (0 = one process,
N = N Ray tasks over user shards, ``actors/samples.py``) and prints a second table: build seconds (Ray's start not
included; it is its own column), events per second of build, the driver's peak RSS (Ray tasks run in their own
worker processes) and whether ``meta.json`` (row counts, statistics) equals the first value's build.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

STAGE = r"""
import json, resource, sys, time
from pathlib import Path
from aigq.config import load_config
from aigq.data.simulate import simulate_world
from aigq.data.validate import validate_world
from aigq.data.samples import build_samples_to
stage, world, samples, config, overrides = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
cfg = load_config(config or None, overrides)
t0 = time.perf_counter()
out = {}
if stage == "simulate":
    meta = simulate_world(cfg.world, cfg.run.seed, world)
    out = {k: meta[k] for k in ("users", "events", "exposures")}
    import polars as pl
    out["searches"] = pl.scan_parquet(f"{world}/events/*.parquet").filter(pl.col("type") == "search").select(
        pl.len()).collect().item()
else:
    v = validate_world(world)
    t_val = time.perf_counter() - t0
    start, days, ray_s = v.meta["start_date"], int(v.meta["days"]), 0.0
    if cfg.samples.ray_shards:
        from actors.samples import build_samples_on_ray
        from aigq.ray_boot import ensure_ray
        t1 = time.perf_counter()
        ensure_ray(cfg, "train", say=lambda line: None)
        ray_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        st = build_samples_on_ray(cfg, v.tables, start, days, Path(samples))
    else:
        t2 = time.perf_counter()
        st = build_samples_to(v.tables, start, days, cfg.samples, samples)
    splits = ("direct", "think", "test", "last_query")
    meta = json.load(open(f"{samples}/meta.json"))
    out = {"validate_s": round(t_val, 2), "ray_start_s": round(ray_s, 2),
           "build_only_s": round(time.perf_counter() - t2, 2), "meta": {"rows": meta["rows"], "stats": meta["stats"]},
           **{k: int(st[f"{k}.samples"]) for k in splits},
           "searches": v.tables["events"].filter(v.tables["events"]["type"] == "search").height,
           "label_source": json.load(open(f"{samples}/meta.json"))["samples_config"]["label_source"]}
out["seconds"] = round(time.perf_counter() - t0, 2)
out["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
print(json.dumps(out))
"""


def run_stage(stage: str, world: Path, samples: Path, overrides: list[str], config: str = "") -> dict:
    res = subprocess.run([sys.executable, "-c", STAGE, stage, str(world), str(samples), config, *overrides],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{stage} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=float, nargs="+", default=[1e6, 1e7], help="target event counts")
    ap.add_argument("--sessions-per-day", type=float, default=0.08, help="per-user activity (same at every size)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--search-only", action="store_true", help="no HintQ exposures: next-search Direct labels")
    ap.add_argument("--count", choices=["events", "searches"], default="events",
                    help="what --events counts: all events, or search events only")
    ap.add_argument("--config", default="", help="a config file whose world to scale (e.g. configs/world_v2.yaml; "
                                                 "--sessions-per-day then only matters for v1 activity)")
    ap.add_argument("--ray-shards", default="0", help="comma-separated samples.ray_shards values to build each "
                                                      "world with (0 = one process; e.g. 0,1,2)")
    args = ap.parse_args()
    shard_counts = [int(x) for x in args.ray_shards.split(",") if x.strip()]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="aigq-bench-"))
    base = [f"world.sessions_per_day={args.sessions_per_day}", "world.chunk_users=100000"]
    base += ["world.hint_exposure_rate=0"] if args.search_only else []
    pilot = run_stage("simulate", work / "pilot", work / "pilot_s", [*base, "world.users=20000"], args.config)
    per_user = pilot[args.count] / pilot["users"]
    print(f"pilot: {per_user:.2f} {args.count} per user at sessions_per_day={args.sessions_per_day}")
    rows, ray_rows = [], []
    for target in args.events:
        users = int(round(target / per_user / 1000) * 1000)
        w, s = work / f"w{int(target)}", work / f"s{int(target)}"
        sim = run_stage("simulate", w, s, [*base, f"world.users={users}"], args.config)
        builds = {}
        for n in shard_counts:
            shutil.rmtree(s, ignore_errors=True)
            builds[n] = run_stage("build", w, s, [*base, f"samples.ray_shards={n}"], args.config)
            ray_rows.append({"events": sim["events"], "shards": n, **builds[n],
                             "same_meta": builds[n]["meta"] == builds[shard_counts[0]]["meta"]})
        build = builds[shard_counts[0]]
        rows.append({"target": target, "users": sim["users"], "events": sim["events"], "exposures": sim["exposures"],
                     "sim_s": sim["seconds"], "sim_rss": sim["peak_rss_gib"], "build_s": build["seconds"],
                     "validate_s": build["validate_s"], "build_rss": build["peak_rss_gib"],
                     "samples": sum(build[k] for k in ("direct", "think", "test", "last_query")),
                     "searches": build["searches"], "direct": build["direct"], "label_source": build["label_source"]})
        shutil.rmtree(w, ignore_errors=True)
        shutil.rmtree(s, ignore_errors=True)
    hdr = ("events", "searches", "users", "exposures", "simulate s", "sim RSS GiB", "build s (validate s)",
           "build RSS GiB", "samples (Direct, labels from)")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for r in rows:
        print(f"| {r['events']:,} | {r['searches']:,} | {r['users']:,} | {r['exposures']:,} | {r['sim_s']} | "
              f"{r['sim_rss']} | {r['build_s']} ({r['validate_s']}) | {r['build_rss']} | {r['samples']:,} "
              f"({r['direct']:,}, {r['label_source']}) |")
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        print(f"time ratio {b['events'] / a['events']:.1f}× events: simulate {b['sim_s'] / a['sim_s']:.2f}×, "
              f"build {b['build_s'] / a['build_s']:.2f}×, total "
              f"{(b['sim_s'] + b['build_s']) / (a['sim_s'] + a['build_s']):.2f}×")
    if shard_counts != [0]:
        hdr = ("events", "samples.ray_shards", "build s", "events/s", "Ray start s", "validate s", "driver RSS GiB",
               f"meta.json = ray_shards={shard_counts[0]}'s")
        print("| " + " | ".join(hdr) + " |")
        print("|" + "---|" * len(hdr))
        for r in ray_rows:
            print(f"| {r['events']:,} | {r['shards'] or '0 (one process)'} | {r['build_only_s']} | "
                  f"{r['events'] / max(r['build_only_s'], 1e-9):,.0f} | {r['ray_start_s']} | {r['validate_s']} | "
                  f"{r['peak_rss_gib']} | {'yes' if r['same_meta'] else 'NO'} |")
    shutil.rmtree(work / "pilot", ignore_errors=True)


if __name__ == "__main__":
    main()
