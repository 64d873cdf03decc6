"""Deploying ``configs/serve.yaml`` on a Ray cluster the way ``serve deploy`` does (declarative: a changed
``user_config`` reconfigures running replicas in place; nothing restarts), from Python — no dashboard needed.

    cfg = load_serve_config("configs/serve.yaml", root=repo, config="configs/tiny_cpu.yaml", overrides=[...])
    set_auth(cfg, setup_auth(...).policy.to_args())   # bearer-token digests (serve_app.auth)
    deploy(cfg); wait_running(); set_policy(cfg, "models:/aigq-policy/4"); deploy(cfg)

A hot rollout (``aigq serve rollout``) checks the new policy first (:func:`check_policy`, :func:`check_registry`:
a missing folder or a malformed ``models:/`` URI is refused before the running apps are touched) and holds
:func:`rollout_lock` (an exclusive, non-blocking ``flock`` on ``<run.output_dir>/serve/rollout.lock``) while it
changes the deployed config, so two rollouts never interleave. These helpers need no Ray cluster.
"""

from __future__ import annotations

import copy
import datetime as dt
import fcntl
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

POLICY_DEPLOYMENTS = {"direct": "DirectGenerator", "think": "ThinkApp"}


def load_serve_config(path: str | Path, root: str | Path | None = None, config: str | None = None,
                      overrides: list[str] | None = None, host: str | None = None, port: int | None = None,
                      apps: list[str] | None = None) -> dict[str, Any]:
    """Read a multi-application Serve config and fill every app's ``args`` with ``root`` / ``config`` /
    ``overrides`` (extra overrides are appended) and the HTTP host/port."""
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or "applications" not in data:
        raise ValueError(f"{path}: not a multi-application Serve config (no `applications`)")
    data = copy.deepcopy(data)
    if apps:
        data["applications"] = [a for a in data["applications"] if a["name"] in apps]
    for app in data["applications"]:
        args = app.setdefault("args", {})
        if root is not None:
            args["root"] = str(Path(root).resolve())
        if config is not None:
            args["config"] = str(config)
        args["overrides"] = list(args.get("overrides") or []) + list(overrides or [])
    http = data.setdefault("http_options", {})
    if host:
        http["host"] = host
    if port:
        http["port"] = port
    return data


def set_auth(cfg: dict[str, Any], auth_args: dict[str, Any]) -> None:
    """Give every application the token digests it accepts (``AuthPolicy.to_args()``: never a token)."""
    for app in cfg["applications"]:
        app.setdefault("args", {})["auth"] = auth_args


def set_user_config(cfg: dict[str, Any], app: str, deployment: str, **values: Any) -> None:
    for a in cfg["applications"]:
        if a["name"] == app:
            for d in a.get("deployments", []):
                if d["name"] == deployment:
                    d["user_config"] = {**(d.get("user_config") or {}), **values}
                    return
            a.setdefault("deployments", []).append({"name": deployment, "user_config": dict(values)})
            return
    raise KeyError(f"no application {app!r} in the Serve config")


def set_policy(cfg: dict[str, Any], policy: str, think_policy: str | None = None) -> None:
    """Point the Direct generator (and the Think app) at a new policy version (folder or models:/name/version)."""
    names = {a["name"] for a in cfg["applications"]}
    if "direct" in names:
        set_user_config(cfg, "direct", POLICY_DEPLOYMENTS["direct"], policy=policy)
    if "think" in names:
        set_user_config(cfg, "think", POLICY_DEPLOYMENTS["think"], policy=think_policy or policy)


def deploy(cfg: dict[str, Any]) -> None:
    """Start Serve on the connected cluster (HTTP options from the config) and deploy all its applications."""
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(cfg)
    client = serve_start(http_options=cfg.get("http_options") or {})
    client.deploy_apps(schema)


def app_statuses() -> dict[str, str]:
    from ray import serve

    return {name: str(a.status) for name, a in serve.status().applications.items()}


def wait_running(names: list[str] | None = None, timeout_s: float = 300.0, poll_s: float = 1.0) -> dict[str, Any]:
    """Wait until the named applications (default: all) are RUNNING; raise with their messages on failure."""
    from ray import serve

    deadline = time.time() + timeout_s
    while True:
        apps = serve.status().applications
        want = names or list(apps)
        st = {n: apps[n] for n in want if n in apps}
        if len(st) == len(want) and all(str(a.status).endswith("RUNNING") for a in st.values()):
            return {n: str(a.status) for n, a in st.items()}
        failed = {n: a.message for n, a in st.items() if "DEPLOY_FAILED" in str(a.status)}
        if failed:
            raise RuntimeError(f"deploy failed: {failed}")
        if time.time() > deadline:
            raise TimeoutError(f"applications not RUNNING after {timeout_s:.0f} s: "
                               f"{ {n: (str(a.status), a.message) for n, a in st.items()} }")
        time.sleep(poll_s)


def describe() -> dict[str, Any]:
    """Applications, their status and each deployment's status and replica count."""
    from ray import serve

    out = {}
    for name, a in serve.status().applications.items():
        out[name] = {"status": str(a.status), "message": a.message,
                     "deployments": {d: {"status": str(s.status), "replicas": dict(s.replica_states)}
                                     for d, s in a.deployments.items()}}
    return out


def deployed_config() -> dict[str, Any]:
    """The running applications' Serve config (what a rollout edits and redeploys); RolloutError when none runs."""
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    apps = [a["deployed_app_config"] for a in details.get("applications", {}).values() if a.get("deployed_app_config")]
    if not apps:
        raise RolloutError("no applications deployed (`aigq serve up` first)")
    return {"applications": apps, "http_options": {k: v for k, v in (details.get("http_options") or {}).items()
                                                   if k in ("host", "port", "request_timeout_s")}}


def shutdown() -> None:
    """Delete every application and stop Serve (the Ray cluster keeps running)."""
    from ray import serve

    serve.shutdown()


def disconnect() -> None:
    """Leave the Ray cluster this process joined (``ray.shutdown``; a head it joined keeps running)."""
    import ray

    ray.shutdown()


# ---- hot rollout: checks before the running apps are touched, one rollout at a time -------------------------------

# a policy folder needs one of these to build its tokenizer (Hugging Face's fast, sentencepiece or BPE/WordPiece files)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")
_REGISTRY_SPEC = re.compile(r"^(?P<name>[^/@\s]+)(?:/(?P<version>[0-9]+)|@(?P<alias>[A-Za-z0-9_-]+))$")


class RolloutError(ValueError):
    """A rollout refused before anything was deployed (the deployed config is unchanged)."""


class RolloutBusy(RolloutError):
    """Another rollout holds the rollout lock of this Serve deployment."""


def parse_registry_spec(spec: str) -> tuple[str, str | None, str | None]:
    """``models:/<name>/<version>`` → (name, version, None); ``models:/<name>@<alias>`` → (name, None, alias).
    Anything else that starts with ``models:`` (no version, ``latest``, a stage, a nested path) → RolloutError.
    Pure."""
    body = spec[len("models:/"):].strip("/") if spec.startswith("models:/") else None
    m = _REGISTRY_SPEC.match(body) if body else None
    if m is None or (m["version"] is not None and int(m["version"]) < 1):
        raise RolloutError(f"policy {spec!r} is not a registry URI of the form models:/<name>/<version> "
                           "(a version number >= 1) or models:/<name>@<alias>")
    return m["name"], m["version"], m["alias"]


def check_policy(spec: str) -> str:
    """The spec to deploy for ``spec`` — a ``models:/`` URI checked for its form (:func:`parse_registry_spec`), or a
    local folder made absolute after checking that it exists and holds a policy: a ``config.json`` that is a JSON
    object and a tokenizer file (:data:`TOKENIZER_FILES`). Raises RolloutError naming the path and what is missing.
    Reads only the local filesystem: no cluster, no registry."""
    if spec.startswith("models:"):
        parse_registry_spec(spec)
        return spec
    if not spec.strip():
        raise RolloutError("policy path is empty")
    folder = Path(spec).expanduser().resolve()
    if not folder.exists():
        raise RolloutError(f"policy {folder}: no such folder")
    if not folder.is_dir():
        raise RolloutError(f"policy {folder}: not a folder")
    config = folder / "config.json"
    if not config.is_file():
        raise RolloutError(f"policy {folder} holds no policy: no config.json (train one with `aigq sft`)")
    try:
        ok = isinstance(json.loads(config.read_text()), dict)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        ok = False
    if not ok:
        raise RolloutError(f"policy {folder}: config.json is not a JSON object (a partial copy?)")
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise RolloutError(f"policy {folder} holds no tokenizer: none of {', '.join(TOKENIZER_FILES)}")
    return str(folder)


def _app_args(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The first application's ``args`` (``aigq serve up`` gives every app the same config, overrides and root)."""
    return next((a["args"] for a in cfg.get("applications", []) if isinstance(a.get("args"), dict)), None)


def deployed_tracking_uri(cfg: dict[str, Any]) -> str | None:
    """The MLflow tracking URI the deployed replicas resolve ``models:/`` specs with (as
    ``AppContext.tracking_uri``: ``tracking.uri``, else $MLFLOW_TRACKING_URI, else the SQLite store under
    ``tracking.root`` relative to the apps' ``root``); None when the apps' AIGQ config cannot be read here."""
    from serve_app.common import load_app_config

    try:
        aigq_cfg, root = load_app_config(_app_args(cfg))
    except Exception:  # a config this machine cannot read: no registry check
        return None
    t = aigq_cfg.tracking
    if t.uri:
        return t.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    troot = Path(t.root).expanduser()
    return f"sqlite:///{(troot if troot.is_absolute() else root / troot) / 'mlflow.db'}"


def check_registry(spec: str, tracking_uri: str) -> str | None:
    """Check that the registry at ``tracking_uri`` holds ``spec`` (``models:/name/version`` or ``@alias``): one
    lookup. RolloutError when the registry says there is no such model, version or alias, or when a SQLite registry
    file does not exist (it is not created); a registry that cannot be asked returns a warning text instead (the
    replicas may still reach it)."""
    from aigq.config import redact_url

    name, version, alias = parse_registry_spec(spec)
    shown = redact_url(tracking_uri)
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).is_file():
        raise RolloutError(f"policy {spec}: no model registry at {shown} (no such database)")
    import mlflow
    from mlflow.exceptions import MlflowException

    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}  # one try, not minutes
    saved = {k: os.environ.get(k) for k in quick}
    os.environ.update({k: v for k, v in quick.items() if saved[k] is None})
    try:
        client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        if alias is not None:
            client.get_model_version_by_alias(name, alias)
        else:
            client.get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            what = f"alias {alias!r}" if alias is not None else f"version {version}"
            raise RolloutError(f"policy {spec}: the registry at {shown} has no {what} of model {name!r}") from None
        return f"could not check {spec} in the registry at {shown}: {_first_line(exc, tracking_uri, shown)}"
    except Exception as exc:  # unreachable registry: the replicas report it if they cannot fetch it
        return f"could not check {spec} in the registry at {shown}: {_first_line(exc, tracking_uri, shown)}"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
    return None


def _first_line(exc: BaseException, uri: str, shown: str) -> str:
    """An exception's first line with the tracking URI's credentials redacted."""
    text = (str(exc).strip().splitlines() or [""])[0].replace(uri, shown)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def rollout_lock_path(cfg: dict[str, Any]) -> Path:
    """Where the rollout lock of the deployed Serve config ``cfg`` lives: ``<run.output_dir>/serve/rollout.lock`` of
    the apps' AIGQ config (``run.output_dir`` relative to the apps' ``root``), next to ``serve up``'s head record and
    token. When that config cannot be read on this machine: ``~/.cache/aigq/serve/rollout-<host>-<port>.lock``
    (the Serve HTTP address)."""
    from serve_app.common import load_app_config

    try:
        aigq_cfg, root = load_app_config(_app_args(cfg))
        out = Path(aigq_cfg.run.output_dir).expanduser()
        return (out if out.is_absolute() else root / out) / "serve" / "rollout.lock"
    except Exception:  # the apps' config is not readable here: one lock per Serve HTTP address
        http = cfg.get("http_options") or {}
        tag = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{http.get('host', 'default')}-{http.get('port', 'default')}")
        return Path.home() / ".cache" / "aigq" / "serve" / f"rollout-{tag}.lock"


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        info = {}
    if not isinstance(info, dict):
        info = {}
    where = f" on {info['host']}" if info.get("host") else ""
    what = f", policy {info['policy']}" if info.get("policy") else ""
    return f"since {info.get('since', '?')}, pid {info.get('pid', '?')}{where}{what}"


@contextmanager
def rollout_lock(path: str | Path, policy: str | None = None) -> Iterator[Path]:
    """Hold the exclusive rollout lock ``path`` for the body, or raise RolloutBusy at once (no waiting) naming the
    holder ("another rollout is in progress (since …, pid …)"). ``flock``: the kernel drops the lock when its holder
    exits, however it exits, so a killed rollout never leaves it taken; the file itself stays (deleting it would let
    two processes lock two different files). While held, the file says who holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(path.read_text(errors="replace"))
            raise RolloutBusy(f"another rollout is in progress ({holder}); try again when it has finished "
                              f"(lock {path})") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "policy": policy,
                                     "since": dt.datetime.now().astimezone().isoformat(timespec="seconds")}).encode())
            yield path
        finally:
            os.ftruncate(fd, 0)  # nobody holds it now
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
