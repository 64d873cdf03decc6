"""``aigq serve up|down|status|rollout``, ``aigq think-index --day T``, and the demo's serving step.

The stages are in :mod:`aigq.pipeline.serving`; Ray is joined or started by the one bootstrap,
``aigq.ray_boot.ensure_ray(cfg, "serve")``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from aigq.cli.common import ConfigOpt, Overrides, WorldOpt, console, fail, load, open_tracker, say_in, table
from aigq.pipeline import serving as S
from aigq.ray_boot import NoRayClusterError, ensure_ray

serve_cli = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="Ray Serve: the direct, think and hintq applications from one config.")
ServeYaml = Annotated[Path, typer.Option("--serve-config", help="Multi-application Serve config.")]
Address = Annotated[str | None, typer.Option(help="Ray cluster address (default: $RAY_ADDRESS or the machine's "
                                                  "running head).")]
TINY = Path("configs/tiny_cpu.yaml")


def _join(cfg, address: str | None) -> None:
    try:
        ensure_ray(cfg, "serve", address=address, say=say_in(indent=""))
    except NoRayClusterError as exc:
        fail(exc)


def up(serve_config: ServeYaml = Path("configs/serve.yaml"), config: ConfigOpt = TINY, address: Address = None,
       apps: Annotated[list[str] | None, typer.Option("--app", help="Deploy only these applications.")] = None,
       timeout: Annotated[float, typer.Option(help="Seconds to wait for RUNNING.")] = 600,
       overrides: Overrides = None) -> None:
    """Deploy direct, think and hintq (configs/serve.yaml) and wait until they run."""
    cfg = load(config, overrides)
    try:
        st = S.up_stage(cfg, serve_config, config, overrides, address, apps, timeout, say=say_in(indent=""))
    except (RuntimeError, TimeoutError, ValueError, FileNotFoundError) as exc:
        fail(exc)
    base = f"http://{cfg.serve.host}:{cfg.serve.port}"
    console.print(table("serve up", {**st, "hintq endpoint": f"POST {base}/hintq (read)",
                                     "events endpoint": f"POST {base}/direct/events (write)",
                                     "think endpoint": f"POST {base}/think/lookup (admin)"}))
    if cfg.serve.auth.enabled:
        console.print('every call but /healthz needs `-H "Authorization: Bearer $TOKEN"` (the token is in the '
                      "file above, or $" + cfg.serve.auth.token_env + ")", markup=False, highlight=False)


def status(address: Address = None) -> None:
    """Applications, deployments and replicas on the cluster."""
    from serve_app import deploy as D

    _join(None, address)
    console.print_json(json.dumps(D.describe()))


def down(address: Address = None, config: ConfigOpt = TINY,
         stop_head: Annotated[bool, typer.Option(
             "--stop-head", help="Also stop the Ray head that `aigq serve up` started for this run "
                                 "(<run.output_dir>/serve/ray_head.json); no other Ray.")] = False,
         overrides: Overrides = None) -> None:
    """Delete every Serve application and stop Serve (the Ray cluster keeps running unless --stop-head)."""
    from aigq import ray_boot as RB
    from serve_app import deploy as D

    cfg = load(config, overrides)
    record = RB.head_record(cfg)
    rec = RB.read_head_record(record)
    if stop_head and rec is None:
        fail(f"no Ray head recorded at {record}: `aigq serve up` did not start one for this run (a head started "
             "otherwise is not ours to stop)")
    try:
        ensure_ray(cfg, "serve", address=address, say=say_in(indent=""))
        D.shutdown()
        console.print("serve stopped")
    except NoRayClusterError as exc:
        if not (stop_head and rec):
            fail(exc)
    if not stop_head:
        if rec:
            console.print(f"the Ray head that `aigq serve up` started (pid {rec['pid']}, {rec['address']}) keeps "
                          "running: `aigq serve down --stop-head` stops it", markup=False, highlight=False)
        return
    D.disconnect()
    try:
        console.print(RB.stop_serve_head(record), markup=False, highlight=False)
    except RuntimeError as exc:
        fail(exc)


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
            fail(exc)
    if warning:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", soft_wrap=True, highlight=False)


def rollout(policy: Annotated[str, typer.Option(help="Policy folder or models:/<name>/<version>.")],
            think_policy: Annotated[str | None, typer.Option(help="Think policy (default: --policy).")] = None,
            address: Address = None,
            timeout: Annotated[float, typer.Option(help="Seconds to wait for RUNNING.")] = 300) -> None:
    """Hot policy rollout: reconfigure the Direct generator and the Think app in place (no restart).

    First checks: a folder needs config.json and a tokenizer file; a models:/ URI, its form and version.
    A bad policy exits 1 and nothing is deployed.
    One rollout at a time (lock <run.output_dir>/serve/rollout.lock): a second one exits 1 at once."""
    from serve_app import deploy as D

    try:
        pol = D.check_policy(policy)
        tp = D.check_policy(think_policy) if think_policy else None
    except D.RolloutError as exc:
        fail(exc)
    _join(None, address)
    try:
        sc = D.deployed_config()
    except D.RolloutError as exc:
        fail(exc)
    for spec in dict.fromkeys(s for s in (pol, tp) if s and s.startswith("models:")):
        _check_registry(D, spec, sc)
    try:
        with D.rollout_lock(D.rollout_lock_path(sc), policy=pol):
            sc = D.deployed_config()  # as it is now, under the lock: no other rollout changes it meanwhile
            D.set_policy(sc, pol, tp)
            D.deploy(sc)
            st = D.wait_running([a["name"] for a in sc["applications"]], timeout_s=timeout)
    except (RuntimeError, TimeoutError) as exc:  # wait_running: deployed, but not RUNNING in time or failed
        fail(f"rollout of {pol}: {exc} (`aigq serve status` shows the applications)")
    except (D.RolloutError, OSError, ValueError) as exc:  # busy, lock file not writable, config refused
        fail(exc)
    console.print(table("rollout", st))


def think_index(day: Annotated[int, typer.Option("--day", "-d", help="Build the index from day T's triggers.")],
                config: ConfigOpt = None, world: WorldOpt = None,
                policy: Annotated[str | None, typer.Option(help="Think policy (default: serve.think_policy "
                                                                "or serve.policy or the IL-SFT policy).")] = None,
                sync_users: Annotated[bool, typer.Option(help="Also load active users' profiles and recent "
                                                              "behaviours into the store.")] = True,
                overrides: Overrides = None) -> None:
    """Daily AIGQ-Think job: day T's triggers → Think policy (Ray workers) → Eq. 19 index in the store."""
    cfg = load(config, overrides)
    try:
        with console.status(f"Think over day {day}'s triggers"):
            out = S.think_index_stage(cfg, open_tracker(cfg), day, world, policy, sync_users, say=say_in())
    except (ValueError, FileNotFoundError) as exc:
        fail(exc)
    console.print(table(f"think index day {day} → {out['version']}", out))


def demo_serve(cfg, tracker, users: int = 3, config: Path | None = None, overrides: list[str] | None = None) -> None:
    """The demo's serving step: the daily Think index for the last training day, the three applications on the
    local cluster (built from the demo's ``config`` and ``overrides``), a behaviour event, then HintQ answers for a
    few users (and one unknown user) — printed."""
    from aigq.data.schema import read_meta
    from serve_app import deploy as D

    day = int(read_meta(cfg.world_dir())["days"]) - cfg.samples.test_days  # an imported log has its own days
    cap = min(cfg.serve.think_users_per_day or 200, 200)
    cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"think_users_per_day": cap})})
    with console.status(f"Think over day {day}'s triggers"):
        out = S.think_index_stage(cfg, tracker, day, allow_missing_policy=True, say=say_in())
    console.print(table(f"think index day {day}", {k: out[k] for k in ("version", "active_users", "triggers",
                                                                       "entries", "popular", "users_loaded")}))
    with console.status("serve up: direct, think, hintq"):
        st = S.up_stage(cfg, Path("configs/serve.yaml"), config, [
            *(overrides or []), f"run.output_dir={Path(cfg.run.output_dir).resolve()}",
            f"serve.think_users_per_day={cap}"], start=False, say=say_in(indent=""))
    console.print(table("serve up", st))
    try:
        for u, code, body in S.ask_hintq(cfg, users):
            shown = "; ".join(f"{s['query']} [{s['source']} {s['score']:.3f}]" for s in body.get("queries", []))
            detail = f"ranker {body.get('ranker')}, fallback {body.get('fallback')}" if code == 200 else \
                f"error {body.get('error') or body.get('detail')}"
            console.print(f"[bold]HintQ user {u}[/bold] ({code}, {escape(str(detail))}): {escape(shown)}", markup=True,
                          highlight=False)
    finally:
        D.shutdown()


def register(app: typer.Typer) -> None:
    for name, fn in (("up", up), ("status", status), ("down", down), ("rollout", rollout)):
        serve_cli.command(name)(fn)
    app.add_typer(serve_cli, name="serve")
    app.command("think-index")(think_index)
