"""The ``think`` application: on-demand lookups in the daily AIGQ-Think x2q index, and on-demand Think runs.

* ``POST /think/lookup`` ``{"triggers": ["q:oak desk", "round rug"], "k": 10}`` → ranked queries per trigger
  (a trigger without the ``q:``/``i:`` prefix is looked up as both a search and an item text);
* ``POST /think/generate`` ``{"user_id": 7}`` → the Think policy's interest points for the user's current
  behaviours (trigger keys → queries), computed now — the recency gap between two daily indexes;
* ``GET /think/status`` → live index version and meta, policy version, replica pid.

All three need the admin scope (a lookup tells whether a text is some user's trigger; a run shows a user's
triggers and reasoning); ``GET /think/healthz`` is open.

The daily index itself is built by ``aigq think-index --day T`` (:mod:`serve_app.think_index`). The Think
policy is set through ``user_config: {policy: ...}`` and swapped on reconfigure without a restart.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from fastapi import HTTPException, Request
from ray import serve

from aigq.data import prompt as P
from serve_app.common import StoreHealth, app_context, ingress_app
from serve_app.direct import user_prompt
from serve_app.models import (
    LookupRequest,
    LookupResponse,
    ThinkUserRequest,
    parse_body,
)
from serve_app.policy import PolicyHolder
from serve_app.records import norm
from serve_app.think_index import trigger_groups

# every endpoint but /healthz is admin: a lookup reveals which behaviour texts are index triggers, a Think run
# shows the user's triggers and reasoning (:mod:`serve_app.auth`)
app = ingress_app("AIGQ think (x2q index)", {})


def lookup_keys(trigger: str) -> list[str]:
    t = trigger.strip()
    if t[:2] in ("q:", "i:"):
        return [t[:2] + norm(t[2:])]
    return ["q:" + norm(t), "i:" + norm(t)]


@serve.deployment
@serve.ingress(app)
class ThinkApp(StoreHealth):
    def __init__(self, args: dict[str, Any]):
        self.ctx = app_context(args)
        self.holder = PolicyHolder("think")
        self.policy_error: str | None = None

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        spec = user_config.get("policy") or self.ctx.policy_spec(think=True)
        spec = spec if spec.startswith("models:/") else str(self.ctx.path(spec))
        engine = user_config.get("engine") or self.ctx.cfg.serve.engine
        try:
            await asyncio.to_thread(self.holder.load, spec, engine, self.ctx.tracking_uri())
            self.policy_error = None
        except (FileNotFoundError, OSError, ValueError) as exc:  # lookups keep working without a policy
            if self.holder.current is None:
                self.policy_error = str(exc)
            else:
                raise

    @app.post("/lookup", response_model=LookupResponse)
    async def lookup(self, request: Request) -> LookupResponse:
        body: LookupRequest = await parse_body(request, LookupRequest, self.ctx.cfg.serve.max_body_bytes)
        return await asyncio.to_thread(self._lookup, body)  # store reads off the event loop

    def _lookup(self, body: LookupRequest) -> LookupResponse:
        rec = self.ctx.records
        results: dict[str, list[tuple[str, float]]] = {}
        for trig in body.triggers:
            found = rec.think_lookup(lookup_keys(trig))
            merged: dict[str, tuple[str, float]] = {}
            for entries in found.values():
                for q, s in entries:
                    if norm(q) not in merged or merged[norm(q)][1] < s:
                        merged[norm(q)] = (q, s)
            results[trig] = sorted(merged.values(), key=lambda t: -t[1])[: body.k]
        return LookupResponse(version=rec.think_version(), results=results)

    @app.post("/generate")
    async def generate(self, request: Request) -> dict[str, Any]:
        body: ThinkUserRequest = await parse_body(request, ThinkUserRequest, self.ctx.cfg.serve.max_body_bytes)
        if self.holder.current is None:
            await self.reconfigure({})
        if self.holder.current is None:
            raise HTTPException(503, f"no Think policy loaded: {self.policy_error}")
        prompt = user_prompt(self.ctx.records, body.user_id, self.ctx.cfg.samples, self.ctx.related)
        rollouts, version = await asyncio.to_thread(self.holder.generate, [prompt],
                                                    self.ctx.cfg.serve.think_max_new_tokens)
        reasoning, _ = P.parse_think_target(rollouts[0].text)
        groups = [{"triggers": keys, "queries": qs} for keys, qs in trigger_groups(prompt, rollouts[0].text)]
        return {"user_id": body.user_id, "policy_version": version, "reasoning": reasoning, "groups": groups}

    @app.get("/status")
    async def status(self) -> dict[str, Any]:
        cur = self.holder.current
        version, meta = await asyncio.to_thread(lambda: (self.ctx.records.think_version(), self.ctx.records.think_meta()))
        return {"pid": os.getpid(), "index_version": version, "index": meta, "policy_version": cur.version if cur else None,
                "policy_error": self.policy_error, "loads": self.holder.loads, "store": self.ctx.store.describe()}


def build(args: dict[str, Any]) -> serve.Application:
    """Serve application builder (``import_path: serve_app.think:build``)."""
    return ThinkApp.bind(args)
