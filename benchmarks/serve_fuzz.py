"""Malformed requests on every endpoint of the three Serve apps (``direct``, ``think``, ``hintq`` of
configs/serve.yaml) through Ray Serve on 127.0.0.1 → count of 4xx / 5xx per endpoint, with valid requests on every
endpoint before and after as a control (issue 19: "the serving fuzz row in RESULTS covers every endpoint with 0 5xx").

    .venv/bin/python benchmarks/serve_fuzz.py [--policy outputs/tiny/sft/policy] [--repeat 1] [--no-append]

The request set, :func:`malformed_requests`, is the one tests/test_serve_inputs.py sends to the apps in process
(each app's FastAPI ingress through Starlette's TestClient), where every request must get the 4xx it names with a
JSON error message; here the same requests go over real HTTP (a raw socket client, so that bad Content-Length
headers, non-ASCII header bytes and ``..%2F`` paths reach the server byte for byte) to Serve's HTTP proxy. Each
request carries the bearer token of the scope its endpoint needs (read: ``POST /hintq``, write: ``POST
/direct/events``, admin: everything else, none: ``/healthz``; the apps' own rules, :mod:`serve_app.auth`)
unless the case sets its own ``Authorization`` header (the authentication cases). The Direct and Think apps load
``--policy`` (``make demo`` trains the default); nothing here should start a generation but the one valid
``/think/generate`` control, and generations are capped short (``serve.max_new_tokens`` 16) in any case.

The per-endpoint table counts a path under its route template (``GET /direct/cache/{user_id}`` for every cache id,
``POST /hintq`` for ``/hintq`` and ``/hintq/``); a path no route matches counts under ``<METHOD> /<app>/*``.
Serve's proxy answers a request whose body never arrives (Content-Length larger than the body) after its
``request_timeout_s`` (30 s in configs/serve.yaml): those few cases take that long, concurrently with the others.
Without ``--no-append`` the RESULTS.md row goes under the heading :data:`HEAD` (created when missing).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _p in (str(REPO), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from serve_common import (  # noqa: E402
    append_rows,
    count_statuses,
    free_port,
    malformed_report,
    populate,
    wait_http,
)

APPS = ("direct", "think", "hintq")  # each is serve_app.<name>, served under its route_prefix in serve.yaml
MAX_EVENTS = 5  # serve.max_events_per_request of the apps the set is sent to (its "one over the limit" case)
J = {"content-type": "application/json"}
BIG = 2**63
HEAD = "## Serving: malformed requests on every endpoint through Ray Serve"

# (name, app, method, path, body, headers, expected status or None for any 4xx)
Request = tuple[str, str, str, str, bytes | None, dict, int | None]


def _j(obj) -> bytes:
    return json.dumps(obj).encode()


# ---------------------------------------------------------------- the request set


def malformed_requests(now: float, max_events: int = MAX_EVENTS) -> list[Request]:
    """(name, app, method, path, body, headers, expected status or None for any 4xx) on every endpoint; ``now``:
    the serving clock (wall time) for the timestamp cases, ``max_events``: the apps' ``serve.max_events_per_request``."""
    ev = {"user_id": 1, "type": "search", "content": "lamp"}
    out: list = []
    # bodies that are wrong for every JSON endpoint, whatever its model
    for app, path, good in (("hintq", "/hintq/", {"user_id": 7}), ("hintq", "/hintq", {"user_id": 7}),
                            ("direct", "/direct/events", {"events": [ev]}),
                            ("think", "/think/lookup", {"triggers": ["lamp"]}),
                            ("think", "/think/generate", {"user_id": 7})):
        raw = _j(good)
        out += [
            (f"{path} missing body", app, "POST", path, None, {}, 400),
            (f"{path} blank body", app, "POST", path, b"  \n", J, 400),
            (f"{path} JSON array", app, "POST", path, b"[" + raw + b"]", J, 422),
            (f"{path} JSON string", app, "POST", path, b'"user_id"', J, 422),
            (f"{path} JSON null", app, "POST", path, b"null", J, 422),
            (f"{path} JSON number", app, "POST", path, b"7", J, 422),
            (f"{path} truncated", app, "POST", path, raw[:-1], J, 400),
            (f"{path} Content-Length too small", app, "POST", path, raw, {**J, "content-length": "3"}, 400),
            (f"{path} Content-Length too large", app, "POST", path, raw,
             {**J, "content-length": str(len(raw) + 10)}, 400),
            (f"{path} Content-Length non-numeric", app, "POST", path, raw, {**J, "content-length": "ten"}, 400),
            (f"{path} Content-Length negative", app, "POST", path, raw, {**J, "content-length": "-1"}, 400),
            (f"{path} Content-Length superscript digit", app, "POST", path, raw, {**J, "content-length": b"\xb2"},
             400),
            (f"{path} Content-Length 5000 digits", app, "POST", path, raw, {**J, "content-length": "9" * 5000}, 413),
            (f"{path} unknown field", app, "POST", path, _j({**good, "zzz": 1}), J, 422),
        ]
    # duplicate keys: rejected (400), not "last wins" — at the top level and nested
    out += [
        ("hintq duplicate user_id", "hintq", "POST", "/hintq/", b'{"user_id": 7, "user_id": 8}', J, 400),
        ("hintq duplicate k", "hintq", "POST", "/hintq/", b'{"user_id": 7, "k": 1, "k": 3}', J, 400),
        ("events duplicate key in an event", "direct", "POST", "/direct/events",
         b'{"events": [{"user_id": 1, "user_id": 2, "type": "search", "content": "x"}]}', J, 400),
        ("events duplicate events", "direct", "POST", "/direct/events",
         b'{"events": [], "events": [{"user_id": 1, "type": "search", "content": "x"}]}', J, 400),
        ("lookup duplicate triggers", "think", "POST", "/think/lookup", b'{"triggers": ["a"], "triggers": ["b"]}',
         J, 400),
        ("generate duplicate user_id", "think", "POST", "/think/generate", b'{"user_id": 1, "user_id": 2}', J, 400),
    ]
    # user ids, in every body that has one
    bad_ids = [("bool", True), ("float", 7.0), ("2^63", BIG), ("negative", -1), ("string", "7"), ("null", None),
               ("huge", 10**30), ("object", {"id": 7})]
    for label, uid in bad_ids:
        out += [(f"hintq user id {label}", "hintq", "POST", "/hintq/", _j({"user_id": uid}), J, 422),
                (f"generate user id {label}", "think", "POST", "/think/generate", _j({"user_id": uid}), J, 422),
                (f"events user id {label}", "direct", "POST", "/direct/events",
                 _j({"events": [{**ev, "user_id": uid}]}), J, 422)]
    # k on /hintq and /think/lookup
    for label, k in [("0", 0), ("true", True), ("false", False), ("null", None), ("-1", -1), ("huge", 10**30),
                     ("2^63", BIG), ("float", 3.0), ("string", "3"), ("over the limit", 101)]:
        out += [(f"hintq k {label}", "hintq", "POST", "/hintq/", _j({"user_id": 7, "k": k}), J, 422),
                (f"lookup k {label}", "think", "POST", "/think/lookup", _j({"triggers": ["lamp"], "k": k}), J, 422)]
    out += [("hintq k 11", "hintq", "POST", "/hintq/", _j({"user_id": 7, "k": 11}), J, 422),
            ("hintq k Infinity", "hintq", "POST", "/hintq/", b'{"user_id": 7, "k": Infinity}', J, 422),
            ("hintq user id NaN", "hintq", "POST", "/hintq/", b'{"user_id": NaN}', J, 422)]
    # /think/lookup over its limits
    out += [
        ("lookup 101 triggers", "think", "POST", "/think/lookup", _j({"triggers": [f"t{i}" for i in range(101)]}),
         J, 422),
        ("lookup 5000 triggers", "think", "POST", "/think/lookup", _j({"triggers": ["t"] * 5000}), J, 422),
        ("lookup trigger too long", "think", "POST", "/think/lookup", _j({"triggers": ["x" * 513]}), J, 422),
        ("lookup trigger blank", "think", "POST", "/think/lookup", _j({"triggers": ["   "]}), J, 422),
        ("lookup trigger prefix only", "think", "POST", "/think/lookup", _j({"triggers": ["q:"]}), J, 422),
        ("lookup trigger prefix and blanks", "think", "POST", "/think/lookup", _j({"triggers": ["i:   "]}), J, 422),
        ("lookup no triggers", "think", "POST", "/think/lookup", _j({"triggers": []}), J, 422),
        ("lookup triggers a string", "think", "POST", "/think/lookup", _j({"triggers": "lamp"}), J, 422),
        ("lookup trigger a number", "think", "POST", "/think/lookup", _j({"triggers": [7]}), J, 422),
        ("lookup body too large", "think", "POST", "/think/lookup", _j({"triggers": ["x" * 500] * 200}), J, 413),
    ]
    # /direct/events: ts, content, categories, event counts (tests/test_serve_inputs.py's _bad_event_bodies has more)
    for label, raw in [("ts Infinity", b"Infinity"), ("ts -Infinity", b"-Infinity"), ("ts 1e20", b"1e20"),
                       ("ts far future", str(now + 30 * 86400).encode()), ("ts year 9999", b"253402214400")]:
        body = b'{"events": [{"user_id": 1, "type": "click", "content": "x", "ts": ' + raw + b"}]}"
        out.append((f"events {label}", "direct", "POST", "/direct/events", body, J, 422))
    out += [
        ("events content too long", "direct", "POST", "/direct/events",
         _j({"events": [{**ev, "content": "x" * 5000}]}), J, 422),
        ("events category too long", "direct", "POST", "/direct/events",
         _j({"events": [{**ev, "type": "click", "category": "c" * 5000}]}), J, 422),
        ("events thousands of categories in one event", "direct", "POST", "/direct/events",
         _j({"events": [{**ev, "type": "click", "category": [f"c{i}" for i in range(3000)]}]}), J, None),
        ("events thousands of categories, one per event", "direct", "POST", "/direct/events",
         _j({"events": [{**ev, "type": "click", "category": f"c{i}"} for i in range(3000)]}), J, 413),
        ("events one over max_events_per_request", "direct", "POST", "/direct/events",
         _j({"events": [{**ev, "content": f"lamp {i}"} for i in range(max_events + 1)]}), J, 413),
        ("events not a list", "direct", "POST", "/direct/events", _j({"events": ev}), J, 422),
        ("events an event that is a list", "direct", "POST", "/direct/events", _j({"events": [[1, "search"]]}), J,
         422),
    ]
    # path ids and paths
    for label, path in [("negative", "-1"), ("2^63", str(BIG)), ("20 digits", "9" * 20), ("5000 digits", "9" * 5000),
                        ("float", "1.5"), ("bool", "true"), ("string", "alice"), ("dot-dot", "%2e%2e"),
                        ("plus sign", "+1"), ("blank", "%201"), ("underscore", "1_000"), ("hex", "0x10"),
                        ("arabic digit", "%D9%A3"), ("dot-dot slash", "..%2Fstatus"),
                        ("dot-dot slash twice", "..%2F..%2F..%2Fhintq"), ("extra segment", "1/2")]:
        out.append((f"cache id {label}", "direct", "GET", f"/direct/cache/{path}", None, {}, None))
    for app in ("direct", "hintq", "think"):
        out += [(f"{app} status extra segment", app, "GET", f"/{app}/status/..%2F..%2Fdirect%2Fcache%2F1", None, {},
                 404),
                (f"{app} status POST", app, "POST", f"/{app}/status", b"{}", J, 405),
                (f"{app} healthz POST", app, "POST", f"/{app}/healthz", b"{}", J, 405),
                (f"{app} unknown path", app, "GET", f"/{app}/..%2Fetc%2Fpasswd", None, {}, 404)]
    # authentication: a missing, foreign or garbled bearer token on every endpoint that needs one → 401, before the
    # body is read (the valid body shows that nothing but the header is wrong); each case sets its own header
    need_token = [("hintq", "POST", "/hintq", _j({"user_id": 7})),
                  ("direct", "POST", "/direct/events", _j({"events": [ev]})),
                  ("direct", "GET", "/direct/cache/7", None),
                  ("think", "POST", "/think/lookup", _j({"triggers": ["lamp"]})),
                  ("think", "POST", "/think/generate", _j({"user_id": 7}))]
    need_token += [(app, "GET", f"/{app}/status", None) for app in ("direct", "hintq", "think")]
    for label, value in [("empty", ""), ("scheme only", "Bearer"), ("basic", "Basic dXNlcjpwYXNzd29yZA=="),
                         ("unknown token", "Bearer " + "0" * 43), ("token of 8 KB", "Bearer " + "x" * 8192),
                         ("token not ASCII", b"Bearer caf\xe9\xff\xfe")]:
        for app, method, path, body in need_token:
            headers = {**(J if body is not None else {}), "authorization": value}
            out.append((f"{method} {path} authorization {label}", app, method, path, body, headers, 401))
    return out


def valid_requests() -> list[Request]:
    """One or two valid requests per endpoint (the control: the apps answer 2xx with the run's tokens, before and
    after the malformed set). The events are clicks without a category: no signal, so no Direct generation; the
    ``/think/generate`` control runs the Think policy once (capped by ``serve.think_max_new_tokens``)."""
    click = {"events": [{"user_id": 7, "type": "click", "content": "oak desk"}]}
    return [
        ("hintq answer", "hintq", "POST", "/hintq", _j({"user_id": 7}), J, 200),
        ("hintq answer, slash, k 1", "hintq", "POST", "/hintq/", _j({"user_id": 7, "k": 1}), J, 200),
        ("hintq status", "hintq", "GET", "/hintq/status", None, {}, 200),
        ("hintq healthz", "hintq", "GET", "/hintq/healthz", None, {}, 200),
        ("direct events", "direct", "POST", "/direct/events", _j(click), J, 202),
        ("direct cache", "direct", "GET", "/direct/cache/7", None, {}, 200),
        ("direct status", "direct", "GET", "/direct/status", None, {}, 200),
        ("direct healthz", "direct", "GET", "/direct/healthz", None, {}, 200),
        ("think lookup", "think", "POST", "/think/lookup", _j({"triggers": ["q:oak desk", "lamp"]}), J, 200),
        ("think generate", "think", "POST", "/think/generate", _j({"user_id": 7}), J, 200),
        ("think status", "think", "GET", "/think/status", None, {}, 200),
        ("think healthz", "think", "GET", "/think/healthz", None, {}, 200),
    ]


# ---------------------------------------------------------------- routes, scopes, grouping


def route_prefixes(serve_yaml: Path = REPO / "configs" / "serve.yaml") -> dict[str, str]:
    import yaml

    return {a["name"]: a["route_prefix"] for a in yaml.safe_load(serve_yaml.read_text())["applications"]}


def app_routes(serve_yaml: Path = REPO / "configs" / "serve.yaml") -> list[tuple[str, str]]:
    """(method, full route template) of every endpoint the apps declare (FastAPI ``APIRoute``s under each app's
    ``route_prefix``; FastAPI's own /docs, /redoc, /openapi.json pages are left out), e.g. ``("GET",
    "/direct/cache/{user_id}")``; an app's root is its prefix without a slash (``("POST", "/hintq")``)."""
    from fastapi.routing import APIRoute

    prefixes = route_prefixes(serve_yaml)
    out = set()
    for name in APPS:
        app = importlib.import_module(f"serve_app.{name}").app
        for r in app.routes:
            if isinstance(r, APIRoute):
                path = (prefixes[name].rstrip("/") + r.path).rstrip("/") or "/"
                out |= {(m, path) for m in r.methods}
    return sorted(out)


def endpoint(method: str, path: str, routes: Iterable[tuple[str, str]]) -> str:
    """The per-endpoint table's key of a request: ``"<METHOD> <route template>"`` of the route whose path matches
    (trailing slash and query string ignored; a path under a template's ``{parameter}`` segment — any id, ``1/2``,
    ``..%2Fstatus`` — counts under that template), else ``"<METHOD> /<app>/*"``. The method is the request's, so a
    wrong method on a route's path (a 405) counts under its own key. Pure."""
    p = "/" + path.split("?", 1)[0].strip("/")
    templates = {t for _, t in routes}
    if p in templates:
        return f"{method} {p}"
    for t in sorted(templates, key=len, reverse=True):
        if "{" in t:
            prefix = t[:t.index("{")]
            if p.startswith(prefix) and len(p) > len(prefix):
                return f"{method} {t}"
    return f"{method} /{p.split('/')[1]}/*"


def uncovered(routes: Iterable[tuple[str, str]], requests: Iterable[Request], open_paths: Iterable[str] = ()) -> list[str]:
    """Routes (``"<METHOD> <template>"``) that no request of ``requests`` hits with their own method; a route in
    ``open_paths`` (an open GET without input, e.g. ``/x/healthz``: nothing of a request reaches it to be malformed)
    counts as hit by a request on its path with any method (a 405). Pure."""
    routes = list(routes)
    hit = {endpoint(m, p, routes) for _, _, m, p, *_ in requests}
    paths = {k.split(" ", 1)[1] for k in hit}
    open_paths = set(open_paths)
    return [f"{m} {t}" for m, t in routes if f"{m} {t}" not in hit and not (t in open_paths and t in paths)]


def open_routes(routes: Iterable[tuple[str, str]]) -> list[str]:
    """Templates of the GET routes without a path parameter that need no token (the apps' ``/healthz``)."""
    return [t for m, t in routes if m == "GET" and "{" not in t and scope_of(t.split("/")[1], m, t) is None]


def scope_of(app: str, method: str, path: str) -> str | None:
    """The token scope (read / write / admin, None = open) ``app``'s own :class:`~serve_app.auth.BearerAuth`
    asks of ``method path`` (a full, possibly percent-encoded path under the app's prefix ``/<app>``)."""
    from serve_app.auth import BearerAuth

    mod = importlib.import_module(f"serve_app.{app}")
    rule = next(m.kwargs["scope_of"] for m in mod.app.user_middleware if m.cls is BearerAuth)
    p, prefix = unquote(path.split("?", 1)[0]), f"/{app}"
    rel = p[len(prefix):] if p.startswith(prefix) else p
    return rule(method, "/" + rel.strip("/"))


def request_headers(app: str, method: str, path: str, headers: dict, tokens: dict[str, str]) -> dict:
    """``headers`` plus ``Authorization: Bearer <the token of the scope the endpoint needs>`` (``tokens``: scope →
    token); a case that sets its own Authorization header keeps it, an open endpoint gets none."""
    if any(k.lower() == "authorization" for k in headers):
        return dict(headers)
    need = scope_of(app, method, path)
    return {**headers, "Authorization": f"Bearer {tokens[need]}"} if need else dict(headers)


# ---------------------------------------------------------------- a raw HTTP/1.1 client


def raw_request(method: str, path: str, body: bytes | None, headers: dict, host: str) -> bytes:
    """The request's bytes as sent: ``headers`` as given (str values Latin-1, bytes as they are, a Content-Length
    among them kept even when it is wrong), else ``Content-Length`` of the body (0 for a POST without one, as
    httpx sends); ``Connection: close``. Pure."""
    def enc(v) -> bytes:
        return v if isinstance(v, bytes) else str(v).encode("latin-1")

    lines = [f"{method} {path} HTTP/1.1".encode("latin-1"), b"host: " + host.encode()]
    if not any(k.lower() == "content-length" for k in headers) and (body is not None or method in ("POST", "PUT")):
        lines.append(b"content-length: %d" % len(body or b""))
    lines += [enc(k) + b": " + enc(v) for k, v in headers.items()]
    lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


def parse_status(response: bytes) -> int | None:
    """The status code of a raw HTTP/1.x response (its first line), else None. Pure."""
    first = response.split(b"\r\n", 1)[0].split()
    if len(first) >= 2 and first[0].startswith(b"HTTP/") and first[1].isdigit() and len(first[1]) == 3:
        return int(first[1])
    return None


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes,
                   timeout: float) -> tuple[int | None, str]:
    """Send ``data`` and read the answer to EOF (``Connection: close``) or ``timeout`` → (status or None, what came
    back: the body's start, or why nothing did). Writing runs beside reading: a server may answer (413) and close
    before it has read a large body."""
    async def write() -> None:
        try:
            writer.write(data)
            await writer.drain()
        except OSError:
            pass

    w = asyncio.create_task(write())
    buf, why = b"", ""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                buf += chunk
    except TimeoutError:
        why = f"no end of answer in {timeout:.0f} s"
    except OSError as exc:
        why = type(exc).__name__
    finally:
        w.cancel()
        writer.close()
    status = parse_status(buf)
    shown = response_body(buf)[:200].decode("utf-8", "replace") if status else ""
    return status, shown or why or buf[:200].decode("utf-8", "replace") or "empty answer"


def response_body(response: bytes) -> bytes:
    """The body of a raw HTTP/1.x response, de-chunked when it is sent chunked (best effort: a cut-off answer gives
    what arrived). Pure."""
    head, _, body = response.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" not in head.lower():
        return body
    out = b""
    while body:
        size, _, rest = body.partition(b"\r\n")
        try:
            n = int(size.split(b";")[0], 16)
        except ValueError:
            break
        if n == 0:
            break
        out, body = out + rest[:n], rest[n + 2:]
    return out


async def send_all(host: str, port: int, cases: list[Request], tokens: dict[str, str], concurrency: int = 8,
                   timeout: float = 45.0) -> list[tuple[Request, int | None, str]]:
    """Every case on its own connection, ``concurrency`` at a time → [(case, status or None, what came back)]."""
    sem = asyncio.Semaphore(concurrency)

    async def one(case: Request) -> tuple[Request, int | None, str]:
        _, app, method, path, body, headers, _ = case
        data = raw_request(method, path, body, request_headers(app, method, path, headers, tokens), f"{host}:{port}")
        async with sem:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            except (OSError, TimeoutError) as exc:
                return case, None, f"connect: {type(exc).__name__}"
            status, shown = await exchange(reader, writer, data, timeout)
            return case, status, shown

    return list(await asyncio.gather(*(one(c) for c in cases)))


def tally(answers: Iterable[tuple[Request, int | None, str]], routes) -> dict[str, dict[str, int]]:
    """:func:`serve_common.count_statuses` keyed by :func:`endpoint` (no answer → ``other``), endpoints sorted."""
    counts = count_statuses((endpoint(c[2], c[3], routes), status or 0) for c, status, _ in answers)
    return {"all": counts.pop("all"), **dict(sorted(counts.items()))}


def off_expectation(answers: Iterable[tuple[Request, int | None, str]]) -> list[str]:
    """Cases answered otherwise than in process (the status a case names, or any 4xx): one line each."""
    out = []
    for (name, _, method, path, _, _, want), status, shown in answers:
        if status != want if want else not (status and 400 <= status < 500):
            out.append(f"  {name} ({method} {path[:60]}): {status or 'no answer'} (in process: {want or '4xx'}) "
                       f"{shown[:120]!r}")
    return out


# ---------------------------------------------------------------- the run


def write_config(tmp: Path, base: Path) -> Path:
    """A temporary AIGQ config over ``base`` (the policy's config): its own store, CTR folder and outputs, the
    wall clock, short generations, few triggered users, ``max_events_per_request`` = :data:`MAX_EVENTS`."""
    import yaml

    cfg_file = tmp / "aigq.yaml"
    cfg_file.write_text(yaml.safe_dump({
        "extends": str(base.resolve()), "run": {"output_dir": str(tmp / "out")}, "tracking": {"enabled": False},
        "ctr": {"dir": str(tmp / "ctr")},
        "serve": {"sqlite_path": str(tmp / "store.db"), "clock": "wall", "max_events_per_request": MAX_EVENTS,
                  "max_new_tokens": 16, "think_max_new_tokens": 16, "direct_samples": 0,
                  "max_triggered_users_per_request": 1, "max_pending_generations": 2}}))
    return cfg_file


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default="outputs/tiny/sft/policy",
                    help="policy folder the direct and think apps load (`make demo` trains the default)")
    ap.add_argument("--config", default="configs/tiny_cpu.yaml",
                    help="AIGQ config the run's temporary config extends (the policy's; default %(default)s)")
    ap.add_argument("--users", type=int, default=50, help="users in the store (default %(default)s)")
    ap.add_argument("--repeat", type=int, default=1, help="send the malformed set this many times (default 1)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=45.0,
                    help="seconds per request; above the proxy's request_timeout_s (30) (default %(default)s)")
    ap.add_argument("--no-append", action="store_true", help="print the RESULTS.md row only")
    a = ap.parse_args(argv)

    from serve_app import deploy as D

    try:
        policy = D.check_policy(str(REPO / a.policy) if not Path(a.policy).is_absolute() else a.policy)
    except D.RolloutError as exc:
        sys.exit(f"serve_fuzz: {exc}\n(`make demo` trains outputs/tiny/sft/policy; or pass --policy <folder>)")
    base = Path(a.config) if Path(a.config).is_absolute() else REPO / a.config
    if not base.is_file():
        sys.exit(f"serve_fuzz: no config {base}")

    from serve_app.auth import AuthPolicy

    routes = app_routes()
    cases = malformed_requests(time.time()) * a.repeat
    controls = valid_requests()
    missing = uncovered(routes, cases, open_routes(routes))
    tmp = Path(tempfile.mkdtemp(prefix="aigq-serve-fuzz-"))
    cfg_file = write_config(tmp, base)
    populate(cfg_file, a.users)
    tokens = {s: secrets.token_urlsafe(32) for s in ("admin", "read", "write")}  # this run's, one per scope
    port = free_port()

    import ray
    from ray import serve

    from aigq.ray_boot import init_ray

    init_ray(None, 2)  # a private local Ray (or $RAY_ADDRESS's cluster), Ray's token authentication on
    try:
        sc = D.load_serve_config(REPO / "configs/serve.yaml", root=REPO, config=str(cfg_file), port=port,
                                 apps=list(APPS))
        D.set_policy(sc, policy)
        D.set_auth(sc, AuthPolicy.from_tokens(True, tokens).to_args())
        for app in sc["applications"]:
            for dep in app.get("deployments", []):
                dep.pop("autoscaling_config", None)
                dep["num_replicas"] = 1  # the fuzz measures answers, not throughput: one replica each
        D.deploy(sc)
        D.wait_running(list(APPS), timeout_s=300)
        wait_http(f"http://127.0.0.1:{port}/hintq", headers={"Authorization": f"Bearer {tokens['read']}"})
        t0 = time.perf_counter()
        before = asyncio.run(send_all("127.0.0.1", port, controls, tokens, 1, a.timeout))
        fuzz = asyncio.run(send_all("127.0.0.1", port, cases, tokens, a.concurrency, a.timeout))
        after = asyncio.run(send_all("127.0.0.1", port, controls, tokens, 1, a.timeout))
        took = time.perf_counter() - t0
    finally:
        serve.shutdown()
        ray.shutdown()

    per = tally(fuzz, routes)
    ctl = tally(before + after, routes)
    total, ctl_total = per.pop("all"), ctl.pop("all")
    print(malformed_report({"serve": {"malformed": {"per_endpoint": per}}}))
    print(malformed_report({"control": {"malformed": {"per_endpoint": ctl}}}))
    print(f"{len(cases)} malformed requests in {took:.0f} s: 4xx {total['4xx']}, 5xx {total['5xx']}, "
          f"2xx {total['2xx']}, other {total['other']}; valid controls 2xx {ctl_total['2xx']} / {len(before + after)}")
    print(f"routes: {len(routes)}, without malformed cases: {', '.join(missing) or 'none'}")
    off = off_expectation(fuzz)
    if off:
        print(f"{len(off)} answered otherwise than in process (tests/test_serve_inputs.py):", *off[:40], sep="\n")
    bad_controls = [f"  {c[0]}: {s or 'no answer'} {shown[:120]!r}" for c, s, shown in before + after
                    if not (s and 200 <= s < 300)]
    if bad_controls:
        print("valid controls without a 2xx:", *bad_controls, sep="\n")
    row(len(routes), len(cases), total, ctl_total["2xx"], len(before + after), a)
    return 1 if total["5xx"] or total["other"] or bad_controls or missing else 0


def row(routes: int, n: int, total: dict[str, int], ok: int, n_controls: int, a) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=REPO).stdout.strip()
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    other = f" (+ {total['other']} without an answer, {total['2xx']} 2xx)" if total["other"] or total["2xx"] else ""
    line = (f"| {day} `{commit}` | Serve, 3 apps (1 replica each) | {routes} | {n} | {total['4xx']} | "
            f"{total['5xx']}{other} | {ok} / {n_controls} |")
    print(line)
    if a.no_append:
        return
    intro = f"""Command: `.venv/bin/python benchmarks/serve_fuzz.py`: the `direct`, `think` and `hintq` apps of
configs/serve.yaml deployed through Ray Serve on 127.0.0.1 (one replica per deployment, policy `{a.policy}`, a
SQLite store of {a.users} users), then every request of `malformed_requests` in benchmarks/serve_fuzz.py — the set
tests/test_serve_inputs.py checks in process: bad JSON, blank and missing bodies, wrong types, unknown fields,
duplicate keys, wrong / non-numeric / 5,000-digit Content-Length, oversized bodies, out-of-range ids, `k` and
timestamps, path ids with `..%2F`, 5,000 digits or non-ASCII digits, wrong methods, unknown paths, missing or
garbled bearer tokens — over a raw HTTP/1.1 socket, each with the token of its endpoint's scope; the valid
controls (every endpoint, before and after the malformed set) must all answer 2xx. `endpoints` = routes the apps
declare (every one has malformed cases: tests/test_serve_inputs.py checks it).

| date / commit | server | endpoints | malformed requests | 4xx | 5xx | valid controls 2xx |
|---|---|---|---|---|---|---|
"""
    path = BENCH / "RESULTS.md"
    path.write_text(append_rows(path.read_text(), HEAD, intro, [line]))


if __name__ == "__main__":
    sys.exit(main())
