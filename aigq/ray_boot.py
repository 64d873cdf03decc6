"""The one Ray bootstrap: every Ray the project starts or joins goes through :func:`ensure_ray` — the training stages
(``stage="train"``), the daily loop (``"loop"``: room for Serve too) and the Serve commands (``"serve"``: join the
running cluster, or start ``aigq serve up``'s head).

**Join or start, decided explicitly** (:func:`plan_ray`): with ``learner.ray_address`` or ``$RAY_ADDRESS`` the stage
joins that cluster and is sized by its resources (no ``num_cpus``); otherwise it starts a *private* local Ray
(``ray.init(address="local", num_cpus=…)``) and says so. A head left running on the machine (by ``aigq serve up``,
or a crashed run) is never joined by accident, and a stale ``/tmp/ray/ray_current_cluster`` cannot break a stage:
before, ``ray.init(num_cpus=…)`` read that file and failed with "When connecting to an existing cluster, num_cpus
and num_gpus must not be provided".

**Ray's token authentication stays on** (:func:`prepare_ray_auth`): Ray 2.60 cannot bind a head to loopback — it
replaces ``--node-ip-address 127.0.0.1`` by the machine's address, and the GCS and raylet listen on all interfaces
(measured: ``*:6379`` for the GCS, the client server on the external address too). So every head the project
starts runs with ``RAY_AUTH_MODE=token`` and the token Ray reads from ``$RAY_AUTH_TOKEN``, ``$RAY_AUTH_TOKEN_PATH``
or ``~/.ray/auth_token`` (created here with mode 0600 when none exists; never printed). Clients on the same machine
(``aigq serve status``, ``ray status``, the stages' workers) read the same file. ``RAY_AUTH_MODE=disabled`` set by
the operator is respected, with a warning that the head is open to the network.

**``aigq serve up``'s head** (:func:`start_serve_head`) is ``ray start --head --block`` in its own session, recorded
in ``<run.output_dir>/serve/ray_head.json`` (pid, start time, command line, address); :func:`stop_serve_head`
(``aigq serve down --stop-head``) stops exactly that process and its tree — never ``ray stop``, which stops every
Ray on the machine — after checking that the pid still belongs to the recorded process.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aigq.say import Say
from aigq.say import to_stderr as _stderr

DISABLED_WARNING = ("RAY_AUTH_MODE=disabled: this Ray head runs without token authentication, and Ray 2.60 listens "
                    "on all network interfaces (GCS, raylet, client server); anyone who reaches this machine can run "
                    "code on it. Unset RAY_AUTH_MODE to keep Ray's token authentication on.")


# ---------------------------------------------------------------- Ray's own token authentication


def write_secret(path: Path, text: str) -> None:
    """``text`` into ``path`` with mode 0600 from the start (a temporary sibling, then an atomic rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def ray_token_path(environ: MutableMapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()


def has_ray_token(environ: MutableMapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    if (env.get("RAY_AUTH_TOKEN") or "").strip():
        return True
    try:
        return bool(ray_token_path(env).read_text().strip())
    except OSError:
        return False


def _refresh_ray_config() -> None:
    """Make an already imported Ray see RAY_AUTH_MODE / a new token file (as Ray's own ``_enable_token_auth``)."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except Exception:  # noqa: BLE001 — Ray not importable here, or an older API: a fresh process reads the env
        pass


def prepare_ray_auth(start: bool, environ: MutableMapping[str, str] | None = None, say: Say | None = None) -> str:
    """Set Ray's authentication mode in ``environ`` (this process's environment by default, which every head,
    raylet and worker it starts inherits) before ``ray.init`` / ``ray start``; returns it ("token" / "disabled").

    ``start`` (a head is about to be started): token mode, with a token created (0600) at Ray's token path when
    none exists; an explicit ``RAY_AUTH_MODE=disabled`` is respected with :data:`DISABLED_WARNING`. Joining: token
    mode when a token is at hand (a cluster without authentication ignores it), else what the environment says."""
    env = os.environ if environ is None else environ
    say = say or _stderr
    mode = (env.get("RAY_AUTH_MODE") or "").strip().lower()
    if mode == "disabled":
        if start:
            say(f"warning: {DISABLED_WARNING}")
        return "disabled"
    if not start and not has_ray_token(env):
        return mode or "disabled"
    if start and not has_ray_token(env):
        path = ray_token_path(env)
        write_secret(path, secrets.token_hex(32))  # Ray's own format (ray get-auth-token --generate)
        say(f"Ray token authentication: created a token at {path} (mode 0600)")
    env["RAY_AUTH_MODE"] = "token"
    if env is os.environ:
        _refresh_ray_config()
    return "token"


# ---------------------------------------------------------------- join or start (item 15)


@dataclass(frozen=True)
class RayPlan:
    join: bool
    kwargs: dict[str, Any]  # for ray.init
    message: str


def plan_ray(address: str | None, num_cpus: int, environ: MutableMapping[str, str] | None = None) -> RayPlan:
    """Join ``address`` (a config's ``learner.ray_address``) or ``$RAY_ADDRESS`` — sized by the cluster, so no
    ``num_cpus`` — else start a private local Ray with ``num_cpus`` logical CPUs (``address="local"``: neither
    ``$RAY_ADDRESS`` nor the machine's ``ray_current_cluster`` file is read). Pure."""
    env = os.environ if environ is None else environ
    addr = address or (env.get("RAY_ADDRESS") or "").strip() or None
    if addr:
        src = "learner.ray_address" if address else "$RAY_ADDRESS"
        return RayPlan(True, {"address": addr, "log_to_driver": False},
                       f"Ray: joining the cluster at {addr} ({src}); it is sized by its own resources")
    return RayPlan(False, {"address": "local", "num_cpus": int(num_cpus), "include_dashboard": False,
                           "log_to_driver": False, "configure_logging": False},
                   f"Ray: starting a private local Ray ({num_cpus} logical CPUs); a Ray head already running on "
                   "this machine is not joined (set RAY_ADDRESS to join one)")


def init_ray(address: str | None, num_cpus: int, attempts: int = 1, say: Say | None = None) -> RayPlan | None:
    """``ray.init`` as :func:`plan_ray` decides, after :func:`prepare_ray_auth`; None when Ray is already up.
    A local start is retried ``attempts`` times (Ray gives a new raylet 30 s to register; an overloaded machine
    can miss that)."""
    import ray

    if ray.is_initialized():
        return None
    say = say or _stderr
    plan = plan_ray(address, num_cpus)
    prepare_ray_auth(start=not plan.join, say=say)
    say(plan.message)
    for attempt in range(1, attempts + 1):
        try:
            ray.init(**plan.kwargs)
            return plan
        except Exception:  # noqa: BLE001 — Ray raises a bare Exception on a startup timeout
            if plan.join or attempt == attempts:
                raise
            ray.shutdown()
            time.sleep(5)
    return plan


def live_local_address(temp_dir: str | None = None, say: Say | None = None) -> str | None:
    """The address in this machine's ``ray_current_cluster`` file when a GCS answers there (a TCP connect), else
    None — a stale file (a head that crashed or was killed) is reported and ignored."""
    from ray._common.utils import get_ray_address_file

    path = Path(get_ray_address_file(temp_dir))
    try:
        addr = path.read_text().strip()
    except OSError:
        return None
    host, _, port = addr.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
            return addr
    except (OSError, ValueError):
        (say or _stderr)(f"Ray: stale cluster file {path} (nothing answers at {addr or '?'}): ignored")
        return None


# ---------------------------------------------------------------- aigq serve up's head (item 2)


def ray_cli() -> str:
    here = Path(sys.executable).parent / "ray"
    return str(here) if here.exists() else (shutil.which("ray") or "ray")


READY = b"will now block forever"  # `ray start --block` prints it after the head is up and its address file written


def head_command(num_cpus: int) -> list[str]:
    return [ray_cli(), "start", "--head", "--block", "--include-dashboard=false", "--disable-usage-stats",
            f"--num-cpus={num_cpus}"]


def head_env(environ: MutableMapping[str, str] | None = None, say: Say | None = None) -> dict[str, str]:
    """The environment of a head this project starts: Ray's token authentication on (:func:`prepare_ray_auth`,
    applied to ``environ`` — this process's by default, which then joins the head in the same mode), no
    ``RAY_ADDRESS``."""
    env = os.environ if environ is None else environ
    prepare_ray_auth(start=True, environ=env, say=say)
    out = dict(env)
    out.pop("RAY_ADDRESS", None)
    return out


def start_serve_head(record: Path, num_cpus: int, timeout_s: float = 180.0, say: Say | None = None) -> dict[str, Any]:
    """``ray start --head --block`` in its own session (it outlives this command), recorded in ``record``; waits
    until the head is up. Returns the record (pid, create_time, cmdline, address, log, auth)."""
    import psutil
    from ray._common.utils import get_ray_address_file

    env = head_env(say=say)
    cmd = head_command(num_cpus)
    record.parent.mkdir(parents=True, exist_ok=True)
    log = record.with_name("ray_head.log")
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while READY not in log.read_bytes():
        if proc.poll() is not None:
            raise RuntimeError(f"`{' '.join(cmd)}` exited with {proc.returncode}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            stop_process_tree(psutil.Process(proc.pid))
            raise RuntimeError(f"the Ray head was not up within {timeout_s:.0f} s:\n{_tail(log)}")
        time.sleep(0.5)
    ps = psutil.Process(proc.pid)  # as the OS shows it (the interpreter first: `ray` is a script)
    rec = {"pid": proc.pid, "create_time": ps.create_time(), "cmdline": ps.cmdline(),
           "address": Path(get_ray_address_file(None)).read_text().strip(), "log": str(log),
           "address_file": str(get_ray_address_file(None)), "auth": env.get("RAY_AUTH_MODE", ""),
           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tmp = record.with_name(record.name + ".tmp")
    tmp.write_text(json.dumps(rec, indent=1))
    os.replace(tmp, record)
    return rec


def read_head_record(record: Path) -> dict[str, Any] | None:
    try:
        return json.loads(record.read_text())
    except (OSError, ValueError):
        return None


def _tail(log: Path, n: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def stop_process_tree(proc, grace_s: float = 20.0) -> None:
    """SIGTERM ``proc`` (``ray start --block`` then stops the GCS, raylet and agents it started), SIGKILL it after
    ``grace_s``, then SIGKILL whatever of its process tree is still alive."""
    import psutil

    try:
        tree = proc.children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except psutil.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    except psutil.NoSuchProcess:
        pass
    _, alive = psutil.wait_procs(tree, timeout=5)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def stop_serve_head(record: Path, grace_s: float = 20.0) -> str:
    """Stop the head recorded in ``record`` and only it; remove the record, and the machine's address file when it
    still names this head. Refuses (RuntimeError) when the pid now belongs to another process."""
    import psutil

    rec = read_head_record(record)
    if rec is None:
        raise FileNotFoundError(f"no Ray head record at {record} (`aigq serve up` writes it when it starts a head)")
    try:
        proc = psutil.Process(int(rec["pid"]))
        same = abs(proc.create_time() - float(rec["create_time"])) < 1.0 and proc.cmdline() == list(rec["cmdline"])
    except psutil.NoSuchProcess:
        proc, same = None, False
    if proc is not None and not same:
        raise RuntimeError(f"pid {rec['pid']} is no longer the Ray head `aigq serve up` started (another process "
                           f"has it now): not stopping it; remove {record} by hand")
    if proc is not None:
        stop_process_tree(proc, grace_s)
        msg = f"stopped the Ray head at {rec['address']} (pid {rec['pid']})"
    else:
        msg = f"the Ray head at {rec['address']} (pid {rec['pid']}) was no longer running"
    addr_file = Path(rec.get("address_file") or "")
    try:
        if addr_file.name and addr_file.read_text().strip() == rec["address"]:
            addr_file.unlink()
    except OSError:
        pass
    record.unlink(missing_ok=True)
    return msg


# ---------------------------------------------------------------- the bootstrap every stage calls

SERVE_CPUS = 2  # logical CPUs the Serve replicas of configs/serve.yaml reserve at most (1.35 at min replicas)


class NoRayClusterError(RuntimeError):
    """A Serve command found no cluster to join and was not allowed to start a head."""


def head_record(cfg) -> Path:
    """Where ``aigq serve up`` records the Ray head it started (``aigq serve down --stop-head`` reads it)."""
    return cfg.serve_dir().resolve() / "ray_head.json"


def local_cpus(cfg, stage: str) -> int:
    """Logical CPUs a private local Ray offers a stage: this machine's cores for the learner group, plus the rollout
    workers and reward actors (IL-GRPO's phases take turns on the cores; the learner alone must still fit the
    machine, ``actors.learner.check_resources``), plus the Serve replicas for the daily loop."""
    extra = cfg.pipeline_cpus() - cfg.learner.num_workers * cfg.learner.cpus_per_worker
    return (os.cpu_count() or 1) + math.ceil(extra + (SERVE_CPUS if stage == "loop" else 0))


def ensure_ray(cfg, stage: str = "train", *, address: str | None = None, start_head: bool = False,
               say: Say | None = None) -> None:
    """Join ``address`` / ``learner.ray_address`` / $RAY_ADDRESS, else (``train``, ``loop``) start a private local
    Ray sized by :func:`local_cpus` — the decision is said, a head left running on the machine is not joined, Ray's
    token authentication stays on — or (``serve``) join the machine's running head, else start a detached one when
    ``start_head`` (its record: :func:`head_record`), else raise :class:`NoRayClusterError`. A real cluster is sized by
    its own resources. Nothing happens when Ray is already initialised. ``cfg`` may be None for ``serve`` when no
    head is to be started (``aigq serve status`` / ``rollout`` need no run config)."""
    if stage not in ("train", "loop", "serve"):
        raise ValueError(f"unknown Ray stage {stage!r}: train | loop | serve")
    if stage == "serve":
        if cfg is None and start_head:
            raise ValueError("starting a Serve head needs the run's config (its head record)")
        return _connect_serve(address or (cfg.learner.ray_address if cfg is not None else None), start_head,
                              head_record(cfg) if cfg is not None else None, say or _stderr)
    if stage == "train":
        init_ray(address or cfg.learner.ray_address, local_cpus(cfg, stage), say=say)
        return
    try:  # Ray gives a new raylet 30 s to register; an overloaded machine can miss that: 3 tries
        init_ray(address or cfg.learner.ray_address, local_cpus(cfg, stage), attempts=3, say=say)
    except Exception as exc:  # noqa: BLE001 — Ray raises a bare Exception on a startup timeout
        if address or cfg.learner.ray_address or os.environ.get("RAY_ADDRESS"):
            raise
        raise RuntimeError(f"could not start a local Ray (3 tries): {exc}") from None


def _connect_serve(address: str | None, start: bool, record: Path | None, say: Say) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or live_local_address(say=say)
    kw: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    if address:
        prepare_ray_auth(start=False)
        ray.init(address=address, **kw)
        return
    if not start:
        raise NoRayClusterError("no running Ray cluster (start one with `aigq serve up` or pass --address)")
    say("starting a Ray head (`ray start --head --block`, token authentication on)")
    rec = start_serve_head(record, os.cpu_count() or 1, say=say)
    say(f"Ray head at {rec['address']} (pid {rec['pid']}, recorded in {record}); "
        "`aigq serve down --stop-head` stops it")
    ray.init(address=rec["address"], **kw)
