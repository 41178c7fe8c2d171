"""Joining a Ray cluster, or starting a small local one, and what every Ray job of pmatch shares."""

from __future__ import annotations

import logging
from typing import Any

from ..errors import PmatchError

LOCAL = "local"
DEFAULT_OBJECT_STORE_BYTES = 500 * 1024 * 1024  # small: embeddings stream through, nothing is cached there


class RayUnavailableError(PmatchError):
    """The ``ray`` extra is not installed, or the cluster cannot be reached."""


def import_ray() -> Any:
    """``import ray`` with an error that names the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise RayUnavailableError(f"the Ray path needs the ray extra ({e}): pip install 'pmatch-duckdb[ray]'") from None
    return ray


def ensure_ray(address: str | None = None, num_cpus: int | None = None,
               object_store_memory: int = DEFAULT_OBJECT_STORE_BYTES, progress: bool = True) -> Any:
    """Connect to the Ray cluster at ``address`` (``ray://...`` or ``HOST:PORT``), or start a local one when
    ``address`` is None or ``"local"``. Reuses an already initialised Ray (e.g. the caller's own)."""
    ray = import_ray()
    if not ray.is_initialized():
        common = {"logging_level": logging.WARNING, "log_to_driver": False}
        try:
            if address in (None, "", LOCAL):
                ray.init(num_cpus=num_cpus, object_store_memory=object_store_memory, include_dashboard=False,
                         **common)
            else:
                ray.init(address=address, **common)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise RayUnavailableError(f"cannot reach the Ray cluster at {address!r}: {e}") from None
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.print_on_execution_start = False
    return ray


def cluster_cpus() -> int:
    """CPUs the connected cluster offers (at least 1)."""
    ray = import_ray()
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def reraise_user_error(e: BaseException) -> None:
    """A Ray task failed: raise the pmatch error inside it (a clear message) if there is one."""
    seen = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, PmatchError):
            raise type(cur)(str(cur).splitlines()[-1] if "\n" in str(cur) else str(cur)) from None
        cause = getattr(cur, "cause", None)
        cur = cause if isinstance(cause, BaseException) else (cur.__cause__ or cur.__context__)
