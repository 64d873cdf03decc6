"""IL-GRPO learner input and update, without Ray: advantages reach the right tokens, the update moves the policy
in the advantage's direction, plain GRPO is one number per list, the difficulty filter uses attainable bounds."""

from __future__ import annotations

import pytest
import torch

from aigq.config import GRPOConfig, RewardsConfig
from aigq.rewards.compose import GroupReward, ListReward
from learner import grpo
from learner.grpo_trainer import GRPOTrainer, collate_rl
from learner.rl_batch import group_advantages, reward_bounds
from rollout.engine import Rollout


def _lr(q_totals, seq_total, trigger_groups=()):
    n = len(q_totals)
    comp = {k: [0.0] * n for k in ("ctr_p", "ctr", "rouge", "length", "trigger", "rep")}
    return ListReward(["q"] * n, {**comp, "total": list(q_totals)}, {"format": 0, "rep": 0, "diversity": 0,
                                                                      "total": seq_total},
                      trigger_groups=list(trigger_groups))


@pytest.fixture(scope="module")
def model_and_tok(tmp_path_factory, tiny_policy):
    folder, model = tiny_policy(tmp_path_factory.mktemp("p"))
    from transformers import AutoTokenizer

    return model, AutoTokenizer.from_pretrained(folder)


def _rollout(tok, text, eos=True):
    ids = tok(text)["input_ids"] + ([tok.eos_token_id] if eos else [])
    prompt = tok("user 1 likes sofa")["input_ids"]
    return Rollout(0, prompt, ids, [-1.0] * len(ids), text, [q.strip() for q in text.split(";")], 0, "stop")


def test_query_tokens_get_their_own_slot_advantage(model_and_tok):
    _, tok = model_and_tok
    rs = [_rollout(tok, "sofa ; lamp"), _rollout(tok, "rug ; lamp ; sofa")]
    reward = GroupReward(0, [_lr([1.0, 0.0], 1.0), _lr([0.0, 2.0, 5.0], 0.0)])
    cfg = GRPOConfig(lam=0.5, adv_eps=1e-12, adv_clip=10.0)
    ga = group_advantages(rs, reward, tok, cfg, RewardsConfig())
    # slot 0: [1, 0] → [1, −1]; slot 1: [0, 2] → [−1, 1]; slot 2: only rollout 1 → 0; seq: [1, 0] → [1, −1]
    expect = {0: {0: 1.5, 1: -0.5}, 1: {0: -1.5, 1: 0.5, 2: -0.5}}
    from learner.token_roles import token_roles

    for i, r in enumerate(rs):
        slots, _ = token_roles(tok, r.token_ids)
        adv = ga.examples[i].adv
        for s, a in zip(slots, adv, strict=True):
            want = expect[i][s] if s >= 0 else 0.5 * (1 if i == 0 else -1)  # SEP → λ·Â_seq
            assert a == pytest.approx(want, abs=1e-5), (i, s)
        assert ga.examples[i].ids[ga.examples[i].n_prompt:] == tuple(r.token_ids)
    plain = group_advantages(rs, reward, tok, cfg.model_copy(update={"algorithm": "grpo"}), RewardsConfig())
    # R = mean query + seq: [1.5, 7/3] → normalised [−1, 1] on every token
    assert plain.examples[0].adv == pytest.approx([-1.0] * len(rs[0].token_ids), abs=1e-5)
    assert plain.examples[1].adv == pytest.approx([1.0] * len(rs[1].token_ids), abs=1e-5)


def test_difficulty_filter_uses_attainable_bounds(model_and_tok):
    _, tok = model_and_tok
    rc = RewardsConfig()
    lo, hi = reward_bounds(rc)
    assert lo < 0 < hi
    rs = [_rollout(tok, "sofa"), _rollout(tok, "lamp")]
    best = group_advantages(rs, GroupReward(0, [_lr([hi], 0.0), _lr([hi], 0.0)]), tok, GRPOConfig(), rc)
    mid = group_advantages(rs, GroupReward(0, [_lr([0.5], 0.0), _lr([1.0], 0.0)]), tok, GRPOConfig(), rc)
    assert best.zero_std and not mid.zero_std
    assert not best.kept or best.difficulty <= 0.95
    assert mid.kept and 0.1 <= mid.difficulty <= 0.95
    with pytest.raises(ValueError, match="rollouts but"):
        group_advantages(rs, GroupReward(0, [_lr([1.0], 0.0)]), tok, GRPOConfig(), rc)


def test_update_moves_logprobs_in_the_advantage_direction(model_and_tok):
    model, tok = model_and_tok
    model = type(model)(model.config)
    model.load_state_dict(model_and_tok[0].state_dict())
    good, bad = _rollout(tok, "sofa ; lamp"), _rollout(tok, "rug ; rug")
    reward = GroupReward(0, [_lr([1.0, 1.0], 1.0), _lr([0.0, 0.0], 0.0)])
    cfg = GRPOConfig(lr=3e-3, mini_batches=1, ent_coef_start=0.0)
    ga = group_advantages([good, bad], reward, tok, cfg, RewardsConfig())
    batch = collate_rl(ga.examples, tok.pad_token_id)
    trainer = GRPOTrainer(model, cfg, total_steps=10)

    def seq_logp():
        with torch.no_grad():
            lp, _ = trainer.lp(batch["input_ids"], batch["attention_mask"])
        return (lp * batch["gen_mask"]).sum(1)

    before = seq_logp()
    for _ in range(3):
        out = trainer.update([[batch]], [int(batch["gen_mask"].sum())])
    after = seq_logp()
    assert after[0] > before[0] and after[1] < before[1]
    assert out["tokens"] == int(batch["gen_mask"].sum()) and out["tau"] > 0 and trainer.step == 3


def test_clip_fraction_appears_on_the_second_mini_batch(model_and_tok):
    model = type(model_and_tok[0])(model_and_tok[0].config)
    model.load_state_dict(model_and_tok[0].state_dict())
    tok = model_and_tok[1]
    rs = [_rollout(tok, t) for t in ("sofa ; lamp", "rug ; rug", "lamp", "sofa ; rug ; lamp")]
    reward = GroupReward(0, [_lr([1.0, 1.0], 1.0), _lr([0.0, 0.0], -1.0), _lr([0.2], 0.0), _lr([2.0, 0.0, 1.0], 1.0)])
    cfg = GRPOConfig(lr=5e-2, mini_batches=2, eps_low=0.01, eps_high=0.02)
    ga = group_advantages(rs, reward, tok, cfg, RewardsConfig())
    parts = [collate_rl(ga.examples[:2], tok.pad_token_id), collate_rl(ga.examples[2:], tok.pad_token_id)]
    out = GRPOTrainer(model, cfg, total_steps=1).update([[parts[0]], [parts[1]]],
                                                        [int(p["gen_mask"].sum()) for p in parts])
    assert out["clip_high"] + out["clip_low"] > 0  # after the first step the old policy is one step behind
    assert grpo.entropy_coef(0, 1, cfg.ent_coef_start, cfg.ent_coef_end) == out["ent_coef"]


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_fused_old_pass_gives_the_two_pass_update_with_one_forward_fewer(model_and_tok, micro_batches):
    """mini_batches=1 (issue 21): the old log-probs come from the training forward itself (ratio ≡ 1). The weights
    after three rounds, τ, the losses and the clip fractions equal the two-pass round's, and the old pass is
    skipped (counted)."""
    tok = model_and_tok[1]
    rs = [_rollout(tok, t) for t in ("sofa ; lamp", "rug ; rug", "lamp", "sofa ; rug ; lamp")]
    reward = GroupReward(0, [_lr([1.0, 1.0], 1.0), _lr([0.0, 0.0], -1.0), _lr([0.2], 0.0), _lr([2.0, 0.0, 1.0], 1.0)])
    results = {}
    for fuse in (False, True):
        model = type(model_and_tok[0])(model_and_tok[0].config)
        model.load_state_dict(model_and_tok[0].state_dict())
        cfg = GRPOConfig(lr=5e-2, mini_batches=1, eps_low=0.01, eps_high=0.02, ent_coef_start=0.01,
                         fuse_old_pass=fuse)
        ga = group_advantages(rs, reward, tok, cfg, RewardsConfig())
        half = len(ga.examples) // micro_batches
        mbs = [collate_rl(ga.examples[i * half:(i + 1) * half], tok.pad_token_id) for i in range(micro_batches)]
        trainer = GRPOTrainer(model, cfg, total_steps=3)
        calls: list[int] = []

        def counted(flat, _pass=trainer._old_pass, _calls=calls):
            _calls.append(len(flat))
            return _pass(flat)

        trainer._old_pass = counted
        outs = [trainer.update([mbs], [sum(int(b["gen_mask"].sum()) for b in mbs)]) for _ in range(3)]
        assert trainer.fused(1) is fuse and calls == ([] if fuse else [micro_batches] * 3)
        results[fuse] = (model.state_dict(), outs)
    (w0, o0), (w1, o1) = results[False], results[True]
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    for a, b in zip(o0, o1, strict=True):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-9) for k in a), (a, b)
    assert o1[0]["clip_high"] == o1[0]["clip_low"] == 0  # one step per round: nothing to clip


def test_dropout_keeps_the_separate_old_pass(model_and_tok):
    """Train-mode dropout changes the forward, so the ratio is not 1: the old pass stays."""
    model = type(model_and_tok[0])(model_and_tok[0].config)
    model.model.layers[0].mlp.act_fn = torch.nn.Sequential(torch.nn.SiLU(), torch.nn.Dropout(0.1))
    trainer = GRPOTrainer(model, GRPOConfig(mini_batches=1), total_steps=1)
    assert not trainer.fused(1) and not GRPOTrainer(model_and_tok[0], GRPOConfig(), total_steps=1).fused(2)
