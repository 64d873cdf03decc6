"""Ray Serve autoscaling, shown working: the apps of configs/serve.yaml deployed WITH their ``autoscaling_config``
(nothing pinned), a step load on HintQ, then a burst of ``POST /direct/events``; every ~1 s the replica count of each
deployment, every 5 s the traffic (QPS, p50 / p99 latency, status counts).

    .venv/bin/python benchmarks/serve_autoscale.py [--clients 24] [--load-s 60] [--cooldown-s 150] [--quick]

Phases (times from the start of measurement):

1. ``idle``        ``--idle-s`` with no traffic (every deployment at its ``min_replicas``);
2. ``hintq-load``  ``--clients`` closed-loop clients on ``POST /hintq`` for ``--load-s`` (each sends its next request
                   when the last one returns, so about ``clients`` requests are always in flight: Serve's autoscaler
                   compares that count, averaged over ``look_back_period_s``, with ``target_ongoing_requests``);
3. ``hintq-cool``  no traffic until HintQ is back at one replica (plus 3 s), at most ``--cooldown-s``;
4. ``events``      ``--events-rps`` requests a second, each a search event for ``--events-users`` new users, on
                   ``POST /direct/events`` for ``--events-s``: every event fires the meaningful-signal rule, so each
                   user starts a generation on ``DirectGenerator`` (at most ``serve.max_pending_generations`` in flight
                   per ingress replica; the rest are counted as dropped by the app);
5. ``events-tail`` ``--events-tail-s`` with no traffic (the generator works off its backlog).

A private local Ray (``aigq.ray_boot.init_ray(None, --cpus)``, Ray's token authentication on), a SQLite store of
``--users`` users as ``benchmarks/serve_load.py`` fills it (:func:`serve_common.populate`), bearer tokens made for
the run (admin / read / write). The Direct generator and the Think app run ``--policy`` (default the demo's
``outputs/tiny/sft/policy``; when it does not exist, a random tiny policy built for the run). Replica counts come
from ``serve.status()`` (``replica_states``: RUNNING) and the controller's target from its Serve details
(``target_num_replicas``). Prints every replica-count change, a table per 5-s window and a one-line verdict; the
1-s samples and requests go to ``--json``. Exit status 0 when every check of the verdict holds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _p in (str(REPO), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from serve_common import free_port, populate, wait_http  # noqa: E402

APPS = ("hintq", "direct", "think")
# (application, deployment, column heading); the order of the table's columns
DEPLOYMENTS = (("hintq", "HintQ", "HintQ"), ("direct", "DirectIngress", "DirIngress"),
               ("direct", "DirectGenerator", "DirGen"), ("think", "ThinkApp", "Think"))
WINDOW_S = 5.0
WORDS = ["oak", "desk", "lamp", "rug", "sofa", "blue", "round", "mirror", "bed", "chair", "velvet", "outdoor"]
EVENT_USER0 = 10_000_000  # the burst's users: new ids, none in the populated store


@dataclass
class Run:
    """What the run saw: phases, 1-s replica samples, one row per request."""

    t0: float = field(default_factory=time.perf_counter)
    phases: list[tuple[str, float, float]] = field(default_factory=list)  # (name, start, end) seconds from t0
    samples: list[dict] = field(default_factory=list)  # {"t": s, dep: [running, all states, target]}
    requests: list[tuple[str, float, float, int]] = field(default_factory=list)  # (endpoint, start, end, status)
    events: dict[str, int] = field(default_factory=lambda: {"triggered": 0, "deferred": 0, "dropped": 0})
    lock: threading.Lock = field(default_factory=threading.Lock)

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def latest(self) -> dict | None:
        with self.lock:
            return self.samples[-1] if self.samples else None


# ---------------------------------------------------------------- replica counts, every ~1 s


def replica_counts() -> dict[str, list[int | None]]:
    """deployment → [RUNNING replicas, replicas in any state, the controller's target (None if unknown)]."""
    from ray import serve
    from ray.serve.context import _get_global_client

    apps = serve.status().applications
    try:
        details = _get_global_client().get_serve_details().get("applications", {})
    except Exception:  # noqa: BLE001 — the target is extra information; the status API is what counts
        details = {}
    out: dict[str, list[int | None]] = {}
    for app, dep, _ in DEPLOYMENTS:
        st = apps.get(app)
        d = st.deployments.get(dep) if st else None
        if d is None:
            continue
        states = {str(getattr(k, "value", k)): int(v) for k, v in d.replica_states.items()}
        target = (details.get(app, {}).get("deployments", {}).get(dep, {}) or {}).get("target_num_replicas")
        out[dep] = [states.get("RUNNING", 0), sum(states.values()), target]
    return out


def sampler(run: Run, stop: threading.Event, every_s: float = 1.0) -> None:
    while not stop.is_set():
        t = run.now()
        try:
            counts = replica_counts()
        except Exception as exc:  # noqa: BLE001 — a slow controller on a busy box: note it, keep sampling
            print(f"  t={t:6.1f}s  status API error: {exc}", flush=True)
            counts = None
        if counts is not None:
            with run.lock:
                prev = run.samples[-1] if run.samples else {}
                run.samples.append({"t": round(t, 2), **counts})
            for dep, c in counts.items():
                if prev.get(dep) != c:
                    running, total, target = c
                    print(f"  t={t:6.1f}s  {dep}: {running} running, {total} in all states, target {target}",
                          flush=True)
        stop.wait(max(0.0, every_s - (run.now() - t)))


# ---------------------------------------------------------------- load


async def hintq_clients(run: Run, url: str, headers: dict, clients: int, users: int, end_t: float) -> None:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients), timeout=timeout) as s:
        async def client(i: int) -> None:
            rng = np.random.default_rng(i)
            while (t0 := run.now()) < end_t:
                try:
                    async with s.post(url, json={"user_id": int(rng.integers(users + users // 10))},
                                      headers=headers) as r:
                        await r.read()
                        status = r.status
                except (TimeoutError, aiohttp.ClientError):
                    status = 0  # no answer
                run.requests.append(("hintq", t0, run.now(), status))
                if status == 429:
                    await asyncio.sleep(0.2)  # the app asked to back off (Retry-After); do not spin

        await asyncio.gather(*(client(i) for i in range(clients)))


async def events_burst(run: Run, url: str, headers: dict, rps: float, per_request: int, end_t: float) -> int:
    """``rps`` requests a second until ``end_t``, each one search event for ``per_request`` new users; returns the
    number of users sent. Requests are sent on a clock (open loop), not after the previous answer."""
    import aiohttp

    sent = 0
    tasks = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        async def one(first: int) -> None:
            body = {"events": [{"user_id": EVENT_USER0 + u, "type": "search",
                                "content": f"{WORDS[u % len(WORDS)]} {WORDS[(u // 7) % len(WORDS)]}"}
                               for u in range(first, first + per_request)]}
            t0 = run.now()
            try:
                async with s.post(url, json=body, headers=headers) as r:
                    got = await r.json(content_type=None) if r.status == 202 else None
                    status = r.status
            except (TimeoutError, aiohttp.ClientError, ValueError):
                got, status = None, 0
            run.requests.append(("events", t0, run.now(), status))
            if isinstance(got, dict):
                run.events["triggered"] += len(got.get("triggered", []))
                run.events["deferred"] += int(got.get("deferred", 0))
                run.events["dropped"] += int(got.get("dropped", 0))

        start, k = run.now(), 0
        while run.now() < end_t:
            tasks.append(asyncio.create_task(one(sent)))
            sent += per_request
            k += 1
            await asyncio.sleep(max(0.0, start + k / rps - run.now()))  # on the clock, however long answers take
        await asyncio.gather(*tasks)
    return sent


async def idle(run: Run, end_t: float, until=None) -> None:
    """No traffic until ``end_t``, or 3 s after ``until(latest sample)`` first holds."""
    seen = None
    while (t := run.now()) < end_t:
        s = run.latest()
        if until is not None and s is not None and until(s):
            seen = t if seen is None else seen
            if t - seen >= 3.0:
                return
        await asyncio.sleep(0.5)


async def experiment(run: Run, a, base: str, tokens: dict[str, str]) -> int:
    read = {"Authorization": f"Bearer {tokens['read']}"}
    write = {"Authorization": f"Bearer {tokens['write']}"}

    async def phase(name: str, coro_fn, length: float, **kw):
        start = run.now()
        out = await coro_fn(end_t=start + length, **kw)
        run.phases.append((name, start, run.now()))
        return out

    await phase("idle", lambda end_t: idle(run, end_t), a.idle_s)
    await phase("hintq-load", lambda end_t: hintq_clients(run, f"{base}/hintq", read, a.clients, a.users, end_t),
                a.load_s)

    def hintq_back(s: dict) -> bool:
        running, total, target = s.get("HintQ", [0, 0, 0])
        return running == total == 1 and target in (1, None)

    await phase("hintq-cool", lambda end_t: idle(run, end_t, until=hintq_back), a.cooldown_s)
    sent = await phase("events", lambda end_t: events_burst(run, f"{base}/direct/events", write, a.events_rps,
                                                            a.events_users, end_t), a.events_s)
    await phase("events-tail", lambda end_t: idle(run, end_t), a.events_tail_s)
    return sent


# ---------------------------------------------------------------- report


def phases_in(run: Run, lo: float, hi: float) -> str:
    """The phases that overlap ``[lo, hi)``, joined by ``/``."""
    return "/".join(name for name, a, b in run.phases if a < hi and b > lo) or "-"


def replicas_cell(c: list | None) -> str:
    """``2`` when steady; ``1→2`` when the target differs from the running count; ``*`` marks replicas starting or
    stopping (in a state other than RUNNING)."""
    if not c:
        return "-"
    running, total, target = c
    cell = f"{running}" if target in (None, running) else f"{running}→{target}"
    return cell + ("*" if total != running else "")


def windows(run: Run) -> list[dict]:
    end = max([hi for _, _, hi in run.phases] + [0.0])
    rows = []
    for k in range(int(np.ceil(end / WINDOW_S))):
        lo, hi = k * WINDOW_S, (k + 1) * WINDOW_S
        done = [r for r in run.requests if lo <= r[2] < hi]
        lat = np.array([(r[2] - r[1]) * 1000 for r in done if 200 <= r[3] < 300])
        codes: dict[str, int] = {}
        for ep, _, _, st in done:
            key = f"{ep} {st or 'none'}"
            codes[key] = codes.get(key, 0) + 1
        with run.lock:
            inside = [s for s in run.samples if lo <= s["t"] < hi]
        last = inside[-1] if inside else None
        rows.append({"t": hi, "phase": phases_in(run, lo, hi),
                     "replicas": {dep: (last or {}).get(dep) for _, dep, _ in DEPLOYMENTS},
                     "qps": len(done) / WINDOW_S,
                     "p50": float(np.percentile(lat, 50)) if lat.size else None,
                     "p99": float(np.percentile(lat, 99)) if lat.size else None,
                     "codes": codes})
    return rows


def table(rows: list[dict]) -> str:
    ms = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    head = ["t (s)", "phase"] + [h for _, _, h in DEPLOYMENTS] + ["QPS", "p50 ms", "p99 ms", "status counts"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['t']:.0f}", r["phase"]] + [replicas_cell(r["replicas"][dep]) for _, dep, _ in DEPLOYMENTS]
        cells += [f"{r['qps']:.1f}", ms(r["p50"]), ms(r["p99"]),
                  ", ".join(f"{k}: {v}" for k, v in sorted(r["codes"].items())) or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def first(samples: list[dict], after: float, dep: str, test) -> float | None:
    return next((s["t"] for s in samples if s["t"] >= after and dep in s and test(s[dep])), None)


def verdict(run: Run) -> tuple[bool, str]:
    """(all checks hold, the one-line verdict) from the 1-s samples: every deployment started at one RUNNING
    replica; HintQ reached 2 RUNNING after the load started and was back at 1 (running, in all states and target)
    before the events burst; DirectGenerator reached 2 RUNNING after the burst started."""
    ph = {name: (lo, hi) for name, lo, hi in run.phases}
    s = run.samples
    load_lo, load_hi = ph["hintq-load"]
    ev_lo = ph["events"][0]
    start_ok = all(first(s, 0, dep, lambda c: c[0] == 1) is not None for _, dep, _ in DEPLOYMENTS)

    def since(t: float | None, t0: float) -> str:
        return "never" if t is None else f"{t - t0:.0f} s"

    def scaled_up(dep: str, t0: float) -> tuple[float | None, str]:
        up = first(s, t0, dep, lambda c: c[0] >= 2)
        target = first(s, t0, dep, lambda c: (c[2] or 0) >= 2)
        most = max((x[dep][0] for x in s if x["t"] >= t0 and dep in x), default=0)
        return up, (f"{'yes' if up is not None else 'NO'} (at most {most} running; target 2 after "
                    f"{since(target, t0)}, 2 running after {since(up, t0)})")

    up, up_text = scaled_up("HintQ", load_lo)
    down = first(s, up, "HintQ", lambda c: c[0] == c[1] == 1 and c[2] in (1, None)) if up is not None else None
    down = down if down is not None and down < ev_lo else None
    g_up, g_text = scaled_up("DirectGenerator", ev_lo)
    down_text = ("n/a" if up is None else
                 f"yes ({since(down, load_hi)} after the load stopped)" if down is not None else
                 f"NO (not within the {ev_lo - load_hi:.0f} s cool-down)")
    parts = [f"HintQ 1 → 2 replicas under load: {up_text}", f"HintQ back to 1 after: {down_text}",
             f"DirectGenerator scaled up under the events burst: {g_text}"]
    if not start_ok:
        parts.insert(0, "NOT every deployment started at 1 replica")
    ok = start_ok and up is not None and down is not None and g_up is not None
    return ok, f"VERDICT: {'PASS' if ok else 'FAIL'}: " + "; ".join(parts)


# ---------------------------------------------------------------- set-up


def write_config(tmp: Path) -> Path:
    """The apps' AIGQ config: serve_load.py's (a SQLite store, a CTR model folder, wall clock, tracking off)."""
    cfg_file = tmp / "aigq.yaml"
    cfg_file.write_text(yaml.safe_dump({"run": {"output_dir": str(tmp / "out")}, "tracking": {"enabled": False},
                                        "ctr": {"dir": str(tmp / "ctr")},
                                        "serve": {"sqlite_path": str(tmp / "store.db"), "clock": "wall"}}))
    return cfg_file


def random_policy(folder: Path) -> Path:
    """A random tiny Qwen2 with a BPE tokenizer trained on a few lines (as tests/conftest.py's ``tiny_policy``)."""
    from aigq.config import TinyModelConfig
    from aigq.models.tiny import build_tiny, train_tokenizer

    texts = [f"Please Recommend the next 10 queries. user {i} likes sofa ; lamp ; rug {i % 7}" for i in range(200)]
    tok = train_tokenizer(iter(texts), 400)
    model = build_tiny(TinyModelConfig(hidden=128, intermediate=256, layers=2, heads=2, kv_heads=1), tok, seed=0)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def autoscaling_summary(sc: dict) -> str:
    return "\n".join(f"  {app['name']}/{d['name']}: {d.get('autoscaling_config')}"
                     for app in sc["applications"] for d in app.get("deployments", []))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--serve-config", default=str(REPO / "configs/serve.yaml"))
    ap.add_argument("--policy", default="outputs/tiny/sft/policy",
                    help="Direct / Think policy folder; missing → a random tiny policy built for the run")
    ap.add_argument("--users", type=int, default=500, help="users in the store (HintQ picks among them)")
    ap.add_argument("--cpus", type=int, default=2, help="logical CPUs of the private Ray")
    ap.add_argument("--idle-s", type=float, default=10)
    ap.add_argument("--clients", type=int, default=24, help="concurrent HintQ clients (closed loop)")
    ap.add_argument("--load-s", type=float, default=60)
    ap.add_argument("--cooldown-s", type=float, default=150,
                    help="at most this long without traffic, waiting for HintQ to go back to one replica")
    ap.add_argument("--events-s", type=float, default=60)
    ap.add_argument("--events-rps", type=float, default=2.0, help="POST /direct/events requests a second")
    ap.add_argument("--events-users", type=int, default=32, help="new users (one search each) per events request")
    ap.add_argument("--events-tail-s", type=float, default=15)
    ap.add_argument("--json", default=None, help="where the 1-s samples, windows and requests go (default: the "
                                                 "run's temporary folder)")
    ap.add_argument("--quick", action="store_true",
                    help="shorter phases: idle 5 s, load 40 s, cool-down ≤ 120 s, events 40 s, tail 5 s, 300 users "
                         "(the cool-down cannot be much shorter: HintQ's downscale_delay_s is 60 s, after the "
                         "30-s look-back average has fallen below its target)")
    a = ap.parse_args(argv)
    if a.quick:
        a.idle_s, a.load_s, a.cooldown_s, a.events_s, a.events_tail_s = 5, 40, 120, 40, 5
        a.users = min(a.users, 300)
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="aigq-serve-autoscale-"))
    cfg_file = write_config(tmp)
    populate(cfg_file, a.users)
    policy = Path(a.policy) if Path(a.policy).is_absolute() else REPO / a.policy
    if not (policy / "config.json").is_file():
        print(f"no policy at {policy}: building a random tiny policy for the run", flush=True)
        policy = random_policy(tmp / "policy")
    tokens = {s: secrets.token_urlsafe(32) for s in ("admin", "read", "write")}
    port = free_port()

    import ray
    from ray import serve

    from aigq.ray_boot import init_ray
    from serve_app import deploy as D
    from serve_app.auth import AuthPolicy

    init_ray(None, a.cpus, attempts=3)  # a private local Ray (or $RAY_ADDRESS's cluster), token authentication on
    run = Run()
    stop = threading.Event()
    try:
        sc = D.load_serve_config(a.serve_config, root=REPO, config=str(cfg_file), port=port, apps=list(APPS))
        D.set_policy(sc, str(policy))
        D.set_auth(sc, AuthPolicy.from_tokens(True, tokens).to_args())
        print("autoscaling_config as deployed (configs/serve.yaml, nothing pinned):\n" + autoscaling_summary(sc),
              flush=True)
        t_deploy = time.perf_counter()
        D.deploy(sc)
        D.wait_running(list(APPS), timeout_s=600)
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/hintq", timeout=300, headers={"Authorization": f"Bearer {tokens['read']}"})
        print(f"apps RUNNING in {time.perf_counter() - t_deploy:.0f} s; policy {policy}; {a.users} users; "
              f"{a.cpus} logical CPUs", flush=True)
        run = Run()
        th = threading.Thread(target=sampler, args=(run, stop), daemon=True)
        th.start()
        sent = asyncio.run(experiment(run, a, base, tokens))
        stop.set()
        th.join(10)
        from serve_app.common import app_context

        records = app_context({"config": str(cfg_file), "root": str(REPO)}).records
        generated = sum(1 for u in range(sent) if records.get_direct(EVENT_USER0 + u))
    finally:
        stop.set()
        serve.shutdown()
        ray.shutdown()

    rows = windows(run)
    print()
    print("phases: " + ", ".join(f"{n} {lo:.0f}–{hi:.0f} s" for n, lo, hi in run.phases))
    print("replicas: RUNNING replicas at the end of each window; 1→2 = target 2 with 1 running; * = some replica "
          "starting or stopping. QPS, p50, p99 (2xx only) and status counts: the requests that finished in the "
          "window (HintQ in hintq-load, POST /direct/events in events)")
    print(table(rows))
    ev = run.events
    print(f"events burst: {sent} users sent, generations started {ev['triggered']}, deferred {ev['deferred']}, "
          f"dropped (over serve.max_pending_generations) {ev['dropped']}; users with a Direct run in the store at the "
          f"end: {generated}")
    ok, line = verdict(run)
    out = Path(a.json) if a.json else tmp / "autoscale.json"
    out.write_text(json.dumps({"args": vars(a), "phases": run.phases, "samples": run.samples, "windows": rows,
                               "events": {**ev, "sent": sent, "generated": generated},
                               "requests": run.requests}, default=str))
    print(f"samples and requests: {out}")
    print(line, flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
