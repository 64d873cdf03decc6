"""The daily loop as a Ray job: ``ray job submit --runtime-env configs/runtime_env.yaml -- aigq loop --days 3 ...``
against a private ``ray start --head`` on free ports (``aigq/ray_job.py``), then checks and prints the figures.

    .venv/bin/python benchmarks/job_submit.py                      # aigq loop --days 3 on a copy of outputs/tiny
    .venv/bin/python benchmarks/job_submit.py --days 1 loop.arms='[daily_rl]'
    .venv/bin/python benchmarks/job_submit.py --no-copy --entrypoint "aigq simulate -c {config}" world.users=50

The loop needs a trained source run (world, samples, CTR models, the IL-SFT / IL-GRPO policy: ``aigq demo``); the
needed folders of ``--source`` are copied into ``--work`` so the job never writes into the source run. Every aigq
command gets absolute ``run.output_dir`` / ``tracking.root`` overrides (the job's working_dir is a throw-away copy)
and a free ``serve.port`` (other Serve apps may hold 8000). Prints the head's start time, the job's wall time (submit
→ end, incl. upload and log streaming) and run time (as Ray recorded it), its final state and the MLflow runs it
logged; exits 1 unless the job SUCCEEDED and logged at least one MLflow run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aigq.ray_job import JobError, free_ports, local_head, submit  # noqa: E402

COPY = ("world", "samples", "ctr", "models", "sft/policy", "grpo/policy")  # what `aigq loop` reads from its source


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--days", type=int, default=3)
    p.add_argument("--config", default="configs/tiny_cpu.yaml", help="relative to the repository (the job's copy)")
    p.add_argument("--source", type=Path, default=REPO / "outputs" / "tiny", help="trained run to start from")
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "_work" / "job")
    p.add_argument("--no-copy", action="store_true", help="start from an empty run folder (commands that need none)")
    p.add_argument("--entrypoint", default="aigq loop --days {days} -c {config}",
                   help="an aigq command line ({days}, {config} filled in); dotted overrides are appended")
    p.add_argument("--runtime-env", type=Path, default=REPO / "configs" / "runtime_env.yaml")
    p.add_argument("--num-cpus", type=int, default=None, help="the head's logical CPUs (default: what a local "
                   "`aigq loop` Ray offers: cores + rollout/reward/Serve CPUs)")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("overrides", nargs="*", help="dotted config overrides for the job, e.g. loop.arms=[daily_rl]")
    return p.parse_args()


def head_cpus(config: Path, overrides: list[str]) -> int:
    """The logical CPUs ``ensure_ray(cfg, "loop")`` would give a local Ray for this config (IL-GRPO's pools + Serve)."""
    from aigq.config import load_config
    from aigq.ray_boot import local_cpus

    return local_cpus(load_config(config, overrides), "loop")


def prepare(work: Path, source: Path, copy: bool) -> Path:
    run = work / "run"
    shutil.rmtree(work, ignore_errors=True)
    run.mkdir(parents=True)
    if copy:
        missing = [c for c in COPY[:3] if not (source / c).exists()]
        if missing or not ((source / "sft/policy").exists() or (source / "grpo/policy").exists()):
            sys.exit(f"{source} is not a trained run (missing {', '.join(missing) or 'a policy'}): run `aigq demo` "
                     "first, or pass --source")
        for c in COPY:
            if (source / c).exists():
                shutil.copytree(source / c, run / c, symlinks=True)
    return run


def mlflow_runs(tracking_root: Path, since_ms: int) -> list:
    from mlflow import MlflowClient

    db = tracking_root / "mlflow.db"
    if not db.exists():
        return []
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exps = [e.experiment_id for e in client.search_experiments()]
    return [r for r in client.search_runs(exps, max_results=1000) if (r.info.start_time or 0) >= since_ms]


def main() -> int:
    a = _args()
    work = a.work.resolve()
    run_dir = prepare(work, a.source.resolve(), not a.no_copy)
    tracking = work / "mlflow"
    (serve_port,) = free_ports(1)
    overrides = [f"run.output_dir={run_dir}", f"tracking.root={tracking}", "tracking.experiment=aigq-job",
                 f"serve.port={serve_port}", *a.overrides]
    entry = shlex.split(a.entrypoint.format(days=a.days, config=a.config)) + overrides
    cpus = a.num_cpus or head_cpus(REPO / a.config, a.overrides)
    print(f"entrypoint: {shlex.join(entry)}\nhead: {cpus} logical CPUs; work folder {work}", flush=True)
    t0 = time.perf_counter()
    since = int(time.time() * 1000)
    try:
        with local_head(num_cpus=cpus) as head:
            print(f"ray start --head: dashboard {head.dashboard}, GCS {head.address}, up in {head.started_s:.1f} s",
                  flush=True)
            print(f"$ ray job submit --address {head.dashboard} --runtime-env {a.runtime_env.relative_to(REPO)} -- "
                  f"{shlex.join(entry)}", flush=True)
            res = submit(head, entry, a.runtime_env, REPO, timeout_s=a.timeout,
                         on_line=lambda line: print(f"  | {line}", flush=True))
    except JobError as exc:
        print(f"error: {exc}")
        return 1
    total = time.perf_counter() - t0
    runs = mlflow_runs(tracking, since)
    stages: dict[str, int] = {}
    for r in runs:
        stage = r.data.tags.get("aigq.stage", "?")
        stages[stage] = stages.get(stage, 0) + 1
    figures = {"state": res.status, "submission_id": res.submission_id, "head_start_s": round(head.started_s, 1),
               "job_wall_s": round(res.wall_s, 1), "job_run_s": round(res.run_s, 1) if res.run_s else None,
               "total_s": round(total, 1), "mlflow_runs": len(runs), "runs_by_stage": stages,
               "entrypoint": shlex.join(entry), "num_cpus": cpus}
    loop = [r for r in runs if r.data.tags.get("aigq.stage") == "loop"]
    if loop:
        figures["loop_metrics"] = {k: round(v, 4) for k, v in loop[0].data.metrics.items()}
    (work / "job_result.json").write_text(json.dumps(figures, indent=2))
    print("\n".join(f"{k:>14}: {v}" for k, v in figures.items()))
    if res.status != "SUCCEEDED":
        print(f"job message: {res.message[-2000:]}")
    return 0 if res.status == "SUCCEEDED" and runs else 1


if __name__ == "__main__":
    sys.exit(main())
