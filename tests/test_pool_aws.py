"""A pool of two NAT instances sharing one backup, on moto in server mode:
``status`` for every combination of what the standby serves (never
raising), and real failovers and failbacks through the executor with the
invariant "no attachment points at a stopped instance" checked after every
step."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from jupiterd.aws.executor import AwsExecutor
from jupiterd.aws.inventory import AwsInventory
from jupiterd.cli.ops import _format_status, _status
from jupiterd.core.execution import FailoverOutcome, FailoverRequest, StepReport
from jupiterd.core.plan import attachment_states
from jupiterd.core.types import STOPPED_STATES, TERMINATED_STATES, Role
from jupiterd.sandbox.peers.moto_server import MotoServer, client_env, moto_server
from jupiterd.sandbox.seed import read_notifications
from tests.peers.nat_pool import MEMBERS, NatPool, nat_pool

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with moto_server(patch_env=True) as server:
        yield server


@pytest.fixture
def pool(moto: MotoServer, tmp_path: Path) -> Iterator[NatPool]:
    moto.reset()
    with nat_pool(moto.url, tmp_path) as p:
        yield p


def serve(pool: NatPool, member: str, by: str) -> None:
    """Point every attachment of ``member`` at ``by`` ("standby" or the
    member itself) straight in moto, as a plan would leave them."""
    ec2, elb, r53 = pool.clients()
    target, other = (pool.ids[by], pool.ids["standby" if by == member else member])
    if by == "standby":
        ec2.start_instances(InstanceIds=[target])
    for rtb in pool.route_tables[member]:
        ec2.replace_route(
            RouteTableId=rtb, DestinationCidrBlock="0.0.0.0/0", NetworkInterfaceId=pool.enis[by]
        )
    arn = pool.target_groups[member]
    port = 7101 + MEMBERS.index(member)
    elb.register_targets(TargetGroupArn=arn, Targets=[{"Id": target, "Port": port}])
    elb.deregister_targets(TargetGroupArn=arn, Targets=[{"Id": other, "Port": port}])
    if member in pool.eips:
        ec2.associate_address(
            AllocationId=pool.eips[member], InstanceId=target, AllowReassociation=True
        )
    r53.change_resource_record_sets(
        HostedZoneId=pool.topology.zone_id,
        ChangeBatch={
            "Changes": [
                {
                    "Action": "UPSERT",
                    "ResourceRecordSet": {
                        "Name": pool.records[member],
                        "Type": "A",
                        "TTL": 30,
                        "ResourceRecords": [{"Value": pool.private_ips[by]}],
                    },
                }
            ]
        },
    )


def state_of(pool: NatPool, key: str) -> str:
    ec2, _, _ = pool.clients()
    inst = ec2.describe_instances(InstanceIds=[pool.ids[key]])["Reservations"][0]["Instances"][0]
    return str(inst["State"]["Name"])


async def stranded(pool: NatPool, inventory: AwsInventory) -> list[str]:
    """Every attachment of any service that points at a stopped (or
    stopping, or gone) instance, one sentence each."""
    out = []
    facts = await inventory.facts()
    for name, f in facts.items():
        for a in attachment_states(pool.config, name, f):
            for role in a.points_to:
                inst = f.instance(role)
                if inst.state in STOPPED_STATES | TERMINATED_STATES:
                    out.append(f"{name}: {a.kind} {a.name} -> {inst.instance_id} ({inst.state})")
    return out


# --------------------------------------------------------------------------- status


COMBINATIONS = {
    "neither": ({}, [], "serves none"),
    "a": ({"nat-a": "standby"}, ["nat-a"], "serves nat-a"),
    "b": ({"nat-b": "standby"}, ["nat-b"], "serves nat-b"),
    "both": (
        {"nat-a": "standby", "nat-b": "standby"},
        ["nat-a", "nat-b"],
        "serves all (nat-a, nat-b)",
    ),
}


@pytest.mark.parametrize("combo", list(COMBINATIONS))
async def test_status_shows_what_the_standby_serves(pool: NatPool, combo: str) -> None:
    moves, serves, summary = COMBINATIONS[combo]
    for member, by in moves.items():
        serve(pool, member, by)
    for services in (list(pool.config.services), ["nat-b"]):
        report = await _status(pool.config, services)
        sb = report["pools"]["nat"]["standby"]
        assert sb["instance_id"] == pool.ids["standby"]
        assert sb["serves"] == serves and sb["summary"] == summary
        members = report["pools"]["nat"]["members"]
        assert {m: v["served_by"] for m, v in members.items()} == {
            m: "backup" if m in moves else "primary" for m in MEMBERS
        }
        text = _format_status(report)
        assert f"pool nat: standby {pool.ids['standby']}" in text and summary in text
    for member in MEMBERS:
        assert report["services"].get(member, {"active": None})["active"] in (
            None,
            "backup" if member in moves else "primary",
        )


async def test_status_of_a_split_member_does_not_raise(pool: NatPool) -> None:
    serve(pool, "nat-b", "standby")
    ec2, _, _ = pool.clients()
    # One of nat-a's tables through the standby, the rest on nat-a: split.
    ec2.replace_route(
        RouteTableId=pool.route_tables["nat-a"][0],
        DestinationCidrBlock="0.0.0.0/0",
        NetworkInterfaceId=pool.enis["standby"],
    )
    report = await _status(pool.config, list(pool.config.services))
    assert report["pools"]["nat"]["members"]["nat-a"]["served_by"] is None
    assert report["pools"]["nat"]["standby"]["serves"] == ["nat-b"]
    assert "SPLIT" in _format_status(report)


@pytest.mark.slow
async def test_cli_status_of_a_standby_serving_both(pool: NatPool) -> None:
    # The crash: a backup named by two services was a KeyError.
    serve(pool, "nat-a", "standby")
    serve(pool, "nat-b", "standby")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "jupiterd", "status", *args, "--config", str(pool.config_path)],
            cwd=ROOT,
            env=client_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    p = await asyncio.to_thread(cli)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    assert f"pool nat: standby {pool.ids['standby']} (running) serves all" in p.stdout
    p = await asyncio.to_thread(cli, "--json", "nat-a")
    assert p.returncode == 0, p.stdout + p.stderr
    report = json.loads(p.stdout)
    assert report["pools"]["nat"]["standby"]["serves"] == ["nat-a", "nat-b"]
    assert report["services"]["nat-a"]["shared"] == {
        pool.ids["standby"]: [
            "nat-b's target group pool-nat-b",
            f"nat-b's elastic ip {pool.eips['nat-b']}",
            f"nat-b's route53 {pool.records['nat-b'].rstrip('.')} A",
            f"nat-b's route table {pool.route_tables['nat-b'][0]}",
        ]
    }


# --------------------------------------------------------------------------- the matrix


class Checked:
    """An executor whose every step is followed by the invariant check."""

    def __init__(self, pool: NatPool, *, dry_run: bool = False) -> None:
        self.pool = pool
        self.problems: list[str] = []
        self.steps: list[str] = []
        # "service step" prefix -> a change made (once) after that step,
        # as another plan or an operator would make it meanwhile.
        self.actions: dict[str, Callable[[], None]] = {}
        self.inventory = AwsInventory(pool.config)
        self.ex = AwsExecutor(
            pool.config,
            dry_run=dry_run,
            poll_interval=0.05,
            progress_interval=0.2,
            on_step=self._hook,
        )

    async def _hook(self, service: str, report: StepReport) -> None:
        self.steps.append(f"{service} {report.name}")
        for prefix in [p for p in self.actions if self.steps[-1].startswith(p)]:
            await asyncio.to_thread(self.actions.pop(prefix))
        for p in await stranded(self.pool, self.inventory):
            self.problems.append(f"after {service} {report.name}: {p}")

    async def run(self, member: str, to: Role) -> FailoverOutcome:
        outcome = await self.ex.run(FailoverRequest(member, to.other, to, "test", "cli"))
        for p in await stranded(self.pool, self.inventory):
            self.problems.append(f"after {member} to the {to}: {p}")
        return outcome

    def close(self) -> None:
        self.ex.close()
        self.inventory.aws.close()


@pytest.mark.slow
async def test_failover_failback_matrix_never_strands_an_attachment(pool: NatPool) -> None:
    c = Checked(pool)
    try:
        o = await c.run("nat-a", Role.BACKUP)
        assert o.result == "success", o.detail
        assert state_of(pool, "standby") == "running" and state_of(pool, "nat-a") == "stopped"

        o = await c.run("nat-b", Role.BACKUP)  # the standby serves nat-a
        assert o.result == "aborted", o.detail
        assert "already serves another member" in o.detail and "nothing was changed" in o.detail
        assert state_of(pool, "nat-b") == "running"

        o = await c.run("nat-a", Role.PRIMARY)
        assert o.result == "success", o.detail
        assert state_of(pool, "standby") == "stopped"  # nobody uses it any longer

        o = await c.run("nat-b", Role.BACKUP)
        assert o.result == "success", o.detail
        o = await c.run("nat-a", Role.BACKUP)  # now the standby serves nat-b
        assert o.result == "aborted", o.detail
        o = await c.run("nat-b", Role.PRIMARY)
        assert o.result == "success", o.detail
        assert state_of(pool, "standby") == "stopped"
        assert {state_of(pool, m) for m in MEMBERS} == {"running"}
        assert len(c.steps) > 20
        assert c.problems == []
    finally:
        c.close()


@pytest.mark.slow
async def test_failback_of_one_member_keeps_the_standby_the_other_uses(pool: NatPool) -> None:
    # The reproduction: both members on the standby (as an earlier
    # jupiterd left them), then one fails back.
    c = Checked(pool)
    try:
        o = await c.run("nat-a", Role.BACKUP)
        assert o.result == "success", o.detail
        serve(pool, "nat-b", "standby")
        assert await stranded(pool, c.inventory) == []

        o = await c.run("nat-a", Role.PRIMARY)
        assert o.result == "success", o.detail
        assert "was left running" in o.detail
        assert not [s for s in c.steps if s.startswith("nat-a stop_old")][1:]
        assert state_of(pool, "standby") == "running"
        ec2, _, _ = pool.clients()
        rt = ec2.describe_route_tables(RouteTableIds=pool.route_tables["nat-b"])["RouteTables"][0]
        default = next(r for r in rt["Routes"] if r.get("DestinationCidrBlock") == "0.0.0.0/0")
        assert default["NetworkInterfaceId"] == pool.enis["standby"]

        o = await c.run("nat-b", Role.PRIMARY)
        assert o.result == "success", o.detail
        assert state_of(pool, "standby") == "stopped"
        assert c.problems == []
    finally:
        c.close()


@pytest.mark.slow
async def test_cli_failover_all_runs_a_pool_s_members_in_turn(pool: NatPool) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "jupiterd", *args, "--config", str(pool.config_path)],
            cwd=ROOT,
            env=client_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )

    inventory = AwsInventory(pool.config)
    try:
        p = await asyncio.to_thread(cli, "failover-all")
        assert p.returncode == 1, p.stdout + p.stderr  # one member could not have it
        assert "nat-a: failover success" in p.stdout
        assert "nat-b: failover aborted" in p.stdout and "already serves" in p.stdout
        assert await stranded(pool, inventory) == []
        p = await asyncio.to_thread(cli, "failback-all")
        assert p.returncode == 0, p.stdout + p.stderr
        assert state_of(pool, "standby") == "stopped"
        assert {state_of(pool, m) for m in MEMBERS} == {"running"}
        assert await stranded(pool, inventory) == []
    finally:
        inventory.aws.close()


# --------------------------------------------------------------------------- why a stop is skipped


def pool_notifications(pool: NatPool, service: str) -> list[dict[str, Any]]:
    return [
        n["message"]
        for n in read_notifications(pool.topology, wait=1.0)
        if isinstance(n["message"], dict) and n["message"].get("service") == service
    ]


@pytest.mark.slow
async def test_the_outcome_says_why_the_standby_was_left_running(pool: NatPool) -> None:
    c = Checked(pool)
    dry = Checked(pool, dry_run=True)
    sid, rtb_b = pool.ids["standby"], pool.route_tables["nat-b"][0]
    why = f"The backup ({sid}) is not stopped: "
    try:
        o = await c.run("nat-a", Role.BACKUP)
        assert o.result == "success", o.detail
        serve(pool, "nat-b", "standby")
        read_notifications(pool.topology)  # drained

        o = await dry.run("nat-a", Role.PRIMARY)
        assert o.result == "dry_run", o.detail
        assert why in o.detail and f"nat-b's route table {rtb_b}" in o.detail

        with capture_logs() as logs:
            o = await c.run("nat-a", Role.PRIMARY)
        assert o.result == "success", o.detail
        assert f"was left running. {why}" in o.detail
        assert f"nat-b's route table {rtb_b}" in o.detail and "still point at it" in o.detail
        logged = [e for e in logs if e["event"] == "plan_notes"]
        assert len(logged) == 1 and logged[0]["service"] == "nat-a"
        assert f"nat-b's route table {rtb_b}" in logged[0]["notes"][0]

        sent = await asyncio.to_thread(pool_notifications, pool, "nat-a")
        assert [m["detail"] for m in sent] == [o.detail]
        assert len(sent[0]["notes"]) == 1
        assert sent[0]["notes"][0].startswith(f"the backup ({sid}) is not stopped: ")
        assert state_of(pool, "standby") == "running"
        assert c.problems == []
    finally:
        c.close()
        dry.close()


@pytest.mark.slow
async def test_a_stop_is_skipped_when_another_member_took_the_standby_meanwhile(
    pool: NatPool,
) -> None:
    # nat-a fails back; its plan stops the standby (nobody else used it at
    # preflight), but nat-b moves onto the standby while the plan runs.
    c = Checked(pool)
    try:
        o = await c.run("nat-a", Role.BACKUP)
        assert o.result == "success", o.detail
        c.actions["nat-a deregister_target"] = lambda: serve(pool, "nat-b", "standby")
        o = await c.run("nat-a", Role.PRIMARY)
        assert not c.actions, c.steps
        assert o.result == "success", o.detail
        assert c.problems == []
        assert f"The backup ({pool.ids['standby']}) is not stopped: " in o.detail
        assert f"nat-b's route table {pool.route_tables['nat-b'][0]}" in o.detail
        assert "now point at it" in o.detail
        assert state_of(pool, "standby") == "running"
        assert c.problems == []
    finally:
        c.close()


@pytest.mark.slow
async def test_a_rollback_keeps_a_standby_another_member_took_meanwhile(pool: NatPool) -> None:
    # nat-a's failover starts the standby, nat-b moves onto it, and nat-a's
    # plan then rolls back (the standby fails nat-a's probes): the rollback
    # must not stop the standby it started.
    c = Checked(pool)

    def take_standby() -> None:
        serve(pool, "nat-b", "standby")
        pool.listeners["standby"].stop()

    c.actions["nat-a start_standby"] = take_standby
    try:
        o = await c.run("nat-a", Role.BACKUP)
        assert not c.actions, c.steps
        assert o.result == "aborted", o.detail
        assert c.problems == []
        assert "the traffic stays on the primary" in o.detail
        assert "stopped again" not in o.detail
        assert f"The backup ({pool.ids['standby']}) is not stopped: " in o.detail
        assert state_of(pool, "standby") == "running"
        assert c.problems == []
    finally:
        c.close()


@pytest.mark.slow
async def test_failbacks_of_both_members_run_in_turn(pool: NatPool) -> None:
    # Both members on the standby; both fail back at once. The first one
    # must leave the standby running (the other still uses it), the second
    # then stops it: the plans of a pool's members run one at a time.
    c = Checked(pool)
    try:
        o = await c.run("nat-a", Role.BACKUP)
        assert o.result == "success", o.detail
        serve(pool, "nat-b", "standby")
        c.steps.clear()
        outcomes = await asyncio.gather(c.run("nat-a", Role.PRIMARY), c.run("nat-b", Role.PRIMARY))
        assert [x.result for x in outcomes] == ["success", "success"], outcomes
        assert c.problems == []
        assert state_of(pool, "standby") == "stopped"
        assert {state_of(pool, m) for m in MEMBERS} == {"running"}
        order = [s.split(" ", 1)[0] for s in c.steps]
        first = order[0]
        turns = [m for i, m in enumerate(order) if i == 0 or order[i - 1] != m]
        assert turns == [first, "nat-b" if first == "nat-a" else "nat-a"], c.steps
        by = {x.service: x for x in outcomes}
        assert "is not stopped" in by[first].detail and not by[first].stopped_old
        assert [s for s in c.steps if "stop_old" in s][-1].split(" ")[0] != first
    finally:
        c.close()
