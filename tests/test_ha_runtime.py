"""Replicated deciders in one process: three Supervisors (replicas az-a,
az-b, az-c) with real probes against loopback listeners, the real leader
lease on moto's DynamoDB in server mode (behind the fault proxy, which can
make it unreachable), the views and witness of ``tests.ha_fakes``, and a
recording executor each. A replica is "cut off" from a service by probing
an address where nothing listens."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from jupiterd.aws.client import Aws
from jupiterd.aws.ha_table import create_table
from jupiterd.aws.lease import Lease
from jupiterd.config import AwsConfig
from jupiterd.core.health import Guard
from jupiterd.core.inventory import ServiceView, StaticInventory
from jupiterd.core.types import Role, Status
from jupiterd.runtime.ha import HaParts
from jupiterd.runtime.supervisor import Supervisor
from jupiterd.sandbox.peers.moto_server import MotoServer, moto_server
from jupiterd.telemetry.clock import SystemClock
from jupiterd.telemetry.metrics import Metrics
from tests.daemon_helpers import B, FakeExecutor, P, config_for, wait_for
from tests.ha_fakes import FakeViews, FakeWitness, SharedTable
from tests.peers.fault_proxy import FaultProxy
from tests.test_daemon import Listener

pytestmark = pytest.mark.slow

TABLE = "jupiterd-ha"
REGION = "us-east-1"
NOWHERE = "127.0.9.9"  # nothing listens there: a replica probing it is cut off
HA = {
    "table": TABLE,
    "replicas": 3,
    "lease_seconds": 2.0,
    "lease_margin": 0.5,
    "publish_interval": 0.2,
    "stale_after": 1.0,
}
NAMES = ("sig", "turn", "frp")


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with moto_server(patch_env=True) as server:
        yield server


class AwsSays(StaticInventory):
    """The configured instances, and where AWS sends each service's traffic
    once a test says so (``active``)."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.active: dict[str, Role] = {}

    async def snapshot(self) -> Mapping[str, ServiceView]:
        out = dict(await super().snapshot())
        for name, role in self.active.items():
            out[name] = dataclasses.replace(out[name], active=role)
        return out


@dataclass
class Fleet:
    """Three replicas' supervisors on one table, and the knobs of the faults."""

    tmp: Path
    proxy: FaultProxy
    aws: Aws
    prim: dict[str, Listener]
    back: dict[str, Listener]
    table: SharedTable = field(default_factory=SharedTable)
    sups: dict[str, Supervisor] = field(default_factory=dict)
    executors: dict[str, FakeExecutor] = field(default_factory=dict)

    async def start(
        self, rid: str, cut: tuple[str, ...] = (), witness: Any = None, delay: float = 0.05
    ) -> Supervisor:
        services = {}
        for n in NAMES:
            services[n] = {
                "probe": {"kind": "tcp", "port": self.prim[n].port},
                "primary": {"address": NOWHERE if n in cut else self.prim[n].host},
                "backup": {"address": self.back[n].host},
            }
        state_dir = self.tmp / rid
        state_dir.mkdir()
        cfg = config_for(services, str(state_dir), ha={**HA, "replica_id": rid})
        lease = Lease(self.aws, TABLE, rid, SystemClock(), duration=2.0, margin=0.5)
        parts = HaParts(lease, FakeViews(self.table, rid, HA["stale_after"]), witness)
        ex = FakeExecutor(delay=delay)
        sup = Supervisor(
            cfg,
            executor=ex,
            inventory=AwsSays(cfg),
            metrics=Metrics(CollectorRegistry()),
            rng=random.Random(1),
            tick_seconds=0.1,
            ha=parts,
        )
        await sup.start()
        self.sups[rid], self.executors[rid] = sup, ex
        return sup

    def unreachable(self, on: bool) -> None:
        self.proxy.unreachable = on
        self.table.unreachable = on

    def requests(self) -> list[tuple[str, str]]:
        return [(rid, r.service) for rid, ex in self.executors.items() for r in ex.requests]


@pytest.fixture
async def fleet(moto: MotoServer, tmp_path: Path) -> AsyncIterator[Fleet]:
    moto.reset()
    prim = {n: await Listener(f"127.0.0.{2 + i}").start() for i, n in enumerate(NAMES)}
    back = {}
    for i, n in enumerate(NAMES):
        back[n] = Listener(f"127.0.1.{2 + i}")
        back[n].port = prim[n].port
        await back[n].start()
    with FaultProxy(moto.url) as proxy:
        aws = Aws(
            AwsConfig(
                region=REGION,
                endpoint_url=proxy.url,
                max_attempts=1,
                connect_timeout=0.5,
                read_timeout=0.5,
            )
        )
        setup = Aws(AwsConfig(region=REGION, endpoint_url=moto.url))  # patient, direct
        try:
            await create_table(setup, TABLE)
        finally:
            setup.close()
        f = Fleet(tmp_path, proxy, aws, prim, back)
        try:
            yield f
        finally:
            proxy.unreachable = False
            for sup in f.sups.values():
                await sup.stop(grace=1)
            aws.close()
            for listener in [*prim.values(), *back.values()]:
                if listener.server is not None:
                    await listener.kill()


def hold_of(sup: Supervisor, name: str = "sig") -> tuple[Guard | None, str]:
    h = sup.state.services[name].hold
    return (h.guard, h.reason) if h is not None else (None, "")


def held(sup: Supervisor, guard: Guard, text: str = "") -> Callable[[], bool]:
    return lambda: hold_of(sup)[0] is guard and text in hold_of(sup)[1]


async def leader_first(f: Fleet, **kw: Any) -> Supervisor:
    """az-a starts first and takes the lease; then the others start."""
    a = await f.start("az-a", **kw.get("a", {}))
    await wait_for(lambda: a.ha is not None and a.ha.lease_state == "leader", what="az-a leads")
    await f.start("az-b", **kw.get("b", {}))
    await f.start("az-c", **kw.get("c", {}))
    return a


def all_fresh(sup: Supervisor) -> bool:
    ha = sup.ha
    return ha is not None and len(ha.seen) == 3 and all(v.fresh for v in ha.seen.values())


async def test_one_replica_cut_off_holds_no_quorum_saying_1_of_3(fleet: Fleet) -> None:
    a = await leader_first(fleet, a={"cut": ("sig",)})
    await wait_for(lambda: all_fresh(a), what="every replica's view fresh on az-a")
    await wait_for(
        held(a, Guard.NO_QUORUM, "1 of 3 replicas see the primary down (quorum 2): az-a; up: "),
        what="az-a's no_quorum hold naming the votes",
    )
    # Its view stays the only DOWN one: several reads later, still no plan.
    seen = a.ha.cluster  # type: ignore[union-attr]
    await wait_for(lambda: a.ha.cluster is not seen, what="another read")  # type: ignore[union-attr]
    await asyncio.sleep(1.0)
    assert fleet.requests() == []
    guard, reason = hold_of(a)
    assert guard is Guard.NO_QUORUM and "up: az-b, az-c" in reason
    doc = a.status()
    assert doc["ha"]["replica"] == "az-a" and doc["ha"]["leader"] == "az-a"
    assert doc["ha"]["lease"]["state"] == "leader" and doc["ha"]["reachable"] is True
    assert set(doc["ha"]["replicas"]) == {"az-a", "az-b", "az-c"}
    assert all(r["fresh"] for r in doc["ha"]["replicas"].values())
    votes = doc["services"]["sig"]["votes"]
    assert [(v["replica"], v["vote"]) for v in votes["votes"]] == [
        ("az-a", "down"),
        ("az-b", "up"),
        ("az-c", "up"),
    ]
    assert votes["reached"] is False and votes["needed"] == 2
    reg = a.metrics.registry
    assert reg.get_sample_value("jupiterd_ha_leader") == 1
    assert reg.get_sample_value("jupiterd_ha_votes", {"service": "sig", "vote": "down"}) == 1
    assert reg.get_sample_value("jupiterd_ha_votes", {"service": "sig", "vote": "up"}) == 2
    assert reg.get_sample_value("jupiterd_ha_views_published_total") > 0
    assert fleet.sups["az-b"].metrics.registry.get_sample_value("jupiterd_ha_leader") == 0


async def test_two_of_three_start_exactly_one_plan_on_the_leader(fleet: Fleet) -> None:
    # The leader's plan takes 3 s: meanwhile az-b sees the quorum too.
    a = await leader_first(fleet, a={"cut": ("sig",), "delay": 3.0}, b={"cut": ("sig",)})
    b = fleet.sups["az-b"]
    await wait_for(lambda: fleet.requests(), timeout=15, what="a plan")
    await wait_for(
        held(b, Guard.NOT_LEADER, ": the leader, az-a, acts, not this replica"),
        what="az-b held not_leader",
    )
    assert "2 of 3 replicas see the primary down (quorum 2): az-b, az-a" in hold_of(b)[1]
    await wait_for(lambda: a.state.services["sig"].active is B, what="az-a moved it")
    await asyncio.sleep(1.0)  # several reads and ticks more: nobody else acts
    assert fleet.requests() == [("az-a", "sig")]
    assert fleet.sups["az-c"].state.services["sig"].hold is None  # it sees the primary up


async def test_an_unreachable_table_holds_every_replica_and_probing_goes_on(fleet: Fleet) -> None:
    await leader_first(fleet)
    sups = list(fleet.sups.values())
    for sup in sups:
        await wait_for(lambda sup=sup: all_fresh(sup), what="fresh views")
    fleet.unreachable(True)
    await fleet.prim["sig"].kill()
    for sup in sups:
        await wait_for(
            held(sup, Guard.NO_QUORUM, "the replicas' shared table does not answer"),
            what="no_quorum while the table is unreachable",
        )
    probed = [s.state.services["sig"].primary.last_probe_at for s in sups]
    await wait_for(
        lambda: all(
            (s.state.services["sig"].primary.last_probe_at or 0) > p
            for s, p in zip(sups, probed, strict=True)
        ),
        what="probes going on",
    )
    await asyncio.sleep(2.5)  # past the lease: the leader's renewals went unanswered
    assert fleet.requests() == []
    assert all(s.state.services["sig"].primary.status is Status.DOWN for s in sups)
    lost = fleet.sups["az-a"]
    assert lost.ha is not None and lost.ha.lease_state == "lost"
    assert lost.metrics.registry.get_sample_value("jupiterd_ha_dynamodb_errors_total") > 0
    fleet.unreachable(False)
    await wait_for(lambda: fleet.requests(), timeout=15, what="acting resumes")
    await asyncio.sleep(1.0)
    [(rid, service)] = fleet.requests()
    assert service == "sig"
    assert fleet.sups[rid].ha is not None and fleet.sups[rid].ha.lease_state == "leader"


async def test_a_vetoing_witness_holds_with_every_replica_down(fleet: Fleet) -> None:
    witness = FakeWitness(down=False, veto=True)
    await leader_first(
        fleet, a={"witness": witness}, b={"witness": witness}, c={"witness": witness}
    )
    a = fleet.sups["az-a"]
    await wait_for(lambda: all_fresh(a), what="fresh views")
    await fleet.prim["sig"].kill()
    await wait_for(held(a, Guard.NO_QUORUM, "3 of 3 replicas see the primary down"), what="held")
    assert hold_of(a)[1].endswith(
        "the ELB witness says healthy (healthy in tg-sig (test)): its veto holds the failover"
    )
    await asyncio.sleep(1.0)
    assert fleet.requests() == []
    assert any(s == "sig" for s, _ in witness.asked)
    witness.down = True  # AWS now agrees
    await wait_for(lambda: fleet.requests(), timeout=10, what="the failover")
    await asyncio.sleep(0.5)
    assert fleet.requests() == [("az-a", "sig")]


async def test_stop_releases_the_lease_and_another_leads_at_once(fleet: Fleet) -> None:
    a = await leader_first(fleet)
    b = fleet.sups["az-b"]
    await wait_for(lambda: b.ha is not None and b.ha.leader_id == "az-a", what="az-b follows")
    await a.stop(grace=1)
    del fleet.sups["az-a"]
    await wait_for(
        lambda: any(s.ha is not None and s.ha.lease_state == "leader" for s in fleet.sups.values()),
        timeout=3,  # well under the 2 s lease's takeover wait plus renewals
        what="a new leader",
    )


async def test_a_follower_reads_aws_at_once_when_the_leader_moved_a_service(
    fleet: Fleet,
) -> None:
    """After the leader's failover, a follower whose periodic refresh is far
    off learns the new active from the leader's view and re-reads AWS at
    once: it then votes on the instance that serves."""
    a = await leader_first(fleet, a={"cut": ("sig",), "delay": 0.2}, b={"cut": ("sig",)})
    await wait_for(lambda: a.state.services["sig"].active is B, what="az-a moved it")
    for rid in ("az-b", "az-c"):  # what AWS says now, for whoever asks
        inv = fleet.sups[rid].inventory
        assert isinstance(inv, AwsSays)
        inv.set_state("sig", P, "stopped")
        inv.set_state("sig", B, "running")
        inv.active["sig"] = B
    for rid in ("az-b", "az-c"):
        sup = fleet.sups[rid]
        assert sup.refresh_seconds >= 30  # the periodic refresh would come much later
        await wait_for(
            lambda sup=sup: sup.state.services["sig"].active is B,
            timeout=8,
            what=f"{rid} sees the backup active",
        )
