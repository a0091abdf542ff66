"""The daemon's standby warm-ups against moto in server mode: real tcp
probes at loopback listeners, the AWS executor and inventory. Pre-warm on
suspicion (started, undone after the hold, capped, taken over by the
failover) and the daemon's readiness drill (metrics, /status, record)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from jupiterd.aws.executor import AwsExecutor, default_prober
from jupiterd.aws.inventory import AwsInventory
from jupiterd.config import parse_config
from jupiterd.core.types import Status
from jupiterd.runtime.supervisor import Supervisor
from jupiterd.sandbox.peers.moto_server import MotoServer, moto_server
from jupiterd.state import readiness
from jupiterd.state.journal import Journal
from jupiterd.telemetry.metrics import Metrics
from tests.daemon_helpers import B, P, wait_for
from tests.peers.jupiter_aws import FAST, Stack, jupiter_stack

pytestmark = pytest.mark.slow
SERVICE = "signaling"


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with moto_server(patch_env=True) as server:
        yield server


@contextlib.asynccontextmanager
async def daemon(
    moto: MotoServer,
    tmp: Path,
    defaults: dict[str, Any],
    *,
    prober: Any = None,
    **service: Any,
) -> AsyncIterator[tuple[Supervisor, Stack]]:
    moto.reset()
    with jupiter_stack(moto.url, tmp, services=[SERVICE], defaults={**FAST, **defaults}) as stack:
        doc = yaml.safe_load(stack.config_path.read_text())
        doc["services"][SERVICE].update(service)
        cfg = parse_config(doc)
        kw = {"prober": prober} if prober is not None else {}
        ex = AwsExecutor(cfg, poll_interval=0.05, progress_interval=0.5, **kw)
        metrics = Metrics(CollectorRegistry())
        sup = Supervisor(
            cfg,
            executor=ex,
            inventory=AwsInventory(cfg, ex.aws, metrics=metrics),
            metrics=metrics,
            rng=random.Random(1),
            tick_seconds=0.1,
        )
        await sup.start()
        try:
            await wait_for(lambda: svc(sup).primary.status is Status.UP, what="primary up")
            yield sup, stack
        finally:
            await sup.stop(grace=2)
            ex.close()


def svc(sup: Supervisor) -> Any:
    return sup.state.services[SERVICE]


def sample(sup: Supervisor, name: str, **labels: str) -> float | None:
    return sup.metrics.registry.get_sample_value(name, {"service": SERVICE, **labels})


async def backup_state(sup: Supervisor) -> str:
    ex = sup.executor
    assert isinstance(ex, AwsExecutor)
    return (await ex.inventory.facts([SERVICE]))[SERVICE].backup.state


async def failed_over_to_the_warm_standby(sup: Supervisor) -> None:
    """The daemon's failover succeeded on the standby already running, and
    the warm-up that started it was handed over."""
    await wait_for(lambda: sup.outcomes, what="the failover's outcome", timeout=20)
    [plan] = sup.outcomes
    assert plan["result"] == "success", plan["detail"]
    start = next(s for s in plan["steps"] if s["name"] == "start_standby")
    assert "already running" in start["detail"], start
    await wait_for(
        lambda: sample(sup, "jupiterd_prewarms_total", result="handed_over") == 1,
        what="the warm standby handed over",
    )
    assert svc(sup).active is B and svc(sup).warm is None
    assert await backup_state(sup) == "running"


def primary_fails_mid_drill(box: dict[str, Any], status: Status | None = None) -> Any:
    """A prober for the executor: as the drill first probes the standby,
    the primary stops answering, and the probe waits until the daemon sees
    it fail (``status``, or anything but UP). ``box`` gets the daemon's
    ``sup`` and ``stack`` once they exist."""

    def failing(sup: Supervisor) -> bool:
        now = svc(sup).primary.status
        return now is status if status is not None else now is not Status.UP

    async def prober(kind: str, target: str, options: Any, timeout: float) -> Any:
        sup, stack = box["sup"], box["stack"]
        backup = stack.config.services[SERVICE].backup.address or "?"
        if target.startswith(backup) and "failed" not in box:
            box["failed"] = True
            stack.listeners.stop(SERVICE, "primary")
            await wait_for(lambda: failing(sup), what="the primary failing")
        return await default_prober(kind, target, options, timeout)

    return prober


# Failures stay SUSPECT (fall is never reached) unless a test wants DOWN.
SUSPECT_ONLY = {"fall": 100, "min_down": 60}


async def test_prewarm_starts_on_suspect_and_is_undone_after_the_hold(
    moto: MotoServer, tmp_path: Path
) -> None:
    async with daemon(moto, tmp_path, SUSPECT_ONLY, prewarm=True, prewarm_hold=0.5) as (
        sup,
        stack,
    ):
        stack.listeners.stop(SERVICE, "primary")
        await wait_for(lambda: sample(sup, "jupiterd_prewarm_active") == 1, what="pre-warm")
        assert svc(sup).primary.status is Status.SUSPECT
        assert await backup_state(sup) == "running"
        assert sample(sup, "jupiterd_prewarms_total", result="started") == 1
        stack.listeners.start(SERVICE, "primary")  # it recovers
        await wait_for(
            lambda: sample(sup, "jupiterd_prewarms_total", result="stopped") == 1,
            what="the pre-warm undone",
        )
        assert sample(sup, "jupiterd_prewarm_active") == 0
        assert await backup_state(sup) in ("stopped", "stopping")
        assert svc(sup).backup.status is Status.STOPPED and svc(sup).warm is None
        assert not sup.outcomes  # no failover
    [rec] = Journal(stack.config.state_dir).read()
    assert rec.kind == "prewarm" and rec.done


async def test_prewarm_is_capped_per_hour(moto: MotoServer, tmp_path: Path) -> None:
    async with daemon(
        moto, tmp_path, SUSPECT_ONLY, prewarm=True, prewarm_hold=0.2, prewarm_max_per_hour=1
    ) as (sup, stack):
        for _ in range(2):
            stack.listeners.stop(SERVICE, "primary")
            await wait_for(lambda: svc(sup).primary.status is Status.SUSPECT, what="suspect")
            stack.listeners.start(SERVICE, "primary")
            await wait_for(lambda: svc(sup).primary.status is Status.UP, what="up again")
            await wait_for(lambda: svc(sup).warm is None, what="no pre-warm left")
            await wait_for(lambda: sample(sup, "jupiterd_prewarm_active") in (None, 0))
        assert sample(sup, "jupiterd_prewarms_total", result="started") == 1
        assert sample(sup, "jupiterd_prewarms_total", result="capped") == 1


async def test_prewarm_then_failover_uses_the_warm_standby(
    moto: MotoServer, tmp_path: Path
) -> None:
    # failover_after leaves time for the pre-warm to boot the standby.
    async with daemon(moto, tmp_path, {"failover_after": 1.0}, prewarm=True) as (sup, stack):
        stack.listeners.stop(SERVICE, "primary")
        await failed_over_to_the_warm_standby(sup)
        assert sample(sup, "jupiterd_prewarms_total", result="started") == 1
    assert all(p.done for p in Journal(stack.config.state_dir).read())


async def test_the_daemon_s_drill_exports_records_and_shows_it(
    moto: MotoServer, tmp_path: Path
) -> None:
    ready = {"schedule": "0 3 * * mon", "max_age": "3d"}
    async with daemon(moto, tmp_path, {}, readiness=ready) as (sup, stack):
        assert sample(sup, "jupiterd_standby_max_age_seconds") == 3 * 86400
        nxt = sup.standbys.next_fire(0.0)
        assert nxt is not None and nxt[1] == [SERVICE]
        res = await sup.standbys.drill(SERVICE)
        assert res is not None and res.result == "passed", res
        assert sample(sup, "jupiterd_standby_ready") == 1
        assert sample(sup, "jupiterd_standby_drills_total", result="passed") == 1
        assert sample(sup, "jupiterd_standby_boot_seconds") == res.boot_seconds
        assert sample(sup, "jupiterd_standby_app_healthy_seconds") == res.healthy_seconds
        verified = sample(sup, "jupiterd_standby_verified_timestamp_seconds")
        assert verified == res.at
        shown = sup.status()["standbys"][SERVICE]
        assert shown["verified_at"] == res.at and shown["rto_budget_seconds"] == res.rto_budget
        assert svc(sup).warm is None and svc(sup).backup.status is Status.STOPPED
        # The standby never answers: the next drill fails and says so.
        stack.listeners.stop(SERVICE, "backup")
        res2 = await sup.standbys.drill(SERVICE)
        assert res2 is not None and res2.result == "failed"
        assert sample(sup, "jupiterd_standby_ready") == 0
        assert sample(sup, "jupiterd_standby_verified_timestamp_seconds") == verified
        assert await backup_state(sup) in ("stopped", "stopping")
    kept = readiness.load(stack.config.state_dir)[SERVICE]
    assert kept["result"] == "failed" and kept["verified_at"] == res.at


async def test_the_daemon_does_not_drill_while_the_active_is_down(
    moto: MotoServer, tmp_path: Path
) -> None:
    async with daemon(moto, tmp_path, {"failover_after": 600}) as (sup, stack):
        stack.listeners.stop(SERVICE, "primary")
        await wait_for(lambda: svc(sup).primary.status is Status.DOWN, what="down")
        assert await sup.standbys.drill(SERVICE) is None
        assert sample(sup, "jupiterd_standby_drills_total", result="refused") == 1
        assert await backup_state(sup) == "stopped"
        assert svc(sup).target(P).status is Status.DOWN


async def test_a_drill_whose_active_fails_keeps_the_standby_warm_until_it_recovers(
    moto: MotoServer, tmp_path: Path
) -> None:
    """The primary turns SUSPECT while the drill probes the standby, and no
    failover comes: the standby is not left running for good. It stays warm
    as a pre-warm and is stopped again once the primary is up."""
    box: dict[str, Any] = {}
    prober = primary_fails_mid_drill(box, Status.SUSPECT)

    async with daemon(moto, tmp_path, SUSPECT_ONLY, prober=prober, prewarm_hold=0.3) as (
        sup,
        stack,
    ):
        box.update(sup=sup, stack=stack)
        res = await sup.standbys.drill(SERVICE)
        assert res is not None and res.result == "passed" and not res.stopped, res
        assert "kept running as a pre-warm (the primary is suspect" in res.detail
        assert await backup_state(sup) == "running"
        assert sample(sup, "jupiterd_prewarm_active") == 1
        assert svc(sup).warm is not None and svc(sup).warm.kind == "prewarm"
        assert sup.status()["standbys"][SERVICE]["prewarm_active"] is True
        assert [p.done for p in Journal(stack.config.state_dir).read()] == [False]
        stack.listeners.start(SERVICE, "primary")  # it recovers
        await wait_for(
            lambda: sample(sup, "jupiterd_prewarms_total", result="stopped") == 1,
            what="the kept standby stopped",
        )
        assert await backup_state(sup) in ("stopped", "stopping")
        assert sample(sup, "jupiterd_prewarm_active") == 0
        assert svc(sup).warm is None and not sup.outcomes
    [rec] = Journal(stack.config.state_dir).read()
    assert rec.kind == "readiness" and rec.done


async def test_a_standby_kept_warm_is_stopped_by_the_next_start_after_a_crash(
    moto: MotoServer, tmp_path: Path
) -> None:
    """The daemon dies (its flock goes with it) while a drill's standby is
    kept warm: the record is still open, and the next start's resumption
    stops the standby and closes it."""
    box: dict[str, Any] = {}
    prober = primary_fails_mid_drill(box, Status.SUSPECT)

    async with daemon(moto, tmp_path, SUSPECT_ONLY, prober=prober) as (sup, stack):
        box.update(sup=sup, stack=stack)
        res = await sup.standbys.drill(SERVICE)
        assert res is not None and "kept running as a pre-warm" in res.detail, res
        assert await backup_state(sup) == "running"
        sup.executor.lock.release()  # what the kernel does at a kill -9
        after = AwsExecutor(stack.config, poll_interval=0.05, progress_interval=0.5)
        try:
            assert await after.resume_pending() == []  # no failover to finish
        finally:
            after.close()
        assert await backup_state(sup) in ("stopped", "stopping")
        [rec] = Journal(stack.config.state_dir).read()
        assert rec.kind == "readiness" and rec.done


async def test_a_failover_takes_over_the_standby_a_drill_kept_warm(
    moto: MotoServer, tmp_path: Path
) -> None:
    box: dict[str, Any] = {}
    prober = primary_fails_mid_drill(box)

    # The failover comes 1 s after the first failure: after the drill ended.
    async with daemon(moto, tmp_path, {"failover_after": 1.0}, prober=prober) as (sup, stack):
        box.update(sup=sup, stack=stack)
        res = await sup.standbys.drill(SERVICE)
        assert res is not None and "kept running as a pre-warm" in res.detail, res
        await failed_over_to_the_warm_standby(sup)
    assert all(p.done for p in Journal(stack.config.state_dir).read())
