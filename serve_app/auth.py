"""Service authentication of the Serve apps (issue 19 item 1): a bearer token per scope, checked at each app's
ingress before anything else runs (body parsing, validation, the store).

Scopes and the endpoints that need them::

    read   POST /hintq                      the online answer
    write  POST /direct/events              behaviour events
    admin  everything else: GET /direct/cache/{user}, GET /*/status, POST /think/lookup, POST /think/generate
    –      GET /*/healthz                   open (Serve's health checks, load balancers)

The admin token grants all three scopes; a read token and a write token are optional extras for clients that need
only one. Where the tokens come from (``serve.auth``): each scope's environment variable (``AIGQ_SERVE_TOKEN``,
``AIGQ_SERVE_READ_TOKEN``, ``AIGQ_SERVE_WRITE_TOKEN``), else its file; the admin file defaults to
``<run.output_dir>/serve/auth_token``, which ``aigq serve up`` creates (random, mode 0600) when no admin token
exists. The apps never see a token in their Serve config: ``serve up`` passes SHA-256 digests in the apps' ``args``
(``auth``), so replicas on any node can check a token without a shared file or environment; a replica started
without them (Ray's own ``serve run``) reads the environment and the files itself.

A request without ``Authorization: Bearer <token>`` or with an unknown token → 401 (``WWW-Authenticate: Bearer``);
a valid token without the endpoint's scope → 403; the comparison is constant-time (``hmac.compare_digest`` on
digests). ``serve.auth.enabled=false`` turns the check off.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.responses import JSONResponse

from aigq.ray_boot import write_secret

SCOPES = ("read", "write", "admin")
GRANTS = {"admin": frozenset(SCOPES), "read": frozenset({"read"}), "write": frozenset({"write"})}
DEFAULT_TOKEN_FILE = Path("serve") / "auth_token"  # under run.output_dir


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else None."""
    if not header:
        return None
    kind, _, token = header.strip().partition(" ")
    token = token.strip()
    return token if kind.lower() == "bearer" and token else None


@dataclass(frozen=True)
class AuthPolicy:
    """What a replica accepts: SHA-256 digests of each scope's tokens (never the tokens)."""

    enabled: bool = True
    digests: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_tokens(cls, enabled: bool, tokens: Mapping[str, str | None]) -> AuthPolicy:
        unknown = set(tokens) - set(SCOPES)
        if unknown:
            raise ValueError(f"unknown token scopes {sorted(unknown)}; expected {SCOPES}")
        return cls(enabled, {s: (digest(t),) for s, t in tokens.items() if t})

    def to_args(self) -> dict[str, Any]:
        """The form the apps' Serve ``args`` carry (``args.auth``): digests only."""
        return {"enabled": self.enabled, "sha256": {s: list(d) for s, d in self.digests.items()}}

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> AuthPolicy:
        unknown = set(args) - {"enabled", "sha256"}
        if unknown:
            raise ValueError(f"unknown auth args {sorted(unknown)}; expected enabled, sha256")
        sha = dict(args.get("sha256") or {})
        bad = set(sha) - set(SCOPES)
        if bad:
            raise ValueError(f"unknown token scopes {sorted(bad)} in auth args; expected {SCOPES}")
        return cls(bool(args.get("enabled", True)), {s: tuple(str(x) for x in v) for s, v in sha.items() if v})

    @property
    def has_tokens(self) -> bool:
        return any(self.digests.values())

    def granted(self, token: str) -> frozenset[str]:
        """Scopes ``token`` grants; every stored digest is compared (constant time each, no early exit)."""
        d, out = digest(token), set()
        for scope, ds in self.digests.items():
            for x in ds:
                if hmac.compare_digest(d, x):
                    out |= GRANTS[scope]
        return frozenset(out)

    def check(self, authorization: str | None, need: str | None) -> tuple[int, str] | None:
        """None when a request with this ``Authorization`` header may use an endpoint needing scope ``need``
        (None = open), else (status, message)."""
        if not self.enabled or need is None:
            return None
        token = bearer(authorization)
        if token is None:
            return 401, "authentication required: send `Authorization: Bearer <token>`"
        if not self.has_tokens:
            return 401, "authentication is on but this server has no token configured (see serve.auth)"
        scopes = self.granted(token)
        if not scopes:
            return 401, "invalid token"
        if need not in scopes:
            return 403, f"this token does not grant the {need} scope"
        return None


# ---------------------------------------------------------------- where tokens come from


def _abs(p: str | Path, root: Path) -> Path:
    p = Path(p).expanduser()
    return p if p.is_absolute() else root / p


def token_sources(auth_cfg, out_dir: Path, root: Path | None = None) -> dict[str, tuple[str, Path | None]]:
    """scope → (environment variable, token file or None) of a ``serve.auth`` section; ``out_dir`` = the run's
    output folder (absolute), ``root`` resolves relative token files (default: the working directory)."""
    root = Path(root or Path.cwd())
    admin = _abs(auth_cfg.token_file, root) if auth_cfg.token_file else Path(out_dir) / DEFAULT_TOKEN_FILE
    return {"admin": (auth_cfg.token_env, admin),
            "read": (auth_cfg.read_token_env, _abs(auth_cfg.read_token_file, root) if auth_cfg.read_token_file else None),
            "write": (auth_cfg.write_token_env,
                      _abs(auth_cfg.write_token_file, root) if auth_cfg.write_token_file else None)}


def read_token_file(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line or None


def resolve_tokens(auth_cfg, out_dir: Path, root: Path | None = None,
                   environ: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """scope → token (the environment variable wins over the file) or None."""
    env = os.environ if environ is None else environ
    out = {}
    for scope, (var, path) in token_sources(auth_cfg, out_dir, root).items():
        out[scope] = (env.get(var) or "").strip() or read_token_file(path)
    return out


def policy_from_config(auth_cfg, out_dir: Path, root: Path | None = None,
                       environ: Mapping[str, str] | None = None) -> AuthPolicy:
    return AuthPolicy.from_tokens(auth_cfg.enabled, resolve_tokens(auth_cfg, out_dir, root, environ)
                                  if auth_cfg.enabled else {})


@dataclass(frozen=True)
class ServeAuth:
    """What ``aigq serve up`` (and the demo, the daily loop, the benchmark) sets up: the apps' policy and where the
    admin token is (never the token itself: ``where`` is safe to print and log)."""

    policy: AuthPolicy
    where: str  # "$AIGQ_SERVE_TOKEN", "<path> (created now, mode 0600)", "off (serve.auth.enabled=false)"
    created: Path | None = None


def setup_auth(auth_cfg, out_dir: Path, root: Path | None = None, create: bool = True) -> ServeAuth:
    """Resolve the tokens of ``serve.auth``; with ``create`` and no admin token, generate one into the admin token
    file (0600). The caller passes ``.policy.to_args()`` to the apps (:func:`serve_app.deploy.set_auth`)."""
    if not auth_cfg.enabled:
        return ServeAuth(AuthPolicy(False), "off (serve.auth.enabled=false): every endpoint is open")
    sources = token_sources(auth_cfg, out_dir, root)
    var, path = sources["admin"]
    created = None
    if os.environ.get(var, "").strip():
        where = f"${var}"
    elif read_token_file(path) is not None:
        where = str(path)
    elif create:
        write_secret(path, secrets.token_urlsafe(32))
        created, where = path, f"{path} (created now, mode 0600)"
    else:
        where = f"none (set ${var} or create {path})"
    return ServeAuth(policy_from_config(auth_cfg, out_dir, root), where, created)


def client_headers(auth_cfg, out_dir: Path, scope: str = "admin", root: Path | None = None) -> dict[str, str]:
    """Headers for a client of the apps: the scope's own token, else the admin token; {} when auth is off."""
    if not auth_cfg.enabled:
        return {}
    tokens = resolve_tokens(auth_cfg, out_dir, root)
    token = tokens.get(scope) or tokens["admin"]
    if not token:
        var, path = token_sources(auth_cfg, out_dir, root)["admin"]
        raise RuntimeError(f"serve.auth is on but no token for the {scope} scope: set ${var} or create {path} "
                           "(`aigq serve up` creates it)")
    return {"Authorization": f"Bearer {token}"}


# ---------------------------------------------------------------- the ASGI check


def _default_policy() -> AuthPolicy:
    from ray import serve

    return serve.get_replica_context().servable_object.ctx.auth


class BearerAuth:
    """ASGI middleware: each request's scope from ``scope_of(method, path inside the app)`` (None = open); 401 / 403
    with a JSON error before the app sees the request. ``policy()`` gives the replica's :class:`AuthPolicy`
    (default: the deployment instance's ``ctx.auth``); a replica without one answers 503, never serves."""

    def __init__(self, app, scope_of: Callable[[str, str], str | None],
                 policy: Callable[[], AuthPolicy] = _default_policy):
        self.app, self.scope_of, self.policy = app, scope_of, policy

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, root = scope["path"], scope.get("root_path", "")
        rel = path[len(root):] if root and path.startswith(root) else path
        rel = "/" + rel.strip("/")
        need = self.scope_of(scope["method"], rel)
        if need is not None:
            try:
                policy = self.policy()
            except Exception:  # noqa: BLE001 — no policy: refuse rather than serve unauthenticated
                policy = None
            header = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"authorization"), None)
            denied = (503, "authentication is not configured on this replica") if policy is None else \
                policy.check(header, need)
            if denied is not None:
                status, msg = denied
                headers = {"WWW-Authenticate": 'Bearer realm="aigq"'} if status == 401 else None
                await JSONResponse({"error": msg}, status_code=status, headers=headers)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def route_scopes(routes: Mapping[tuple[str, str], str | None], default: str = "admin") -> Callable[[str, str], str | None]:
    """``scope_of`` for :class:`BearerAuth` from {(method, path): scope}; any other request needs ``default``.
    ``/healthz`` is always open."""

    def scope_of(method: str, path: str) -> str | None:
        if path == "/healthz":
            return None
        return routes.get((method.upper(), path), default)

    return scope_of


def install_auth(app, routes: Mapping[tuple[str, str], str | None],
                 policy: Callable[[], AuthPolicy] | None = None) -> None:
    """Put :class:`BearerAuth` in front of a FastAPI app (outermost: before routing, body reads, validation)."""
    app.add_middleware(BearerAuth, scope_of=route_scopes(routes), **({"policy": policy} if policy else {}))
