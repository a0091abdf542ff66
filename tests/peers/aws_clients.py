"""boto3 clients for tests that read moto directly, made once per
(service, region, endpoint): building a client loads its service model,
a few tenths of a second each time, and invariant hooks read moto after
every step of a plan."""

from __future__ import annotations

import functools
from typing import Any

import boto3


@functools.cache
def moto_client(service: str, region: str, endpoint_url: str) -> Any:
    """A client of its own session (a session is not thread-safe, a client
    is): tests also read from worker threads."""
    session = boto3.session.Session(region_name=region)
    return session.client(service, endpoint_url=endpoint_url)  # type: ignore[call-overload]
