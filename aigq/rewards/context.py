"""The user side of the CTR model: a profile and the recent behaviours, from the log tables or from a prompt.

A :class:`UserContext` is exactly what an AIGQ prompt shows (``aigq.data.prompt``): profile fields and behaviours
``(days_ago, type, content)`` most recent first, content being the searched query or the item's description. The
CTR model is trained on contexts built from the logs (:func:`exposure_impressions`) and scores contexts parsed back
from a policy prompt (:func:`context_from_prompt`), so the reward sees what the policy saw.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from aigq.data import prompt as P
from aigq.data.schema import day_expr

_PROFILE_KEYS = {label.lower(): key for label, key in P.PROFILE_FIELDS}
@dataclass
class UserContext:
    profile: dict[str, str] = field(default_factory=dict)  # gender, age, occupation, city (absent = unknown)
    behaviours: list[tuple[int, str, str]] = field(default_factory=list)  # (days_ago, type, content), recent first


def _days(time_text: str) -> int:
    """``<Today>`` / ``Today`` → 0, ``<1_day_ago>`` / ``1 day ago`` → 1, ``<N_days_ago>`` / ``N days ago`` → N."""
    m = re.search(r"\d+", time_text)
    return int(m.group()) if m and "today" not in time_text.lower() else 0


def context_from_prompt(prompt: Any) -> UserContext:
    """Parse a prompt written by ``aigq.data.prompt.format_prompt`` (compressed or plain) back into a context; the
    behaviour lines go through the shared ``prompt.parse_behaviours``. Anything unparseable yields an empty context
    (the CTR model then scores from the query and nothing else)."""
    text = prompt.decode("utf-8", errors="replace") if isinstance(prompt, bytes | bytearray) else str(prompt or "")
    ctx = UserContext()
    m = re.search(r"User Profile:\s*\{(.*?)\}", text, re.S)
    if m:
        for part in m.group(1).split(","):
            k, _, v = part.partition(":")
            key, v = _PROFILE_KEYS.get(k.strip().lower()), v.strip()
            if key and v and v != P.UNKNOWN:
                ctx.profile[key] = v
    behs = P.parse_behaviours(text.split(P.OUTPUT_PREFIX)[0])
    ctx.behaviours = [(_days(t), typ.lower(), content.strip()) for _, (t, typ, content) in sorted(behs.items())]
    return ctx


def context_from_row(profile: dict[str, Any] | None, behaviours: list[dict[str, Any]] | None) -> UserContext:
    """A context from a profile row and behaviour dicts ``{days_ago, type, content}`` (most recent first)."""
    prof = {k: str(v) for k, v in (profile or {}).items() if v is not None and k in _PROFILE_KEYS.values()}
    behs = [(int(b["days_ago"]), str(b["type"]), str(b["content"])) for b in behaviours or []]
    return UserContext(prof, behs)


def behaviours_table(tables: dict[str, pl.DataFrame], types: list[str], start_date: str,
                     keep_session: bool = False) -> pl.DataFrame:
    """All behaviours (user_id, ts, day, type, content) sorted by (user_id, ts): searches carry their query, item
    events the item's description (else title), as the prompt shows them."""
    items = tables["items"].select("item_id", desc=pl.coalesce("description", "title")).unique("item_id")
    ev = tables["events"].filter(pl.col("type").is_in(types)).join(items, on="item_id", how="left")
    ev = ev.select(
        "user_id",
        "ts",
        "type",
        *(["session_id"] if keep_session else []),
        content=pl.when(pl.col("type") == "search").then(pl.col("query")).otherwise(pl.col("desc")),
    ).filter(pl.col("content").is_not_null() & (pl.col("content").str.strip_chars() != ""))
    return ev.with_columns(day=day_expr(pl.col("ts"), start_date)).sort("user_id", "ts", "content")


def exposure_impressions(
    tables: dict[str, pl.DataFrame], start_date: str, days: list[int], history_len: int, history_days: int,
    types: list[str],
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """HintQ exposures of ``days`` → (impressions, contexts).

    * impressions: one row per shown query — ctx (context row), exposure_id, user_id, day, slot (0..2), query,
      clicked, plus ``candidates`` (the ranker's top-K of the exposure, for evaluators);
    * contexts: one row per exposure — ctx, user_id, day, profile fields, ``behaviours`` = list of structs
      {days_ago, type, content}: the last ``history_len`` behaviours **strictly before** the exposure (a clicked
      hint becomes a search right after it: that must not leak into its own context), within ``history_days``.
    """
    ex = tables["exposures"].with_columns(day=day_expr(pl.col("ts"), start_date)).filter(pl.col("day").is_in(days))
    ex = ex.filter(pl.col("shown").list.len() == 3).sort("exposure_id").with_row_index("ctx")
    beh = behaviours_table(tables, types, start_date).with_row_index("bidx")
    hi = ex.select("ctx", "user_id", "ts").sort("user_id", "ts").join_asof(
        beh.select("user_id", "ts", "bidx"), on="ts", by="user_id", strategy="backward", allow_exact_matches=False,
        check_sortedness=False,
    )
    rows = (
        hi.filter(pl.col("bidx").is_not_null())
        .select("ctx", "user_id", b=pl.int_ranges(pl.col("bidx"), pl.col("bidx") - history_len, -1))
        .explode("b")
        .filter(pl.col("b") >= 0)
    )
    got = beh.select(bu="user_id", bday="day", btype="type", bcontent="content").gather(rows["b"].cast(pl.Int64))
    rows = pl.concat([rows, got], how="horizontal").join(ex.select("ctx", "day"), on="ctx")
    rows = rows.filter((pl.col("bu") == pl.col("user_id")) & (pl.col("day") - pl.col("bday") <= history_days))
    behs = rows.sort("ctx", "b", descending=[False, True]).group_by("ctx", maintain_order=True).agg(
        behaviours=pl.struct(days_ago=(pl.col("day") - pl.col("bday")), type="btype", content="bcontent")
    )
    users = tables["users"].unique("user_id").select("user_id", "gender", "age", "occupation", "city")
    ctx = ex.select("ctx", "user_id", "day").join(users, on="user_id", how="left").join(behs, on="ctx", how="left")
    imp = (
        ex.select("ctx", "exposure_id", "user_id", "day", "shown", "clicked", candidates="ranker_topk")
        .with_columns(slot=pl.int_ranges(0, 3))
        .explode("shown", "clicked", "slot")
        .rename({"shown": "query"})
        .with_columns(pl.col("clicked").fill_null(False), pl.col("slot").cast(pl.Int8))
    )
    return imp, ctx.sort("ctx")


def contexts_of(frame: pl.DataFrame) -> list[UserContext]:
    """Rows of :func:`exposure_impressions`' contexts → :class:`UserContext` objects (row order kept)."""
    out = []
    for r in frame.iter_rows(named=True):
        prof = {k: r[k] for k in ("gender", "age", "occupation", "city") if r.get(k) is not None}
        out.append(context_from_row(prof, r.get("behaviours")))
    return out
