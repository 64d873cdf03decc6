"""IL-SFT throughput on the LearnerWorker DDP group: samples/s and tokens/s over the timed train steps (Ray start,
model load, evaluation and checkpointing excluded). Default: SmolLM2-135M-Instruct (``configs/smollm2_cpu.yaml``;
``make smollm2`` first). Builds that config's world and samples when missing. Usage::

    .venv/bin/python benchmarks/sft_throughput.py                        # SmolLM2, 6 steps, prints a row
    .venv/bin/python benchmarks/sft_throughput.py --record               # … and appends it to RESULTS.md
    .venv/bin/python benchmarks/sft_throughput.py -c configs/tiny_cpu.yaml --steps 20 learner.num_workers=1
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
from pathlib import Path

from aigq.config import load_config
from aigq.tracking import Tracker

SECTION = "## IL-SFT throughput (learner group)"
HEADER = ("| date | commit | model | workers × threads | global batch | timed steps | samples/s | tokens/s | command |\n"
          "|---|---|---|---|---|---|---|---|---|")


def record(row: str, results: Path) -> None:
    """Append ``row`` to this benchmark's table in RESULTS.md (created at the end when missing); others' rows and
    sections are left as they are."""
    text = results.read_text() if results.is_file() else "# Benchmark results\n"
    if SECTION not in text:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\nCommand and config per row; `samples/s` = optimizer steps × " \
            "global batch / seconds inside train steps (first step included).\n\n" + HEADER + "\n"
    head, _, rest = text.partition(SECTION)
    lines = rest.split("\n")
    last = max(i for i, ln in enumerate(lines) if ln.startswith("|"))
    lines.insert(last + 1, row)
    results.write_text(head + SECTION + "\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", default="configs/smollm2_cpu.yaml")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--record", action="store_true", help="append the row to benchmarks/RESULTS.md")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    overrides = [*args.overrides, f"sft.max_steps={args.steps}", "sft.sample_prompts=0", "sft.register_as=null",
                 "sft.eval_every=1000000", "sft.log_checkpoint=false", "tracking.enabled=false"]
    cfg = load_config(args.config, overrides)
    tracker = Tracker(cfg.tracking)
    if not (cfg.samples_dir() / "meta.json").is_file():
        from aigq import pipeline

        print(f"building the world and samples under {cfg.run.output_dir}", flush=True)
        pipeline.simulate(cfg, tracker)
        pipeline.build_samples(cfg, tracker)

    from aigq.actors.sft import run_sft

    fig = run_sft(cfg, tracker, say=lambda m: print(m, flush=True))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lc = cfg.learner
    cmd = "`.venv/bin/python benchmarks/sft_throughput.py " + " ".join(
        [f"-c {args.config}", f"--steps {args.steps}", *args.overrides]).strip() + "`"
    row = (f"| {dt.date.today()} | {commit} | {cfg.model.source} ({cfg.model.dtype}) | {lc.num_workers} × "
           f"{lc.cpus_per_worker} | {cfg.sft.global_batch} | {fig['steps_trained']} | {fig['samples_per_s']:.2f} | "
           f"{fig['tokens_per_s']:.0f} | {cmd} |")
    print(f"eval loss {fig.get('eval_loss_first', float('nan')):.4f} → {fig.get('eval_loss_final', float('nan')):.4f}"
          f", weights identical on all ranks: {fig.get('weights_identical')}, {os.cpu_count()} CPUs")
    print(HEADER)
    print(row)
    if args.record:
        record(row, Path(__file__).with_name("RESULTS.md"))


if __name__ == "__main__":
    main()
