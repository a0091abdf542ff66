"""The executor's recovery-time features against moto in server mode, with
the fault proxy in front of it: a start refused for want of capacity
(retried, then on a fallback instance type), the standby stopped with
hibernation, the preflight's warnings and target-group figures, and the
standby registered in its target groups before traffic moves to it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jupiterd.aws.executor import AwsExecutor
from jupiterd.aws.executor.context import default_prober
from jupiterd.aws.executor.instances import operation_run, start_standby, stop_instance
from jupiterd.aws.inventory import AwsInventory
from jupiterd.config import Config
from jupiterd.core.execution import FailoverRequest, StepReport
from jupiterd.core.types import Role
from jupiterd.sandbox.peers.moto_server import MotoServer, moto_server
from jupiterd.sandbox.seed import moto_client, read_notifications
from jupiterd.state.journal import Journal
from jupiterd.telemetry.clock import SystemClock
from jupiterd.telemetry.metrics import Metrics
from tests.clock import FakeClock
from tests.executor_helpers import check_invariant
from tests.peers.fault_proxy import Fault, FaultProxy
from tests.peers.jupiter_aws import HOSTS, Stack, jupiter_stack

NO_CAPACITY: Fault = (
    "InsufficientInstanceCapacity",
    500,  # a server error, as EC2 answers it (the SDK retries it first)
    "We currently do not have sufficient capacity in the Availability Zone you requested.",
)


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with moto_server(patch_env=True) as server:
        yield server


@pytest.fixture
def proxied(moto: MotoServer, tmp_path: Path) -> Iterator[tuple[Stack, FaultProxy]]:
    moto.reset()
    proxy = FaultProxy(moto.url, seed=3).start()
    try:
        with jupiter_stack(
            moto.url, tmp_path, services=("thingsboard", "signaling"), client_endpoint=proxy.url
        ) as s:
            yield s, proxy
    finally:
        proxy.stop()


def configured(cfg: Config, service: str, *, backup: str | None = None, **fields: Any) -> Config:
    """``cfg`` with ``fields`` set on ``service`` (and its backup instance
    replaced), the SDK's own retries off: each StartInstances the proxy
    answers is one attempt of jupiterd's."""
    svc = cfg.services[service]
    if backup is not None:
        fields["backup"] = svc.backup.model_copy(update={"instance_id": backup})
    return cfg.model_copy(
        update={
            "services": {**cfg.services, service: svc.model_copy(update=fields)},
            "aws": cfg.aws.model_copy(update={"max_attempts": 1}),
        }
    )


def executor(cfg: Config, moto_url: str, seen: list[str], **kw: Any) -> AwsExecutor:
    """An executor whose every step is followed by the make-before-break
    invariant, read straight from moto (past the proxy)."""
    direct = cfg.model_copy(update={"aws": cfg.aws.model_copy(update={"endpoint_url": moto_url})})
    inventory = AwsInventory(direct)

    async def hook(service: str, report: StepReport) -> None:
        problems = await check_invariant(inventory, direct, [service])
        seen.append(report.name)
        assert problems == [], f"after {service} {report.name}: {problems}"

    kw.setdefault("clock", FakeClock())
    return AwsExecutor(cfg, poll_interval=0.05, progress_interval=0.2, on_step=hook, **kw)


def request(service: str, to: Role = Role.BACKUP) -> FailoverRequest:
    return FailoverRequest(service, to.other, to, "test", "cli")


def ec2(stack: Stack) -> Any:
    return moto_client(stack.topology.endpoint_url, stack.topology.region, "ec2")


def describe(stack: Stack, iid: str) -> dict[str, Any]:
    resp = ec2(stack).describe_instances(InstanceIds=[iid])
    return resp["Reservations"][0]["Instances"][0]  # type: ignore[no-any-return]


def hibernating_backup(stack: Stack, service: str, moto_url: str) -> str:
    """A stopped stand-in for ``service``'s backup, launched with hibernation
    configured (moto takes HibernationOptions only at launch, as EC2 does)."""
    client = moto_client(moto_url, stack.topology.region, "ec2")
    old = describe(stack, stack.topology.instances[service]["backup"])
    iid = client.run_instances(
        ImageId=old["ImageId"],
        MinCount=1,
        MaxCount=1,
        InstanceType="m5.large",
        SubnetId=old["SubnetId"],
        HibernationOptions={"Configured": True},
        TagSpecifications=[{"ResourceType": "instance", "Tags": old["Tags"]}],
    )["Instances"][0]["InstanceId"]
    client.stop_instances(InstanceIds=[iid])
    return str(iid)


def capacity_metric(metrics: Metrics, service: str, itype: str) -> float | None:
    return metrics.registry.get_sample_value(
        "jupiterd_capacity_errors_total", {"service": service, "instance_type": itype}
    )


# --------------------------------------------------------------------------- capacity


async def test_capacity_error_then_success_on_retry(proxied, moto: MotoServer):
    stack, proxy = proxied
    cfg = configured(stack.config, "thingsboard")
    proxy.fail("ec2:StartInstances", *NO_CAPACITY, times=2)
    metrics, seen, clock = Metrics(), [], FakeClock()
    ex = executor(cfg, moto.url, seen, metrics=metrics, clock=clock)
    try:
        out = await ex.run(request("thingsboard"))
    finally:
        ex.close()
    assert out.result == "success", out.detail
    start = next(s for s in out.steps if s.name == "start_standby")
    assert "after 2 InsufficientInstanceCapacity answer(s) (2 for t3.small)" in start.detail
    assert proxy.count("ec2:StartInstances") == 1  # the third try reached EC2
    assert proxy.count("ec2:ModifyInstanceAttribute") == 0  # no fallback needed
    assert capacity_metric(metrics, "thingsboard", "t3.small") == 2
    # Backoff between the tries: 2s, then 4s cut to what is left of start_timeout (5s).
    assert clock.slept[:2] == [2.0, 3.0]
    [plan] = Journal(cfg.state_dir).read()
    data = plan.steps["start_standby"].data
    assert [(a["action"], a["ok"], a["detail"]) for a in data["attempts"]] == [
        ("start", False, "InsufficientInstanceCapacity"),
        ("start", False, "InsufficientInstanceCapacity"),
        ("start", True, "started"),
    ]
    assert data["original_type"] == data["instance_type"] == "t3.small"
    assert "start_standby" in seen


async def test_capacity_exhausted_then_a_fallback_type_starts(proxied, moto: MotoServer):
    stack, proxy = proxied
    cfg = configured(stack.config, "thingsboard", fallback_instance_types=["m5.large", "m6i.large"])
    backup = stack.topology.instances["thingsboard"]["backup"]
    current = {"type": "t3.small"}

    def on_modify(fields: dict[str, str]) -> Fault | None:
        if fields.get("InstanceId") == backup and "InstanceType.Value" in fields:
            current["type"] = fields["InstanceType.Value"]
        return None

    def on_start(fields: dict[str, str]) -> Fault | None:
        return NO_CAPACITY if current["type"] in ("t3.small", "m5.large") else None

    proxy.hooks["ec2:ModifyInstanceAttribute"] = on_modify
    proxy.hooks["ec2:StartInstances"] = on_start
    metrics, seen = Metrics(), []
    ex = executor(cfg, moto.url, seen, metrics=metrics)
    try:
        out = await ex.run(request("thingsboard"))
    finally:
        ex.close()
    assert out.result == "success", out.detail
    assert describe(stack, backup)["InstanceType"] == "m6i.large"
    start = next(s for s in out.steps if s.name == "start_standby")
    assert f"started {backup} as m6i.large (its type was t3.small)" in start.detail
    # start_timeout is 5s: tries at 0, 2 and 5s, then each fallback type once
    assert "4 InsufficientInstanceCapacity answer(s) (3 for t3.small, 1 for m5.large)" in (
        start.detail
    )
    # The operator is told what to set back, in the outcome and its notification.
    assert "its type was t3.small: set it back while it is stopped" in out.detail
    [note] = read_notifications(stack.topology)
    assert "Value=t3.small" in note["message"]["detail"]
    assert capacity_metric(metrics, "thingsboard", "t3.small") == 3
    assert capacity_metric(metrics, "thingsboard", "m5.large") == 1
    assert capacity_metric(metrics, "thingsboard", "m6i.large") is None
    [plan] = Journal(cfg.state_dir).read()
    steps = [
        (a["action"], a["instance_type"], a["ok"])
        for a in plan.steps["start_standby"].data["attempts"]
    ]
    assert steps == [
        ("start", "t3.small", False),
        ("start", "t3.small", False),
        ("start", "t3.small", False),
        ("set_type", "m5.large", True),
        ("start", "m5.large", False),
        ("set_type", "m6i.large", True),
        ("start", "m6i.large", True),
    ]


@pytest.mark.parametrize("fallback", [[], ["m5.large"]])
async def test_no_capacity_at_all_aborts_before_any_traffic_moves(
    proxied, moto: MotoServer, fallback: list[str]
):
    stack, proxy = proxied
    cfg = configured(stack.config, "thingsboard", fallback_instance_types=fallback)
    backup = stack.topology.instances["thingsboard"]["backup"]
    proxy.hooks["ec2:StartInstances"] = lambda fields: NO_CAPACITY
    seen: list[str] = []
    ex = executor(cfg, moto.url, seen)
    try:
        out = await ex.run(request("thingsboard"))
    finally:
        ex.close()
    assert out.result == "aborted", out.detail
    assert f"start_standby: no capacity to start {backup} in its Availability Zone" in out.detail
    assert "the traffic stays on the primary" in out.detail
    assert "the backup was left stopped" in out.detail
    assert "stopped again" not in out.detail
    if fallback:
        assert "(3 for t3.small, 1 for m5.large)" in out.detail
        assert "its type was set back to t3.small" in out.detail
    else:
        assert "no fallback_instance_types are configured" in out.detail
    inst = describe(stack, backup)
    assert inst["State"]["Name"] == "stopped" and inst["InstanceType"] == "t3.small"
    names = [s.name for s in out.steps]
    assert not any(n.startswith(("standby_healthy", "register", "deregister")) for n in names)
    assert proxy.count("elasticloadbalancing:RegisterTargets") == 0
    assert proxy.count("ec2:StartInstances") == 0  # none got past the proxy
    assert proxy.count("ec2:StopInstances") == 0  # nothing to stop: it never started


# --------------------------------------------------------------------------- hibernation


async def test_failback_hibernates_the_backup_when_configured(proxied, moto: MotoServer):
    stack, proxy = proxied
    backup = hibernating_backup(stack, "signaling", moto.url)
    primary = stack.topology.instances["signaling"]["primary"]
    cfg = configured(stack.config, "signaling", backup=backup, standby_stop="hibernate")
    seen: list[str] = []
    ex = executor(cfg, moto.url, seen)
    try:
        there = await ex.run(request("signaling", Role.BACKUP))
        back = await ex.run(request("signaling", Role.PRIMARY))
    finally:
        ex.close()
    assert there.result == "success", there.detail
    assert back.result == "success", back.detail
    stops = proxy.fields_of("ec2:StopInstances")
    assert [(f["InstanceId.1"], f.get("Hibernate")) for f in stops] == [
        (primary, None),  # the failed-over primary: a plain stop, never hibernated
        (backup, "true"),  # the backup after the failback: hibernated
    ]
    stop = next(s for s in back.steps if s.name == "stop_old")
    assert stop.detail.startswith(f"hibernation requested for {backup} (was running)")
    assert "without hibernation" not in back.detail


async def test_hibernate_without_hibernation_configured_stops_plainly_with_a_note(
    proxied, moto: MotoServer
):
    stack, proxy = proxied
    backup = stack.topology.instances["signaling"]["backup"]
    cfg = configured(stack.config, "signaling", standby_stop="hibernate")
    ex = executor(cfg, moto.url, [])
    try:
        assert (await ex.run(request("signaling", Role.BACKUP))).result == "success"
        back = await ex.run(request("signaling", Role.PRIMARY))
    finally:
        ex.close()
    assert back.result == "success", back.detail
    last = proxy.fields_of("ec2:StopInstances")[-1]
    assert last["InstanceId.1"] == backup and "Hibernate" not in last
    assert (
        f"Instance {backup} was stopped without hibernation (standby_stop: hibernate)"
        in back.detail
    )
    assert "enable hibernation at launch" in back.detail
    assert "encrypted EBS volume large enough for the instance's RAM" in back.detail


async def test_a_refused_hibernation_becomes_a_plain_stop(proxied, moto: MotoServer):
    stack, proxy = proxied
    backup = hibernating_backup(stack, "signaling", moto.url)
    cfg = configured(stack.config, "signaling", backup=backup, standby_stop="hibernate")
    ex = executor(cfg, moto.url, [])
    try:
        assert (await ex.run(request("signaling", Role.BACKUP))).result == "success"
        proxy.fail(
            "ec2:StopInstances",
            "UnsupportedHibernationConfiguration",
            400,
            "The instance is not ready to hibernate yet.",
        )
        back = await ex.run(request("signaling", Role.PRIMARY))
    finally:
        ex.close()
    assert back.result == "success", back.detail
    last = proxy.fields_of("ec2:StopInstances")[-1]
    assert last["InstanceId.1"] == backup and "Hibernate" not in last
    assert "EC2 refused to hibernate it (UnsupportedHibernationConfiguration)" in back.detail
    assert describe(stack, backup)["State"]["Name"] in ("stopping", "stopped")


async def test_the_helpers_outside_a_plan(proxied, moto: MotoServer):
    """How a readiness drill or a pre-warm uses them: the executor's step
    context and an operation's run, no plan, no journal."""
    stack, proxy = proxied
    backup = hibernating_backup(stack, "signaling", moto.url)
    cfg = configured(stack.config, "signaling", backup=backup)
    ex = executor(cfg, moto.url, [])
    try:
        run = operation_run("signaling", ex.clock, reason="readiness drill")
        started = await start_standby(ex._ctx, run, backup)
        assert started.started and started.seconds_to_running is not None
        assert describe(stack, backup)["State"]["Name"] == "running"
        again = await start_standby(ex._ctx, run, backup)
        assert not again.started and again.previous_state == "running"
        stopped = await stop_instance(ex._ctx, run, backup, hibernate=True)
    finally:
        ex.close()
    assert stopped.hibernated and stopped.note is None and run.changed
    assert proxy.fields_of("ec2:StopInstances")[-1].get("Hibernate") == "true"
    assert not Journal(cfg.state_dir).read()


# --------------------------------------------------------------------------- preflight


async def test_preflight_warns_of_missing_hibernation_and_reports_health_check_time(
    proxied, moto: MotoServer
):
    stack, proxy = proxied
    backup = stack.topology.instances["thingsboard"]["backup"]
    tg = stack.topology.target_groups["jupiter-thingsboard"]
    elb = moto_client(moto.url, stack.topology.region, "elbv2")
    elb.modify_target_group(
        TargetGroupArn=tg, HealthCheckIntervalSeconds=10, HealthyThresholdCount=3
    )
    cfg = configured(stack.config, "thingsboard", standby_stop="hibernate")
    ex = AwsExecutor(cfg, dry_run=True, poll_interval=0.05, clock=FakeClock())
    try:
        out = await ex.run(request("thingsboard"))
    finally:
        ex.close()
    # A warning, not an abort: the dry run passes and says what to change.
    assert out.result == "dry_run", out.detail
    pre = out.steps[0]
    assert pre.name == "preflight" and pre.ok
    assert (
        f"warning: standby_stop is hibernate, but the backup instance {backup} was not "
        "launched with hibernation configured" in pre.detail
    )
    assert "enable hibernation at launch" in pre.detail
    assert "root volume must be an encrypted EBS volume large enough" in pre.detail
    assert (
        "load balancer health checks before a new target takes traffic: "
        "jupiter-thingsboard 10s x 3 = up to 30s" in pre.detail
    )
    # The plan as the dry run shows it: the early registration beside the probes.
    names = [s.name for s in out.steps]
    assert names[:4] == [
        "preflight",
        "start_standby",
        "standby_healthy",
        "register_early:jupiter-thingsboard",
    ]
    early = out.steps[3]
    assert early.detail.startswith(f"would register {backup}:8080 in jupiter-thingsboard")
    assert "health checks 10s x 3: up to 30s" in early.detail
    # A dry run only proves its stops' permission.
    assert all(f.get("DryRun") == "true" for f in proxy.fields_of("ec2:StopInstances"))


async def test_no_hibernation_warning_when_configured_or_not_asked(proxied, moto: MotoServer):
    stack, _ = proxied
    backup = hibernating_backup(stack, "signaling", moto.url)
    for cfg in (
        configured(stack.config, "signaling", backup=backup, standby_stop="hibernate"),
        configured(stack.config, "signaling"),  # standby_stop: stop
    ):
        ex = AwsExecutor(cfg, dry_run=True, poll_interval=0.05, clock=FakeClock())
        try:
            out = await ex.run(request("signaling"))
        finally:
            ex.close()
        assert out.result == "dry_run", out.detail
        assert "warning" not in out.steps[0].detail
        assert "jupiter-signaling 30s x 5 = up to 150s" in out.steps[0].detail


# --------------------------------------------------------------------------- register early


def _starting_app(stack: Stack, moto_url: str, service: str, tg: str) -> tuple[Any, list[str]]:
    """A prober for which the standby's application comes up only once
    the load balancer knows it: its listener starts when moto first shows
    the standby registered in ``tg``."""
    backup = stack.topology.instances[service]["backup"]
    elb = moto_client(moto_url, stack.topology.region, "elbv2")
    stack.listeners.stop(service, "backup")  # still starting
    seen: list[str] = []

    async def prober(kind: str, target: str, options: Any, timeout: float) -> Any:
        if target.startswith(HOSTS["backup"]) and not seen:
            resp = await asyncio.to_thread(elb.describe_target_health, TargetGroupArn=tg)
            if backup in {d["Target"]["Id"] for d in resp["TargetHealthDescriptions"]}:
                seen.append("registered while starting")
                stack.listeners.start(service, "backup")
        return await default_prober(kind, target, options, timeout)

    return prober, seen


@pytest.mark.parametrize("early", [True, False])
async def test_register_early_lets_the_load_balancer_check_the_standby_while_it_starts(
    proxied, moto: MotoServer, early: bool
):
    stack, proxy = proxied
    tg = stack.topology.target_groups["jupiter-signaling"]
    svc = stack.config.services["signaling"]
    cfg = configured(
        stack.config,
        "signaling",
        register_early=early,
        thresholds=svc.thresholds.model_copy(update={"healthy_timeout": 20.0}),
    )
    prober, seen_registered = _starting_app(stack, moto.url, "signaling", tg)
    seen: list[str] = []
    # With early registration, the real clock: on a fake one the standby's
    # 20 s to become healthy pass in as many probes as fit, however slow a
    # loaded machine makes the registration running beside them. The
    # control must time out: the fake clock spares the wait.
    clock = SystemClock() if early else FakeClock()
    ex = executor(cfg, moto.url, seen, prober=prober, clock=clock)
    try:
        out = await ex.run(request("signaling"))
    finally:
        ex.close()
    if not early:
        # Control: without it the standby enters the target group only after
        # its probes pass, so an application waiting for that never comes up.
        assert out.result == "aborted" and seen_registered == []
        return
    assert out.result == "success", out.detail
    assert seen_registered == ["registered while starting"]
    # Registered (and reported) before the standby's probes passed; the old
    # target left only after it was healthy, the invariant held at every step.
    assert seen.index("register_early:jupiter-signaling") < seen.index("standby_healthy")
    early_step = next(s for s in out.steps if s.name == "register_early:jupiter-signaling")
    assert "registered in jupiter-signaling while its application starts" in early_step.detail
    assert "health checks 30s x 5: up to 150s" in early_step.detail
    attach = next(s for s in out.steps if s.name == "register_target:jupiter-signaling")
    assert "already registered and healthy" in attach.detail
    assert proxy.count("elasticloadbalancing:RegisterTargets") == 1
    assert seen.index("register_target:jupiter-signaling") < seen.index(
        "deregister_target:jupiter-signaling"
    )


async def test_an_aborted_plan_deregisters_the_early_registration(proxied, moto: MotoServer):
    stack, proxy = proxied
    tg = stack.topology.target_groups["jupiter-signaling"]
    primary = stack.topology.instances["signaling"]["primary"]
    stack.listeners.stop("signaling", "backup")  # never healthy
    seen: list[str] = []
    ex = executor(configured(stack.config, "signaling"), moto.url, seen)
    try:
        out = await ex.run(request("signaling"))
    finally:
        ex.close()
    assert out.result == "aborted", out.detail
    assert "the traffic stays on the primary and the backup was stopped again" in out.detail
    names = [s.name for s in out.steps]
    assert "register_early:jupiter-signaling" in names
    assert names[-3:] == [
        "rollback:deregister_target:jupiter-signaling",
        "rollback:stop_standby",
        "notify",
    ]
    assert "rollback:standby_healthy" not in names  # nothing had moved off the primary
    assert proxy.count("elasticloadbalancing:RegisterTargets") == 1
    assert proxy.count("elasticloadbalancing:DeregisterTargets") == 1
    elb = moto_client(moto.url, stack.topology.region, "elbv2")
    health = elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]
    assert [(d["Target"]["Id"], d["TargetHealth"]["State"]) for d in health] == [
        (primary, "healthy")
    ]
