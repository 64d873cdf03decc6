"""A real ``ray job submit --runtime-env configs/runtime_env.yaml`` against a private ``ray start --head``: a cheap
AIGQ command runs as a job, writes its outputs and MLflow run, and a stage's ``ensure_ray`` inside the job joins
the job's cluster (the daily loop as a job is ``benchmarks/job_submit.py``)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from aigq.ray_job import _answering, local_head, submit

REPO = Path(__file__).resolve().parents[1]

# Inside the job: which interpreter and which copy of every package runs (in the entrypoint and in a Ray worker), and
# where ensure_ray (every Ray stage's entry) goes.
PACKAGES = ("aigq", "actors", "rollout", "learner", "serve_app")
CHECK = ("import os, sys, importlib, ray, aigq; from aigq.config import load_config; "
         "from aigq.ray_boot import ensure_ray; ensure_ray(load_config(None, [])); "
         f"P = {PACKAGES!r}; files = lambda: ','.join(importlib.import_module(p).__file__ for p in P); "
         "print('CHECK', sys.executable, files(), ray.get(ray.remote(files).remote()), os.environ['RAY_ADDRESS'], "
         "ray.get_runtime_context().gcs_address, ray.cluster_resources()['CPU'], len(ray.nodes()))")


@pytest.mark.slow
def test_ray_job_submit_runs_an_aigq_command_on_a_private_head(tmp_path, monkeypatch):
    # mlflow.set_tracking_uri (any earlier Tracker in this test process) exports $MLFLOW_TRACKING_URI; the head and
    # its job would inherit it and log elsewhere than tracking.root
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out, ml = tmp_path / "out", tmp_path / "ml"
    simulate = ["aigq", "simulate", "-c", "configs/tiny_cpu.yaml", "world.users=50", "world.days=6",
                f"run.output_dir={out}", f"tracking.root={ml}", "tracking.experiment=job"]
    entry = ["bash", "-c", f"{shlex.join(simulate)} && python -c {shlex.quote(CHECK)}"]
    with local_head(num_cpus=3) as head:
        res = submit(head, entry, REPO / "configs" / "runtime_env.yaml", REPO, timeout_s=300)
    assert res.status == "SUCCEEDED" and res.returncode == 0, res.logs[-4000:]
    assert res.run_s and res.run_s > 0

    # the command's outputs (absolute paths, outside the job's throw-away working_dir copy) and its MLflow run
    assert (out / "world" / "meta.json").is_file() and any((out / "world" / "events").iterdir())
    client = MlflowClient(tracking_uri=f"sqlite:///{ml / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("job").experiment_id])
    assert [r.data.tags["aigq.stage"] for r in runs] == ["simulate"]
    assert runs[0].data.params["world.users"] == "50" and runs[0].data.metrics["world.users"] == 50

    # the job ran this .venv's interpreter on the uploaded copy of the code, and ensure_ray joined this head
    # (same GCS, the head's 3 CPUs, one node) instead of starting a Ray of its own
    _, exe, files, worker_files, ray_address, gcs, cpus, nodes = next(
        line for line in res.logs.splitlines() if line.startswith("CHECK ")).split()
    assert Path(exe).parent == Path(sys.executable).parent
    for where in (files, worker_files):  # the entrypoint and a Ray worker of the job import the shipped copy
        paths = [Path(f) for f in where.split(",")]
        assert [p.parent.name for p in paths] == list(PACKAGES), paths
        assert all(str(p).startswith(str(head.temp_dir)) and "working_dir_files" in str(p) for p in paths), paths
        assert all(REPO not in p.parents for p in paths), paths
    assert gcs == ray_address and gcs.endswith(f":{head.ports['--port']}")
    assert float(cpus) == 3 and nodes == "1"

    # the head and everything it started are gone
    assert head.proc.poll() is not None and not head.temp_dir.exists()
    assert not _answering(f"{head.dashboard}/api/version")
