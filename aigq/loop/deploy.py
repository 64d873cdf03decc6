"""What the daily loop talks to: the deployed HintQ system of one arm, through Ray Serve or in-process.

Both give the same four calls on the arm's store:

* ``records`` — the store's records layer (the Think job writes the index, users and the clock through it);
* ``rollout(policy, think_policy, ctr_model)`` — make them live: Serve = set ``user_config`` of DirectGenerator,
  ThinkApp and HintQ and redeploy (replicas reconfigure in place, no restart); in-process = swap the engine and
  the CTR scorer;
* ``refresh_direct(users)`` — the nearline AIGQ-Direct step for the day's users: the *deployed* DirectGenerator
  generates each user's list from the store and pushes it onto the user's cache (last M runs);
* ``answer(users)`` — ask the deployed HintQ for each user (``POST /hintq``, k = serve.hintq_k, with the arm's
  bearer token: ``serve.auth``) → (user_id, slot, query, source).
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import polars as pl

from aigq.config import AIGQConfig
from serve_app.records import Records

ANSWERS = {"user_id": pl.Int64, "slot": pl.Int64, "query": pl.String, "source": pl.String}


def _rows(user: int, body: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"user_id": user, "slot": j, "query": q["query"], "source": q["source"]}
            for j, q in enumerate(body.get("queries") or [])]


def _frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=ANSWERS)


def _records(cfg: AIGQConfig) -> Records:
    from serve_app.store import store_from_config

    return Records.from_config(store_from_config(cfg.serve, cfg.run.output_dir), cfg.serve)


class LocalDeployment:
    """HintQCore and a Direct PolicyHolder in this process, on the arm's store (``loop.serve=false``)."""

    def __init__(self, cfg: AIGQConfig):
        from serve_app.hintq import HintQCore
        from serve_app.policy import PolicyHolder

        self.cfg = cfg
        self.records = _records(cfg)
        self.core = HintQCore(self.records, cfg, None)
        self.holder = PolicyHolder("direct")
        from aigq.data.related import related_index

        self.related = related_index(cfg.samples, cfg.samples_dir())

    def rollout(self, policy: Path, think_policy: Path, ctr_model: Path) -> None:
        from aigq.rewards.ctr import CTRScorer

        self.holder.load(str(policy), self.cfg.serve.engine)
        self.core.scorer = CTRScorer.load(ctr_model)

    def refresh_direct(self, users: list[int], batch: int = 16) -> int:
        from serve_app.direct import user_prompt
        from serve_app.records import DirectRun

        for lo in range(0, len(users), batch):
            part = users[lo:lo + batch]
            prompts = [user_prompt(self.records, u, self.cfg.samples, self.related) for u in part]
            sc = self.cfg.serve
            lists, version = self.holder.direct_lists(prompts, sc.max_new_tokens, sc.direct_samples,
                                                      sc.recall_per_channel)
            for u, queries in zip(part, lists, strict=True):
                self.records.push_direct(u, DirectRun(queries, version, time.time(), "loop: daily refresh"))
        return len(users)

    def answer(self, users: list[int]) -> pl.DataFrame:
        return _frame([r for u in users for r in _rows(u, self.core.answer(u, self.cfg.serve.hintq_k))])

    def close(self) -> None:
        self.records.store.close()


class ServeDeployment:
    """The arm's direct / think / hintq applications on the connected Ray cluster (configs/serve.yaml)."""

    def __init__(self, cfg: AIGQConfig, config_path: Path | None, overrides: list[str],
                 serve_yaml: str | Path = "configs/serve.yaml", timeout_s: float = 600):
        from serve_app import deploy as D

        # the loop's handle calls share 2 busy cores with the replicas: a slower queue-length probe, fewer warnings
        os.environ.setdefault("RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S", "2.0")
        logging.getLogger("ray.serve").setLevel(logging.ERROR)
        self.cfg, self.timeout_s = cfg, timeout_s
        self.records = _records(cfg)
        self.sc = D.load_serve_config(serve_yaml, root=Path.cwd(), config=str(config_path) if config_path else None,
                                      overrides=overrides, host=cfg.serve.host, port=cfg.serve.port)
        self.base = f"http://{cfg.serve.host}:{cfg.serve.port}"
        # the apps check bearer tokens (serve.auth): the arm's admin token, created (0600) when missing; the apps get
        # its digest, this client the header
        from serve_app.auth import client_headers, setup_auth

        out = Path(cfg.run.output_dir).resolve()
        D.set_auth(self.sc, setup_auth(cfg.serve.auth, out, Path.cwd()).policy.to_args())
        self.headers = client_headers(cfg.serve.auth, out, "read", Path.cwd())
        self.deployed = False

    def rollout(self, policy: Path, think_policy: Path, ctr_model: Path) -> None:
        from serve_app import deploy as D

        D.set_policy(self.sc, str(Path(policy).resolve()), str(Path(think_policy).resolve()))
        D.set_user_config(self.sc, "hintq", "HintQ", ctr_model=str(Path(ctr_model).resolve()))
        with D.rollout_lock(D.rollout_lock_path(self.sc), policy=str(policy)):  # never beside `aigq serve rollout`
            D.deploy(self.sc)  # first call: the apps start; later calls: in-place reconfigure
            D.wait_running([a["name"] for a in self.sc["applications"]], timeout_s=self.timeout_s)
        self.deployed = True

    def refresh_direct(self, users: list[int], chunk: int = 64) -> int:
        from ray import serve

        handle = serve.get_deployment_handle("DirectGenerator", app_name="direct")
        done = 0
        for lo in range(0, len(users), chunk):
            resps = [handle.generate.remote((u, "loop: daily refresh")) for u in users[lo:lo + chunk]]
            for r in resps:
                r.result(timeout_s=self.timeout_s)
                done += 1
        return done

    def answer(self, users: list[int], workers: int = 4) -> pl.DataFrame:
        import requests

        k = self.cfg.serve.hintq_k

        def ask(u: int) -> list[dict[str, Any]]:
            for attempt in range(5):
                r = requests.post(f"{self.base}/hintq", json={"user_id": u, "k": k}, headers=self.headers,
                                  timeout=60)
                if r.status_code == 200:
                    return _rows(u, r.json())
                if r.status_code != 429:
                    raise RuntimeError(f"HintQ answered {r.status_code} for user {u}: {r.text[:200]}")
                time.sleep(0.5 * (attempt + 1))
            raise RuntimeError(f"HintQ kept answering 429 for user {u}")

        with ThreadPoolExecutor(workers) as pool:
            return _frame([row for rows in pool.map(ask, users) for row in rows])

    def close(self) -> None:
        if self.deployed:
            from ray import serve

            serve.shutdown()
        self.records.store.close()
