"""The AWS executor against moto in server mode (a real HTTP endpoint),
seeded with the Jupiter topology; the standby's health is probed for real
(tcp) at loopback listeners that stand for each instance's service."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from structlog.testing import capture_logs

from jupiterd.aws.client import AwsAccessDenied, AwsError, AwsNotFound, AwsThrottled, AwsUnavailable
from jupiterd.aws.executor import AwsExecutor, _refused
from jupiterd.aws.inventory import AwsInventory
from jupiterd.core.execution import FailoverRequest, StepReport
from jupiterd.core.plan import service_status
from jupiterd.core.types import Role
from jupiterd.sandbox.peers.moto_server import MotoServer, client_env, moto_server
from jupiterd.sandbox.seed import SERVICES, Topology, moto_client, read_notifications
from jupiterd.state.journal import PlanLock
from jupiterd.telemetry.metrics import Metrics
from tests.clock import FakeClock
from tests.executor_helpers import check_invariant
from tests.peers.fault_proxy import FaultProxy
from tests.peers.jupiter_aws import Stack, jupiter_stack

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with moto_server(patch_env=True) as server:
        yield server


@pytest.fixture
def stack(moto: MotoServer, tmp_path: Path) -> Iterator[Stack]:
    moto.reset()
    with jupiter_stack(moto.url, tmp_path) as s:
        yield s


def make_executor(stack: Stack, **kw: Any) -> AwsExecutor:
    kw.setdefault("poll_interval", 0.05)
    kw.setdefault("progress_interval", 0.2)
    kw.setdefault("clock", FakeClock())  # polls, drains and timeouts without sleeping
    return AwsExecutor(stack.config, **kw)


def request(service: str, to: Role = Role.BACKUP, reason: str = "test") -> FailoverRequest:
    return FailoverRequest(service, to.other, to, reason, "cli")


def aws_state(topo: Topology) -> dict[str, Any]:
    """Everything a plan could change, read straight from moto."""
    ec2, elb, r53 = (
        moto_client(topo.endpoint_url, topo.region, n) for n in ("ec2", "elbv2", "route53")
    )
    inst = {
        i["InstanceId"]: (i["State"]["Name"], i.get("SourceDestCheck"))
        for r in ec2.describe_instances()["Reservations"]
        for i in r["Instances"]
    }
    tgs = {
        arn: sorted(
            (d["Target"]["Id"], d["TargetHealth"]["State"])
            for d in elb.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]
        )
        for arn in topo.target_groups.values()
    }
    eip = [
        (a.get("AllocationId"), a.get("InstanceId")) for a in ec2.describe_addresses()["Addresses"]
    ]
    recs = sorted(
        (r["Name"], tuple(v["Value"] for v in r.get("ResourceRecords", [])))
        for r in r53.list_resource_record_sets(HostedZoneId=topo.zone_id)["ResourceRecordSets"]
    )
    routes = {
        rt["RouteTableId"]: sorted(
            (r.get("DestinationCidrBlock"), r.get("NetworkInterfaceId") or r.get("GatewayId"))
            for r in rt["Routes"]
        )
        for rt in ec2.describe_route_tables()["RouteTables"]
    }
    return {"instances": inst, "tgs": tgs, "eip": eip, "records": recs, "routes": routes}


def invariant_hook(stack: Stack, ex_holder: list[AwsExecutor], seen: list[str]) -> Any:
    async def hook(service: str, report: StepReport) -> None:
        problems = await check_invariant(ex_holder[0].inventory, stack.config)
        seen.append(report.name)
        assert problems == [], f"after {service} {report.name}: {problems}"

    return hook


def direct_invariant_hook(stack: Stack, moto_url: str, seen: list[str]) -> Any:
    """The invariant read straight from moto, past the fault proxy."""
    cfg = stack.config.model_copy(
        update={"aws": stack.config.aws.model_copy(update={"endpoint_url": moto_url})}
    )
    inventory = AwsInventory(cfg)

    async def hook(service: str, report: StepReport) -> None:
        problems = await check_invariant(inventory, cfg)
        seen.append(report.name)
        assert problems == [], f"after {service} {report.name}: {problems}"

    return hook


def on_role(stack: Stack, service: str, facts: Any) -> Role | None:
    st = service_status(stack.config, service, facts)
    assert st.agree, st.notes
    return st.active


# --------------------------------------------------------------------------- happy paths


@pytest.mark.parametrize("service", SERVICES)
async def test_failover_and_failback(stack: Stack, service: str):
    holder: list[AwsExecutor] = []
    seen: list[str] = []
    metrics = Metrics()
    ex = make_executor(stack, metrics=metrics, on_step=invariant_hook(stack, holder, seen))
    holder.append(ex)
    try:
        assert await check_invariant(ex.inventory, stack.config) == []
        out = await ex.run(request(service, Role.BACKUP, "primary down"))
        assert out.result == "success", out
        assert out.stopped_old and out.changed
        assert f"{service} moved to the backup" in out.detail
        names = [s.name for s in out.steps]
        assert names[0] == "preflight" and names[-1] == "notify"
        assert all(s.ok for s in out.steps)
        facts = (await ex.inventory.facts([service]))[service]
        assert on_role(stack, service, facts) is Role.BACKUP
        assert facts.primary.state in ("stopped", "stopping")
        assert facts.backup.state == "running"
        if service == "nat":
            assert facts.backup.source_dest_check is False

        back = await ex.run(request(service, Role.PRIMARY, "planned failback"))
        assert back.result == "success", back
        stop = next(s for s in back.steps if s.name == "stop_old")
        if stack.config.services[service].attachments.route53:
            # The backup still served: it stayed up for cached DNS answers
            # (the record's TTL, bounded by drain_timeout) before it stopped.
            assert "for cached DNS answers (record TTL) to expire" in stop.detail, stop.detail
        else:
            assert "cached DNS" not in stop.detail
        facts = (await ex.inventory.facts([service]))[service]
        assert on_role(stack, service, facts) is Role.PRIMARY
        assert facts.backup.state in ("stopped", "stopping")
        assert await check_invariant(ex.inventory, stack.config) == []
    finally:
        ex.close()
    assert "register_target" in " ".join(seen) or service in ("frp", "nat")
    notes = read_notifications(stack.topology)
    assert [n["message"]["direction"] for n in notes] == ["failover", "failback"]
    first = notes[0]["message"]
    assert first["service"] == service and first["result"] == "success"
    assert first["reason"] == "primary down"
    assert first["total_seconds"] > 0
    assert [s["name"] for s in first["steps"]][:3] == [
        "preflight",
        "start_standby",
        "standby_healthy",
    ]
    assert all("seconds" in s for s in first["steps"])
    assert notes[0]["subject"].startswith(f"jupiterd: {service} failover success in ")
    # Plans are counted by the daemon that decided them, not by the executor
    # (which also runs drills and CLI plans).
    assert (
        metrics.registry.get_sample_value(
            "jupiterd_failovers_total",
            {"service": service, "direction": "failover", "result": "success"},
        )
        is None
    )
    assert (
        metrics.registry.get_sample_value(
            "jupiterd_aws_api_calls_total", {"operation": "ec2:StartInstances", "result": "ok"}
        )
        == 2
    )


async def test_no_dns_drain_for_an_instance_that_no_longer_serves(stack: Stack):
    stack.listeners.stop("signaling", "primary")
    ex = make_executor(stack)
    try:
        out = await ex.run(request("signaling", Role.BACKUP, "primary down"))
    finally:
        ex.close()
    assert out.result == "success", out
    stop = next(s for s in out.steps if s.name == "stop_old")
    assert "cached DNS" not in stop.detail and stop.seconds < 0.5


async def test_second_failover_has_nothing_to_do(stack: Stack):
    ex = make_executor(stack)
    try:
        assert (await ex.run(request("signaling"))).result == "success"
        again = await ex.run(request("signaling"))
    finally:
        ex.close()
    assert again.result == "success" and not again.changed
    assert "already on the backup" in again.detail and "nothing to do" in again.detail
    assert len(read_notifications(stack.topology)) == 1  # no second message


async def test_attachments_move_concurrently(stack: Stack):
    """coturn's two target groups and its record are moved at once: each
    attachment step begins before any of them ends. The order of the log
    lines says so without comparing rounded durations."""
    ex = make_executor(stack)
    try:
        with capture_logs() as logs:
            out = await ex.run(request("coturn"))
    finally:
        ex.close()
    assert out.result == "success"
    attach = ("register_target", "upsert_record")
    events = [
        (e["event"], e["step"])
        for e in logs
        if e["event"] in ("step_begin", "step_end") and e.get("step", "").startswith(attach)
    ]
    begins = [i for i, (kind, _) in enumerate(events) if kind == "step_begin"]
    ends = [i for i, (kind, _) in enumerate(events) if kind == "step_end"]
    assert len(begins) == 3 and len(ends) == 3, events
    assert max(begins) < min(ends), events


# --------------------------------------------------------------------------- safety


async def test_standby_never_healthy_aborts_and_keeps_traffic(stack: Stack):
    stack.listeners.stop("signaling", "backup")
    before = on_role_now = None
    ex = make_executor(stack)
    try:
        facts = (await ex.inventory.facts(["signaling"]))["signaling"]
        before = on_role(stack, "signaling", facts)
        out = await ex.run(request("signaling"))
        facts = (await ex.inventory.facts(["signaling"]))["signaling"]
        on_role_now = on_role(stack, "signaling", facts)
        assert await check_invariant(ex.inventory, stack.config) == []
    finally:
        ex.close()
    assert out.result == "aborted", out
    assert out.changed  # the standby was started, then stopped again
    assert "standby_healthy" in out.detail
    assert "did not pass 2 consecutive tcp probe(s) of 127.0.0.3" in out.detail
    assert "refused" in out.detail
    assert "the traffic stays on the primary" in out.detail
    assert "the backup was stopped again" in out.detail
    assert before is on_role_now is Role.PRIMARY
    assert facts.backup.state in ("stopped", "stopping")
    assert facts.primary.state == "running"
    names = [s.name for s in out.steps]
    assert "register_target:jupiter-signaling" not in names
    assert names[-2:] == ["rollback:stop_standby", "notify"]
    [note] = read_notifications(stack.topology)
    assert note["message"]["result"] == "aborted"


async def test_an_already_running_standby_is_left_running_on_abort(stack: Stack):
    ec2 = boto3.client(
        "ec2", region_name="ap-southeast-2", endpoint_url=stack.topology.endpoint_url
    )
    ec2.start_instances(InstanceIds=[stack.topology.instances["thingsboard"]["backup"]])
    stack.listeners.stop("thingsboard", "backup")
    ex = make_executor(stack)
    try:
        out = await ex.run(request("thingsboard"))
        facts = (await ex.inventory.facts(["thingsboard"]))["thingsboard"]
    finally:
        ex.close()
    # Its early registration in the target group (register_early) was the
    # only change, and was undone.
    assert out.result == "aborted" and out.changed
    assert "the traffic stays on the primary" in out.detail
    assert "stopped again" not in out.detail
    names = [s.name for s in out.steps]
    assert names[-2:] == ["rollback:deregister_target:jupiter-thingsboard", "notify"]
    tg = facts.target_group(stack.topology.target_groups["jupiter-thingsboard"])
    assert tg is not None and set(tg.health) == {facts.primary.instance_id}
    assert facts.backup.state == "running"  # it was running before: not ours to stop


async def test_dry_run_changes_nothing(stack: Stack, moto: MotoServer):
    before = aws_state(stack.topology)
    metrics = Metrics()
    ex = make_executor(stack, dry_run=True, metrics=metrics)
    try:
        outs = [await ex.run(request(s)) for s in SERVICES]
    finally:
        ex.close()
    for out in outs:
        assert out.result == "dry_run", out
        assert not out.changed
        assert "every check passed" in out.detail
    assert aws_state(stack.topology) == before
    assert read_notifications(stack.topology) == []
    assert not (Path(stack.config.state_dir) / "journal.jsonl").exists()
    # EC2's permission proofs were really sent
    assert metrics.registry.get_sample_value(
        "jupiterd_aws_api_calls_total", {"operation": "ec2:StartInstances", "result": "dry_run"}
    ) == len(SERVICES)
    # moto's ReplaceRoute ignores DryRun (answers ok): the proof re-points each
    # route at its current target, so the state above is unchanged anyway.
    replace = [
        metrics.registry.get_sample_value(
            "jupiterd_aws_api_calls_total", {"operation": "ec2:ReplaceRoute", "result": r}
        )
        or 0
        for r in ("dry_run", "ok")
    ]
    assert sum(replace) == 2
    nat = outs[SERVICES.index("nat")]
    assert any("would point" in s.detail for s in nat.steps)


async def test_lock_held_by_another_process_refuses(stack: Stack):
    code = (
        "import sys; from jupiterd.state.journal import PlanLock; l = PlanLock(sys.argv[1]); "
        "l.acquire(); print('held', flush=True); sys.stdin.readline()"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stack.config.state_dir,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        assert (await proc.stdout.readline()).strip() == b"held"
        ex = make_executor(stack)
        try:
            out = await ex.run(request("frp"))
        finally:
            ex.close()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        await proc.wait()
    assert out.result == "aborted"
    assert f"another jupiterd process (pid {proc.pid}) is running a plan" in out.detail
    assert PlanLock(stack.config.state_dir).held is False


async def test_preflight_names_a_missing_resource(stack: Stack):
    elb = boto3.client(
        "elbv2", region_name="ap-southeast-2", endpoint_url=stack.topology.endpoint_url
    )
    arn = stack.topology.target_groups["jupiter-thingsboard"]
    for lis in elb.describe_listeners(LoadBalancerArn=stack.topology.alb_arn)["Listeners"]:
        if lis["DefaultActions"][0].get("TargetGroupArn") == arn:
            elb.delete_listener(ListenerArn=lis["ListenerArn"])
    elb.delete_target_group(TargetGroupArn=arn)
    ex = make_executor(stack)
    try:
        out = await ex.run(request("thingsboard"))
    finally:
        ex.close()
    assert out.result == "aborted"
    assert f"target group {arn} does not exist" in out.detail
    assert "nothing was changed" in out.detail
    assert [s.name for s in out.steps] == ["preflight"]


async def test_concurrent_plans_for_one_service_are_refused(stack: Stack):
    ex = make_executor(stack)
    try:
        a, b = await asyncio.gather(ex.run(request("frp")), ex.run(request("frp")))
    finally:
        ex.close()
    results = sorted([a.result, b.result])
    assert results == ["aborted", "success"]
    refused = a if a.result == "aborted" else b
    assert "already running in this process" in refused.detail


# --------------------------------------------------------------------------- AWS errors


@pytest.fixture
def proxied(moto: MotoServer, tmp_path: Path) -> Iterator[tuple[Stack, FaultProxy]]:
    moto.reset()
    proxy = FaultProxy(moto.url, seed=7).start()
    try:
        with jupiter_stack(moto.url, tmp_path, client_endpoint=proxy.url) as s:
            yield s, proxy
    finally:
        proxy.stop()


async def test_access_denied_names_the_permission_and_leaves_a_reported_split(
    proxied, moto: MotoServer
):
    stack, proxy = proxied
    proxy.deny.add("ec2:AssociateAddress")
    ex = make_executor(stack, on_step=direct_invariant_hook(stack, moto.url, []))
    try:
        out = await ex.run(request("frp"))
        problems = await check_invariant(ex.inventory, stack.config)
        facts = (await ex.inventory.facts(["frp"]))["frp"]
    finally:
        ex.close()
    assert out.result == "failed" and out.changed
    eip = stack.topology.eip_allocation
    assert f"associate_eip:{eip}" in out.detail
    assert f"AWS denied ec2:AssociateAddress on {eip} (UnauthorizedOperation)" in out.detail
    assert f"the IAM policy must allow ec2:AssociateAddress on {eip}" in out.detail
    assert "was neither detached nor stopped" in out.detail
    assert "Encoded authorization failure message" not in out.detail
    assert problems == []
    assert facts.primary.state == "running"  # never stopped while traffic may be on it
    assert proxy.count("ec2:StopInstances") == 0


async def test_access_denied_at_preflight(proxied):
    stack, proxy = proxied
    proxy.deny.add("ec2:DescribeInstances")
    ex = make_executor(stack)
    try:
        out = await ex.run(request("signaling"))
    finally:
        ex.close()
    assert out.result == "aborted"
    assert "AWS denied ec2:DescribeInstances" in out.detail
    assert proxy.count("ec2:StartInstances") == 0
    assert not out.changed and not out.aws_unreachable


async def test_access_denied_at_the_first_change_changed_nothing(proxied):
    stack, proxy = proxied
    proxy.deny.add("ec2:StartInstances")
    ex = make_executor(stack)
    try:
        out = await ex.run(request("signaling"))
    finally:
        ex.close()
    assert out.result == "aborted", out
    assert "AWS denied ec2:StartInstances" in out.detail
    assert not out.changed and not out.aws_unreachable


async def test_aws_unreachable_at_preflight_changed_nothing(proxied):
    stack, proxy = proxied
    proxy.unreachable = True
    # Two attempts a call, not the default eight: botocore's backoff between
    # them is real time, and what is tested is the answer once they fail.
    aws = stack.config.aws.model_copy(update={"max_attempts": 2})
    stack.config = stack.config.model_copy(update={"aws": aws})
    ex = make_executor(stack)
    try:
        out = await ex.run(request("signaling"))
    finally:
        ex.close()
    assert out.result == "aborted", out
    assert "cannot reach the AWS endpoint" in out.detail
    assert "nothing was changed" in out.detail
    assert not out.changed and out.aws_unreachable
    assert proxy.count("ec2:StartInstances") == 0


@pytest.mark.parametrize(
    "exc,refused",
    [
        (AwsAccessDenied("ec2:StartInstances", "i-1", "UnauthorizedOperation", ""), True),
        (AwsNotFound("ec2:StartInstances", "i-1", "InvalidInstanceID.NotFound", ""), True),
        (AwsThrottled("ec2:StartInstances", "i-1", "RequestLimitExceeded", ""), True),
        (AwsUnavailable("ec2:StartInstances", "i-1", "NoCredentials", "none"), True),
        # No answer, or a server error: the call may have taken effect.
        (AwsUnavailable("ec2:StartInstances", "i-1", "ReadTimeoutError", "timeout"), False),
        (AwsUnavailable("ec2:StartInstances", "i-1", "ConnectionClosedError", "closed"), False),
        (AwsError("ec2:StartInstances", "i-1", "InternalError", "AWS answered 500"), False),
        (RuntimeError("a bug"), False),
    ],
)
def test_a_mutating_call_counts_as_a_change_unless_aws_refused_it(exc, refused):
    assert _refused(exc) is refused


@pytest.mark.slow
async def test_throttling_and_server_errors_are_retried(proxied, moto: MotoServer):
    stack, proxy = proxied
    proxy.throttle, proxy.errors = 0.15, 0.1
    seen: list[str] = []
    ex = make_executor(stack, on_step=direct_invariant_hook(stack, moto.url, seen))
    try:
        outs = [await ex.run(request(s)) for s in ("coturn", "nat", "frp")]
        proxy.throttle = proxy.errors = 0.0
        problems = await check_invariant(ex.inventory, stack.config)
    finally:
        ex.close()
    for out in outs:
        assert out.result == "success", out.detail
    assert problems == []
    kinds = " ".join(proxy.faults)
    assert "throttled ec2:" in kinds and "error " in kinds, proxy.faults
    assert sum(proxy.faults.values()) >= 5
    assert proxy.count("ec2:StartInstances") == 3  # each side effect happened once
    assert len(seen) >= 3 * 7  # the invariant held after every step, faults and all


# --------------------------------------------------------------------------- CLI


def run_cli(
    stack: Stack, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jupiterd", *args, "--config", str(stack.config_path)],
        cwd=ROOT,
        env={**client_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def _cli(
    stack: Stack, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_cli, stack, *args, env=env)


@pytest.mark.slow
async def test_cli_failover_all_status_failback_all(stack: Stack):
    p = await _cli(stack, "status")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "signaling: on the primary, attachments agree, healthy" in p.stdout

    p = await _cli(stack, "failover-all")
    assert p.returncode == 0, p.stdout + p.stderr
    for s in SERVICES:
        assert f"{s}: failover success" in p.stdout
    assert "step_begin" in p.stderr  # progress lines

    p = await _cli(stack, "status", "--json")
    assert p.returncode == 0
    report = json.loads(p.stdout)
    assert {s: v["active"] for s, v in report["services"].items()} == dict.fromkeys(
        SERVICES, "backup"
    )

    p = await _cli(stack, "failback-all")
    assert p.returncode == 0, p.stdout + p.stderr
    assert len(read_notifications(stack.topology)) == 2 * len(SERVICES)


async def test_cli_status_reports_a_split(stack: Stack):
    ec2 = boto3.client(
        "ec2", region_name="ap-southeast-2", endpoint_url=stack.topology.endpoint_url
    )
    backup = stack.topology.instances["frp"]["backup"]
    ec2.start_instances(InstanceIds=[backup])
    ec2.associate_address(
        AllocationId=stack.topology.eip_allocation, InstanceId=backup, AllowReassociation=True
    )
    elb = boto3.client(
        "elbv2", region_name="ap-southeast-2", endpoint_url=stack.topology.endpoint_url
    )
    sb = stack.topology.instances["signaling"]["backup"]
    ec2.start_instances(InstanceIds=[sb])
    elb.register_targets(
        TargetGroupArn=stack.topology.target_groups["jupiter-signaling"],
        Targets=[{"Id": sb, "Port": 3000}],
    )
    p = await _cli(stack, "status", "frp", "signaling")
    assert p.returncode == 1
    assert "signaling: SPLIT" in p.stdout
    assert "has both instances" in p.stdout and "half-done" in p.stdout
    # frp's record follows the EIP, so both moved: they agree on the backup
    assert "frp: on the backup, attachments agree, healthy" in p.stdout


async def test_cli_dry_run_and_errors(stack: Stack):
    p = await _cli(stack, "failover", "nat", "--dry-run")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "nat: failover dry_run" in p.stdout
    assert "dry_run_call" in p.stderr and "ec2:ReplaceRoute" in p.stderr
    p = await _cli(stack, "failover", "nope")
    assert p.returncode == 2
    assert "no service named 'nope'" in p.stderr
    stack.config_path.write_text("services: {x: {probe: {kind: nope}}}\n")
    p = await _cli(stack, "failback", "x")
    assert p.returncode == 78
    assert "unknown probe kind 'nope'" in p.stderr


async def test_cli_failure_exit_code(stack: Stack):
    stack.listeners.stop("coturn", "backup")
    p = await _cli(stack, "failover", "coturn")
    assert p.returncode == 1
    assert "coturn: failover aborted" in p.stdout


def test_env_for_subprocesses_has_no_real_credentials():
    env = client_env({"AWS_PROFILE": "prod", "PATH": os.environ.get("PATH", "")})
    assert "AWS_PROFILE" not in env and env["AWS_ACCESS_KEY_ID"] == "testing"
