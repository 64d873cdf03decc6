"""What every serving app builds from its Serve ``args``: the AIGQ config, the store, the records layer.

Serve ``args`` (``configs/serve.yaml``) of each application::

    config: configs/tiny_cpu.yaml     # an AIGQ config (relative to `root`)
    overrides: ["serve.store=redis"]  # dotted overrides
    root: /path/to/repo               # relative paths resolve against it (default: the working directory)
    auth: {enabled: true, sha256: {admin: [<hex>], read: [...], write: [...]}}   # set by `aigq serve up`

``auth`` (:mod:`serve_app.auth`) carries SHA-256 digests of the accepted bearer tokens, never a token; without
it the replica reads ``serve.auth``'s environment variables and token files itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from aigq.config import AIGQConfig, load_config
from serve_app.auth import AuthPolicy, policy_from_config
from serve_app.records import Records
from serve_app.store import Store, store_from_config


@dataclass
class AppContext:
    cfg: AIGQConfig
    root: Path
    store: Store
    records: Records
    auth: AuthPolicy = field(default_factory=AuthPolicy)  # what the app's ingress accepts (default: nothing)

    def path(self, p: str | Path) -> Path:
        p = Path(p).expanduser()
        return p if p.is_absolute() else self.root / p

    @cached_property
    def related(self):
        """The prompts' related queries (``samples.related_queries`` > 0: ``aigq.data.related.RelatedIndex`` of the
        samples folder the policy was trained on; else None)."""
        from aigq.data.related import related_index

        return related_index(self.cfg.samples, self.path(self.cfg.samples_dir()))

    def policy_spec(self, think: bool = False) -> str:
        sc = self.cfg.serve
        spec = (sc.think_policy or sc.policy) if think else sc.policy
        if spec is None:  # the newest trained policy: IL-GRPO's when it exists, else IL-SFT's
            spec = str(self.cfg.newest_policy(self.root))
        return spec if spec.startswith("models:/") else str(self.path(spec))

    def tracking_uri(self) -> str | None:
        t = self.cfg.tracking
        if t.uri:
            return t.uri
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        return f"sqlite:///{self.path(t.root) / 'mlflow.db'}"


def load_app_config(args: dict[str, Any] | None) -> tuple[AIGQConfig, Path]:
    args = dict(args or {})
    unknown = set(args) - {"config", "overrides", "root", "auth"}
    if unknown:
        raise ValueError(f"unknown application args {sorted(unknown)}; expected config, overrides, root, auth")
    root = Path(args.get("root") or os.getcwd()).resolve()
    config = args.get("config")
    path = None if config is None else (Path(config) if Path(config).is_absolute() else root / config)
    return load_config(path, list(args.get("overrides") or [])), root


def app_context(args: dict[str, Any] | None) -> AppContext:
    cfg, root = load_app_config(args)
    out = Path(cfg.run.output_dir)
    out = out if out.is_absolute() else root / out
    sc = cfg.serve
    if sc.sqlite_path and not Path(sc.sqlite_path).is_absolute():
        sc = sc.model_copy(update={"sqlite_path": str(root / sc.sqlite_path)})
    store = store_from_config(sc, out)
    auth_args = (args or {}).get("auth")
    auth = AuthPolicy.from_args(auth_args) if auth_args is not None else policy_from_config(sc.auth, out, root)
    return AppContext(cfg, root, store, Records.from_config(store, sc), auth)


# ---- what the three applications share: their FastAPI ingress and Serve's health check


def ingress_app(title: str, scopes: dict[tuple[str, str], str]):
    """An application's FastAPI ingress: JSON 4xx for bad requests (``models.install_error_handlers``), bearer-token
    scopes per route (:func:`serve_app.auth.install_auth`; unnamed routes are admin) and the open ``GET /healthz``
    that Serve's proxies and load balancers call."""
    from fastapi import FastAPI

    from serve_app.auth import install_auth
    from serve_app.models import install_error_handlers

    app = FastAPI(title=title)
    install_error_handlers(app)
    install_auth(app, scopes)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


class StoreHealth:
    """Serve's replica health check for a deployment that holds an :class:`AppContext` as ``self.ctx``: the serving
    store must answer (a replica that cannot reach it is restarted)."""

    ctx: AppContext

    def check_health(self) -> None:
        if not self.ctx.store.ping():
            raise RuntimeError("store unreachable")
