"""Hostile inputs to the serving apps, in process (no Ray, no Serve): each app's own FastAPI ingress, called through
Starlette's TestClient with the scope Serve's proxy gives it (``root_path`` = the route prefix, the path in full),
the deployment instance injected where Serve's replica context would give it (every request with the admin bearer
token; authentication itself: tests/test_serve_auth.py). Issue 19 items 4, 6 and 7: a bad
``ts`` cannot poison a user, bad stored rows cannot 500 HintQ, ``/hintq`` answers without a trailing slash, and
every malformed ``/direct/events`` body gets a 4xx with a message; items 3 and 5: no ``/status`` shows the store's
password, one request cannot start unbounded generations, profiles hold only the prompt's fields, user keys
expire."""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from serve_helpers import ADMIN_TOKEN, READ_TOKEN, WRITE_TOKEN

REPO = Path(__file__).resolve().parents[1]


def _benchmark(name: str):
    """A script of benchmarks/ as a module (the folder is no package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# the malformed request set on every endpoint, shared with benchmarks/serve_fuzz.py (which sends it through Serve)
sf = _benchmark("serve_fuzz")
MAX_EVENTS = sf.MAX_EVENTS


@pytest.fixture
def apps(tmp_path, monkeypatch):
    """``client(name)`` → a TestClient on the ``direct``, ``hintq`` or ``think`` app with the admin bearer token
    (``serve_helpers.InProcessApps``); ``ctx`` is their AppContext."""
    from serve_helpers import InProcessApps

    a = InProcessApps(tmp_path, monkeypatch, {"max_events_per_request": MAX_EVENTS})
    yield a
    a.close()


# ---------------------------------------------------------------- item 6: /hintq and /hintq/


def test_hintq_answers_with_and_without_trailing_slash(apps):
    apps.ctx.records.write_fallback([("sofa", 1.0), ("area rug", 0.5), ("desk lamp", 0.4)], {})
    c = apps.client("hintq")
    for path in ("/hintq", "/hintq/"):
        # curl -s -X POST localhost:8000/hintq -d '{"user_id": 7}' (the README's example: a form content type)
        r = c.post(path, content=b'{"user_id": 7}', headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 200, (path, r.status_code, r.headers.get("location"), r.text)
        assert [s["query"] for s in r.json()["queries"]] == ["sofa", "area rug", "desk lamp"]
    assert c.get("/hintq/status").status_code == 200 and c.post("/hintq/nope", json={}).status_code in (404, 405)


@pytest.mark.parametrize("app,path,body", [
    ("direct", "/direct/events", {"events": [{"user_id": 1, "type": "search", "content": "lamp"}]}),
    ("think", "/think/lookup", {"triggers": ["lamp"]}),
])
def test_other_post_endpoints_answer_with_and_without_trailing_slash(apps, app, path, body):
    c = apps.client(app)
    for p in (path, path + "/"):
        r = c.post(p, json=body)
        assert 200 <= r.status_code < 300, (p, r.status_code, r.headers.get("location"), r.text)


# ---------------------------------------------------------------- items 4 and 7: /direct/events bodies


def _event(**kw):
    return {"user_id": 1, "type": "click", "content": "oak desk", **kw}


def _bad_event_bodies(now: float) -> list[tuple[str, bytes]]:
    day = 86400.0
    raw = [
        ("ts Infinity", b'{"events": [{"user_id": 1, "type": "search", "content": "x", "ts": Infinity}]}'),
        ("ts -Infinity", b'{"events": [{"user_id": 1, "type": "search", "content": "x", "ts": -Infinity}]}'),
        ("ts NaN", b'{"events": [{"user_id": 1, "type": "search", "content": "x", "ts": NaN}]}'),
        ("ts 1e400", b'{"events": [{"user_id": 1, "type": "search", "content": "x", "ts": 1e400}]}'),
        ("huge int user id", b'{"events": [{"user_id": ' + b"9" * 5000 + b', "type": "search", "content": "x"}]}'),
    ]
    bodies = [
        ("ts 1e20", [_event(ts=1e20)]),
        ("ts far future", [_event(ts=now + 365 * day)]),
        ("ts tomorrow", [_event(ts=now + day)]),
        ("ts before the history window", [_event(ts=now - 400 * day)]),
        ("ts epoch", [_event(ts=0.0)]),
        ("ts negative", [_event(ts=-5.0)]),
        ("ts string", [_event(ts="2024-01-01")]),
        ("ts bool", [_event(ts=True)]),
        ("user id bool", [_event(user_id=True)]),
        ("user id float", [_event(user_id=7.0)]),
        ("user id 2^63", [_event(user_id=2**63)]),
        ("user id negative", [_event(user_id=-1)]),
        ("user id null", [_event(user_id=None)]),
        ("content too long", [_event(content="x" * 513)]),
        ("content empty", [_event(content="   ")]),
        ("category too long", [_event(category="c" * 129)]),
        ("category not a string", [_event(category=["desks"])]),
        ("type unknown", [_event(type="teleport")]),
        ("too many events", [_event(content=f"desk {i}") for i in range(MAX_EVENTS + 1)]),
        ("no events", []),
        ("events not a list", {"user_id": 1}),
        ("unknown event field", [_event(price=3)]),
        ("profile not an object", [_event(profile="female")]),
        ("profile unknown field", [_event(profile={"gender": "Female", "ssn": "078-05-1120"})]),
        ("profile value too long", [_event(profile={"city": "x" * 10_000})]),
        ("profile age bool", [_event(profile={"age": True})]),
        ("profile nested", [_event(profile={"city": {"name": "Hangzhou"}})]),
    ]
    return raw + [(name, json.dumps({"events": evs}).encode()) for name, evs in bodies]


def test_malformed_event_bodies_get_4xx_with_message(apps):
    c = apps.client("direct")
    for name, body in _bad_event_bodies(time.time()):
        r = c.post("/direct/events", content=body, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:300])
        err = r.json()["error"]
        assert err and "Traceback" not in r.text, (name, r.text[:300])
        if name.startswith("ts"):
            assert r.status_code == 422 and "events.0.ts" in str(err), (name, err)
    assert apps.ctx.records.get_behaviours(1) == []  # nothing of a rejected request is stored
    assert apps.generated == []


def test_events_in_the_window_are_accepted(apps):
    c = apps.client("direct")
    now = time.time()
    evs = [_event(ts=now - 86400 * 20, content="old desk"), _event(ts=now + 30, type="search", content="lamp"),
           _event(ts=float(int(now)), content="chair"), _event(content="sofa")]  # ts an integer; no ts = now
    r = c.post("/direct/events", json={"events": evs})
    assert r.status_code == 202, r.text
    assert {b.content for b in apps.ctx.records.get_behaviours(1)} == {"lamp", "sofa", "chair", "old desk"}
    r = c.post("/direct/events", json={"events": [_event(ts=int(now) - 60)]})  # an int ts is a number of seconds
    assert r.status_code == 202, r.text


def test_a_bad_ts_does_not_poison_the_user(apps):
    """The issue's measurement: ``"ts": 1e20`` was answered 202, and every later /hintq for the user was a 500."""
    apps.ctx.records.write_fallback([("sofa", 1.0), ("area rug", 0.5), ("desk lamp", 0.4)], {})
    d, h = apps.client("direct"), apps.client("hintq")
    for ts in (1e20, 253402300800.0, time.time() + 10 * 86400):
        r = d.post("/direct/events", json={"events": [{"user_id": 7, "type": "search", "content": "x", "ts": ts}]})
        assert r.status_code == 422, (ts, r.status_code, r.text)
        assert h.post("/hintq/", json={"user_id": 7}).status_code == 200


# ---------------------------------------------------------------- item 4: bad rows already in the store


def test_bad_stored_behaviours_do_not_break_hintq_or_direct(apps):
    from serve_app.direct import user_prompt
    from serve_app.hintq import HintQCore

    rec, cfg = apps.ctx.records, apps.ctx.cfg
    now = time.time()
    rec.write_fallback([("sofa", 1.0), ("area rug", 0.5), ("desk lamp", 0.4)], {})
    rec.write_think_index("v1", {"q:garden hose": [("hose reel", 0.9)]}, {"day": 0})
    good = {"ts": now - 3600, "type": "search", "content": "garden hose", "category": None}
    bad = [json.dumps({**good, "ts": ts, "content": f"bad {i}"})
           for i, ts in enumerate([1e20, math.inf, -math.inf, math.nan, -1e20, 1e300, now + 3 * 365 * 86400])]
    bad += ["not json", "[1, 2]", json.dumps({"ts": now}), json.dumps({**good, "ts": "yesterday"}),
            json.dumps({**good, "ts": True, "content": "bool ts"})]
    rec.store.push("u:7:beh", json.dumps(good), 50)
    for row in bad:
        rec.store.push("u:7:beh", row, 50)  # newest first: every bad row is "newer" than the good one

    ctx, behs = rec.context(7, cfg.samples.history_days)
    assert [b.content for b in behs] == ["garden hose"] and [r[2] for r in ctx.behaviours] == ["garden hose"]
    out = HintQCore(rec, cfg, None).answer(7)
    assert {"query": "hose reel", "source": "think", "recall_score": 0.9, "score": 0.9} in out["queries"]
    assert "garden hose" in user_prompt(rec, 7, cfg.samples) and "bad" not in user_prompt(rec, 7, cfg.samples)
    r = apps.client("hintq").post("/hintq/", json={"user_id": 7})
    assert r.status_code == 200 and "hose reel" in {s["query"] for s in r.json()["queries"]}, r.text


def test_ts_window_follows_the_serving_clock(tmp_path):
    from datetime import date

    from serve_app.models import MAX_CLOCK_SKEW_S
    from serve_app.records import Records, day_start_ts
    from serve_app.store import SQLiteStore

    store = SQLiteStore(tmp_path / "s.db")
    wall = Records(store, clock="wall")
    lo, hi = wall.ts_window(30, MAX_CLOCK_SKEW_S)
    today = wall.today()
    assert lo == day_start_ts(date.fromordinal(today.toordinal() - 30))
    assert abs(hi - (time.time() + MAX_CLOCK_SKEW_S)) < 5
    world = Records(store, clock="world")
    world.set_serving_day(date(2024, 3, 10))  # a replayed world: the serving day's events carry its time of day
    assert world.ts_window(30, 60.0) == (day_start_ts(date(2024, 2, 9)), day_start_ts(date(2024, 3, 11)) + 60.0)
    store.close()


# ---------------------------------------------------------------- item 3: no status shows the store's password


def test_status_never_shows_the_store_password(apps):
    from serve_app.store import RedisStore

    redis_store = object.__new__(RedisStore)  # describe() only reads the URL: no server needed
    redis_store.url = "redis://aigq:s3cret@cache.internal:6380/0"
    for name in ("direct", "hintq", "think"):
        getattr(apps, name).ctx.store = redis_store
        r = apps.client(name).get(f"/{name}/status")
        assert r.status_code == 200, (name, r.text)
        assert "s3cret" not in r.text and r.json()["store"] == "redis:redis://aigq:***@cache.internal:6380/0", r.text


# ---------------------------------------------------------------- item 5: bounded growth and cost


def _searches(users, text="lamp"):
    return {"events": [{"user_id": u, "type": "search", "content": f"{text} {u}"} for u in users]}


def test_one_request_starts_at_most_the_capped_generations(apps):
    apps.ctx.cfg.serve.max_triggered_users_per_request = 2
    c = apps.client("direct")
    r = c.post("/direct/events", json=_searches(range(1, 6)))
    assert r.status_code == 202, r.text
    assert r.json()["triggered"] == [1, 2] and r.json()["deferred"] == 3 and r.json()["users"] == 5, r.text
    assert all(apps.ctx.records.get_behaviours(u) for u in range(1, 6))  # every user's events are stored
    # a deferred user's signal fires with their next event, even one that is no signal by itself
    r = c.post("/direct/events", json={"events": [_event(user_id=u, content="plain click") for u in (3, 4, 5)]})
    assert r.json()["triggered"] == [3, 4] and r.json()["deferred"] == 1, r.text
    assert c.get("/direct/status").json()["deferred"] == 4
    # under the caps the answer is as before: no deferred / dropped counts
    assert c.post("/direct/events", json=_searches([6])).json() == {"accepted": 1, "users": 1, "triggered": [6]}


def test_generations_beyond_the_budget_are_dropped_not_waited_for(apps):
    import threading

    release, seen = threading.Event(), []

    async def slow_generate(job):  # a generator that is busy until the test releases it
        import asyncio

        seen.append(job)
        while not release.is_set():
            await asyncio.sleep(0.01)

    apps.direct.generator = SimpleNamespace(generate=SimpleNamespace(remote=slow_generate))
    apps.ctx.cfg.serve.max_pending_generations = 2
    c = apps.client("direct")
    t0 = time.monotonic()
    r = c.post("/direct/events", json=_searches([1, 2, 3]))
    assert r.status_code == 202 and time.monotonic() - t0 < 5, r.text
    assert r.json()["triggered"] == [1, 2] and r.json()["dropped"] == 1, r.text
    r = c.post("/direct/events", json=_searches([4]))
    assert r.json()["triggered"] == [] and r.json()["dropped"] == 1, r.text
    st = c.get("/direct/status").json()
    assert st["pending"] == 2 and st["dropped"] == 2 and st["started"] == 2, st
    release.set()
    deadline = time.monotonic() + 10
    while c.get("/direct/status").json()["pending"] and time.monotonic() < deadline:
        time.sleep(0.05)
    r = c.post("/direct/events", json={"events": [_event(user_id=3, content="plain click")]})
    assert r.json()["triggered"] == [3], r.text  # the dropped signal was kept for the user's next event
    assert sorted(u for u, _ in seen) == [1, 2, 3]


def test_profile_holds_only_the_prompt_fields(apps):
    from aigq.data.prompt import PROFILE_FIELDS
    from serve_app.models import Profile

    assert set(Profile.model_fields) == {key for _, key in PROFILE_FIELDS}
    c = apps.client("direct")
    r = c.post("/direct/events", json={"events": [_event(profile={"gender": "Female", "ssn": "078-05-1120"})]})
    assert r.status_code == 422 and r.json()["error"] == ["events.0.profile.ssn: unknown field"], r.text
    r = c.post("/direct/events", json={"events": [_event(profile={"city": "x" * 65})]})
    assert r.status_code == 422 and "events.0.profile.city" in r.json()["error"][0], r.text
    assert apps.ctx.records.get_profile(1) is None
    profile = {"gender": "Female", "age": 31, "occupation": "Teacher", "city": "Hangzhou"}
    r = c.post("/direct/events", json={"events": [_event(profile=profile)]})
    assert r.status_code == 202 and apps.ctx.records.get_profile(1) == profile, r.text
    r = c.post("/direct/events", json={"events": [_event(profile={"age": "25-34"})]})  # latest wins, None left out
    assert r.status_code == 202 and apps.ctx.records.get_profile(1) == {"age": "25-34"}, r.text


def test_user_keys_written_by_events_expire(apps):
    c = apps.client("direct")
    r = c.post("/direct/events", json={"events": [_event(user_id=9, profile={"city": "Hangzhou"}, category="desks")]})
    assert r.status_code == 202, r.text
    con, ttl = apps.ctx.store._con(), apps.ctx.cfg.serve.user_ttl_s
    rows = con.execute("SELECT key, expires FROM kv WHERE key LIKE '%u:9:%' UNION ALL "
                       "SELECT key, expires FROM list_ttl WHERE key LIKE '%u:9:%'").fetchall()
    assert sorted(k.rsplit(":", 1)[1] for k, _ in rows) == ["beh", "profile", "signal"], rows
    assert all(e is not None and abs(e - (time.time() + ttl)) < 60 for _, e in rows), rows


def test_store_calls_never_block_the_event_loop(apps):
    """Issue 19 item 10: every blocking store call of a request handler runs on a worker thread, never on the
    replica's event loop (a slow SQLite write or Redis round trip would stall every other request of the replica)."""
    import asyncio

    on_loop: list[str] = []

    class Spy:
        def __init__(self, store):
            self._store = store

        def __getattr__(self, name):
            attr = getattr(self._store, name)
            if not callable(attr):
                return attr

            def call(*a, **kw):
                try:
                    asyncio.get_running_loop()
                    on_loop.append(name)
                except RuntimeError:
                    pass
                return attr(*a, **kw)
            return call

    apps.ctx.records.write_fallback([("sofa", 1.0)], {})
    for app in (apps.direct, apps.hintq, apps.think):
        app.ctx.records.store = Spy(app.ctx.records.store)
    d, h, t = apps.client("direct"), apps.client("hintq"), apps.client("think")
    assert d.post("/direct/events", json={"events": [{"user_id": 5, "type": "search", "content": "sofa"}]}
                  ).status_code == 202
    assert h.post("/hintq/", json={"user_id": 5}).status_code == 200
    assert d.get("/direct/cache/5").status_code == 200 and d.get("/direct/status").status_code == 200
    assert h.get("/hintq/status").status_code == 200 and t.get("/think/status").status_code == 200
    assert t.post("/think/lookup", json={"triggers": ["sofa"]}).status_code == 200
    assert apps.generated, "the events started a generation"
    assert on_loop == []


# ---------------------------------------------------------------- item 7: malformed requests on every endpoint

J = sf.J
BIG = sf.BIG
SCOPED = {"admin": ADMIN_TOKEN, "read": READ_TOKEN, "write": WRITE_TOKEN}


@pytest.mark.parametrize("tokens", [dict.fromkeys(SCOPED, ADMIN_TOKEN), SCOPED],
                         ids=["admin token", "each scope's token (as serve_fuzz sends)"])
def test_malformed_requests_on_every_endpoint_get_4xx_with_message(apps, tokens):
    """benchmarks/serve_fuzz.py's set, with the bearer token it sends (``request_headers``: the scope's token, the
    case's own Authorization header in the authentication cases): each gets the 4xx it names, with a message."""
    clients = {name: apps.client(name, token=None) for name in ("direct", "hintq", "think")}
    bad = []
    for name, app, method, path, body, headers, want in sf.malformed_requests(time.time()):
        r = clients[app].request(method, path, content=body,
                                 headers=sf.request_headers(app, method, path, headers, tokens))
        try:
            err = r.json()["error"]
        except (ValueError, KeyError, TypeError):
            err = None
        ok = (r.status_code == want if want else 400 <= r.status_code < 500) and err and "Traceback" not in r.text
        if not ok:
            bad.append((name, r.status_code, r.text[:200]))
    assert bad == [], "\n".join(map(str, bad))
    assert apps.ctx.records.get_behaviours(1) == [] and apps.generated == []  # nothing of it is stored or started


def test_duplicate_keys_are_rejected_and_distinct_objects_are_not(apps):
    """The decision: a JSON object naming a key twice is a 400 (not "last wins"), so no layer in front of the app
    can read another user id than the one served; the same key in two different objects is fine."""
    h, d = apps.client("hintq"), apps.client("direct")
    r = h.post("/hintq/", content=b'{"user_id": 7, "user_id": 8}', headers=J)
    assert r.status_code == 400 and "duplicate key 'user_id'" in r.json()["error"], r.text
    body = b'{"events": [{"user_id": 1, "type": "search", "content": "a"}, {"user_id": 2, "type": "search", ' \
           b'"content": "b"}]}'
    r = d.post("/direct/events", content=body, headers=J)
    assert r.status_code == 202 and r.json()["users"] == 2, r.text


def test_valid_requests_at_the_bounds_still_pass(apps):
    apps.ctx.records.write_fallback([("sofa", 1.0), ("area rug", 0.5), ("desk lamp", 0.4)], {})
    h, d, t = apps.client("hintq"), apps.client("direct"), apps.client("think")
    top = str(BIG - 1)
    for uid in ("0", "7", "007", top):
        r = d.get(f"/direct/cache/{uid}")
        assert r.status_code == 200 and r.json() == {"user_id": int(uid), "runs": []}, (uid, r.text)
    for body in ({"user_id": 0}, {"user_id": BIG - 1}, {"user_id": 7, "k": 1}, {"user_id": 7, "k": 10}):
        r = h.post("/hintq/", json=body)
        assert r.status_code == 200 and r.json()["user_id"] == body["user_id"], (body, r.text)
    assert len(h.post("/hintq/", json={"user_id": 7}).json()["queries"]) == apps.ctx.cfg.serve.hintq_k
    raw = b'{"user_id": 7}'
    assert h.post("/hintq/", content=raw, headers={**J, "content-length": str(len(raw))}).status_code == 200
    r = t.post("/think/lookup", json={"triggers": [f"t{i}" for i in range(100)] + [], "k": 100})
    assert r.status_code == 200, r.text
    assert t.post("/think/lookup", json={"triggers": ["q:lamp", "i:oak desk", "x" * 512], "k": 1}).status_code == 200
    evs = [{"user_id": BIG - 1, "type": "click", "content": "c" * 512, "category": "k" * 128}] * MAX_EVENTS
    r = d.post("/direct/events", json={"events": evs})
    assert r.status_code == 202 and r.json()["accepted"] == MAX_EVENTS, r.text
    for app in ("direct", "hintq", "think"):
        assert apps.client(app).get(f"/{app}/status").status_code == 200


def test_serve_load_counts_malformed_answers_per_endpoint(apps):
    """benchmarks/serve_load.py's malformed phase: its counting, and every body it sends gets a 4xx in process."""
    sl = _benchmark("serve_common")
    got = sl.count_statuses([("POST /hintq", 422), ("POST /hintq", 400), ("POST /hintq", 500),
                             ("POST /direct/events", 413), ("POST /direct/events", 202), ("GET /x", 307)])
    zero = dict.fromkeys(("2xx", "4xx", "5xx", "other"), 0)
    assert got == {"all": {**zero, "2xx": 1, "4xx": 3, "5xx": 1, "other": 1},
                   "POST /hintq": {**zero, "4xx": 2, "5xx": 1}, "POST /direct/events": {**zero, "2xx": 1, "4xx": 1},
                   "GET /x": {**zero, "other": 1}}
    report = sl.malformed_report({"serve": {"malformed": {"per_endpoint": {"POST /hintq": got["POST /hintq"]}}}})
    assert report == "serve POST /hintq: 4xx 2, 5xx 1, 2xx 0, other 0"
    h = apps.client("hintq")
    answers = [("POST /hintq", h.post("/hintq", content=body, headers=J).status_code) for body in sl.MALFORMED]
    assert sl.count_statuses(answers)["all"]["4xx"] == len(sl.MALFORMED), answers


# ---------------------------------------------------------------- benchmarks/serve_fuzz.py: coverage and counting


def test_fuzz_set_covers_every_route_of_the_three_apps():
    """Every route the apps declare (their FastAPI objects, under configs/serve.yaml's prefixes) has malformed cases
    with its own method and a valid control: a new endpoint without fuzz cases fails here."""
    routes = sf.app_routes()
    assert {("POST", "/hintq"), ("GET", "/hintq/status"), ("POST", "/direct/events"),
            ("GET", "/direct/cache/{user_id}"), ("POST", "/think/lookup"), ("POST", "/think/generate"),
            ("GET", "/think/healthz")} <= set(routes), routes
    cases = sf.malformed_requests(time.time())
    assert all(path.startswith(f"/{app}/") or path == f"/{app}" for _, app, _, path, *_ in cases)
    open_paths = sf.open_routes(routes)
    assert open_paths == ["/direct/healthz", "/hintq/healthz", "/think/healthz"]
    assert sf.uncovered(routes, cases, open_paths) == []
    # the open health checks take no input: a request on their path with another method (a 405) is their case
    assert sf.uncovered(routes, cases) == ["GET /direct/healthz", "GET /hintq/healthz", "GET /think/healthz"]
    assert sf.uncovered(routes, sf.valid_requests()) == []
    new = [("POST", "/think/explain"), ("GET", "/direct/runs/{run_id}")]
    assert sf.uncovered([*routes, *new], cases, open_paths) == ["POST /think/explain", "GET /direct/runs/{run_id}"]


def test_fuzz_counts_a_path_under_its_route_template():
    routes = [("POST", "/hintq"), ("GET", "/hintq/status"), ("POST", "/direct/events"),
              ("GET", "/direct/cache/{user_id}"), ("GET", "/direct/status")]

    def ep(method, path):
        return sf.endpoint(method, path, routes)

    assert ep("POST", "/hintq") == ep("POST", "/hintq/") == "POST /hintq"
    assert ep("POST", "/direct/events/") == "POST /direct/events"
    for p in ("/direct/cache/7", "/direct/cache/" + "9" * 5000, "/direct/cache/..%2Fstatus", "/direct/cache/1/2",
              "/direct/cache/%2e%2e", "/direct/cache/7?verbose=1"):
        assert ep("GET", p) == "GET /direct/cache/{user_id}", p
    assert ep("GET", "/direct/cache/") == "GET /direct/*"  # no id: not the route
    assert ep("GET", "/direct/status/..%2F..%2Fdirect%2Fcache%2F1") == "GET /direct/*"
    assert ep("GET", "/hintq/..%2Fetc%2Fpasswd") == "GET /hintq/*"
    assert ep("POST", "/hintq/status") == "POST /hintq/status"  # a wrong method counts under its own key

    def case(method, path):
        return ("name", "app", method, path, None, {}, None)

    answers = [(case("GET", "/direct/cache/1"), 200, ""), (case("GET", "/direct/cache/x"), 422, ""),
               (case("GET", "/direct/cache/1/2"), 404, ""), (case("POST", "/hintq/"), 500, ""),
               (case("POST", "/hintq"), None, "no end of answer in 45 s"), (case("GET", "/hintq/nope"), 404, "")]
    got = sf.tally(answers, routes)
    zero = dict.fromkeys(("2xx", "4xx", "5xx", "other"), 0)
    assert got == {"all": {"2xx": 1, "4xx": 3, "5xx": 1, "other": 1},
                   "GET /direct/cache/{user_id}": {**zero, "2xx": 1, "4xx": 2},
                   "GET /hintq/*": {**zero, "4xx": 1}, "POST /hintq": {**zero, "5xx": 1, "other": 1}}
    assert list(got) == ["all", "GET /direct/cache/{user_id}", "GET /hintq/*", "POST /hintq"]
    off = sf.off_expectation([(("a", "hintq", "POST", "/hintq", None, {}, 400), 408, "timed out"),
                              (("b", "hintq", "POST", "/hintq", None, {}, None), 422, ""),
                              (("c", "hintq", "POST", "/hintq", None, {}, None), None, "reset")])
    assert len(off) == 2 and "a (POST /hintq): 408 (in process: 400)" in off[0] and "c (" in off[1], off


def test_fuzz_sends_each_endpoint_the_token_of_its_scope():
    tokens = {"admin": "A", "read": "R", "write": "W"}

    def auth(app, method, path, headers=None):
        return sf.request_headers(app, method, path, headers or {}, tokens).get("Authorization")

    assert auth("hintq", "POST", "/hintq") == auth("hintq", "POST", "/hintq/") == "Bearer R"
    assert auth("direct", "POST", "/direct/events") == auth("direct", "POST", "/direct/events/") == "Bearer W"
    for app, method, path in [("hintq", "GET", "/hintq/status"), ("direct", "GET", "/direct/cache/7"),
                              ("direct", "GET", "/direct/cache/..%2Fstatus"), ("think", "POST", "/think/lookup"),
                              ("think", "POST", "/think/generate"), ("hintq", "POST", "/hintq/status")]:
        assert auth(app, method, path) == "Bearer A", path
    assert auth("think", "GET", "/think/healthz") is None  # open
    assert sf.request_headers("hintq", "POST", "/hintq", {"authorization": "Basic x"}, tokens) == \
        {"authorization": "Basic x"}  # an authentication case keeps its own header


def test_fuzz_raw_requests_go_out_byte_for_byte():
    data = sf.raw_request("POST", "/hintq/", b'{"user_id": 7}',
                          {**J, "content-length": b"\xb2", "Authorization": "Bearer t"}, "127.0.0.1:8000")
    assert data == (b"POST /hintq/ HTTP/1.1\r\nhost: 127.0.0.1:8000\r\ncontent-type: application/json\r\n"
                    b"content-length: \xb2\r\nAuthorization: Bearer t\r\nconnection: close\r\n\r\n"
                    b'{"user_id": 7}')
    assert b"\r\ncontent-length: 0\r\n" in sf.raw_request("POST", "/hintq", None, {}, "h")  # as httpx sends
    assert b"content-length" not in sf.raw_request("GET", "/direct/cache/..%2Fstatus", None, {}, "h")
    assert sf.raw_request("GET", "/direct/cache/..%2Fstatus", None, {}, "h").startswith(
        b"GET /direct/cache/..%2Fstatus HTTP/1.1\r\n")
    assert sf.parse_status(b"HTTP/1.1 422 Unprocessable Entity\r\ncontent-length: 2\r\n\r\n{}") == 422
    assert [sf.parse_status(x) for x in (b"", b"garbage", b"HTTP/1.1 4220 x\r\n", b"HTTP/1.1 abc\r\n")] == [None] * 4
    chunked = b"HTTP/1.1 408 Request Timeout\r\nTransfer-Encoding: chunked\r\n\r\n7\r\ntimed o\r\n3\r\nut.\r\n0\r\n\r\n"
    assert sf.response_body(chunked) == b"timed out."


def test_fuzz_reads_an_answer_sent_before_the_body_was_read():
    """A server may answer 413 and close before reading a large body: the client still gets the status."""
    import asyncio
    import socket

    async def run():
        a, b = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=a)
        peer_reader, peer_writer = await asyncio.open_connection(sock=b)

        async def peer():
            await peer_reader.readuntil(b"\r\n\r\n")
            peer_writer.write(b'HTTP/1.1 413 Content Too Large\r\ncontent-length: 13\r\n\r\n{"error": "x"}')
            await peer_writer.drain()
            peer_writer.close()

        task = asyncio.create_task(peer())
        data = sf.raw_request("POST", "/think/lookup", b"x" * 4_000_000, J, "h")
        out = await sf.exchange(reader, writer, data, 10)
        await task
        a2, b2 = socket.socketpair()
        r2, w2 = await asyncio.open_connection(sock=a2)
        b2.close()  # a peer that closes without an answer
        return out, await sf.exchange(r2, w2, b"GET / HTTP/1.1\r\n\r\n", 10)

    (status, shown), (none, why) = asyncio.run(run())
    assert status == 413 and shown.startswith('{"error"'), (status, shown)
    assert none is None and why, why


def test_fuzz_valid_controls_answer_2xx_in_process(apps):
    apps.ctx.records.write_fallback([("sofa", 1.0), ("area rug", 0.5), ("desk lamp", 0.4)], {})
    apps.think.holder = SimpleNamespace(current=SimpleNamespace(version="stub"), loads=1,  # answers at once
                                        generate=lambda prompts, n: ([SimpleNamespace(text="")], "stub"))
    clients = {name: apps.client(name, token=None) for name in ("direct", "hintq", "think")}
    for name, app, method, path, body, headers, want in sf.valid_requests():
        r = clients[app].request(method, path, content=body,
                                 headers=sf.request_headers(app, method, path, headers, SCOPED))
        assert r.status_code == want, (name, r.status_code, r.text[:300])
    assert apps.generated == []  # the events control starts no Direct generation


def test_results_rows_land_in_their_own_section():
    sl = _benchmark("serve_common")
    text = "# R\n\n## A\n\nintro\n\n| h |\n|---|\n| a1 |\n\nprose about A\n\n## B\n\n| h |\n|---|\n| b1 |\n"
    assert sl.append_rows(text, "## A", "unused", ["| a2 |"]) == \
        "# R\n\n## A\n\nintro\n\n| h |\n|---|\n| a1 |\n| a2 |\n\nprose about A\n\n## B\n\n| h |\n|---|\n| b1 |\n"
    assert sl.append_rows(text, "## B", "unused", ["| b2 |"]) == text + "| b2 |\n"
    assert sl.append_rows(text, "## C", "what C is\n\n| h |\n|---|\n", ["| c1 |"]) == \
        text + "\n## C\n\nwhat C is\n\n| h |\n|---|\n| c1 |\n"


def test_serve_load_script_loads_its_halves_and_profile_classifies_stacks():
    """benchmarks/serve_load.py is split in three (load generators in serve_common, --profile in serve_profile):
    loaded by path it still finds both, and the profile names a stack by its deepest matching frame."""
    sl = _benchmark("serve_load")
    assert sl.LEVERS["shipped"] == {} and sl.profile_pass.__module__ == "serve_profile"
    assert sl.variant({"name": "hintq", "args": {}, "deployments": [{"name": "HintQ"}]}, "x",
                      {"max_ongoing_requests": 8})["deployments"][0]["max_ongoing_requests"] == 8
    sp = _benchmark("serve_profile")
    root = "Worker.main_loop (ray/_private/worker.py:1)"
    assert sp.classify([root, "get (serve_app/store.py:9)", "f (torch/nn.py:3)"], sp.REPLICA_RULES) == \
        "CTR ranking (features + forward)"  # the deepest first-tier match wins
    assert sp.classify([root, "run (asyncio/events.py:1)", "route (fastapi/routing.py:2)"], sp.REPLICA_RULES) == \
        "FastAPI / Starlette routing + middleware"  # no first-tier frame: the deepest second-tier one
    assert sp.classify([root], sp.REPLICA_RULES) == "event loops / core worker (native, GIL held)"
