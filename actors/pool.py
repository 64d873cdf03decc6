"""One supervised dispatch loop for actor pools (rollout workers; the pattern the reward pool follows too).

Batches go to idle actors as soon as they free up. When a batch fails because its actor died (``RayActorError``),
the loop asks the pool to repair that actor (Ray restarts it under ``max_restarts``; the pool may have to re-sync
its state, or replace it when restarts are exhausted) and resubmits *that batch*, up to ``max_retries`` times. Each
batch's result is accepted exactly once, so nothing is lost or produced twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError


def dispatch(n_batches: int, n_actors: int, submit: Callable[[int, int], Any], repair: Callable[[int], None],
             max_retries: int = 2, on_dispatch: Callable[[int, int], None] | None = None) -> list[Any]:
    """Run batches 0..n_batches-1 on actors 0..n_actors-1; ``submit(actor, batch)`` returns an ObjectRef. Returns
    the results in batch order. ``stats`` of retries are the caller's business (``repair`` is called per death)."""
    pending = list(range(n_batches))
    results: dict[int, Any] = {}
    tries = dict.fromkeys(pending, 0)
    inflight: dict[Any, tuple[int, int]] = {}
    idle = list(range(n_actors))
    while pending or inflight:
        while pending and idle:
            a, b = idle.pop(0), pending.pop(0)
            inflight[submit(a, b)] = (b, a)
            if on_dispatch:
                on_dispatch(a, b)
        done, _ = ray.wait(list(inflight), num_returns=1)
        b, a = inflight.pop(done[0])
        try:
            out = ray.get(done[0])
        except RayActorError as exc:
            tries[b] += 1
            if tries[b] > max_retries:
                raise RuntimeError(f"batch {b} failed {tries[b]} times; last: {exc}") from exc
            repair(a)
            pending.insert(0, b)
            idle.append(a)
            continue
        if b in results:  # cannot happen: one ref per submission
            raise RuntimeError(f"batch {b} returned twice")
        results[b] = out
        idle.append(a)
    return [results[b] for b in range(n_batches)]


def wait_alive(actor: Any, timeout_s: float = 300.0) -> bool:
    """Wait until ``actor`` answers ``info()``: True once it does (a restart has finished), False when it is dead
    for good or did not come back within ``timeout_s``. Calls made while Ray restarts an actor fail at once with
    ``ActorUnavailableError``; those are retried."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.get(actor.info.remote(), timeout=max(1.0, deadline - time.monotonic()))
            return True
        except ActorUnavailableError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        except (RayActorError, GetTimeoutError):
            return False
