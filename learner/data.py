"""IL-SFT data: read and check sample files, render targets (Direct / Think ± reasoning), tokenise, hold out eval
days, and the deterministic batch order that makes a resumed run exact (the order depends only on seed and step)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from aigq.config import SamplesConfig
from aigq.data import prompt as P
from learner.sft import Example, make_example
from learner.teacher import Teacher

REQUIRED: dict[str, pl.DataType] = {
    "sample_id": pl.String(), "user_id": pl.Int64(), "day": pl.Int32(), "prompt": pl.String(),
    "target": pl.List(pl.String()), "triggers": pl.List(pl.List(pl.Int32())),
}
# Keys of the samples config that change the text the policy sees (a mismatch means the samples are stale).
_TEXT_KEYS = ("rerank", "compress", "history_len", "history_days", "label_cap", "instruction", "instruction_plain",
              "max_prompt_tokens")


class SampleSchemaError(ValueError):
    """A sample file is missing, or its columns are not the sample schema."""


def read_samples(path: Path) -> pl.DataFrame:
    """Read a Direct/Think/test parquet file, checking the columns IL-SFT needs and their types."""
    path = Path(path)
    if not path.is_file():
        raise SampleSchemaError(f"{path}: no such sample file; run `aigq build-samples` first")
    try:
        schema = pl.read_parquet_schema(path)
    except Exception as exc:  # polars raises several error types for a non-parquet file
        raise SampleSchemaError(f"{path}: not a parquet file ({exc})") from None
    problems = [f"missing column '{c}'" for c in REQUIRED if c not in schema]
    problems += [f"column '{c}' is {schema[c]}, expected {t}" for c, t in REQUIRED.items()
                 if c in schema and schema[c] != t]
    if problems:
        raise SampleSchemaError(f"{path}: not an AIGQ sample file: " + "; ".join(problems))
    return pl.read_parquet(path, columns=list(REQUIRED))


def check_samples_config(samples_dir: Path, cfg: SamplesConfig) -> None:
    """Fail when the samples were built with prompt settings other than ``cfg`` (e.g. an ablation row asks for
    ``samples.compress=false`` but the folder holds compressed prompts)."""
    meta = Path(samples_dir) / "meta.json"
    if not meta.is_file():
        raise SampleSchemaError(f"{samples_dir}: no meta.json; run `aigq build-samples` first")
    built = json.loads(meta.read_text()).get("samples_config", {})
    wanted = cfg.model_dump()
    diff = [f"samples.{k}: built {built.get(k)!r}, config {wanted[k]!r}" for k in _TEXT_KEYS if built.get(k) != wanted[k]]
    if diff:
        raise SampleSchemaError(f"{samples_dir} was built with other prompt settings ({'; '.join(diff)}); rebuild "
                                "with `aigq build-samples` and the same overrides, or use another run.output_dir")


def full_lists(df: pl.DataFrame, min_queries: int | None) -> pl.DataFrame:
    """The samples whose label list holds at least ``min_queries`` queries (all when None); an empty result is an
    error that names the knob."""
    if min_queries is None:
        return df
    kept = df.filter(pl.col("target").list.len() >= min_queries)
    if kept.height == 0 and df.height:
        raise SampleSchemaError(f"sft.min_label_queries={min_queries}: no sample's label list is that long "
                                f"(longest {df['target'].list.len().max()}); lower it or set it to null")
    return kept


def first_test_day_per_user(test: pl.DataFrame, n: int) -> pl.DataFrame:
    """One test sample per user (their first test day), the ``n`` lowest user ids: the prompts ``aigq sft``
    samples its parse-rate lists from (and ``benchmarks/parse_rate.py`` re-samples)."""
    return test.sort("user_id", "day").unique("user_id", keep="first", maintain_order=True).head(n)


def split_eval(df: pl.DataFrame, eval_days: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(train, eval): the last ``eval_days`` days of the train samples are held out for the eval loss."""
    if df.height == 0:
        raise SampleSchemaError("no training samples (the sample file is empty)")
    cut = int(df["day"].max()) - eval_days
    train, held = df.filter(pl.col("day") <= cut), df.filter(pl.col("day") > cut)
    if train.height == 0:
        raise SampleSchemaError(f"sft.eval_days={eval_days} holds out every sample day; lower it")
    return train, held


def target_texts(df: pl.DataFrame, variant: str, reasoning: bool, teacher: Teacher | None) -> list[str]:
    """Direct: ``format_target(target)``; Think: the interest groups, preceded by the teacher's rationale when
    ``reasoning`` (the paper's Think + reasoning augmentation row)."""
    if variant == "direct":
        return [P.format_target(t) for t in df["target"].to_list()]
    out = []
    for prompt, target, triggers in df.select("prompt", "target", "triggers").iter_rows():
        groups = P.interest_groups(target, triggers)
        rationales = teacher(prompt, groups) if reasoning and teacher is not None else None
        if rationales is not None and len(rationales) != len(groups):
            raise ValueError(f"teacher returned {len(rationales)} rationales for {len(groups)} interest points")
        out.append(P.format_think_target(groups, rationales))
    return out


def drop_oldest(prompt: str, n: int) -> str:
    """The prompt without its ``n`` oldest (last-listed) behaviours."""
    head, found, seq = prompt.partition("User Behavior Sequence: { ")
    if not found or n <= 0:
        return prompt
    lines = seq.rsplit(" }", 1)[0].split(P.BEHAVIOUR_SEP)
    kept = lines[: max(0, len(lines) - n)]
    return head + ("User Behavior Sequence: { " + P.BEHAVIOUR_SEP.join(kept) + " }" if kept else
                   "User Behavior Sequence: { }")


def tokenize(tokenizer, prompts: Sequence[str], targets: Sequence[str], max_len: int) -> tuple[list[Example], int]:
    """Examples for (prompt, target text) pairs and how many prompts lost behaviours to fit ``max_len`` tokens
    (the oldest behaviours go first; a target that cannot fit is an error)."""
    enc_p = tokenizer([P.model_input(p) for p in prompts], add_special_tokens=False)["input_ids"]
    enc_t = tokenizer(list(targets), add_special_tokens=False)["input_ids"]
    out, truncated = [], 0
    for prompt, p_ids, t_ids in zip(prompts, enc_p, enc_t, strict=True):
        drop = 0
        while len(p_ids) + len(t_ids) + 1 > max_len:
            drop += 1
            shorter = drop_oldest(prompt, drop)
            if shorter == drop_oldest(prompt, drop - 1):
                raise ValueError(f"a target of {len(t_ids)} tokens does not fit sft.max_seq_len={max_len}")
            p_ids = tokenizer(P.model_input(shorter), add_special_tokens=False)["input_ids"]
        truncated += drop > 0
        out.append(make_example(p_ids, t_ids, tokenizer.eos_token_id))
    return out, truncated


def total_steps(n: int, epochs: float, batch: int, max_steps: int | None) -> int:
    steps = math.ceil(n * epochs / batch)
    return min(steps, max_steps) if max_steps else steps


def batch_indices(n: int, step: int, batch: int, seed: int) -> np.ndarray:
    """Sample indices of optimizer step ``step``: a stream of per-epoch permutations (seeded by (seed, epoch)) cut
    into consecutive batches, so any step's batch is known without replaying earlier ones."""
    start, stop = step * batch, (step + 1) * batch
    out = []
    for epoch in range(start // n, (stop - 1) // n + 1):
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        lo, hi = max(start - epoch * n, 0), min(stop - epoch * n, n)
        out.append(perm[lo:hi])
    return np.concatenate(out)


def shard(indices: np.ndarray, world: int) -> list[np.ndarray]:
    """Contiguous, near-equal shards of a global batch, one per worker."""
    if len(indices) < world:
        raise ValueError(f"a global batch of {len(indices)} samples cannot feed {world} workers")
    return np.array_split(indices, world)
