"""Data-stage scale benchmark: simulate a world and build IL-SFT / Think / test samples at ~1M and ~10M events.

Each stage runs in its own subprocess so its peak RSS is its own. Prints wall time, peak RSS and the 10×/1× time
ratio. The same per-user activity is used at both sizes (10× the users), so the ratio measures scaling in data
volume. Usage::

    .venv/bin/python benchmarks/pipeline_scale.py                 # ~1M and ~10M events
    .venv/bin/python benchmarks/pipeline_scale.py --events 1e6    # one size
    .venv/bin/python benchmarks/pipeline_scale.py --search-only   # a plain search log: next-search Direct labels
    .venv/bin/python benchmarks/pipeline_scale.py --search-only --count searches   # ~1M and ~10M search events
    .venv/bin/python benchmarks/pipeline_scale.py --config configs/world_v2.yaml   # world v2's activity and queries

``--search-only`` simulates with ``world.hint_exposure_rate=0`` (no HintQ exposures), so the Direct split is built
from next searches (``samples.label_source=auto``) and every user's last query is held out (``last_query``).
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
    st = build_samples_to(v.tables, v.meta["start_date"], int(v.meta["days"]), cfg.samples, samples)
    splits = ("direct", "think", "test", "last_query")
    out = {"validate_s": round(t_val, 2), **{k: int(st[f"{k}.samples"]) for k in splits},
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
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="aigq-bench-"))
    base = [f"world.sessions_per_day={args.sessions_per_day}", "world.chunk_users=100000"]
    base += ["world.hint_exposure_rate=0"] if args.search_only else []
    pilot = run_stage("simulate", work / "pilot", work / "pilot_s", [*base, "world.users=20000"], args.config)
    per_user = pilot[args.count] / pilot["users"]
    print(f"pilot: {per_user:.2f} {args.count} per user at sessions_per_day={args.sessions_per_day}")
    rows = []
    for target in args.events:
        users = int(round(target / per_user / 1000) * 1000)
        w, s = work / f"w{int(target)}", work / f"s{int(target)}"
        sim = run_stage("simulate", w, s, [*base, f"world.users={users}"], args.config)
        build = run_stage("build", w, s, base, args.config)
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
    shutil.rmtree(work / "pilot", ignore_errors=True)


if __name__ == "__main__":
    main()
