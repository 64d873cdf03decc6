"""The serving store: a small key–value interface with two real backends.

* :class:`SQLiteStore` — the embedded default: one file, WAL mode, ``busy_timeout``, one connection per thread and
  ``BEGIN IMMEDIATE`` writes, so several Serve replicas (processes) share it safely on one machine;
* :class:`RedisStore` — a real Redis server, for stores shared across machines.

Both give the same primitives (atomic per key), on which :mod:`serve_app.records` builds the Direct cache,
user behaviour lists, the Think index and the fallback tables:

* ``get / mget / set / mset`` — string values, optional TTL;
* ``push(key, value, keep, ttl)`` — prepend to a list and keep its ``keep`` newest entries (one transaction);
* ``lrange(key)`` — a list, newest first; ``set_lists`` replaces whole lists (bulk loads), optional TTL;
* ``expire(key, ttl)`` — restart an existing key's TTL (value or list);
* ``delete(keys) / delete_prefix(prefix)``; ``ping``; ``close``.

A TTL counts from the last write that gave it (Redis ``PEXPIRE`` semantics); an expired key reads as absent, and a
list pushed to after it expired starts empty. SQLite checks expiry on read and deletes expired rows on open and then
at most once every ``PURGE_EVERY_S`` of writes.

Keys are namespaced by ``key_prefix`` so several deployments can share one Redis. A store describes itself (the
apps' ``/status``) with its credentials redacted (:func:`redact_url`).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from aigq.config import redact_url  # with the config: every run record and every /status redacts the same way


class StoreError(RuntimeError):
    """The store cannot be reached or opened; the message says which and how to fix it."""


class Store(ABC):
    def __init__(self, prefix: str = "aigq"):
        self.prefix = prefix.rstrip(":") + ":" if prefix else ""

    def k(self, key: str) -> str:
        return self.prefix + key

    @abstractmethod
    def get(self, key: str) -> str | None: ...

    @abstractmethod
    def mget(self, keys: list[str]) -> list[str | None]: ...

    @abstractmethod
    def set(self, key: str, value: str, ttl: float | None = None) -> None: ...

    @abstractmethod
    def mset(self, mapping: Mapping[str, str], ttl: float | None = None) -> None: ...

    @abstractmethod
    def push(self, key: str, value: str, keep: int, ttl: float | None = None) -> None: ...

    @abstractmethod
    def lrange(self, key: str) -> list[str]: ...

    @abstractmethod
    def set_lists(self, lists: Mapping[str, list[str]], ttl: float | None = None) -> None:
        """Replace whole lists (values newest first), e.g. a bulk load of users' behaviours."""

    @abstractmethod
    def expire(self, key: str, ttl: float) -> None:
        """Expire ``key`` (a value or a list) ``ttl`` seconds from now; nothing when it does not exist."""

    @abstractmethod
    def delete(self, keys: Iterable[str]) -> None: ...

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int: ...

    @abstractmethod
    def replace_prefix(self, prefix: str, mapping: Mapping[str, str]) -> None:
        """Every key under ``prefix`` replaced by ``mapping`` (keys under ``prefix``) in one transaction: a reader
        sees the old set or the new one, never neither (the serving fallback's co-search table, issue 19)."""

    @abstractmethod
    def ping(self) -> bool: ...

    def close(self) -> None:  # noqa: B027 — optional
        pass

    def describe(self) -> str:
        return type(self).__name__


_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires REAL);
CREATE TABLE IF NOT EXISTS lists (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, value TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS lists_key ON lists (key, seq);
CREATE TABLE IF NOT EXISTS list_ttl (key TEXT PRIMARY KEY, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires) WHERE expires IS NOT NULL;
"""


PURGE_EVERY_S = 3600.0  # expired SQLite rows are deleted at most this often ([GAP], ours)


class SQLiteStore(Store):
    """One SQLite file in WAL mode; safe for concurrent readers and writers in several processes."""

    def __init__(self, path: str | Path, prefix: str = "aigq", timeout_s: float = 10.0):
        super().__init__(prefix)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout_s = timeout_s
        self._local = threading.local()
        con = self._con()
        if con.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
            raise StoreError(f"{self.path}: SQLite could not switch to WAL mode (network file system?)")
        con.executescript(_SCHEMA)
        self.purge_expired()

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            try:
                con = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None,
                                      check_same_thread=False)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open SQLite store {self.path}: {exc}") from exc
            con.execute(f"PRAGMA busy_timeout={int(self.timeout_s * 1000)}")
            con.execute("PRAGMA synchronous=NORMAL")
            self._local.con = con
        return con

    def _write(self, statements: list[tuple[str, tuple]]) -> None:
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            for sql, args in statements:
                con.execute(sql, args)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        if time.monotonic() - self._purged > PURGE_EVERY_S:
            self.purge_expired()

    def purge_expired(self) -> int:
        """Delete expired values and lists (reads already skip them); returns how many keys went."""
        self._purged = time.monotonic()
        now = time.time()
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            n = con.execute("DELETE FROM kv WHERE expires IS NOT NULL AND expires <= ?", (now,)).rowcount
            con.execute("DELETE FROM lists WHERE key IN (SELECT key FROM list_ttl WHERE expires <= ?)", (now,))
            n += con.execute("DELETE FROM list_ttl WHERE expires <= ?", (now,)).rowcount
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return n

    @staticmethod
    def _exp(ttl: float | None) -> float | None:
        return None if ttl is None else time.time() + ttl

    def get(self, key: str) -> str | None:
        return self.mget([key])[0]

    def mget(self, keys: list[str]) -> list[str | None]:
        if not keys:
            return []
        full = [self.k(k) for k in keys]
        found: dict[str, str] = {}
        now = time.time()
        for lo in range(0, len(full), 500):
            part = full[lo:lo + 500]
            rows = self._con().execute(
                f"SELECT key, value FROM kv WHERE key IN ({','.join('?' * len(part))}) "
                "AND (expires IS NULL OR expires > ?)", (*part, now)).fetchall()
            found.update(rows)
        return [found.get(k) for k in full]

    def set(self, key: str, value: str, ttl: float | None = None) -> None:
        self._write([("INSERT OR REPLACE INTO kv (key, value, expires) VALUES (?, ?, ?)",
                      (self.k(key), value, self._exp(ttl)))])

    def mset(self, mapping: Mapping[str, str], ttl: float | None = None) -> None:
        items, exp = list(mapping.items()), self._exp(ttl)
        for lo in range(0, len(items), 5000):
            self._write([("INSERT OR REPLACE INTO kv (key, value, expires) VALUES (?, ?, ?)", (self.k(k), v, exp))
                         for k, v in items[lo:lo + 5000]])

    @staticmethod
    def _drop_if_expired(k: str) -> list[tuple[str, tuple]]:
        """Statements that empty list ``k`` when its TTL has passed (Redis would have dropped the key)."""
        now = time.time()
        return [("DELETE FROM lists WHERE key = ? AND EXISTS "
                 "(SELECT 1 FROM list_ttl WHERE key = ? AND expires <= ?)", (k, k, now)),
                ("DELETE FROM list_ttl WHERE key = ? AND expires <= ?", (k, now))]

    def push(self, key: str, value: str, keep: int, ttl: float | None = None) -> None:
        k = self.k(key)
        stmts = [*self._drop_if_expired(k), ("INSERT INTO lists (key, value) VALUES (?, ?)", (k, value)),
                 ("DELETE FROM lists WHERE key = ? AND seq NOT IN "
                  "(SELECT seq FROM lists WHERE key = ? ORDER BY seq DESC LIMIT ?)", (k, k, int(keep)))]
        if ttl is not None:
            stmts.append(("INSERT OR REPLACE INTO list_ttl (key, expires) VALUES (?, ?)", (k, self._exp(ttl))))
        self._write(stmts)

    def lrange(self, key: str) -> list[str]:
        k = self.k(key)
        con = self._con()
        exp = con.execute("SELECT expires FROM list_ttl WHERE key = ?", (k,)).fetchone()
        if exp is not None and exp[0] <= time.time():
            return []
        return [r[0] for r in con.execute("SELECT value FROM lists WHERE key = ? ORDER BY seq DESC", (k,))]

    def set_lists(self, lists: Mapping[str, list[str]], ttl: float | None = None) -> None:
        items, exp = list(lists.items()), self._exp(ttl)
        for lo in range(0, len(items), 500):
            stmts: list[tuple[str, tuple]] = []
            for key, values in items[lo:lo + 500]:
                k = self.k(key)
                stmts += [("DELETE FROM lists WHERE key = ?", (k,)), ("DELETE FROM list_ttl WHERE key = ?", (k,))]
                stmts += [("INSERT INTO lists (key, value) VALUES (?, ?)", (k, v)) for v in reversed(values)]
                if exp is not None and values:
                    stmts.append(("INSERT INTO list_ttl (key, expires) VALUES (?, ?)", (k, exp)))
            self._write(stmts)

    def expire(self, key: str, ttl: float) -> None:
        k, now, exp = self.k(key), time.time(), self._exp(ttl)
        self._write([("UPDATE kv SET expires = ? WHERE key = ? AND (expires IS NULL OR expires > ?)", (exp, k, now)),
                     *self._drop_if_expired(k),
                     ("INSERT OR REPLACE INTO list_ttl (key, expires) SELECT ?, ? WHERE EXISTS "
                      "(SELECT 1 FROM lists WHERE key = ?)", (k, exp, k))])

    def delete(self, keys: Iterable[str]) -> None:
        stmts = []
        for key in keys:
            k = self.k(key)
            stmts += [("DELETE FROM kv WHERE key = ?", (k,)), ("DELETE FROM lists WHERE key = ?", (k,)),
                      ("DELETE FROM list_ttl WHERE key = ?", (k,))]
        if stmts:
            self._write(stmts)

    def delete_prefix(self, prefix: str) -> int:
        pat = self.k(prefix).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        con = self._con()
        n = con.execute("SELECT COUNT(*) FROM kv WHERE key LIKE ? ESCAPE '\\'", (pat,)).fetchone()[0]
        self._write([(f"DELETE FROM {t} WHERE key LIKE ? ESCAPE '\\'", (pat,)) for t in ("kv", "lists", "list_ttl")])
        return int(n)

    def replace_prefix(self, prefix: str, mapping: Mapping[str, str]) -> None:
        pat = self.k(prefix).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        self._write([*((f"DELETE FROM {t} WHERE key LIKE ? ESCAPE '\\'", (pat,)) for t in ("kv", "lists", "list_ttl")),
                     *(("INSERT OR REPLACE INTO kv (key, value, expires) VALUES (?, ?, NULL)", (self.k(k), v))
                       for k, v in mapping.items())])

    def ping(self) -> bool:
        return self._con().execute("SELECT 1").fetchone()[0] == 1

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    def describe(self) -> str:
        return f"sqlite:{self.path}"


class RedisStore(Store):
    """A Redis server (``redis://host:port/db``): strings with ``SET EX``, lists with ``LPUSH`` + ``LTRIM`` in one
    MULTI/EXEC."""

    def __init__(self, url: str, prefix: str = "aigq", timeout_s: float = 5.0):
        super().__init__(prefix)
        try:
            import redis
        except ModuleNotFoundError as exc:  # pragma: no cover — a declared dependency
            raise StoreError("the Redis store needs the `redis` package (pip install redis)") from exc
        self.url = url
        self._r = redis.Redis.from_url(url, decode_responses=True, socket_timeout=timeout_s,
                                       socket_connect_timeout=timeout_s, health_check_interval=30)
        try:
            self._r.ping()
        except redis.RedisError as exc:
            raise StoreError(f"cannot reach Redis at {redact_url(url)}: {exc} (start `redis-server --port <port>` "
                             "or set serve.redis_url)") from exc

    def get(self, key: str) -> str | None:
        return self._r.get(self.k(key))

    def mget(self, keys: list[str]) -> list[str | None]:
        return self._r.mget([self.k(k) for k in keys]) if keys else []

    def set(self, key: str, value: str, ttl: float | None = None) -> None:
        self._r.set(self.k(key), value, px=None if ttl is None else int(ttl * 1000))

    def mset(self, mapping: Mapping[str, str], ttl: float | None = None) -> None:
        items = list(mapping.items())
        for lo in range(0, len(items), 5000):
            if ttl is None:
                self._r.mset({self.k(k): v for k, v in items[lo:lo + 5000]})
                continue
            pipe = self._r.pipeline(transaction=False)
            for k, v in items[lo:lo + 5000]:
                pipe.set(self.k(k), v, px=int(ttl * 1000))
            pipe.execute()

    def push(self, key: str, value: str, keep: int, ttl: float | None = None) -> None:
        k = self.k(key)
        pipe = self._r.pipeline(transaction=True)
        pipe.lpush(k, value)
        pipe.ltrim(k, 0, int(keep) - 1)
        if ttl is not None:
            pipe.pexpire(k, int(ttl * 1000))
        pipe.execute()

    def lrange(self, key: str) -> list[str]:
        return self._r.lrange(self.k(key), 0, -1)

    def set_lists(self, lists: Mapping[str, list[str]], ttl: float | None = None) -> None:
        items = list(lists.items())
        for lo in range(0, len(items), 500):
            pipe = self._r.pipeline(transaction=True)
            for key, values in items[lo:lo + 500]:
                pipe.delete(self.k(key))
                if values:
                    pipe.rpush(self.k(key), *values)
                    if ttl is not None:
                        pipe.pexpire(self.k(key), int(ttl * 1000))
            pipe.execute()

    def expire(self, key: str, ttl: float) -> None:
        self._r.pexpire(self.k(key), int(ttl * 1000))

    def delete(self, keys: Iterable[str]) -> None:
        full = [self.k(k) for k in keys]
        if full:
            self._r.delete(*full)

    def delete_prefix(self, prefix: str) -> int:
        n, batch = 0, []
        for key in self._r.scan_iter(match=_redis_glob_escape(self.k(prefix)) + "*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                n += self._r.unlink(*batch)
                batch = []
        if batch:
            n += self._r.unlink(*batch)
        return n

    def replace_prefix(self, prefix: str, mapping: Mapping[str, str]) -> None:
        old = list(self._r.scan_iter(match=_redis_glob_escape(self.k(prefix)) + "*", count=1000))
        pipe = self._r.pipeline(transaction=True)  # MULTI/EXEC: the old keys go and the new arrive together
        for lo in range(0, len(old), 1000):
            pipe.unlink(*old[lo:lo + 1000])
        if mapping:
            pipe.mset({self.k(k): v for k, v in mapping.items()})
        pipe.execute()

    def ping(self) -> bool:
        return bool(self._r.ping())

    def close(self) -> None:
        self._r.close()

    def describe(self) -> str:
        return f"redis:{redact_url(self.url)}"


def _redis_glob_escape(s: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)


def open_store(kind: str, *, sqlite_path: str | Path | None = None, redis_url: str | None = None,
               prefix: str = "aigq") -> Store:
    if kind == "sqlite":
        if sqlite_path is None:
            raise StoreError("the SQLite store needs a path (serve.sqlite_path)")
        return SQLiteStore(sqlite_path, prefix)
    if kind == "redis":
        return RedisStore(redis_url or "redis://127.0.0.1:6380/0", prefix)
    raise StoreError(f"unknown store {kind!r}; expected 'sqlite' or 'redis'")


def store_from_config(serve_cfg: Any, output_dir: str | Path) -> Store:
    """The store a :class:`~aigq.config.ServeConfig` names (SQLite path defaults under ``<output_dir>/serve``)."""
    path = serve_cfg.sqlite_path or Path(output_dir) / "serve" / "store.db"
    return open_store(serve_cfg.store, sqlite_path=path, redis_url=serve_cfg.redis_url, prefix=serve_cfg.key_prefix)
