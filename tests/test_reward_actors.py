"""RewardActor pool: same rewards as in-process scoring with 1 and 2 actors; a killed actor mid-batch is restarted
and its batch retried with no group lost or scored twice; garbage never kills an actor."""

import os
import signal

import pytest

from actors.reward import RewardPool, RewardScorer
from aigq.config import CTRConfig, RewardsConfig, SamplesConfig, WorldConfig
from aigq.data.prompt import format_prompt, format_target
from aigq.data.simulate import simulate_world
from aigq.data.validate import validate_world
from aigq.rewards.compose import RewardGroup
from aigq.rewards.ctr_train import click_data, train_day

RCFG = RewardsConfig(similarity="ngram", batch_groups=4, num_cpus_per_actor=0.5, max_restarts=2)


@pytest.fixture(scope="module")
def world_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("ra")
    simulate_world(WorldConfig(users=150, days=6), seed=1, out=root / "world")
    v = validate_world(root / "world", write_quarantine=False)
    cfg = CTRConfig(hash_buckets=1 << 14, epochs_cold=1, eval_days=1)
    res = train_day(v.tables, v.meta["start_date"], 6, 5, cfg, root / "ctr")
    data = click_data(v.tables, v.meta["start_date"], [6], cfg)
    groups = []
    for i, (ctx_row, g) in enumerate(data.imp.group_by("ctx", maintain_order=True)):
        ctx = data.contexts[ctx_row[0]]
        ref = g["candidates"][0].to_list()
        prompt = format_prompt(ctx.profile, ctx.behaviours, SamplesConfig())
        outs = [format_target(ref[k:] + ref[:k]) for k in range(4)] + [format_target([ref[0]] * 5), "", b"\xff"]
        groups.append(RewardGroup(f"g{i}", outs, ref, prompt=prompt))
    return str(res.folder), groups[:40]


def _flat(results):
    """Comparable form, floats rounded (the actor runs torch on 1 thread: last-bit differences are allowed)."""
    def rnd(d):
        return {k: [round(x, 5) for x in v] if isinstance(v, list) else round(v, 5) for k, v in d.items()}

    return [(r.group_id, [(lr.queries, rnd(lr.query), rnd(lr.seq)) for lr in r.lists]) for r in results]


@pytest.mark.parametrize("n_actors", [1, 2])
def test_pool_matches_in_process_scoring(ray_local, world_model, n_actors):
    ctr_dir, groups = world_model
    expected = RewardScorer(ctr_dir, RCFG).score(groups)
    pool = RewardPool(ctr_dir, RCFG, num_actors=n_actors)
    try:
        got = pool.score(groups)
        assert [r.group_id for r in got] == [g.group_id for g in groups]
        assert _flat(got) == _flat(expected)
        info = pool.info()
        assert len({i["pid"] for i in info}) == n_actors
        assert sum(i["batches"] for i in info) == -(-len(groups) // RCFG.batch_groups)  # 10 batches, each once
        if n_actors == 2:
            assert all(i["batches"] > 0 for i in info)  # the work is shared
    finally:
        pool.shutdown()
    # the CTR component is the model's: a list's first query scores above 0
    assert any(v > 0 for r in got for lr in r.lists for v in lr.query["ctr_p"])


def test_killed_actor_is_restarted_and_its_batch_retried_exactly_once(ray_local, world_model):
    ctr_dir, groups = world_model
    expected = _flat(RewardScorer(ctr_dir, RCFG).score(groups))
    pool = RewardPool(ctr_dir, RCFG, num_actors=2)
    try:
        pids = [i["pid"] for i in pool.info()]
        killed = []

        def kill_first(actor: int, batch: int) -> None:
            if not killed and batch == 2:  # mid-run: batches 0, 1 went out, batch 2 is now in flight on `actor`
                os.kill(pids[actor], signal.SIGKILL)
                killed.append(actor)

        got = pool.score(groups, on_dispatch=kill_first)
        assert killed and pool.stats["retries"] >= 1
        ids = [r.group_id for r in got]
        assert ids == [g.group_id for g in groups] and len(set(ids)) == len(groups)  # none lost, none twice
        assert _flat(got) == expected  # the retried batch gives the same numbers
        new_pids = [i["pid"] for i in pool.info()]
        assert new_pids[killed[0]] != pids[killed[0]]  # restarted (a new process), and it works again
        assert _flat(pool.score(groups[:4])) == expected[:4]
    finally:
        pool.shutdown()


def test_garbage_groups_do_not_kill_the_actor(ray_local, world_model):
    ctr_dir, groups = world_model
    junk = [RewardGroup("empty", [], []), RewardGroup("bytes", [b"\xff\xfe", None, 3], [None], prompt=b"\x00\xff"),
            RewardGroup("huge", ["q" * 10_000, ["z" * 10_000] * 50], ["x"], prompt="x" * 10_000),
            RewardGroup("weird", [{"a": 1}, "\ud800 ; ok"], [], context=None, variant="think")]
    pool = RewardPool(ctr_dir, RCFG, num_actors=1)
    try:
        pid = pool.info()[0]["pid"]
        got = pool.score(junk + groups[:2])
        assert [r.group_id for r in got] == ["empty", "bytes", "huge", "weird", groups[0].group_id, groups[1].group_id]
        for r in got[:4]:
            for lr in r.lists:
                assert lr.seq["format"] <= 0.35 and lr.seq["total"] <= 0.35
        assert pool.info()[0]["pid"] == pid and pool.stats["retries"] == 0
    finally:
        pool.shutdown()
