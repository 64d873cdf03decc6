"""Service authentication of the Serve apps and raw behaviour text kept out of responses (issue 19 item 1), in
process (``serve_helpers.InProcessApps``: each app's own FastAPI ingress, no Ray): 401 without a token or with a
wrong one, 403 for a token without the endpoint's scope, 2xx with the right one, /healthz open; tokens from the
environment or a file, one created 0600 when none exists and never printed; the Serve config carries digests
only; the Direct cache's ``reason`` holds no search text. Through a real Serve deployment:
``tests/test_serve_apps.py::test_auth_through_serve``."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest
from serve_helpers import ADMIN_TOKEN, READ_TOKEN, WRITE_TOKEN, InProcessApps, bearer

SECRET = "pregnancy test discreet"  # a search a user would not want anyone to read back


@pytest.fixture
def apps(tmp_path, monkeypatch):
    a = InProcessApps(tmp_path, monkeypatch)
    a.ctx.records.write_fallback([("sofa", 1.0), ("area rug", 0.5), ("desk lamp", 0.4)], {})
    yield a
    a.close()


# (app, method, path, body, scope it needs)
ENDPOINTS = [
    ("hintq", "POST", "/hintq", {"user_id": 7}, "read"),
    ("hintq", "GET", "/hintq/status", None, "admin"),
    ("direct", "POST", "/direct/events", {"events": [{"user_id": 7, "type": "search", "content": "lamp"}]}, "write"),
    ("direct", "GET", "/direct/cache/7", None, "admin"),
    ("direct", "GET", "/direct/status", None, "admin"),
    ("think", "POST", "/think/lookup", {"triggers": ["lamp"]}, "admin"),
    ("think", "POST", "/think/generate", {"user_id": 7}, "admin"),
    ("think", "GET", "/think/status", None, "admin"),
]
TOKENS = {"read": READ_TOKEN, "write": WRITE_TOKEN, "admin": ADMIN_TOKEN}


def _call(c, method, path, body, headers=None):
    return c.request(method, path, json=body, headers=headers) if body is not None else \
        c.request(method, path, headers=headers)


@pytest.mark.parametrize("app,method,path,body,need", ENDPOINTS, ids=[f"{m} {p}" for _, m, p, _, _ in ENDPOINTS])
def test_no_token_or_a_wrong_one_gets_401(apps, app, method, path, body, need):
    c = apps.client(app, token=None)
    for headers in (None, bearer("not-the-token"), {"Authorization": f"Basic {ADMIN_TOKEN}"},
                    {"Authorization": "Bearer "}, bearer(ADMIN_TOKEN + "x"), bearer(ADMIN_TOKEN[:-1])):
        r = _call(c, method, path, body, headers)
        assert r.status_code == 401, (path, headers, r.status_code, r.text)
        assert r.json()["error"] and r.headers["www-authenticate"].startswith("Bearer"), r.text
    # with or without the trailing slash, before any parsing: a malformed body is a 401 too
    r = c.request(method, path + "/", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 401, r.text
    assert apps.ctx.records.get_behaviours(7) == [] and apps.generated == []  # nothing of it was stored or started


@pytest.mark.parametrize("app,method,path,body,need", ENDPOINTS, ids=[f"{m} {p}" for _, m, p, _, _ in ENDPOINTS])
def test_scopes(apps, app, method, path, body, need):
    """The read token answers HintQ only, the write token posts events only, the admin token does everything."""
    for scope, token in TOKENS.items():
        r = _call(apps.client(app, token=token), method, path, body)
        if scope == need or scope == "admin":
            assert r.status_code not in (401, 403), (scope, path, r.status_code, r.text)
        else:
            assert r.status_code == 403, (scope, path, r.status_code, r.text)
            assert need in r.json()["error"], r.text


def test_endpoint_answers_with_the_right_token(apps):
    r = apps.client("hintq", READ_TOKEN).post("/hintq", json={"user_id": 7})
    assert r.status_code == 200 and [s["query"] for s in r.json()["queries"]] == ["sofa", "area rug", "desk lamp"]
    r = apps.client("direct", WRITE_TOKEN).post("/direct/events", json={"events": [
        {"user_id": 7, "type": "search", "content": "lamp"}]})
    assert r.status_code == 202 and r.json()["triggered"] == [7], r.text
    assert apps.client("direct").get("/direct/status").status_code == 200


@pytest.mark.parametrize("app", ["hintq", "direct", "think"])
def test_healthz_stays_open(apps, app):
    c = apps.client(app, token=None)
    for path in (f"/{app}/healthz", f"/{app}/healthz/"):
        r = c.get(path)
        assert r.status_code == 200 and r.json() == {"status": "ok"}, (path, r.text)


def test_auth_off_opens_every_endpoint(tmp_path, monkeypatch):
    a = InProcessApps(tmp_path, monkeypatch, {"auth": {"enabled": False}})
    try:
        assert a.client("direct", token=None).get("/direct/status").status_code == 200
        assert a.client("hintq", token=None).post("/hintq", json={"user_id": 1}).status_code == 200
    finally:
        a.close()


def test_no_token_configured_refuses_everything_but_healthz(tmp_path, monkeypatch):
    a = InProcessApps(tmp_path, monkeypatch)
    for var in ("AIGQ_SERVE_TOKEN", "AIGQ_SERVE_READ_TOKEN", "AIGQ_SERVE_WRITE_TOKEN"):
        monkeypatch.delenv(var)
    from serve_app.common import app_context

    a.hintq.ctx = app_context({"config": str(tmp_path / "aigq.yaml")})  # no env, no token file → no token
    try:
        c = a.client("hintq", token="anything")
        r = c.post("/hintq", json={"user_id": 1})
        assert r.status_code == 401 and "no token configured" in r.json()["error"], r.text
        assert c.get("/hintq/healthz").status_code == 200
    finally:
        a.close()


# ---------------------------------------------------------------- raw behaviour text out of responses


def test_direct_cache_holds_no_raw_search_text(apps):
    from serve_app.records import DirectRun

    w = apps.client("direct", WRITE_TOKEN)
    r = w.post("/direct/events", json={"events": [{"user_id": 9, "type": "search", "content": SECRET}]})
    assert r.status_code == 202 and r.json()["triggered"] == [9], r.text
    assert apps.generated == [(9, "search")]  # the reason a run is stored with: the signal's kind, no text
    # a run stored before this change carried the first 60 characters of the search
    apps.ctx.records.push_direct(9, DirectRun(["oak desk"], "v1", time.time(), f"search: {SECRET}"))
    apps.ctx.records.push_direct(9, DirectRun(["lamp"], "v1", time.time(), "2 events in new category lamps"))
    r = apps.client("direct").get("/direct/cache/9")
    assert r.status_code == 200, r.text
    assert SECRET not in r.text and "pregnancy" not in r.text, r.text
    assert [run["reason"] for run in r.json()["runs"]] == ["2 events in new category lamps", "search"]
    # the deferred signal kept in the store for a user's next events holds no text either
    apps.ctx.cfg.serve.max_triggered_users_per_request = 1
    w.post("/direct/events", json={"events": [{"user_id": u, "type": "search", "content": SECRET} for u in (10, 11)]})
    assert SECRET not in json.dumps(apps.ctx.records.get_signal_state(11))


def test_think_trigger_text_needs_admin(apps):
    """A lookup answers whether a behaviour text is some user's trigger: admin only (read and write get 403)."""
    apps.ctx.records.write_think_index("v1", {"q:" + SECRET: [("discreet delivery", 0.9)]}, {"day": 0})
    for token in (READ_TOKEN, WRITE_TOKEN):
        r = apps.client("think", token).post("/think/lookup", json={"triggers": [SECRET]})
        assert r.status_code == 403 and "discreet delivery" not in r.text, r.text
    r = apps.client("think").post("/think/lookup", json={"triggers": [SECRET]})
    assert r.status_code == 200 and r.json()["results"][SECRET][0][0] == "discreet delivery", r.text


# ---------------------------------------------------------------- where tokens come from


def _auth_cfg(**kw):
    from aigq.config import load_config

    return load_config(None, [f"serve.auth.{k}={v}" for k, v in kw.items()]).serve.auth


def test_token_from_env_or_file_and_created_0600_when_missing(tmp_path, monkeypatch, capsys):
    from serve_app.auth import client_headers, resolve_tokens, setup_auth

    for var in ("AIGQ_SERVE_TOKEN", "AIGQ_SERVE_READ_TOKEN", "AIGQ_SERVE_WRITE_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    out, cfg = tmp_path / "out", _auth_cfg()
    assert resolve_tokens(cfg, out) == {"admin": None, "read": None, "write": None}
    with pytest.raises(RuntimeError, match="AIGQ_SERVE_TOKEN"):
        client_headers(cfg, out)
    a = setup_auth(cfg, out, tmp_path, create=True)  # what `aigq serve up` does
    path = out / "serve" / "auth_token"
    token = path.read_text().strip()
    assert a.created == path and len(token) >= 32 and token not in a.where and str(path) in a.where
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert a.policy.check(f"Bearer {token}", "admin") is None and a.policy.check("Bearer x", "read")[0] == 401
    assert token not in json.dumps(a.policy.to_args()) and token not in capsys.readouterr().out
    assert client_headers(cfg, out) == bearer(token)
    # a second `serve up` keeps the file; the environment wins over it
    assert setup_auth(cfg, out, tmp_path).created is None and path.read_text().strip() == token
    monkeypatch.setenv("AIGQ_SERVE_TOKEN", "from-the-env")
    b = setup_auth(cfg, out, tmp_path)
    assert b.where == "$AIGQ_SERVE_TOKEN" and b.policy.check("Bearer from-the-env", "admin") is None
    assert b.policy.check(f"Bearer {token}", "admin")[0] == 401
    # a read token from its own file: the client of HintQ uses it, the admin token is the fallback
    (tmp_path / "read.tok").write_text("\n  reader-token  \n")
    cfg = _auth_cfg(read_token_file="read.tok")
    assert client_headers(cfg, out, "read", tmp_path) == bearer("reader-token")
    assert client_headers(cfg, out, "write", tmp_path) == bearer("from-the-env")
    assert _auth_cfg(enabled="false").enabled is False and client_headers(_auth_cfg(enabled="false"), out) == {}


def test_serve_config_carries_digests_never_tokens(tmp_path):
    from serve_app import deploy as D
    from serve_app.auth import AuthPolicy
    from serve_app.common import app_context

    sc = D.load_serve_config(Path(__file__).resolve().parents[1] / "configs/serve.yaml")
    policy = AuthPolicy.from_tokens(True, {"admin": ADMIN_TOKEN, "read": READ_TOKEN})
    D.set_auth(sc, policy.to_args())
    text = json.dumps(sc)
    assert ADMIN_TOKEN not in text and READ_TOKEN not in text
    args = {**sc["applications"][0]["args"], "config": None, "overrides": [f"run.output_dir={tmp_path}",
                                                                           "tracking.enabled=false"]}
    ctx = app_context(args)  # a replica: accepts what the digests say, reads no env or file
    assert ctx.auth.check(f"Bearer {READ_TOKEN}", "read") is None
    assert ctx.auth.check(f"Bearer {READ_TOKEN}", "admin")[0] == 403
    assert ctx.auth.check(f"Bearer {ADMIN_TOKEN}", "write") is None
    ctx.store.close()


def test_token_comparison_is_constant_time(monkeypatch):
    import hmac

    from serve_app import auth

    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    policy = auth.AuthPolicy.from_tokens(True, {"admin": ADMIN_TOKEN, "read": READ_TOKEN, "write": WRITE_TOKEN})
    assert policy.check(f"Bearer {READ_TOKEN}", "read") is None
    assert len(calls) == 3 and all(len(a) == len(b) == 64 for a, b in calls)  # every digest, compared digest-wise


def test_daily_loop_deployment_sends_its_token_and_gives_the_apps_digests(tmp_path, monkeypatch):
    """``aigq loop`` with ``loop.serve=true`` (``ServeDeployment``): the arm's admin token is created when missing, the
    apps get its digest, and every HintQ request carries it (no Ray needed to check the wiring)."""
    from aigq.config import load_config
    from aigq.loop.deploy import ServeDeployment

    for var in ("AIGQ_SERVE_TOKEN", "AIGQ_SERVE_READ_TOKEN", "AIGQ_SERVE_WRITE_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    cfg = load_config(None, [f"run.output_dir={tmp_path / 'arm'}", "tracking.enabled=false"])
    dep = ServeDeployment(cfg, None, [], serve_yaml=Path(__file__).resolve().parents[1] / "configs/serve.yaml")
    try:
        token = (tmp_path / "arm" / "serve" / "auth_token").read_text().strip()
        assert dep.headers == bearer(token) and token not in json.dumps(dep.sc)
        from serve_app.auth import AuthPolicy

        for app in dep.sc["applications"]:
            assert AuthPolicy.from_args(app["args"]["auth"]).check(f"Bearer {token}", "admin") is None
        sent = []

        class _R:
            status_code = 200

            @staticmethod
            def json():
                return {"queries": [{"query": "sofa", "source": "popular"}]}

        import requests

        monkeypatch.setattr(requests, "post", lambda url, **kw: sent.append(kw["headers"]) or _R())
        assert dep.answer([1, 2]).height == 2 and sent == [bearer(token)] * 2
    finally:
        dep.records.store.close()
