"""IL-GRPO seconds per iteration beside TRL's ``GRPOTrainer`` (issue 21 item 1), every row in one run on one box.

Rows (same policy, CTR model, prompts, G, max tokens and iterations; each ``aigq`` row in a fresh process and a
fresh private Ray, from a copy of a trained run so nothing of it is overwritten):

- ``two-pass``: the learner's separate old-policy forward (``grpo.fuse_old_pass=false``), 2 DDP workers × 1 thread;
- ``fused``: the old log-probs from the training forward itself (the default), 2 workers × 1 thread;
- ``fused, 1 worker × 2 threads``: one learner process with both cores (no DDP all-reduce);
- ``fused + one-step off-policy``: iteration i+1 generated while iteration i is scored and trained
  (``grpo.one_step_off_policy=true``; ``ahead wait`` is what is left of that generation after training);
- ``… (1 worker x 2 threads)``, ``+ micro-batch 64``: the same on one learner process, and with the whole batch in one
  forward (TRL's ``per_device_train_batch_size`` is the whole batch too);
- ``+ k3 KL 0.2``: ``configs/tiny_cpu.yaml``'s KL to the starting policy (a frozen reference forward per round);
  every other row runs without it (``grpo.kl_coef=0``), as TRL runs here (``beta=0.0``, TRL's default);
- ``TRL``: ``benchmarks/trl_grpo_bench.py`` in ``.venv-trl`` (``make bench-trl``'s environment).

    .venv/bin/python benchmarks/grpo_vs_trl.py --source outputs/tiny      # after `make demo` and `make bench-trl`

Prints per row the mean seconds per iteration over all iterations (as TRL's figure: its ``train()`` wall over its
steps, first step included) and over iterations 2.. (the first one warms vLLM and the learner up), the phase means
of iterations 2.. (generate, score, train, ahead wait, sync) and the ratio of the all-iterations means to TRL's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROWS = {
    "two-pass (2 workers x 1 thread)": ["grpo.fuse_old_pass=false"],
    "fused (2 workers x 1 thread)": [],
    "fused (1 worker x 2 threads)": ["learner.num_workers=1", "learner.cpus_per_worker=2"],
    "fused + one-step off-policy (2 workers x 1 thread)": ["grpo.one_step_off_policy=true"],
    "fused + off-policy (1 worker x 2 threads)": ["grpo.one_step_off_policy=true", "learner.num_workers=1",
                                                  "learner.cpus_per_worker=2"],
    "fused + off-policy (1 x 2) + micro-batch 64": ["grpo.one_step_off_policy=true", "learner.num_workers=1",
                                                   "learner.cpus_per_worker=2", "grpo.micro_batch=64"],
    "fused (2 x 1) + k3 KL 0.2 (tiny_cpu.yaml's)": ["grpo.kl_coef=0.2"],
}
# What runs inside each row's own process: IL-GRPO on a fresh private Ray, figures as one JSON line.
CHILD = """
import json, sys
from aigq.config import load_config
from aigq.pipeline.train import run_grpo
from aigq.tracking import Tracker
cfg = load_config(sys.argv[1], sys.argv[2:])
out = run_grpo(cfg, Tracker(cfg.tracking))
print("FIGURES " + json.dumps({"history": out["history"]}))
"""


def _run_row(name: str, extra: list[str], base: list[str], config: Path, work: Path) -> dict:
    shutil.rmtree(work / "grpo", ignore_errors=True)  # grpo.resume=latest must not resume the previous row
    cmd = [sys.executable, "-c", CHILD, str(config), *base, *extra]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600)
    line = next((x for x in res.stdout.splitlines() if x.startswith("FIGURES ")), None)
    if res.returncode != 0 or line is None:
        raise SystemExit(f"{name}: exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    history = json.loads(line[len("FIGURES "):])["history"]
    phases = [k for k in history[0] if k.startswith("seconds/")]
    total = [sum(h[k] for k in phases) for h in history]
    later = total[1:] or total
    return {"row": name, "all": sum(total) / len(total), "from 2": sum(later) / len(later),
            **{k.split("/", 1)[1]: sum(h[k] for h in history[1:] or history) / len(later) for k in phases}}


def _run_trl(args, work: Path) -> dict:
    python = REPO / ".venv-trl" / "bin" / "python"
    if not python.is_file():
        raise SystemExit("no .venv-trl: run `make .venv-trl/.installed` (or `make bench-trl`) first")
    ctr = sorted((work / "ctr").glob("day-*"))[-1]
    cmd = [str(python), str(REPO / "benchmarks" / "trl_grpo_bench.py"), "--policy", str(work / "sft" / "policy"),
           "--ctr", str(ctr), "--samples", str(work / "samples" / "direct.parquet"), "--prompts", str(args.prompts),
           "--group", str(args.group), "--max-tokens", str(args.max_tokens), "--steps", str(args.iterations)]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600)
    line = next((x for x in res.stdout.splitlines() if "trl_seconds_per_iteration" in x), None)
    if res.returncode != 0 or line is None:
        raise SystemExit(f"TRL: exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    secs = json.loads(line)["trl_seconds_per_iteration"]
    return {"row": "TRL GRPOTrainer (1 process, 2 threads)", "all": secs, "from 2": None}


def _mean_row(rs: list[dict]) -> dict:
    return {k: (rs[0][k] if isinstance(rs[0][k], str) or rs[0][k] is None else sum(r[k] for r in rs) / len(rs))
            for k in rs[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, default=REPO / "outputs" / "tiny",
                    help="a trained run: world, samples, sft/policy, ctr/day-*")
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "tiny_cpu.yaml")
    ap.add_argument("--work", type=Path, default=REPO / "benchmarks" / "_work" / "grpo")
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of the aigq rows")
    ap.add_argument("--no-trl", action="store_true")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds over the rows; figures are means")
    args = ap.parse_args()

    names = [name for name in args.rows.split(",") if name]
    if unknown := [n for n in names if n not in ROWS]:
        raise SystemExit(f"unknown --rows {unknown}; known: {list(ROWS)}")
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    for part in ("world", "samples", "sft", "ctr"):
        shutil.copytree(args.source / part, work / part, symlinks=True)
    base = [f"run.output_dir={work}", f"tracking.root={work / 'mlflow'}", "tracking.experiment=bench-grpo",
            "rollout.engine=vllm", f"grpo.iterations={args.iterations}", "grpo.mini_batches=1",
            f"grpo.prompts_per_iteration={args.prompts}", f"grpo.group_size={args.group}",
            f"rollout.max_tokens={args.max_tokens}", "grpo.eval_every=1000", "grpo.checkpoint_every=1000",
            "grpo.kl_coef=0"]  # TRL's beta=0.0: no reference model (the KL row puts it back)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    trls: list[dict] = []
    for _ in range(args.repeats):  # interleaved (A B C TRL A B C TRL …): a shared box's drifting load hits every row
        for name in names:
            runs[name].append(_run_row(name, ROWS[name], base, args.config, work))
        if not args.no_trl:
            trls.append(_run_trl(args, work))
    rows = [_mean_row(rs) for rs in runs.values()]
    trl = _mean_row(trls) if trls else None
    for name, rs in runs.items():
        print(f"{name}: s/iter (all) per repeat " + ", ".join(f"{r['all']:.2f}" for r in rs))
    if trls:
        print("TRL: s/iter per repeat " + ", ".join(f"{r['all']:.2f}" for r in trls))
    print(f"\n{args.prompts} prompts x G {args.group}, {args.max_tokens} new tokens, {args.iterations} iterations, "
          f"{args.repeats} interleaved repeats; seconds per iteration (phases: mean of iterations 2..)")
    print("| row | s/iter (all) | s/iter (2..) | generate | score | train | ahead wait | sync | x TRL (all) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['all'] / trl['all']:.2f}" if trl else "-"
        print(f"| {r['row']} | {r['all']:.2f} | {r['from 2']:.2f} | {r.get('generate', 0):.2f} | "
              f"{r.get('score', 0):.2f} | {r.get('train', 0):.2f} | {r.get('generate_ahead_wait', 0):.2f} | "
              f"{r.get('sync', 0):.2f} | {ratio} |")
    if trl:
        print(f"| {trl['row']} | {trl['all']:.2f} | - | - | - | - | - | - | 1.00 |")


if __name__ == "__main__":
    main()
