"""What the Serve benchmarks share (``serve_load.py``, ``serve_fuzz.py``, ``serve_autoscale.py``): the store they
fill, this run's bearer tokens, the closed- and open-loop load generators, the malformed request set and its
counting, and appending a row to benchmarks/RESULTS.md under its own heading. Importable without Ray."""

from __future__ import annotations

import asyncio
import random
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MALFORMED = [b"{not json", b'{"user_id": 1', b"\xff\xfe\x00\x81", b"", b"[1,2]", b"{}", b'{"user_id": "7"}',
             b'{"user_id": -1}', b'{"user_id": 7, "k": 50}', b'{"user_id": 7, "x": 1}', b'{"user_id": 1e400}',
             b"null", b'{"user_id": ' + b"[" * 3000 + b"]" * 3000 + b"}", b'{"user_id": 1, "pad": "' + b"x" * 70_000 + b'"}',
             b'{"user_id": 7, "user_id": 8}', b'{"user_id": 7, "k": null}', b'{"user_id": 7, "k": true}',
             b'{"user_id": 9223372036854775808}', b'{"user_id": Infinity}', b'"user_id"']
STATUS_CLASSES = ("2xx", "4xx", "5xx", "other")


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



def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
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
