"""Helpers for the serving tests (not a test module): a real redis-server on a free loopback port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """``redis-server`` on 127.0.0.1:<free port>, no persistence, in its own folder; ``stop()`` ends it."""

    def __init__(self, folder: Path):
        exe = shutil.which("redis-server")
        if exe is None:
            raise FileNotFoundError("redis-server is not installed (`make test` installs it with apt-get where it "
                                    "can; or `apt-get install -y redis-server`)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(folder)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start in 10 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
READ_TOKEN = "test-read-token-0123456789abcdef"
WRITE_TOKEN = "test-write-token-0123456789abcdef"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _user_class(deployment):
    """The class as written, under Serve's ingress wrapper (``@serve.deployment @serve.ingress(app) class …``)."""
    return deployment.func_or_class.__bases__[0]


class InProcessApps:
    """The ``direct``, ``hintq`` and ``think`` apps in process (no Ray, no Serve): each app's own FastAPI ingress,
    called through Starlette's TestClient with the scope Serve's proxy gives it (``root_path`` = the route prefix,
    the path in full), the deployment instance injected where Serve's replica context would give it. ``serve`` =
    the config's ``serve`` section; the admin / read / write tokens come from their environment variables
    (``monkeypatch``); ``client(name, token=ADMIN_TOKEN)`` sends that bearer token on every request (None: none)."""

    def __init__(self, tmp_path: Path, monkeypatch, serve: dict | None = None):
        from types import SimpleNamespace

        import ray.serve
        import yaml

        from serve_app import direct, hintq, think
        from serve_app.common import app_context
        from serve_app.hintq import HintQCore

        repo = Path(__file__).resolve().parents[1]
        for var, token in (("AIGQ_SERVE_TOKEN", ADMIN_TOKEN), ("AIGQ_SERVE_READ_TOKEN", READ_TOKEN),
                           ("AIGQ_SERVE_WRITE_TOKEN", WRITE_TOKEN)):
            monkeypatch.setenv(var, token)
        cfg_file = tmp_path / "aigq.yaml"
        cfg_file.write_text(yaml.safe_dump({
            "run": {"output_dir": str(tmp_path / "out")}, "tracking": {"enabled": False},
            "ctr": {"dir": str(tmp_path / "no-ctr")},
            "serve": {"sqlite_path": str(tmp_path / "store.db"), "signal_min_interval_s": 0, "clock": "wall",
                      **(serve or {})}}))
        args = {"config": str(cfg_file), "root": str(repo)}
        self.generated: list = []

        async def generate(job):
            self.generated.append(job)

        d = _user_class(direct.DirectIngress)(args, SimpleNamespace(generate=SimpleNamespace(remote=generate)))
        h = object.__new__(_user_class(hintq.HintQ))  # its __init__ sets torch's thread count for the whole process
        h.ctx = app_context(args)
        h.core, h.ctr_path, h.batches, h.scored = HintQCore(h.ctx.records, h.ctx.cfg, None), None, 0, 0
        t = _user_class(think.ThinkApp)(args)
        self.direct, self.hintq, self.think, self.ctx = d, h, t, d.ctx
        self._mods = {"direct": (direct, d), "hintq": (hintq, h), "think": (think, t)}
        self._current: dict = {}
        monkeypatch.setattr(ray.serve, "get_replica_context",
                            lambda: SimpleNamespace(servable_object=self._current["obj"]))
        self._clients: list = []

    def client(self, name: str, token: str | None = ADMIN_TOKEN):
        from fastapi.testclient import TestClient

        mod, obj = self._mods[name]

        async def bound(scope, receive, send):  # this app's deployment instance is the one its routes get
            self._current["obj"] = obj
            await mod.app(scope, receive, send)

        c = TestClient(bound, root_path=f"/{name}", raise_server_exceptions=False, follow_redirects=False,
                       headers=bearer(token) if token else None)
        self._clients.append(c.__enter__())
        return c

    def close(self) -> None:
        for c in self._clients:
            c.__exit__(None, None, None)
