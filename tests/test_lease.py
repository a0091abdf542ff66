"""The leader lease (``jupiterd.aws.lease``) against moto's DynamoDB in
server mode on loopback. Each replica has its own ``FakeClock``, set apart
in wall time on purpose: no decision may depend on the clocks agreeing."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from jupiterd.aws.client import Aws
from jupiterd.aws.ha_table import create_table
from jupiterd.aws.lease import Lease
from jupiterd.cli import main
from jupiterd.config import AwsConfig
from jupiterd.sandbox.peers.moto_server import MotoServer, moto_server
from tests.clock import FakeClock

REGION = "us-east-1"
TABLE = "jupiterd-ha"
DURATION = 15.0
MARGIN = 3.0


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with moto_server(patch_env=True) as server:
        yield server


@pytest.fixture
def aws(moto: MotoServer) -> Iterator[Aws]:
    moto.reset()
    client = Aws(AwsConfig(region=REGION, endpoint_url=moto.url, max_attempts=1))
    asyncio.run(create_table(client, TABLE))
    yield client
    client.close()


def _lease(aws: Aws, owner: str, clock: FakeClock) -> Lease:
    return Lease(aws, TABLE, owner, clock, duration=DURATION, margin=MARGIN)


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_one_acquires_the_other_cannot_while_it_renews(aws: Aws) -> None:
    ca, cb = FakeClock(now=1_000.0), FakeClock(now=9_000_000.0)
    a, b = _lease(aws, "a", ca), _lease(aws, "b", cb)
    assert _run(a.acquire()) and a.is_leader() and a.token == 1
    # b watches far longer than a lease while a renews every duration / 3
    for _ in range(12):
        assert not _run(b.acquire())
        assert not b.is_leader()
        ca.mono += DURATION / 3
        cb.mono += DURATION / 3
        assert _run(a.renew())
        assert a.is_leader()
    assert _run(a.read()).owner == "a"


def test_takeover_after_a_full_duration_without_a_version_change(aws: Aws) -> None:
    ca, cb = FakeClock(now=50.0), FakeClock(now=0.0)
    a, b = _lease(aws, "a", ca), _lease(aws, "b", cb)
    assert _run(a.acquire())
    assert not _run(b.acquire())  # b first sees a's version
    # a stops renewing. Its own clock ends its leadership, margin early:
    ca.mono += DURATION - MARGIN
    assert not a.is_leader()
    # ... while b, a moment short of a full duration, still may not take it
    cb.mono += DURATION - 0.01
    assert not _run(b.acquire())
    cb.mono += 0.01
    assert _run(b.acquire())
    assert b.is_leader() and b.token == 2
    rec = _run(b.read())
    assert rec.owner == "b" and rec.token == 2


def test_a_renewal_restarts_the_takers_wait(aws: Aws) -> None:
    ca, cb = FakeClock(), FakeClock()
    a, b = _lease(aws, "a", ca), _lease(aws, "b", cb)
    assert _run(a.acquire())
    assert not _run(b.acquire())
    cb.mono += DURATION - 1
    assert _run(a.renew())  # late, but before b's wait was over
    cb.mono += 1
    assert not _run(b.acquire())  # a new version: the wait starts again
    cb.mono += DURATION - 1
    assert not _run(b.acquire())
    assert _run(a.read()).owner == "a"


def test_the_old_holder_is_refused_after_a_takeover(aws: Aws) -> None:
    ca, cb = FakeClock(), FakeClock()
    a, b = _lease(aws, "a", ca), _lease(aws, "b", cb)
    assert _run(a.acquire())
    old = a.token
    assert old is not None and _run(a.fence(old))
    assert not _run(b.acquire())
    cb.mono += DURATION
    assert _run(b.acquire())
    # a wakes (SIGSTOP, GC, partition) and tries to go on
    assert not _run(a.fence(old))
    assert not _run(a.renew())
    assert not a.is_leader() and a.token is None
    assert _run(b.fence(old + 1))
    assert _run(b.read()).owner == "b"


def test_release_hands_over_at_once_with_a_new_token(aws: Aws) -> None:
    a, b = _lease(aws, "a", FakeClock()), _lease(aws, "b", FakeClock())
    assert _run(a.acquire())
    assert _run(a.release()) and not a.is_leader()
    assert _run(b.acquire()) and b.token == 2
    assert not _run(a.fence(1))


def test_a_restarted_replica_gets_a_new_token(aws: Aws) -> None:
    first = _lease(aws, "a", FakeClock())
    assert _run(first.acquire())
    again = _lease(aws, "a", FakeClock())
    assert _run(again.acquire()) and again.token == 2
    assert not _run(first.renew()) and not _run(first.fence(1))


def test_unreachable_dynamodb_is_not_leader_and_raises_nothing(aws: Aws) -> None:
    clock = FakeClock()
    held = _lease(aws, "a", clock)
    assert _run(held.acquire())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends
    down = Aws(
        AwsConfig(
            region=REGION,
            endpoint_url=f"http://127.0.0.1:{port}",
            max_attempts=1,
            connect_timeout=0.5,
            read_timeout=0.5,
        )
    )
    try:
        fresh = _lease(down, "b", FakeClock())
        assert not _run(fresh.acquire()) and not fresh.is_leader()
        assert not _run(fresh.fence(1))
        # the holder loses its path: it stays leader only until its clock says so
        held.aws = down
        assert not _run(held.renew())
        assert held.is_leader()
        clock.mono += DURATION - MARGIN
        assert not held.is_leader()
        assert not _run(held.acquire()) and not held.is_leader()
        assert not _run(held.release())
    finally:
        down.close()


def test_run_renews_inside_the_lease_and_releases_on_stop(aws: Aws) -> None:
    clock = FakeClock()
    lease = _lease(aws, "a", clock)
    stop = asyncio.Event()
    seen: list[bool] = []

    async def scenario() -> None:
        task = asyncio.create_task(lease.run(stop))
        while len(clock.slept) < 6:
            await asyncio.sleep(0.01)
            seen.append(lease.is_leader())
        stop.set()
        await task

    _run(scenario())
    assert all(s == DURATION / 3 for s in clock.slept)
    assert seen[-1] and not lease.is_leader()
    assert _run(lease.read()).owner is None


def test_ha_init_is_idempotent(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    moto.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)
    args = ["ha", "init", "--table", TABLE, "--region", REGION]
    assert main(args) == 0
    assert "created" in capsys.readouterr().out
    assert main(args) == 0
    assert "exists" in capsys.readouterr().out
    aws = Aws(AwsConfig(region=REGION, endpoint_url=moto.url))
    try:
        ttl = _run(aws.call("dynamodb", "DescribeTimeToLive", TableName=TABLE))
        table = _run(aws.call("dynamodb", "DescribeTable", TableName=TABLE))
    finally:
        aws.close()
    assert ttl["TimeToLiveDescription"]["AttributeName"] == "ttl"
    assert table["Table"]["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"


def test_status_cli_names_the_leader(aws: Aws) -> None:
    from types import SimpleNamespace

    from jupiterd.cli.ops import _format_status, _ha_status

    cfg = SimpleNamespace(ha=SimpleNamespace(table=TABLE, replica_id="cli"))
    none = _run(_ha_status(cfg, aws))
    assert _format_status({"ha": none, "services": {}}) == f"leader: none (table {TABLE})"
    assert _run(_lease(aws, "az-a", FakeClock(now=0.0)).acquire())
    ha = _run(_ha_status(cfg, aws))
    assert (ha["leader"], ha["token"], ha["error"]) == ("az-a", 1, None)
    line = _format_status({"ha": ha, "services": {}})
    assert line == "leader: az-a (token 1, lease until 00:00:15 UTC)"
