"""The IL-SFT driver (``aigq sft``): samples → tokens → LearnerWorker DDP group → eval / MLflow / checkpoints →
final policy (registered in MLflow) → sampled lists for test users and their parse rate.

Reads top to bottom: prepare → tokenise → loop {evaluate?, train step, log, checkpoint?} → final eval → save,
register → sample lists. Resuming (``sft.resume=latest`` or a checkpoint folder) continues at the checkpoint's step
with the same batches, weights, optimizer, schedule and RNG states.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from aigq.config import AIGQConfig, dump_yaml
from aigq.models import factory
from aigq.say import Say
from aigq.tracking import Tracker
from learner import data as D
from learner.checkpoint import latest_checkpoint, read_checkpoint
from learner.teacher import load_teacher


def sft_dir(cfg: AIGQConfig) -> Path:
    return cfg.sft_dir()


def _resume_path(cfg: AIGQConfig) -> Path | None:
    if not cfg.sft.resume:
        return None
    if cfg.sft.resume == "latest":
        found = latest_checkpoint(sft_dir(cfg) / "checkpoints")
        if found is None:
            raise FileNotFoundError(f"sft.resume=latest: no checkpoint under {sft_dir(cfg) / 'checkpoints'}")
        return found
    return read_checkpoint(Path(cfg.sft.resume)).path


def _full_lists(cfg: AIGQConfig, df: pl.DataFrame) -> pl.DataFrame:
    """Direct samples with at least ``sft.min_label_queries`` label queries; Think lists vary in length by design
    (interest points), so Think keeps every sample."""
    return D.full_lists(df, cfg.sft.min_label_queries if cfg.sft.variant == "direct" else None)


def check_inputs(cfg: AIGQConfig, samples_dir: Path) -> pl.DataFrame:
    """Everything that can be wrong before any model is built or worker started: the samples (schema, prompt
    settings, eval split), the resume checkpoint and the cluster's room for the learner group. Returns the
    variant's training samples (``sft.min_label_queries`` applied)."""
    from actors.learner import check_resources
    from aigq.ray_boot import ensure_ray

    D.check_samples_config(samples_dir, cfg.samples)
    df = _full_lists(cfg, D.read_samples(samples_dir / f"{cfg.sft.variant}.parquet"))
    D.split_eval(df, cfg.sft.eval_days)
    if cfg.sft.sample_prompts:
        D.read_samples(samples_dir / "test.parquet")
    if cfg.sft.global_batch < cfg.learner.num_workers:
        raise ValueError(f"sft.global_batch={cfg.sft.global_batch} < learner.num_workers={cfg.learner.num_workers}")
    ensure_ray(cfg)
    check_resources(cfg.learner)
    return df


def prepare_data(cfg: AIGQConfig, df: pl.DataFrame, tokenizer) -> dict[str, Any]:
    """Train/eval examples of ``df`` (``check_inputs``' samples; see ``learner.data``)."""
    train, held = D.split_eval(df, cfg.sft.eval_days)
    held = held.head(cfg.sft.eval_max_samples)
    teacher = load_teacher(cfg.sft.teacher) if cfg.sft.variant == "think" and cfg.sft.reasoning else None
    out: dict[str, Any] = {}
    for name, part in (("train", train), ("eval", held)):
        targets = D.target_texts(part, cfg.sft.variant, cfg.sft.reasoning, teacher)
        out[name], out[f"{name}_truncated"] = D.tokenize(tokenizer, part["prompt"].to_list(), targets,
                                                         cfg.sft.max_seq_len)
    out["example_target"] = targets[0] if held.height else ""
    return out


def run_sft(cfg: AIGQConfig, tracker: Tracker, samples_dir: Path | None = None, say: Say | None = None,
            on_step: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Train the policy; returns the measured figures (also logged to MLflow)."""
    from actors.learner import LearnerGroup

    say = say or (lambda _m: None)
    samples_dir = Path(samples_dir or cfg.samples_dir())
    out_dir, resume = sft_dir(cfg), _resume_path(cfg)
    df = check_inputs(cfg, samples_dir)
    ckpt_root = out_dir / "checkpoints"
    if resume is None:
        base = factory.prepare_base(cfg, say)
        say(f"initial policy: {base} + Eq. 1 special tokens")
        model_dir = factory.init_policy(cfg, base, out_dir / "init")
        shutil.rmtree(ckpt_root, ignore_errors=True)  # a fresh run does not mix with an old run's checkpoints
    else:
        model_dir = read_checkpoint(resume).model_dir  # a LoRA / frozen-layer checkpoint: its base folder
        say(f"resuming from {resume}")
    _, tokenizer = factory.load_policy(model_dir)
    data = prepare_data(cfg, df, tokenizer)
    train, evals, sc = data["train"], data["eval"], cfg.sft
    steps = D.total_steps(len(train), sc.epochs, sc.global_batch, sc.max_steps)
    cfg_yaml = dump_yaml(cfg)
    figures: dict[str, Any] = {"train_samples": len(train), "eval_samples": len(evals), "total_steps": steps,
                               "train_truncated": data["train_truncated"]}
    with tracker.run("sft", cfg, tags={"aigq.variant": sc.variant, "aigq.model": cfg.model.source}):
        tracker.params({"sft.train_samples": len(train), "sft.eval_samples": len(evals), "sft.total_steps": steps})
        tracker.text(data["example_target"], "example_target.txt")
        say(f"starting {cfg.learner.num_workers} learner workers ({sc.variant}, {len(train)} samples, {steps} steps)")
        group = LearnerGroup(cfg, model_dir, steps, tokenizer.pad_token_id, resume, ship=cfg.run.ship_models)
        say(f"learner: {group.info[0]['trainable']}; {group.info[0]['precision']}")
        figures.update({"trainable_params": group.info[0]["trainable_numel"], "precision": group.info[0]["precision"]})
        try:
            figures.update(_loop(cfg, group, tracker, train, evals, steps, ckpt_root, cfg_yaml, say, on_step))
            policy = out_dir / "policy"
            group.save_policy(policy)  # swapped in whole (save_merged): Serve may be reading the old one
            figures["weights_identical"] = len(set(group.weights_digests())) == 1
        finally:
            group.shutdown()
        tracker.artifacts(policy, "policy")
        if sc.log_checkpoint:
            tracker.artifacts(figures["checkpoint"], "checkpoint")
        if sc.register_as:
            figures["registered_version"] = tracker.register_model("policy", sc.register_as,
                                                                   {"variant": sc.variant, "model": cfg.model.source})
        figures["policy"] = str(policy)
        figures.update(sample_lists(cfg, policy, samples_dir, tracker, say))
        tracker.metrics({f"sft.{k}": v for k, v in figures.items() if isinstance(v, int | float | bool)})
    return figures


def _loop(cfg: AIGQConfig, group, tracker: Tracker, train, evals, steps: int, ckpt_root: Path, cfg_yaml: str,
          say: Say, on_step) -> dict[str, Any]:
    sc = cfg.sft
    first_eval, last_eval, ckpt, t_train, tokens_total = None, None, None, 0.0, 0
    start = group.step
    for step in range(start, steps):
        if evals and (step == start or step % sc.eval_every == 0):
            last_eval = group.evaluate(evals)
            first_eval = last_eval if first_eval is None else first_eval
            tracker.metrics({"eval/loss": last_eval}, step=step)
            say(f"step {step}/{steps}: eval loss {last_eval:.4f}")
        batch = [train[i] for i in D.batch_indices(len(train), step, sc.global_batch, cfg.run.seed)]
        if len(batch) < cfg.learner.num_workers:
            break
        t0 = time.perf_counter()
        m = group.train_step(batch)
        dt = time.perf_counter() - t0
        t_train += dt
        tokens_total += m["input_tokens"]
        tracker.metrics({"train/loss": m["loss"], "train/lr": m["lr"], "train/grad_norm": m["grad_norm"],
                         "train/tokens_per_s": m["input_tokens"] / dt, "train/samples_per_s": m["samples"] / dt,
                         "train/target_tokens_per_s": m["target_tokens"] / dt}, step=step + 1)
        if on_step:
            on_step(step + 1, steps)
        if (step + 1) % sc.checkpoint_every == 0 and step + 1 < steps:
            ckpt = group.save_checkpoint(ckpt_root, cfg_yaml, {"loss": m["loss"]}, sc.keep_checkpoints)
    final_eval = group.evaluate(evals) if evals else None
    if final_eval is not None:
        tracker.metrics({"eval/loss": final_eval}, step=group.step)
        first_eval = final_eval if first_eval is None else first_eval
    ckpt = group.save_checkpoint(ckpt_root, cfg_yaml, {"eval_loss": final_eval}, sc.keep_checkpoints)
    trained = group.step - start
    out = {"steps_trained": trained, "checkpoint": str(ckpt), "train_seconds": t_train,
           "tokens_per_s": tokens_total / t_train if t_train else 0.0,
           "samples_per_s": trained * sc.global_batch / t_train if t_train else 0.0}
    if final_eval is not None:
        out.update({"eval_loss_first": first_eval, "eval_loss_final": final_eval,
                    "eval_loss_drop": 1 - final_eval / first_eval if first_eval else 0.0})
    return out


def sample_lists(cfg: AIGQConfig, policy: Path, samples_dir: Path, tracker: Tracker, say: Say) -> dict[str, Any]:
    """Sample one list per test user (first test day) with the rollout settings; measure the parse rate."""
    from aigq.models.generate import parse_stats
    from rollout.engine import Sampling, make_engine

    sc = cfg.sft
    if sc.sample_prompts == 0:
        return {}
    test = D.first_test_day_per_user(D.read_samples(samples_dir / "test.parquet"), sc.sample_prompts)
    if test.height == 0:
        return {}
    say(f"sampling {test.height} lists from the trained policy")
    engine = make_engine("transformers", policy, variant=sc.variant, dtype=cfg.model.dtype)  # the rollout engine
    t0 = time.perf_counter()
    sampling = Sampling(n=1, temperature=sc.sample_temperature, top_k=sc.sample_top_k, max_tokens=sc.max_new_tokens,
                        seed=cfg.run.seed)
    texts = [g[0].text for g in engine.generate(test["prompt"].to_list(), sampling)]
    seconds = time.perf_counter() - t0
    stats = parse_stats(texts, cfg.samples.label_cap, sc.variant)
    table = test.select("sample_id", "user_id", "day", "prompt", "target").with_columns(
        pl.Series("generated", texts))
    tracker.text(table.write_ndjson(), "sampled_lists.jsonl")
    return {"sample_" + k: v for k, v in stats.items()} | {"sample_seconds": seconds, "samples": table}
