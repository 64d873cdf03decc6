"""Parameter-efficient training (issue 18, ``learner/efficient.py``): LoRA trains only the adapters (and the
Eq. 1 special-token rows), frozen layers and rows stay bit-identical, bf16 autocast runs (or falls back to float32
and says so), and what rollout workers receive after a LoRA update is exactly the merged model (greedy parity with
transformers on peft's own ``merge_and_unload``, the vLLM engine included)."""

from __future__ import annotations

import importlib.util
import logging

import pytest
import torch
from tiny_policy import build_policy, write_samples

from aigq.config import build_config
from aigq.data import prompt as P
from aigq.models.factory import load_policy
from learner import data as D
from learner import efficient as E
from learner.sft import count_targets, make_example, micro_batches
from learner.trainer import SFTTrainer
from rollout import weight_sync
from rollout.engine import Sampling, make_engine

HAS_VLLM = importlib.util.find_spec("vllm") is not None
SPECIAL = P.special_tokens(build_config().samples) + P.output_special_tokens(10, think=True)


def _cfg(*extra: str):
    return build_config(overrides=["sft.lr=1e-2", "sft.warmup_steps=0", "sft.global_batch=8", "sft.micro_batch=4",
                                   *extra])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eff")
    samples = write_samples(tmp / "s", n=24)
    folders = {tie: build_policy(tmp / f"p{int(tie)}", samples, tie=tie, layers=2) for tie in (False, True)}
    _, tok = load_policy(folders[False])
    df = D.read_samples(samples / "direct.parquet")
    examples, _ = D.tokenize(tok, df["prompt"].to_list(), D.target_texts(df, "direct", False, None), 256)
    return folders, tok, examples


def _setup(folder, cfg):
    model, tok = load_policy(folder)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    eff = E.prepare(model, cfg.learner, E.special_token_ids(tok, SPECIAL), seed=0)
    return model, tok, eff, before


def _train(model, cfg, tok, examples, steps, amp=None):
    trainer = SFTTrainer(model, cfg.sft, steps, amp=amp)
    losses = []
    for s in range(steps):
        batch = [examples[i] for i in D.batch_indices(len(examples), s, 8, seed=0)]
        m = trainer.train_step(micro_batches(batch, 4, tok.pad_token_id), count_targets(batch))
        losses.append(m["nll_sum"] / m["tokens"])
    return trainer, losses


def _eval_loss(model, tok, examples):
    t = SFTTrainer(model, _cfg().sft, 1)
    ev = t.evaluate(micro_batches(examples, 8, tok.pad_token_id))
    return ev["nll_sum"] / ev["tokens"]


def test_full_finetune_is_untouched(data):
    folders, _, _ = data
    model, _, eff, before = _setup(folders[False], _cfg())
    assert eff.mode == "full" and eff.trainable == eff.total and not hasattr(model, E.ROWS)
    assert all(p.requires_grad for p in model.parameters())
    assert weight_sync.serialise(E.sync_state(model)) == weight_sync.serialise(model)  # the old sync blob


def test_lora_trains_only_the_adapters_and_special_rows(data):
    folders, tok, examples = data
    cfg = _cfg("learner.lora.enabled=true", "learner.lora.rank=4")
    model, tok, eff, before = _setup(folders[False], cfg)
    assert eff.mode == "lora" and eff.lora["targets"] == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith(E.ROWS + ".") for n in trainable)
    assert eff.trainable < eff.total * 0.2
    start = _eval_loss(model, tok, examples)
    trainer, losses = _train(model, cfg, tok, examples, 8)
    assert losses[-1] < losses[0] and _eval_loss(model, tok, examples) < start
    # the optimizer holds exactly the trainable tensors
    assert [id(p) for g in trainer.optimizer.param_groups for p in g["params"]] == \
        [id(p) for p in model.parameters() if p.requires_grad]
    # base weights bit-identical after the steps; adapters and rows moved
    state = model.state_dict()
    for k, v in before.items():
        name = k.rsplit(".", 1)[0] + ".base_layer." + k.rsplit(".", 1)[1] if k not in state else k
        assert torch.equal(state[name], v), k
    assert all(state[n].abs().sum() > 0 for n in trainable if "lora_B" in n or n.startswith(E.ROWS))
    # leaving the learner: merged weights under the plain names, every LoRA target changed, nothing else
    merged = E.merged_state(model)
    assert set(merged) == set(before)
    changed = {k for k in before if not torch.equal(merged[k], before[k])}
    assert changed == {k for k in before if any(f".{t}.weight" in k for t in eff.lora["targets"])} | {
        "model.embed_tokens.weight", "lm_head.weight"}


def test_freeze_keeps_frozen_rows_but_special_rows_train(data):
    folders, tok, examples = data
    for tie in (False, True):
        cfg = _cfg("learner.freeze_layers=1")
        model, tok, eff, before = _setup(folders[tie], cfg)
        assert eff.mode == "freeze"
        _, losses = _train(model, cfg, tok, examples, 4)
        assert losses[-1] < losses[0]
        merged, ids = E.merged_state(model), eff.special_ids
        others = torch.ones(merged["model.embed_tokens.weight"].shape[0], dtype=torch.bool)
        others[ids] = False
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(merged[name][others], before[name][others]), name  # frozen rows: bit-identical
            assert not torch.equal(merged[name][ids], before[name][ids]), name  # Eq. 1 rows trained
        if tie:
            assert merged["lm_head.weight"] is merged["model.embed_tokens.weight"]
        for k in before:
            if ".layers.0." in k:
                assert torch.equal(merged[k], before[k]), k  # the frozen lower layer
        assert any(not torch.equal(merged[k], before[k]) for k in before if ".layers.1." in k)
    # rows off: the embeddings stay entirely as they were
    cfg = _cfg("learner.freeze_layers=1", "learner.special_rows=false")
    model, tok, eff, before = _setup(folders[False], cfg)
    _train(model, cfg, tok, examples, 2)
    assert not eff.special_ids and torch.equal(E.merged_state(model)["model.embed_tokens.weight"],
                                               before["model.embed_tokens.weight"])


def test_lora_above_frozen_layers_without_rows_stops_the_backward_there(data):
    """``lora.enabled`` + ``freeze_layers=1`` + ``special_rows=false`` (the fastest benchmark row): adapters only
    in the upper layer, and no activation gradient is computed below it, so layer 0 costs forward time only."""
    folders, tok, examples = data
    cfg = _cfg("learner.lora.enabled=true", "learner.lora.rank=4", "learner.freeze_layers=1",
               "learner.special_rows=false")
    model, tok, eff, before = _setup(folders[False], cfg)
    assert eff.mode == "lora+freeze" and not eff.special_ids
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n and ".layers.1." in n for n in trainable), trainable
    grads_below = []
    layer0 = model.get_base_model().model.layers[0] if hasattr(model, "get_base_model") else model.model.layers[0]
    layer0.register_forward_hook(lambda m, i, out: grads_below.append(
        (out[0] if isinstance(out, tuple) else out).requires_grad))
    _, losses = _train(model, cfg, tok, examples, 4)
    assert losses[-1] < losses[0]
    assert grads_below and not any(grads_below)  # layer 0's output needs no gradient: the backward ends above it
    merged = E.merged_state(model)
    for k in before:
        if ".layers.0." in k or "embed_tokens" in k or "lm_head" in k:
            assert torch.equal(merged[k], before[k]), k
    assert any(not torch.equal(merged[k], before[k]) for k in before if ".layers.1." in k)


def test_freeze_too_many_layers_is_an_error(data):
    folders, _, _ = data
    with pytest.raises(ValueError, match="freeze_layers=3 but the model has 2 decoder layers"):
        _setup(folders[False], _cfg("learner.freeze_layers=3"))


def test_bf16_autocast_runs_or_falls_back_to_float32(data, monkeypatch, caplog):
    folders, tok, examples = data
    cfg = _cfg("learner.lora.enabled=true", "learner.bf16=true")
    model, tok, _, _ = _setup(folders[False], cfg)
    amp, note = E.autocast_for(True, torch.device("cpu"))
    assert note == ("bf16 autocast" if E.bf16_supported(torch.device("cpu"))[0] else note)
    seen = []
    model.get_input_embeddings().register_forward_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
    _, losses = _train(model, cfg, tok, examples, 3, amp)
    assert all(map(torch.isfinite, map(torch.tensor, losses))) and losses[-1] < losses[0]
    assert seen and all(seen) == (note == "bf16 autocast")
    monkeypatch.setattr(E, "bf16_supported", lambda _d: (False, "no bf16 here"))
    with caplog.at_level(logging.WARNING):
        ctx, note = E.autocast_for(True, torch.device("cpu"))
    assert note.startswith("float32") and "no bf16 here" in note and "no bf16 here" in caplog.text
    with ctx():
        assert not torch.is_autocast_enabled("cpu")
    assert E.autocast_for(False, torch.device("cpu"))[1] == "float32"


PROMPTS = ["Please Recommend the next 10 queries.\nuser 3 likes sofa", "lamp ; rug", "user 9 searched"]
GREEDY = Sampling(n=1, temperature=0.0, max_tokens=12)


def _greedy(engine):
    return [g[0].token_ids for g in engine.generate(PROMPTS, GREEDY)]


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_rollout_workers_receive_the_merged_model(tmp_path, tiny_policy, tied):
    """LoRA (+ special rows) update → the weight-sync blob → engines started from the base: their greedy output
    equals transformers' greedy from peft's merge_and_unload of the same adapters (+ the rows added by hand)."""
    from aigq.models.special_tokens import add_special_tokens

    src, _ = tiny_policy(tmp_path / "src", tied)  # head_dim 64: vLLM's CPU attention needs it
    model, tok = load_policy(src)
    add_special_tokens(model, tok, ["<1>", "<Today>", "<search>", "<q1>", "<q2>"])
    base = tmp_path / "base"
    model.save_pretrained(base)
    tok.save_pretrained(base)
    cfg = _cfg("learner.lora.enabled=true", "learner.lora.rank=4", "sft.lr=5e-2")
    model, tok, eff, _ = _setup(base, cfg)
    ex = [make_example(tok(P.model_input(p), add_special_tokens=False)["input_ids"],
                       tok("<q1> sofa ; <q2> lamp ;", add_special_tokens=False)["input_ids"], tok.eos_token_id)
          for p in PROMPTS]
    trainer = SFTTrainer(model, cfg.sft, 2)
    for _ in range(2):
        trainer.train_step(micro_batches(ex, 3, tok.pad_token_id), count_targets(ex))
    torch.manual_seed(1)
    with torch.no_grad():  # a large update, so that greedy output visibly moves away from the base
        for p in trainer.params:
            p.add_(torch.randn_like(p) * 0.3)

    # the reference: peft's own merge of the same adapters, the special rows added by hand
    fresh, _ = load_policy(base)
    ref_eff = E.prepare(fresh, cfg.learner.model_copy(update={"special_rows": False}), seed=0)
    lora = {k: v for k, v in E.trainable_state(model).items() if ".lora_" in k}
    assert not fresh.load_state_dict(lora, strict=False).unexpected_keys
    plain = ref_eff.peft_model.merge_and_unload()
    rows = getattr(model, E.ROWS)
    with torch.no_grad():
        plain.get_input_embeddings().weight[rows.ids] += rows.delta_in
        if not tied:
            plain.get_output_embeddings().weight[rows.ids] += rows.delta_out
    merged = E.merged_state(model)
    for k, v in plain.state_dict().items():
        assert torch.equal(merged[k], v), k
    ref_dir = tmp_path / "ref"
    plain.save_pretrained(ref_dir)
    tok.save_pretrained(ref_dir)

    blob = weight_sync.serialise(E.sync_state(model))
    hf, ref = make_engine("transformers", base), make_engine("transformers", ref_dir)
    before = _greedy(hf)
    hf.load_weights(blob, 1)
    want = _greedy(ref)
    assert _greedy(hf) == want != before
    saved = E.save_merged(model, tok, tmp_path / "policy", eff)  # the policy folder for serving
    assert _greedy(make_engine("transformers", saved)) == want
    assert (saved / "adapter" / "adapter_config.json").is_file()
    if HAS_VLLM and tied:  # the tied lm_head is vLLM's CPU trap (ENVIRONMENT.md)
        vl = make_engine("vllm", base)
        try:
            vl.load_weights(blob, 1)
            assert _greedy(vl) == want
        finally:
            vl.close()


def test_grpo_update_with_lora_and_bf16(tmp_path, tiny_policy):
    """IL-GRPO's update on a LoRA + bf16 learner moves the policy in the advantage's direction; the base stays."""
    from transformers import AutoTokenizer

    from aigq.config import GRPOConfig, RewardsConfig
    from aigq.rewards.compose import GroupReward, ListReward
    from learner.grpo_trainer import GRPOTrainer, collate_rl
    from learner.rl_batch import group_advantages
    from rollout.engine import Rollout

    folder, _ = tiny_policy(tmp_path / "p")
    tok = AutoTokenizer.from_pretrained(folder)
    model, _ = load_policy(folder)
    before_w = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = _cfg("learner.lora.enabled=true", "learner.bf16=true")
    E.prepare(model, cfg.learner, seed=0)

    def rollout(text):
        ids = tok(text)["input_ids"] + [tok.eos_token_id]
        return Rollout(0, tok("user 1 likes sofa")["input_ids"], ids, [-1.0] * len(ids), text, [], 0, "stop")

    def lr(total):
        comp = {k: [0.0] * 2 for k in ("ctr_p", "ctr", "rouge", "length", "trigger", "rep")}
        return ListReward(["q"] * 2, {**comp, "total": [total] * 2},
                          {"format": 0, "rep": 0, "diversity": 0, "total": total})

    gcfg = GRPOConfig(lr=3e-3, mini_batches=1, ent_coef_start=0.0)
    ga = group_advantages([rollout("sofa ; lamp"), rollout("rug ; rug")], GroupReward(0, [lr(1.0), lr(0.0)]), tok,
                          gcfg, RewardsConfig())
    batch = collate_rl(ga.examples, tok.pad_token_id)
    amp, _ = E.autocast_for(True, torch.device("cpu"))
    trainer = GRPOTrainer(model, gcfg, total_steps=10, amp=amp)

    def seq_logp():
        with torch.no_grad():
            lp, _ = trainer.lp(batch["input_ids"], batch["attention_mask"])
        return (lp * batch["gen_mask"]).sum(1)

    before = seq_logp()
    for _ in range(3):
        trainer.update([[batch]], [int(batch["gen_mask"].sum())])
    after = seq_logp()
    assert after[0] > before[0] and after[1] < before[1]
    state = model.state_dict()
    for k, v in before_w.items():
        assert torch.equal(state.get(k, state.get(k.rsplit(".", 1)[0] + ".base_layer." + k.rsplit(".", 1)[1])), v), k
