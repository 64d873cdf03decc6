"""The ``direct`` application: AIGQ-Direct nearline u2q (paper §4).

``POST /direct/events`` takes a batch of behaviour events, appends them to each user's behaviour list, applies the
"meaningful signal" rule and, for users it fires on, *starts* a generation on the ``DirectGenerator`` deployment
without waiting for it: the request returns at once (202). The generator (autoscaled, ``@serve.batch``) builds the
user's prompt from the store (the shared prompt format), generates greedily with the policy (vLLM or transformers
engine) and pushes the list onto the user's Direct cache (the last M runs, with policy version and time).

The rule ([GAP], ours; ``serve.signal_*``): any event of a type in ``signal_types`` (default: a search), or
``signal_new_category_events`` item events in a category the user had not shown before; at most one run per user
per ``signal_min_interval_s``.

A run's ``reason`` says which rule fired (``search``, ``2 events in new category <category>``), never the
behaviour's text: ``GET /direct/cache/{user}`` (admin scope, :mod:`serve_app.auth`) shows only that kind,
also for runs stored before (whose reason held the first 60 characters of the search).

Bounded cost ([GAP], ours): one request starts generations for at most ``serve.max_triggered_users_per_request``
users, and at most ``serve.max_pending_generations`` generations are in flight per ingress replica; a user whose
signal fired beyond either cap is stored but not started (counted as ``deferred`` / ``dropped`` in the response and
``/status``), and the signal is kept in the user's state, so it fires with the user's next events.

New policy versions arrive by reconfiguring ``DirectGenerator`` (``user_config: {policy: <folder or
models:/name/version>}``): the new engine is loaded next to the old one and swapped in; no restart, no dropped
request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Annotated, Any

from fastapi import Path as PathParam
from fastapi import Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from aigq.data import prompt as P
from serve_app.common import StoreHealth, app_context, ingress_app
from serve_app.models import (
    MAX_CLOCK_SKEW_S,
    USER_ID_PATH_PATTERN,
    CacheResponse,
    EventsRequest,
    EventsResponse,
    parse_body,
    path_user_id,
)
from serve_app.policy import PolicyHolder
from serve_app.records import ITEM_TYPES, Behaviour, DirectRun, Records

log = logging.getLogger("aigq.serve.direct")


def signal(state: dict, events: list[Any], serve_cfg, now: float) -> tuple[str | None, dict]:
    """The meaningful-signal rule for one user's new events → (reason or None, updated state). A reason an earlier
    request deferred (``state["deferred"]``) fires now. Known categories are kept least recently seen first and the
    ``signal_categories_kept`` most recent kept; pending ones likewise (``signal_pending_kept``). Pure."""
    reason = state.get("deferred") or None
    state = {"categories": list(state.get("categories", [])), "pending": dict(state.get("pending", {})),
             "last_run": float(state.get("last_run", 0.0))}
    known = dict.fromkeys(state["categories"])  # an ordered set: least recently seen first
    pending = state["pending"]

    def seen(category: str) -> None:
        known.pop(category, None)
        known[category] = None

    for e in events:
        if e.type in serve_cfg.signal_types and reason is None:
            reason = e.type  # the kind of signal, never the behaviour's text (it is shown by /direct/cache)
        if e.type in ITEM_TYPES and e.category:
            if e.category in known:
                seen(e.category)
                continue
            n = pending.pop(e.category, 0) + 1  # re-inserted last: the most recent
            if n >= serve_cfg.signal_new_category_events:
                seen(e.category)
                reason = reason or f"{n} events in new category {e.category}"
            else:
                pending[e.category] = n
    for e in events:  # searched categories become known too (not a trigger by themselves)
        if e.type == "search" and e.category:
            seen(e.category)
            pending.pop(e.category, None)
    state["categories"] = list(known)[-serve_cfg.signal_categories_kept:]
    state["pending"] = dict(list(pending.items())[-serve_cfg.signal_pending_kept:])
    if reason is not None and now - state["last_run"] < serve_cfg.signal_min_interval_s:
        return None, state
    if reason is not None:
        state["last_run"] = now
    return reason, state


def user_prompt(records: Records, user: int, samples_cfg, related=None) -> str:
    """The user's prompt from the store; ``related``: the related-queries source (``AppContext.related``)."""
    ctx, _ = records.context(user, samples_cfg.history_days)
    behs = [b for b in ctx.behaviours if b[1] in samples_cfg.behaviour_types]
    return P.format_prompt(ctx.profile, behs, samples_cfg, related=related)


@serve.deployment
class DirectGenerator(StoreHealth):
    def __init__(self, args: dict[str, Any]):
        self.ctx = app_context(args)
        self.holder = PolicyHolder("direct")
        self.generated = 0
        sc = self.ctx.cfg.serve
        self.generate.set_max_batch_size(sc.batch_max_size)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        spec = user_config.get("policy") or self.ctx.policy_spec()
        spec = spec if spec.startswith("models:/") else str(self.ctx.path(spec))
        engine = user_config.get("engine") or self.ctx.cfg.serve.engine
        await asyncio.to_thread(self.holder.load, spec, engine, self.ctx.tracking_uri())
        self.ctx.records.put_generator_status(self.status())
        log.info("direct policy %s live", self.holder.current.version)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def generate(self, jobs: list[tuple[int, str]]) -> list[dict[str, Any]]:
        if self.holder.current is None:
            await self.reconfigure({})
        prompts = [user_prompt(self.ctx.records, u, self.ctx.cfg.samples, self.ctx.related) for u, _ in jobs]
        sc = self.ctx.cfg.serve
        lists, version = await asyncio.to_thread(self.holder.direct_lists, prompts, sc.max_new_tokens,
                                                 sc.direct_samples, sc.recall_per_channel)
        out = []
        for (user, reason), queries in zip(jobs, lists, strict=True):
            run = DirectRun(queries, version, time.time(), reason)
            self.ctx.records.push_direct(user, run)
            out.append({"user_id": user, "queries": queries, "policy_version": version})
        self.generated += len(jobs)
        self.ctx.records.put_generator_status(self.status())
        return out

    def status(self) -> dict[str, Any]:
        cur = self.holder.current
        return {"pid": os.getpid(), "policy_version": cur.version if cur else None,
                "policy": cur.spec if cur else None, "loads": self.holder.loads, "generated": self.generated}


def public_reason(reason: str) -> str:
    """A run's reason as ``/direct/cache`` shows it: the rule's kind only. Runs stored before reasons were kept
    text-free read ``"search: <the search text>"``; what follows the colon is dropped."""
    return reason.split(":", 1)[0].strip()


# events need write; everything else (cache, status) is admin; /healthz open
app = ingress_app("AIGQ direct (nearline u2q)", {("POST", "/events"): "write"})


@serve.deployment
@serve.ingress(app)
class DirectIngress(StoreHealth):
    def __init__(self, args: dict[str, Any], generator: DeploymentHandle):
        self.ctx = app_context(args)
        self.generator = generator
        self.tasks: set[asyncio.Task] = set()
        self.failed = 0
        self.started = 0
        self.deferred = 0  # signals over serve.max_triggered_users_per_request, kept for the user's next events
        self.dropped = 0  # signals over serve.max_pending_generations, likewise

    async def _run(self, user: int, reason: str) -> None:
        try:
            await self.generator.generate.remote((user, reason))
        except Exception as exc:  # noqa: BLE001 — nearline: log and count; the user keeps the previous runs
            self.failed += 1
            log.warning("direct generation for user %s failed: %s", user, exc)

    @app.post("/events", status_code=202, response_model=EventsResponse, response_model_exclude_defaults=True)
    async def events(self, request: Request) -> EventsResponse:
        sc = self.ctx.cfg.serve
        window = await asyncio.to_thread(self.ctx.records.ts_window, self.ctx.cfg.samples.history_days,
                                         MAX_CLOCK_SKEW_S)
        body: EventsRequest = await parse_body(request, EventsRequest, sc.max_body_bytes, {"ts_window": window})
        if len(body.events) > sc.max_events_per_request:
            return JSONResponse({"error": f"{len(body.events)} events exceed the limit of "
                                          f"{sc.max_events_per_request} per request"}, status_code=413)
        # the store work (blocking SQLite / Redis calls) runs on a worker thread, not on the replica's event loop;
        # the generations it decides to start are created back here, on the loop
        by_user, start, held = await asyncio.to_thread(self._record, body, time.time())
        triggered = []
        for user, reason in start:
            task = asyncio.create_task(self._run(user, reason))  # not awaited: the request returns now
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            triggered.append(user)
            self.started += 1
        self.deferred += held["deferred"]
        self.dropped += held["dropped"]
        if held["deferred"] or held["dropped"]:
            log.info("direct events: %(deferred)d signals deferred (per-request cap), %(dropped)d dropped "
                     "(generation budget)", held)
        return EventsResponse(accepted=len(body.events), users=by_user, triggered=triggered, **held)

    def _record(self, body: EventsRequest, now: float) -> tuple[int, list[tuple[int, str]], dict[str, int]]:
        """Store the events, update each user's signal state and decide which generations start (at most
        ``serve.max_triggered_users_per_request`` per request, ``serve.max_pending_generations`` in flight): (users,
        [(user, reason) to start], held counts)."""
        sc, rec = self.ctx.cfg.serve, self.ctx.records
        by_user: dict[int, list[Any]] = {}
        for e in body.events:
            by_user.setdefault(e.user_id, []).append(e)
        triggered, held = [], {"deferred": 0, "dropped": 0}
        for user, evs in by_user.items():
            profile = next((p for e in reversed(evs) if e.profile and (p := e.profile.model_dump(exclude_none=True))),
                           None)
            if profile:
                rec.put_profile(user, profile)
            else:
                rec.touch_profile(user)
            rec.add_behaviours(user, [Behaviour(e.ts if e.ts is not None else rec.now_ts(), e.type, e.content,
                                                e.category) for e in evs])
            before = rec.get_signal_state(user)
            reason, state = signal(before, evs, sc, now)
            over = ("deferred" if len(triggered) >= sc.max_triggered_users_per_request
                    else "dropped" if len(self.tasks) + len(triggered) >= sc.max_pending_generations else None)
            if reason and over:  # not started: the signal waits for the user's next events, with the last run's time
                state.update(last_run=float(before.get("last_run", 0.0)), deferred=reason)
                held[over] += 1
                reason = None
            rec.put_signal_state(user, state)
            if reason:
                triggered.append((user, reason))
        return len(by_user), triggered, held

    @app.get("/cache/{user_id}", response_model=CacheResponse)
    async def cache(self, user_id: Annotated[str, PathParam(pattern=USER_ID_PATH_PATTERN)]) -> CacheResponse:
        user_id = path_user_id(user_id)  # 0 ≤ id < 2^63, ASCII digits only (a negative or huge id is a 422)
        runs = await asyncio.to_thread(self.ctx.records.get_direct, user_id)
        return CacheResponse(user_id=user_id, runs=[{**r.__dict__, "reason": public_reason(r.reason)} for r in runs])

    @app.get("/status")
    async def status(self) -> dict[str, Any]:
        """The generator's live policy as it last published it to the store (on every policy load and batch): asking
        the generator itself would wait behind a queue of generations that a burst of signals can fill."""
        gen = await asyncio.to_thread(self.ctx.records.generator_status)
        return {"generator": gen, "pending": len(self.tasks), "started": self.started, "failed": self.failed,
                "deferred": self.deferred, "dropped": self.dropped, "store": self.ctx.store.describe()}


def build(args: dict[str, Any]) -> serve.Application:
    """Serve application builder (``import_path: serve_app.direct:build``)."""
    return DirectIngress.bind(args, DirectGenerator.bind(args))
