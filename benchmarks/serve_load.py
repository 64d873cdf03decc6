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
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MALFORMED = [b"{not json", b'{"user_id": 1', b"\xff\xfe\x00\x81", b"", b"[1,2]", b"{}", b'{"user_id": "7"}',
             b'{"user_id": -1}', b'{"user_id": 7, "k": 50}', b'{"user_id": 7, "x": 1}', b'{"user_id": 1e400}',
             b"null", b'{"user_id": ' + b"[" * 3000 + b"]" * 3000 + b"}", b'{"user_id": 1, "pad": "' + b"x" * 70_000 + b'"}',
             b'{"user_id": 7, "user_id": 8}', b'{"user_id": 7, "k": null}', b'{"user_id": 7, "k": true}',
             b'{"user_id": 9223372036854775808}', b'{"user_id": Infinity}', b'"user_id"']
STATUS_CLASSES = ("2xx", "4xx", "5xx", "other")

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


def populate(cfg_file: Path, users: int) -> None:
    from aigq.config import CTRConfig
    from aigq.rewards.ctr import CTRModel, save_model
    from serve_app.common import app_context
    from serve_app.records import Behaviour, DirectRun, trigger_key

    ctx = app_context({"config": str(cfg_file), "root": str(REPO)})
    rec, rng = ctx.records, random.Random(0)
    words = ["oak", "desk", "lamp", "rug", "sofa", "blue", "round", "mirror", "bed", "chair", "velvet", "outdoor"]
    q = lambda: " ".join(rng.sample(words, rng.randint(1, 3)))  # noqa: E731
    now = time.time()
    profiles, behs = {}, {}
    for u in range(users):
        profiles[u] = {"gender": rng.choice(["Male", "Female"]), "age": rng.randint(18, 70), "city": "Hangzhou"}
        behs[u] = [Behaviour(now - rng.random() * 86400 * 20, rng.choice(["search", "click"]), q()) for _ in range(20)]
    rec.load_users(profiles, behs)
    for u in range(users):
        for _ in range(3):
            rec.push_direct(u, DirectRun([q() for _ in range(10)], "bench", now, "search"))
    index = {trigger_key(t, c): [(q(), rng.random()) for _ in range(10)] for bs in behs.values()
             for b in bs[:3] for t, c in [(b.type, b.content)]}
    rec.write_think_index("bench", index, {"day": 0})
    rec.write_fallback([(q(), 1.0 - i / 50) for i in range(50)], {})
    cc = ctx.cfg.ctr
    save_model(CTRModel(cc.hash_buckets, cc.dim, cc.hidden, cc.history_len), CTRConfig(**cc.model_dump()),
               Path(ctx.cfg.ctr.dir) / "day-001")


TOKEN = secrets.token_urlsafe(32)  # a read token for this run: both servers accept it, every request sends it
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ADMIN_TOKEN = secrets.token_urlsafe(32)  # for the replicas' /status only (CTR batch sizes)


def stats(lat_s: list[float], seconds: float, codes: dict[int, int]) -> dict[str, Any]:
    a = np.array(lat_s or [float("nan")]) * 1000
    return {"n": len(lat_s), "qps": len(lat_s) / seconds, "p50": float(np.percentile(a, 50)),
            "p99": float(np.percentile(a, 99)), "codes": dict(codes)}


async def load(url: str, users: int, concurrency: int, seconds: float, warmup: float, keepalive: bool = True,
               raw: bool = False) -> dict:
    """Closed loop: ``concurrency`` clients for ``warmup`` + ``seconds``; latencies of the last ``seconds``.
    ``raw``: the latencies (s) themselves too (``lat``), for pooling rounds."""
    import aiohttp

    lat: list[float] = []
    codes: dict[int, int] = {}
    t_start = time.perf_counter()
    t_measure, t_end = t_start + warmup, t_start + warmup + seconds
    conn = aiohttp.TCPConnector(limit=concurrency, force_close=not keepalive)
    async with aiohttp.ClientSession(connector=conn) as s:
        async def client(i: int) -> None:
            rng = random.Random(i)
            while (t0 := time.perf_counter()) < t_end:
                async with s.post(url, json={"user_id": rng.randrange(users + users // 10)}, headers=AUTH) as r:
                    await r.read()
                    t1 = time.perf_counter()
                    if t0 >= t_measure:
                        lat.append(t1 - t0)
                        codes[r.status] = codes.get(r.status, 0) + 1

        await asyncio.gather(*(client(i) for i in range(concurrency)))
    return {**stats(lat, seconds, codes), **({"lat": lat} if raw else {})}


async def open_loop(url: str, users: int, rate: float, seconds: float, warmup: float, keepalive: bool = True,
                    raw: bool = False) -> dict:
    """Open loop: one request every 1/``rate`` s for ``warmup`` + ``seconds`` whatever the answers do; a request's
    latency counts from its scheduled time (a late start counts against the server and the generator alike:
    ``late_ms`` is the worst start delay, which says whether the generator kept its schedule)."""
    import aiohttp

    lat: list[float] = []
    codes: dict[int, int] = {}
    rng = random.Random(1)
    conn = aiohttp.TCPConnector(limit=512, force_close=not keepalive)
    late = 0.0
    async with aiohttp.ClientSession(connector=conn) as s:
        async def one(t_sched: float, user: int, measured: bool) -> None:
            try:
                async with s.post(url, json={"user_id": user}, headers=AUTH) as r:
                    await r.read()
                    status = r.status
            except aiohttp.ClientError:
                status = 0
            if measured:
                lat.append(time.perf_counter() - t_sched)
                codes[status] = codes.get(status, 0) + 1

        t0 = time.perf_counter() + 0.05
        tasks = []
        for i in range(int((warmup + seconds) * rate)):
            t_sched = t0 + i / rate
            if (d := t_sched - time.perf_counter()) > 0:
                await asyncio.sleep(d)
            late = max(late, time.perf_counter() - t_sched)
            tasks.append(asyncio.create_task(one(t_sched, rng.randrange(users + users // 10), i >= warmup * rate)))
        await asyncio.gather(*tasks)
    return {**stats(lat, seconds, codes), "late_ms": late * 1000, **({"lat": lat} if raw else {})}


def count_statuses(answers) -> dict[str, dict[str, int]]:
    """``(endpoint, HTTP status)`` pairs → ``{endpoint: {"2xx": n, "4xx": n, "5xx": n, "other": n}}``, plus
    ``"all"`` summed over the endpoints (the RESULTS.md row's 4xx / 5xx)."""
    out: dict[str, dict[str, int]] = {"all": dict.fromkeys(STATUS_CLASSES, 0)}
    for endpoint, status in answers:
        k = f"{status // 100}xx"
        k = k if k in STATUS_CLASSES else "other"
        out.setdefault(endpoint, dict.fromkeys(STATUS_CLASSES, 0))[k] += 1
        out["all"][k] += 1
    return out


async def malformed(url: str, n: int = 1000, endpoint: str = "POST /hintq") -> dict:
    """``n`` malformed bodies (``MALFORMED`` in turn) to ``url`` → :func:`count_statuses` of the answers, per
    endpoint; the top-level ``2xx`` / ``4xx`` / ``5xx`` / ``other`` are the totals."""
    import aiohttp

    answers: list[tuple[str, int]] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8)) as s:
        sem = asyncio.Semaphore(8)

        async def one(i: int) -> None:
            async with sem, s.post(url, data=MALFORMED[i % len(MALFORMED)],
                                   headers={"content-type": "application/json", **AUTH}) as r:
                await r.read()
                answers.append((endpoint, r.status))

        await asyncio.gather(*(one(i) for i in range(n)))
    counts = count_statuses(answers)
    return {**counts["all"], "per_endpoint": {k: v for k, v in counts.items() if k != "all"}}


def malformed_report(res: dict) -> str:
    """One line per server and endpoint: ``serve POST /hintq: 4xx 1000, 5xx 0, 2xx 0, other 0``."""
    return "\n".join(f"{name} {ep}: " + ", ".join(f"{k} {c[k]}" for k in ("4xx", "5xx", "2xx", "other"))
                     for name, r in res.items() for ep, c in r["malformed"]["per_endpoint"].items())


def wait_http(url: str, timeout: float = 120, headers: dict[str, str] | None = None) -> None:
    """Until ``POST url {"user_id": 1}`` answers 200 (``headers``: default this run's read token)."""
    import requests

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if requests.post(url, json={"user_id": 1}, headers=AUTH if headers is None else headers,
                             timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer")


# ---------------------------------------------------------------- --profile: where a request's CPU goes


def noop_build(args: dict[str, Any]):
    """Serve builder ``serve_load:noop_build`` (``--profile``): HintQ's no-op twin, the same FastAPI ingress as
    every app (``serve_app.common.ingress_app``: error handlers, bearer auth, ``POST /`` needing read) with a
    handler that returns at once: what a request costs Serve before any HintQ work."""
    from types import SimpleNamespace

    from ray import serve

    from serve_app.auth import AuthPolicy
    from serve_app.common import ingress_app

    app = ingress_app("HintQ no-op", {("POST", "/"): "read"})

    @serve.deployment
    @serve.ingress(app)
    class Noop:
        def __init__(self, auth: dict[str, Any]):
            self.ctx = SimpleNamespace(auth=AuthPolicy.from_args(auth))  # what BearerAuth reads on a replica

        @app.post("/")
        async def answer(self) -> dict[str, bool]:
            return {"ok": True}

    return Noop.bind(args["auth"])


def process_labels(bare_pid: int | None = None) -> dict[int, str]:
    """pid → what it is, for this process and its descendants: the local Ray (GCS, raylet, its agents, the Serve
    controller, HTTP proxy and replicas) and the bare server."""
    import psutil

    me = psutil.Process()
    out = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if p.pid == me.pid:
            name = "load generator (+ Ray driver)"
        elif p.pid == bare_pid:
            name = "bare server"
        elif cmd.startswith("ray::ProxyActor"):
            name = "Serve HTTP proxy (+ router)"
        elif cmd.startswith("ray::ServeReplica:"):
            name = "replica " + cmd.split()[0].split(":")[3]  # ray::ServeReplica:<app>:<deployment>
        elif cmd.startswith("ray::ServeController"):
            name = "Serve controller"
        elif "raylet" in cmd.split()[0]:
            name = "raylet"
        elif "gcs_server" in cmd.split()[0]:
            name = "GCS"
        elif cmd.startswith("ray::"):
            name = "other Ray workers"
        elif "log_monitor" in cmd:
            name = "Ray log monitor"
        else:
            name = "other Ray agents"
        out[p.pid] = name
    return out


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    import psutil

    out = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        out[pid] = t.user + t.system
    return out


class CPUMeter:
    """CPU seconds per process label between :meth:`start` and :meth:`stop` (psutil; a process that started in
    between counts from 0)."""

    def __init__(self, bare_pid: int | None):
        self.bare_pid = bare_pid

    def start(self) -> None:
        self.labels = process_labels(self.bare_pid)
        self.t0 = cpu_seconds(list(self.labels))

    def stop(self) -> dict[str, float]:
        labels = {**self.labels, **process_labels(self.bare_pid)}
        t1 = cpu_seconds(list(labels))
        out: dict[str, float] = defaultdict(float)
        for pid, t in t1.items():
            out[labels[pid]] += t - self.t0.get(pid, 0.0)
        return dict(out)


PYSPY_RATE = 200  # samples per second of the thread holding the GIL (py-spy --gil: Python running, not waiting)
# What a sampled stack of each process is doing: the deepest frame that matches a rule of the first tier names it;
# without one, the deepest frame matching the second tier. Frames read "function (path/in/site-packages.py:line)".
# A stack whose innermost frame is a thread's or event loop's run loop is native code called from it with the GIL
# held (uvloop, Ray's Cython core worker).
PROXY_RULES = (
    (("access log / logging", ("logging/",)),
     ("metrics", ("metrics",)),
     ("router (replica choice, queue-length probes)", ("serve/_private/router.py", "request_router/")),
     ("Ray actor call + streamed reply (Python side)", ("ray/actor.py", "_raylet", "ray/_private/", "replica_result",
                                                       "proxy_response_generator")),
     ("HTTP server (uvicorn, h11/httptools)", ("uvicorn/", "h11/", "httptools")),
     ("proxy request handling", ("serve/_private/proxy", "serve/_private/http_util"))),
    (("asyncio event loop", ("asyncio/", "selectors.py")),
     ("other Serve / Ray", ("ray/",))),
)
REPLICA_RULES = (
    (("store reads (SQLite)", ("serve_app/store.py",)),
     ("records: JSON decode, context", ("serve_app/records.py",)),
     ("recall: candidates, dedup, blocklist", ("HintQCore.recall", "add (serve_app/hintq", "Blocklist.")),
     ("CTR ranking (features + forward)", ("score_many", "aigq/rewards/", "torch/")),
     ("rank + response dict", ("HintQCore.rank", "HintQCore.response")),
     ("body parse + validation", ("parse_body",)),
     ("bearer auth", ("serve_app/auth.py",)),
     ("response validation + JSON (FastAPI)", ("serialize_response", "jsonable_encoder", "JSONResponse",
                                               "_prepare_response_content")),
     ("@serve.batch queue", ("serve/batching.py",)),
     ("access log / logging", ("logging/",)),
     ("metrics", ("metrics",))),
    (("asyncio loop, thread hand-offs", ("asyncio/", "selectors.py", "threading.py", "concurrent/futures")),
     ("FastAPI / Starlette routing + middleware", ("fastapi/", "starlette/", "serve_app/models.py")),
     ("Serve replica (request handling, ASGI bridge)", ("ray/serve/",)),
     ("Ray core worker (Python side)", ("ray/", "_raylet"))),
)


RUN_LOOPS = ("Thread.run (threading", "Worker.main_loop", "_run_user_code_event_loop", "_run_router_event_loop",
             "run_forever", "run_until_complete")


def classify(stack: list[str], rules) -> str:
    if not stack or any(n in stack[-1] for n in RUN_LOOPS):
        return "event loops / core worker (native, GIL held)"
    for tier in rules:
        hit = None
        for frame in stack:  # root → leaf: the deepest match wins
            for name, needles in tier:
                if any(n in frame for n in needles):
                    hit = name
                    break
        if hit:
            return hit
    return "other Python"


def pyspy_exe() -> str | None:
    return shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")


def pyspy_split(path: Path, rules, names: dict[int, str] | None = None) -> dict[str, float]:
    """CPU seconds per category of a ``py-spy record --format raw --threads`` file (samples / rate); ``names``
    gets each sampled thread's Python name by native thread id."""
    out: dict[str, float] = defaultdict(float)
    if not path.is_file():
        return {}
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            thread, *frames = stack.split(";")  # "thread (0x7f…): name" / "thread (1234): name"
            tid, _, name = thread.partition(")")
            if names is not None and tid.removeprefix("thread (").isdigit():
                names[int(tid.removeprefix("thread ("))] = name.lstrip(": ") or "[Python] unnamed (Ray core worker)"
            out[classify(frames, rules)] += int(n) / PYSPY_RATE
    return dict(out)


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """native thread id → (OS thread name, CPU seconds) of a process."""
    import psutil

    out = {}
    try:
        for t in psutil.Process(pid).threads():
            try:
                name = Path(f"/proc/{pid}/task/{t.id}/comm").read_text().strip()
            except OSError:
                name = "?"
            out[t.id] = (name, t.user_time + t.system_time)
    except psutil.Error:
        pass
    return out


def phase_table(cfg_file: Path, users: int, n: int = 1000) -> list[tuple[str, float]]:
    """The replica's phases timed in this process (CPU µs per request, no Serve, no HTTP): HintQCore on the
    benchmark's store and CTR model, the load's users (a tenth unknown)."""
    import json

    import torch
    from pydantic import TypeAdapter

    from serve_app.common import app_context
    from serve_app.hintq import HintQCore, load_scorer
    from serve_app.models import HintQRequest, HintQResponse

    torch.set_num_threads(1)  # as the replica (AIGQ_SERVE_THREADS) and the bare server
    ctx = app_context({"config": str(cfg_file), "root": str(REPO)})
    core = HintQCore(ctx.records, ctx.cfg, load_scorer(ctx, None)[0])
    rng = random.Random(2)
    us = [rng.randrange(users + users // 10) for _ in range(n)]
    store, spent, calls = ctx.store, Counter(), Counter()
    for name in ("mget", "lrange"):  # get = mget of one key
        def timed(*a, _f=getattr(store, name), _name=name, **kw):
            t = time.thread_time()
            try:
                return _f(*a, **kw)
            finally:
                spent["store"] += time.thread_time() - t
                calls[_name] += 1
        setattr(store, name, timed)

    def per_request(f, items) -> float:
        t = time.thread_time()
        for x in items:
            f(x)
        return (time.thread_time() - t) / len(items) * 1e6

    bodies = [json.dumps({"user_id": u}).encode() for u in us]
    adapter = TypeAdapter(HintQResponse)

    def one_pass() -> list[tuple[str, float]]:
        spent.clear()
        calls.clear()
        t_parse = per_request(lambda b: HintQRequest.model_validate(json.loads(b.decode())), bodies)
        recalls = {}
        t_recall = per_request(lambda u: recalls.__setitem__(u, core.recall(u, 3)), us)
        t_store = spent["store"] / n * 1e6
        items = [(recalls[u][0], [c["query"] for c in recalls[u][1]]) for u in us]
        t_ctr1 = per_request(lambda it: core.score_many([it]), items)
        t_ctr8 = per_request(lambda i: core.score_many(items[i:i + 8]), range(0, n, 8)) / 8
        probs = [core.score_many([it])[0] for it in items]

        def respond(i):
            u = us[i]
            d = core.response(u, [dict(c) for c in recalls[u][1]], probs[i], 3, recalls[u][2])
            return json.dumps(adapter.dump_python(adapter.validate_python(d), mode="json"))

        t_resp = per_request(respond, range(n))
        trips = (calls["mget"] + 2 * calls["lrange"]) / n
        return [(f"store reads ({trips:.1f} SQLite queries)", t_store),
                ("recall logic (JSON decode, context, candidates)", t_recall - t_store),
                ("CTR ranking, batch of 1", t_ctr1), ("CTR ranking, batch of 8 (per request)", t_ctr8),
                ("rank + response validation + JSON", t_resp), ("body JSON + HintQRequest", t_parse)]

    one_pass()  # warms caches (SQLite pages, torch)
    return one_pass()


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
            noop.update(import_path="serve_load:noop_build", args={"auth": auth})
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


def server_cpu(name: str, r: dict[str, Any]) -> float:
    """CPU ms per request of the server side: the bare server's process, or every Ray process for Serve (its
    background work included: controller, raylet, GCS)."""
    if name.startswith("bare"):
        return r["cpu_ms"].get("bare server", 0.0)
    return sum(v for k, v in r["cpu_ms"].items() if not k.startswith(("load generator", "bare server")))


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


def profile_pass(a, endpoints: list[tuple[str, str]], meter: CPUMeter) -> dict[str, Any]:
    """One more closed-loop run on Serve's HintQ with py-spy sampling its HTTP proxy and its replica."""
    exe = pyspy_exe()
    name, url = endpoints[0]
    app = url.rsplit("/", 1)[1]
    labels = process_labels()
    pids = {"proxy": next((p for p, n in labels.items() if n.startswith("Serve HTTP proxy")), None),
            "replica": next((p for p, n in labels.items() if n == f"replica {app}"), None)}
    out = Path(tempfile.mkdtemp(prefix="aigq-serve-spy-"))
    procs = []
    if exe:
        procs = [subprocess.Popen([exe, "record", "--pid", str(pid), "--rate", str(PYSPY_RATE), "--duration",
                                   str(int(a.seconds)), "--format", "raw", "--gil", "--threads", "--nonblocking", "--output",
                                   str(out / f"{what}.txt")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for what, pid in pids.items() if pid]
        time.sleep(0.5)
    meter.start()
    t0 = {what: thread_cpu(pid) for what, pid in pids.items() if pid}
    r = asyncio.run(load(url, a.users, a.concurrency, int(a.seconds), 0.0, not a.no_keepalive))
    t1 = {what: thread_cpu(pid) for what, pid in pids.items() if pid}
    cpu = meter.stop()
    for p in procs:
        p.wait(timeout=60)
    names: dict[int, str] = {}
    split = {"proxy": pyspy_split(out / "proxy.txt", PROXY_RULES, names),
             "replica": pyspy_split(out / "replica.txt", REPLICA_RULES, names)}
    threads = {}
    for what in t1:  # CPU per thread, named by Python (py-spy) or else by the OS (Ray's C++ threads)
        per: dict[str, float] = defaultdict(float)
        for tid, (os_name, sec) in t1[what].items():
            per[names.get(tid) or f"[C++] {os_name}"] += sec - t0[what].get(tid, ("", 0.0))[1]
        threads[what] = dict(per)
    return {"name": name, "n": r["n"], "qps": r["qps"], "cpu": cpu, "pyspy": bool(exe), **split,
            "threads": threads, "app": app}


def print_profile(res: dict[str, dict[str, Any]], spy: dict[str, Any], phases, a) -> None:
    n = max(spy["n"], 1)
    print(f"\nWhere a request's CPU goes: {spy['name']} under closed-loop c={a.concurrency} ({spy['qps']:.0f} QPS, "
          f"{spy['n']} requests{', py-spy sampling the proxy and the replica' if spy['pyspy'] else ''}); "
          "CPU ms per request")
    print(f"{'process / part':<58} {'ms/req':>7}")
    groups = {"proxy": "Serve HTTP proxy (+ router)", "replica": f"replica {spy['app']}"}
    total = 0.0
    for label, sec in sorted(spy["cpu"].items(), key=lambda kv: -kv[1]):
        ms = 1000 * sec / n
        total += ms
        if ms < 0.005:
            continue
        print(f"{label:<58} {ms:7.2f}")
        part = next((k for k, v in groups.items() if v == label), None)
        if part and spy[part]:  # py-spy's GIL samples; the rest of the process's CPU ran without the GIL
            sampled = 1000 * sum(spy[part].values()) / n
            scale = min(1.0, ms / sampled) if sampled else 1.0  # a busy box: a GIL holder waits for a core
            for cat, s in sorted(spy[part].items(), key=lambda kv: -kv[1]):
                print(f"  {cat:<56} {1000 * s / n * scale:7.2f}")
            print(f"  {'without the GIL (C++ core worker, gRPC, SQLite, torch)':<56} {max(ms - sampled, 0):7.2f}")
        if part and spy["threads"].get(part):
            print(f"  {'by thread:':<56}")
            for th, sec in sorted(spy["threads"][part].items(), key=lambda kv: -kv[1])[:8]:
                print(f"    {th[:54]:<54} {1000 * sec / n:7.2f}")
    print(f"{'total':<58} {total:7.2f}")
    if phases:
        print("\nThe replica's phases in process (HintQCore on the same store and model; CPU µs per request)")
        for label, us in phases:
            print(f"  {label:<56} {us:7.0f}")
    keys = [k for k in ("serve", "serve no-op", "bare", "bare no-op") if k in res] or list(res)
    print("\nNo-op twins (same ingress, handler returns at once), same rounds:")
    for k in keys:
        r = res[k]
        per = ", ".join(f"{lbl} {ms:.2f}" for lbl, ms in sorted(r["cpu_ms"].items(), key=lambda kv: -kv[1])
                        if ms >= 0.05)
        print(f"  {k:<12} {r['qps']:5.0f} QPS p50 {r['p50']:6.1f} p99 {r['p99']:6.1f} | CPU ms/req: {per}")
    if all(k in res for k in ("serve no-op", "bare no-op")):
        s, b = res["serve no-op"], res["bare no-op"]
        print(f"  Serve's own path (no-op through Serve − bare no-op): p50 +{s['p50'] - b['p50']:.1f} ms, "
              f"server CPU +{server_cpu('serve', s) - server_cpu('bare', b):.2f} ms/request")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def append_rows(text: str, head: str, intro: str, rows: list[str]) -> str:
    """``text`` (RESULTS.md) with ``rows`` after the last row of the first table under the heading line ``head``
    (so rows land in their own section, whatever sections follow it); without that heading, a new section at the
    end: ``head``, ``intro`` (which ends with the table's header lines), ``rows``. Pure."""
    lines = text.split("\n")
    at = next((i for i, ln in enumerate(lines) if ln.strip() == head), None)
    if at is None:
        return "\n\n".join([text.rstrip("\n"), head, intro.rstrip("\n")]) + "\n" + "\n".join(rows) + "\n"
    end = next((i for i in range(at + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    table = [i for i in range(at + 1, end) if lines[i].startswith("|")]
    if table:
        last = table[0]
        while last + 1 < end and lines[last + 1].startswith("|"):
            last += 1
        pos = last + 1
    else:  # a section without a table: at its end, before the blank lines that end it
        pos = end
        while pos > at + 1 and not lines[pos - 1].strip():
            pos -= 1
    return "\n".join(lines[:pos] + rows + lines[pos:])


if __name__ == "__main__":
    main()
