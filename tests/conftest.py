"""Shared fixtures. Ray is started once per test process (pytest-xdist runs one process per core), small and
without the dashboard; tests that need Ray take ``ray_local``."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config):
    """Every Ray the tests start keeps Ray's token authentication on (``aigq/ray_boot.py``); its token lives in a
    folder of this test session, not in ~/.ray (subprocesses — CLI runs, job heads — inherit the path)."""
    import tempfile

    if not os.environ.get("RAY_AUTH_TOKEN") and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
        os.environ["RAY_AUTH_TOKEN_PATH"] = os.path.join(tempfile.mkdtemp(prefix="aigq-ray-auth-"), "auth_token")


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from aigq.ray_boot import prepare_ray_auth

    prepare_ray_auth(start=True)  # token auth on, as for every head the project starts (Ray listens on *)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             ignore_reinit_error=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_policy():
    """Factory: ``tiny_policy(folder, tied)`` → (folder, model), a random tiny Qwen2 with a BPE tokenizer trained on
    a few lines. head_dim 64: vLLM's CPU attention has no kernel for very small heads."""
    from aigq.config import TinyModelConfig
    from aigq.models.tiny import build_tiny, train_tokenizer

    def make(folder, tied: bool = False):
        texts = [f"Please Recommend the next 10 queries. user {i} likes sofa ; lamp ; rug {i % 7}" for i in range(200)]
        tok = train_tokenizer(iter(texts), 400)
        cfg = TinyModelConfig(hidden=128, intermediate=256, layers=2, heads=2, kv_heads=1, tie_embeddings=tied)
        model = build_tiny(cfg, tok, seed=0)
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        return folder, model

    return make
