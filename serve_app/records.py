"""What the serving store holds, on top of the key–value primitives of :mod:`serve_app.store`.

Keys (under the store's prefix):

* ``u:{user}:profile`` — JSON profile (gender, age, occupation, city);
* ``u:{user}:beh`` — the user's behaviours, newest first, the ``history_kept`` newest kept;
* ``u:{user}:signal`` — the Direct trigger rule's state (known categories, pending new-category events, last run);
  every ``u:`` key expires ``user_ttl_s`` after the user's last write (events, or the daily load): a user who is
  gone is forgotten instead of kept for good;
* ``d:{user}`` — the AIGQ-Direct cache: the user's ``M`` newest inference runs (queries, policy version, time);
* ``think:current`` → the live Think index version; ``think:{version}:{trigger}`` → ranked ``[[query, S], …]``;
  a new day's index is written under its own version and goes live with one write of ``think:current``;
* ``fb:popular`` → ``[[query, score], …]``; ``fb:co:{query}`` → co-searched queries (the fallback channel);
* ``meta:clock`` → the serving day (ISO date) when replaying a simulated world (``serve.clock = world``).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta

from aigq.rewards.context import UserContext
from serve_app.store import Store

ITEM_TYPES = ("click", "cart", "buy")
MAX_TS = 253402300800.0  # 10000-01-01T00:00:00Z: a timestamp must be a datetime (what the context builder makes)


def norm(text: str) -> str:
    """Case- and whitespace-insensitive form of a query or behaviour text (de-duplication, index keys)."""
    return re.sub(r"\s+", " ", str(text)).strip().casefold()[:200]


def trigger_key(btype: str, content: str) -> str:
    """Think index key of a behaviour: ``q:`` + query for searches, ``i:`` + item text for item events."""
    return ("q:" if btype == "search" else "i:") + norm(content)


@dataclass
class Behaviour:
    ts: float  # epoch seconds (UTC)
    type: str
    content: str
    category: str | None = None


@dataclass
class DirectRun:
    queries: list[str]
    policy_version: str
    ts: float  # when the run finished
    reason: str = ""  # which signal triggered it


class Records:
    def __init__(self, store: Store, history_kept: int = 50, runs_kept: int = 3, runs_ttl_s: float = 7 * 86400,
                 clock: str = "world", user_ttl_s: float = 30 * 86400):
        self.store, self.history_kept, self.runs_kept, self.runs_ttl_s = store, history_kept, runs_kept, runs_ttl_s
        self.clock, self.user_ttl_s = clock, user_ttl_s

    @classmethod
    def from_config(cls, store: Store, serve_cfg) -> Records:
        return cls(store, serve_cfg.history_kept, serve_cfg.direct_runs_kept, serve_cfg.direct_ttl_s,
                   serve_cfg.clock, serve_cfg.user_ttl_s)

    # ------------------------------------------------------------ clock
    def set_serving_day(self, day: date) -> None:
        self.store.set("meta:clock", day.isoformat())

    def today(self) -> date:
        """The serving day: ``meta:clock`` under ``clock=world`` (replaying a simulated world), else today (UTC)."""
        if self.clock == "world":
            v = self.store.get("meta:clock")
            if v:
                return date.fromisoformat(v)
        return datetime.now(UTC).date()

    def now_ts(self) -> float:
        """A timestamp for an event that carries none: the serving day at the current wall-clock time of day."""
        wall = datetime.now(UTC)
        d = self.today()
        return datetime(d.year, d.month, d.day, wall.hour, wall.minute, wall.second, tzinfo=UTC).timestamp()

    # ------------------------------------------------------------ users
    def put_profile(self, user: int, profile: dict) -> None:
        self.store.set(f"u:{user}:profile", json.dumps(profile, ensure_ascii=False), self.user_ttl_s)

    def touch_profile(self, user: int) -> None:
        """Restart the profile's TTL (events without a profile keep the stored one alive as long as the rest)."""
        self.store.expire(f"u:{user}:profile", self.user_ttl_s)

    def get_profile(self, user: int) -> dict | None:
        v = self.store.get(f"u:{user}:profile")
        return json.loads(v) if v else None

    def add_behaviours(self, user: int, behaviours: list[Behaviour]) -> None:
        """Append (any order in; stored newest first)."""
        for b in sorted(behaviours, key=lambda b: b.ts):
            self.store.push(f"u:{user}:beh", json.dumps(asdict(b), ensure_ascii=False), self.history_kept,
                            self.user_ttl_s)

    def load_users(self, profiles: dict[int, dict], behaviours: dict[int, list[Behaviour]]) -> None:
        """Bulk load (daily job): profiles, and behaviour lists replaced by the given ones (newest kept)."""
        self.store.mset({f"u:{u}:profile": json.dumps(p, ensure_ascii=False) for u, p in profiles.items()},
                        self.user_ttl_s)
        self.store.set_lists({f"u:{u}:beh": [json.dumps(asdict(b), ensure_ascii=False)
                                             for b in sorted(bs, key=lambda b: -b.ts)[:self.history_kept]]
                              for u, bs in behaviours.items()}, self.user_ttl_s)

    def get_behaviours(self, user: int) -> list[Behaviour]:
        """The user's behaviours, newest first; rows that are not a behaviour with a finite timestamp in [0,
        MAX_TS) — written before ``ts`` was bounded, or by hand — are skipped, not an error for every read."""
        out = [b for b in map(_behaviour, self.store.lrange(f"u:{user}:beh")) if b is not None]
        return sorted(out, key=lambda b: -b.ts)

    def ts_window(self, history_days: int, skew_s: float) -> tuple[float, float]:
        """The event timestamps the store accepts: from the first day that :meth:`context` shows (the serving day −
        ``history_days``) to now + ``skew_s``, where now is the end of the serving day under a replayed world clock
        (``meta:clock`` set), else the wall clock."""
        today = self.today()
        world = self.clock == "world" and self.store.get("meta:clock") is not None
        now = day_start_ts(next_day(today)) if world else time.time()
        return day_start_ts(today - timedelta(days=history_days)), now + skew_s

    def context(self, user: int, history_days: int = 30) -> tuple[UserContext, list[Behaviour]]:
        """(CTR/prompt context with days-ago relative to the serving day, the raw behaviours newest first).
        Behaviours dated more than a day after the serving day are left out of both (stored before ``ts`` was
        bounded, they would stay the user's newest behaviour for good)."""
        today = self.today()
        behs, rows = [], []
        for b in self.get_behaviours(user):
            d = (today - datetime.fromtimestamp(b.ts, UTC).date()).days
            if d < -1:
                continue
            behs.append(b)
            if d <= history_days:
                rows.append((max(d, 0), b.type, b.content))
        prof = {k: str(v) for k, v in (self.get_profile(user) or {}).items() if v is not None}
        return UserContext(prof, rows), behs

    def get_signal_state(self, user: int) -> dict:
        v = self.store.get(f"u:{user}:signal")
        return json.loads(v) if v else {"categories": [], "pending": {}, "last_run": 0.0}

    def put_signal_state(self, user: int, state: dict) -> None:
        self.store.set(f"u:{user}:signal", json.dumps(state, ensure_ascii=False), self.user_ttl_s)

    # ------------------------------------------------------------ Direct generator status
    def put_generator_status(self, status: dict) -> None:
        """The Direct generator's live policy etc., published so that status reads never queue behind generation."""
        self.store.set("direct:generator", json.dumps(status, ensure_ascii=False))

    def generator_status(self) -> dict:
        v = self.store.get("direct:generator")
        return json.loads(v) if v else {}

    # ------------------------------------------------------------ Direct cache
    def push_direct(self, user: int, run: DirectRun) -> None:
        self.store.push(f"d:{user}", json.dumps(asdict(run), ensure_ascii=False), self.runs_kept, self.runs_ttl_s)

    def get_direct(self, user: int) -> list[DirectRun]:
        cutoff = time.time() - self.runs_ttl_s
        runs = [DirectRun(**json.loads(v)) for v in self.store.lrange(f"d:{user}")]
        return [r for r in runs if r.ts >= cutoff]

    # ------------------------------------------------------------ Think index
    def write_think_index(self, version: str, index: dict[str, list[tuple[str, float]]], meta: dict) -> None:
        """Write a whole index under ``version``, switch ``think:current`` to it, and drop the version before the
        previous one: the previous index stays one more cycle, so a lookup that read ``think:current`` just before
        the switch still finds its keys."""
        old, older = self.store.get("think:current"), self.store.get("think:previous")
        self.store.mset({f"think:{version}:{k}": json.dumps(v, ensure_ascii=False) for k, v in index.items()})
        self.store.set(f"think:{version}:_meta", json.dumps(meta, default=str))
        self.store.set("think:current", version)
        if old and old != version:
            self.store.set("think:previous", old)
            if older and older not in (old, version):
                self.store.delete_prefix(f"think:{older}:")

    def think_version(self) -> str | None:
        return self.store.get("think:current")

    def think_meta(self) -> dict:
        v = self.think_version()
        m = self.store.get(f"think:{v}:_meta") if v else None
        return json.loads(m) if m else {}

    def think_lookup(self, keys: list[str]) -> dict[str, list[tuple[str, float]]]:
        version = self.think_version()
        if not version or not keys:
            return {}
        vals = self.store.mget([f"think:{version}:{k}" for k in keys])
        return {k: [(q, float(s)) for q, s in json.loads(v)] for k, v in zip(keys, vals, strict=True) if v}

    # ------------------------------------------------------------ fallback
    def write_fallback(self, popular: list[tuple[str, float]], coclick: dict[str, list[tuple[str, float]]]) -> None:
        # one transaction: a HintQ request during the daily refresh finds the old table or the new, never none
        self.store.replace_prefix("fb:co:", {f"fb:co:{norm(k)}": json.dumps(v, ensure_ascii=False)
                                             for k, v in coclick.items()})
        self.store.set("fb:popular", json.dumps(popular, ensure_ascii=False))

    def popular(self) -> list[tuple[str, float]]:
        v = self.store.get("fb:popular")
        return [(q, float(s)) for q, s in json.loads(v)] if v else []

    def coclick(self, queries: list[str]) -> dict[str, list[tuple[str, float]]]:
        keys = [norm(q) for q in queries]
        vals = self.store.mget([f"fb:co:{k}" for k in keys])
        return {k: [(q, float(s)) for q, s in json.loads(v)] for k, v in zip(keys, vals, strict=True) if v}


def _behaviour(raw: str) -> Behaviour | None:
    try:
        v = json.loads(raw)
        b = Behaviour(**v) if isinstance(v, dict) else None
    except (ValueError, TypeError):
        return None
    ok = (b is not None and type(b.ts) in (int, float) and math.isfinite(b.ts) and 0 <= b.ts < MAX_TS
          and isinstance(b.type, str) and isinstance(b.content, str))
    return b if ok else None


def day_start_ts(d: date) -> float:
    return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()


def next_day(d: date) -> date:
    return d + timedelta(days=1)
