"""Deploying ``configs/serve.yaml`` on a Ray cluster the way ``serve deploy`` does (declarative: a changed
``user_config`` reconfigures running replicas in place; nothing restarts), from Python — no dashboard needed.

    cfg = load_serve_config("configs/serve.yaml", root=repo, config="configs/tiny_cpu.yaml", overrides=[...])
    set_auth(cfg, setup_auth(...).policy.to_args())   # bearer-token digests (aigq.serve_app.auth)
    deploy(cfg); wait_running(); set_policy(cfg, "models:/aigq-policy/4"); deploy(cfg)
"""

from __future__ import annotations

import copy
import time
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
