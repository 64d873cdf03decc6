"""IL-GRPO as a Ray actor system: DP invariance of the update (1 vs 2 learner workers), the driver loop end to end
with a rollout worker and a reward actor killed mid-iteration (no sample lost), and exact resume after a driver
crash. Tiny policy, random CTR model, transformers engine: these test the machinery; `aigq grpo` measures learning."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
from tiny_policy import SCFG, build_policy, write_samples

from aigq.config import AIGQConfig, load_config
from aigq.tracking import Tracker

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from aigq.config import CTRConfig
    from aigq.rewards.ctr import CTRModel, save_model

    root = tmp_path_factory.mktemp("grpo")
    samples = write_samples(root / "samples", n=48)
    policy = build_policy(root / "policy", samples)
    ccfg = CTRConfig(hash_buckets=4096, dim=8, hidden=8, history_len=4)
    torch.manual_seed(0)
    save_model(CTRModel(ccfg.hash_buckets, ccfg.dim, ccfg.hidden, ccfg.history_len), ccfg, root / "ctr" / "day-005")
    return root, samples, policy


def _cfg(root, policy, out, **extra) -> AIGQConfig:
    over = {
        "run.output_dir": str(out), "tracking.enabled": "false", "ctr.dir": str(root / "ctr"),
        "samples.history_len": SCFG.history_len, "samples.history_days": SCFG.history_days,
        "samples.label_cap": SCFG.label_cap, "sft.eval_days": 1, "grpo.init_policy": str(policy),
        "grpo.iterations": 3, "grpo.prompts_per_iteration": 3, "grpo.group_size": 4, "grpo.eval_every": 10,
        "grpo.eval_prompts": 2, "grpo.checkpoint_every": 1, "grpo.lr": 1e-3, "grpo.difficulty_low": 0.0,
        "grpo.difficulty_high": 1.0, "rollout.engine": "transformers", "rollout.max_tokens": 12,
        "rollout.cpus_per_worker": 0.5, "rewards.num_actors": 1, "rewards.num_cpus_per_actor": 0.5,
        "rewards.batch_groups": 1, "rewards.similarity": "ngram", "learner.num_workers": 1, **extra}
    return load_config(None, [f"{k}={v}" for k, v in over.items()])


def test_update_is_invariant_to_the_number_of_learner_workers(setup, tmp_path):
    from transformers import AutoTokenizer

    from actors.learner import LearnerGroup
    from learner.grpo_trainer import RLExample

    root, _, policy = setup
    tok = AutoTokenizer.from_pretrained(policy)
    g = torch.Generator().manual_seed(0)
    examples = []
    for i in range(6):  # uneven lengths and advantages, some tokens masked out
        n_p, n_g = 5 + i, 3 + (i * 2) % 5
        ids = torch.randint(5, len(tok), (n_p + n_g,), generator=g).tolist()
        adv = torch.randn(n_g, generator=g).clamp(-2, 2).tolist()
        examples.append(RLExample(tuple(ids), n_p, tuple(adv), tuple(j % 4 != 3 for j in range(n_g))))
    weights, metrics = [], []
    for workers in (1, 2):
        cfg = _cfg(root, policy, tmp_path / f"w{workers}", **{"learner.num_workers": workers, "grpo.micro_batch": 2,
                                                              "rollout.cpus_per_worker": 0.1})
        group = LearnerGroup(cfg, policy, 3, tok.pad_token_id, mode="grpo")
        try:
            metrics.append(group.grpo_update(examples, iteration=0))
            assert len(set(group.weights_digests())) == 1
            weights.append(group.weights())
        finally:
            group.shutdown()
    for k in ("train/pg_loss", "train/entropy", "train/entropy_tau", "train/tokens"):
        assert metrics[0][k] == pytest.approx(metrics[1][k], rel=1e-4, abs=1e-6), k
    for name, w in weights[0].items():
        assert torch.allclose(w, weights[1][name], atol=1e-6), name
    assert any(not torch.equal(w, v) for w, v in zip(weights[0].values(), _initial(policy).values(), strict=True))


def _initial(policy):
    from aigq.models.factory import load_policy

    return load_policy(policy)[0].state_dict()


def _kill_process(actor) -> None:
    """SIGKILL the actor's process while it works (a real crash; Ray restarts it under max_restarts). The pid comes
    from the GCS actor table, not from the actor, which is busy with the batch."""
    from ray._private import state

    aid = actor._actor_id.hex()
    for _ in range(100):
        pid = (state.actors(aid) or {}).get("Pid")
        if pid:
            os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.05)
    raise AssertionError(f"no pid for actor {aid}")


def test_loop_survives_killed_rollout_and_reward_actors(setup, tmp_path):
    from actors.grpo_driver import run_grpo

    root, samples, policy = setup
    cfg = _cfg(root, policy, tmp_path / "run")
    killed: list[str] = []

    def fault(kind, actors, actor_index, batch):
        if len(killed) < 2 and kind not in killed:  # once each, in iteration 1, right after submission
            pool = actors.rollout.workers if kind == "rollout" else actors.rewards.actors
            _kill_process(pool[actor_index])
            killed.append(kind)

    fig = run_grpo(cfg, Tracker(cfg.tracking), samples, on_dispatch=fault)
    assert killed == ["rollout", "reward"]
    assert fig["rollout_retries"] >= 1 and fig["reward_retries"] >= 1
    for h in fig["history"]:  # every prompt's G rollouts were generated and scored exactly once
        assert h["rollouts/generated"] == h["rollouts/scored"] == 3 * 4
        assert h["rollout/policy_lag"] == 0.0  # on-policy (the default)
    assert [h["policy_version"] for h in fig["history"]] == [1, 2, 3] and fig["weights_identical"]


def test_resume_after_a_driver_crash_ends_with_the_same_weights(setup, tmp_path):
    from safetensors.torch import load_file

    from actors.grpo_driver import run_grpo

    root, samples, policy = setup
    straight = _cfg(root, policy, tmp_path / "straight")
    run_grpo(straight, Tracker(straight.tracking), samples)

    class Crash(RuntimeError):
        pass

    def crash_after_two(i: int, n: int) -> None:
        if i == 2:
            raise Crash("driver killed")

    crashed = _cfg(root, policy, tmp_path / "crashed")
    with pytest.raises(Crash):
        run_grpo(crashed, Tracker(crashed.tracking), samples, on_iteration=crash_after_two)
    resumed = _cfg(root, policy, tmp_path / "crashed", **{"grpo.resume": "latest"})
    fig = run_grpo(resumed, Tracker(resumed.tracking), samples)
    assert [h["policy_version"] for h in fig["history"]] == [3]  # only the missing iteration ran
    a = load_file(tmp_path / "straight" / "grpo" / "policy" / "model.safetensors")
    b = load_file(tmp_path / "crashed" / "grpo" / "policy" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_one_step_off_policy_trains_on_rollouts_one_update_old(setup, tmp_path):
    """grpo.one_step_off_policy: iteration i+1's lists are made by the policy before update i (while i is scored and
    trained), so every iteration after the first trains on rollouts exactly one version old; nothing is lost."""
    from safetensors.torch import load_file

    from actors.grpo_driver import run_grpo

    root, samples, policy = setup
    cfg = _cfg(root, policy, tmp_path / "off", **{"grpo.one_step_off_policy": "true"})
    fig = run_grpo(cfg, Tracker(cfg.tracking), samples)
    hist = fig["history"]
    assert [h["rollout/policy_lag"] for h in hist] == [0.0, 1.0, 1.0]
    assert [h["policy_version"] for h in hist] == [1, 2, 3] and fig["weights_identical"]
    assert all(h["rollouts/generated"] == h["rollouts/scored"] == 3 * 4 for h in hist)
    assert all("seconds/generate_ahead_wait" in h for h in hist) and fig["seconds_per_iteration"] > 0
    before, after = (load_file(p / "model.safetensors") for p in (policy, tmp_path / "off" / "grpo" / "policy"))
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
