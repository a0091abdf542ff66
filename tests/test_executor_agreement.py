"""A dry run and the real plan agree: for every service of the seeded
topology the dry run passes and then the real failover does; where the real
plan must fail, the dry run fails too, at the same resource."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jupiterd.aws.executor import AwsExecutor
from jupiterd.config import parse_config
from jupiterd.core.execution import FailoverOutcome, FailoverRequest
from jupiterd.core.types import Role
from jupiterd.sandbox.peers.moto_server import MotoServer, moto_server
from jupiterd.sandbox.seed import SERVICES, moto_client
from tests.peers.jupiter_aws import FAST, Stack, jupiter_stack


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with moto_server(patch_env=True) as server:
        yield server


@pytest.fixture
def stack(moto: MotoServer, tmp_path: Path) -> Iterator[Stack]:
    moto.reset()
    with jupiter_stack(moto.url, tmp_path) as s:
        yield s


async def failover(stack: Stack, service: str, *, dry_run: bool) -> FailoverOutcome:
    ex = AwsExecutor(stack.config, dry_run=dry_run, poll_interval=0.05, progress_interval=0.2)
    try:
        return await ex.run(FailoverRequest(service, Role.PRIMARY, Role.BACKUP, "drill", "cli"))
    finally:
        ex.close()


def failed_steps(out: FailoverOutcome) -> list[str]:
    return [s.name for s in out.steps if not s.ok]


@pytest.mark.slow
@pytest.mark.parametrize("service", SERVICES)
async def test_dry_run_passes_and_so_does_the_failover(stack: Stack, service: str):
    dry = await failover(stack, service, dry_run=True)
    assert dry.result == "dry_run", dry
    assert not dry.changed
    real = await failover(stack, service, dry_run=False)
    assert real.result == "success", real


def reconfigure(stack: Stack, edit: Callable[[dict[str, Any]], None]) -> None:
    """The stack's configuration, changed by ``edit``."""
    doc = stack.topology.config_dict(
        stack.listeners.spec(), state_dir=str(stack.config.state_dir), defaults=dict(FAST)
    )
    edit(doc)
    stack.config = parse_config(doc)


def clients(stack: Stack) -> tuple[Any, Any, Any]:
    topo = stack.topology
    return tuple(
        moto_client(topo.endpoint_url, topo.region, n) for n in ("ec2", "elbv2", "route53")
    )  # type: ignore[return-value]


async def both_fail_at_preflight(stack: Stack, service: str, *needles: str) -> None:
    dry = await failover(stack, service, dry_run=True)
    real = await failover(stack, service, dry_run=False)
    for out in (dry, real):
        assert out.result != "success" and not out.changed, out
        assert failed_steps(out) == ["preflight"], out
        for needle in needles:
            assert needle in out.detail, out.detail


async def test_both_fail_when_a_target_group_of_the_standby_is_gone(stack: Stack):
    _, elb, _ = clients(stack)
    arn = stack.topology.target_groups["jupiter-coturn-tcp"]
    for lis in elb.describe_listeners(LoadBalancerArn=stack.topology.nlb_arn)["Listeners"]:
        if lis["DefaultActions"][0].get("TargetGroupArn") == arn:
            elb.delete_listener(ListenerArn=lis["ListenerArn"])
    elb.delete_target_group(TargetGroupArn=arn)
    await both_fail_at_preflight(stack, "coturn", f"target group {arn} does not exist")


async def test_both_fail_when_the_stopped_standby_never_gets_a_public_address(stack: Stack):
    """coturn's record wants a public address, but its standby sits in a
    subnet that assigns none, and no Elastic IP moves to it: the real plan
    cannot point the record at it, and the dry run says so too (before the
    fix the dry run failed here for every stopped standby, and the real
    plan started the standby before it found out)."""
    ec2, _, _ = clients(stack)
    topo = stack.topology
    subnet = topo.private_subnets[1]
    iid = ec2.run_instances(
        ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="t3.small", SubnetId=subnet
    )["Instances"][0]["InstanceId"]
    ec2.stop_instances(InstanceIds=[iid])
    topo.instances["coturn"]["backup"] = iid
    reconfigure(stack, lambda doc: None)
    await both_fail_at_preflight(
        stack,
        "coturn",
        f"record turn.{topo.zone_name} A in hosted zone {topo.zone_id} wants a public address",
        f"the backup instance {iid} gets none when it starts",
        f"its subnet {subnet} does not assign public IPv4 addresses",
    )
    state = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert state["State"]["Name"] == "stopped"  # the real plan did not start it


def _zone_not_starting_with_z(r53: Any, name: str) -> str:
    for n in range(50):
        zid = str(
            r53.create_hosted_zone(Name=name, CallerReference=f"agreement-{n}")["HostedZone"]["Id"]
        )
        if not zid.rsplit("/", 1)[-1].startswith("Z"):
            return zid
        r53.delete_hosted_zone(Id=zid)
    raise AssertionError("moto kept handing out ids starting with Z")


async def test_a_zone_id_the_api_returns_loads_and_fails_over(stack: Stack):
    """An emulator's hosted zone ids need not start with Z: the id as
    Route 53 returned it (with its /hostedzone/ prefix) is accepted."""
    _, _, r53 = clients(stack)
    topo = stack.topology
    zid = _zone_not_starting_with_z(r53, "alt.example.com")
    name = "sig.alt.example.com"
    r53.change_resource_record_sets(
        HostedZoneId=zid,
        ChangeBatch={
            "Changes": [
                {
                    "Action": "UPSERT",
                    "ResourceRecordSet": {
                        "Name": name,
                        "Type": "A",
                        "TTL": 1,
                        "ResourceRecords": [{"Value": topo.private_ips["signaling"]["primary"]}],
                    },
                }
            ]
        },
    )

    def edit(doc: dict[str, Any]) -> None:
        doc["services"]["signaling"]["attachments"]["route53"] = [{"zone_id": zid, "name": name}]

    reconfigure(stack, edit)
    assert (await failover(stack, "signaling", dry_run=True)).result == "dry_run"
    out = await failover(stack, "signaling", dry_run=False)
    assert out.result == "success", out
    rrs = r53.list_resource_record_sets(HostedZoneId=zid, StartRecordName=name, MaxItems="1")
    values = [v["Value"] for v in rrs["ResourceRecordSets"][0]["ResourceRecords"]]
    assert values == [topo.private_ips["signaling"]["backup"]]


async def test_a_missing_hosted_zone_aborts_at_preflight_naming_it(stack: Stack):
    topo = stack.topology
    gone = "Z0MISSING0ZONE"

    def edit(doc: dict[str, Any]) -> None:
        doc["services"]["coturn"]["attachments"]["route53"][0]["zone_id"] = gone

    reconfigure(stack, edit)
    await both_fail_at_preflight(
        stack, "coturn", f"hosted zone {gone} (of turn.{topo.zone_name}) does not exist"
    )
