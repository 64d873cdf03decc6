"""Generating query lists with a transformers model (the simple engine; the rollout issue adds vLLM behind the same
prompt format) and measuring whether they parse."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from aigq.data import prompt as P


@torch.no_grad()
def generate_lists(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 160, temperature: float = 1.0,
                   top_k: int = 100, seed: int = 0, batch_size: int = 16) -> list[str]:
    """Decoded outputs for ``prompts`` (left-padded batches; temperature 0 = greedy). Special tokens such as the
    end-of-text token are dropped; the prompt-format tokens (``<think>``…) are kept so the output can be parsed."""
    torch.manual_seed(seed)
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    texts: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer([P.model_input(p) for p in prompts[i : i + batch_size]], return_tensors="pt",
                            padding=True, add_special_tokens=False).to(model.device)
            sampling = {"do_sample": True, "temperature": temperature, "top_k": top_k or None} if temperature > 0 \
                else {"do_sample": False}
            out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id, **sampling)
            texts += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return texts


def parse_stats(texts: Sequence[str], expected: int, variant: str = "direct") -> dict[str, float]:
    """``parse_rate``: share of outputs that parse into exactly ``expected`` non-empty queries (Direct); for Think,
    share with a closed reasoning span (when present) and at least one interest point. ``at_least_rate``: share
    with at least ``expected`` queries (a consumer taking the first ``expected`` gets a full list). Plus the mean
    count and the share of outputs with duplicate queries."""
    if not texts:
        return {"parse_rate": 0.0, "at_least_rate": 0.0, "mean_queries": 0.0, "duplicate_share": 0.0}
    ok, counts, dups = 0, [], 0
    for text in texts:
        queries = P.parse_output(text, variant)
        counts.append(len(queries))
        dups += len(set(queries)) < len(queries)
        if variant == "think":
            open_ = P.THINK_OPEN in text
            ok += bool(queries) and (not open_ or P.THINK_CLOSE in text)
        else:  # strict: every piece between separators is a query (an empty slot is a malformed list)
            pieces = [q.strip() for q in text.split(P.QUERY_SEP.strip())]
            ok += len(pieces) == expected and all(pieces)
    n = len(texts)
    return {"parse_rate": ok / n, "at_least_rate": sum(c >= expected for c in counts) / n,
            "mean_queries": sum(counts) / n, "duplicate_share": dups / n}
