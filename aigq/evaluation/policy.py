"""Generative arms: the trained policy variants and the zero-shot base LLM, through the one rollout engine.

**Policy arms** (``direct-sft`` … ``think-il-sft+il-grpo``; folders from ``suite.policy_dir``): per test user-day
``eval.greedy_lists`` greedy lists, then ``eval.sampled_lists`` lists sampled with the paper's rollout settings
(temperature ``eval.temperature`` = 1.0, top-k ``eval.top_k`` = 100), concatenated in that order and de-duplicated:
the greedy list (the policy's best guess, interest order kept) fills the top slots and samples add the long tail up
to K ([GAP], ours: a 10-query policy has to be asked several times to fill K = 30). ``eval.merge=consensus``
ranks the queries by how many of the lists hold them instead (``rollout.consensus``, the Direct cache's
decoding). Think arms parse the ``T_k => Q_k`` groups after the reasoning span (``prompt.parse_output(text, "think")``) and get
``eval.think_max_tokens``. Each arm reads its prompts from the test split of the samples it was trained on (plain
prompts for the plain-SFT rows), matched to the evaluated user-days by (user_id, day).

**Zero-shot**: SmolLM2-135M-Instruct (``eval.zero_shot_model`` or ``<model.cache_dir>/smollm2-135m-instruct``),
never fine-tuned, given a natural-language rendering of the same context (:func:`natural_prompt`) through its chat
template, one greedy answer parsed leniently (:func:`parse_free_list`).
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from aigq.config import AIGQConfig
from aigq.data import prompt as P
from aigq.evaluation import suite
from aigq.evaluation.recommend import dedup
from aigq.rewards.context import context_from_prompt
from aigq.say import Say
from rollout.consensus import consensus
from rollout.engine import Sampling, make_engine

_NUMBERING = re.compile(r"^\s*(?:[-*•]|\d+[.)]|\(\d+\))\s*")
_LETTER = re.compile(r"[^\W\d_]")


def _engine_kind(cfg: AIGQConfig) -> str:
    return cfg.eval_engine()


def _engine(cfg: AIGQConfig, folder: Path, variant: str):
    kind = _engine_kind(cfg)
    kw = {"seed": cfg.eval.seed} if kind == "vllm" else {}  # transformers: Sampling.seed seeds each call
    return make_engine(kind, folder, variant=variant, **kw)


def arm_prompts(cfg: AIGQConfig, arm: str, keys: pl.DataFrame) -> list[str]:
    """The arm's own test prompts (its samples' prompt format) for ``keys`` (user_id, day), in order, from the
    evaluation protocol's split (``test.parquet`` or ``last_query.parquet``)."""
    from aigq.evaluation.offline import split_path

    path = split_path(cfg, suite.samples_dir(cfg, arm))
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (the samples {arm} was trained on): run `aigq eval --suite`")
    own = pl.read_parquet(path, columns=["user_id", "day", "prompt"])
    got = keys.select("user_id", "day").join(own, on=["user_id", "day"], how="left", maintain_order="left")
    if got["prompt"].null_count():
        raise ValueError(f"{path}: {got['prompt'].null_count()} evaluated user-days have no prompt; rebuild the "
                         "variant's samples from the same world")
    return got["prompt"].to_list()


def generate_lists(engine, prompts: list[str], cfg: AIGQConfig, max_tokens: int, k: int) -> list[list[str]]:
    """Greedy list(s) first, then sampled ones, merged by ``eval.merge`` (see the module docstring)."""
    e = cfg.eval
    lists: list[list[list[str]]] = [[] for _ in prompts]
    if e.greedy_lists:
        for i, group in enumerate(engine.generate(prompts, Sampling(n=1, temperature=0.0, max_tokens=max_tokens))):
            lists[i].append(group[0].queries)
    if e.sampled_lists:
        s = Sampling(n=e.sampled_lists, temperature=e.temperature, top_k=e.top_k, max_tokens=max_tokens, seed=e.seed)
        for i, group in enumerate(engine.generate(prompts, s)):
            lists[i] += [r.queries for r in group]
    if e.merge == "consensus":
        return [consensus(ls, k) for ls in lists]
    return [dedup([q for lst in ls for q in lst], k) for ls in lists]


def policy_lists(cfg: AIGQConfig, arm: str, test_frame: pl.DataFrame, k: int, say: Say | None = None,
                 folder: Path | None = None) -> list[list[str]]:
    """The arm's lists from its suite folder, or from ``folder`` when given (must hold a policy)."""
    if folder is not None and not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{arm}: no policy in {folder}")
    folder = folder or suite.policy_dir(cfg, arm)
    if folder is None:
        raise FileNotFoundError(f"{arm}: no policy under {suite.variants_dir(cfg) / arm} (train it with "
                                "`aigq eval --suite`)")
    prompts = arm_prompts(cfg, arm, test_frame)
    variant = suite.variant_of(arm)
    if say:
        say(f"{arm}: generating for {len(prompts)} user-days from {folder} ({_engine_kind(cfg)})")
    engine = _engine(cfg, folder, variant)
    try:
        max_tokens = cfg.eval.think_max_tokens if variant == "think" else cfg.eval.max_tokens
        return generate_lists(engine, prompts, cfg, max_tokens, k)
    finally:
        engine.close()


# ---------------------------------------------------------------- zero-shot base LLM


def zero_shot_dir(cfg: AIGQConfig) -> Path:
    return Path(cfg.eval.zero_shot_model) if cfg.eval.zero_shot_model else \
        Path(cfg.model.cache_dir) / "smollm2-135m-instruct"


def natural_prompt(prompt: str, n: int = 10, history: int = 10) -> str:
    """The AIGQ prompt rewritten as a first-person request in plain English (what a small un-tuned instruct model
    can follow): profile, distinct recent searches, distinct recently clicked items (the ``history`` most recent
    behaviours), the related queries when the prompt has them, then a request for a numbered list of ``n`` queries
    ([GAP], ours: 135M models loop on longer asks)."""
    ctx = context_from_prompt(prompt)
    who = ", ".join(str(ctx.profile[key]) for key in ("gender", "age", "occupation", "city") if key in ctx.profile)
    recent = ctx.behaviours[:history]
    searched = list(dict.fromkeys(c for _, t, c in recent if t == "search"))
    seen = list(dict.fromkeys(c for _, t, c in recent if t != "search"))
    lines = ["I am shopping on a home-goods website." + (f" About me: {who}." if who else "")]
    lines.append(f"Things I searched recently: {', '.join(searched)}." if searched else "I have not searched yet.")
    if seen:
        lines.append(f"Items I looked at recently: {', '.join(seen)}.")
    related = P.parse_related(prompt)  # samples.related_queries: what other shoppers searched next
    if related:
        lines.append(f"Shoppers like me often search next: {', '.join(related)}.")
    lines.append(f"Write a numbered list of {n} different search queries I might type next.")
    return "\n".join(lines)


def parse_free_list(text: str) -> list[str]:
    """Lenient list parsing for free text: split on ';', ',' and newlines, strip numbering, bullets and quotes."""
    out = []
    for piece in re.split(r"[;,\n]", text):
        q = _NUMBERING.sub("", piece).strip().strip("\"'`*").strip()
        if _LETTER.search(q) and len(q) <= 80 and not q.lower().startswith(("here are", "sure", "output")):
            out.append(q)
    return out


def zero_shot_lists(cfg: AIGQConfig, test_frame: pl.DataFrame, k: int, say: Say | None = None) -> list[list[str]]:
    folder = zero_shot_dir(cfg)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"zero-shot model not prepared at {folder}: run `aigq models prepare smollm2` "
                                "(or `make smollm2`)")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    prompts = []
    for p in test_frame["prompt"].to_list():
        msgs = [{"role": "user", "content": natural_prompt(p)}]
        prompts.append(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True).rstrip("\n"))
    if say:
        say(f"zero-shot: {len(prompts)} user-days, {folder.name} ({_engine_kind(cfg)})")
    engine = _engine(cfg, folder, "direct")
    try:
        groups = engine.generate(prompts, Sampling(n=1, temperature=0.0, max_tokens=cfg.eval.zero_shot_max_tokens))
    finally:
        engine.close()
    return [dedup(parse_free_list(g[0].text), k) for g in groups]
