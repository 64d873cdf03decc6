"""``aigq sft`` end to end on a small simulated world: training on the Ray learner group, checkpoints, MLflow
(per-step losses, tokens/s, artifacts, registered model version), sampled lists, resume; bad inputs fail fast."""

import json

import mlflow
import polars as pl
import pytest
from cli_world import cli_world
from typer.testing import CliRunner

from aigq.cli import app

runner = CliRunner()


def _said(res) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(res.output.split())
TINY = ["model.tiny.vocab_size=400", "model.tiny.hidden=32", "model.tiny.layers=1", "model.tiny.heads=2",
        "model.tiny.kv_heads=1", "model.tiny.intermediate=64", "model.tiny.corpus_texts=300"]
FAST = ["learner.num_workers=1", "sft.global_batch=4", "sft.micro_batch=4", "sft.eval_every=2",
        "sft.eval_max_samples=8", "sft.checkpoint_every=2", "sft.sample_prompts=4", "sft.max_new_tokens=24",
        "sft.register_as=tiny-test-policy"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sftcli")
    return tmp, cli_world(tmp / "out", 150, 8, f"tracking.root={tmp / 'ml'}", "tracking.experiment=sft-cli")


def test_sft_trains_logs_registers_and_resumes(ray_local, world, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tmp, base = world
    res = runner.invoke(app, ["sft", *base, *TINY, *FAST, "sft.max_steps=4"])
    assert res.exit_code == 0, res.output
    assert "eval_loss_drop" in res.output and "sample_parse_rate" in res.output
    sft = tmp / "out/sft"
    assert (sft / "policy/model.safetensors").is_file() and (sft / "policy/tokenizer.json").is_file()
    assert (sft / "checkpoints/latest").read_text() == "step-000004"
    assert json.loads((sft / "checkpoints/step-000004/trainer_state.json").read_text())["step"] == 4
    assert "<1_day_ago>" in json.loads((sft / "init/aigq_policy.json").read_text())["added_tokens"]

    client = mlflow.MlflowClient()
    run = next(r for r in mlflow.search_runs(experiment_names=["sft-cli"], output_format="list")
               if r.info.run_name == "sft")
    run_id = run.info.run_id
    assert [m.step for m in client.get_metric_history(run_id, "eval/loss")] == [0, 2, 4]
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1, 2, 3, 4]
    assert run.data.metrics["train/tokens_per_s"] > 0 and "sft.sample_parse_rate" in run.data.metrics
    assert run.data.params["sft.variant"] == "direct"
    arts = {a.path for a in client.list_artifacts(run_id)}
    assert {"policy", "checkpoint", "config.yaml", "sampled_lists.jsonl"} <= arts
    versions = client.search_model_versions("name='tiny-test-policy'")
    assert [v.run_id for v in versions] == [run_id]

    res = runner.invoke(app, ["sft", *base, *TINY, *FAST, "sft.max_steps=6", "sft.resume=latest"])
    assert res.exit_code == 0, res.output
    assert json.loads((sft / "checkpoints/step-000006/trainer_state.json").read_text())["step"] == 6
    resumed = [r for r in mlflow.search_runs(experiment_names=["sft-cli"], output_format="list")
               if r.info.run_name == "sft" and r.info.run_id != run_id][0]
    assert [m.step for m in client.get_metric_history(resumed.info.run_id, "train/loss")] == [5, 6]
    assert len(client.search_model_versions("name='tiny-test-policy'")) == 2


def test_bad_inputs_fail_fast_with_a_clear_message(ray_local, world, tmp_path):
    _, base = world
    res = runner.invoke(app, ["sft", *base, "model.source=path", f"model.path={tmp_path / 'nope'}"])
    assert res.exit_code == 1 and "nope does not exist" in _said(res) and "Traceback" not in res.output

    res = runner.invoke(app, ["sft", *base, *TINY, "learner.num_workers=3"])
    assert res.exit_code == 1 and "needs 3 CPUs but the Ray cluster has 2" in _said(res)

    bad = tmp_path / "samples"
    bad.mkdir()
    src = world[0] / "out/samples"
    (bad / "meta.json").write_text((src / "meta.json").read_text())
    pl.read_parquet(src / "direct.parquet").drop("target").write_parquet(bad / "direct.parquet")
    res = runner.invoke(app, ["sft", f"run.output_dir={tmp_path}", f"tracking.root={tmp_path / 'ml'}"])
    assert res.exit_code == 1 and "missing column 'target'" in _said(res)

    res = runner.invoke(app, ["sft", *base, "--ablation", "plain"])
    assert res.exit_code == 1 and "samples.compress: built True, config False" in _said(res)  # built compressed


def test_sft_with_lora_checkpoints_the_adapter_and_resumes(ray_local, world, monkeypatch):
    """``aigq sft`` with LoRA + bf16 on the learner group (issue 18): the checkpoint holds the trainable tensors and
    the base's path, resuming continues from it, the policy is a merged HF folder (+ adapter/)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tmp, base = world
    lora = ["learner.lora.enabled=true", "learner.lora.rank=4", "learner.bf16=true", "sft.register_as=null",
            "sft.lr=1e-2"]
    res = runner.invoke(app, ["sft", *base, *TINY, *FAST, *lora, "sft.max_steps=2"])
    assert res.exit_code == 0, res.output
    said = _said(res)
    assert "learner: lora:" in said and ("bf16 autocast" in said or "float32 (learner.bf16 requested" in said)
    sft = tmp / "out/sft"
    ck = sft / "checkpoints/step-000002"
    assert (ck / "trainable.safetensors").is_file() and not (ck / "model").exists()
    assert json.loads((ck / "base.json").read_text())["path"] == str((sft / "init").resolve())
    assert (sft / "policy/model.safetensors").is_file() and (sft / "policy/adapter/adapter_config.json").is_file()
    res = runner.invoke(app, ["sft", *base, *TINY, *FAST, *lora, "sft.max_steps=4", "sft.resume=latest"])
    assert res.exit_code == 0, res.output
    assert json.loads((sft / "checkpoints/step-000004/trainer_state.json").read_text())["step"] == 4
    from aigq.models.factory import load_policy

    model, _ = load_policy(sft / "policy")  # the existing loader reads the merged policy
    assert not any("lora" in k for k in model.state_dict())
