"""Run AIGQ commands as Ray jobs: a private local head (``ray start --head``) and ``ray job submit``.

Used by ``benchmarks/job_submit.py`` (the daily loop as a job) and ``tests/test_job_submit.py``. It drives the ``ray``
CLI exactly as a user would (see the README, "Running on a cluster"), with three precautions for a machine that
other Ray users share:

- every port of the head is a free port picked here (GCS, dashboard, client server, node/object managers, agents,
  metrics), and ``--temp-dir`` is a fresh folder, so the head's address file (``<temp-dir>/ray_current_cluster``)
  is not the default ``/tmp/ray`` one: a plain ``ray.init()`` elsewhere on the machine does not join this head;
- the head runs as ``ray start --head --block`` in its own session and is stopped by signalling that process (and
  then its own process tree), never with ``ray stop`` (which stops every Ray cluster on the machine);
- Ray's token authentication stays on (``aigq.ray_boot.prepare_ray_auth``): Ray 2.60 cannot bind a head to
  loopback (its GCS and raylet listen on all interfaces, ``--node-ip-address 127.0.0.1`` is replaced by the
  machine's address), so the head runs with ``RAY_AUTH_MODE=token`` and Ray's token file (``$RAY_AUTH_TOKEN_PATH`` or
  ``~/.ray/auth_token``, created 0600 when missing), and ``ray job submit`` runs with the same mode and token.

The job's entrypoint is a shell command run by Ray's job supervisor inside the uploaded ``working_dir``; Ray sets
``RAY_ADDRESS`` for it, so every AIGQ stage in it (``ensure_ray``) joins this head instead of starting its own Ray.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aigq.ray_boot import head_env as token_env
from aigq.ray_boot import prepare_ray_auth, stop_process_tree

PORT_FLAGS = ("--port", "--dashboard-port", "--ray-client-server-port", "--node-manager-port",
              "--object-manager-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
              "--runtime-env-agent-port", "--metrics-export-port")


class JobError(RuntimeError):
    """The head did not start, or the job could not be submitted / did not succeed."""


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that were free a moment ago (all sockets are held open until all are chosen)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(closing(socket.socket())) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def ray_cli() -> str:
    """The ``ray`` executable beside this interpreter (the project's .venv), else the one on PATH."""
    here = Path(sys.executable).parent / "ray"
    return str(here) if here.exists() else (shutil.which("ray") or "ray")


@dataclass
class LocalHead:
    temp_dir: Path
    ports: dict[str, int]
    proc: subprocess.Popen
    env: dict[str, str]
    log: Path
    started_s: float = 0.0  # seconds from `ray start` until the head was ready
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        """The GCS address (``ray.init(address=...)``)."""
        return f"127.0.0.1:{self.ports['--port']}"

    @property
    def dashboard(self) -> str:
        """The job-submission address (``ray job submit --address ...``)."""
        return f"http://127.0.0.1:{self.ports['--dashboard-port']}"

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _answering(url: str) -> bool:
    """The server at ``url`` answers: 200, or 401 / 403 (up, and asking for Ray's token)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except urllib.error.HTTPError as exc:
        return exc.code in (401, 403)
    except OSError:
        return False


READY = b"Ray runtime started."  # printed by `ray start` once the GCS, raylet and dashboard are up


@contextmanager
def local_head(num_cpus: int, timeout_s: float = 180.0, env: dict[str, str] | None = None,
               attempts: int = 2) -> Iterator[LocalHead]:
    """Start a private ``ray start --head --block`` with the dashboard (job server) on free ports; stop it (and
    only it) on exit. The head's PATH starts with this interpreter's bin folder, as after ``source
    .venv/bin/activate``, so job entrypoints find ``aigq`` and Ray's workers run this .venv's Python.

    Ready = ``ray start`` printed "Ray runtime started." and the dashboard answers (the dashboard answers before the
    raylet has registered). Ray gives a raylet a fixed 30 s to register; on an overloaded machine that can fail, so a
    head that exits during startup is retried once with fresh ports and temp dir."""
    for attempt in range(1, attempts + 1):
        head = _start_head(num_cpus, env)
        try:
            _wait_ready(head, timeout_s)
            break
        except JobError:
            stop_head(head)
            if attempt == attempts:
                raise
    try:
        yield head
    finally:
        stop_head(head)


def _start_head(num_cpus: int, env: dict[str, str] | None) -> LocalHead:
    temp = Path(tempfile.mkdtemp(prefix="aigq-ray-", dir="/tmp"))  # short: Ray's unix socket paths are ≤ 107 chars
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
    head_env = token_env({**os.environ, **(env or {}),
                          "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    prepare_ray_auth(start=False)  # this process is the head's client (job server status, stop_job): same token
    cmd = [ray_cli(), "start", "--head", "--block", "--temp-dir", str(temp), "--num-cpus", str(num_cpus),
           "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--node-ip-address", "127.0.0.1",
           "--disable-usage-stats", *[x for flag, port in ports.items() for x in (flag, str(port))]]
    log = temp / "ray-start.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=head_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return LocalHead(temp_dir=temp, ports=ports, proc=proc, env=head_env, log=log, started_s=time.perf_counter())


def _wait_ready(head: LocalHead, timeout_s: float) -> None:
    t0, deadline = head.started_s, time.monotonic() + timeout_s
    while not (READY in head.log.read_bytes() and _answering(f"{head.dashboard}/api/version")):
        if head.proc.poll() is not None:
            raise JobError(f"`ray start --head` exited with {head.proc.returncode}:\n{head.log_tail()}")
        if time.monotonic() > deadline:
            raise JobError(f"the Ray head was not ready within {timeout_s:.0f} s:\n{head.log_tail()}")
        time.sleep(0.5)
    head.started_s = time.perf_counter() - t0


def stop_head(head: LocalHead, grace_s: float = 20.0) -> None:
    """Stop this head and only it: SIGTERM the ``ray start --block`` process (it stops the GCS, raylet and dashboard it
    started), then SIGKILL whatever of its process tree (workers run in their own sessions, job drivers under them)
    is still alive after ``grace_s``; finally remove the temp dir."""
    import psutil

    try:
        stop_process_tree(psutil.Process(head.proc.pid), grace_s)
    except psutil.NoSuchProcess:
        pass
    head.proc.poll()  # reap it for Popen too
    shutil.rmtree(head.temp_dir, ignore_errors=True)


@dataclass
class JobResult:
    submission_id: str
    status: str
    returncode: int
    wall_s: float  # from `ray job submit` until it returned (upload, queueing, run, log streaming)
    run_s: float | None  # the job's own start → end time, as Ray recorded it
    logs: str
    message: str = ""


def submit(head: LocalHead, entrypoint: list[str], runtime_env: Path, cwd: Path, timeout_s: float = 1800.0,
           submission_id: str | None = None, on_line: Callable[[str], None] | None = None) -> JobResult:
    """``ray job submit --address <dashboard> --runtime-env <file> --submission-id <id> -- <entrypoint>`` from
    ``cwd`` (the runtime env's relative ``working_dir`` is resolved from there); follows the job's logs (each
    line to ``on_line``) until it ends, then reads its final status from the job server."""
    from ray.job_submission import JobSubmissionClient

    sid = submission_id or f"aigq-{int(time.time() * 1000)}"
    cmd = [ray_cli(), "job", "submit", "--address", head.dashboard, "--runtime-env", str(runtime_env),
           "--submission-id", sid, "--", *entrypoint]
    client_env = dict(os.environ)  # a plain shell with the head's authentication mode and token
    client_env.pop("RAY_ADDRESS", None)
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        if head.env.get(var):
            client_env[var] = head.env[var]
    lines: list[str] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=client_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", bufsize=1)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if on_line:
                on_line(lines[-1])
            if time.perf_counter() - t0 > timeout_s:
                raise JobError(f"job {sid} still running after {timeout_s:.0f} s")
        proc.wait()
    except BaseException:
        proc.kill()
        try:
            JobSubmissionClient(head.dashboard).stop_job(sid)
        except Exception:  # the head is going away anyway (stop_head); keep the original error
            pass
        raise
    wall = time.perf_counter() - t0
    info = _job_info(head, sid, f"`{shlex.join(cmd)}` exited with {proc.returncode}:\n" + "\n".join(lines[-30:]))
    run_s = (info.end_time - info.start_time) / 1000 if info.end_time and info.start_time else None
    return JobResult(submission_id=sid, status=str(getattr(info.status, "value", info.status)),
                     returncode=proc.returncode, wall_s=wall, run_s=run_s, logs="\n".join(lines),
                     message=info.message or "")


def _job_info(head: LocalHead, sid: str, context: str, attempts: int = 6):
    """The job's final record from the job server; a loaded machine can make the dashboard refuse a request for a
    moment, so retry a few times before reporting what the CLI printed and the head's own log."""
    from ray.job_submission import JobSubmissionClient

    for i in range(attempts):
        try:
            return JobSubmissionClient(head.dashboard).get_job_info(sid)
        except Exception as exc:  # ConnectionError from requests, RuntimeError for an unknown submission id
            last = exc
            time.sleep(2 * (i + 1))
    alive = "running" if head.proc.poll() is None else f"exited with {head.proc.returncode}"
    raise JobError(f"no status for job {sid} from {head.dashboard} ({type(last).__name__}: {last}); the head is "
                   f"{alive}.\n{context}\n--- ray start log ---\n{head.log_tail()}") from last
