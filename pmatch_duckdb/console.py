"""A quiet console: users see pmatch's own messages and progress bars, not third-party warnings.

Routed away unless verbose (``PMATCH_LOG=verbose``, or ``pmatch --verbose ...``):
- LanceDB's Rust log (``WARN lance::dataset::write::insert ... it will be created`` on every first index):
  its level is read from ``LANCEDB_LOG`` once, when ``lancedb`` loads, so it is set here, at package import,
  to ``error`` (an explicit ``LANCEDB_LOG`` is kept);
- Python warnings and the progress bars of torch / transformers while pmatch exports models
  (:func:`quiet_export`: tracer and constant-folding warnings of the ONNX export, "Loading weights" bars).
``PMATCH_LOG=debug`` also turns LanceDB's log up to ``debug``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator

_VERBOSE_VALUES = {"1", "true", "yes", "verbose", "info", "debug", "warn", "warning"}


def verbose() -> bool:
    """Whether third-party output should reach the console (``PMATCH_LOG`` or ``pmatch --verbose``)."""
    if os.environ.get("PMATCH_LOG", "").strip().lower() in _VERBOSE_VALUES:
        return True
    # the CLI's --verbose: LanceDB reads its log level when it loads, before click has parsed the options
    argv = sys.argv or [""]
    return os.path.basename(argv[0]) in ("pmatch", "pmatch.exe") and "--verbose" in argv[1:]


def quiet_native_logs() -> None:
    """Set the log level of LanceDB's Rust code (before ``lancedb`` is imported)."""
    if os.environ.get("PMATCH_LOG", "").strip().lower() == "debug":
        os.environ.setdefault("LANCEDB_LOG", "debug")
    elif not verbose():
        os.environ.setdefault("LANCEDB_LOG", "error")


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Silence torch / transformers warnings and progress bars while exporting a model (unless verbose)."""
    if verbose():
        yield
        return
    hf = None
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf  # type: ignore[no-redef]
    before = hf.get_verbosity() if hf else None
    if hf:
        hf.set_verbosity_error()
        hf.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if hf:
            hf.set_verbosity(before)
            hf.enable_progress_bar()
