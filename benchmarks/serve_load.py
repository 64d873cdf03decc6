"""HintQ under load on 127.0.0.1: p50/p99 latency and sustained QPS through Ray Serve (the ``hintq`` app of
configs/serve.yaml, one replica) beside a bare FastAPI/uvicorn app (one worker process) doing the same store reads
and CTR ranking (``HintQCore``), measured in the same run; then 1,000 malformed requests → count of 4xx / 5xx per endpoint.

    .venv/bin/python benchmarks/serve_load.py [--users 500] [--concurrency 8] [--seconds 15] [--no-append]

The load is closed-loop and bounded: ``concurrency`` clients, each sending its next request when the last one
returns, for ``seconds`` after a warm-up. Both servers check the same bearer token (``serve_app.auth``, a
random read token made for the run); every request carries it. The store (SQLite, WAL) holds ``users`` users with behaviours, a Direct
cache and a Think index; the CTR model has the default architecture with random weights (ranking cost, not quality).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

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
app = FastAPI(); install_error_handlers(app); install_auth(app, {{("POST", "/hintq"): "read"}}, lambda: policy)
@app.post("/hintq")
async def hintq(request: Request):
    body = await parse_body(request, HintQRequest, ctx.cfg.serve.max_body_bytes)
    return core.answer(body.user_id, body.k)
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


async def load(url: str, users: int, concurrency: int, seconds: float, warmup: float) -> dict:
    import aiohttp

    lat: list[float] = []
    codes: dict[int, int] = {}
    t_start = time.perf_counter()
    t_measure, t_end = t_start + warmup, t_start + warmup + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
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
    a = np.array(lat) * 1000
    return {"n": len(a), "qps": len(a) / seconds, "p50": float(np.percentile(a, 50)),
            "p99": float(np.percentile(a, 99)), "codes": codes}


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--warmup", type=float, default=3)
    ap.add_argument("--no-append", action="store_true")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="aigq-serve-bench-"))
    cfg_file = tmp / "aigq.yaml"
    cfg_file.write_text(yaml.safe_dump({"run": {"output_dir": str(tmp / "out")}, "tracking": {"enabled": False},
                                        "ctr": {"dir": str(tmp / "ctr")},
                                        "serve": {"sqlite_path": str(tmp / "store.db"), "clock": "wall"}}))
    populate(cfg_file, a.users)
    serve_port, bare_port = free_port(), free_port()
    from serve_app.auth import AuthPolicy

    auth = AuthPolicy.from_tokens(True, {"read": TOKEN}).to_args()
    bare = subprocess.Popen([sys.executable, "-c", BARE.format(repo=str(REPO), cfg=str(cfg_file), port=bare_port,
                                                               auth=auth)])
    import ray
    from ray import serve

    from aigq.ray_boot import init_ray
    from serve_app import deploy as D

    init_ray(None, 2)  # a private local Ray (or $RAY_ADDRESS's cluster), Ray's token authentication on
    try:
        sc = D.load_serve_config(REPO / "configs/serve.yaml", root=REPO, config=str(cfg_file), port=serve_port,
                                 apps=["hintq"])
        D.set_auth(sc, auth)
        dep = sc["applications"][0]["deployments"][0]
        dep.pop("autoscaling_config", None)
        dep["num_replicas"] = 1  # one replica vs one uvicorn worker
        D.deploy(sc)
        D.wait_running(["hintq"], timeout_s=300)
        s_url, b_url = f"http://127.0.0.1:{serve_port}/hintq", f"http://127.0.0.1:{bare_port}/hintq"
        wait_http(s_url)
        wait_http(b_url)
        res = {}
        for name, url in (("serve", s_url), ("bare", b_url)):
            res[name] = asyncio.run(load(url, a.users, a.concurrency, a.seconds, a.warmup))
            res[name]["malformed"] = asyncio.run(malformed(url))
            print(name, res[name], flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
        bare.terminate()
    print(malformed_report(res), flush=True)
    row(res, a)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
