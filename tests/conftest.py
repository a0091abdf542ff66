"""Shared fixtures. Every peer listens on loopback on a free port."""

from __future__ import annotations

import shutil

import pytest


def need(binary: str) -> str:
    """The path of a real peer's binary; a missing one is a broken install,
    not a reason to skip: CI installs every peer (.ci/run)."""
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} is not installed: run .ci/run's install steps (see README)")
    return path


@pytest.fixture(autouse=True)
def _quiet_logs():
    """Decisions are logged at info; per-probe debug lines only slow tests.
    Set again for every test, on that test's stderr: a command run in
    process (discover, status) or a sandbox configures logging on its own
    stream, which is closed once that test ends."""
    import sys

    from jupiterd.telemetry import logs

    logs.configure("info", "console", stream=sys.stderr)
