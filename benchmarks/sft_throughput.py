"""IL-SFT throughput on the LearnerWorker DDP group: samples/s and tokens/s over the timed train steps (Ray start,
model load, evaluation and checkpointing excluded). Default: SmolLM2-135M-Instruct (``configs/smollm2_cpu.yaml``;
``make smollm2`` first). Builds that config's world and samples when missing. Usage::

    .venv/bin/python benchmarks/sft_throughput.py                        # SmolLM2, 6 steps, prints a row
    .venv/bin/python benchmarks/sft_throughput.py --record               # … and appends it to RESULTS.md
    .venv/bin/python benchmarks/sft_throughput.py -c configs/tiny_cpu.yaml --steps 20 learner.num_workers=1
    .venv/bin/python benchmarks/sft_throughput.py --compare --steps 4   # issue 18: full vs LoRA vs bf16 vs short
                                                                        # prompts vs frozen layers, ratios in one run

``--compare`` trains the same config once per row of ``COMPARE`` (each row: its overrides; the short-prompt rows
build their samples with ``samples.max_prompt_tokens`` from the first row's world into their own run folder) and
prints samples/s and each row's ratio to the first (full fine-tune, float32): from the median and the fastest of
steps 2..N (the first step's warm-up excluded; on a shared box the fastest step is the nearest to an idle one)
and over all steps.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import time
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


# issue 18: (label, overrides); every row starts from PLAIN (the config's own learner / prompt-budget settings off:
# configs/smollm2_cpu.yaml itself turns LoRA, bf16 and the 160-token budget on) and gets its own run folder per
# prompt budget (its own samples, built from the base folder's world)
PLAIN = ["learner.lora.enabled=false", "learner.bf16=false", "learner.freeze_layers=0", "learner.special_rows=true",
         "samples.max_prompt_tokens=null"]
LORA = ["learner.lora.enabled=true", "learner.lora.rank=8", "learner.lora.target_modules=all-linear"]
COMPARE: list[tuple[str, list[str]]] = [
    ("full fine-tune, float32", []),
    ("LoRA r=8, all linear", LORA),
    ("LoRA + bf16", [*LORA, "learner.bf16=true"]),
    ("LoRA + bf16 + 160-token prompts", [*LORA, "learner.bf16=true", "samples.max_prompt_tokens=160"]),
    ("lower 20 layers + embeddings frozen + bf16 + 160 tokens",
     ["learner.freeze_layers=20", "learner.bf16=true", "samples.max_prompt_tokens=160"]),
    ("… the same, Eq. 1 rows frozen too (special_rows=false)",
     ["learner.freeze_layers=20", "learner.special_rows=false", "learner.bf16=true", "samples.max_prompt_tokens=160"]),
    # adapters on the upper 10 layers only, rows frozen: the backward ends at layer 20 and AdamW holds ~0.8M values
    ("LoRA on the upper 10 layers + bf16 + 160 tokens, Eq. 1 rows frozen",
     [*LORA, "learner.freeze_layers=20", "learner.special_rows=false", "learner.bf16=true",
      "samples.max_prompt_tokens=160"]),
]


def _ensure_samples(cfg, tracker, world_from=None) -> None:
    """Build the world (or reuse ``world_from``) and the samples of ``cfg`` when its samples folder is missing."""
    if (cfg.samples_dir() / "meta.json").is_file():
        return
    from aigq import pipeline

    print(f"building samples under {cfg.run.output_dir}", flush=True)
    if world_from is None:
        pipeline.simulate(cfg, tracker)
    pipeline.build_samples(cfg, tracker, world=world_from)


def _base_overrides(steps: int) -> list[str]:
    return [f"sft.max_steps={steps}", "sft.sample_prompts=0", "sft.register_as=null", "sft.eval_every=1000000",
            "sft.log_checkpoint=false", "tracking.enabled=false"]


def compare(args) -> None:
    """Every ``COMPARE`` row on the same config, one after the other, in one process: samples/s and ratios."""
    from actors.sft import run_sft

    base = load_config(args.config, [*args.overrides, *_base_overrides(args.steps)])
    tracker = Tracker(base.tracking)
    _ensure_samples(base, tracker)
    rows = []
    picked = [COMPARE[int(i)] for i in args.rows.split(",")] if args.rows else COMPARE
    for label, extra in picked:
        budget = [o.split("=")[1] for o in [*PLAIN, *extra] if o.startswith("samples.max_prompt_tokens=")][-1]
        out = [f"run.output_dir={base.run.output_dir}-p{budget}"]
        cfg = load_config(args.config, [*args.overrides, *PLAIN, *extra, *out, *_base_overrides(args.steps)])
        _ensure_samples(cfg, tracker, world_from=base.world_dir())
        print(f"\n=== {label}", flush=True)
        marks: list[float] = []  # end of every step: the gaps are steps 2..N alone (no eval, no checkpoint)
        fig = run_sft(cfg, tracker, say=lambda m: print("  " + m, flush=True),
                      on_step=lambda _s, _n, marks=marks: marks.append(time.perf_counter()))
        gaps = sorted(b - a for a, b in zip(marks, marks[1:], strict=False))
        fig["median_step_s"] = gaps[len(gaps) // 2] if gaps else float("nan")
        fig["best_step_s"] = gaps[0] if gaps else float("nan")
        rows.append((label, extra, fig, cfg.sft.global_batch, os.getloadavg()[0]))
        print(f"  {fig['samples_per_s']:.3f} samples/s over all {fig['steps_trained']} steps "
              f"({fig['train_seconds']:.1f} s); steps 2..: median {fig['median_step_s']:.2f} s, best "
              f"{fig['best_step_s']:.2f} s; load {rows[-1][4]:.1f}; eval loss "
              f"{fig.get('eval_loss_first', float('nan')):.4f} → {fig.get('eval_loss_final', float('nan')):.4f}",
              flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lc = base.learner
    print(f"\n{dt.date.today()} {commit}, {base.model.source}, {lc.num_workers} workers × {lc.cpus_per_worker} thread, "
          f"global batch {base.sft.global_batch} (micro {base.sft.micro_batch}), {args.steps} steps per row, "
          f"{os.cpu_count()} CPUs. samples/s: median = global batch / median step time of steps 2..{args.steps}; "
          "best = the fastest of those steps; all = every step incl. the first (the older table's figure)\n")
    print("| row | trainable params | precision | input tokens / sample | samples/s (median) | × full | "
          "samples/s (best) | × full | samples/s (all) | eval loss first → last | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    med = [b / r[2]["median_step_s"] for r in rows for b in [r[3]]]
    best = [b / r[2]["best_step_s"] for r in rows for b in [r[3]]]
    for (label, _extra, fig, _b, load), m, bs in zip(rows, med, best, strict=True):
        tok = fig["tokens_per_s"] / fig["samples_per_s"] if fig["samples_per_s"] else 0.0
        print(f"| {label} | {fig.get('trainable_params', 0):,} | {fig.get('precision', '?')} | {tok:.0f} | "
              f"{m:.3f} | ×{m / med[0]:.2f} | {bs:.3f} | ×{bs / best[0]:.2f} | {fig['samples_per_s']:.3f} | "
              f"{fig.get('eval_loss_first', float('nan')):.3f} → {fig.get('eval_loss_final', float('nan')):.3f} | "
              f"{load:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", default="configs/smollm2_cpu.yaml")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--record", action="store_true", help="append the row to benchmarks/RESULTS.md")
    ap.add_argument("--compare", action="store_true", help="issue 18: every COMPARE row, ratios in one run")
    ap.add_argument("--rows", default=None, help="--compare: only these COMPARE rows (0-based, comma-separated)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if args.compare:
        compare(args)
        return
    overrides = [*args.overrides, *_base_overrides(args.steps)]
    cfg = load_config(args.config, overrides)
    tracker = Tracker(cfg.tracking)
    _ensure_samples(cfg, tracker)

    from actors.sft import run_sft

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
