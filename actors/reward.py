"""RewardActor pool: Ray actors that load the CTR model once and score groups of rollouts (paper §3.5, Eq. 10).

    pool = RewardPool(ctr_dir, cfg.rewards, expected_count=cfg.samples.label_cap)
    rewards = pool.score(groups)          # list[GroupReward], in input order, one per group
    pool.shutdown()

* Each :class:`RewardActor` builds one :class:`~aigq.rewards.compose.RewardComposer` (CTR model + similarity
  backend) in its constructor and then scores batches of ``batch_groups`` groups with one batched CTR call.
* The pool keeps every actor busy: a new batch goes to an actor as soon as its previous one returns.
* **Supervision** (``actors.pool.dispatch``, shared with the rollout pool). Actors run with ``max_restarts``
  (Ray restarts a dead actor and re-runs its constructor, reloading the CTR model) and ``max_task_retries=0``: the
  pool, not Ray, decides about retries. When a batch fails because its actor died (``RayActorError``), the pool
  resubmits *that batch* (to the restarted actor or, if it is gone for good, a fresh one) up to
  ``max_batch_retries`` times. A batch's result is accepted once, keyed by batch id, so no group is
  lost or scored twice; scoring is deterministic, so a retried batch gives the same numbers.
* **No shared filesystem** (``actors.shipping``): the CTR folder is a path or a :class:`ShippedFolder` (its files
  in the object store, ``ship="always"``, or ``"auto"`` on a multi-node cluster); each actor's constructor, a restart's
  too, loads it from a node-local copy, so neither another node nor a deleted driver folder breaks a restart.
* Garbage in never kills an actor: groups that raise get the composer's defined floor reward
  (``GroupReward.error`` says why).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray

from actors.pool import dispatch, wait_alive
from actors.shipping import ShippedFolder, local_folder, maybe_ship
from aigq.config import RewardsConfig
from aigq.rewards.compose import GroupReward, RewardComposer, RewardGroup


class RewardScorer:
    """The actor's body, usable without Ray (tests, single-process runs)."""

    def __init__(self, ctr_dir: str | None, cfg: RewardsConfig, expected_count: int = 10):
        ctr_fn = None
        if ctr_dir is not None:
            from aigq.rewards.ctr import CTRScorer

            ctr_fn = CTRScorer.load(ctr_dir).score
        self.composer = RewardComposer(cfg, ctr_fn, expected_count)
        self.batches = 0

    def score(self, groups: Sequence[RewardGroup]) -> list[GroupReward]:
        self.batches += 1
        return self.composer.score_groups_safe(list(groups))


@ray.remote
class RewardActor:
    def __init__(self, ctr_dir: str | ShippedFolder | None, cfg: dict[str, Any], expected_count: int = 10):
        import torch

        torch.set_num_threads(1)  # one core per actor; parallelism comes from the pool
        ctr_dir = local_folder(ctr_dir) if ctr_dir is not None else None  # a shipped folder: this node's copy
        self.scorer = RewardScorer(ctr_dir, RewardsConfig.model_validate(cfg), expected_count)

    def score(self, batch_id: int, groups: list[RewardGroup]) -> tuple[int, list[GroupReward]]:
        return batch_id, self.scorer.score(groups)

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "batches": self.scorer.batches, "similarity": self.scorer.composer.sim_name}


class RewardPool:
    def __init__(self, ctr_dir: str | Path | ShippedFolder | None, cfg: RewardsConfig, expected_count: int = 10,
                 num_actors: int | None = None, ship: str = "never"):
        """``ship``: "never" (actors open ``ctr_dir``), "always" (through the object store) or "auto" (shipped on a
        multi-node cluster), ``actors.shipping``; a :class:`ShippedFolder` is used as is."""
        self.cfg, self.expected = cfg, expected_count
        self.ctr_dir = maybe_ship(ctr_dir, ship)  # kept: replacement actors get the same spec (its object lives on)
        self.stats = {"batches": 0, "retries": 0, "replaced_actors": 0}
        self.actors = [self._new_actor() for _ in range(num_actors or cfg.num_actors)]

    def _new_actor(self):
        return RewardActor.options(num_cpus=self.cfg.num_cpus_per_actor, max_restarts=self.cfg.max_restarts,
                                   max_task_retries=0).remote(self.ctr_dir, self.cfg.model_dump(), self.expected)

    def info(self) -> list[dict[str, Any]]:
        return ray.get([a.info.remote() for a in self.actors])

    def score(self, groups: Sequence[RewardGroup],
              on_dispatch: Callable[[int, int], None] | None = None) -> list[GroupReward]:
        """Score ``groups`` on the pool; result i belongs to groups[i]. ``on_dispatch(actor_index, batch_index)`` is
        called after each submission (monitoring, and tests that kill an actor mid-batch). The supervised loop is
        the one shared with the rollout pool (``actors.pool.dispatch``)."""
        groups = list(groups)
        size = self.cfg.batch_groups
        starts = list(range(0, len(groups), size))

        def submit(a: int, b: int):
            self.stats["batches"] += 1
            return self.actors[a].score.remote(b, groups[starts[b] : starts[b] + size])

        out = dispatch(len(starts), len(self.actors), submit, self._repair, self.cfg.max_batch_retries, on_dispatch)
        ordered = []
        for b, (bid, res) in enumerate(out):
            if bid != b or len(res) != len(groups[starts[b] : starts[b] + size]):
                raise RuntimeError(f"reward batch {b}: got batch {bid} with {len(res)} results")
            ordered.extend(res)
        return ordered

    def _repair(self, a: int) -> None:
        """Actor ``a`` died mid-batch: Ray restarts it (``max_restarts``); if it stays dead, replace it."""
        self.stats["retries"] += 1
        if not wait_alive(self.actors[a]):
            ray.kill(self.actors[a], no_restart=True)
            self.actors[a] = self._new_actor()
            self.stats["replaced_actors"] += 1

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []
