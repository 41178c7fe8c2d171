"""Cross-process write locks for indexes and entity registries (one writer at a time, readers never wait).

LanceDB writes are versioned, so readers always see a complete version; two processes *writing* the same
index at once could still interleave a refresh's steps (merge, delete, re-projection). ``write_lock``
serialises writers with an advisory ``flock`` on ``<index root>/.locks/<name>.lock``: a second refresh waits
for the first, and after ``timeout`` seconds fails with a message naming the holder's pid. The lock is
released by the kernel when its holder dies (kill -9 included), so a crash never leaves it stuck.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import PmatchError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: writers are serialised within a process only
    fcntl = None  # type: ignore[assignment]

DEFAULT_TIMEOUT = float(os.environ.get("PMATCH_LOCK_TIMEOUT", "600"))


class LockTimeoutError(PmatchError):
    """Another process kept writing the same index for longer than the lock timeout."""


@contextlib.contextmanager
def write_lock(root: Path, name: str, timeout: float | None = None, what: str = "index") -> Iterator[None]:
    """Hold the exclusive write lock of ``name`` under ``root`` (waits up to ``timeout`` seconds)."""
    if fcntl is None:
        yield
        return
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    d = Path(root) / ".locks"
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                    raise LockTimeoutError(
                        f"{what} {name!r} under {root} is being written by another process (pid {holder}) for "
                        f"more than {timeout:.0f} s; try again when it has finished") from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
