"""Atomic folder writes for artefacts that another process may read while they are written (a policy that Serve
loads, a CTR ``day-T`` model, a registry download): build the folder whole in a temporary sibling, then swap it in
with renames, so a reader finds the old folder or the new one, never a half-written one.

On Linux the swap of an existing folder is one ``renameat2(RENAME_EXCHANGE)``: the path never disappears. Where that
call is missing (other systems, some filesystems) it falls back to two renames (old aside, new in), with a moment in
which the path does not exist, but still never a partial folder. No project imports here: low-level modules use it."""

from __future__ import annotations

import ctypes
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def remove(path: Path) -> None:
    """Delete a file, link or folder; nothing when absent."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2``); False where that is not available."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    return fn(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE) == 0


def swap_in(new: Path, folder: Path) -> None:
    """Put the complete folder ``new`` at ``folder`` (a sibling of it) and delete what was there. With an atomic
    exchange the path always holds one complete folder; otherwise the old folder is renamed aside first and deleted
    only once ``new`` is in place (if that rename fails the old folder goes back)."""
    new, folder = Path(new), Path(folder)
    if not folder.exists():
        new.rename(folder)
        return
    if folder.is_dir() and not folder.is_symlink() and _exchange(new, folder):
        remove(new)  # now the old folder
        return
    old = folder.parent / f".{folder.name}.old-{os.getpid()}"
    remove(old)
    folder.rename(old)
    try:
        new.rename(folder)
    except BaseException:
        old.rename(folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_dir(folder: str | Path) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``folder`` (``.<name>.tmp-<pid>``) to write into; when the body succeeds
    it replaces ``folder`` (:func:`swap_in`), when it fails ``folder`` is left as it was. The temporary folder is
    removed either way. A symlinked ``folder`` is rewritten where it points."""
    folder = Path(folder)
    real = folder.resolve() if folder.is_symlink() else folder
    real.parent.mkdir(parents=True, exist_ok=True)
    tmp = real.parent / f".{real.name}.tmp-{os.getpid()}"
    remove(tmp)  # left by a killed run of a process with the same id
    tmp.mkdir()
    try:
        yield tmp
        swap_in(tmp, real)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
