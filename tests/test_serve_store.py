"""One set of store tests, run against SQLite (WAL) and a real redis-server; plus the pure serving logic (the
Direct signal rule, the Eq. 19 index, the blocklist)."""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest
from serve_helpers import RedisServer

from aigq.config import ServeConfig
from serve_app.records import Behaviour, DirectRun, Records, trigger_key
from serve_app.store import RedisStore, SQLiteStore, StoreError


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    try:
        import redis  # noqa: F401
    except ModuleNotFoundError:
        pytest.skip("python package `redis` is not installed (pip install redis)")
    try:
        server = RedisServer(tmp_path_factory.mktemp("redis"))
    except FileNotFoundError as exc:
        pytest.skip(f"cannot run the Redis store tests: {exc}")
    yield server.url
    server.stop()


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = SQLiteStore(tmp_path / "s.db", prefix=f"t{time.monotonic_ns()}")
    else:
        s = RedisStore(request.getfixturevalue("redis_url"), prefix=f"t{time.monotonic_ns()}")
    yield s
    s.close()


def test_kv_roundtrip_and_ttl(store):
    assert store.get("a") is None and store.mget([]) == []
    store.set("a", "1")
    store.mset({"b": "2", "c": "ünïcode ✓"})
    assert store.mget(["a", "b", "c", "zz"]) == ["1", "2", "ünïcode ✓", None]
    store.set("short", "x", ttl=0.2)
    assert store.get("short") == "x"
    time.sleep(0.35)
    assert store.get("short") is None
    store.delete(["a"])
    assert store.get("a") is None and store.ping()


def test_lists_keep_newest_and_bulk_replace(store):
    for i in range(7):
        store.push("l", str(i), keep=3)
    assert store.lrange("l") == ["6", "5", "4"]
    store.set_lists({"l": ["z", "y"], "m": ["1"]})
    assert store.lrange("l") == ["z", "y"] and store.lrange("m") == ["1"]
    store.push("t", "x", keep=2, ttl=0.2)
    time.sleep(0.35)
    assert store.lrange("t") == []


def test_prefixes_are_isolated_and_delete_prefix(store):
    store.mset({"think:v1:a": "1", "think:v1:b": "2", "think:v10:a": "3", "other": "4"})
    store.push("think:v1:list", "x", keep=5)
    assert store.delete_prefix("think:v1:") >= 2
    assert store.mget(["think:v1:a", "think:v1:b", "think:v10:a", "other"]) == [None, None, "3", "4"]
    assert store.lrange("think:v1:list") == []


def test_records_direct_cache_think_index_fallback(store):
    rec = Records(store, history_kept=4, runs_kept=2, runs_ttl_s=3600, clock="wall")
    for i in range(3):
        rec.push_direct(9, DirectRun([f"q{i}"], f"v{i}", time.time() + i, "search"))
    assert [r.policy_version for r in rec.get_direct(9)] == ["v2", "v1"]
    rec.add_behaviours(9, [Behaviour(time.time() - 86400 * d, "search", f"b{d}") for d in range(6)])
    ctx, behs = rec.context(9)
    assert [b.content for b in behs] == ["b0", "b1", "b2", "b3"] and ctx.behaviours[1][0] == 1
    rec.write_think_index("d1", {"q:sofa": [("sofa bed", 0.9)]}, {"day": 1})
    rec.write_think_index("d2", {"q:lamp": [("desk lamp", 0.8)]}, {"day": 2})
    assert rec.think_version() == "d2" and rec.think_meta() == {"day": 2}
    assert rec.think_lookup(["q:sofa", "q:lamp"]) == {"q:lamp": [("desk lamp", 0.8)]}
    # the previous version stays one more cycle (a lookup that read think:current just before the switch still
    # finds its keys); the one before it is dropped
    assert store.get("think:d1:q:sofa") is not None
    rec.write_think_index("d3", {"q:rug": [("area rug", 0.7)]}, {"day": 3})
    assert store.get("think:d1:q:sofa") is None and store.get("think:d2:q:lamp") is not None
    assert rec.think_version() == "d3" and rec.think_lookup(["q:lamp", "q:rug"]) == {"q:rug": [("area rug", 0.7)]}
    rec.write_think_index("d3", {"q:rug": [("area rug", 0.6)]}, {"day": 3})  # rewriting the current version
    assert store.get("think:d2:q:lamp") is not None and rec.think_lookup(["q:rug"]) == {"q:rug": [("area rug", 0.6)]}
    rec.write_fallback([("sofa", 1.0)], {"Sofa": [("couch", 1.0)]})
    assert rec.popular() == [("sofa", 1.0)] and rec.coclick(["SOFA "]) == {"sofa": [("couch", 1.0)]}
    assert rec.generator_status() == {}  # nothing published yet
    rec.put_generator_status({"pid": 7, "policy_version": "v1", "loads": 1})
    rec.put_generator_status({"pid": 7, "policy_version": "v2", "loads": 2})
    assert rec.generator_status() == {"pid": 7, "policy_version": "v2", "loads": 2}


def _writer(path: str, worker: int, n: int) -> None:
    s = SQLiteStore(path, prefix="mp")
    for i in range(n):
        s.push("shared", f"{worker}-{i}", keep=1000)
        s.set(f"k{worker}-{i}", str(i))


def test_sqlite_concurrent_processes(tmp_path):
    path = str(tmp_path / "c.db")
    SQLiteStore(path, prefix="mp")
    procs = [mp.get_context("spawn").Process(target=_writer, args=(path, w, 100)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    s = SQLiteStore(path, prefix="mp")
    assert len(s.lrange("shared")) == 300 and s.get("k2-99") == "99"
    assert s._con().execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_unreachable_redis_is_a_clear_error():
    from serve_helpers import free_port

    with pytest.raises(StoreError, match="cannot reach Redis"):
        RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)


# ---------------------------------------------------------------- pure serving logic


class _E:
    def __init__(self, type, content="x", category=None):
        self.type, self.content, self.category = type, content, category


def test_signal_rule():
    from serve_app.direct import signal

    sc = ServeConfig(signal_new_category_events=2, signal_min_interval_s=60)
    reason, st = signal({}, [_E("click", category="lamps")], sc, now=1000)
    assert reason is None and st["pending"] == {"lamps": 1}
    reason, st = signal(st, [_E("click", category="lamps")], sc, now=1001)
    assert reason.startswith("2 events in new category lamps") and "lamps" in st["categories"]
    assert signal(st, [_E("search", "desk")], sc, now=1030)[0] is None  # within the interval
    reason, st2 = signal(st, [_E("search", "desk")], sc, now=1100)
    assert reason == "search" and st2["last_run"] == 1100  # the kind of signal, never the search text (issue 19)
    assert signal(st2, [_E("click", category="lamps")], sc, now=2000)[0] is None  # known category


def test_eq19_index_by_hand():
    from serve_app.think_index import build_index

    p1 = ("x\nUser Profile: { Gender: unknown }.\nUser Behavior Sequence: { <1><Today><search> Garden Hose;; "
          "<2><1_day_ago><click> teak bench }")
    runs = [(p1, "<think> r </think>\n1 => hose reel ; nozzle\n2,9 => cushion"), (p1, "1 => nozzle"), (p1, "junk")]
    index, stats = build_index(runs, ctr={"nozzle": 0.2, "hose reel": 0.6, "cushion": 0.4},
                               popularity={"nozzle": 9, "hose reel": 0}, alpha=0.5, ctr_weight=0.5, keep=5)
    hose = dict(index[trigger_key("search", "garden hose")])
    # S_rel: nozzle (1/2 + 1)/2 = 0.75, hose reel (1 + 0)/2 = 0.5; CTR_norm: nozzle 0, hose reel 1; pop_norm 1 / 0
    assert hose["nozzle"] == pytest.approx(0.5 * 0.75 + 0.5 * (0.5 * 0 + 0.5 * 1))
    assert hose["hose reel"] == pytest.approx(0.5 * 0.5 + 0.5 * (0.5 * 1 + 0.5 * 0))
    assert index["i:teak bench"] == [("cushion", pytest.approx(0.5 * 1 + 0.5 * 0.5 * 0.5))]
    assert stats["runs"] == 3 and stats["runs_with_triggers"] == 2 and stats["triggers"] == 2


def test_blocklist_matches_words_not_substrings():
    from serve_app.hintq import Blocklist

    b = Blocklist(["gun", "Bad Word"])
    assert b.blocked("toy GUN holster") and b.blocked("a  bad   word here")
    assert not b.blocked("gunmetal lamp") and not Blocklist([]).blocked("anything")


# ---------------------------------------------------------------- issue 19 item 3: credentials never shown


@pytest.mark.parametrize("url,shown", [
    ("redis://user:s3cret@cache.internal:6380/0", "redis://user:***@cache.internal:6380/0"),
    ("redis://:s3cret@cache.internal:6380/0", "redis://:***@cache.internal:6380/0"),
    ("rediss://default:s3%40cret@h/1?ssl_cert_reqs=none", "rediss://default:***@h/1?ssl_cert_reqs=none"),
    ("redis://u:s3c/r@et@h:1/0", "redis://u:***@h:1/0"),  # unescaped '/' and '@' in the password
    ("redis://h:6380/0?password=s3cret&db=1", "redis://h:6380/0?password=***&db=1"),
    ("unix://:s3cret@/run/redis.sock?db=0", "unix://:***@/run/redis.sock?db=0"),
    ("https://user:s3cret@mlflow.internal/", "https://user:***@mlflow.internal/"),
])
def test_redact_url_hides_passwords(url, shown):
    from serve_app.store import redact_url

    assert redact_url(url) == shown and "s3cret" not in redact_url(url)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6380/0", "redis://user@host/0", "sqlite:///a/b@c.db",
                                 "models:/aigq-policy@prod", "https://host/a:b@c", "outputs/tiny/sft/policy", "",
                                 "plain text: with a colon"])
def test_redact_url_leaves_urls_without_a_password_alone(url):
    from serve_app.store import redact_url

    assert redact_url(url) == url


def test_redis_store_with_a_password_never_shows_it(tmp_path):
    """A real redis-server that requires a password (an ACL user and the default user): the store connects with the
    URL, and neither its description (every app's /status) nor the error for a wrong password holds the secret."""
    try:
        import redis
    except ModuleNotFoundError:
        pytest.skip("python package `redis` is not installed (pip install redis)")
    try:
        server = RedisServer(tmp_path / "redis")
    except FileNotFoundError as exc:
        pytest.skip(f"cannot run the Redis store tests: {exc}")
    try:
        admin = redis.Redis.from_url(server.url)
        admin.execute_command("ACL", "SETUSER", "aigq", "on", ">s3cret", "~*", "+@all")
        admin.config_set("requirepass", "s3cret")
        for url in (f"redis://aigq:s3cret@127.0.0.1:{server.port}/0", f"redis://:s3cret@127.0.0.1:{server.port}/0"):
            s = RedisStore(url, prefix="pw")
            s.set("a", "1")
            assert s.get("a") == "1"
            assert "s3cret" not in s.describe() and ":***@127.0.0.1" in s.describe(), s.describe()
            s.close()
        with pytest.raises(StoreError) as err:
            RedisStore(f"redis://aigq:wr0ng-s3cret@127.0.0.1:{server.port}/0", timeout_s=2)
        assert "s3cret" not in str(err.value) and "aigq:***@" in str(err.value), str(err.value)
    finally:
        server.stop()


# ---------------------------------------------------------------- issue 19 item 5: user keys expire


def test_user_keys_expire(store):
    rec = Records(store, clock="wall", user_ttl_s=1.0)
    rec.put_profile(3, {"gender": "Female"})
    rec.add_behaviours(3, [Behaviour(time.time(), "search", "lamp")])
    rec.put_signal_state(3, {"categories": ["lamps"], "pending": {}, "last_run": 5.0})
    rec.load_users({4: {"city": "Hangzhou"}}, {4: [Behaviour(time.time(), "click", "rug")]})
    assert rec.get_profile(3) == {"gender": "Female"} and rec.get_signal_state(3)["last_run"] == 5.0
    assert [b.content for b in rec.get_behaviours(3)] == ["lamp"] and rec.get_profile(4) == {"city": "Hangzhou"}
    time.sleep(0.6)
    rec.touch_profile(3)  # an event without a profile keeps the stored one alive with the rest
    rec.add_behaviours(3, [Behaviour(time.time(), "search", "desk")])
    time.sleep(0.6)
    assert rec.get_profile(3) == {"gender": "Female"}
    assert [b.content for b in rec.get_behaviours(3)] == ["desk", "lamp"]
    assert rec.get_signal_state(3)["last_run"] == 0.0  # not written since: expired
    assert rec.get_profile(4) is None and rec.get_behaviours(4) == []  # the daily load's users expire too
    time.sleep(0.6)
    assert rec.get_profile(3) is None and rec.get_behaviours(3) == []


def test_a_list_written_after_it_expired_starts_empty(store):
    """Redis drops an expired key; SQLite kept the rows and showed them again once the list got a new TTL."""
    store.push("d:1", "old", keep=5, ttl=0.2)
    store.set_lists({"u:1:beh": ["old"]}, ttl=0.2)
    store.push("u:2:beh", "old", keep=5, ttl=0.2)
    time.sleep(0.35)
    store.push("d:1", "new", keep=5, ttl=60)
    store.set_lists({"u:1:beh": ["new"]})  # replaced without a TTL: readable, not expired
    store.expire("u:2:beh", 60)  # an expired list is gone, not revived
    assert store.lrange("d:1") == ["new"] and store.lrange("u:1:beh") == ["new"] and store.lrange("u:2:beh") == []


def test_sqlite_purges_expired_rows(tmp_path):
    s = SQLiteStore(tmp_path / "p.db")
    s.set("gone", "x", ttl=0.1)
    s.set("kept", "x", ttl=60)
    s.set("forever", "x")
    s.push("gone-list", "x", keep=3, ttl=0.1)
    s.push("kept-list", "x", keep=3, ttl=60)
    time.sleep(0.25)
    assert s.purge_expired() == 2
    con = s._con()
    assert sorted(r[0] for r in con.execute("SELECT key FROM kv")) == ["aigq:forever", "aigq:kept"]
    assert [r[0] for r in con.execute("SELECT DISTINCT key FROM lists")] == ["aigq:kept-list"]
    assert [r[0] for r in con.execute("SELECT key FROM list_ttl")] == ["aigq:kept-list"]
    s.close()


# ---------------------------------------------------------------- issue 19 item 5: bounded signal state


def test_signal_keeps_the_most_recent_categories():
    from serve_app.direct import signal

    sc = ServeConfig(signal_min_interval_s=0)
    state = {"categories": [f"c{i:03d}" for i in range(200)], "pending": {}, "last_run": 0.0}  # oldest first
    _, state = signal(state, [_E("click", category="c000")], sc, now=1)  # seen again: now the most recent
    reason, state = signal(state, [_E("click", category="a-new"), _E("click", category="a-new")], sc, now=2)
    assert reason == "2 events in new category a-new"
    cats = state["categories"]
    assert len(cats) == 200 and cats[-1] == "a-new" and "c000" in cats and "c001" not in cats, cats[:3] + cats[-3:]
    _, state = signal(state, [_E("search", "zz", category="aa-searched")], sc, now=3)
    assert state["categories"][-1] == "aa-searched" and "c002" not in state["categories"]


def test_signal_pending_categories_are_bounded():
    from serve_app.direct import signal

    sc = ServeConfig(signal_new_category_events=2, signal_min_interval_s=0)
    reason, state = signal({}, [_E("click", category=f"k{i}") for i in range(1000)], sc, now=1)
    assert reason is None and len(state["pending"]) == sc.signal_pending_kept == 32
    assert list(state["pending"])[-1] == "k999" and "k0" not in state["pending"]
    reason, state = signal(state, [_E("click", category="k999")], sc, now=2)  # the most recent pending one fires
    assert reason == "2 events in new category k999" and "k999" in state["categories"]


def test_a_deferred_signal_fires_with_the_next_events():
    from serve_app.direct import signal

    sc = ServeConfig(signal_min_interval_s=60)
    state = {"categories": [], "pending": {}, "last_run": 0.0, "deferred": "search: desk"}
    reason, state = signal(state, [_E("click", "oak desk")], sc, now=1000)
    assert reason == "search: desk" and state["last_run"] == 1000 and "deferred" not in state


def test_fallback_refresh_is_never_seen_half_done(store):
    """Issue 19 item 10: a HintQ read between the store calls of the daily fallback refresh sees the old co-search
    table or the new one, never neither (it used to delete the prefix, then write, in two transactions)."""
    Records(store).write_fallback([("sofa", 1.0)], {"sofa": [("couch", 1.0)], "lamp": [("desk lamp", 1.0)]})
    reader, seen = Records(store), []

    class Spy:  # the store as the refresh sees it: a reader looks in before each of its calls goes through
        def __getattr__(self, name):
            attr = getattr(store, name)
            if not callable(attr):
                return attr

            def call(*a, **kw):
                seen.append(reader.coclick(["sofa", "lamp"]))
                return attr(*a, **kw)
            return call

    Records(Spy()).write_fallback([("sofa", 1.0)], {"sofa": [("sofa bed", 0.9)]})
    old, new = {"sofa": [("couch", 1.0)], "lamp": [("desk lamp", 1.0)]}, {"sofa": [("sofa bed", 0.9)]}
    assert seen and all(s in (old, new) for s in seen), seen
    assert reader.coclick(["sofa", "lamp"]) == new  # "lamp" went with the old table
