"""The ``jupiterd`` command line.

Exit codes: 0 success or healthy, 1 unhealthy or action failed, 2 usage,
78 (EX_CONFIG) invalid configuration. Usage errors are one line on stderr,
never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from jupiterd.cli import daemon, discover, ha, iam, ops, standby
from jupiterd.cli.common import (
    DEFAULT_CONFIG,
    EXIT_CONFIG,
    EXIT_FAIL,
    EXIT_OK,
    EXIT_USAGE,
    Parser,
    UsageError,
)
from jupiterd.cli.executor import EXIT_LEADER_BUSY, LeaderBusy

__all__ = ["DEFAULT_CONFIG", "EXIT_CONFIG", "EXIT_FAIL", "EXIT_OK", "EXIT_USAGE", "main"]


def _add_sandbox(sub: Any) -> None:
    from jupiterd import sandbox  # dev tooling: loaded when the parser is built

    sandbox.add_commands(sub)


COMMANDS: list[Callable[[Any], None]] = [
    daemon.add_commands,
    ops.add_commands,
    standby.add_commands,
    iam.add_commands,
    discover.add_commands,
    ha.add_commands,
    _add_sandbox,
]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="jupiterd", description="Application-level health checks and safe failover."
    )
    from jupiterd import __version__

    parser.add_argument("--version", action="version", version=f"jupiterd {__version__}")
    parser.add_argument(
        "--config", metavar="FILE", help=f"default: $JUPITERD_CONFIG or {DEFAULT_CONFIG}"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="run the daemon without changing AWS"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(args_list)
    if not getattr(args, "func", None):
        args.func = daemon.cmd_run  # plain `jupiterd [--config FILE] [--dry-run]`
        args.command = "run"
    from jupiterd.config import ConfigError

    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"jupiterd {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LeaderBusy as exc:
        print(f"jupiterd {args.command}: {exc}", file=sys.stderr)
        return EXIT_LEADER_BUSY
    except ConfigError as exc:
        print(f"jupiterd: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `jupiterd status | head`: the reader left; not an error worth a traceback.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - swallow the flush at exit
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
