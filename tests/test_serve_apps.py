"""The three Serve applications on a local Ray cluster, deployed from configs/serve.yaml once for the module:
events → Direct cache → HintQ; Think index lookups; cold-start fallback; 429 under overload; bad requests → 4xx;
hot policy rollout under load without failed requests."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml
from serve_helpers import ADMIN_TOKEN, READ_TOKEN, WRITE_TOKEN, bearer

from serve_app import deploy as D

REPO = Path(__file__).resolve().parents[1]


def post(url, headers=None, token=ADMIN_TOKEN, **kw):
    """``requests.post`` with the apps' admin bearer token (serve.auth); ``token=None`` sends none."""
    return requests.post(url, headers={**(bearer(token) if token else {}), **(headers or {})}, **kw)


def get(url, headers=None, token=ADMIN_TOKEN, **kw):
    return requests.get(url, headers={**(bearer(token) if token else {}), **(headers or {})}, **kw)


def _perturbed_copy(src: Path, dst: Path) -> Path:
    """Policy version 2: the same architecture with different weights."""
    import torch

    from aigq.models.factory import load_policy

    model, tok = load_policy(src)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    model.save_pretrained(dst)
    tok.save_pretrained(dst)
    return dst


@pytest.fixture(scope="module")
def served(ray_local, tiny_policy, tmp_path_factory):
    from ray import serve
    from serve_helpers import free_port

    from aigq.config import CTRConfig
    from aigq.rewards.ctr import CTRModel, save_model
    from serve_app.common import app_context

    tmp = tmp_path_factory.mktemp("serve")
    v1, _ = tiny_policy(tmp / "policy-v1", False)
    v2 = _perturbed_copy(v1, tmp / "policy-v2")
    cc = CTRConfig(hash_buckets=4096, dim=8, hidden=16)
    save_model(CTRModel(cc.hash_buckets, cc.dim, cc.hidden, cc.history_len), cc, tmp / "ctr" / "day-001")
    cfg_file = tmp / "aigq.yaml"
    cfg_file.write_text(yaml.safe_dump({
        "run": {"output_dir": str(tmp / "out")}, "tracking": {"enabled": False}, "ctr": {"dir": str(tmp / "ctr")},
        "serve": {"sqlite_path": str(tmp / "store.db"), "signal_min_interval_s": 0, "max_new_tokens": 24,
                  "clock": "wall", "blocklist": ["forbidden thing"], "max_body_bytes": 4096}}))
    port = free_port()
    cfg = D.load_serve_config(REPO / "configs/serve.yaml", root=REPO, config=str(cfg_file), port=port)
    D.set_policy(cfg, str(v1))
    tight = json.loads(json.dumps(next(a for a in cfg["applications"] if a["name"] == "hintq")))
    tight.update(name="hintq_tight", route_prefix="/hintq_tight")
    tight["deployments"][0].update(max_ongoing_requests=1, max_queued_requests=1, autoscaling_config=None,
                                   num_replicas=1)
    cfg["applications"].append(tight)
    from serve_app.auth import AuthPolicy

    D.set_auth(cfg, AuthPolicy.from_tokens(True, {"admin": ADMIN_TOKEN, "read": READ_TOKEN,
                                                  "write": WRITE_TOKEN}).to_args())
    D.deploy(cfg)
    D.wait_running(timeout_s=240)
    ctx = app_context({"config": str(cfg_file), "root": str(REPO)})
    yield {"url": f"http://127.0.0.1:{port}", "cfg": cfg, "v1": v1, "v2": v2, "records": ctx.records}
    serve.shutdown()


def _generator(url, version_prefix=""):
    """/direct/status's generator part once its policy version starts with ``version_prefix``; else None."""
    r = get(f"{url}/direct/status", timeout=10)
    assert r.status_code == 200, r.text  # never a 5xx or a hang, even with the generator's queue full
    g = r.json()["generator"]
    return g if (g.get("policy_version") or "").startswith(version_prefix) else None


def _wait(fn, timeout=60.0, every=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = fn()
        if out:
            return out
        time.sleep(every)
    raise AssertionError("condition not met in time")


def test_events_fill_direct_cache_and_hintq_serves_it(served):
    url = served["url"]
    ev = [{"user_id": 101, "type": "click", "content": "oak writing desk", "category": "desks",
           "profile": {"gender": "Female", "age": 31}},
          {"user_id": 101, "type": "search", "content": "standing desk"}]
    t0 = time.perf_counter()
    r = post(f"{url}/direct/events", json={"events": ev}, timeout=30)
    assert r.status_code == 202, r.text
    assert time.perf_counter() - t0 < 5  # returns before the generation is done
    assert r.json() == {"accepted": 2, "users": 1, "triggered": [101]}
    runs = _wait(lambda: get(f"{url}/direct/cache/101", timeout=10).json()["runs"])
    assert runs[0]["policy_version"].startswith("policy-v1@") and runs[0]["reason"] == "search"
    assert runs[0]["queries"], runs
    h = post(f"{url}/hintq", json={"user_id": 101}, timeout=30)
    assert h.status_code == 200, h.text
    body = h.json()
    assert body["ranker"] == "ctr" and 1 <= len(body["queries"]) <= 3
    assert body["fallback"] == (len({q.strip().casefold() for q in runs[0]["queries"]}) < 3)
    direct = {q.strip().casefold() for q in runs[0]["queries"]}
    got = [s for s in body["queries"] if s["source"] == "direct"]
    assert got and all(s["query"].casefold() in direct and 0 < s["score"] < 1 for s in got)


def test_cache_keeps_last_m_runs(served):
    url = served["url"]
    before = (_generator(url) or {}).get("generated", 0)
    for i in range(5):
        r = post(f"{url}/direct/events",
                 json={"events": [{"user_id": 202, "type": "search", "content": f"lamp {i}"}]}, timeout=30)
        assert r.status_code == 202 and r.json()["triggered"] == [202], r.text
    _wait(lambda: (_generator(url) or {}).get("generated", 0) >= before + 5, timeout=90)  # all 5 runs generated
    runs = get(f"{url}/direct/cache/202", timeout=10).json()["runs"]
    assert len(runs) == 3 and [r["ts"] for r in runs] == sorted([r["ts"] for r in runs], reverse=True)
    assert all(r["reason"] == "search" for r in runs)  # the signal's kind: no search text (issue 19)


def test_think_index_lookup_and_hintq_think_channel(served):
    from serve_app.think_index import build_index

    rec, url = served["records"], served["url"]
    prompt = ("Please Recommend the next 10 queries.\nUser Profile: { Gender: Male, Age: 40, Occupation: unknown, "
              "City: unknown }.\nUser Behavior Sequence: { <1><Today><search> garden hose;; <2><1_day_ago><click> "
              "Teak bench }")
    index, _ = build_index([(prompt, "1 => hose reel ; garden nozzle\n2 => outdoor cushion")], None,
                           {"hose reel": 5}, 0.7, 0.5, 10)
    rec.write_think_index("test-1", index, {"day": 0})
    r = post(f"{url}/think/lookup", json={"triggers": ["garden hose", "i:teak bench"]}, timeout=10)
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["version"] == "test-1"
    assert [q for q, _ in res["results"]["garden hose"]] == ["hose reel", "garden nozzle"]
    assert [q for q, _ in res["results"]["i:teak bench"]] == ["outdoor cushion"]
    # a user whose latest behaviour is that search gets the Think channel
    rec.add_behaviours(303, [__import__("serve_app.records", fromlist=["Behaviour"]).Behaviour(
        time.time(), "search", "Garden  Hose")])
    body = post(f"{url}/hintq", json={"user_id": 303, "k": 2}, timeout=10).json()
    assert {s["query"] for s in body["queries"]} == {"hose reel", "garden nozzle"}
    assert {s["source"] for s in body["queries"]} == {"think"}


def test_cold_start_user_gets_fallback_and_blocklist_applies(served):
    rec, url = served["records"], served["url"]
    rec.write_fallback([("sofa", 1.0), ("forbidden thing", 0.9), ("area rug", 0.5), ("desk lamp", 0.4)], {})
    body = post(f"{url}/hintq", json={"user_id": 987654321}, timeout=10).json()
    assert body["fallback"] is True and len(body["queries"]) == 3
    assert {s["source"] for s in body["queries"]} == {"popular"}
    assert "forbidden thing" not in {s["query"] for s in body["queries"]}


BAD = [
    (b"{not json", "application/json", 400),
    (b'{"user_id": 1', "application/json", 400),
    (b"\xff\xfe\x00garbage", "application/json", 400),
    (b"", "application/json", 400),
    (b"[1, 2]", "application/json", 422),
    (b"{}", "application/json", 422),
    (b'{"user_id": "7"}', "application/json", 422),
    (b'{"user_id": -3}', "application/json", 422),
    (b'{"user_id": 7, "k": 99}', "application/json", 422),
    (b'{"user_id": 7, "extra": true}', "application/json", 422),
    (b'{"user_id": 1e400}', "application/json", 422),
    (b'{"user_id": ' + b"[" * 5000 + b"]" * 5000 + b"}", "text/plain", 413),
    (b'{"user_id": 1, "pad": "' + b"x" * 10_000 + b'"}', "application/json", 413),
]


@pytest.mark.parametrize("path", ["/hintq", "/direct/events", "/think/lookup", "/think/generate"])
def test_bad_requests_get_4xx_with_message(served, path):
    for body, ctype, code in BAD:
        r = post(served["url"] + path, data=body, headers={"content-type": ctype}, timeout=10)
        assert 400 <= r.status_code < 500, (path, body[:40], r.status_code, r.text[:200])
        if path == "/hintq":
            assert r.status_code == code, (body[:40], r.status_code, r.text[:200])
        assert "error" in r.json() and "Traceback" not in r.text
    r = post(served["url"] + "/direct/events", json={"events": [{"user_id": 1, "type": "teleport",
                                                                           "content": "x"}]}, timeout=10)
    assert r.status_code == 422 and "events.0.type" in r.json()["error"][0]
    assert get(served["url"] + "/hintq/nope", timeout=10).status_code == 404


def test_documented_hintq_call_and_bad_ts_through_serve(served):
    """README: ``curl -s -X POST localhost:8000/hintq -H "Authorization: Bearer $TOKEN" -d '{"user_id": 7}'`` — no
    trailing slash, a form content type, and curl does not follow a redirect; and a ``ts`` that used to poison the
    user is a 422 (issue 19)."""
    url = served["url"]
    for path in ("/hintq", "/hintq/"):
        r = post(url + path, data=b'{"user_id": 7}', allow_redirects=False,
                          headers={"content-type": "application/x-www-form-urlencoded"}, timeout=10)
        assert r.status_code == 200 and "queries" in r.json(), (path, r.status_code, r.text)
    r = post(f"{url}/direct/events/", allow_redirects=False, timeout=10,
                      json={"events": [{"user_id": 7, "type": "search", "content": "x", "ts": 1e20}]})
    assert r.status_code == 422 and "events.0.ts" in r.json()["error"][0], r.text
    assert post(f"{url}/hintq", json={"user_id": 7}, allow_redirects=False, timeout=10).status_code == 200


def test_auth_through_serve(served):
    """Issue 19 item 1 through Serve's proxy and replicas (the token check runs in the replica, from the digests
    ``D.set_auth`` put in the apps' args): 401 without a token or with a wrong one, 403 without the scope, 2xx with
    it, /healthz open; the Direct cache shows no search text."""
    url = served["url"]
    for path, body in (("/hintq", {"user_id": 7}), ("/direct/events", {"events": [
            {"user_id": 404, "type": "search", "content": "secret search"}]}), ("/think/lookup", {"triggers": ["x"]})):
        for token in (None, "wrong-token"):
            r = post(url + path, json=body, token=token, timeout=10)
            assert r.status_code == 401 and r.json()["error"] and "Bearer" in r.headers["www-authenticate"], r.text
    assert served["records"].get_behaviours(404) == []
    for path in ("/direct/status", "/direct/cache/101", "/hintq/status", "/think/status"):
        assert get(url + path, token=None, timeout=10).status_code == 401, path
        assert get(url + path, token=READ_TOKEN, timeout=10).status_code == 403, path
        assert get(url + path, token=WRITE_TOKEN, timeout=10).status_code == 403, path
    assert post(f"{url}/hintq", json={"user_id": 7}, token=READ_TOKEN, timeout=10).status_code == 200
    assert post(f"{url}/hintq", json={"user_id": 7}, token=WRITE_TOKEN, timeout=10).status_code == 403
    r = post(f"{url}/direct/events", json={"events": [{"user_id": 404, "type": "search", "content": "secret search"}]},
             token=WRITE_TOKEN, timeout=10)
    assert r.status_code == 202, r.text
    for app in ("hintq", "direct", "think"):
        assert get(f"{url}/{app}/healthz", token=None, timeout=10).json() == {"status": "ok"}
    runs = _wait(lambda: get(f"{url}/direct/cache/404", timeout=10).json()["runs"])
    assert "secret" not in json.dumps(runs) and runs[0]["reason"] == "search", runs


def test_overload_gets_429(served):
    url = served["url"] + "/hintq_tight"

    def call(i):
        return post(url, json={"user_id": i}, timeout=30)

    with ThreadPoolExecutor(48) as pool:
        codes = [r.status_code for r in pool.map(call, range(96))]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(429) > 0 and codes.count(200) > 0
    r = next(r for r in ThreadPoolExecutor(48).map(call, range(96)) if r.status_code == 429)
    assert "backpressure" in r.text.lower() and r.headers.get("retry-after") == "1"


def test_hot_policy_rollout_under_load(served):
    url, cfg = served["url"], json.loads(json.dumps(served["cfg"]))
    before = _wait(lambda: _generator(url))
    think_before = get(f"{url}/think/status", timeout=10).json()
    stop, codes, lock = threading.Event(), [], threading.Lock()

    def load(i):
        n = 0
        while not stop.is_set():
            if i % 2:
                r = post(f"{url}/hintq", json={"user_id": 101}, timeout=30)
            else:
                r = post(f"{url}/direct/events",
                                  json={"events": [{"user_id": 500 + i, "type": "search", "content": f"rug {n}"}]},
                                  timeout=30)
            n += 1
            with lock:
                codes.append(r.status_code)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    _generator(url)  # answers while the load fills the generator's queue
    D.set_policy(cfg, str(served["v2"]))
    D.deploy(cfg)
    after = _wait(lambda: _generator(url, "policy-v2@"), timeout=120)
    _wait(lambda: get(f"{url}/think/status", timeout=10).json()["policy_version"].startswith("policy-v2@"),
          timeout=120)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    assert len(codes) > 20 and set(codes) <= {200, 202}, sorted(set(codes))
    assert after["pid"] == before["pid"] and after["loads"] == before["loads"] + 1  # reconfigured, not restarted
    assert get(f"{url}/think/status", timeout=10).json()["pid"] == think_before["pid"]
    # the load filled the generator's queue (max_queued_requests: Serve drops what does not fit, by design); a
    # probe event posted before the queue drains is dropped too, so wait for the backlog first
    def drained():  # pending = the ingress's nearline tasks still waiting for the generator
        return get(f"{url}/direct/status", timeout=10).json()["pending"] == 0

    _wait(drained, timeout=300)
    post(f"{url}/direct/events", json={"events": [{"user_id": 777, "type": "search", "content": "mirror"}]},
                  timeout=10)
    runs = _wait(lambda: get(f"{url}/direct/cache/777", timeout=10).json()["runs"])
    assert runs[0]["policy_version"] == after["policy_version"]


def test_cli_status_and_rollout(served, ray_local):
    import subprocess
    import sys

    aigq = str(Path(sys.executable).parent / "aigq")
    gcs = ray_local.get_runtime_context().gcs_address
    st = subprocess.run([aigq, "serve", "status", "--address", gcs], capture_output=True, text=True, timeout=120)
    assert st.returncode == 0, st.stderr[-2000:]
    assert all(a in st.stdout for a in ("hintq", "direct", "think")) and "RUNNING" in st.stdout
    before = _wait(lambda: _generator(served["url"]))
    ro = subprocess.run([aigq, "serve", "rollout", "--policy", str(served["v1"]), "--address", gcs],
                        capture_output=True, text=True, timeout=300)
    assert ro.returncode == 0, ro.stderr[-2000:]
    after = _wait(lambda: _generator(served["url"], "policy-v1@"), timeout=120)
    assert after["pid"] == before["pid"]
