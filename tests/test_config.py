from pathlib import Path

import pytest

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


def test_every_config_in_repo_is_valid():
    for path in (ROOT / "configs").glob("*.yaml"):
        if path.name in {"serve.yaml", "runtime_env.yaml"}:
            continue
        load_config(path)


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
