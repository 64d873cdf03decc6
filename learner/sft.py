"""IL-SFT maths and batching (paper §3.4, Eq. 5). Pure torch: no Ray, no files.

Eq. 5 is the causal-LM negative log-likelihood of the ordered label list z given the prompt x = [P, S], summed over
the target tokens only: prompt tokens are context, never predicted. One training example is
``ids = tokens(model_input(prompt)) + tokens(target_text) + [eos]`` with ``n_prompt`` = the prompt's token count;
position t predicts token t+1, so the predicted positions are ``n_prompt-1 … len(ids)-2``.

The LM head (vocab × hidden, the largest matrix of a small model) runs only on those positions (``TargetLM``):
the loss is the same as slicing full logits, at a fraction of the cost when prompts are long.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100  # label of a position that is not a target token


def target_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 5 for a batch: (sum of -log P(z_t | z_<t, x) over target tokens, number of target tokens).

    ``logits``: (..., V) scores at the positions that predict the next token; ``labels``: (...) that next token, or
    ``IGNORE`` where the next token is part of the prompt (or padding). The sum is returned (not the mean) so that
    workers of a DDP group can normalise by the global batch's token count."""
    flat = labels.reshape(-1)
    keep = flat != IGNORE
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1])[keep].float(), flat[keep], reduction="sum")
    return nll, keep.sum()


@dataclass(frozen=True)
class Example:
    """One tokenised training example: prompt + target + eos token ids and the prompt's length in tokens."""

    ids: tuple[int, ...]
    n_prompt: int

    @property
    def n_target(self) -> int:
        return len(self.ids) - self.n_prompt


def make_example(prompt_ids: Sequence[int], target_ids: Sequence[int], eos_id: int) -> Example:
    return Example(tuple(prompt_ids) + tuple(target_ids) + (eos_id,), len(prompt_ids))


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and shifted ``labels`` (IGNORE outside the targets)."""
    if not examples:
        raise ValueError("collate: empty batch")
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for b, e in enumerate(examples):
        n = len(e.ids)
        ids[b, :n] = torch.tensor(e.ids)
        mask[b, :n] = 1
        labels[b, e.n_prompt - 1 : n - 1] = ids[b, e.n_prompt : n]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def micro_batches(examples: Sequence[Example], size: int, pad_id: int) -> list[dict[str, torch.Tensor]]:
    return [collate(examples[i : i + size], pad_id) for i in range(0, len(examples), size)]


def count_targets(examples: Sequence[Example]) -> int:
    """Target tokens (incl. eos) of a batch: the normaliser of its loss."""
    return sum(e.n_target for e in examples)


class TargetLM(nn.Module):
    """Wraps a Hugging Face causal LM: ``forward(input_ids, attention_mask, labels)`` → Eq. 5's (sum, count), with
    the LM head applied to target positions only. This is the module a DDP group wraps. Models whose head does more
    than a linear map (logit soft-capping or scaling) take the full forward path."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        cfg = model.config
        self._plain_head = not (getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = labels != IGNORE
        if self._plain_head:
            hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)[0]
            logits = self.model.get_output_embeddings()(hidden[keep])
        else:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[keep]
        return target_nll(logits, labels[keep])
