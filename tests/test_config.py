from pathlib import Path

import pytest
import yaml

from aigq.config import ConfigError, flatten, load_config, parse_overrides

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_config_loads_with_dotted_overrides():
    cfg = load_config(ROOT / "configs/tiny_cpu.yaml", ["world.users=5000", "samples.behaviour_types=[search, click, cart]",
                                                        "samples.rerank=false", "run.output_dir=/tmp/x"])
    assert cfg.world.users == 5000
    assert cfg.samples.behaviour_types == ["search", "click", "cart"]
    assert cfg.samples.rerank is False
    assert str(cfg.world_dir()) == "/tmp/x/world"
    assert cfg.world.malformed_rate == 0.002  # from the file, untouched by overrides


# configs/*.yaml that are not AIGQ configs, each checked where it is used
NOT_AIGQ = {"serve.yaml": "Ray Serve's deploy file (tests/test_serve_apps.py deploys it)",
            "runtime_env.yaml": "Ray's job runtime environment (tests/test_job_submit.py submits with it)"}
KNOWN = {"tiny_cpu.yaml", "smollm2_cpu.yaml", "qwen3_gpu.yaml", "search_log.yaml", "world_v2.yaml",
         "world_v2_null_taste.yaml", "world_v2_shuffled.yaml"}


def _plain(v):
    return [_plain(x) for x in v] if isinstance(v, list | tuple) else v


def test_every_config_in_repo_is_valid():
    """Every AIGQ config under configs/ loads, and every value it sets is the value the loaded config holds."""
    found = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    assert KNOWN | set(NOT_AIGQ) <= set(found), f"configs/ holds {found}"
    checked = []
    for name in found:
        if name in NOT_AIGQ:
            continue
        path = ROOT / "configs" / name
        data = yaml.safe_load(path.read_text())
        assert isinstance(data, dict) and data, f"{name} sets nothing"
        data.pop("extends", None)  # the base file's values are checked with that file
        loaded = flatten(load_config(path))
        for key, value in flatten(data).items():
            assert _plain(loaded[key]) == _plain(value), f"{name}: {key} = {value!r} loaded as {loaded[key]!r}"
        checked.append(name)
    assert KNOWN <= set(checked)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["world.userz=5"], "world.userz: unknown key"),
        (["world.users=abc"], "world.users"),
        (["samples.think_filter=llm"], "samples.think_filter"),
        (["world.position_bias=[1.0, 0.5]"], "world.position_bias"),
        (["nosuch.section=1"], "nosuch: unknown key"),
        (["world.users"], "expected dotted.key=value"),
        (["world.users.deep=1"], "world.users"),
    ],
)
def test_bad_overrides_name_the_key(overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert needle in str(err.value)


def test_bad_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("world:\n  users: 10\n  colour: red\n")
    with pytest.raises(ConfigError, match="world.colour: unknown key"):
        load_config(bad)
    bad.write_text("world: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_overrides_parse_yaml_scalars_and_flatten():
    assert parse_overrides(["a.b=1", "a.c=x", "d=[1, 2]", "e=null"]) == {"a": {"b": 1, "c": "x"}, "d": [1, 2], "e": None}
    flat = flatten(load_config(None, ["world.users=7"]))
    assert flat["world.users"] == 7 and "samples.history_len" in flat


def test_dumped_config_never_holds_a_url_password():
    """The config saved beside checkpoints and policies (dump_yaml) is a record, not a place for secrets."""
    from aigq.config import dump_yaml

    cfg = load_config(None, ["serve.redis_url=redis://:s3cret@127.0.0.1:6380/0"])
    text = dump_yaml(cfg)
    assert "s3cret" not in text and "redis://:***@127.0.0.1:6380/0" in text
    assert cfg.serve.redis_url == "redis://:s3cret@127.0.0.1:6380/0"  # the live config keeps it


def test_fields_that_follow_another_field_resolve_in_the_config():
    """issue 20: "None → <other field>" defaults are resolved by the config's own methods, not at each use."""
    cfg = load_config(None, ["grpo.prompts_per_iteration=6", "rollout.engine=transformers", "serve.direct_samples=3",
                             "learner.num_workers=1", "ctr.cold_window_days=9", "samples.label_cap=7",
                             "run.output_dir=out"])
    lp = cfg.loop_resolved()
    assert (lp.grpo_prompts, lp.rollout_engine, lp.direct_samples, lp.grpo_learner_workers, lp.ctr_cold_window_days,
            lp.samples_dir) == (6, "transformers", 3, 1, 9, str(cfg.samples_dir()))
    assert cfg.loop.grpo_prompts is None  # the config itself keeps "follow": a later override still propagates
    assert cfg.eval_engine() == "transformers" and cfg.reward_expected_count() == 7
    assert cfg.grpo_init_policy() == cfg.sft_dir() / "policy"
    own = load_config(None, ["loop.grpo_prompts=2", "loop.direct_samples=0", "loop.rollout_engine=vllm",
                             "eval.engine=vllm", "rewards.expected_count=4",
                             "grpo.init_policy=p", "eval.variants_dir=v", "ab.out_dir=a", "loop.out_dir=l"])
    lp = own.loop_resolved()
    assert (lp.grpo_prompts, lp.direct_samples, lp.rollout_engine) == (2, 0, "vllm")
    assert own.eval_engine() == "vllm" and own.reward_expected_count() == 4
    assert [str(own.grpo_init_policy()), str(own.variants_dir()), str(own.ab_dir()), str(own.loop_dir())] == \
        ["p", "v", "a", "l"]
