"""Request and response models of the three apps, and the strict body parser every JSON endpoint uses.

Bad requests get a 4xx with a message, never a 5xx or a stack trace: oversized body → 413, a Content-Length that is
not a decimal number or does not match the body, invalid UTF-8, malformed JSON (or a number too long to convert), or
a JSON object that names a key twice (rejected, not "last wins") → 400, missing fields / wrong types / unknown
fields / values out of range (an explicit ``"k": null`` included) → 422 listing each problem; a path's user id is
ASCII digits within the same bounds as a body's. Types are strict (``"7"`` is not a user id). An event's ``profile`` holds only
the fields the prompt shows (gender, age, occupation, city; ``aigq.data.prompt.PROFILE_FIELDS``), each at most
``MAX_PROFILE_CHARS`` long: any other field is a 422 (``events.0.profile.<field>: unknown field``), not silently
dropped, so a client learns that it sent something the service does not keep. An event's ``ts`` must be a finite
number inside the serving store's window (:meth:`Records.ts_window`: from the start of the history window to now +
``MAX_CLOCK_SKEW_S``): one stored far-future or overflowing timestamp would otherwise sit at the head of the user's
behaviours for good. Every app answers its paths with or without a trailing slash (``POST /hintq`` and
``POST /hintq/``), never with a redirect.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, ValidationInfo, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.records import MAX_TS

log = logging.getLogger("aigq.serve")

MAX_TEXT_CHARS = 512  # a query, an item text, a Think trigger
MAX_CATEGORY_CHARS = 128
MAX_PROFILE_CHARS = 64  # one profile value (a city name, an occupation) ([GAP], ours)
# An event's ts may be this far after the serving clock's now (clients' clocks drift; [GAP], ours). Under a
# replayed world clock "now" is the end of the serving day: that day's events carry the world's time of day.
MAX_CLOCK_SKEW_S = 300.0

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TEXT_CHARS)]
UserId = Annotated[int, Field(ge=0, le=2**63 - 1)]  # = MAX_USER_ID


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# ---------------------------------------------------------------- direct


ProfileText = Annotated[str, StringConstraints(strip_whitespace=True, max_length=MAX_PROFILE_CHARS)]


class Profile(_Strict):
    """The profile fields the prompt shows (``aigq.data.prompt.PROFILE_FIELDS``); nothing else is accepted."""

    gender: ProfileText | None = None
    age: Annotated[int, Field(ge=0, le=150)] | ProfileText | None = None  # years, or a bucket ("25-34")
    occupation: ProfileText | None = None
    city: ProfileText | None = None


class Event(_Strict):
    user_id: UserId
    type: Literal["search", "click", "cart", "buy"]
    content: Text  # the searched query, or the item's text
    # epoch seconds; None → now (the serving clock). Finite and below year 10000 always; inside the store's window
    # (``ts_window`` in the validation context, given by the endpoint) from the history window's start to now + skew
    ts: float | None = Field(None, ge=0, lt=MAX_TS, allow_inf_nan=False)
    category: Annotated[str, StringConstraints(max_length=MAX_CATEGORY_CHARS)] | None = None
    profile: Profile | None = None  # gender, age, occupation, city (optional, latest wins)

    @field_validator("ts")
    @classmethod
    def _ts_in_window(cls, ts: float | None, info: ValidationInfo) -> float | None:
        window = (info.context or {}).get("ts_window")
        if ts is None or window is None:
            return ts
        earliest, latest = window
        if ts < earliest:
            raise ValueError(f"{ts:.0f} is before the history window, which starts at {_iso(earliest)}")
        if ts > latest:
            raise ValueError(f"{ts:.0f} is in the future: after {_iso(latest)} (now + {MAX_CLOCK_SKEW_S:.0f} s of "
                             f"clock skew)")
        return ts


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


class EventsRequest(_Strict):
    events: list[Event] = Field(min_length=1)


class EventsResponse(BaseModel):
    accepted: int
    users: int
    triggered: list[int]  # users whose Direct generation was started (asynchronously)
    # users whose signal fired but whose generation was not started, kept for their next events: over
    # serve.max_triggered_users_per_request (deferred) or serve.max_pending_generations in flight (dropped); in the
    # body only when not 0 (the endpoint excludes defaults), so the usual answer is unchanged
    deferred: int = 0
    dropped: int = 0


class DirectRunOut(BaseModel):
    queries: list[str]
    policy_version: str
    ts: float
    reason: str


class CacheResponse(BaseModel):
    user_id: int
    runs: list[DirectRunOut]


# ---------------------------------------------------------------- think


class LookupRequest(_Strict):
    triggers: list[Text] = Field(min_length=1, max_length=100)  # index keys ("q:<query>", "i:<item text>") or text
    k: int = Field(10, ge=1, le=100)

    @field_validator("triggers")
    @classmethod
    def _keys_have_text(cls, triggers: list[str]) -> list[str]:
        for i, t in enumerate(triggers):
            if t[:2] in ("q:", "i:") and not t[2:].strip():
                raise ValueError(f"trigger {i} ({t!r}) has no text after its prefix")
        return triggers


class LookupResponse(BaseModel):
    version: str | None
    results: dict[str, list[tuple[str, float]]]


class ThinkUserRequest(_Strict):
    user_id: UserId


MAX_USER_ID = 2**63 - 1
USER_ID_PATH_PATTERN = r"^[0-9]{1,19}$"  # ASCII digits only: no sign, no blanks, no "1_000", no "../"


def path_user_id(raw: str) -> int:
    """A user id from a path segment already matched against :data:`USER_ID_PATH_PATTERN` → int; 422 above
    :data:`MAX_USER_ID` (the same bounds as a body's ``user_id``)."""
    uid = int(raw)
    if uid > MAX_USER_ID:
        raise HTTPException(422, [f"path.user_id: Input should be less than or equal to {MAX_USER_ID}"])
    return uid


# ---------------------------------------------------------------- hintq


class HintQRequest(_Strict):
    user_id: UserId
    k: int | None = Field(None, ge=1, le=10)  # left out → serve.hintq_k (3); an explicit null is a 422

    @field_validator("k", mode="before")
    @classmethod
    def _k_not_null(cls, k: Any) -> Any:
        if k is None:
            raise ValueError("k may not be null: leave it out for the default")
        return k


class Suggestion(BaseModel):
    query: str
    source: Literal["direct", "think", "coclick", "popular"]
    score: float  # CTR p̂ when a CTR model is loaded, else the recall score
    recall_score: float


class HintQResponse(BaseModel):
    user_id: int
    queries: list[Suggestion]
    fallback: bool  # True when personal recall (Direct + Think) gave fewer than k: cold-start / unknown user
    ranker: Literal["ctr", "recall"]
    candidates: int


# ---------------------------------------------------------------- parsing and error handling


class DuplicateKeyError(ValueError):
    """A JSON object names a key twice."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``'s ``object_pairs_hook``: a key given twice is rejected (400) rather than "last wins": a proxy,
    an auth layer or a log reader that keeps the first one would see another request than the one served."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(f"duplicate key {key[:64]!r} in a JSON object")
        out[key] = value
    return out


async def parse_body(request: Request, model: type[BaseModel], max_bytes: int,
                     context: dict[str, Any] | None = None) -> Any:
    """Read at most ``max_bytes`` of the body and validate it into ``model`` (``context``: the validators'
    ``info.context``); 4xx with a message otherwise."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):  # "²".isdigit() is True but int("²") fails
            raise HTTPException(400, "invalid Content-Length header")
        if len(declared.lstrip("0")) > len(str(max_bytes)) or int(declared) > max_bytes:  # no int() of 5,000 digits
            raise HTTPException(413, f"request body of {declared[:24]} bytes exceeds the limit of {max_bytes} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise HTTPException(413, f"request body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if declared is not None and size != int(declared):
        raise HTTPException(400, f"request body of {size} bytes does not match its Content-Length of {int(declared)}")
    if not raw.strip():
        raise HTTPException(400, "empty request body: expected a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPException(400, f"request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except DuplicateKeyError as exc:
        raise HTTPException(400, f"malformed JSON: {exc}") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise HTTPException(400, f"malformed JSON: {getattr(exc, 'msg', 'nested too deeply')} "
                                 f"(line {getattr(exc, 'lineno', '?')}, column {getattr(exc, 'colno', '?')})") from None
    except ValueError as exc:  # an integer of more than sys.get_int_max_str_digits() digits
        raise HTTPException(400, f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HTTPException(422, f"expected a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise HTTPException(422, validation_messages(exc)) from None


def validation_messages(exc: ValidationError | RequestValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        msg = "unknown field" if err.get("type") == "extra_forbidden" else err.get("msg", "invalid")
        out.append(f"{where}: {msg}")
    return out


class _NoSlashRedirect:
    """ASGI middleware: a path with a trailing slash is answered as the path without it, and the app's root without
    one (``/hintq`` under the route prefix ``/hintq``, where Serve's proxy leaves a route path of ``""``) as ``/``,
    where Starlette would answer 307: curl and most clients do not follow a redirect of a POST."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            path, root = scope["path"], scope.get("root_path", "")
            rel = path[len(root):] if root and path.startswith(root) else path
            fixed = path + "/" if rel == "" else path[:-1] if len(rel) > 1 and rel.endswith("/") else None
            if fixed is not None:
                scope = dict(scope, path=fixed)
                raw = scope.get("raw_path")
                if raw is not None:
                    scope["raw_path"] = raw + b"/" if rel == "" else raw[:-1] if raw.endswith(b"/") else raw
        await self.app(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """JSON error bodies everywhere; unexpected exceptions are logged and answered with a 500 without internals;
    no 307 for a missing or extra trailing slash (:class:`_NoSlashRedirect`)."""
    app.add_middleware(_NoSlashRedirect)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": validation_messages(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(req: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", req.method, req.url.path)
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)
