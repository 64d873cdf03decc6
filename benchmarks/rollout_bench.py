"""Rollout and weight-sync figures, each measured in one run (shared 2-core machines are noisy: compare within a run).

* rollout tokens/s: the vLLM engine vs the transformers engine on the same model folder, prompts and sampling
  (G = 8, temperature 1.0, top-k 100, ``--max-tokens``), after one warm-up call;
* weight sync: seconds to serialise the policy (safetensors blob) and load it into each engine in place.

Usage (models: the IL-SFT tiny policy and/or the converted SmolLM2, see ``make smollm2``)::

    .venv/bin/python benchmarks/rollout_bench.py --model outputs/tiny/sft/policy --model .aigq/models/smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def prompts(n: int) -> list[str]:
    """Sample prompts from the tiny world when present, else a fixed synthetic prompt set."""
    f = Path("outputs/tiny/samples/test.parquet")
    if f.is_file():
        import polars as pl

        return pl.read_parquet(f, columns=["prompt"]).head(n)["prompt"].to_list()
    from aigq.config import SamplesConfig
    from aigq.data import prompt as P

    beh = [(1, "search", "velvet sofa"), (2, "click", "blue velvet sofa by Latitude"), (3, "search", "oak desk")]
    return [P.format_prompt({"gender": "Female", "age": 30 + i}, beh, SamplesConfig()) for i in range(n)]


def bench(model: Path, n_prompts: int, max_tokens: int, reps: int) -> list[dict]:
    import torch

    from rollout import weight_sync
    from rollout.engine import Sampling, make_engine

    ps = prompts(n_prompts)
    s = Sampling(n=8, temperature=1.0, top_k=100, max_tokens=max_tokens, seed=0)
    rows = []
    hf_model = None
    for kind in ("transformers", "vllm"):
        t0 = time.perf_counter()
        eng = make_engine(kind, model)
        start_s = time.perf_counter() - t0
        eng.generate(ps[:2], s)  # warm-up
        tokens, secs = 0, 0.0
        for _ in range(reps):
            t0 = time.perf_counter()
            out = eng.generate(ps, s)
            secs += time.perf_counter() - t0
            tokens += sum(len(r.token_ids) for g in out for r in g)
        if hf_model is None:
            hf_model = eng.model  # the transformers engine's model: the "learner" side of the sync
        t0 = time.perf_counter()
        blob = weight_sync.serialise(hf_model)
        ser_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        eng.load_weights(blob, 1)
        load_s = time.perf_counter() - t0
        rows.append({"model": model.name, "engine": kind, "start_s": start_s, "tokens_per_s": tokens / secs,
                     "tokens": tokens, "serialise_s": ser_s, "load_s": load_s, "blob_mb": len(blob) / 2**20,
                     "threads": torch.get_num_threads()})
        eng.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, action="append", required=True)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    rows = [r for m in args.model for r in bench(m, args.prompts, args.max_tokens, args.reps)]
    print("| model | engine | engine start s | rollout tokens/s | sync: serialise s | sync: load s | blob MiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['engine']} | {r['start_s']:.1f} | {r['tokens_per_s']:.0f} | "
              f"{r['serialise_s']:.3f} | {r['load_s']:.3f} | {r['blob_mb']:.1f} |")
    by = {(r["model"], r["engine"]): r["tokens_per_s"] for r in rows}
    for m in args.model:
        if (m.name, "vllm") in by:
            print(f"{m.name}: vLLM / transformers tokens/s = {by[(m.name, 'vllm')] / by[(m.name, 'transformers')]:.2f}×")


if __name__ == "__main__":
    main()
