"""Connection capacity from the open-files limit, and the warnings for limits set too low."""

from __future__ import annotations

import resource

from cim.limits import RESERVED_FDS, connection_capacity, kernel_warnings, raise_nofile_limit


def test_soft_limit_is_raised_to_hard() -> None:
    soft, hard = raise_nofile_limit()
    assert soft == hard == resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def test_capacity() -> None:
    assert connection_capacity(20_000) == 20_000 - RESERVED_FDS
    assert connection_capacity(20_000, requested=500) == 500
    assert connection_capacity(20_000, requested=10**6) == 20_000 - RESERVED_FDS
    assert connection_capacity(10) == 0


def test_warnings_name_the_setting() -> None:
    over = kernel_warnings(backlog=10**9, workers=10**6, capacity=10**6, requested=2 * 10**6)
    assert any("fs.nr_open" in w and "--max-connections" in w for w in over)
    assert any("net.core.somaxconn" in w for w in over)
    assert any("fs.file-max" in w for w in over)
    assert kernel_warnings(backlog=1, workers=1, capacity=1) == []
