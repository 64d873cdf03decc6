"""The daily Think job end to end on a small simulated world: Ray rollout workers run the (tiny) policy over day
T's active users; the index, fallback tables, serving clock and users land in the store."""

from __future__ import annotations

from datetime import date, timedelta

from aigq.config import build_config


def test_think_index_job(ray_local, tiny_policy, tmp_path):
    from aigq import pipeline
    from aigq.pipeline.serving import ctx_for, think_index_stage
    from aigq.tracking import Tracker

    cfg = build_config({}, [f"run.output_dir={tmp_path / 'out'}", "tracking.enabled=false", "world.users=40",
                            "world.days=4", "serve.think_users_per_day=12", "serve.think_max_new_tokens=24"])
    tracker = Tracker(cfg.tracking)
    meta = pipeline.simulate(cfg, tracker)
    policy, _ = tiny_policy(tmp_path / "policy", False)
    out = think_index_stage(cfg, tracker, 3, policy=str(policy))
    assert 0 < out["active_users"] <= 12 and out["runs"] == out["active_users"]
    assert out["popular"] > 0 and out["users_loaded"] > 0 and out["version"].startswith("day-003-")
    rec = ctx_for(cfg).records
    assert rec.think_version() == out["version"] and rec.think_meta()["day"] == 3
    assert rec.today() == date.fromisoformat(meta["start_date"][:10]) + timedelta(days=3)
    assert rec.popular()[0][1] == 1.0
    loaded = [u for u in range(cfg.world.users + 10) if rec.get_behaviours(u)]
    assert loaded and rec.get_profile(loaded[0])


def test_a_direct_policy_fills_no_think_index_and_is_refused(tiny_policy, tmp_path):
    """A policy the learner trained for AIGQ-Direct (``aigq_variant`` in its config.json) writes plain lists, no
    ``T_k => Q_k`` groups: the Think job says so and skips it (no Ray, no rollout workers), and a Think deployment's
    PolicyHolder refuses to load it; a Think-trained (or unmarked) policy loads."""
    import json

    import pytest

    from aigq import pipeline
    from aigq.models.factory import VARIANT_KEY, policy_variant
    from aigq.pipeline.serving import ctx_for, think_index_stage
    from aigq.tracking import Tracker
    from serve_app.policy import PolicyHolder

    cfg = build_config({}, [f"run.output_dir={tmp_path / 'out'}", "tracking.enabled=false", "world.users=30",
                            "world.days=3", "serve.think_users_per_day=8", "serve.engine=transformers"])
    tracker = Tracker(cfg.tracking)
    pipeline.simulate(cfg, tracker)
    policy, _ = tiny_policy(tmp_path / "policy", False)
    assert policy_variant(policy) is None  # a folder that records nothing is taken as it is
    conf = json.loads((policy / "config.json").read_text())
    (policy / "config.json").write_text(json.dumps({**conf, VARIANT_KEY: "direct"}))
    said: list[str] = []
    out = think_index_stage(cfg, tracker, 2, policy=str(policy), say=said.append)
    assert out["active_users"] > 0 and out["runs"] == 0 and out["triggers"] == 0
    assert any("trained for AIGQ-Direct" in m and "sft.variant=think" in m for m in said), said
    assert ctx_for(cfg).records.think_meta()["policy"] is None
    with pytest.raises(ValueError, match="trained for AIGQ-Direct"):
        PolicyHolder("think").load(str(policy))
    assert PolicyHolder("direct").load(str(policy)).folder == policy
    (policy / "config.json").write_text(json.dumps({**conf, VARIANT_KEY: "think"}))
    assert PolicyHolder("think").load(str(policy)).folder == policy

