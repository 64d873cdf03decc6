"""Model folders for actors on nodes that share no filesystem: the policy and CTR folders travel through Ray's object
store instead of as driver-local paths.

Why: a reward actor, rollout worker or learner worker used to get ``"/home/me/outputs/run/sft/policy"`` and open it
in its constructor. On a multi-node cluster that path exists only on the driver's node; and Ray restarts a dead actor
(``max_restarts``) by re-running its constructor, possibly on another node, possibly after the folder was rewritten
or deleted. So the driver reads the folder once and ``ray.put``-s its files (:func:`ship`); actors get the small
:class:`ShippedFolder` handle in their creation arguments and call :func:`local_folder` in their constructors, which
writes the files once per node under ``<tmp>/aigq-shipped/<digest>-<name>/`` and returns that path. The handle's
``ObjectRef`` lives in the actor's creation arguments (and in the pool that keeps the handle to start replacement
actors), so the object stays in the store for as long as a restart may need it.

    spec = maybe_ship(policy_dir, cfg.run.ship_models)   # driver: a path ("never", or "auto" on one node) or a handle
    folder = local_folder(spec)                           # actor: a local path with the same bytes

``"auto"`` ships only when the cluster has more than one alive node: on a laptop the 500 MB policy is not copied.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from aigq.atomic import remove, swap_in

SHIP_MODES = ("auto", "always", "never")
KEEP = 4  # node-local copies kept under <tmp>/aigq-shipped (newest used first); older ones are deleted
STALE_TMP_S = 3600.0  # a half-written copy older than this was left by a killed process


@dataclass(frozen=True)
class ShippedFolder:
    """A folder in the object store: ``ref`` holds ``{relative posix path: bytes}`` of every file."""

    name: str  # the folder's own name ("policy", "day-005"), kept in the local copy's name
    digest: str  # sha256 over (relative path, bytes) of every file, in path order
    total_bytes: int
    ref: Any  # ray.ObjectRef of the files dict
    source: str = ""  # the driver-side path it was read from: for records and messages, never opened by actors

    def __str__(self) -> str:
        return f"{self.source or self.name} (shipped, {self.total_bytes / 1e6:.1f} MB, {self.digest[:12]})"


Spec = str | Path | ShippedFolder


def _digest(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for rel in sorted(files):
        data = files[rel]
        h.update(rel.encode())
        h.update(b"\0" + len(data).to_bytes(8, "little"))  # length-framed: no two folders hash alike by accident
        h.update(data)
    return h.hexdigest()


def read_folder(folder: str | Path) -> dict[str, bytes]:
    """Every file under ``folder`` (recursively, links followed) by relative posix path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder, nothing to ship")
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def ship(folder: str | Path) -> ShippedFolder:
    """Driver side: read ``folder`` and put its files into the object store once."""
    files = read_folder(folder)
    name = Path(folder).resolve().name or "folder"
    return ShippedFolder(name, _digest(files), sum(len(b) for b in files.values()), ray.put(files),
                         str(Path(folder).resolve()))


def multi_node() -> bool:
    """True when the running Ray cluster has more than one alive node."""
    return ray.is_initialized() and sum(1 for n in ray.nodes() if n.get("Alive")) > 1


def maybe_ship(folder: str | Path | None, mode: str = "auto") -> str | ShippedFolder | None:
    """``folder`` as actors should get it: shipped for ``"always"`` (and ``"auto"`` on a multi-node cluster), else
    the plain path (``None`` stays ``None``)."""
    if mode not in SHIP_MODES:
        raise ValueError(f"ship mode {mode!r}: expected one of {', '.join(SHIP_MODES)}")
    if folder is None:
        return None
    if isinstance(folder, ShippedFolder):
        return folder
    if mode == "always" or (mode == "auto" and multi_node()):
        return ship(folder)
    return str(folder)


def source(spec: Spec | None) -> str | None:
    """The driver-side path a spec names (for records: checkpoints, logs)."""
    if spec is None:
        return None
    return (spec.source or spec.name) if isinstance(spec, ShippedFolder) else str(spec)


def shipped_root() -> Path:
    return Path(tempfile.gettempdir()) / "aigq-shipped"


def copy_path(spec: ShippedFolder) -> Path:
    """Where :func:`local_folder` puts ``spec`` on this node."""
    return shipped_root() / f"{spec.digest[:16]}-{spec.name}"


def _complete(folder: Path, spec: ShippedFolder) -> bool:
    """A cheap check (sizes only) that ``folder`` is an intact copy: copies appear whole (renamed into place), so
    this only catches files deleted or truncated since."""
    if not folder.is_dir():
        return False
    try:
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) == spec.total_bytes
    except OSError:  # pruned by another process while we looked
        return False


def local_folder(spec: Spec) -> str:
    """In an actor: a local folder with the spec's files. A plain path is returned as is; a :class:`ShippedFolder`
    is written once per node (into a temporary sibling, then renamed into place: actors starting together on a node
    never see a half-written copy) and reused by every later call (restarts, other actors). Keeps the :data:`KEEP`
    most recently used copies."""
    if not isinstance(spec, ShippedFolder):
        return str(spec)
    dest = copy_path(spec)
    if not _complete(dest, spec):
        files = ray.get(spec.ref)
        if _digest(files) != spec.digest:
            raise RuntimeError(f"{spec}: the object store returned other bytes than were shipped")
        tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            for rel, data in files.items():
                path = tmp / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            tmp.mkdir(parents=True, exist_ok=True)  # an empty folder ships too
            try:
                os.replace(tmp, dest)  # fails when another actor put a copy there first
            except OSError:
                if not _complete(dest, spec):  # a damaged copy: swap ours in whole
                    swap_in(tmp, dest)
        finally:
            remove(tmp)
    os.utime(dest)  # most recently used: pruning keeps it
    _prune(dest)
    return str(dest)


def _prune(keep: Path) -> None:
    """Delete copies beyond the :data:`KEEP` most recently used (never ``keep``) and stale temporary folders."""
    now, copies = time.time(), []
    for p in shipped_root().iterdir():
        try:
            mtime = p.stat().st_mtime
        except OSError:
            continue
        if p.name.startswith("."):
            if now - mtime > STALE_TMP_S:
                shutil.rmtree(p, ignore_errors=True)
        elif p != keep:
            copies.append((mtime, p))
    for _, p in sorted(copies, reverse=True)[KEEP - 1:]:
        shutil.rmtree(p, ignore_errors=True)
