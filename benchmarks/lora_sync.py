"""Rollout with LoRA adapters (issue 18 step 2): vLLM's native LoRA vs merged weights synced by the blob route,
measured in one run on one model folder (shared 2-core machines are noisy: compare within a run).

The learner side is the policy folder with LoRA adapters on every decoder linear (``learner.lora``, rank 8) whose B
matrices are set to small random values (a trained adapter; B = 0 would make both routes trivially exact).

* **merged** (what IL-GRPO does, ``learner/efficient.py``): ``sync_state`` (W + B·A·alpha/r per layer) →
  safetensors blob → the vLLM worker's in-place ``reload_weights``; generation runs on plain weights.
* **native**: ``peft`` ``save_pretrained`` of the adapter → a new ``LoRARequest`` loaded by the engine's
  ``add_lora`` (the previous one removed); vLLM is started with ``enable_lora`` and applies A and B per token.

Per route: seconds per update (sync), sampled tokens/s (G = 8, temperature 1.0, top-k 100) and greedy output
identical to transformers' forward of the same learner model (the exactness check; transformers runs the merged
weights). Usage::

    .venv/bin/python benchmarks/lora_sync.py --model outputs/smollm2/sft/policy
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def _prompts(n: int) -> list[str]:
    import polars as pl

    for f in ("outputs/smollm2/samples/test.parquet", "outputs/tiny/samples/test.parquet"):
        if Path(f).is_file():
            return pl.read_parquet(f, columns=["prompt"]).head(n)["prompt"].to_list()
    raise SystemExit("no test samples: run `aigq demo -c configs/smollm2_cpu.yaml` (or `make demo`) first")


def _learner(model_dir: Path, rank: int, seed: int):
    import torch
    from transformers import AutoModelForCausalLM

    from aigq.config import LearnerConfig
    from learner import efficient as E

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32, local_files_only=True)
    lc = LearnerConfig(lora={"enabled": True, "rank": rank, "alpha": 2.0 * rank}, special_rows=False)
    eff = E.prepare(model, lc, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model, eff


def _tokens_per_s(llm, prompts, params, lora=None) -> tuple[float, list]:
    t0 = time.perf_counter()
    out = llm.generate(prompts, params, use_tqdm=False, lora_request=lora)
    secs = time.perf_counter() - t0
    return sum(len(c.token_ids) for o in out for c in o.outputs) / secs, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--updates", type=int, default=3)
    ap.add_argument("--rank", type=int, default=8)
    args = ap.parse_args()

    import torch

    from aigq.data import prompt as P
    from learner import efficient as E
    from rollout import weight_sync
    from rollout.vllm_engine import VLLMEngine

    torch.set_num_threads(2)
    prompts = [P.model_input(p) for p in _prompts(args.prompts)]
    model, eff = _learner(args.model, args.rank, seed=0)
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    sample = SamplingParams(n=8, temperature=1.0, top_k=100, max_tokens=args.max_tokens, seed=None)
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=args.max_tokens, skip_special_tokens=False)
    rows = {}
    # transformers' greedy on the learner model itself (adapters unmerged): the reference both routes must match
    tok = __import__("transformers").AutoTokenizer.from_pretrained(str(args.model), local_files_only=True)
    ref = []
    with torch.no_grad():
        for p in prompts[:8]:
            ids = tok(p, return_tensors="pt").input_ids
            out = model.generate(ids, max_new_tokens=args.max_tokens, do_sample=False, pad_token_id=tok.eos_token_id)
            ref.append(out[0, ids.shape[1]:].tolist())

    def same(outs) -> float:
        hits = 0
        for r, o in zip(ref, outs[:8], strict=True):
            ids = list(o.outputs[0].token_ids)
            hits += ids[: len(r)] == r[: len(ids)] and abs(len(ids) - len(r)) <= 1
        return hits / len(ref)

    # merged route
    t0 = time.perf_counter()
    eng = VLLMEngine(args.model, dtype="float32", max_model_len=1024)
    start_merged = time.perf_counter() - t0
    syncs = []
    for v in range(1, args.updates + 1):
        t0 = time.perf_counter()
        blob = weight_sync.serialise(E.sync_state(model))
        eng.load_weights(blob, v)
        syncs.append(time.perf_counter() - t0)
    _tokens_per_s(eng.llm, prompts[:2], sample)  # warm-up
    tps, _ = _tokens_per_s(eng.llm, prompts, sample)
    _, g_out = _tokens_per_s(eng.llm, prompts[:8], greedy)
    rows["merged"] = dict(start=start_merged, sync=sorted(syncs)[len(syncs) // 2], tps=tps, exact=same(g_out),
                          mib=len(blob) / 2**20)
    eng.close()
    del eng

    # native LoRA route: the base folder is the policy before the adapters (the merged weights of B = 0 are the base)
    t0 = time.perf_counter()
    eng = VLLMEngine(args.model, dtype="float32", max_model_len=1024, enable_lora=True, max_lora_rank=args.rank,
                     max_loras=1)
    start_native = time.perf_counter() - t0
    syncs, tmp = [], Path(tempfile.mkdtemp(prefix="aigq-lora-"))
    lora = None
    for v in range(1, args.updates + 1):
        t0 = time.perf_counter()
        eff.peft_model.save_pretrained(str(tmp / f"v{v}"))
        lora = LoRARequest(f"policy-v{v}", v, str(tmp / f"v{v}"))
        eng.llm.llm_engine.add_lora(lora)  # load the new adapter now (else the next generate would)
        if v > 1:
            eng.llm.llm_engine.remove_lora(v - 1)
        syncs.append(time.perf_counter() - t0)
    _tokens_per_s(eng.llm, prompts[:2], sample, lora)  # warm-up
    tps, _ = _tokens_per_s(eng.llm, prompts, sample, lora)
    _, g_out = _tokens_per_s(eng.llm, prompts[:8], greedy, lora)
    mib = sum(f.stat().st_size for f in (tmp / f"v{args.updates}").rglob("*") if f.is_file()) / 2**20
    rows["native"] = dict(start=start_native, sync=sorted(syncs)[len(syncs) // 2], tps=tps, exact=same(g_out), mib=mib)
    eng.close()

    print(f"model {args.model}, LoRA r={args.rank} on {len(eff.lora['targets'])} linear kinds, "
          f"{len(prompts)} prompts × G 8 × {args.max_tokens} tokens")
    print("| route | engine start s | sync s / update | update MiB | sampled tokens/s | greedy = transformers |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['start']:.1f} | {r['sync']:.2f} | {r['mib']:.1f} | {r['tps']:.0f} | "
              f"{r['exact']:.0%} of 8 |")


if __name__ == "__main__":
    main()
