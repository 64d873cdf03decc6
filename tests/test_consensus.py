"""Direct-cache decoding: consensus over several generated lists (rollout/consensus.py)."""

from __future__ import annotations

from rollout.consensus import consensus, direct_lists
from rollout.engine import Rollout, Sampling


def test_consensus_ranks_by_lists_holding_a_query_then_first_appearance():
    greedy = ["sofa", "rug", "sofa", "lamp"]  # a repeat inside one list counts once
    samples = [["Lamp", "desk"], ["  lamp ", "rug"], ["chair", "desk", ""]]
    # lamp: 3 lists; rug: 2; desk: 2 (first seen later than rug); sofa: 1 (greedy, first); chair: 1
    assert consensus([greedy, *samples], k=10) == ["lamp", "rug", "desk", "sofa", "chair"]
    assert consensus([greedy, *samples], k=2) == ["lamp", "rug"]
    assert consensus([greedy], k=10) == ["sofa", "rug", "lamp"]  # one list: de-duplicated, order kept
    assert consensus([[], [None, " "]], k=5) == []


class _Scripted:
    """An engine that answers greedy calls and sampled calls with fixed lists (records the calls)."""

    policy_version = 0

    def __init__(self, greedy, sampled):
        self.greedy, self.sampled, self.calls = greedy, sampled, []

    def generate(self, prompts, sampling: Sampling):
        self.calls.append(sampling)
        src = self.greedy if sampling.greedy else self.sampled
        return [[Rollout(i, [], [], [], "", list(q), 0, "stop") for q in src[i][: sampling.n]]
                for i in range(len(prompts))]


def test_direct_lists_merges_greedy_and_samples_per_prompt():
    eng = _Scripted(greedy=[[["a", "a", "b"]], [["x"]]],
                    sampled=[[["b", "c"], ["b"], ["c"]], [["y"], ["x", "y"], ["z"]]])
    assert direct_lists(eng, ["p0", "p1"], 0, 32, k=5) == [["a", "b"], ["x"]]
    assert direct_lists(eng, ["p0", "p1"], 3, 32, k=5, seed=4) == [["b", "c", "a"], ["x", "y", "z"]]
    s = eng.calls[-1]
    assert (s.n, s.temperature, s.top_k, s.max_tokens, s.seed) == (3, 1.0, 100, 32, 4)


def test_eval_generate_lists_concat_or_consensus():
    from aigq.config import load_config
    from aigq.evaluation.policy import generate_lists

    eng = _Scripted(greedy=[[["a", "b"]]], sampled=[[["c", "b"], ["c", "d"], ["c"]]])
    concat = load_config(None, ["eval.sampled_lists=3"])
    assert generate_lists(eng, ["p"], concat, 32, k=10) == [["a", "b", "c", "d"]]  # greedy first, then samples
    vote = load_config(None, ["eval.sampled_lists=3", "eval.merge=consensus"])
    assert generate_lists(eng, ["p"], vote, 32, k=10) == [["c", "b", "a", "d"]]


def test_ab_policy_channels_decode_like_the_direct_cache(tmp_path, monkeypatch):
    import polars as pl

    from aigq.config import load_config
    from aigq.evaluation import ab_inputs, recommend

    seen = {}
    test = pl.DataFrame({"user_id": [1, 2], "day": [31, 31], "prompt": ["p1", "p2"]},
                        schema={"user_id": pl.Int64, "day": pl.Int32, "prompt": pl.String})

    def fake_policy(cfg, src, frame, k):
        seen["policy"] = (src, cfg.eval.greedy_lists, cfg.eval.sampled_lists, cfg.eval.merge)
        return recommend.arm_frame(frame, [["a"], ["b"]], k)

    def fake_arm(cfg, arm, frame, k, say=None):
        return recommend.arm_frame(frame, [["x"], ["y"]], k)

    monkeypatch.setattr(ab_inputs, "policy_folder_lists", fake_policy)
    monkeypatch.setattr(recommend, "arm_lists", fake_arm)
    cfg = load_config(None, [f"ab.out_dir={tmp_path}", "serve.direct_samples=3", "eval.sampled_lists=4"])
    cfg = cfg.model_copy(update={"ab": cfg.ab.model_copy(update={"channels": {**cfg.ab.channels,
                                                                             "direct": "policy:direct:somewhere"}})})
    out = ab_inputs.channel_lists(cfg, test, {}, ["direct", "coclick"], lambda _m: None)
    assert seen["policy"] == ("policy:direct:somewhere", 1, 3, "consensus")  # serve's decoding, not eval's 1 + 4
    assert out["direct"]["queries"].to_list() == [["a"], ["b"]]
    names = sorted(p.name for p in (tmp_path / "lists").iterdir())
    assert names == ["coclick-co-click.parquet", "direct-policy_direct_somewhere-c3.parquet"]


def test_policy_sourced_channels_count_as_aigq_whatever_their_name():
    from aigq.config import load_config
    from aigq.evaluation import ab_inputs

    cfg = load_config(None, [])
    cfg = cfg.model_copy(update={"ab": cfg.ab.model_copy(update={"channels": {
        "coclick": "co-click", "sft": "policy:direct:somewhere", "mine": "direct-il-sft"}})})
    assert ab_inputs.aigq_channels(cfg) == ["direct", "think", "sft", "mine"]  # co-click stays legacy recall
