"""HintQ under load on 127.0.0.1: p50/p99 latency and sustained QPS through Ray Serve (the ``hintq`` app of
configs/serve.yaml, one replica) beside a bare FastAPI/uvicorn app (one worker process) doing the same store reads
and CTR ranking (``HintQCore``), measured in the same run; then 1,000 malformed requests → count of 4xx / 5xx per endpoint.

    .venv/bin/python benchmarks/serve_load.py [--users 500] [--concurrency 8] [--seconds 15] [--rate 100 ...]
        [--rounds 1] [--profile] [--levers [NAME ...]] [--code NAME=DIR ...] [--ray-env KEY=VALUE ...]
        [--json PATH] [--no-append]

Loads per server, each for ``seconds`` after a ``warmup``:

* closed loop (throughput): ``concurrency`` clients, each sending its next request when the last one returns;
* open loop at each ``--rate`` in requests/s (latency at a fixed load; ``--rate`` alone = none): requests leave on a
  fixed schedule whatever the answers do, and each one's latency counts from its scheduled time, so a server that
  falls behind shows it in p99 (no coordinated omission).

Each load reports QPS, p50/p99 and the server's CPU ms per request (psutil: the bare server's process; for Serve every
Ray process, its background work included). ``--rounds N`` alternates the servers N times and pools the rounds (a
busy machine's load drifts; alternating spreads it over every server); the load average is printed with each round.
Both servers check the same bearer token (``serve_app.auth``, a random read token made for the run); every request
carries it, over keep-alive connections (``--no-keepalive``: a new connection per request). The store (SQLite, WAL)
holds ``users`` users with behaviours, a Direct cache and a Think index; the CTR model has the default architecture
with random weights (ranking cost, not quality).

``--profile`` adds where a request's CPU goes: a no-op twin of each server (the same FastAPI ingress, bearer auth
and error handlers, a handler that returns at once) under the same loads, so real − no-op is the HintQ work and
Serve no-op − bare no-op is Serve's own HTTP path; the CPU of every process with no request at all; CPU ms per
request of every process during one more closed-loop run on Serve's HintQ, with py-spy (``--gil``) splitting the
HTTP proxy's and the replica's Python time by what the code does, and their CPU per thread; and the replica's phases
timed in process (``HintQCore``: store reads, recall, CTR ranking at batch 1 and 8, response validation and JSON).

``--levers`` compares Serve settings side by side in one Ray: each lever of ``LEVERS`` (or the named ones) is the
shipped HintQ deployment with one change, deployed as its own application (one replica, route ``/hintq_<name>``),
and the rounds alternate over all of them (no RESULTS.md row). ``--code NAME=DIR`` adds the HintQ of ``DIR``, a
folder holding another version's ``serve_app/`` (e.g. ``git archive HEAD serve_app | tar -x -C DIR``), as the
application ``NAME``: a code change against the code before it, in the same run. ``--ray-env`` sets environment
variables for the whole local Ray (the HTTP proxy's settings, e.g. ``RAY_SERVE_PROXY_USE_GRPC=1``), for a run beside
one without.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # serve_common / serve_profile, also when loaded by path
from serve_common import (  # noqa: E402
    ADMIN_TOKEN,
    REPO,
    TOKEN,
    append_rows,
    free_port,
    load,
    malformed,
    malformed_report,
    open_loop,
    populate,
    stats,
    wait_http,
)
from serve_profile import CPUMeter, phase_table, print_profile, profile_pass, server_cpu  # noqa: E402

BARE = '''
import sys, uvicorn
from fastapi import FastAPI, Request
sys.path.insert(0, {repo!r})
from serve_app.common import app_context
from serve_app.hintq import HintQCore, load_scorer
from serve_app.models import HintQRequest, install_error_handlers, parse_body
from serve_app.auth import AuthPolicy, install_auth
import torch; torch.set_num_threads(1)
ctx = app_context({{"config": {cfg!r}, "root": {repo!r}}})
core = HintQCore(ctx.records, ctx.cfg, load_scorer(ctx, None)[0])
policy = AuthPolicy.from_args({auth!r})
app = FastAPI(); install_error_handlers(app)
install_auth(app, {{("POST", "/hintq"): "read", ("POST", "/noop"): "read"}}, lambda: policy)
@app.post("/hintq")
async def hintq(request: Request):
    body = await parse_body(request, HintQRequest, ctx.cfg.serve.max_body_bytes)
    return core.answer(body.user_id, body.k)
@app.post("/noop")
async def noop():
    return {{"ok": True}}
uvicorn.run(app, host="127.0.0.1", port={port}, log_level="warning")
'''


# ---------------------------------------------------------------- --levers: Serve settings side by side

# name → what changes from the shipped HintQ deployment (configs/serve.yaml): deployment fields, "env" (the
# replica's environment: runtime_env.env_vars) and "overrides" (AIGQ config overrides in the app's args)
LEVERS: dict[str, dict[str, Any]] = {
    "shipped": {},
    "access-log-off": {"logging_config": {"enable_access_log": False}},
    "user-code-on-main-loop": {"env": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}},
    "no-stderr-log": {"env": {"RAY_SERVE_LOG_TO_STDERR": "0"}},
    "max-ongoing-8": {"max_ongoing_requests": 8},
    "max-ongoing-128": {"max_ongoing_requests": 128},
    "two-replicas": {"num_replicas": 2},
    # Ray's own router backoff (25 ms, doubling, capped at 0.5 s) instead of serve.yaml's 5 ms → 20 ms
    "ray-default-router-backoff": {"request_router_config": {"initial_backoff_s": 0.025, "max_backoff_s": 0.5}},
    "lean": {"logging_config": {"enable_access_log": False}, "max_ongoing_requests": 128,
             "env": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}},
    "batch-wait-1ms": {"overrides": ["serve.batch_wait_s=0.001"]},
    "batch-wait-0": {"overrides": ["serve.batch_wait_s=0"]},  # a batch = what queued while the last one ran
    "batch-wait-10ms": {"overrides": ["serve.batch_wait_s=0.01"]},
    "no-batching": {"overrides": ["serve.batch_max_size=1", "serve.batch_wait_s=0"]},
}


def variant(base: dict[str, Any], name: str, change: dict[str, Any], extra_env: dict[str, str] | None = None,
            pythonpath: str | None = None) -> dict[str, Any]:
    """A copy of the ``hintq`` application as ``hintq_<name>`` at ``/hintq_<name>`` with ``change`` applied."""
    import copy

    app = copy.deepcopy(base)
    app.update(name=f"hintq_{name}", route_prefix=f"/hintq_{name}")
    dep = app["deployments"][0]
    change = dict(change)
    env = {**change.pop("env", {}), **(extra_env or {})}
    app["args"]["overrides"] = list(app["args"].get("overrides") or []) + list(change.pop("overrides", []))
    dep.update(copy.deepcopy(change))
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
        app["runtime_env"] = {"env_vars": {"PYTHONPATH": pythonpath}}  # the application's build task too
    if env:
        opts = dep.setdefault("ray_actor_options", {})
        rt = opts.setdefault("runtime_env", {})
        rt["env_vars"] = {**rt.get("env_vars", {}), **env}
    return app


def pin_one_replica(dep: dict[str, Any], num_cpus: float | None = None) -> None:
    dep.pop("autoscaling_config", None)
    dep["num_replicas"] = 1  # one replica vs one uvicorn worker
    if num_cpus is not None:  # Ray's logical CPUs only: several replicas side by side fit a 2-CPU local Ray
        dep.setdefault("ray_actor_options", {})["num_cpus"] = num_cpus


# ---------------------------------------------------------------- the run


def fmt_ms(x: float) -> str:
    return f"{x:7.1f}" if x == x else "      –"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--warmup", type=float, default=3)
    ap.add_argument("--rate", type=float, nargs="*", default=[100],
                    help="open-loop rates (requests/s) after the closed loop; none given = no open loop")
    ap.add_argument("--rounds", type=int, default=1, help="alternate the servers this many times, pooled")
    ap.add_argument("--profile", action="store_true", help="where a request's CPU goes (see the docstring)")
    ap.add_argument("--levers", nargs="*", metavar="NAME", help=f"compare Serve levers ({', '.join(LEVERS)}; "
                    "none named = all) side by side; no RESULTS row")
    ap.add_argument("--code", nargs="*", default=[], metavar="NAME=DIR",
                    help="also serve DIR/serve_app's HintQ as `NAME` (another version of the code, e.g. before=DIR)")
    ap.add_argument("--ray-env", nargs="*", default=[], metavar="KEY=VALUE", help="environment of the local Ray")
    ap.add_argument("--no-keepalive", action="store_true", help="a new TCP connection per request")
    ap.add_argument("--json", metavar="PATH", help="also write every figure (per process CPU included) as JSON")
    ap.add_argument("--no-append", action="store_true")
    a = ap.parse_args()
    a.rate = [r for r in a.rate if r > 0]
    if a.levers is not None:
        unknown = set(a.levers) - set(LEVERS)
        if unknown:
            ap.error(f"unknown levers {sorted(unknown)}; known: {', '.join(LEVERS)}")
        a.levers = a.levers or list(LEVERS)
    for kv in a.ray_env:
        k, _, v = kv.partition("=")
        os.environ[k] = v  # before Ray starts: its daemons and workers (proxy, replicas) inherit it
    tmp = Path(tempfile.mkdtemp(prefix="aigq-serve-bench-"))
    cfg_file = tmp / "aigq.yaml"
    cfg_file.write_text(yaml.safe_dump({"run": {"output_dir": str(tmp / "out")}, "tracking": {"enabled": False},
                                        "ctr": {"dir": str(tmp / "ctr")},
                                        "serve": {"sqlite_path": str(tmp / "store.db"), "clock": "wall"}}))
    populate(cfg_file, a.users)
    phases = phase_table(cfg_file, a.users) if a.profile else None
    serve_port, bare_port = free_port(), free_port()
    from serve_app.auth import AuthPolicy

    auth = AuthPolicy.from_tokens(True, {"read": TOKEN, "admin": ADMIN_TOKEN}).to_args()
    bare = subprocess.Popen([sys.executable, "-c", BARE.format(repo=str(REPO), cfg=str(cfg_file), port=bare_port,
                                                               auth=auth)])
    import ray
    from ray import serve

    from aigq.ray_boot import init_ray
    from serve_app import deploy as D

    print(f"load average {os.getloadavg()[0]:.2f} at the start (2-core box: above ~3 the figures are indicative)",
          flush=True)
    init_ray(None, 2, attempts=3)  # a private local Ray (or $RAY_ADDRESS's cluster), Ray's token authentication on
    res: dict[str, dict[str, Any]] = {}
    spy = idle = None
    try:
        sc = D.load_serve_config(REPO / "configs/serve.yaml", root=REPO, config=str(cfg_file), port=serve_port,
                                 apps=["hintq"])
        D.set_auth(sc, auth)
        base = sc["applications"][0]
        side_by_side = a.levers is not None or a.code or a.profile
        cpus = 0.1 if side_by_side else None
        pin_one_replica(base["deployments"][0], cpus)
        apps: list[tuple[str, dict[str, Any]]] = []
        if a.levers is not None:
            apps += [(f"serve {n}", variant(base, n.replace("-", "_"), LEVERS[n])) for n in a.levers]
        else:
            apps.append(("serve", base))
        for spec in a.code:
            name, _, folder = spec.partition("=")
            apps.append((f"serve {name}", variant(base, name.replace("-", "_"), {},
                                                  pythonpath=str(Path(folder).resolve()))))
        if a.profile:
            bench = str(Path(__file__).resolve().parent)
            noop = variant(base, "noop", {}, pythonpath=bench)
            noop.update(import_path="serve_profile:noop_build", args={"auth": auth})
            noop["deployments"][0]["name"] = "Noop"
            noop["deployments"][0].pop("user_config", None)
            apps.append(("serve no-op", noop))
        sc["applications"] = [app for _, app in apps]
        D.deploy(sc)
        D.wait_running([app["name"] for _, app in apps], timeout_s=300)
        endpoints = [(name, f"http://127.0.0.1:{serve_port}{app['route_prefix']}") for name, app in apps]
        endpoints.append(("bare", f"http://127.0.0.1:{bare_port}/hintq"))
        if a.profile:
            endpoints.append(("bare no-op", f"http://127.0.0.1:{bare_port}/noop"))
        for _, url in endpoints:
            wait_http(url)
        meter = CPUMeter(bare.pid)
        pooled = {name: {"closed": [], "codes": Counter(), "cpu": Counter(), "batch": [0, 0],
                         "open": {rate: {"lat": [], "codes": Counter(), "cpu": Counter(), "late": 0.0}
                                  for rate in a.rate}} for name, _ in endpoints}
        share = a.seconds / (a.seconds + a.warmup)  # of a phase's CPU, the measured part's (warm-up excluded)
        if a.profile:  # what the processes burn with no request at all (per second)
            meter.start()
            time.sleep(5)
            idle = {k: v / 5 for k, v in meter.stop().items()}
        for r in range(a.rounds):
            for name, url in (endpoints if r % 2 == 0 else endpoints[::-1]):
                p = pooled[name]
                b0 = batch_stats(url)
                meter.start()
                c = asyncio.run(load(url, a.users, a.concurrency, a.seconds, a.warmup, not a.no_keepalive, raw=True))
                p["cpu"].update({k: v * share for k, v in meter.stop().items()})
                if b0 and (b1 := batch_stats(url)):
                    p["batch"] = [p["batch"][0] + b1[0] - b0[0], p["batch"][1] + b1[1] - b0[1]]
                p["closed"] += c["lat"]
                p["codes"].update(c["codes"])
                line = f"round {r + 1} {name}: closed c={a.concurrency} {c['qps']:.0f} QPS p50 {c['p50']:.1f} " \
                       f"p99 {c['p99']:.1f}"
                for rate in a.rate:
                    meter.start()
                    o = asyncio.run(open_loop(url, a.users, rate, a.seconds, a.warmup, not a.no_keepalive, raw=True))
                    q = p["open"][rate]
                    q["cpu"].update({k: v * share for k, v in meter.stop().items()})
                    q["lat"] += o["lat"]
                    q["codes"].update(o["codes"])
                    q["late"] = max(q["late"], o["late_ms"])
                    line += f" | open {rate:.0f}/s p50 {o['p50']:.1f} p99 {o['p99']:.1f}"
                print(line + f" | load average {os.getloadavg()[0]:.2f}", flush=True)
        total_s = a.seconds * a.rounds
        for name, p in pooled.items():
            res[name] = stats(p["closed"], total_s, p["codes"])
            res[name]["cpu_ms"] = {k: 1000 * v / max(res[name]["n"], 1) for k, v in p["cpu"].items()}
            res[name]["batch"] = p["batch"][1] / p["batch"][0] if p["batch"][0] else None
            res[name]["open"] = {}
            for rate, q in p["open"].items():
                o = stats(q["lat"], total_s, q["codes"])
                res[name]["open"][rate] = {**o, "late_ms": q["late"],
                                           "cpu_ms": {k: 1000 * v / max(o["n"], 1) for k, v in q["cpu"].items()}}
        spy = profile_pass(a, endpoints, meter) if a.profile else None
        if a.levers is None:
            for name, url in (("serve", endpoints[0][1]), ("bare", dict(endpoints)["bare"])):
                res[name]["malformed"] = asyncio.run(malformed(url))
    finally:
        bare.terminate()
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    print(f"load average {os.getloadavg()[0]:.2f} at the end", flush=True)
    if a.json:
        import json

        Path(a.json).write_text(json.dumps({"args": vars(a), "results": res, "profile": spy, "idle": idle}, indent=1,
                                           default=str))
    report(res, a)
    if a.profile:
        print_profile(res, spy, phases, a)
        print("\nIdle (no requests for 5 s), CPU cores: " + ", ".join(
            f"{k} {v:.3f}" for k, v in sorted(idle.items(), key=lambda kv: -kv[1]) if v >= 0.001))
    if a.levers is None:
        print(malformed_report({k: res[k] for k in ("serve", "bare")}), flush=True)
        row({k: res[k] for k in ("serve", "bare")}, a)


def report(res: dict[str, dict[str, Any]], a) -> None:
    """The pooled figures per server: closed loop, then each open-loop rate; server CPU ms per request
    (:func:`server_cpu`); the mean CTR batch of the closed loop where the server tells (``/status``)."""
    print(f"\n{'server':<30} | {'load':<13} | {'QPS':>5} {'p50 ms':>7} {'p99 ms':>7} | {'CPU ms/req':>10} | "
          f"{'batch':>5} | status codes")
    for name, r in res.items():
        batch = f"{r['batch']:5.1f}" if r.get("batch") else "    –"
        print(f"{name:<30} | {f'closed c={a.concurrency}':<13} | {r['qps']:5.0f} {fmt_ms(r['p50'])} "
              f"{fmt_ms(r['p99'])} | {server_cpu(name, r):10.2f} | {batch} | {dict(r['codes'])}")
        for rate, o in r["open"].items():
            print(f"{'':<30} | {f'open {rate:.0f}/s':<13} | {o['qps']:5.0f} {fmt_ms(o['p50'])} {fmt_ms(o['p99'])} | "
                  f"{server_cpu(name, o):10.2f} |       | {dict(o['codes'])}"
                  + (f" (generator up to {o['late_ms']:.0f} ms late)" if o["late_ms"] > 20 else ""))
    sys.stdout.flush()


def batch_stats(url: str) -> tuple[int, int] | None:
    """(CTR batches, requests ranked) from a HintQ replica's ``/status`` (the admin token); None without one."""
    import requests

    try:
        r = requests.get(url + "/status", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5)
        st = r.json() if r.status_code == 200 else {}
    except (requests.RequestException, ValueError):
        return None
    return (st["batches"], st["scored_requests"]) if "batches" in st else None

def row(res: dict, a) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=REPO).stdout.strip()
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    fmt = lambda r: (f"{r['p50']:.1f} | {r['p99']:.1f} | {r['qps']:.0f} | "  # noqa: E731
                     f"{', '.join(f'{k}: {v}' for k, v in sorted(r['codes'].items()))} | "
                     f"{r['malformed']['4xx']} / {r['malformed']['5xx']}")
    lines = [f"| {day} `{commit}` | Serve (1 replica) | {fmt(res['serve'])} |",
             f"| {day} `{commit}` | bare FastAPI/uvicorn (1 worker) | {fmt(res['bare'])} |"]
    print("\n".join(lines))
    if a.no_append:
        return
    path = REPO / "benchmarks" / "RESULTS.md"
    head = "## Serving: HintQ through Ray Serve vs a bare FastAPI app"
    intro = f"""Command: `.venv/bin/python benchmarks/serve_load.py` (`make bench-serve`): {a.users} users in a SQLite (WAL) store
(20 behaviours, 3 Direct runs of 10 queries, Think index on their latest behaviours), default-size CTR model with
random weights; closed-loop load on 127.0.0.1 with {a.concurrency} concurrent clients for {a.seconds:.0f} s after a
{a.warmup:.0f} s warm-up, both servers in the same run on the same 2-core machine (the load generator shares it);
then 1,000 malformed requests (20 kinds: bad JSON, invalid UTF-8, empty, wrong types, unknown fields, oversized
body, duplicate keys, …) to each. Latency in ms.

| date / commit | server | p50 ms | p99 ms | QPS | status codes under load | malformed: 4xx / 5xx |
|---|---|---|---|---|---|---|
"""
    path.write_text(append_rows(path.read_text(), head, intro, lines))


if __name__ == "__main__":
    main()
