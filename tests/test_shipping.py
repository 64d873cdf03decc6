"""No shared filesystem across nodes (issue 19 item 11): model folders reach actors through Ray's object store
(``actors.shipping``). A shipped folder is materialised with identical bytes after the original is deleted, once
per node; and reward actors, rollout workers and the learner group keep working when the driver's folders (and the
node-local copies) are deleted after start and an actor is restarted (its constructor runs again)."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from test_grpo_loop import _kill_process
from tiny_policy import SCFG, build_policy, samples_frame, write_samples

from actors import shipping as S
from aigq.config import CTRConfig, RewardsConfig

pytestmark = pytest.mark.usefixtures("ray_local")


def _folder(root: Path, text: str = "v1") -> Path:
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "config.json").write_text('{"a": 1}')
    (root / "weights.bin").write_bytes(bytes(range(256)) * 40 + text.encode())
    (root / "sub" / "deep" / "tok.txt").write_text(f"tokens {text}")
    (root / "empty.txt").write_bytes(b"")
    return root


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def local_root(tmp_path, monkeypatch):
    """In-process calls materialise under the test's folder, not the shared <tmp>/aigq-shipped."""
    monkeypatch.setattr(S, "shipped_root", lambda: tmp_path / "shipped")
    return tmp_path / "shipped"


def test_shipped_folder_survives_deletion_and_is_materialised_once(tmp_path, local_root):
    src = _folder(tmp_path / "policy")
    want = _files(src)
    spec = S.ship(src)
    assert spec.name == "policy" and spec.total_bytes == sum(len(b) for b in want.values())
    assert spec.source == str(src.resolve()) and S.source(spec) == str(src.resolve())
    shutil.rmtree(src)
    got = Path(S.local_folder(spec))
    assert got == S.copy_path(spec) and got.parent == local_root and got.name.endswith("-policy")
    assert _files(got) == want
    inode = (got / "weights.bin").stat().st_ino
    assert S.local_folder(spec) == str(got) and (got / "weights.bin").stat().st_ino == inode  # reused, not rewritten
    (got / "sub" / "deep" / "tok.txt").unlink()  # a damaged copy is written again
    assert S.local_folder(spec) == str(got) and _files(got) == want
    assert sorted(p.name for p in local_root.iterdir()) == [got.name]  # no temporary folder left behind

    other = S.ship(_folder(tmp_path / "v2" / "policy", "v2"))  # changed content: another digest, another copy
    assert other.digest != spec.digest and S.copy_path(other) != got
    assert _files(Path(S.local_folder(other)))["sub/deep/tok.txt"] == b"tokens v2"
    assert S.local_folder(str(src)) == str(src)  # a plain path is returned as is


def test_concurrent_materialisation_and_pruning(tmp_path, local_root):
    spec = S.ship(_folder(tmp_path / "m"))
    out: list[str] = []
    threads = [threading.Thread(target=lambda: out.append(S.local_folder(spec))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == [str(S.copy_path(spec))] * 4 and _files(Path(out[0])) == _files(tmp_path / "m")
    specs = [S.ship(_folder(tmp_path / f"f{i}" / "m", f"v{i}")) for i in range(S.KEEP + 2)]
    for s in specs:
        S.local_folder(s)
    left = sorted(p.name for p in local_root.iterdir())
    assert len(left) == S.KEEP and S.copy_path(specs[-1]).name in left and S.copy_path(spec).name not in left


def test_maybe_ship_modes(tmp_path):
    src = _folder(tmp_path / "ctr")
    assert S.maybe_ship(src, "auto") == str(src)  # one node: no copy
    assert S.maybe_ship(src, "never") == str(src) and S.maybe_ship(None, "always") is None
    shipped = S.maybe_ship(src, "always")
    assert isinstance(shipped, S.ShippedFolder) and S.maybe_ship(shipped, "never") is shipped
    with pytest.raises(ValueError, match="ship mode"):
        S.maybe_ship(src, "sometimes")


def _forget(spec) -> None:
    """Delete the driver folder's node-local copy too: a restart must fetch it from the object store again."""
    shutil.rmtree(S.copy_path(spec), ignore_errors=True)


def _restart(actor, timeout_s: float = 60.0) -> None:
    """Kill ``actor`` the way a crash would and wait until Ray has restarted it (a new process: its constructor ran
    again)."""
    import ray
    from ray.exceptions import RayActorError

    pid = ray.get(actor.info.remote())["pid"]
    ray.kill(actor, no_restart=False)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:  # calls fail while the old process dies and the new one starts
            if ray.get(actor.info.remote(), timeout=timeout_s)["pid"] != pid:
                return
        except RayActorError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the actor was not restarted within {timeout_s:g} s")


def _flat(results):
    return [(r.group_id, [(lr.queries, {k: round(v, 5) for k, v in lr.seq.items()},
                          [round(x, 5) for x in lr.query["ctr_p"]]) for lr in r.lists]) for r in results]


def test_reward_pool_restarts_after_the_ctr_folder_is_deleted(tmp_path):
    from actors.reward import RewardPool
    from aigq.data.prompt import format_target
    from aigq.rewards.compose import RewardGroup
    from aigq.rewards.ctr import CTRModel, save_model

    cc = CTRConfig(hash_buckets=4096, dim=8, hidden=8, history_len=SCFG.history_len)
    torch.manual_seed(0)
    ctr = save_model(CTRModel(cc.hash_buckets, cc.dim, cc.hidden, cc.history_len), cc, tmp_path / "ctr" / "day-003")
    df = samples_frame(6)
    groups = [RewardGroup(sid, [format_target(t), format_target(t[::-1]), "garbage"], list(t), prompt=p)
              for sid, p, t in zip(df["sample_id"], df["prompt"], df["target"], strict=True)]
    cfg = RewardsConfig(similarity="ngram", batch_groups=2, num_cpus_per_actor=0.5, max_restarts=2)
    pool = RewardPool(ctr, cfg, expected_count=SCFG.label_cap, num_actors=1, ship="always")
    try:
        assert isinstance(pool.ctr_dir, S.ShippedFolder)
        before = _flat(pool.score(groups))
        assert any(v > 0 for _, lists in before for _, _, ps in lists for v in ps)  # the CTR model scored them
        shutil.rmtree(ctr)
        _forget(pool.ctr_dir)
        _restart(pool.actors[0])  # its constructor loads the CTR model again
        assert _flat(pool.score(groups)) == before
        assert pool.stats["retries"] == pool.stats["replaced_actors"] == 0
    finally:
        pool.shutdown()
        _forget(pool.ctr_dir)


def test_rollout_pool_restarts_after_the_policy_folder_is_deleted(tmp_path, tiny_policy):
    from actors.rollout import RolloutPool
    from rollout import weight_sync
    from rollout.engine import Sampling

    folder, model = tiny_policy(tmp_path / "policy")
    prompts = [f"user {i} likes sofa" for i in range(4)]
    greedy = Sampling(n=1, temperature=0.0, max_tokens=8)
    pool = RolloutPool("transformers", folder, n_workers=1, num_cpus=0.5, engine_kw={"threads": 1}, ship="always")
    spec = pool._spec[1]
    try:
        assert isinstance(spec, S.ShippedFolder)
        before = [g[0].token_ids for g in pool.generate(prompts, greedy)]
        shutil.rmtree(folder)
        _forget(spec)
        _restart(pool.workers[0])  # its constructor builds the engine from the model folder again
        assert [g[0].token_ids for g in pool.generate(prompts, greedy)] == before
        assert pool.stats["retries"] == pool.stats["replaced_workers"] == 0
        pool.sync(weight_sync.serialise(model), version=1)  # a weight load after the deletion works too
        assert [g[0].token_ids for g in pool.generate(prompts, greedy)] == before
    finally:
        pool.shutdown()
        _forget(spec)


def test_lora_learner_checkpoints_and_resumes_without_the_start_folder(tmp_path):
    """A LoRA learner records its base's digest at start (it used to re-read the folder when saving, and silently
    digested an empty folder when it was gone), names the driver's path, not a node-local copy, and resumes from a
    shipped checkpoint."""
    from transformers import AutoTokenizer

    from actors.learner import LearnerGroup
    from aigq.config import build_config
    from learner import data as D
    from learner import efficient as E
    from learner.checkpoint import read_checkpoint

    samples = write_samples(tmp_path / "s", n=16)
    policy = build_policy(tmp_path / "policy", samples)
    backup = shutil.copytree(policy, tmp_path / "backup")
    tok = AutoTokenizer.from_pretrained(policy)
    df = D.read_samples(samples / "direct.parquet")
    examples, _ = D.tokenize(tok, df["prompt"].to_list(), D.target_texts(df, "direct", False, None), 256)
    cfg = build_config(overrides=["learner.num_workers=1", "learner.cpus_per_worker=1", "sft.global_batch=8",
                                  "sft.micro_batch=4", "sft.warmup_steps=0", "learner.lora.enabled=true",
                                  "learner.lora.rank=4"])
    spec = S.ship(policy)
    group = LearnerGroup(cfg, spec, 4, tok.pad_token_id, ship="always")
    try:
        shutil.rmtree(policy)
        _forget(spec)
        group.train_step(examples[:8])
        ckpt = read_checkpoint(group.save_checkpoint(tmp_path / "ckpt", "{}"))
        digests = group.weights_digests()
    finally:
        group.shutdown()
    assert ckpt.base == {"path": str(policy.resolve()), "sha256": E.folder_digest(backup)}
    shutil.copytree(backup, policy)  # the base the checkpoint names; the workers get it (and the checkpoint) shipped
    group = LearnerGroup(cfg, policy, 4, tok.pad_token_id, resume=ckpt.path, ship="always")
    try:
        assert group.step == 1 and group.weights_digests() == digests
    finally:
        group.shutdown()
        for folder in (policy, ckpt.path):
            _forget(S.ship(folder))


def test_grpo_iteration_completes_after_the_folders_are_deleted(tmp_path):
    """The issue's test: IL-GRPO with run.ship_models=always; after iteration 1 the start policy, the CTR folder and
    their node-local copies are deleted, and in iteration 2 a rollout worker and a reward actor crash (Ray restarts
    them: their constructors load the models again). The run still completes."""
    from actors.grpo_driver import run_grpo
    from aigq.config import load_config
    from aigq.rewards.ctr import CTRModel, save_model
    from aigq.tracking import Tracker

    samples = write_samples(tmp_path / "samples", n=32)
    policy = build_policy(tmp_path / "policy", samples)
    cc = CTRConfig(hash_buckets=4096, dim=8, hidden=8, history_len=SCFG.history_len)
    torch.manual_seed(0)
    ctr = save_model(CTRModel(cc.hash_buckets, cc.dim, cc.hidden, cc.history_len), cc, tmp_path / "ctr" / "day-005")
    over = {"run.output_dir": tmp_path / "run", "run.ship_models": "always", "tracking.enabled": "false",
            "ctr.dir": tmp_path / "ctr", "samples.history_len": SCFG.history_len,
            "samples.history_days": SCFG.history_days, "samples.label_cap": SCFG.label_cap, "sft.eval_days": 1,
            "grpo.init_policy": policy, "grpo.iterations": 2, "grpo.prompts_per_iteration": 2, "grpo.group_size": 3,
            "grpo.eval_every": 10, "grpo.eval_prompts": 2, "grpo.checkpoint_every": 1, "grpo.difficulty_low": 0.0,
            "grpo.difficulty_high": 1.0, "rollout.engine": "transformers", "rollout.max_tokens": 8,
            "rollout.cpus_per_worker": 0.5, "rewards.num_actors": 1, "rewards.num_cpus_per_actor": 0.5,
            "rewards.batch_groups": 1, "rewards.similarity": "ngram", "learner.num_workers": 1}
    cfg = load_config(None, [f"{k}={v}" for k, v in over.items()])
    copies = [S.copy_path(S.ship(policy)), S.copy_path(S.ship(ctr))]  # where the actors materialise them
    deleted, killed = [], []

    def delete(i: int, n: int) -> None:
        if i == 1:
            for folder in (policy, tmp_path / "ctr", *copies):
                shutil.rmtree(folder)
            deleted.append(i)

    def fault(kind, actors, actor_index, batch):
        if deleted and kind not in killed:  # once each, in iteration 2, right after submission
            _kill_process((actors.rollout.workers if kind == "rollout" else actors.rewards.actors)[actor_index])
            killed.append(kind)

    try:
        fig = run_grpo(cfg, Tracker(cfg.tracking), samples, on_iteration=delete, on_dispatch=fault)
    finally:
        for folder in copies:
            shutil.rmtree(folder, ignore_errors=True)
    assert sorted(killed) == ["reward", "rollout"] and fig["rollout_retries"] >= 1 and fig["reward_retries"] >= 1
    assert [h["policy_version"] for h in fig["history"]] == [1, 2]
    assert all(h["rollouts/generated"] == h["rollouts/scored"] == 2 * 3 for h in fig["history"])
