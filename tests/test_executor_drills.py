"""Scheduled dry-run drills: fire times, metrics, the failing step's reason,
and that a drill never changes AWS."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from jupiterd.aws.executor import AwsExecutor
from jupiterd.config import Config, _crontab_days, cron_trigger, parse_config
from jupiterd.core.execution import FailoverRequest
from jupiterd.core.types import Role
from jupiterd.runtime.drills import DrillRunner
from jupiterd.sandbox.peers.moto_server import MotoServer, moto_server
from jupiterd.telemetry.metrics import Metrics
from tests.peers.fault_proxy import FaultProxy
from tests.peers.jupiter_aws import Stack, jupiter_stack


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now
        self.slept: list[float] = []

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def cfg(drills: list[dict[str, Any]]) -> Config:
    svc = {"probe": {"kind": "tcp", "port": 1}}
    return parse_config({"services": {"a": svc, "b": svc, "c": svc}, "drills": drills})


@pytest.mark.parametrize(
    ("drills", "now", "at", "services"),
    [
        (
            [{"schedule": "0 3 * * *"}],
            "2026-01-01T02:00:00",
            "2026-01-01T03:00:00",
            ["a", "b", "c"],
        ),
        (
            [{"schedule": "0 3 * * *"}],
            "2026-01-01T03:00:00",
            "2026-01-02T03:00:00",
            ["a", "b", "c"],
        ),
        (
            [
                {"schedule": "*/15 * * * *", "services": ["b"]},
                {"schedule": "0 * * * *", "services": ["a"]},
            ],
            "2026-01-01T10:50:00",
            "2026-01-01T11:00:00",
            ["b", "a"],
        ),
        (
            [
                {"schedule": "*/15 * * * *", "services": ["b"]},
                {"schedule": "0 * * * *", "services": ["a"]},
            ],
            "2026-01-01T11:00:00",
            "2026-01-01T11:15:00",
            ["b"],
        ),
        (
            [{"schedule": "30 4 * * 1", "services": ["c"]}],
            "2026-01-01T00:00:00",
            "2026-01-05T04:30:00",
            ["c"],
        ),
    ],
)
def test_next_fire(drills, now, at, services):
    runner = DrillRunner(cfg(drills), lambda c: None)  # type: ignore[arg-type,return-value]
    nxt = runner.next_fire(ts(now))
    assert nxt == (ts(at), services)


@pytest.mark.parametrize(
    ("field", "names"),
    [
        ("*", "*"),
        ("1", "mon"),
        ("0", "sun"),
        ("7", "sun"),
        ("1-5", "mon,tue,wed,thu,fri"),
        ("5-7", "sun,fri,sat"),
        ("*/2", "sun,tue,thu,sat"),
        ("MON,wed", "mon,wed"),
        ("1/3", "mon,thu"),
    ],
)
def test_crontab_weekdays(field, names):
    assert _crontab_days(field) == names


@pytest.mark.parametrize("expr", ["0 3 * *", "0 3 * * 8", "0 3 * * 5-1", "0 3 * * x"])
def test_bad_crontab(expr):
    with pytest.raises(ValueError):
        cron_trigger(expr)


def test_no_drills_no_fire():
    assert DrillRunner(cfg([]), lambda c: None).next_fire(0) is None  # type: ignore[arg-type,return-value]


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with moto_server(patch_env=True) as server:
        yield server


@pytest.fixture
def proxied(moto: MotoServer, tmp_path: Path) -> Iterator[tuple[Stack, FaultProxy]]:
    moto.reset()
    with (
        FaultProxy(moto.url) as proxy,
        jupiter_stack(
            moto.url,
            tmp_path,
            client_endpoint=proxy.url,
            drills=[{"schedule": "0 3 * * *"}],
        ) as s,
    ):
        yield s, proxy


def factory(metrics: Metrics) -> Any:
    return lambda c: AwsExecutor(c, dry_run=True, metrics=metrics, poll_interval=0.05)


async def test_a_passing_drill_is_exported(proxied):
    stack, proxy = proxied
    metrics = Metrics()
    clock = FakeClock(ts("2026-03-01T01:00:00"))
    runner = DrillRunner(stack.config, factory(metrics), metrics, clock)
    await runner.run(max_runs=1)
    assert clock.slept == [7200.0]  # slept until 03:00 UTC
    get = metrics.registry.get_sample_value
    for name in stack.config.services:
        assert get("jupiterd_drill_success", {"service": name}) == 1
        assert get("jupiterd_drill_last_success_timestamp_seconds", {"service": name}) == ts(
            "2026-03-01T03:00:00"
        )
        assert get("jupiterd_drill_failed_step", {"service": name, "step": "none"}) == 0
        assert runner.results[name].ok and runner.results[name].direction == "failover"
    assert runner.status()["nat"]["failed_step"] is None
    mutating = ("StartInstances", "StopInstances", "AssociateAddress", "ModifyInstanceAttribute")
    # Only DryRun requests and describes reached AWS; nothing was published.
    assert proxy.count("sns:Publish") == 0
    assert proxy.count("elasticloadbalancing:RegisterTargets") == 0
    assert proxy.count("route53:ChangeResourceRecordSets") == 0
    assert all(proxy.count(f"ec2:{op}") <= 5 for op in mutating)


async def test_a_failing_drill_names_the_step_and_the_permission(proxied):
    stack, proxy = proxied
    metrics = Metrics()
    clock = FakeClock(ts("2026-03-01T02:59:00"))
    runner = DrillRunner(stack.config, factory(metrics), metrics, clock)
    await runner.run(max_runs=1)
    proxy.deny.add("ec2:StartInstances")
    clock.now = ts("2026-03-02T02:59:30")
    await runner.run(max_runs=1)
    get = metrics.registry.get_sample_value
    r = runner.results["signaling"]
    assert not r.ok and r.failed_step == "start_standby"
    assert "AWS denied ec2:StartInstances" in r.reason
    assert get("jupiterd_drill_success", {"service": "signaling"}) == 0
    assert get("jupiterd_drill_failed_step", {"service": "signaling", "step": "start_standby"}) == 1
    assert get("jupiterd_drill_failed_step", {"service": "signaling", "step": "none"}) is None
    # the last success stays where the previous (passing) drill put it
    assert get("jupiterd_drill_last_success_timestamp_seconds", {"service": "signaling"}) == ts(
        "2026-03-01T03:00:00"
    )
    assert get("jupiterd_drill_last_run_timestamp_seconds", {"service": "signaling"}) == ts(
        "2026-03-02T03:00:00"
    )


async def test_a_drill_after_a_real_failover_proves_the_failback(proxied):
    stack, _ = proxied
    ex = AwsExecutor(stack.config, poll_interval=0.05)
    try:
        out = await ex.run(FailoverRequest("frp", Role.PRIMARY, Role.BACKUP, "test", "cli"))
    finally:
        ex.close()
    assert out.ok
    metrics = Metrics()
    runner = DrillRunner(stack.config, factory(metrics), metrics, FakeClock(0))
    [result] = await runner.drill(["frp"])
    assert result.ok and result.direction == "failback", result


async def test_a_drill_refuses_a_live_executor(proxied):
    stack, _ = proxied
    runner = DrillRunner(stack.config, lambda c: AwsExecutor(c), Metrics(), FakeClock(0))
    with pytest.raises(ValueError, match="dry-run executor"):
        await runner.drill(["frp"])
