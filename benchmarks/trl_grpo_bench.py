"""TRL's ``GRPOTrainer`` on the same model, prompts, G and max tokens as ``aigq grpo``: seconds per iteration
(one generation round + one update) to set beside the IL-GRPO driver's ``seconds/*`` figures.

TRL pins its own versions, so it runs from a separate environment (``make bench-trl`` creates ``.venv-trl`` with
torch 2.13.0 CPU, transformers 5.19.0, trl, and aigq without dependencies for the reward code). The reward is the
same composition ``aigq grpo`` uses (CTR model + rule rewards, ``RewardComposer``), summed per list as plain GRPO
does (mean query reward + sequence reward), computed in-process.

    .venv-trl/bin/python benchmarks/trl_grpo_bench.py --policy outputs/tiny/sft/policy --ctr outputs/tiny/ctr/day-031
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", type=Path, required=True)
    ap.add_argument("--ctr", type=Path, required=True)
    ap.add_argument("--samples", type=Path, default=Path("outputs/tiny/samples/direct.parquet"))
    ap.add_argument("--prompts", type=int, default=8, help="prompts per iteration")
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()

    import numpy as np
    import polars as pl
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from aigq.config import RewardsConfig
    from aigq.data import prompt as P
    from aigq.rewards.compose import RewardComposer, RewardGroup
    from aigq.rewards.ctr import CTRScorer

    df = pl.read_parquet(args.samples, columns=["prompt", "target"]).head(args.prompts * args.steps)
    data = Dataset.from_dict({"prompt": [P.model_input(p) for p in df["prompt"]],
                              "reference": [list(t) for t in df["target"]], "raw": df["prompt"].to_list()})
    composer = RewardComposer(RewardsConfig(similarity="ngram"), CTRScorer.load(args.ctr).score, 10)

    def reward(prompts, completions, reference, raw, **_):
        groups = [RewardGroup(i, [c], list(ref), prompt=p) for i, (c, ref, p) in
                  enumerate(zip(completions, reference, raw, strict=True))]
        out = []
        for g in composer.score_groups_safe(groups):
            lr = g.lists[0]
            out.append((float(np.mean(lr.query["total"])) if lr.query["total"] else 0.0) + lr.seq["total"])
        return out

    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(args.policy, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(args.policy, local_files_only=True, dtype=torch.float32)
    cfg = GRPOConfig(output_dir="/tmp/aigq-trl-bench", num_generations=args.group,
                     per_device_train_batch_size=args.prompts * args.group, max_completion_length=args.max_tokens,
                     temperature=1.0, top_k=100, learning_rate=1e-4, beta=0.0, max_steps=args.steps, use_cpu=True,
                     logging_steps=1, report_to="none", save_strategy="no", bf16=False, seed=0)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=data, processing_class=tok)
    t0 = time.perf_counter()
    trainer.train()
    secs = time.perf_counter() - t0
    print(json.dumps({"trl_seconds_per_iteration": secs / args.steps, "steps": args.steps, "prompts": args.prompts,
                      "group": args.group, "max_tokens": args.max_tokens}))


if __name__ == "__main__":
    main()
