"""Shared output for every scenario: machine facts, a printed table, JSON."""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    """What the numbers were measured on, stated with every run."""
    import cim.frame

    def pkg(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "uvloop": pkg("uvloop"),
        "protobuf": pkg("protobuf"),
        "codec": cim.frame.IMPLEMENTATION,
    }


def percentiles(values: Sequence[float], qs: Sequence[float]) -> list[float]:
    """The ``qs`` quantiles (each 0..1) of ``values``, interpolating linearly between the
    two nearest ranks (``statistics.quantiles``' "inclusive" method, which needs 2 values);
    all 0.0 when nothing was measured. Sorts once for all of them."""
    if not values:
        return [0.0] * len(qs)
    ordered = sorted(values)
    last = len(ordered) - 1
    out = []
    for q in qs:
        position = q * last
        low = int(position)
        high = min(low + 1, last)
        out.append(ordered[low] + (ordered[high] - ordered[low]) * (position - low))
    return out


def median_of(runs: int, measure: Callable[[], float]) -> tuple[float, list[float]]:
    samples = [measure() for _ in range(runs)]
    return statistics.median(samples), samples


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(title)
    for n, row in enumerate(cells):
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_json(path: str | None, result: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
