"""transformers rollout engine: ``generate`` with sampling, log-probabilities from the raw logits. The fallback where
vLLM is not installed and the reference the vLLM engine is checked against."""

from __future__ import annotations

from pathlib import Path

import torch

from aigq.data import prompt as P
from rollout import weight_sync
from rollout.engine import Rollout, Sampling, make_rollout


class HFEngine:
    def __init__(self, model_dir: str | Path, variant: str = "direct", dtype: str = "float32",
                 batch_rows: int = 64, threads: int | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.variant, self.batch_rows, self.policy_version = variant, batch_rows, 0
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=getattr(torch, dtype),
                                                          local_files_only=True).eval()
        self._drop = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}

    @torch.no_grad()
    def generate(self, prompts: list[str], sampling: Sampling) -> list[list[Rollout]]:
        n = 1 if sampling.greedy else sampling.n
        per_batch = max(1, self.batch_rows // n)
        out: list[list[Rollout]] = []
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        for lo in range(0, len(prompts), per_batch):
            out.extend(self._batch(prompts[lo:lo + per_batch], lo, sampling, n))
        if sampling.greedy and sampling.n > 1:  # greedy: every rollout is the same
            out = [[r] * sampling.n for rs in out for r in rs]
        return out

    def _batch(self, prompts: list[str], offset: int, s: Sampling, n: int) -> list[list[Rollout]]:
        tok = self.tokenizer
        enc = tok([P.model_input(p) for p in prompts], return_tensors="pt", padding=True)
        kw = {"do_sample": False} if s.greedy else {
            "do_sample": True, "temperature": s.temperature, "top_k": max(s.top_k, 0), "top_p": s.top_p}
        res = self.model.generate(**enc, **kw, max_new_tokens=s.max_tokens, num_return_sequences=n,
                                  output_logits=True, return_dict_in_generate=True,
                                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        width = enc["input_ids"].shape[1]
        seqs = res.sequences[:, width:]
        logp = torch.log_softmax(torch.stack(res.logits, dim=1).float(), dim=-1)
        logp = logp.gather(-1, seqs[..., None]).squeeze(-1)
        groups: list[list[Rollout]] = []
        for p in range(len(prompts)):
            mask = enc["attention_mask"][p].bool()
            prompt_ids = enc["input_ids"][p][mask].tolist()
            group = []
            for row in range(p * n, (p + 1) * n):
                ids = seqs[row].tolist()
                if tok.eos_token_id in ids:
                    ids = ids[:ids.index(tok.eos_token_id) + 1]
                text = tok.decode([t for t in ids if t not in self._drop], skip_special_tokens=False)
                group.append(make_rollout(offset + p, prompt_ids, ids, logp[row, :len(ids)].tolist(), text,
                                          self.policy_version, tok.eos_token_id, self.variant))
            groups.append(group)
        return groups

    def load_weights(self, blob: bytes, version: int) -> None:
        weight_sync.load_into(self.model, blob)
        self.policy_version = version

    def close(self) -> None:
        self.model = None
