"""Checkpoints: atomic writes, and a run interrupted + resumed ends with exactly the weights of an uninterrupted
one (CPU, single process: the same code the LearnerWorkers run)."""

import json

import pytest
import torch
from tiny_policy import build_policy, write_samples

from aigq.config import SFTConfig, build_config
from aigq.models.factory import load_policy
from learner import checkpoint as C
from learner import data as D
from learner import efficient as E
from learner.sft import micro_batches
from learner.trainer import SFTTrainer, get_rng_state, set_rng_state

CFG = SFTConfig(lr=3e-3, warmup_steps=2, global_batch=6, micro_batch=4, grad_clip=1.0)
TOTAL = 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    samples = write_samples(tmp / "s", n=30)
    policy = build_policy(tmp / "p", samples)
    _, tok = load_policy(policy)
    df = D.read_samples(samples / "direct.parquet")
    examples, _ = D.tokenize(tok, df["prompt"].to_list(), D.target_texts(df, "direct", False, None), 256)
    return tmp, policy, tok, examples


def _step(trainer, tok, examples, step):
    batch = [examples[i] for i in D.batch_indices(len(examples), step, CFG.global_batch, seed=0)]
    total = sum(e.n_target for e in batch)
    return trainer.train_step(micro_batches(batch, CFG.micro_batch, tok.pad_token_id), total)["nll_sum"]


def _trainer(model_dir):
    model, _ = load_policy(model_dir)
    return SFTTrainer(model, CFG, TOTAL)


def test_resume_is_exact(setup):
    tmp, policy, tok, examples = setup
    torch.manual_seed(0)
    straight = _trainer(policy)
    for s in range(TOTAL):
        _step(straight, tok, examples, s)

    torch.manual_seed(0)
    first = _trainer(policy)
    for s in range(3):
        _step(first, tok, examples, s)
    rng_before = get_rng_state()
    path = C.save_checkpoint(tmp / "ck", first.step, first.model, tok, first.optimizer, first.scheduler,
                             {0: get_rng_state()}, "run: {}\n", first.state())
    del first
    torch.manual_seed(123)  # the new process's RNG differs until the checkpoint's state is restored
    ckpt = C.read_checkpoint(C.latest_checkpoint(tmp / "ck"))
    assert ckpt.path == path and ckpt.step == 3
    resumed = _trainer(ckpt.model_dir)
    C.restore_trainer(resumed, ckpt)
    set_rng_state(ckpt.rng[0])
    assert get_rng_state() == rng_before
    for s in range(resumed.step, TOTAL):
        _step(resumed, tok, examples, s)

    assert resumed.step == straight.step == TOTAL
    assert resumed.scheduler.get_last_lr() == straight.scheduler.get_last_lr()
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert not torch.equal(straight.model.state_dict()["lm_head.weight"], load_policy(policy)[0].lm_head.weight)


LORA = build_config(overrides=["learner.lora.enabled=true", "learner.lora.rank=4", "learner.lora.dropout=0.1",
                               "learner.freeze_layers=0"])


def _lora_trainer(model_dir, ckpt=None):
    model, tok = load_policy(model_dir)
    E.prepare(model, LORA.learner, E.policy_special_ids(tok, LORA), seed=0)
    if ckpt is not None:
        E.load_trainable(model, ckpt.trainable_state())
    return SFTTrainer(model, CFG, TOTAL)


def test_resume_is_exact_with_lora(setup):
    """LoRA (dropout on, so the restored RNG matters) + special rows: the checkpoint holds the trainable tensors
    and the base's path and digest, not the model; an interrupted + resumed run ends bit-identical."""
    tmp, policy, tok, examples = setup
    torch.manual_seed(0)
    straight = _lora_trainer(policy)
    for s in range(TOTAL):
        _step(straight, tok, examples, s)

    torch.manual_seed(0)
    first = _lora_trainer(policy)
    for s in range(3):
        _step(first, tok, examples, s)
    rng_before = get_rng_state()
    trainable = {"tensors": E.trainable_state(first.model), "base": policy, "base_sha256": E.folder_digest(policy)}
    path = C.save_checkpoint(tmp / "ck-lora", first.step, first.model, tok, first.optimizer, first.scheduler,
                             {0: get_rng_state()}, "run: {}\n", first.state(), trainable=trainable)
    del first
    assert not (path / "model").exists() and (path / C.TRAINABLE).is_file()
    assert (path / C.TRAINABLE).stat().st_size < (policy / "model.safetensors").stat().st_size / 2
    torch.manual_seed(123)
    ckpt = C.read_checkpoint(C.latest_checkpoint(tmp / "ck-lora"))
    assert ckpt.model_dir == policy.resolve() and ckpt.step == 3
    resumed = _lora_trainer(ckpt.model_dir, ckpt)
    C.restore_trainer(resumed, ckpt)
    set_rng_state(ckpt.rng[0])
    assert get_rng_state() == rng_before
    for s in range(resumed.step, TOTAL):
        _step(resumed, tok, examples, s)
    assert resumed.step == straight.step == TOTAL
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    merged = E.merged_state(straight.model)
    assert not torch.equal(merged["lm_head.weight"], load_policy(policy)[0].lm_head.weight)

    # a checkpoint refuses a base that changed under it, and a learner configured otherwise
    import shutil

    base2 = tmp / "base2"
    shutil.copytree(policy, base2)
    t = _lora_trainer(base2)
    trainable = {"tensors": E.trainable_state(t.model), "base": base2, "base_sha256": E.folder_digest(base2)}
    p2 = C.save_checkpoint(tmp / "ck-moved", 1, t.model, tok, t.optimizer, t.scheduler, {0: get_rng_state()}, "",
                           t.state(), trainable=trainable)
    other, _ = load_policy(policy)
    with torch.no_grad():
        other.lm_head.weight.add_(1.0)
    other.save_pretrained(base2)
    with pytest.raises(FileNotFoundError, match="has changed"):
        C.read_checkpoint(p2).trainable_state()
    model, _ = load_policy(policy)
    with pytest.raises(ValueError, match="do not match the learner config"):
        E.load_trainable(model, ckpt.trainable_state())  # a full fine-tune's parameters are not the adapters


def test_checkpoint_layout_atomic_write_and_pruning(setup, monkeypatch):
    tmp, policy, tok, _ = setup
    t = _trainer(policy)
    root = tmp / "atomic"
    for step in (1, 2, 3):
        t.step = step
        C.save_checkpoint(root, step, t.model, tok, t.optimizer, t.scheduler, {0: get_rng_state()},
                          "run:\n  seed: 0\n", t.state(), keep=2)
    assert sorted(p.name for p in root.glob("step-*")) == ["step-000002", "step-000003"]
    last = root / "step-000003"
    assert (root / "latest").read_text() == "step-000003"
    assert (last / "model" / "model.safetensors").is_file() and (last / "model" / "tokenizer.json").is_file()
    assert (last / "config.yaml").read_text().startswith("run:")
    assert json.loads((last / "trainer_state.json").read_text())["step"] == 3

    def crash(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(C.torch, "save", crash)
    t.step = 4
    with pytest.raises(OSError):
        C.save_checkpoint(root, 4, t.model, tok, t.optimizer, t.scheduler, {0: {}}, "", t.state())
    assert not (root / "step-000004").exists()  # no half-written checkpoint under a real name
    assert C.latest_checkpoint(root) == last
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        C.read_checkpoint(next(root.glob(".tmp-*")))
