"""The LearnerWorker DDP group on Ray (gloo, CPU): after every step all ranks hold identical weights, and the loss
and update equal a single worker's on the same global batch. A group larger than the cluster fails fast."""

import time

import pytest
import torch
from tiny_policy import build_policy, write_samples

from actors.learner import LearnerConfigError, LearnerGroup
from aigq.config import build_config
from aigq.models.factory import load_policy
from learner import data as D
from learner import efficient as E
from learner.sft import count_targets, micro_batches
from learner.trainer import SFTTrainer


def _cfg(workers: int, *extra: str):
    return build_config(overrides=[f"learner.num_workers={workers}", "learner.cpus_per_worker=1",
                                   "sft.global_batch=8", "sft.micro_batch=3", "sft.lr=3e-3", "sft.warmup_steps=0",
                                   *extra])


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    samples = write_samples(tmp / "s", n=24)
    folder = build_policy(tmp / "p", samples)
    _, tok = load_policy(folder)
    df = D.read_samples(samples / "direct.parquet")
    examples, _ = D.tokenize(tok, df["prompt"].to_list(), D.target_texts(df, "direct", False, None), 256)
    return folder, tok, examples


STEPS = 3


def _batch(examples, step):
    return [examples[i] for i in D.batch_indices(len(examples), step, 8, seed=0)]


def _single_worker(folder, tok, examples):
    """The reference: the same trainer in one process, no DDP, on the same global batches."""
    model, _ = load_policy(folder)
    trainer = SFTTrainer(model, _cfg(1).sft, STEPS)
    losses = []
    for s in range(STEPS):
        batch = _batch(examples, s)
        m = trainer.train_step(micro_batches(batch, 3, tok.pad_token_id), count_targets(batch))
        losses.append(m["nll_sum"] / m["tokens"])
    ev = trainer.evaluate(micro_batches(examples[:5], 3, tok.pad_token_id))
    return losses, model.state_dict(), ev["nll_sum"] / ev["tokens"]


def test_two_workers_match_one_worker_and_stay_identical(ray_local, policy):
    folder, tok, examples = policy
    group = LearnerGroup(_cfg(2), folder, STEPS, tok.pad_token_id)
    try:
        assert [i["backend"] for i in group.info] == ["gloo", "gloo"]
        loss2, digests2 = [], []
        for s in range(STEPS):
            loss2.append(group.train_step(_batch(examples, s))["loss"])
            digests2.append(group.weights_digests())
        weights2, eval2 = group.weights(), group.evaluate(examples[:5])
    finally:
        group.shutdown()
    assert all(len(set(d)) == 1 for d in digests2)  # both ranks bit-identical after every step
    assert len({d[0] for d in digests2}) == STEPS  # and the weights did change each step
    loss1, weights1, eval1 = _single_worker(folder, tok, examples)
    assert loss2 == pytest.approx(loss1, rel=1e-5)  # same global batch → same Eq. 5 loss
    assert eval2 == pytest.approx(eval1, rel=1e-5)
    for name, w in weights1.items():
        torch.testing.assert_close(weights2[name], w, rtol=1e-4, atol=1e-5, msg=name)
    assert loss1[-1] < loss1[0]


def test_more_workers_than_cpus_fails_fast(ray_local, policy):
    folder, tok, _ = policy
    t0 = time.perf_counter()
    with pytest.raises(LearnerConfigError, match=r"needs 3 CPUs but the Ray cluster has 2"):
        LearnerGroup(_cfg(3), folder, 1, tok.pad_token_id)
    assert time.perf_counter() - t0 < 5


def test_lora_group_allreduces_only_the_adapters(ray_local, policy):
    """LoRA + special rows on 2 DDP workers: each step all-reduces exactly the trainable tensors (a comm hook
    counts the gradient elements), both ranks stay identical, and the result equals one process's LoRA training
    on the same global batches (float32: bf16 rounding differs with the micro-batch split)."""
    folder, tok, examples = policy
    extra = ("learner.lora.enabled=true", "learner.lora.rank=4")
    group = LearnerGroup(_cfg(2, *extra), folder, STEPS, tok.pad_token_id)
    try:
        info = group.info[0]
        assert info["trainable"].startswith("lora:") and info["precision"] == "float32"
        group.track_allreduce()
        losses = []
        for s in range(2):
            losses.append(group.train_step(_batch(examples, s))["loss"])
            assert group.allreduced_numels() == [(s + 1) * info["trainable_numel"]] * 2
        digests, weights = group.weights_digests(), group.weights()
    finally:
        group.shutdown()
    assert len(set(digests)) == 1
    model, _ = load_policy(folder)
    cfg = _cfg(1, *extra)
    eff = E.prepare(model, cfg.learner, E.policy_special_ids(tok, cfg), seed=cfg.run.seed)
    assert eff.trainable == info["trainable_numel"] < eff.total / 5
    trainer = SFTTrainer(model, cfg.sft, STEPS)
    for s in range(2):
        batch = _batch(examples, s)
        m = trainer.train_step(micro_batches(batch, 3, tok.pad_token_id), count_targets(batch))
        assert losses[s] == pytest.approx(m["nll_sum"] / m["tokens"], rel=1e-5)
    for name, w in model.state_dict().items():
        torch.testing.assert_close(weights[name], w, rtol=1e-4, atol=1e-5, msg=name)
