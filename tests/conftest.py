"""Shared fixtures. Ray is started once per test process (pytest-xdist runs one process per core), small and
without the dashboard; tests that need Ray take ``ray_local``."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_local():
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local, loopback-only cluster for tests
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             ignore_reinit_error=True)
    yield ray
    ray.shutdown()
