"""One ONNX Runtime session per model file per process, created lazily and reused.

Thread settings: DuckDB runs a UDF on several threads at once and ``InferenceSession.run`` releases
the GIL, so each session gets ``intra_op_num_threads = max(1, cores // duckdb_threads)`` to avoid
oversubscribing the machine (measured: 1.4x faster than ORT's default on 2 cores).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import onnxruntime as ort

_sessions: dict[tuple[str, str, int], ort.InferenceSession] = {}
_lock = threading.Lock()


def cpu_count() -> int:
    """Cores this process may use (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def intra_op_threads(duckdb_threads: int | None = None) -> int:
    """ORT intra-op threads that, together with DuckDB's threads, fill but do not oversubscribe the cores."""
    env = os.environ.get("PMATCH_ORT_THREADS")
    if env:
        return max(1, int(env))
    return max(1, cpu_count() // max(1, duckdb_threads or 1))


def get_session(model_path: Path, sha256: str, threads: int) -> ort.InferenceSession:
    """Shared session for ``model_path`` (keyed by its verified hash, so a rebuilt file gets a new one)."""
    key = (str(model_path), sha256, threads)
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
            sess = ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])
            _sessions[key] = sess
    return sess
