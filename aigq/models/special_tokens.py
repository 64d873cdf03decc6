"""Prompt compression, Eq. 1: new special tokens with embeddings initialised to the mean of their sub-words.

The paper turns small-vocabulary fields into dedicated tokens (``1 | 1 day ago | search`` → ``<1><1_day_ago>
<search>``) and initialises each new embedding "to the mean of its constituent subword embeddings", e.g.
``<1_day_ago>`` = mean(emb("1"), emb("day"), emb("ago")). The sub-words of a token are those of its plain text
(``subword_text``) under the base tokenizer; with a byte-level BPE the words after the first carry their leading
space (" day", " ago"), which is how they appear in running text.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def subword_text(token: str) -> str:
    """The plain words a special token stands for: ``<1_day_ago>`` → ``1 day ago``, ``</think>`` → ``think``."""
    return token.strip("<>").lstrip("/").replace("_", " ").strip()


@torch.no_grad()
def mean_subword_init(weight: torch.Tensor, new_ids: Sequence[int], pieces: Sequence[Sequence[int]]) -> None:
    """Eq. 1: ``weight[new_ids[k]] = mean(weight[pieces[k]])`` for every new token k, in place. ``weight`` is an
    embedding matrix (vocab × hidden): the input embeddings, or the output (LM-head) rows when untied."""
    if len(new_ids) != len(pieces):
        raise ValueError(f"{len(new_ids)} new tokens but {len(pieces)} sub-word lists")
    for new_id, ids in zip(new_ids, pieces, strict=True):
        if not ids:
            raise ValueError(f"token id {new_id}: no sub-words to average")
        weight[new_id] = weight[list(ids)].float().mean(dim=0).to(weight.dtype)


def add_special_tokens(model, tokenizer, tokens: Sequence[str]) -> list[str]:
    """Add the ``tokens`` the tokenizer does not know yet, resize the model and initialise the new input (and, when
    untied, output) embedding rows with Eq. 1. Returns the tokens added. The tokens stay visible in decoded text
    (they are not "special" in the skip-on-decode sense), so a generated ``</think>`` can be parsed."""
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    new = [t for t in dict.fromkeys(tokens) if t not in vocab]
    if not new:
        return []
    pieces = [tokenizer.encode(subword_text(t), add_special_tokens=False) for t in new]  # before adding
    tokenizer.add_tokens([AddedToken(t, single_word=False, lstrip=False, rstrip=False, normalized=False,
                                     special=False) for t in new])
    new_ids = tokenizer.convert_tokens_to_ids(new)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    mean_subword_init(model.get_input_embeddings().weight, new_ids, pieces)
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
        mean_subword_init(out.weight, new_ids, pieces)
    return new
