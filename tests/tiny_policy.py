"""Helpers shared by the IL-SFT tests: synthetic samples in the sample schema and a very small policy folder
(tokenizer trained on those samples in well under a second). Not a test module."""

from __future__ import annotations

import random
from pathlib import Path

import polars as pl

from aigq.config import SamplesConfig, TinyModelConfig
from aigq.data import prompt as P

SCFG = SamplesConfig(history_len=4, history_days=3, label_cap=3)
WORDS = ["lamp", "sofa", "rug", "desk", "chair", "mirror", "vase", "clock", "shelf", "bed", "oak", "blue", "round"]
TINY = TinyModelConfig(vocab_size=400, hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64, max_positions=256,
                       corpus_texts=200)


def samples_frame(n: int = 48, seed: int = 0, days: int = 6) -> pl.DataFrame:
    """Direct-style samples: a label query is often a word of the prompt's behaviours (something to learn)."""
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        beh = [(rng.randint(0, 3), rng.choice(["search", "click"]), f"{rng.choice(WORDS)} {rng.choice(WORDS)}")
               for _ in range(rng.randint(0, 4))]
        profile = {"gender": rng.choice(["Male", "Female"]), "age": rng.randint(18, 70), "city": "Hangzhou"}
        seen = [c for _, _, c in beh]
        target = list(dict.fromkeys((seen + [f"{rng.choice(WORDS)} {rng.choice(WORDS)}" for _ in range(3)])[:3]))
        triggers = [[i + 1] if i < len(seen) else [] for i in range(len(target))]
        rows.append({"sample_id": f"d-{k}", "user_id": k % 17, "day": 1 + k % days, "variant": "direct",
                     "prompt": P.format_prompt(profile, beh, SCFG), "target": target, "triggers": triggers})
    return pl.DataFrame(rows, schema={"sample_id": pl.String, "user_id": pl.Int64, "day": pl.Int32,
                                      "variant": pl.String, "prompt": pl.String, "target": pl.List(pl.String),
                                      "triggers": pl.List(pl.List(pl.Int32))})


def write_samples(folder: Path, n: int = 48) -> Path:
    from aigq.data.sample_io import write_meta

    folder.mkdir(parents=True, exist_ok=True)
    df = samples_frame(n)
    for split in ("direct", "think", "test"):
        df.with_columns(pl.lit(split).alias("variant")).write_parquet(folder / f"{split}.parquet")
    write_meta(folder, P.special_tokens(SCFG), SCFG, {s: n for s in ("direct", "think", "test")}, {})
    return folder


def build_policy(folder: Path, samples: Path, tie: bool = False, seed: int = 0, layers: int = 1) -> Path:
    """Base tiny model on ``samples`` + the Eq. 1 tokens, saved as an HF folder."""
    from aigq.models.special_tokens import add_special_tokens
    from aigq.models.tiny import build_tiny, corpus, train_tokenizer

    cfg = TINY.model_copy(update={"tie_embeddings": tie, "layers": layers})
    tok = train_tokenizer(corpus(samples, cfg.corpus_texts), cfg.vocab_size)
    model = build_tiny(cfg, tok, seed)
    add_special_tokens(model, tok, P.special_tokens(SCFG) + P.output_special_tokens(SCFG.label_cap, think=True))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
