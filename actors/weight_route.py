"""The driver's weight sync, learner → rollout workers, by route (``rollout.weight_sync``):

* ``blob`` (any device; the only one on CPU): learner rank 0 serialises its weights once (safetensors) into Ray's
  object store and every rollout worker loads them (``rollout.weight_sync``, ``WeightSyncExtension``);
* ``nccl`` (GPU): learner rank 0 broadcasts over vLLM's native NCCL weight-transfer group
  (``rollout.native_sync``). The group is built once; after a rollout worker was restarted (a new process,
  outside the group) it is rebuilt before the next broadcast, and the restarted worker gets the current weights as a
  blob when it comes back (``RolloutPool._repair``).

The first sync of a run (start or resume) always goes as a blob: every engine starts from the model folder.
"""

from __future__ import annotations

from typing import Any

import ray

from aigq.config import AIGQConfig
from rollout.native_sync import resolve_route


def route_for(cfg: AIGQConfig) -> str:
    rc = cfg.rollout
    return resolve_route(rc.weight_sync, rc.engine, rc.gpus_per_worker, cfg.learner.gpus_per_worker)


def engine_kw(cfg: AIGQConfig) -> dict[str, Any]:
    """Rollout engine options the route needs (vLLM starts its transfer engine only on the NCCL route)."""
    return {"dtype": cfg.rollout.dtype, **({"weight_transfer": "nccl"} if route_for(cfg) == "nccl" else {})}


class WeightSync:
    def __init__(self, route: str, learner: Any, rollout: Any):
        self.route, self.learner, self.rollout = route, learner, rollout
        self.ready = False
        if route == "nccl":
            rollout.blob_source = learner.weights_blob

    def first(self, version: int) -> float:
        return self.rollout.sync(self.learner.weights_blob(), version)

    def __call__(self, version: int) -> None:
        if self.route == "blob":
            self.rollout.sync(self.learner.weights_blob(), version)
            return
        if not self.ready or self.rollout.transfer_stale:
            if self.ready:  # survivors still hold the old group: release it before the rendezvous
                for ref in [w.shutdown_weight_transfer_engine.remote() for w in self.rollout.workers]:
                    try:
                        ray.get(ref)
                    except Exception:  # noqa: BLE001 - the restarted worker never joined a group
                        pass
            self.learner.nccl_init(self.rollout.workers, len(self.rollout.workers))  # TP 1 per engine
            self.ready, self.rollout.transfer_stale = True, False
        self.learner.nccl_send()
        self.rollout.set_version(version)
