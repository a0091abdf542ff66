"""The ``jupiterd`` command line.

Exit codes: 0 success or healthy, 1 unhealthy or action failed, 2 usage,
78 (EX_CONFIG) invalid configuration. Usage errors are one line on stderr,
never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78

DEFAULT_CONFIG = "/etc/jupiterd/jupiterd.yaml"


class UsageError(Exception):
    """A mistake in how the command was called: exit 2 with one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def config_path(arg: str | None) -> str:
    return arg or os.environ.get("JUPITERD_CONFIG") or DEFAULT_CONFIG


def _cmd_probe(args: argparse.Namespace) -> int:
    import probes

    raw: dict[str, str] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects KEY=VALUE, got '{item}'")
        raw[key.strip()] = value
    if not args.timeout > 0:
        raise UsageError("--timeout must be a positive number of seconds")
    try:
        kind = probes.get_kind(args.kind)
        options = kind.parse_options(raw)
        kind.check_target(args.target)
    except probes.OptionError as exc:
        raise UsageError(f"{args.kind}: {exc}") from None
    result = asyncio.run(kind.probe(args.target, options, args.timeout))
    if args.json:
        print(json.dumps(result.to_dict(), sort_keys=True))
    else:
        print(result.summary())
    return EXIT_OK if result.ok else EXIT_FAIL


def _add_probe(sub: Any) -> None:
    import probes

    kinds = ", ".join(probes.KINDS)
    p = sub.add_parser(
        "probe",
        help="probe one target once and print the result",
        description=f"Probe one target once. Kinds: {kinds}. Exit 0 if healthy, 1 if not.",
    )
    p.add_argument("kind", metavar="KIND", help=f"one of: {kinds}")
    p.add_argument(
        "target", metavar="TARGET", help="host:port, or a URL for http/socketio/thingsboard"
    )
    p.add_argument("--timeout", type=float, default=5.0, metavar="S", help="seconds (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a probe option (repeatable)",
    )
    p.set_defaults(func=_cmd_probe)


COMMANDS: list[Callable[[Any], None]] = [_add_probe]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jupiterd", description="Application-level health checks and safe failover."
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"jupiterd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(args_list)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"jupiterd {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
