"""Direct-cache decoding: consensus over several generated lists (aigq/rollout/consensus.py)."""

from __future__ import annotations

from aigq.rollout.consensus import consensus, direct_lists
from aigq.rollout.engine import Rollout, Sampling


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
