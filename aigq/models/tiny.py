"""The tiny CPU policy: a byte-level BPE tokenizer trained on the world's own text and a Qwen2-architecture model
built from ``model.tiny`` (random init). Built in seconds, cached under the run's output folder, never committed.

The tokenizer learns from the text the policy will read and write: the sample prompts (with the Eq. 1 special
tokens written out as their plain words, so the special tokens can later be initialised from real sub-words) and
the target lists. Its only special tokens are ``<|endoftext|>`` (end of output) and ``<|pad|>``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from aigq.config import TinyModelConfig
from aigq.data import prompt as P
from aigq.models.special_tokens import subword_text

EOS, PAD = "<|endoftext|>", "<|pad|>"
_TOKEN = re.compile(r"<(/?[A-Za-z0-9_]+)>")


def plain_text(text: str) -> str:
    """Special tokens written as their words (``<3><1_day_ago><click> x`` → ``3 1 day ago click x``)."""
    return re.sub(r" +", " ", _TOKEN.sub(lambda m: f" {subword_text(m.group(0))} ", text)).replace("\n ", "\n")


def corpus(samples_dir: Path, max_texts: int, seed: int = 0) -> Iterator[str]:
    """Up to ``max_texts`` (prompt, target) texts from the Direct and Think sample files, shuffled with ``seed``."""
    frames = []
    for split in ("direct", "think"):
        f = Path(samples_dir) / f"{split}.parquet"
        if f.is_file():
            frames.append(pl.read_parquet(f, columns=["prompt", "target"]))
    if not frames:
        raise FileNotFoundError(f"{samples_dir}: no direct/think samples to train a tokenizer on; run "
                                "`aigq build-samples` first")
    df = pl.concat(frames)
    df = df.sample(n=min(max_texts, df.height), seed=seed, shuffle=True)
    for prompt, target in df.iter_rows():
        yield plain_text(P.model_input(prompt)) + P.format_target(target)


def train_tokenizer(texts: Iterator[str], vocab_size: int):
    """A byte-level BPE (GPT-2/Qwen style) as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, padding_side="right",
                                   clean_up_tokenization_spaces=False)


def build_tiny(cfg: TinyModelConfig, tokenizer, seed: int = 0):
    """A randomly initialised Qwen2 causal LM sized by ``cfg`` for ``tokenizer``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if cfg.hidden % cfg.heads or cfg.heads % cfg.kv_heads:
        raise ValueError(f"model.tiny: hidden ({cfg.hidden}) must be a multiple of heads ({cfg.heads}) and heads a "
                         f"multiple of kv_heads ({cfg.kv_heads})")
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.max_positions, tie_word_embeddings=cfg.tie_embeddings,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
        attention_dropout=0.0, use_sliding_window=False,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


def prepare_tiny(cfg: TinyModelConfig, samples_dir: Path, out: Path, seed: int = 0) -> Path:
    """Train the tokenizer and build the model into the HF folder ``out`` (safetensors)."""
    tokenizer = train_tokenizer(corpus(samples_dir, cfg.corpus_texts, seed), cfg.vocab_size)
    model = build_tiny(cfg, tokenizer, seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
