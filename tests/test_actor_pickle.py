"""Every Ray actor class of the project pickles (Ray ships an actor's class by value: a method whose code names an
attribute like ``.config`` next to a module global such as ``torch`` makes cloudpickle ship the matching submodule,
``torch.distributed.config``, which does not pickle — the learner once failed to start that way)."""

from __future__ import annotations

import importlib

import pytest
import ray.cloudpickle as cp

ACTORS = [("actors.learner", "LearnerWorker"), ("actors.rollout", "RolloutWorker"), ("actors.reward", "RewardActor")]


@pytest.mark.parametrize(("module", "name"), ACTORS)
def test_actor_class_pickles(module, name):
    cls = getattr(importlib.import_module(module), name)
    assert cp.loads(cp.dumps(cls.__ray_metadata__.modified_class)).__name__ == name
