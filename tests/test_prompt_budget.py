"""The prompt budget (``samples.max_prompt_tokens``, issue 18): the oldest behaviours go until the model input fits,
the most recent ones stay with their indices, in the sample builder (any token counter, the policy's tokenizer
included) and in ``format_prompt`` (serving)."""

from __future__ import annotations

import pytest
from test_samples import D30_SEQ, DAYS, PROFILE_1, START, row, tables  # noqa: F401  (tables: the fixture)

from aigq.config import SamplesConfig, build_config
from aigq.data import prompt as P
from aigq.data.samples import build_samples
from aigq.models import factory


def build(tables, count_tokens=None, **kw):  # noqa: F811
    return build_samples(tables, START, DAYS, SamplesConfig(**kw), chunk_size=250_000, count_tokens=count_tokens)

FULL = f"Please Recommend the next 10 queries.\n{PROFILE_1}\nUser Behavior Sequence: {{ {D30_SEQ} }}"
LINES = D30_SEQ.split(P.BEHAVIOUR_SEP)


def words(texts):
    """An exact toy tokenizer: one token per whitespace-separated word."""
    return [len(t.split()) for t in texts]


def _budget_for(k: int, count=words) -> int:
    return count([P.model_input(P.keep_recent(FULL, k))])[0]


def test_keep_recent_and_approximation():
    assert P.keep_recent(FULL, 4) == FULL and P.keep_recent(FULL, 9) == FULL
    assert P.keep_recent(FULL, 2).endswith("{ " + P.BEHAVIOUR_SEP.join(LINES[:2]) + " }")
    assert P.keep_recent(FULL, 0).endswith("User Behavior Sequence: { }")
    # approx: <tags> count 1 each, the rest 1 per 3 characters (rounded up)
    assert P.approx_tokens(["<1><Today><click> abcdef", "abcd", ""]) == [3 + 3, 2, 0]


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_builder_keeps_the_most_recent_behaviours_within_budget(tables, k):  # noqa: F811
    budget = _budget_for(k)
    assert _budget_for(k + 1) > budget  # the next older behaviour would not fit
    s = build(tables, max_prompt_tokens=budget, count_tokens=words)
    r = row(s.direct, "d-30")
    assert r["prompt"] == P.keep_recent(FULL, k)  # exactly the k most recent, indices 1..k unchanged
    assert words([P.model_input(r["prompt"])])[0] <= budget
    assert r["metadata"]["n_behaviours"] == k and r["metadata"]["n_history"] == 4
    # triggers only name shown behaviours (without the budget: [[1], [], [3, 4], [2], [], [1, 3, 4], []])
    full = [[1], [], [3, 4], [2], [], [1, 3, 4], []]
    assert r["triggers"] == [[i for i in t if i <= k] for t in full]
    for split in ("direct", "think", "test", "last_query"):  # every prompt the builder writes holds the budget
        prompts = getattr(s, split)["prompt"].to_list()
        assert all(n <= budget or P.keep_recent(p, 0) == p for n, p in zip(words(map(P.model_input, prompts)),
                                                                            prompts, strict=True))


def test_no_budget_is_todays_behaviour_and_default_counter_is_the_approximation(tables):  # noqa: F811
    assert SamplesConfig().max_prompt_tokens is None
    assert build(tables).direct.equals(build(tables, max_prompt_tokens=10_000).direct)
    budget = P.approx_tokens([P.model_input(P.keep_recent(FULL, 2))])[0]
    r = row(build(tables, max_prompt_tokens=budget).direct, "d-30")  # no counter given: approx_tokens
    assert r["prompt"] == P.keep_recent(FULL, 2)


def test_format_prompt_applies_the_same_budget(tables):  # noqa: F811
    beh = [(0, "click", "Leather ankle boot"), (1, "click", "Cast iron pan"), (2, "click", "Light running shoe"),
           (2, "search", "running shoes")]
    profile = {"gender": "F", "age": 44, "occupation": "Medical Staff", "city": "Beijing"}
    budget = P.approx_tokens([P.model_input(P.keep_recent(FULL, 3))])[0]
    cfg = SamplesConfig(max_prompt_tokens=budget)
    assert P.format_prompt(profile, beh, cfg) == P.keep_recent(FULL, 3)
    assert P.format_prompt(profile, beh, cfg) == row(build(tables, max_prompt_tokens=budget).direct, "d-30")["prompt"]
    assert P.format_prompt(profile, beh, cfg, count=words) == FULL  # 63 words fit easily


def test_the_policy_tokenizer_counts_when_its_folder_exists(tmp_path):
    from tiny_policy import build_policy, write_samples
    from transformers import AutoTokenizer

    cfg = build_config(overrides=["samples.max_prompt_tokens=64"])
    assert factory.prompt_token_counter(build_config())[0] is None  # no budget
    count, how = factory.prompt_token_counter(cfg)  # tiny: its BPE does not exist yet
    assert count is P.approx_tokens and how.startswith("approximation")
    folder = tmp_path / "base"
    build_policy(folder, write_samples(tmp_path / "s", n=12))
    cfg = build_config(overrides=["samples.max_prompt_tokens=64", "model.source=path", f"model.path={folder}"])
    count, how = factory.prompt_token_counter(cfg)
    assert str(folder) in how
    tok = AutoTokenizer.from_pretrained(folder)
    text = P.model_input(FULL)
    assert count([text]) == [len(tok(text, add_special_tokens=False)["input_ids"])]
    assert count(["<1><Today><click>"]) == [3]  # the Eq. 1 tokens are one token each
    fitted, kept = P.fit_prompts([FULL], 64, count)
    assert count([P.model_input(fitted[0])])[0] <= 64 and fitted[0] == P.keep_recent(FULL, kept[0])
    assert kept[0] is not None and count([P.model_input(P.keep_recent(FULL, kept[0] + 1))])[0] > 64
