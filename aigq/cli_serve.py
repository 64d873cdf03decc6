"""``aigq serve up|down|status|rollout`` and ``aigq think-index --day T`` (registered on the main app by cli.py).

``serve up`` joins ``--address`` / $RAY_ADDRESS / the machine's running Ray head (its ``ray_current_cluster`` file,
when a GCS answers there), or starts a head (``ray start --head --block``, Ray's token authentication on, recorded
in ``<run.output_dir>/serve/ray_head.json``; ``aigq serve down --stop-head`` stops exactly it) so the applications
outlive the command, then deploys ``configs/serve.yaml`` with bearer-token authentication (``serve.auth``,
:mod:`aigq.serve_app.auth`): the admin token comes from $AIGQ_SERVE_TOKEN or its file, created (0600) when missing;
``serve up`` prints where it is, never the token.
"""


import json
import os
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
serve_cli = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="Ray Serve: the direct, think and hintq applications from one config.")
ServeYaml = Annotated[Path, typer.Option("--serve-config", help="Multi-application Serve config.")]
Address = Annotated[str | None, typer.Option(help="Ray cluster address (default: $RAY_ADDRESS or the machine's "
                                                  "running head).")]


def head_record(cfg) -> Path:
    """Where ``serve up`` records the Ray head it started."""
    return Path(cfg.run.output_dir).resolve() / "serve" / "ray_head.json"


def connect(address: str | None, start: bool = False, record: Path | None = None) -> None:
    import ray

    from aigq import ray_boot as RB

    if ray.is_initialized():
        return
    say = lambda m: console.print(m, markup=False, highlight=False)  # noqa: E731
    address = address or os.environ.get("RAY_ADDRESS") or RB.live_local_address(say=say)
    kw: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    if address:
        RB.prepare_ray_auth(start=False)
        ray.init(address=address, **kw)
        return
    if not start:
        console.print("[red]no running Ray cluster[/red] (start one with `aigq serve up` or pass --address)")
        raise typer.Exit(1)
    if record is None:
        raise ValueError("connect(start=True) needs the head record path")
    console.print("starting a Ray head (`ray start --head --block`, token authentication on)")
    rec = RB.start_serve_head(record, os.cpu_count() or 1, say=say)
    console.print(f"Ray head at {rec['address']} (pid {rec['pid']}, recorded in {record}); "
                  "`aigq serve down --stop-head` stops it", markup=False, highlight=False)
    ray.init(address=rec["address"], **kw)


def serve_auth(cfg, create: bool = True):
    """The apps' bearer-token policy from ``serve.auth`` (``aigq.serve_app.auth.setup_auth``): with auth on and no
    admin token, one is created in ``<run.output_dir>/serve/auth_token`` (0600)."""
    from aigq.serve_app.auth import setup_auth

    return setup_auth(cfg.serve.auth, Path(cfg.run.output_dir).resolve(), Path.cwd(), create=create)


def up_stage(cfg, serve_yaml: Path, config: Path | None, overrides: list[str] | None, address: str | None = None,
             apps: list[str] | None = None, timeout_s: float = 600, start: bool = True) -> dict[str, Any]:
    from aigq.serve_app import deploy as D

    connect(address, start=start, record=head_record(cfg))
    sc = D.load_serve_config(serve_yaml, root=Path.cwd(), config=str(config) if config else None,
                             overrides=overrides, host=cfg.serve.host, port=cfg.serve.port, apps=apps)
    # serve.policy, else the run's newest trained policy (IL-GRPO's, else IL-SFT's) — never the serve file's example
    ctx = _ctx_for(cfg)
    D.set_policy(sc, ctx.policy_spec(), ctx.policy_spec(think=True))
    auth = serve_auth(cfg)
    D.set_auth(sc, auth.policy.to_args())  # digests only: no token in the Serve config
    D.deploy(sc)
    return {**D.wait_running([a["name"] for a in sc["applications"]], timeout_s=timeout_s),
            "auth token (admin)": auth.where}


def _fail(message: str) -> NoReturn:
    """One line (never wrapped, never read as markup): ``error: <message>``, then exit 1."""
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True, highlight=False)
    raise typer.Exit(1)


def _check_registry(D, spec: str, sc: dict[str, Any]) -> None:
    """Before a rollout to ``spec`` (models:/…): the registry the deployed apps use must hold it (exit 1 if it
    says it does not); a registry this machine cannot ask only gets a warning."""
    uri = D.deployed_tracking_uri(sc)
    if uri is None:
        warning = f"could not check {spec}: the deployed apps' AIGQ config is not readable here"
    else:
        try:
            warning = D.check_registry(spec, uri)
        except D.RolloutError as exc:
            _fail(str(exc))
    if warning:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", soft_wrap=True, highlight=False)


def _deployed_config() -> dict[str, Any]:
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    apps = [a["deployed_app_config"] for a in details.get("applications", {}).values() if a.get("deployed_app_config")]
    if not apps:
        console.print("[red]no applications deployed[/red] (`aigq serve up` first)")
        raise typer.Exit(1)
    return {"applications": apps, "http_options": {k: v for k, v in (details.get("http_options") or {}).items()
                                                   if k in ("host", "port", "request_timeout_s")}}


def register(app: typer.Typer, config_opt: Any, overrides_arg: Any, load: Any, table: Any, tracker: Any) -> None:
    @serve_cli.command("up")
    def up(serve_config: ServeYaml = Path("configs/serve.yaml"), config: config_opt = Path("configs/tiny_cpu.yaml"),
           address: Address = None,
           apps: Annotated[list[str] | None, typer.Option("--app", help="Deploy only these applications.")] = None,
           timeout: Annotated[float, typer.Option(help="Seconds to wait for RUNNING.")] = 600,
           overrides: overrides_arg = None) -> None:
        """Deploy direct, think and hintq (configs/serve.yaml) and wait until they run."""
        cfg = load(config, overrides)
        try:
            st = up_stage(cfg, serve_config, config, overrides, address, apps, timeout)
        except (RuntimeError, TimeoutError, ValueError, FileNotFoundError) as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from None
        base = f"http://{cfg.serve.host}:{cfg.serve.port}"
        console.print(table("serve up", {**st, "hintq endpoint": f"POST {base}/hintq (read)",
                                         "events endpoint": f"POST {base}/direct/events (write)",
                                         "think endpoint": f"POST {base}/think/lookup (admin)"}))
        if cfg.serve.auth.enabled:
            console.print('every call but /healthz needs `-H "Authorization: Bearer $TOKEN"` (the token is in the '
                          "file above, or $" + cfg.serve.auth.token_env + ")", markup=False, highlight=False)

    @serve_cli.command("status")
    def status(address: Address = None) -> None:
        """Applications, deployments and replicas on the cluster."""
        from aigq.serve_app import deploy as D

        connect(address)
        console.print_json(json.dumps(D.describe()))

    @serve_cli.command("down")
    def down(address: Address = None, config: config_opt = Path("configs/tiny_cpu.yaml"),
             stop_head: Annotated[bool, typer.Option(
                 "--stop-head", help="Also stop the Ray head that `aigq serve up` started for this run "
                                     "(<run.output_dir>/serve/ray_head.json); no other Ray.")] = False,
             overrides: overrides_arg = None) -> None:
        """Delete every Serve application and stop Serve (the Ray cluster keeps running unless --stop-head)."""
        import ray
        from ray import serve

        from aigq import ray_boot as RB

        cfg = load(config, overrides)
        record = head_record(cfg)
        rec = RB.read_head_record(record)
        if stop_head and rec is None:
            console.print(f"[red]no Ray head recorded[/red] at {record}: `aigq serve up` did not start one for "
                          "this run (a head started otherwise is not ours to stop)")
            raise typer.Exit(1)
        try:
            connect(address)
            serve.shutdown()
            console.print("serve stopped")
        except typer.Exit:
            if not (stop_head and rec):
                raise
        if not stop_head:
            if rec:
                console.print(f"the Ray head that `aigq serve up` started (pid {rec['pid']}, {rec['address']}) keeps "
                              "running: `aigq serve down --stop-head` stops it", markup=False, highlight=False)
            return
        ray.shutdown()
        try:
            console.print(RB.stop_serve_head(record), markup=False, highlight=False)
        except RuntimeError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from None

    @serve_cli.command("rollout")
    def rollout(policy: Annotated[str, typer.Option(help="Policy folder or models:/<name>/<version>.")],
                think_policy: Annotated[str | None, typer.Option(help="Think policy (default: --policy).")] = None,
                address: Address = None,
                timeout: Annotated[float, typer.Option(help="Seconds to wait for RUNNING.")] = 300) -> None:
        """Hot policy rollout: reconfigure the Direct generator and the Think app in place (no restart).

        First checks: a folder needs config.json and a tokenizer file; a models:/ URI, its form and version.
        A bad policy exits 1 and nothing is deployed.
        One rollout at a time (lock <run.output_dir>/serve/rollout.lock): a second one exits 1 at once."""
        from aigq.serve_app import deploy as D

        try:
            pol = D.check_policy(policy)
            tp = D.check_policy(think_policy) if think_policy else None
        except D.RolloutError as exc:
            _fail(str(exc))
        connect(address)
        sc = _deployed_config()
        for spec in dict.fromkeys(s for s in (pol, tp) if s and s.startswith("models:")):
            _check_registry(D, spec, sc)
        try:
            with D.rollout_lock(D.rollout_lock_path(sc), policy=pol):
                sc = _deployed_config()  # as it is now, under the lock: no other rollout changes it meanwhile
                D.set_policy(sc, pol, tp)
                D.deploy(sc)
                st = D.wait_running([a["name"] for a in sc["applications"]], timeout_s=timeout)
        except typer.Exit:
            raise
        except (RuntimeError, TimeoutError) as exc:  # wait_running: deployed, but not RUNNING in time or failed
            _fail(f"rollout of {pol}: {exc} (`aigq serve status` shows the applications)")
        except (D.RolloutError, OSError, ValueError) as exc:  # busy, lock file not writable, config refused
            _fail(str(exc))
        console.print(table("rollout", st))

    app.add_typer(serve_cli, name="serve")

    @app.command("think-index")
    def think_index(day: Annotated[int, typer.Option("--day", "-d", help="Build the index from day T's triggers.")],
                    config: config_opt = None,
                    world: Annotated[Path | None, typer.Option(help="World folder.")] = None,
                    policy: Annotated[str | None, typer.Option(help="Think policy (default: serve.think_policy "
                                                                    "or serve.policy or the IL-SFT policy).")] = None,
                    sync_users: Annotated[bool, typer.Option(help="Also load active users' profiles and recent "
                                                                  "behaviours into the store.")] = True,
                    overrides: overrides_arg = None) -> None:
        """Daily AIGQ-Think job: day T's triggers → Think policy (Ray workers) → Eq. 19 index in the store."""
        cfg = load(config, overrides)
        try:
            out = think_index_stage(cfg, tracker(cfg), day, world, policy, sync_users)
        except (ValueError, FileNotFoundError) as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from None
        console.print(table(f"think index day {day} → {out['version']}", out))


def think_index_stage(cfg, tracker, day: int, world: Path | None = None, policy: str | None = None,
                      sync_users: bool = True, allow_missing_policy: bool = False) -> dict[str, Any]:
    from aigq.rewards.ctr_train import model_dir
    from aigq.serve_app.hintq import latest_ctr_model
    from aigq.serve_app.policy import resolve_policy
    from aigq.serve_app.think_index import run_think_index

    ctx = _ctx_for(cfg)
    try:
        folder, _ = resolve_policy(policy or ctx.policy_spec(think=True), ctx.tracking_uri())
    except FileNotFoundError:
        if not allow_missing_policy:
            raise
        folder = None
    ctr = model_dir(cfg.ctr_root(), day)
    ctr = ctr if (ctr / "model.json").is_file() else latest_ctr_model(Path(cfg.ctr_root()))
    with tracker.run("think-index", cfg, tags={"aigq.day": str(day)}):
        with console.status(f"Think over day {day}'s triggers"):
            out = run_think_index(cfg, day, ctx.records, folder, world, ctr, sync_users,
                                  say=lambda m: console.print(f"  {m}"))
        tracker.metrics({f"think_index.{k}": v for k, v in out.items() if isinstance(v, int | float)})
    return out


def _ctx_for(cfg):
    from aigq.serve_app.common import AppContext
    from aigq.serve_app.records import Records
    from aigq.serve_app.store import store_from_config

    store = store_from_config(cfg.serve, cfg.run.output_dir)
    return AppContext(cfg, Path.cwd(), store, Records.from_config(store, cfg.serve))


def _world_users(cfg, n: int) -> list[int]:
    """The world's ``n`` lowest user ids (an imported log's ids need not start at 1)."""
    import polars as pl

    from aigq.data.schema import table_files

    ev = pl.scan_parquet(table_files(cfg.world_dir(), "events")).select(pl.col("user_id").unique().sort().head(n))
    return ev.collect()["user_id"].to_list()


def demo_serve(cfg, tracker, table, users: int = 3, config: Path | None = None,
               overrides: list[str] | None = None) -> None:
    """The demo's last stage: the daily Think index for the last training day, the three applications on the local
    cluster (built from the demo's ``config`` and ``overrides``), a few behaviour events, then HintQ answers for a
    few users (and one unknown user) — printed."""
    import time

    import requests
    from rich.markup import escape  # the [source score] tags are text, not rich markup

    from aigq.data.schema import read_meta

    day = int(read_meta(cfg.world_dir())["days"]) - cfg.samples.test_days  # an imported log has its own days
    cap = min(cfg.serve.think_users_per_day or 200, 200)
    cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"think_users_per_day": cap})})
    out = think_index_stage(cfg, tracker, day, allow_missing_policy=True)
    has_policy = any((Path(cfg.run.output_dir) / stage / "policy" / "config.json").is_file() for stage in ("sft", "grpo"))
    console.print(table(f"think index day {day}", {k: out[k] for k in ("version", "active_users", "triggers",
                                                                       "entries", "popular", "users_loaded")}))
    with console.status("serve up: direct, think, hintq"):
        st = up_stage(cfg, Path("configs/serve.yaml"), config, [
            *(overrides or []), f"run.output_dir={Path(cfg.run.output_dir).resolve()}",
            f"serve.think_users_per_day={cap}"], start=False)
    base = f"http://{cfg.serve.host}:{cfg.serve.port}"
    console.print(table("serve up", st))
    from aigq.serve_app.auth import client_headers

    headers = client_headers(cfg.serve.auth, Path(cfg.run.output_dir).resolve(), "admin", Path.cwd())
    try:
        rec = _ctx_for(cfg).records
        known = [u for u in _world_users(cfg, 200) if rec.get_behaviours(u)][:users]
        if known and has_policy:
            requests.post(f"{base}/direct/events", json={"events": [
                {"user_id": known[0], "type": "search", "content": "round dining table"}]}, headers=headers,
                timeout=30)
            deadline = time.time() + 60
            while time.time() < deadline and not rec.get_direct(known[0]):
                time.sleep(0.5)
        for u in [*known, 10**9]:
            r = requests.post(f"{base}/hintq", json={"user_id": u}, headers=headers, timeout=30)
            body = r.json()
            shown = "; ".join(f"{s['query']} [{s['source']} {s['score']:.3f}]" for s in body.get("queries", []))
            console.print(f"[bold]HintQ user {u}[/bold] ({r.status_code}, ranker {body.get('ranker')}, "
                          f"fallback {body.get('fallback')}): {escape(shown)}", markup=True, highlight=False)
    finally:
        from ray import serve

        serve.shutdown()
