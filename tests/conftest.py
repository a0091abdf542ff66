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


@pytest.fixture(autouse=True, scope="session")
def _quiet_logs():
    """Decisions are logged at info; per-probe debug lines only slow tests."""
    import sys

    from jupiterd.telemetry import logs

    logs.configure("info", "console", stream=sys.stderr)
