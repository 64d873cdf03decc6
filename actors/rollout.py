"""RolloutWorker actors (one generation engine each) and the pool that shares a batch of prompts among them.

    pool = RolloutPool("vllm", model_dir, n_workers=2)
    pool.sync(weight_sync.serialise(model), version=3)     # learner → every worker, one object-store blob
    groups = pool.generate(prompts, Sampling(n=8))           # list (per prompt) of G Rollouts, version 3

Fault tolerance: workers run with ``max_restarts``; a worker that dies mid-batch is restarted by Ray (its engine
reloads from the model folder), the pool re-sends the current weights to it before anything else, and resubmits
the lost shard (``actors.pool.dispatch``). Every rollout carries the policy version it was sampled with, and
``generate`` checks they all equal the synced version (on-policy).

No shared filesystem (``actors.shipping``): the model folder is a path or a :class:`ShippedFolder`
(``ship="always"``, or ``"auto"`` on a multi-node cluster); a worker, a restarted one too, builds its engine from a
node-local copy, never from the driver's folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError

from actors.pool import dispatch, wait_alive
from actors.shipping import ShippedFolder, local_folder, maybe_ship
from rollout.engine import Rollout, Sampling, make_engine


@ray.remote
class RolloutWorker:
    def __init__(self, engine: str, model_dir: str | ShippedFolder, variant: str, engine_kw: dict[str, Any]):
        self.model_dir = model_dir
        self.engine = make_engine(engine, local_folder(model_dir), variant=variant, **engine_kw)

    def generate(self, prompts: list[str], sampling: Sampling) -> list[list[Rollout]]:
        return self.engine.generate(prompts, sampling)

    def load_weights(self, blob: bytes, version: int) -> int:
        local_folder(self.model_dir)  # vLLM rebuilds from its folder when an update fails: make sure it is still here
        self.engine.load_weights(blob, version)
        return version

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "policy_version": self.engine.policy_version}

    # GPU route (rollout.native_sync): vLLM's weight-transfer control calls, by the names vLLM's
    # RayVLLMWeightSyncClient calls on its actor handles; the weights themselves arrive over NCCL.
    def init_weight_transfer_engine(self, request) -> None:
        self.engine.transfer("init_weight_transfer_engine", request)

    def start_weight_update(self) -> None:
        self.engine.transfer("start_weight_update")

    def update_weights(self, request) -> None:
        self.engine.transfer("update_weights", request)

    def finish_weight_update(self) -> None:
        self.engine.transfer("finish_weight_update")

    def shutdown_weight_transfer_engine(self) -> None:
        self.engine.transfer("shutdown_weight_transfer_engine")

    def set_version(self, version: int) -> int:
        """After an NCCL update: the engine now holds policy ``version``."""
        self.engine.policy_version = version
        return version


class RolloutPool:
    def __init__(self, engine: str, model_dir: str | Path | ShippedFolder, variant: str = "direct", n_workers: int = 1,
                 num_cpus: float = 1, engine_kw: dict[str, Any] | None = None, max_restarts: int = 3,
                 max_retries: int = 2, shard_prompts: int | None = None, num_gpus: float = 0, ship: str = "never"):
        """``ship``: how workers get ``model_dir`` ("never": its path; "always": the object store; "auto": shipped
        on a multi-node cluster; a :class:`ShippedFolder` is used as is)."""
        self._spec = (engine, maybe_ship(model_dir, ship), variant, engine_kw or {})  # replacements reuse it
        self._opts = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_restarts": max_restarts,
                      "max_task_retries": 0}
        self.max_retries, self.shard_prompts = max_retries, shard_prompts
        self.version, self._blob = 0, None
        # NCCL route (actors.weight_route): repairs fetch the current weights from here (the last blob is
        # stale after NCCL updates) and mark the NCCL group for rebuilding
        self.blob_source = None
        self.transfer_stale = False
        self.stats = {"shards": 0, "retries": 0, "replaced_workers": 0}
        self.workers = [RolloutWorker.options(**self._opts).remote(*self._spec) for _ in range(n_workers)]

    def sync(self, blob: bytes | ray.ObjectRef, version: int) -> float:
        """Send new weights to every worker (one object-store copy; an ObjectRef, e.g. from the learner, is used
        as is) and wait until all have them; a worker that died meanwhile is repaired (restarted or replaced, then
        given these weights). Returns the seconds it took."""
        import time

        t0 = time.perf_counter()
        self._blob = blob if isinstance(blob, ray.ObjectRef) else ray.put(blob)
        self.version = version
        refs = [w.load_weights.remote(self._blob, version) for w in self.workers]
        for a, ref in enumerate(refs):
            try:
                ray.get(ref)
            except RayActorError:
                self._repair(a)
        return time.perf_counter() - t0

    def _repair(self, a: int) -> None:
        self.stats["retries"] += 1
        if not wait_alive(self.workers[a]):  # restarts exhausted or it cannot come back: replace it
            ray.kill(self.workers[a], no_restart=True)
            self.workers[a] = RolloutWorker.options(**self._opts).remote(*self._spec)
            self.stats["replaced_workers"] += 1
        self.transfer_stale = True  # a new process is not in the NCCL transfer group
        blob = self.blob_source() if self.blob_source else self._blob
        if blob is not None:  # a fresh engine holds version 0: bring it to the current policy first
            ray.get(self.workers[a].load_weights.remote(blob, self.version))

    def generate(self, prompts: list[str], sampling: Sampling, on_dispatch=None) -> list[list[Rollout]]:
        size = self.shard_prompts or max(1, -(-len(prompts) // len(self.workers)))
        shards = [prompts[i:i + size] for i in range(0, len(prompts), size)]
        self.stats["shards"] += len(shards)

        def submit(a: int, b: int):
            s = sampling if sampling.seed is None else Sampling(**{**sampling.__dict__, "seed": sampling.seed + b})
            return self.workers[a].generate.remote(shards[b], s)

        out = dispatch(len(shards), len(self.workers), submit, self._repair, self.max_retries, on_dispatch)
        groups = [g for shard in out for g in shard]
        for i, g in enumerate(groups):
            stale = {r.policy_version for r in g} - {self.version}
            if stale:
                raise RuntimeError(f"prompt {i} was sampled with policy version(s) {stale}, expected {self.version}")
            for r in g:
                r.prompt_index = i
        return groups

    def set_version(self, version: int) -> None:
        """After an NCCL update reached every worker: they now hold policy ``version``."""
        ray.get([w.set_version.remote(version) for w in self.workers])
        self.version = version

    def info(self) -> list[dict[str, Any]]:
        return ray.get([w.info.remote() for w in self.workers])

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w, no_restart=True)
        self.workers = []
