"""Daily closed loop benchmark: ``aigq loop --days N`` on a trained run, into its own folder, with wall time.

    .venv/bin/python benchmarks/daily_loop.py --days 3 -c configs/tiny_cpu.yaml [overrides ...]

Needs a run trained by ``aigq demo`` (world, samples, policy, CTR model under ``run.output_dir``). Writes the loop's
folders under ``--out`` (default ``outputs/loop-bench``) and a separate Serve port (``--port``) and store, so a demo's
Serve apps on port 8000 are not touched. Prints the per-arm, per-day table, the Figure-3 table (PVR share and CTR
per day with vs without daily RL), the seconds of each stage summed over days, and the wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("-c", "--config", default="configs/tiny_cpu.yaml")
    ap.add_argument("--out", default="outputs/loop-bench")
    ap.add_argument("--port", type=int, default=8137)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    aigq = Path(sys.executable).parent / "aigq"
    cmd = [str(aigq), "loop", "--days", str(a.days), "-c", a.config, f"loop.out_dir={a.out}",
           f"serve.port={a.port}", *a.overrides]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    rc = subprocess.call(cmd)
    wall = time.perf_counter() - t0
    summary = Path(a.out) / "loop.json"
    if rc == 0 and summary.is_file():
        rows = json.loads(summary.read_text())["rows"]
        stages: dict[str, float] = {}
        for r in rows:
            for k, v in r.items():
                if k.startswith("seconds."):
                    stages[k[8:]] = stages.get(k[8:], 0.0) + v
        print("seconds per stage, summed over arms and days: "
              + ", ".join(f"{k} {v:.0f}" for k, v in stages.items()))
    print(f"aigq loop --days {a.days}: exit {rc}, {wall:.0f} s wall")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
