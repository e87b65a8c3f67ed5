"""``python -m bench SCENARIO [options] [--json PATH]``."""

from __future__ import annotations

import argparse
import sys

from bench import codec, fanout, flood, groupstore, hotpath, idle, p2p, redis_p2p, ws

SCENARIOS = {
    "codec": codec, "hotpath": hotpath, "p2p": p2p, "fanout": fanout, "idle": idle, "flood": flood,
    "redis-p2p": redis_p2p, "ws": ws, "groupstore": groupstore,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="scenario", required=True)
    for name, module in SCENARIOS.items():
        p = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        module.add_arguments(p)
        p.add_argument("--json", metavar="PATH", help="write the result as JSON")
    args = parser.parse_args(argv)
    SCENARIOS[args.scenario].main(args)


if __name__ == "__main__":
    main(sys.argv[1:])
