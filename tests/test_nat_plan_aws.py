"""A NAT pool's default plan on moto in server mode: the dead member's
route tables through the surviving NAT at once, then through the started
standby; the guard (a failing peer is never a fallback); both members
failing one after the other. After every step, no default route points at
an instance that is not running.

The instances are loopback addresses (tests/peers/nat_pool.py); a member
"dies" by failing its ICMP probes (the prober answers for it), the others
answer real ICMP echo requests."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import probes
from jupiterd.aws.executor import AwsExecutor
from jupiterd.config import parse_config
from jupiterd.core.execution import FailoverOutcome, StepReport
from jupiterd.core.types import Role
from jupiterd.sandbox.peers.moto_server import MotoServer, moto_server
from probes import ProbeOptions, ProbeResult
from probes.result import Reason
from tests.peers.jupiter_aws import FAST
from tests.peers.nat_pool import HOSTS, NatPool, nat_pool
from tests.test_pool_aws import Checked, state_of, stranded

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with moto_server(patch_env=True) as server:
        yield server


@pytest.fixture
def pool(moto: MotoServer, tmp_path: Path) -> Iterator[NatPool]:
    """The seeded pool, configured as NAT instances: ICMP probes, route
    tables only (the default plan: peer_then_standby)."""
    moto.reset()
    with nat_pool(moto.url, tmp_path) as p:
        members = {
            m: {
                "instance_id": p.ids[m],
                "address": HOSTS[m],
                "attachments": {"route_tables": p.route_tables[m]},
            }
            for m in ("nat-a", "nat-b")
        }
        doc: dict[str, Any] = {
            "aws": {"region": p.topology.region, "endpoint_url": moto.url},
            "state_dir": str(tmp_path / "state"),
            "sns_topic_arn": p.topology.topic_arn,
            "defaults": dict(FAST),
            "pools": {
                "nat": {
                    "probe": {"kind": "icmp"},
                    "members": members,
                    "standby": {"instance_id": p.ids["standby"], "address": HOSTS["standby"]},
                }
            },
        }
        cfg = parse_config(doc)
        assert cfg.pool_plan("nat-a") == "peer_then_standby"
        yield dataclasses.replace(p, config=cfg)


class Nat(Checked):
    """``Checked`` with dead members (their probes fail) and the stronger
    NAT invariant: every member's default routes go through a running
    instance, whichever it is (the peer's too)."""

    def __init__(self, pool: NatPool) -> None:
        super().__init__(pool)
        self.dead: set[str] = set()
        self.routes: list[tuple[str, dict[str, str]]] = []  # after each step
        self.ex.close()
        self.ex = AwsExecutor(
            pool.config,
            poll_interval=0.05,
            progress_interval=0.2,
            on_step=self._hook,
            prober=self._probe,
        )

    async def _probe(
        self, kind: str, target: str, options: ProbeOptions, timeout: float
    ) -> ProbeResult:
        if target in {HOSTS[m] for m in self.dead}:
            return ProbeResult(kind, target, False, Reason.TIMEOUT, "no echo reply", timeout)
        return await probes.get_kind(kind).probe(target, options, timeout)

    def route_targets(self) -> dict[str, str]:
        """Route table -> who its default route goes through (nat-a,
        nat-b, standby)."""
        ec2, _, _ = self.pool.clients()
        by_eni = {eni: k for k, eni in self.pool.enis.items()}
        tables = [t for ts in self.pool.route_tables.values() for t in ts]
        out = {}
        for rt in ec2.describe_route_tables(RouteTableIds=tables)["RouteTables"]:
            default = next(r for r in rt["Routes"] if r.get("DestinationCidrBlock") == "0.0.0.0/0")
            out[rt["RouteTableId"]] = by_eni.get(default.get("NetworkInterfaceId", ""), "?")
        return out

    async def _hook(self, service: str, report: StepReport) -> None:
        await super()._hook(service, report)
        targets = self.route_targets()
        self.routes.append((f"{service} {report.name}", targets))
        for rtb, who in targets.items():
            if who == "?" or state_of(self.pool, who) != "running":
                self.problems.append(f"after {service} {report.name}: {rtb} goes via {who}")

    async def fail(self, member: str) -> FailoverOutcome:
        self.dead.add(member)
        return await self.run(member, Role.BACKUP)

    def after(self, step: str) -> dict[str, str]:
        return next(t for name, t in self.routes if name == step)


async def test_cross_az_fallback_then_the_standby(pool: NatPool) -> None:
    c = Nat(pool)
    try:
        o = await c.fail("nat-a")
        assert o.result == "success", o.detail
        names = [r.name for r in o.steps]
        reroutes = [f"reroute_peer:{t}" for t in pool.route_tables["nat-a"]]
        assert names[1 : 1 + len(reroutes)] == reroutes  # before the standby starts
        assert names.index("start_standby") > names.index(reroutes[-1])
        # Right after (a): the dead member's tables through the surviving NAT.
        mid = c.after(f"nat-a {reroutes[-1]}")
        assert {mid[t] for t in pool.route_tables["nat-a"]} == {"nat-b"}
        assert {mid[t] for t in pool.route_tables["nat-b"]} == {"nat-b"}
        # After the plan: one NAT per AZ again, nat-a stopped.
        end = c.route_targets()
        assert {end[t] for t in pool.route_tables["nat-a"]} == {"standby"}
        assert {end[t] for t in pool.route_tables["nat-b"]} == {"nat-b"}
        assert state_of(pool, "nat-a") == "stopped" and state_of(pool, "standby") == "running"
        # Failback: the routes home, the standby stopped.
        c.dead.clear()
        o = await c.run("nat-a", Role.PRIMARY)
        assert o.result == "success", o.detail
        assert set(c.route_targets().values()) == {"nat-a", "nat-b"}
        assert state_of(pool, "standby") == "stopped"
        assert c.problems == []
        assert await stranded(pool, c.inventory) == []
    finally:
        c.close()


async def test_a_failing_peer_is_never_the_fallback(pool: NatPool) -> None:
    c = Nat(pool)
    try:
        c.dead.add("nat-b")  # fails its probes, yet runs
        o = await c.fail("nat-a")
        assert o.result == "success", o.detail
        assert not [r for r in o.steps if r.name.startswith("reroute_peer")]
        pre = o.steps[0]
        assert "no reroute through another NAT first" in pre.detail
        assert f"nat-b's instance {pool.ids['nat-b']} fails its icmp probe" in pre.detail
        # Never through nat-b, at any step:
        for step, targets in c.routes:
            for rtb in pool.route_tables["nat-a"]:
                assert targets[rtb] in ("nat-a", "standby"), (step, targets)
        assert c.problems == []
    finally:
        c.close()


async def test_both_members_fail_one_after_the_other(pool: NatPool) -> None:
    c = Nat(pool)
    try:
        o = await c.fail("nat-a")
        assert o.result == "success", o.detail
        # nat-b dies while the standby serves nat-a: no hold, its tables go
        # through the standby (a NAT already forwarding) at once.
        o = await c.fail("nat-b")
        assert o.result == "success", o.detail
        first = next(r for r in o.steps if r.name.startswith("reroute_peer"))
        assert first.ok and pool.enis["standby"] in first.detail, first.detail
        assert set(c.route_targets().values()) == {"standby"}
        assert state_of(pool, "nat-a") == "stopped" and state_of(pool, "nat-b") == "stopped"
        # Failback of one keeps the standby the other uses; the last stops it.
        c.dead.clear()
        o = await c.run("nat-a", Role.PRIMARY)
        assert o.result == "success", o.detail
        assert state_of(pool, "standby") == "running"
        o = await c.run("nat-b", Role.PRIMARY)
        assert o.result == "success", o.detail
        assert state_of(pool, "standby") == "stopped"
        assert set(c.route_targets().values()) == {"nat-a", "nat-b"}
        assert c.problems == [], c.problems
        assert await stranded(pool, c.inventory) == []
    finally:
        c.close()


async def test_a_standby_that_never_forwards_leaves_the_routes_on_the_peer(pool: NatPool) -> None:
    # nat-a dead, the standby too: the rollback cannot move the routes back
    # to nat-a, so they stay on nat-b, which runs; nothing is stranded.
    c = Nat(pool)
    try:
        c.dead.add("standby")
        o = await c.fail("nat-a")
        assert o.result in ("aborted", "failed"), o.detail
        assert "standby_healthy" in o.detail and "cannot roll back" in o.detail, o.detail
        end = c.route_targets()
        assert {end[t] for t in pool.route_tables["nat-a"]} == {"nat-b"}
        assert state_of(pool, "nat-a") == "running"  # never stopped: the plan did not finish
        assert c.problems == [], c.problems
    finally:
        c.close()


async def test_the_rollback_of_a_healthy_member_s_plan_moves_its_routes_home(pool: NatPool) -> None:
    # An operator's failover of a healthy nat-a, the standby never forwards:
    # the routes rerouted to nat-b go back to nat-a, the standby is stopped.
    c = Nat(pool)
    try:
        c.dead.add("standby")
        o = await c.run("nat-a", Role.BACKUP)
        assert o.result == "aborted", o.detail
        assert "moved back to the primary" in o.detail, o.detail
        assert [r.name for r in o.steps if r.name.startswith("reroute_peer")]
        end = c.route_targets()
        assert {end[t] for t in pool.route_tables["nat-a"]} == {"nat-a"}
        assert state_of(pool, "standby") in ("stopped", "stopping")
        assert c.problems == [], c.problems
    finally:
        c.close()
