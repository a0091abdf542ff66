"""The daemon with the AWS executor and inventory against moto in server
mode behind the fault proxy: an AWS outage longer than the cooldown while a
failover is due must not cost the failover (the fault matrix's case)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from jupiterd.aws.executor import AwsExecutor
from jupiterd.aws.inventory import AwsInventory
from jupiterd.core.health import Guard
from jupiterd.core.types import Status
from jupiterd.runtime.supervisor import Supervisor
from jupiterd.sandbox.peers.moto_server import MotoServer, moto_server
from jupiterd.telemetry.metrics import Metrics
from tests.daemon_helpers import B, P, wait_for
from tests.peers.fault_proxy import FaultProxy
from tests.peers.jupiter_aws import FAST, jupiter_stack

pytestmark = pytest.mark.slow

COOLDOWN = 1.0


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with moto_server(patch_env=True) as server:
        yield server


async def test_aws_outage_longer_than_the_cooldown_does_not_cost_the_failover(
    moto: MotoServer, tmp_path: Path
) -> None:
    moto.reset()
    defaults = {**FAST, "cooldown": COOLDOWN, "max_failovers_per_hour": 2}
    with (
        FaultProxy(moto.url) as proxy,
        jupiter_stack(
            moto.url, tmp_path, services=["frp"], client_endpoint=proxy.url, defaults=defaults
        ) as stack,
    ):
        aws = stack.config.aws.model_copy(update={"max_attempts": 1, "read_timeout": 2.0})
        cfg = stack.config.model_copy(update={"aws": aws})
        ex = AwsExecutor(cfg, poll_interval=0.05, progress_interval=0.5)
        metrics = Metrics(CollectorRegistry())
        sup = Supervisor(
            cfg,
            executor=ex,
            inventory=AwsInventory(cfg, ex.aws, metrics=metrics),
            metrics=metrics,
            rng=random.Random(1),
            tick_seconds=0.1,
            aws_retry_seconds=(0.2, 0.8),
        )
        await sup.start()
        svc = lambda: sup.state.services["frp"]  # noqa: E731
        try:
            await wait_for(lambda: svc().primary.status is Status.UP, what="primary up")
            await wait_for(lambda: "frp" in sup.views, what="the first inventory")
            # AWS goes away between two refreshes: the plan is the first to see it.
            proxy.unreachable = True
            stack.listeners.stop("frp", "primary")
            await wait_for(lambda: sup.outcomes, what="the first plan's outcome")
            [first] = sup.outcomes
            assert first["result"] == "aborted" and "nothing was changed" in first["detail"]
            await wait_for(
                lambda: svc().hold is not None and svc().hold.guard is Guard.AWS_UNREACHABLE,
                what="the aws_unreachable hold",
            )
            # AWS stays unreachable for several cooldowns: no plan runs in vain,
            # and the failed reads are retried (every 0.1-0.8 s here).
            unanswered = sum(proxy.faults.values())
            await wait_for(lambda: sum(proxy.faults.values()) >= unanswered + 3, what="AWS re-read")
            await wait_for(lambda: sup.now() - svc().hold.since > 3 * COOLDOWN, what="an outage")
            assert len(sup.outcomes) == 1
            doc = sup.status()
            assert doc["aws_unreachable"]["error"]
            assert doc["services"]["frp"]["hold"]["guard"] == "aws_unreachable"
            assert doc["services"]["frp"]["failovers_last_hour"] == 0
            # AWS answers again: the failover starts at once and succeeds.
            proxy.unreachable = False
            await wait_for(lambda: svc().active is B, timeout=30, what="traffic on the backup")
        finally:
            await sup.stop(grace=1)
            ex.close()
    assert [o["result"] for o in sup.outcomes] == ["aborted", "success"]
    reg = metrics.registry
    holds = {
        g.value: reg.get_sample_value("jupiterd_holds_total", {"service": "frp", "guard": g.value})
        for g in Guard
    }
    assert holds["aws_unreachable"] == 1
    assert holds["rate_limit"] is None and holds["cooldown"] is None
    assert sup.state.services["frp"].primary.status is Status.STOPPED
    assert P is not B
