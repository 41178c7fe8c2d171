"""Peak resident memory of the calling process, for the benchmark scripts.

Linux ``VmHWM`` of this process's own address space. Not ``ru_maxrss``: the kernel carries the parent's RSS
at fork into a child's ``ru_maxrss`` across ``exec``, so a child process measured that way is charged with its
parent's peak (bench_retrieval's first run reported 7.81 GB for every child; bench_pipeline's training rows
all read >= 3.57 GB, the parent's encoder round). ``ru_maxrss`` is the fallback where /proc is missing.
"""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_kib() -> int:
    """Peak RSS of this process so far, KiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
