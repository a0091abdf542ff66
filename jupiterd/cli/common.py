"""What every command shares: exit codes, the usage error, the parser class
and where the configuration is."""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78

DEFAULT_CONFIG = "/etc/jupiterd/jupiterd.yaml"


class UsageError(Exception):
    """A mistake in how the command was called: exit 2 with one line."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def config_path(arg: str | None) -> str:
    return arg or os.environ.get("JUPITERD_CONFIG") or DEFAULT_CONFIG
