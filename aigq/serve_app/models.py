"""Request and response models of the three apps, and the strict body parser every JSON endpoint uses.

Bad requests get a 4xx with a message, never a 5xx or a stack trace: oversized body → 413, invalid UTF-8 or
malformed JSON → 400, missing fields / wrong types / unknown fields → 422 listing each problem. Types are strict
(``"7"`` is not a user id).
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("aigq.serve")

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=512)]
UserId = Annotated[int, Field(ge=0, le=2**63 - 1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# ---------------------------------------------------------------- direct


class Event(_Strict):
    user_id: UserId
    type: Literal["search", "click", "cart", "buy"]
    content: Text  # the searched query, or the item's text
    ts: float | None = Field(None, ge=0)  # epoch seconds; None → now (the serving clock)
    category: Annotated[str, StringConstraints(max_length=128)] | None = None
    profile: dict[str, str | int] | None = None  # gender, age, occupation, city (optional, latest wins)


class EventsRequest(_Strict):
    events: list[Event] = Field(min_length=1)


class EventsResponse(BaseModel):
    accepted: int
    users: int
    triggered: list[int]  # users whose Direct generation was started (asynchronously)


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


class LookupResponse(BaseModel):
    version: str | None
    results: dict[str, list[tuple[str, float]]]


class ThinkUserRequest(_Strict):
    user_id: UserId


# ---------------------------------------------------------------- hintq


class HintQRequest(_Strict):
    user_id: UserId
    k: int | None = Field(None, ge=1, le=10)  # None → serve.hintq_k (3)


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


async def parse_body(request: Request, model: type[BaseModel], max_bytes: int) -> Any:
    """Read at most ``max_bytes`` of the body and validate it into ``model``; 4xx with a message otherwise."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPException(400, "invalid Content-Length header")
        if int(declared) > max_bytes:
            raise HTTPException(413, f"request body of {declared} bytes exceeds the limit of {max_bytes} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise HTTPException(413, f"request body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise HTTPException(400, "empty request body: expected a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPException(400, f"request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise HTTPException(400, f"malformed JSON: {getattr(exc, 'msg', 'nested too deeply')} "
                                 f"(line {getattr(exc, 'lineno', '?')}, column {getattr(exc, 'colno', '?')})") from None
    if not isinstance(data, dict):
        raise HTTPException(422, f"expected a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise HTTPException(422, validation_messages(exc)) from None


def validation_messages(exc: ValidationError | RequestValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        msg = "unknown field" if err.get("type") == "extra_forbidden" else err.get("msg", "invalid")
        out.append(f"{where}: {msg}")
    return out


def install_error_handlers(app: FastAPI) -> None:
    """JSON error bodies everywhere; unexpected exceptions are logged and answered with a 500 without internals."""

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
