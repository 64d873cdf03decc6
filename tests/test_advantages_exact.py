"""Advantages through ``rl_batch.group_advantages`` against an independent float64 NumPy implementation of Eqs. 11–13
and 17 (digest §3.4–§3.5), exact zeros for identical rollouts, and the difficulty filter's attainable bounds (issue 19,
items 12–14). ``hypothesis`` is not a dependency: the property tests are seeded randomised loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aigq.config import GRPOConfig, RewardsConfig
from aigq.data import prompt as P
from aigq.models.tiny import train_tokenizer
from aigq.rewards import rules
from aigq.rewards.compose import GroupReward, ListReward, RewardComposer, RewardGroup
from learner import grpo
from learner.grpo import SEP
from learner.rl_batch import FMT_PARSED_MIN, empty_query_reward, group_advantages, list_reward, reward_bounds
from learner.token_roles import NO_TRIGGER, token_roles
from rollout.engine import Rollout

WORDS = ["sofa", "lamp", "rug", "desk lamp", "velvet sofa", "pool floats", "cozy throw blanket", "games", "decor",
         "bar stool", "mirror", "wall art"]


@pytest.fixture(scope="module")
def tok():
    lines = [" ; ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]
    lines += [f"<think> user {i} likes sofa </think>\n{i},{i + 1} => sofa ; lamp\n- => rug" for i in range(30)]
    return train_tokenizer(iter(lines * 5), 400)


def _lr(q_totals, seq_total, trigger_groups=()):
    n = len(q_totals)
    comp = {k: [0.0] * n for k in ("ctr_p", "ctr", "rouge", "length", "trigger", "rep")}
    return ListReward(["q"] * n, {**comp, "total": [float(x) for x in q_totals]},
                      {"format": 0.0, "rep": 0.0, "diversity": 0.0, "total": float(seq_total)},
                      trigger_groups=[float(x) for x in trigger_groups])


def _rollout(tok, text, variant="direct"):
    ids = tok(text)["input_ids"] + [tok.eos_token_id]
    prompt = tok("user 1 likes sofa")["input_ids"]
    return Rollout(0, prompt, ids, [-1.0] * len(ids), text, P.parse_output(text, variant), 0, "stop")


# ------------------------------------------------------------------ the independent reference (NumPy, float64)


def _norm(vals: np.ndarray, eps: float) -> np.ndarray:
    """(x − μ)/sqrt(σ² + ε), population variance, ε inside the root (Eqs. 12–13)."""
    return (vals - vals.mean()) / np.sqrt(vals.var() + eps)


def _per_position(rows: list[list[float]], eps: float) -> dict[tuple[int, int], float]:
    """Group statistics per position j over the rollouts that have position j (the documented rule for missing
    slots: a rollout without slot j is left out of slot j's μ and σ)."""
    out = {}
    for j in range(max([len(r) for r in rows] + [0])):
        members = [i for i, r in enumerate(rows) if len(r) > j]
        z = _norm(np.array([rows[i][j] for i in members], dtype=np.float64), eps)
        out.update({(i, j): float(v) for i, v in zip(members, z, strict=True)})
    return out


def reference_token_advantages(rq, rseq, trig, roles, cfg: GRPOConfig, q_floor: float) -> list[list[float]]:
    """Per token of each rollout: Eq. 11 on query tokens (slot statistics over the rollouts with that slot, plus
    λ·Â_seq), λ·Â_seq on separators / trailing / rationale tokens (digest §3.4 [I]), Eq. 17 alone on trigger tokens;
    plain GRPO: the normalised R = mean R_query (empty list: ``q_floor``) + R_seq on every token; then ±clip."""
    seq = _norm(np.asarray(rseq, dtype=np.float64), cfg.adv_eps)
    if cfg.algorithm == "grpo":
        tot = np.array([(np.mean(q) if q else q_floor) + s for q, s in zip(rq, rseq, strict=True)], dtype=np.float64)
        a = _norm(tot, cfg.adv_eps)
        return [[float(np.clip(a[i], -cfg.adv_clip, cfg.adv_clip))] * len(r[0]) for i, r in enumerate(roles)]
    qa, ta = _per_position(rq, cfg.adv_eps), _per_position(trig, cfg.adv_eps)
    out = []
    for i, (slots, trigs) in enumerate(roles):
        row = []
        for s, k in zip(slots, trigs, strict=True):
            if cfg.variant == "think" and k != NO_TRIGGER:
                v = ta[i, k]
            elif s >= 0:
                v = qa[i, s] + cfg.lam * seq[i]
            else:
                v = cfg.lam * seq[i]
            row.append(float(np.clip(v, -cfg.adv_clip, cfg.adv_clip)))
        out.append(row)
    return out


# ------------------------------------------------------------------ random groups


def _reward_value(rng) -> float:
    # a small value set makes ties (and whole constant slots) frequent: where float32 statistics went wrong
    return float(rng.choice([7.3, 7.3, 0.1, -0.5, 2.2, 1 / 3])) if rng.random() < 0.7 else float(rng.normal(0, 2))


def _random_direct(rng, g):
    texts, rq = [], []
    for _ in range(g):
        n = int(rng.integers(0, 11))  # K ≤ 10; 0 = empty list (every slot missing)
        texts.append(" ; ".join(rng.choice(WORDS, n)))
        rq.append([_reward_value(rng) for _ in range(n)])
    return texts, rq, [[] for _ in range(g)]


def _random_think(rng, g):
    texts, rq, trig = [], [], []
    for _ in range(g):
        lines, prev, n_q = [], None, 0
        for _ in range(int(rng.integers(0, 5))):  # interest points
            m = int(rng.integers(1, 4))
            if n_q + m > 10:
                break
            t = "-" if rng.random() < 0.2 and prev != "-" else ",".join(
                str(x) for x in sorted(set(rng.integers(1, 9, int(rng.integers(1, 3))).tolist())))
            if t == prev:  # consecutive lines with one T_k would merge into one interest point: keep them distinct
                t = t + ",9" if t != "-" else "9"
            lines.append(f"{t} => " + " ; ".join(rng.choice(WORDS, m)))
            prev, n_q = t, n_q + m
        head = "<think> user likes sofa </think>\n" if rng.random() < 0.5 else ""
        texts.append(head + "\n".join(lines))
        rq.append([_reward_value(rng) for _ in range(n_q)])
        trig.append([_reward_value(rng) for _ in lines])
    return texts, rq, trig


@pytest.mark.parametrize("variant", ["direct", "think"])
def test_group_advantages_match_an_independent_float64_reference(tok, variant):
    rng = np.random.default_rng(19 if variant == "direct" else 20)
    rc = RewardsConfig()
    q_floor = -rc.w_rep_query  # the empty list's mean query reward under the default weights
    checked = {"G=1": 0, "missing": 0, "trigger": 0, "grpo": 0}
    for _ in range(60):
        g = int(rng.integers(1, 9))
        texts, rq, trig = (_random_direct if variant == "direct" else _random_think)(rng, g)
        rseq = [_reward_value(rng) for _ in range(g)]
        cfg = GRPOConfig(variant=variant, lam=float(rng.choice([0.0, 0.5, 1.0])),
                         adv_eps=float(rng.choice([1e-6, 1e-6, 0.5])), adv_clip=float(rng.choice([2.0, 2.0, 0.7])),
                         algorithm="grpo" if rng.random() < 0.25 else "il-grpo")
        rollouts = [_rollout(tok, t, variant) for t in texts]
        for r, q in zip(rollouts, rq, strict=True):
            assert len(r.queries) == len(q)  # the generated list is what the rewards scored
        reward = GroupReward(0, [_lr(q, s, t) for q, s, t in zip(rq, rseq, trig, strict=True)])
        ga = group_advantages(rollouts, reward, tok, cfg, rc)
        roles = [token_roles(tok, r.token_ids, variant) for r in rollouts]
        want = reference_token_advantages(rq, rseq, trig, roles, cfg, q_floor)
        for i, ex in enumerate(ga.examples):
            assert len(ex.adv) == len(rollouts[i].token_ids)
            np.testing.assert_allclose(ex.adv, want[i], rtol=0, atol=1e-6, err_msg=f"rollout {i}: {texts[i]!r}")
        checked["G=1"] += g == 1
        checked["missing"] += len({len(q) for q in rq}) > 1
        checked["trigger"] += any(k != NO_TRIGGER for _, t in roles for k in t)
        checked["grpo"] += cfg.algorithm == "grpo"
    assert checked["G=1"] and checked["missing"] and checked["grpo"]
    assert checked["trigger"] or variant == "direct"


def test_group_normalise_of_equal_members_is_exactly_zero():
    for dtype in (torch.float32, torch.float64):
        for g in (1, 3, 7):
            assert torch.equal(grpo.group_normalise(torch.full((g,), 7.3, dtype=dtype)), torch.zeros(g, dtype=dtype))
        x = torch.tensor([[7.3, 0.1], [7.3, 5.0], [1.0, 0.1]], dtype=dtype)
        mask = torch.tensor([[True, True], [True, False], [False, True]])
        assert torch.equal(grpo.group_normalise(x, mask), torch.zeros_like(x))  # members of each column are equal


@pytest.mark.parametrize("variant", ["direct", "think"])
@pytest.mark.parametrize("algorithm", ["il-grpo", "grpo"])
@pytest.mark.parametrize("g", [1, 3, 7])
def test_identical_rollouts_get_exactly_zero_advantage(tok, variant, algorithm, g):
    text = "sofa ; lamp ; rug" if variant == "direct" else "<think> r </think>\n1 => sofa ; lamp\n2,3 => rug"
    rs = [_rollout(tok, text, variant) for _ in range(g)]
    reward = GroupReward(0, [_lr([7.3, 7.3, 7.3], 0.7, [7.3, 0.1]) for _ in range(g)])
    for lam in (0.0, 0.5, 1.0):
        cfg = GRPOConfig(variant=variant, algorithm=algorithm, lam=lam)
        ga = group_advantages(rs, reward, tok, cfg, RewardsConfig())
        assert ga.zero_std
        for ex in ga.examples:
            assert all(a == 0.0 for a in ex.adv), ex.adv  # ε is inside the root: zero variance → exactly 0


def test_think_end_to_end_trigger_tokens_get_only_the_trigger_advantage_eq17(tok):
    # rollout 0: three queries at two interest points; rollout 1: two lines with one T_k = one merged point
    texts = ["<think> user likes sofa </think>\n1 => sofa ; lamp\n2 => rug", "1 => sofa\n1 => desk lamp"]
    rs = [_rollout(tok, t, "think") for t in texts]
    reward = GroupReward(0, [_lr([1.0, 0.0, 2.0], 1.0, [1.0, 0.5]), _lr([0.0, 2.0], 0.0, [0.0])])
    cfg = GRPOConfig(variant="think", lam=0.5, adv_eps=1e-12, adv_clip=10.0)
    ga = group_advantages(rs, reward, tok, cfg, RewardsConfig())
    # seq [1, 0] → λ·Â_seq = ±0.5; slot 0 [1, 0] → ±1; slot 1 [0, 2] → ∓1; slot 2 only rollout 0 → 0 (+λ·Â_seq);
    # trigger point 0 [1, 0] → ±1; point 1 only rollout 0 → 0
    by_text = [{"1": 1.0, "2": 0.0, "sofa": 1.5, "lamp": -0.5, "rug": 0.5, None: 0.5},
               {"1": -1.0, "sofa": -1.5, "desk lamp": 0.5, None: -0.5}]
    for i, r in enumerate(rs):
        slots, trig = token_roles(tok, r.token_ids, "think")
        got: dict[object, set[float]] = {}
        pieces: dict[tuple[str, int], str] = {}
        for t, s, k, a in zip(r.token_ids, slots, trig, ga.examples[i].adv, strict=True):
            key = ("t", k) if k != NO_TRIGGER else ("q", s) if s != SEP else ("sep", 0)
            pieces[key] = pieces.get(key, "") + tok.decode([t])
            got.setdefault(key, set()).add(round(a, 6))
        for key, vals in got.items():
            name = None if key[0] == "sep" else pieces[key].strip(" ;\n")
            assert vals == {by_text[i][name]}, (i, key, pieces[key], vals)
        assert {pieces[("t", k)].strip() for k in range(2 if i == 0 else 1)} == ({"1", "2"} if i == 0 else {"1"})
        if i == 1:  # both "1 =>" lines carry trigger tokens, and both got point 0's advantage (checked above)
            assert set(trig) == {NO_TRIGGER, 0, 1} and pieces[("t", 1)].strip() == "1"


# ------------------------------------------------------------------ difficulty filter: attainable bounds (item 13)


def test_reward_bounds_are_the_attainable_range_of_the_default_weights():
    # R(o) = mean_j R_query + R_seq. R_query ∈ [−w_rep_query, w_ctr·β + w_rouge + w_length] = [−0.5, 2.2];
    # a parsed list: R_fmt ≥ 1 − 3·0.25 − 0.5 = −0.25, R_rep ≥ −1 → R_seq ∈ [−1.25, 1] → R ∈ [−1.75, 3.2];
    # an empty list: −0.5 + R_fmt(−1) = −1.5, inside.
    lo, hi = reward_bounds(RewardsConfig())
    assert (lo, hi) == pytest.approx((-1.75, 3.2))


def test_difficulty_filter_fires_on_both_sides_of_the_attainable_range(tok):
    rc, cfg = RewardsConfig(), GRPOConfig()
    lo, hi = reward_bounds(rc)
    rs = [_rollout(tok, "sofa ; lamp"), _rollout(tok, "rug ; rug")]

    def run(lists):
        return group_advantages(rs, GroupReward(0, lists), tok, cfg, rc)

    floor = run([_lr([-0.5, -0.5], lo + 0.5), _lr([-0.5, -0.5], lo + 0.5)])  # mean R = attainable minimum
    empty = run([_lr([], -1.0), _lr([], -1.0)])  # nothing parsed (R_fmt = −1): R = −1.5, the composer's floor
    top = run([_lr([2.2, 2.2], hi - 2.2), _lr([2.2, 2.2], hi - 2.2)])  # mean R = attainable maximum
    mid = run([_lr([0.5, 1.0], 0.0), _lr([1.0, 1.5], 0.5)])
    assert floor.difficulty == pytest.approx(0.0) and not floor.kept
    assert empty.difficulty < cfg.difficulty_low and not empty.kept
    assert top.difficulty == pytest.approx(1.0) and not top.kept
    assert cfg.difficulty_low <= mid.difficulty <= cfg.difficulty_high and mid.kept
    # just inside the low bound is kept, just outside is not
    at = lo + cfg.difficulty_low * (hi - lo)
    assert run([_lr([0.0], at + 1e-3), _lr([0.0], at + 1e-3)]).kept
    assert not run([_lr([0.0], at - 1e-3), _lr([0.0], at - 1e-3)]).kept


def _composer(rc):
    return RewardComposer(rc, ctr_fn=lambda ctx, idx, qs: np.ones(len(qs)), expected_count=3,
                          similarity=rules.ngram_similarity)


def test_scored_lists_reach_both_ends_of_the_bounds():
    rc = RewardsConfig(similarity="ngram")
    lo, hi = reward_bounds(rc)
    q_floor = empty_query_reward(rc)
    assert q_floor == -rc.w_rep_query
    ref = ["velvet sofa", "floor lamp", "wool rug"]
    junk = "x" * 70  # a garbage item (> max_query_chars)
    worst = "a;" + " ;  ; ".join([junk] * 60) + "\n"  # duplicates, empty items, bad separators, garbage, count off
    outputs = [P.format_target(ref), worst, "", "sofa"]
    lists = _composer(rc).score_groups([RewardGroup(0, outputs, ref)])[0].lists
    assert lists[1].seq["format"] == FMT_PARSED_MIN  # the bound's R_fmt minimum is what format_reward gives
    got = [list_reward(lr, q_floor) for lr in lists]
    assert got[0] == pytest.approx(hi)  # the reference itself with p̂ = 1 attains the maximum
    assert lo <= got[1] < lo + 0.1  # the minimum is approached by ever longer lists of duplicated garbage
    assert got[2] == pytest.approx(-1.5)  # the empty list
    assert all(lo - 1e-9 <= x <= hi + 1e-9 for x in got)


def test_reward_bounds_hold_for_random_weights_and_outputs():
    rng = np.random.default_rng(13)
    pool = WORDS + ["x" * 70, "", "sofa\n", "a;b", "velvet  sofa", "\x07bell"]
    for _ in range(25):
        w = {k: float(rng.choice([0.0, 0.3, 1.0, 2.0, -0.5])) for k in
             ("w_ctr", "w_rouge", "w_length", "w_rep_query", "w_format", "w_rep", "w_diversity")}
        rc = RewardsConfig(similarity="ngram", reward_clip=float(rng.choice([10.0, 1.0])), **w)
        lo, hi = reward_bounds(rc, "direct")
        outs = []
        for _ in range(8):
            items = list(rng.choice(pool, int(rng.integers(0, 12))))
            outs.append(rng.choice([" ; ", ";", " ;  ; "]).join(items) + str(rng.choice(["", " ;", "\n"])))
        lists = _composer(rc).score_groups([RewardGroup(0, outs, WORDS[:3])])[0].lists
        for o, lr in zip(outs, lists, strict=True):
            r = list_reward(lr, empty_query_reward(rc, "direct"))
            assert lo - 1e-9 <= r <= hi + 1e-9, (w, o, r, lo, hi)
