"""RolloutWorker pool on a local Ray: prompts shared across workers, weights synced to all, and a worker killed
mid-batch loses no prompt (restarted, re-synced to the current policy version, its shard resubmitted)."""

from __future__ import annotations

import pytest

from aigq.rollout import weight_sync
from aigq.rollout.engine import Sampling

pytestmark = pytest.mark.usefixtures("ray_local")
PROMPTS = [f"user {i} likes sofa" for i in range(12)]


def test_pool_shares_prompts_syncs_weights_and_survives_a_killed_worker(tmp_path, tiny_policy):
    import ray
    import torch

    from aigq.actors.rollout import RolloutPool

    folder, model = tiny_policy(tmp_path / "m")
    pool = RolloutPool("transformers", folder, n_workers=2, num_cpus=0.5, shard_prompts=3,
                       engine_kw={"threads": 1})
    try:
        s = Sampling(n=2, max_tokens=6, seed=11)
        first = pool.generate(PROMPTS, s)
        assert [len(g) for g in first] == [2] * 12 and [g[0].prompt_index for g in first] == list(range(12))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.3)
        pool.sync(weight_sync.serialise(model), version=5)
        assert {i["policy_version"] for i in pool.info()} == {5}
        synced = pool.generate(PROMPTS, s)
        assert all(r.policy_version == 5 for g in synced for r in g)

        killed = []

        def kill_first(actor: int, batch: int) -> None:
            if not killed:  # kill the worker that just received shard 0, mid-batch
                killed.append(actor)
                ray.kill(pool.workers[actor], no_restart=False)

        again = pool.generate(PROMPTS, s, on_dispatch=kill_first)
        assert killed and pool.stats["retries"] >= 1
        assert len(again) == 12 and all(r.policy_version == 5 for g in again for r in g)
        # the retried shard was sampled by a restarted, re-synced engine with the same seed: same samples
        assert [[r.token_ids for r in g] for g in again] == [[r.token_ids for r in g] for g in synced]
    finally:
        pool.shutdown()
