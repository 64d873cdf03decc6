"""``serve_load.py --profile``: where a request's CPU goes. A no-op twin of HintQ (:func:`noop_build`), CPU
seconds per process of the local Ray (:class:`CPUMeter`), py-spy's GIL samples of the HTTP proxy and the replica
sorted by what the code does (``PROXY_RULES``, ``REPLICA_RULES``), CPU per thread, and the replica's phases timed in
process (:func:`phase_table`)."""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from serve_common import REPO, load


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


def server_cpu(name: str, r: dict[str, Any]) -> float:
    """CPU ms per request of the server side: the bare server's process, or every Ray process for Serve (its
    background work included: controller, raylet, GCS)."""
    if name.startswith("bare"):
        return r["cpu_ms"].get("bare server", 0.0)
    return sum(v for k, v in r["cpu_ms"].items() if not k.startswith(("load generator", "bare server")))

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
