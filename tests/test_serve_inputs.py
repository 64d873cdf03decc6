"""Hostile inputs to the serving apps, in process (no Ray, no Serve): each app's own FastAPI ingress, called through
Starlette's TestClient with the scope Serve's proxy gives it (``root_path`` = the route prefix, the path in full),
the deployment instance injected where Serve's replica context would give it (every request with the admin bearer
token; authentication itself: tests/test_serve_auth.py). Issue 19 items 4, 6 and 7: a bad
``ts`` cannot poison a user, bad stored rows cannot 500 HintQ, ``/hintq`` answers without a trailing slash, and
every malformed ``/direct/events`` body gets a 4xx with a message; items 3 and 5: no ``/status`` shows the store's
password, one request cannot start unbounded generations, profiles hold only the prompt's fields, user keys
expire."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_EVENTS = 5


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
    from aigq.serve_app.direct import user_prompt
    from aigq.serve_app.hintq import HintQCore

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

    from aigq.serve_app.models import MAX_CLOCK_SKEW_S
    from aigq.serve_app.records import Records, day_start_ts
    from aigq.serve_app.store import SQLiteStore

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
    from aigq.serve_app.store import RedisStore

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
    from aigq.serve_app.models import Profile

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

J = {"content-type": "application/json"}
BIG = 2**63


def _j(obj) -> bytes:
    return json.dumps(obj).encode()


def _malformed_requests(now: float) -> list[tuple[str, str, str, str, bytes | None, dict, int | None]]:
    """(name, app, method, path, body, headers, expected status or None for any 4xx) on every endpoint."""
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
    # /direct/events: ts, content, categories, event counts (the item-4 bodies are in _bad_event_bodies)
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
         _j({"events": [{**ev, "content": f"lamp {i}"} for i in range(MAX_EVENTS + 1)]}), J, 413),
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
                (f"{app} unknown path", app, "GET", f"/{app}/..%2Fetc%2Fpasswd", None, {}, 404)]
    return out


def test_malformed_requests_on_every_endpoint_get_4xx_with_message(apps):
    clients = {name: apps.client(name) for name in ("direct", "hintq", "think")}
    bad = []
    for name, app, method, path, body, headers, want in _malformed_requests(time.time()):
        r = clients[app].request(method, path, content=body, headers=headers)
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
    import importlib.util

    spec = importlib.util.spec_from_file_location("serve_load", REPO / "benchmarks" / "serve_load.py")
    sl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sl)
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
