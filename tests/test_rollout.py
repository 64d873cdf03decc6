"""Rollout engines: the transformers engine's sampling contract, and vLLM greedy parity with transformers before and
after a weight sync, for tied and untied embeddings (ENVIRONMENT.md: a tied lm_head silently goes stale on CPU)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from aigq.data import prompt as P
from rollout import weight_sync
from rollout.engine import Sampling, make_engine

HAS_VLLM = importlib.util.find_spec("vllm") is not None
PROMPTS = ["Please Recommend the next 10 queries.\nuser 3 likes sofa", "lamp ; rug", "user 9 searched"]
GREEDY = Sampling(n=2, temperature=0.0, max_tokens=12)


def _perturbed_blob(model: torch.nn.Module, seed: int) -> bytes:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return weight_sync.serialise(model)


@pytest.fixture(scope="module")
def untied(tmp_path_factory, tiny_policy):
    return tiny_policy(tmp_path_factory.mktemp("untied"), tied=False)


def test_transformers_engine_sampling_contract(untied):
    folder, model = untied
    eng = make_engine("transformers", folder)
    s = Sampling(n=4, max_tokens=10, seed=7)
    groups = eng.generate(PROMPTS, s)
    assert [len(g) for g in groups] == [4, 4, 4]
    for i, g in enumerate(groups):
        for r in g:
            assert r.prompt_index == i and r.policy_version == 0
            assert len(r.logprobs) == len(r.token_ids) and all(lp <= 0 for lp in r.logprobs)
            assert 0 < len(r.token_ids) <= 10 and r.finish_reason in ("stop", "length")
            assert r.queries == P.parse_output(r.text)
    assert [r.token_ids for r in eng.generate(PROMPTS, s)[0]] == [r.token_ids for r in groups[0]]  # seeded
    # logprobs are the model's own: teacher-forced recomputation agrees
    r = groups[0][0]
    ids = torch.tensor([r.prompt_ids + r.token_ids])
    with torch.no_grad():
        logits = eng.model(ids).logits[0, len(r.prompt_ids) - 1:-1]
    ref = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(r.token_ids)[:, None]).squeeze(-1)
    assert torch.allclose(ref, torch.tensor(r.logprobs), atol=1e-4)
    before = [g[0].token_ids for g in eng.generate(PROMPTS, GREEDY)]
    eng.load_weights(_perturbed_blob(model, 1), version=3)
    after = eng.generate(PROMPTS, GREEDY)
    assert after[0][0].policy_version == 3 and [g[0].token_ids for g in after] != before


def test_weight_sync_rejects_a_mismatched_state(untied):
    folder, model = untied
    eng = make_engine("transformers", folder)
    with pytest.raises(ValueError, match="missing"):
        eng.load_weights(weight_sync.serialise({"model.embed_tokens.weight": torch.zeros(3, 3)}), 1)


def test_unknown_engine_and_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        make_engine("transformers", tmp_path / "nope")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="unknown rollout engine"):
        make_engine("tgi", tmp_path)


@pytest.mark.skipif(not HAS_VLLM, reason="vLLM not installed (pip install -e '.[vllm]')")
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_vllm_greedy_matches_transformers_before_and_after_sync(tmp_path, tiny_policy, tied):
    folder, model = tiny_policy(tmp_path / "m", tied)
    hf, vl = make_engine("transformers", folder), make_engine("vllm", folder)
    try:
        ids = lambda eng: [g[0].token_ids for g in eng.generate(PROMPTS, GREEDY)]  # noqa: E731
        assert ids(vl) == ids(hf)
        blob = _perturbed_blob(model, 1)
        hf.load_weights(blob, 1)
        vl.load_weights(blob, 1)
        synced = ids(vl)
        assert synced == ids(hf)
        blob2 = _perturbed_blob(model, 2)  # a second update lands too
        hf.load_weights(blob2, 2)
        vl.load_weights(blob2, 2)
        assert ids(vl) == ids(hf) != synced
        out = vl.generate(PROMPTS, Sampling(n=3, max_tokens=8, seed=1))
        assert [len(g) for g in out] == [3, 3, 3] and out[0][0].policy_version == 2
        r = out[1][0]
        assert len(r.logprobs) == len(r.token_ids)
        full = torch.tensor([r.prompt_ids + r.token_ids])  # vLLM's logprobs are the model's raw ones
        with torch.no_grad():
            logits = hf.model(full).logits[0, len(r.prompt_ids) - 1:-1]
        ref = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(r.token_ids)[:, None]).squeeze(-1)
        assert torch.allclose(ref, torch.tensor(r.logprobs), atol=2e-3)
    finally:
        vl.close()
