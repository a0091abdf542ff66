"""The supervisor in-process: real probes against loopback listeners, the
static inventory, a fake executor. Killing a primary's listener must lead to
exactly one failover; killing everything must be held as isolation."""

from __future__ import annotations

import asyncio
import json
import random
from collections import deque

import pytest
from prometheus_client import CollectorRegistry

from jupiterd.core.execution import OfflineExecutor
from jupiterd.core.health import Guard
from jupiterd.core.inventory import StaticInventory
from jupiterd.core.types import Status
from jupiterd.runtime.api import make_app
from jupiterd.runtime.supervisor import Supervisor
from jupiterd.telemetry.metrics import Metrics
from tests.daemon_helpers import FAST, B, FakeExecutor, P, config_for, wait_for


class Listener:
    """A TCP listener that can be killed (closed) and revived on its port."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.port = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> Listener:
        self.server = await asyncio.start_server(lambda r, w: w.close(), self.host, self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def kill(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        self.server = None


@pytest.fixture
async def stack(tmp_path, request):
    """Three services on loopback listeners. Indirect parameters (a dict):
    ``defaults`` (threshold overrides), ``top`` (more top-level config),
    ``executor`` (a factory; default FakeExecutor)."""
    param = getattr(request, "param", {})
    names = ["sig", "turn", "frp"]
    prim = {n: await Listener(f"127.0.0.{2 + i}").start() for i, n in enumerate(names)}
    back = {n: await Listener(f"127.0.1.{2 + i}").start() for i, n in enumerate(names)}
    services = {}
    for n in names:
        assert prim[n].port
        services[n] = {
            "probe": {"kind": "tcp", "port": prim[n].port},
            "primary": {"address": prim[n].host},
            "backup": {"address": back[n].host},
        }
    # Backups listen on the same port as their primary, on another address.
    for n in names:
        await back[n].kill()
        back[n].port = prim[n].port
        await back[n].start()
    cfg = config_for(
        services,
        str(tmp_path),
        defaults={**FAST, **param.get("defaults", {})},
        **param.get("top", {}),
    )
    executor = param.get("executor", FakeExecutor)()
    inv = StaticInventory(cfg)
    metrics = Metrics(CollectorRegistry())
    sup = Supervisor(
        cfg,
        executor=executor,
        inventory=inv,
        metrics=metrics,
        rng=random.Random(1),
        tick_seconds=0.1,
    )
    await sup.start()
    yield sup, executor, prim, back, inv
    await sup.stop(grace=1)
    for listener in [*prim.values(), *back.values()]:
        if listener.server is not None:
            await listener.kill()


def st(sup, name, role):
    return sup.state.services[name].target(role).status


async def test_all_primaries_come_up(stack):
    sup, executor, *_ = stack
    await wait_for(
        lambda: all(st(sup, n, P) is Status.UP for n in ("sig", "turn", "frp")), what="primaries up"
    )
    assert all(st(sup, n, B) is Status.STOPPED for n in ("sig", "turn", "frp"))
    assert executor.requests == []
    reg = sup.metrics.registry
    assert reg.get_sample_value("jupiterd_service_up", {"service": "sig"}) == 1
    assert (
        reg.get_sample_value(
            "jupiterd_target_state",
            {"service": "sig", "role": "primary", "jupiterd_target_state": "up"},
        )
        == 1
    )


async def test_killed_primary_fails_over_once_then_cooldown_holds(stack):
    sup, executor, prim, back, inv = stack
    await wait_for(lambda: all(st(sup, n, P) is Status.UP for n in ("sig", "turn", "frp")))
    await prim["sig"].kill()
    await wait_for(lambda: executor.requests, what="a failover request")
    [req] = executor.requests
    assert (req.service, req.from_role, req.to_role) == ("sig", P, B)
    assert "3 consecutive probes failed" in req.reason and "refused" in req.reason
    await wait_for(lambda: sup.state.services["sig"].active is B, what="backup active")
    # The plan started the backup: the inventory now says so.
    inv.set_state("sig", B, "running")
    inv.set_state("sig", P, "stopped")
    await sup.refresh_inventory()
    await wait_for(lambda: st(sup, "sig", B) is Status.UP, what="backup probed up")
    # Now the backup dies too: within the cooldown, no second failover.
    await back["sig"].kill()
    await wait_for(lambda: sup.state.services["sig"].hold is not None, what="a hold")
    hold = sup.state.services["sig"].hold
    assert hold.guard is Guard.COOLDOWN
    assert len(executor.requests) == 1
    reg = sup.metrics.registry
    assert (
        reg.get_sample_value("jupiterd_holds_total", {"service": "sig", "guard": "cooldown"}) == 1
    )
    assert (
        reg.get_sample_value(
            "jupiterd_failovers_total",
            {"service": "sig", "direction": "failover", "result": "success"},
        )
        == 1
    )
    status = sup.status()["services"]["sig"]
    assert status["hold"]["guard"] == "cooldown"
    assert status["active"] == "backup"


async def test_everything_down_is_held_as_isolation(stack):
    sup, executor, prim, *_ = stack
    await wait_for(lambda: all(st(sup, n, P) is Status.UP for n in ("sig", "turn", "frp")))
    for listener in prim.values():
        await listener.kill()
    await wait_for(
        lambda: all(sup.state.services[n].hold is not None for n in ("sig", "turn", "frp")),
        what="three holds",
    )
    assert {sup.state.services[n].hold.guard for n in ("sig", "turn", "frp")} == {Guard.ISOLATION}
    await asyncio.sleep(0.5)  # more probes: still nothing acts
    assert executor.requests == []


async def test_http_api(stack, aiohttp_client=None):
    sup, *_ = stack
    from aiohttp.test_utils import TestClient, TestServer

    async with TestClient(TestServer(make_app(sup))) as client:
        r = await client.get("/healthz")
        assert r.status == 200
        r = await client.get("/status")
        doc = json.loads(await r.text())
        assert set(doc["services"]) == {"sig", "turn", "frp"}
        assert doc["services"]["sig"]["targets"]["primary"]["target"].startswith("127.0.0.2:")
        r = await client.get("/metrics")
        text = await r.text()
        assert "jupiterd_probe_duration_seconds_bucket" in text
        post = {"X-Jupiterd-Request": "1"}
        r = await client.post("/pause", json={"by": "alice"}, headers=post)
        assert r.status == 200
        assert sup.state.paused and sup.state.pause_reason == "paused by alice"
        assert (sup.config.state_dir + "/paused") and __import__("os").path.exists(
            sup.config.state_dir + "/paused"
        )
        r = await client.post("/resume", headers=post)
        assert not sup.state.paused
        post["Content-Type"] = "application/json"
        r = await client.post("/pause", data=b"{not json", headers=post)
        assert r.status == 400


@pytest.mark.parametrize("stack", [{"defaults": {"cooldown": 0.3}}], indirect=True)
async def test_dead_old_primary_is_not_restarted_when_the_new_active_dies(stack):
    """After a failover that stopped the dead primary (stop_old), the backup
    dies too: held by both_down, not a failback to the stopped primary after
    each cooldown; starting the primary by hand lets the failback happen."""
    sup, executor, prim, back, inv = stack

    def moved(req):  # what AWS would say once the plan ran
        inv.set_state(req.service, req.to_role, "running")
        inv.set_state(req.service, req.from_role, "stopped")

    executor.on_run = moved
    await wait_for(lambda: all(st(sup, n, P) is Status.UP for n in ("sig", "turn", "frp")))
    await prim["sig"].kill()
    await wait_for(lambda: st(sup, "sig", B) is Status.UP, what="backup active and up")
    assert st(sup, "sig", P) is Status.STOPPED
    await back["sig"].kill()
    await wait_for(
        lambda: (h := sup.state.services["sig"].hold) is not None and h.guard is Guard.BOTH_DOWN,
        what="a both_down hold",
    )
    await asyncio.sleep(1.0)  # three cooldowns: still nothing restarts the primary
    assert len(executor.requests) == 1
    status = sup.status()["services"]["sig"]
    assert status["hold"]["guard"] == "both_down"
    assert "not restarting it automatically" in status["hold"]["reason"]
    assert status["alert"].startswith("both instances are down (the primary was stopped")
    reg = sup.metrics.registry
    assert reg.get_sample_value("jupiterd_service_alert", {"service": "sig"}) == 1
    # The operator starts the old primary; once it passes its probes, it takes over.
    await prim["sig"].start()
    inv.set_state("sig", P, "running")
    await sup.refresh_inventory()
    await wait_for(lambda: len(executor.requests) == 2, what="the failback")
    assert (executor.requests[1].from_role, executor.requests[1].to_role) == (B, P)


@pytest.mark.parametrize(
    "stack", [{"top": {"aws": {"enabled": False}}, "executor": OfflineExecutor}], indirect=True
)
async def test_monitor_only_reports_due_failovers_without_cooldown(stack):
    sup, _, prim, *_ = stack
    reg = sup.metrics.registry

    def due() -> float:
        return reg.get_sample_value("jupiterd_failovers_due_total", {"service": "sig"}) or 0.0

    doc = sup.status()
    assert doc["mode"] == "monitor_only" and doc["dry_run"] is False
    await wait_for(lambda: all(st(sup, n, P) is Status.UP for n in ("sig", "turn", "frp")))
    await prim["sig"].kill()
    await wait_for(lambda: due() == 1, what="a due failover reported")
    svc = sup.status()["services"]["sig"]
    assert svc["failover_due"]["to"] == "backup"
    assert svc["decision"].startswith("failover due to the backup")
    assert svc["last_failover_at"] is None and svc["failovers_last_hour"] == 0
    assert svc["in_flight"] is None and svc["active"] == "primary"
    assert sup.outcomes == deque()  # no plan ran
    await asyncio.sleep(0.3)
    assert due() == 1  # once per outage
    # Back up, then down again: reported again, not "held by cooldown".
    await prim["sig"].start()
    await wait_for(lambda: st(sup, "sig", P) is Status.UP, what="primary up again")
    assert sup.status()["services"]["sig"]["failover_due"] is None
    await prim["sig"].kill()
    await wait_for(lambda: due() == 2, what="the second outage reported")
    assert sup.state.services["sig"].hold is None
    assert (
        reg.get_sample_value("jupiterd_holds_total", {"service": "sig", "guard": "cooldown"})
        is None
    )


async def test_aws_unreachable_holds_retries_soon_and_acts_when_aws_answers(stack):
    from jupiterd.aws.client import AwsUnavailable

    sup, executor, prim, _, inv = stack
    sup.aws_retry_seconds = (0.05, 0.2)
    real = inv.snapshot
    calls = []

    async def snapshot():
        calls.append(sup.now())
        if down:
            raise AwsUnavailable(
                "ec2:DescribeInstances", "instances", "EndpointConnectionError", "no answer"
            )
        return await real()

    down = True
    inv.snapshot = snapshot
    await wait_for(lambda: all(st(sup, n, P) is Status.UP for n in ("sig", "turn", "frp")))
    await sup.refresh_inventory()  # the periodic refresh finds AWS gone
    await prim["sig"].kill()
    svc = lambda: sup.state.services["sig"]  # noqa: E731
    await wait_for(
        lambda: svc().hold is not None and svc().hold.guard is Guard.AWS_UNREACHABLE,
        what="the aws_unreachable hold",
    )
    assert "AWS does not answer jupiterd's reads" in svc().hold.reason
    await wait_for(lambda: len(calls) >= 4, what="AWS re-read with backoff")
    assert executor.requests == []
    doc = sup.status()
    assert "no answer" in doc["aws_unreachable"]["error"]
    reg = sup.metrics.registry
    held = {"service": "sig", "guard": "aws_unreachable"}
    assert reg.get_sample_value("jupiterd_hold_active", held) == 1
    down = False
    await wait_for(lambda: executor.requests, what="the failover once AWS answers")
    assert sup.status()["aws_unreachable"] is None
    assert reg.get_sample_value("jupiterd_hold_active", held) == 0


async def test_a_reload_says_which_changes_wait_for_a_restart(tmp_path):
    """ha: and the readiness schedules are read at start only: a reload
    that changes them keeps running and says so, once per change."""
    from structlog.testing import capture_logs

    from tests.daemon_helpers import supervisor_for

    svc = {"probe": {"kind": "tcp", "port": 9}, "primary": {"address": "127.0.0.1"}}
    cfg = config_for({"signaling": svc}, str(tmp_path))
    sup = supervisor_for(cfg, FakeExecutor())
    await sup.start()
    try:
        same = config_for({"signaling": svc}, str(tmp_path))
        with capture_logs() as quiet:
            await sup.reload(same)
        assert not [e for e in quiet if "next restart" in e["event"]]
        changed = config_for(
            {"signaling": {**svc, "readiness": {"schedule": "0 3 * * 1"}}},
            str(tmp_path),
            ha={"table": "jupiterd-ha", "replica_id": "az-a"},
        )
        with capture_logs() as logs:
            await sup.reload(changed)
        said = [e["event"] for e in logs if "next restart" in e["event"]]
        assert len(said) == 2
        assert any(w.startswith("ha: ") for w in said)
        assert any("readiness:" in w for w in said)
        assert sup.ha is None  # still deciding alone until restarted
    finally:
        await sup.stop()
