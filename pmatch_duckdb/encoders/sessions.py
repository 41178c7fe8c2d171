"""One ONNX Runtime session per model file per process, created lazily and reused.

Thread settings: DuckDB scans a table with one thread until it spans more than one row group
(122,880 rows), so most product tables reach a UDF from a single DuckDB thread; an ONNX session
limited to ``cores // duckdb_threads`` threads then leaves cores idle. Each session therefore uses all
cores (``PMATCH_ORT_THREADS`` overrides; 1 is better on an overloaded shared host), and ``run`` is
serialised per session: parallel UDF calls on big tables queue for the model instead of
oversubscribing the machine, while their tokenising/decoding still overlaps (benchmarks/README.md).
A session may instead admit several runs at once (``runs``), each on its own calling thread: the image
encoder runs one batch per core on single-threaded runs, which uses small convolution nets better than
one batch split over the cores.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import onnxruntime as ort


class SerializedSession:
    """An ``InferenceSession`` that admits at most ``runs`` calls of ``run`` at a time (1: serialised); other
    attributes delegate. ONNX Runtime's ``run`` is thread-safe and releases the GIL."""

    def __init__(self, session: ort.InferenceSession, runs: int = 1) -> None:
        self._session = session
        self.runs = runs
        self._run_slots = threading.BoundedSemaphore(runs)

    def run(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201 - same signature as InferenceSession.run
        with self._run_slots:
            return self._session.run(*args, **kwargs)

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._session, name)


_sessions: dict[tuple[str, str, int, int], SerializedSession] = {}
_lock = threading.Lock()


def cpu_count() -> int:
    """Cores this process may use (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def intra_op_threads(duckdb_threads: int | None = None) -> int:
    """ORT intra-op threads: all cores (runs are serialised per session), or ``$PMATCH_ORT_THREADS``.

    ``duckdb_threads`` is accepted for API stability; see the module docstring for why it is not used.
    """
    env = os.environ.get("PMATCH_ORT_THREADS")
    if env:
        return max(1, int(env))
    return cpu_count()


def get_session(model_path: Path, sha256: str, threads: int, runs: int = 1) -> SerializedSession:
    """Shared session for ``model_path`` (keyed by its verified hash, so a rebuilt file gets a new one) with
    ``threads`` intra-op threads per run and at most ``runs`` runs at a time."""
    key = (str(model_path), sha256, threads, runs)
    sess = _sessions.get(key)
    if sess is not None:
        return sess
    with _lock:
        sess = _sessions.get(key)
        if sess is None:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.log_severity_level = 3
            sess = SerializedSession(
                ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"]), runs)
            _sessions[key] = sess
    return sess
