"""Every Ray the project starts or joins (``aigq/ray_boot.py``, issue 19 items 2 and 15): join only when told
(``learner.ray_address`` / $RAY_ADDRESS, then without ``num_cpus``), else a private local Ray (``address="local"``)
that a stale or live ``ray_current_cluster`` cannot derail; Ray's token authentication on for every head the
project starts (Ray 2.60 cannot bind a head to loopback); ``aigq serve down --stop-head`` stops exactly the
recorded head. Only the last test starts a real Ray (in a subprocess)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from aigq.config import load_config

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- item 15: join or start, decided explicitly


def test_plan_joins_only_a_given_address_and_then_passes_no_num_cpus():
    from aigq.ray_boot import plan_ray

    p = plan_ray(None, 6, environ={"RAY_ADDRESS": "10.0.0.5:6379"})
    assert p.join and p.kwargs["address"] == "10.0.0.5:6379" and "num_cpus" not in p.kwargs and "num_gpus" not in p.kwargs
    assert "$RAY_ADDRESS" in p.message and "joining" in p.message
    p = plan_ray("head:6379", 6, environ={"RAY_ADDRESS": "10.0.0.5:6379"})  # learner.ray_address wins
    assert p.join and p.kwargs["address"] == "head:6379" and "learner.ray_address" in p.message
    for env in ({}, {"RAY_ADDRESS": ""}, {"RAY_ADDRESS": "  "}):
        p = plan_ray(None, 6, environ=env)
        assert not p.join and p.kwargs["address"] == "local" and p.kwargs["num_cpus"] == 6, env
        assert "private local Ray" in p.message and "not joined" in p.message


@pytest.fixture
def fake_ray_init(monkeypatch, tmp_path):
    """ray.init / is_initialized replaced: the kwargs each stage passes, no cluster; Ray's token in tmp_path."""
    import ray

    from aigq import ray_boot

    calls = []
    # a Ray running in this test process (ray_local) keeps its token: no refresh of Ray's cached config / token
    monkeypatch.setattr(ray_boot, "_refresh_ray_config", lambda: None)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "ray_token"))
    return calls


@pytest.mark.parametrize("stage", ["train", "loop"])
def test_stages_start_a_private_ray_unless_told_to_join(fake_ray_init, monkeypatch, capsys, stage):
    """Before: ``ray.init(num_cpus=…)`` without an address, which joins whatever ``/tmp/ray/ray_current_cluster``
    names (a live serve head, or a dead one) and fails with "When connecting to an existing cluster, num_cpus and
    num_gpus must not be provided"; and RAY_AUTH_MODE=disabled."""
    from aigq.ray_boot import ensure_ray

    def fn(cfg):
        ensure_ray(cfg, stage)
    cfg = load_config(None, [])
    fn(cfg)
    kw = fake_ray_init[-1]
    assert kw["address"] == "local" and kw["num_cpus"] >= (os.cpu_count() or 1), kw
    assert os.environ["RAY_AUTH_MODE"] == "token"  # Ray's token authentication stays on
    assert "private local Ray" in capsys.readouterr().err  # the decision is said
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    fn(cfg)
    kw = fake_ray_init[-1]
    assert kw["address"] == "10.0.0.5:6379" and "num_cpus" not in kw and "num_gpus" not in kw, kw
    assert "joining the cluster at 10.0.0.5:6379" in capsys.readouterr().err
    fn(load_config(None, ["learner.ray_address=head:6379"]))
    assert fake_ray_init[-1]["address"] == "head:6379" and "num_cpus" not in fake_ray_init[-1]


def test_stale_cluster_file_is_detected(tmp_path):
    from aigq.ray_boot import live_local_address

    assert live_local_address(str(tmp_path)) is None  # no file
    (tmp_path / "ray_current_cluster").write_text("127.0.0.1:1\n")  # nothing listens on port 1
    said = []
    assert live_local_address(str(tmp_path), say=said.append) is None
    assert said and "stale cluster file" in said[0]
    import socket

    with socket.socket() as s:  # something answers there: joined
        s.bind(("127.0.0.1", 0))
        s.listen()
        addr = f"127.0.0.1:{s.getsockname()[1]}"
        (tmp_path / "ray_current_cluster").write_text(addr)
        assert live_local_address(str(tmp_path)) == addr


# ---------------------------------------------------------------- item 2: Ray's token authentication stays on


def test_token_auth_on_for_every_head_the_project_starts(tmp_path):
    """Before: ``RAY_AUTH_MODE=disabled`` for the `serve up` head, the stages' and the loop's local Ray, while Ray
    2.60 listens on all interfaces (GCS ``*:6379``, the client server on the external address)."""
    from aigq.ray_boot import DISABLED_WARNING, head_command, head_env, prepare_ray_auth

    env = {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "tok"), "RAY_ADDRESS": "x:1"}
    said = []
    out = head_env(env, say=said.append)
    assert out["RAY_AUTH_MODE"] == "token" and "RAY_ADDRESS" not in out
    token = (tmp_path / "tok").read_text().strip()
    assert len(token) == 64 and stat.S_IMODE(os.stat(tmp_path / "tok").st_mode) == 0o600
    assert token not in " ".join(said) and str(tmp_path / "tok") in " ".join(said)  # where, never the token
    assert head_env(env, say=said.append)["RAY_AUTH_MODE"] == "token"
    assert (tmp_path / "tok").read_text().strip() == token  # an existing token is kept
    cmd = head_command(2)
    assert cmd[1:4] == ["start", "--head", "--block"] and "--num-cpus=2" in cmd
    # an operator's explicit opt-out is respected, loudly
    said.clear()
    assert prepare_ray_auth(True, {"RAY_AUTH_MODE": "disabled"}, said.append) == "disabled"
    assert said == [f"warning: {DISABLED_WARNING}"]
    # joining: token mode when a token is at hand, else what the environment says
    assert prepare_ray_auth(False, {"RAY_AUTH_TOKEN": "t"}) == "token"
    assert prepare_ray_auth(False, {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")}) == "disabled"


def test_stop_head_stops_exactly_the_recorded_process(tmp_path):
    import psutil

    from aigq.ray_boot import read_head_record, stop_serve_head

    cmd = [sys.executable, "-c", "import time; time.sleep(120)"]
    proc = subprocess.Popen(cmd, start_new_session=True)
    other = subprocess.Popen([*cmd[:-1], "import time; time.sleep(121)"], start_new_session=True)
    try:
        deadline = time.time() + 30
        while psutil.Process(proc.pid).cmdline() != cmd and time.time() < deadline:  # until the child has exec'd
            time.sleep(0.02)
        addr_file = tmp_path / "ray_current_cluster"
        addr_file.write_text("10.0.0.9:6379")
        record = tmp_path / "ray_head.json"
        rec = {"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(), "cmdline": cmd,
               "address": "10.0.0.9:6379", "address_file": str(addr_file)}
        # a record whose pid now belongs to another process (pid reuse): refused, nothing killed
        record.write_text(json.dumps({**rec, "pid": other.pid}))
        with pytest.raises(RuntimeError, match="no longer the Ray head"):
            stop_serve_head(record)
        assert other.poll() is None and proc.poll() is None
        record.write_text(json.dumps(rec))
        assert "stopped the Ray head at 10.0.0.9:6379" in stop_serve_head(record, grace_s=5)
        assert proc.wait(5) is not None and other.poll() is None  # that one, no other
        assert not record.exists() and not addr_file.exists() and read_head_record(record) is None
        with pytest.raises(FileNotFoundError):
            stop_serve_head(record)
    finally:
        for p in (proc, other):
            p.kill()
            p.wait()


FAKE_RAY = """#!{python}
import os, pathlib, sys, time
d = pathlib.Path(os.environ["RAY_TMPDIR"]) / "ray"
d.mkdir(exist_ok=True)
(d / "ray_current_cluster").write_text("10.0.0.7:6379")
pathlib.Path(os.environ["FAKE_RAY_SEEN"]).write_text(" ".join(sys.argv[1:]) + "|" + os.environ.get("RAY_AUTH_MODE", "")
                                                   + "|" + os.environ.get("RAY_ADDRESS", ""))
print("This command will now block forever until terminated by a signal.", flush=True)
time.sleep(120)
"""


def test_serve_up_head_is_recorded_and_stopped_exactly(tmp_path, monkeypatch):
    """``start_serve_head`` → ``stop_serve_head`` with a stand-in ``ray`` script (a Python script, like the real one:
    the OS shows the interpreter first in its command line): token mode in the head's environment, no RAY_ADDRESS,
    the record names the process as the OS sees it, and --stop-head stops it and clears the address file."""
    import psutil

    from aigq import ray_boot as RB

    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "ray"
    fake.write_text(FAKE_RAY.format(python=sys.executable))
    fake.chmod(0o755)
    monkeypatch.setattr(RB, "ray_cli", lambda: str(fake))
    monkeypatch.setattr(RB, "_refresh_ray_config", lambda: None)  # a Ray in this process keeps its token
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.setenv("FAKE_RAY_SEEN", str(tmp_path / "seen"))
    monkeypatch.setenv("RAY_ADDRESS", "elsewhere:1")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    record = tmp_path / "out" / "serve" / "ray_head.json"
    rec = RB.start_serve_head(record, 2, timeout_s=60, say=lambda m: None)
    try:
        args, mode, address = (tmp_path / "seen").read_text().split("|")
        assert args == "start --head --block --include-dashboard=false --disable-usage-stats --num-cpus=2"
        assert mode == "token" and address == "" and os.environ["RAY_AUTH_MODE"] == "token"
        assert rec["address"] == "10.0.0.7:6379" and json.loads(record.read_text()) == rec
        assert rec["cmdline"] == psutil.Process(rec["pid"]).cmdline() and rec["cmdline"][1] == str(fake)
        assert "stopped the Ray head at 10.0.0.7:6379" in RB.stop_serve_head(record, grace_s=5)
        assert not psutil.pid_exists(rec["pid"]) or psutil.Process(rec["pid"]).status() == psutil.STATUS_ZOMBIE
        assert not (tmp_path / "ray" / "ray_current_cluster").exists() and not record.exists()
    finally:
        try:
            psutil.Process(rec["pid"]).kill()
        except psutil.NoSuchProcess:
            pass


def test_serve_down_stop_head_without_a_record_fails_cleanly(tmp_path):
    r = subprocess.run([str(Path(sys.executable).parent / "aigq"), "serve", "down", "--stop-head",
                        f"run.output_dir={tmp_path}", "tracking.enabled=false"],
                       capture_output=True, text=True, timeout=120, cwd=REPO,
                       env={**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="aigq-rt-", dir="/tmp")})
    assert r.returncode == 1 and "no Ray head recorded" in r.stdout, (r.stdout, r.stderr[-2000:])


# ---------------------------------------------------------------- item 15 end to end: a stale cluster file


@pytest.mark.slow
def test_a_stage_starts_despite_a_stale_cluster_file():
    """``ensure_ray`` in a fresh process whose Ray temp dir holds a ``ray_current_cluster`` naming a dead head (what a
    crashed or killed ``ray start`` leaves behind). Before: ValueError "When connecting to an existing cluster,
    num_cpus and num_gpus must not be provided"."""
    tmp = Path(tempfile.mkdtemp(prefix="aigq-st-", dir="/tmp"))  # short: Ray's socket paths are ≤ 107 characters
    (tmp / "ray").mkdir()
    (tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:1\n")
    code = ("import ray; from aigq.config import load_config; from aigq.ray_boot import ensure_ray; "
            "ensure_ray(load_config(None, ['learner.num_workers=1', 'rollout.num_workers=1', 'rewards.num_actors=1']));"
            " print('CPUS', ray.cluster_resources().get('CPU')); ray.shutdown()")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env.update(RAY_TMPDIR=str(tmp), RAY_AUTH_TOKEN_PATH=str(tmp / "token"))
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "CPUS" in r.stdout and "private local Ray" in r.stderr, (r.stdout, r.stderr[-2000:])
    assert time.time() - t0 < 240
