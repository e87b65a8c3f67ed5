"""Process and kernel limits that decide how many connections a node can hold.

Checked at start: the node raises its soft RLIMIT_NOFILE to the hard limit, derives
its connection capacity from it, and logs what in the kernel's settings would cap
it sooner (see docs/tuning.md).
"""

from __future__ import annotations

import resource
from pathlib import Path

# Descriptors kept for everything but clients: Redis, ZooKeeper, HTTP, logs, the listener.
RESERVED_FDS = 64


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft open-files limit to the hard limit; returns (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft, hard


def connection_capacity(nofile: int, requested: int = 0) -> int:
    """Client connections one process can hold: its descriptors less the reserve,
    or ``requested`` if smaller (0 means as many as fit)."""
    fit = max(0, nofile - RESERVED_FDS)
    return min(fit, requested) if requested > 0 else fit


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def kernel_warnings(backlog: int, workers: int, capacity: int, requested: int = 0) -> list[str]:
    """What in the process's and kernel's settings caps connections: the open-files
    limit below ``requested``, or kernel settings below ``capacity``."""
    warnings = []
    if requested > capacity:
        nr_open = _read_int("/proc/sys/fs/nr_open")
        warnings.append(
            f"--max-connections {requested} is over what the open-files limit allows ({capacity}): raise the "
            f"hard nofile limit (ulimit -Hn, LimitNOFILE=; at most fs.nr_open = {nr_open}) or add --workers"
        )
    somaxconn = _read_int("/proc/sys/net/core/somaxconn")
    if somaxconn is not None and somaxconn < backlog:
        warnings.append(
            f"net.core.somaxconn is {somaxconn}, below the listen backlog {backlog}: bursts of connects "
            "may be dropped (sysctl -w net.core.somaxconn=65535)"
        )
    file_max = _read_int("/proc/sys/fs/file-max")
    if file_max is not None and file_max < workers * capacity:
        warnings.append(
            f"fs.file-max is {file_max}, below {workers} workers x {capacity} connections (sysctl -w fs.file-max=...)"
        )
    return warnings
