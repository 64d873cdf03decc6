"""The serving stages: the daily Think index (``aigq think-index``), ``aigq serve up`` (join or start Ray, deploy
configs/serve.yaml with the run's policy and bearer-token digests), and the serving context the apps build.

``serve up`` joins ``--address`` / $RAY_ADDRESS / the machine's running Ray head (its ``ray_current_cluster`` file,
when a GCS answers there), or starts a head (``ray start --head --block``, Ray's token authentication on, recorded
in ``<run.output_dir>/serve/ray_head.json``; ``aigq serve down --stop-head`` stops exactly it) so the applications
outlive the command (``aigq.ray_boot.ensure_ray(cfg, "serve")``), then deploys ``configs/serve.yaml`` with
bearer-token authentication (``serve.auth``, :mod:`serve_app.auth`): the admin token comes from $AIGQ_SERVE_TOKEN
or its file, created (0600) when missing; ``serve up`` says where it is, never the token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aigq.ray_boot import ensure_ray
from aigq.say import Say, to_stderr


def serve_auth(cfg, create: bool = True):
    """The apps' bearer-token policy from ``serve.auth`` (``serve_app.auth.setup_auth``): with auth on and no
    admin token, one is created in ``<run.output_dir>/serve/auth_token`` (0600)."""
    from serve_app.auth import setup_auth

    return setup_auth(cfg.serve.auth, Path(cfg.run.output_dir).resolve(), Path.cwd(), create=create)


def up_stage(cfg, serve_yaml: Path, config: Path | None, overrides: list[str] | None, address: str | None = None,
             apps: list[str] | None = None, timeout_s: float = 600, start: bool = True,
             say: Say | None = None) -> dict[str, Any]:
    """Join (or, with ``start``, start) the Ray cluster, deploy the Serve config with the run's policy and bearer-token
    digests, and wait until every application runs; returns their status and where the admin token is."""
    from serve_app import deploy as D

    ensure_ray(cfg, "serve", address=address, start_head=start, say=say)
    sc = D.load_serve_config(serve_yaml, root=Path.cwd(), config=str(config) if config else None,
                             overrides=overrides, host=cfg.serve.host, port=cfg.serve.port, apps=apps)
    # serve.policy, else the run's newest trained policy (IL-GRPO's, else IL-SFT's) — never the serve file's example
    ctx = ctx_for(cfg)
    D.set_policy(sc, ctx.policy_spec(), ctx.policy_spec(think=True))
    auth = serve_auth(cfg)
    D.set_auth(sc, auth.policy.to_args())  # digests only: no token in the Serve config
    D.deploy(sc)
    return {**D.wait_running([a["name"] for a in sc["applications"]], timeout_s=timeout_s),
            "auth token (admin)": auth.where}


def think_index_stage(cfg, tracker, day: int, world: Path | None = None, policy: str | None = None,
                      sync_users: bool = True, allow_missing_policy: bool = False,
                      say: Say | None = None) -> dict[str, Any]:
    """The daily AIGQ-Think job: day T's triggers through the Think policy (Ray workers) into the Eq. 19 index of
    the serving store, logged to MLflow."""
    from aigq.rewards.ctr_train import model_dir
    from serve_app.hintq import latest_ctr_model
    from serve_app.policy import resolve_policy
    from serve_app.think_index import run_think_index

    ctx = ctx_for(cfg)
    try:
        folder, _ = resolve_policy(policy or ctx.policy_spec(think=True), ctx.tracking_uri())
    except FileNotFoundError:
        if not allow_missing_policy:
            raise
        folder = None
    ctr = model_dir(cfg.ctr_root(), day)
    ctr = ctr if (ctr / "model.json").is_file() else latest_ctr_model(Path(cfg.ctr_root()))
    with tracker.run("think-index", cfg, tags={"aigq.day": str(day)}):
        out = run_think_index(cfg, day, ctx.records, folder, world, ctr, sync_users, say=say or to_stderr)
        tracker.metrics({f"think_index.{k}": v for k, v in out.items() if isinstance(v, int | float)})
    return out


def ctx_for(cfg):
    """The serving context (store, records, policy spec) the apps build from the same config."""
    from serve_app.common import AppContext
    from serve_app.records import Records
    from serve_app.store import store_from_config

    store = store_from_config(cfg.serve, cfg.run.output_dir)
    return AppContext(cfg, Path.cwd(), store, Records.from_config(store, cfg.serve))


def world_users(cfg, n: int) -> list[int]:
    """The world's ``n`` lowest user ids (an imported log's ids need not start at 1)."""
    import polars as pl

    from aigq.data.schema import table_files

    ev = pl.scan_parquet(table_files(cfg.world_dir(), "events")).select(pl.col("user_id").unique().sort().head(n))
    return ev.collect()["user_id"].to_list()


def ask_hintq(cfg, users: int = 3, signal: str | None = "round dining table") -> list[tuple[int, int, dict[str, Any]]]:
    """What the demo shows: one search event for the first known user (when a policy exists, so the Direct cache
    fills; waits up to 60 s for it), then HintQ's answer for ``users`` known users and one unknown user, through the
    running Serve apps with an admin token: ``[(user, HTTP status, body)]``."""
    import time

    import requests

    from serve_app.auth import client_headers

    base = f"http://{cfg.serve.host}:{cfg.serve.port}"
    headers = client_headers(cfg.serve.auth, Path(cfg.run.output_dir).resolve(), "admin", Path.cwd())
    has_policy = any((d / "policy" / "config.json").is_file() for d in (cfg.sft_dir(), cfg.grpo_dir()))
    rec = ctx_for(cfg).records
    known = [u for u in world_users(cfg, 200) if rec.get_behaviours(u)][:users]
    if known and has_policy and signal:
        requests.post(f"{base}/direct/events", json={"events": [
            {"user_id": known[0], "type": "search", "content": signal}]}, headers=headers, timeout=30)
        deadline = time.time() + 60
        while time.time() < deadline and not rec.get_direct(known[0]):
            time.sleep(0.5)
    answers = []
    for u in [*known, 10**9]:
        r = requests.post(f"{base}/hintq", json={"user_id": u}, headers=headers, timeout=30)
        try:
            body = r.json()
        except ValueError:  # not JSON (a proxy error page): shown as the status and the start of the text
            body = {"error": r.text[:200]}
        answers.append((u, r.status_code, body))
    return answers
