"""The sandbox's AWS timing layer (``--aws-timing realistic[:SCALE]``): a
proxy in front of moto in server mode that answers with AWS's delays. The
model runs on a clock the tests move, so nothing here depends on how fast
the machine is; the end-to-end drill checks only the breakdown's
consistency, never its figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jupiterd.sandbox.peers.moto_server import MotoServer, moto_server
from jupiterd.sandbox.seed import Topology, moto_client, seed
from jupiterd.sandbox.timing import (
    BOOT_SECONDS,
    OS_BOOT_SECONDS,
    RESUME_BOOT_SECONDS,
    RESUME_RESTORE_SECONDS,
    ROUTE53_SECONDS,
    TimingModel,
    TimingSpecError,
    parse_spec,
)
from jupiterd.sandbox.timing_proxy import TimingProxy

ROOT = Path(__file__).resolve().parent.parent
REGION = "ap-southeast-2"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with moto_server() as server:
        yield server


@pytest.fixture
def layer(moto: MotoServer) -> Iterator[tuple[TimingModel, TimingProxy, Topology, Clock]]:
    """A fresh topology seeded through a disarmed proxy, then armed."""
    moto.reset()
    clock = Clock()
    model = TimingModel(scale=1.0, clock=clock)
    with TimingProxy(moto.url, model) as proxy:
        topo = seed(proxy.url, REGION)
        model.services = {i: s for s, roles in topo.instances.items() for i in roles.values()}
        model.arm()
        yield model, proxy, topo, clock


def _state(url: str, iid: str) -> str:
    ec2 = moto_client(url, REGION, "ec2")
    inst = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    return str(inst["State"]["Name"])


def _start(url: str, iid: str) -> None:
    moto_client(url, REGION, "ec2").start_instances(InstanceIds=[iid])


def _health(url: str, arn: str, iid: str) -> dict[str, Any]:
    elb = moto_client(url, REGION, "elbv2")
    d = elb.describe_target_health(TargetGroupArn=arn, Targets=[{"Id": iid}])
    return dict(d["TargetHealthDescriptions"][0]["TargetHealth"])


def test_parse_spec() -> None:
    assert parse_spec("realistic") == 1.0
    assert parse_spec("realistic:0.05") == 0.05
    for bad in ("fast", "realistic:x", "realistic:0", "realistic:-1", "realistic:inf"):
        with pytest.raises(TimingSpecError):
            parse_spec(bad)


def test_a_started_instance_is_pending_for_the_boot_time(layer: Any) -> None:
    _model, proxy, topo, clock = layer
    backup = topo.instances["signaling"]["backup"]
    _start(proxy.url, backup)
    assert _state(proxy.url, backup) == "pending"
    clock.now += BOOT_SECONDS - 0.5
    assert _state(proxy.url, backup) == "pending"
    clock.now += 0.5
    assert _state(proxy.url, backup) == "running"
    # The instances it did not start are answered as moto has them.
    assert _state(proxy.url, topo.instances["signaling"]["primary"]) == "running"


def test_the_application_starts_after_the_os_boot_and_its_own_start(layer: Any) -> None:
    model, proxy, topo, clock = layer
    sig, tb = topo.instances["signaling"]["backup"], topo.instances["thingsboard"]["backup"]
    _start(proxy.url, sig)
    _start(proxy.url, tb)
    clock.now += BOOT_SECONDS
    assert not model.app_may_run(sig) and not model.app_may_run(tb)
    clock.now += OS_BOOT_SECONDS + model.app_start["signaling"]
    assert model.app_may_run(sig)
    assert not model.app_may_run(tb)  # a JVM: a minute and more
    clock.now += model.app_start["thingsboard"] - model.app_start["signaling"]
    assert model.app_may_run(tb)


def test_a_resume_from_hibernation_skips_the_os_boot_and_the_application_start(
    layer: Any,
) -> None:
    model, proxy, topo, clock = layer
    tb = topo.instances["thingsboard"]["backup"]
    ec2 = moto_client(proxy.url, REGION, "ec2")
    _start(proxy.url, tb)
    clock.now += 500
    ec2.stop_instances(InstanceIds=[tb], Hibernate=True)
    assert tb in model.hibernated
    _start(proxy.url, tb)
    clock.now += RESUME_BOOT_SECONDS - 0.1
    assert _state(proxy.url, tb) == "pending"
    clock.now += 0.1 + RESUME_RESTORE_SECONDS
    assert _state(proxy.url, tb) == "running" and model.app_may_run(tb)
    # A plain stop forgets it: the next start is a cold one again.
    ec2.stop_instances(InstanceIds=[tb])
    _start(proxy.url, tb)
    clock.now += RESUME_BOOT_SECONDS + RESUME_RESTORE_SECONDS
    assert not model.app_may_run(tb)


def test_a_target_is_healthy_after_interval_times_threshold_of_its_group(layer: Any) -> None:
    _model, proxy, topo, clock = layer
    elb = moto_client(proxy.url, REGION, "elbv2")
    arn = topo.service_target_groups["signaling"][0]
    elb.modify_target_group(
        TargetGroupArn=arn, HealthCheckIntervalSeconds=10, HealthyThresholdCount=3
    )
    primary = topo.instances["signaling"]["primary"]  # running since before arm()
    elb.deregister_targets(TargetGroupArn=arn, Targets=[{"Id": primary}])
    elb.register_targets(TargetGroupArn=arn, Targets=[{"Id": primary}])
    th = _health(proxy.url, arn, primary)
    assert th["State"] == "initial" and th["Reason"] == "Elb.RegistrationInProgress"
    clock.now += 29.9
    assert _health(proxy.url, arn, primary)["State"] == "initial"
    clock.now += 0.1
    assert _health(proxy.url, arn, primary)["State"] == "healthy"
    # Another group's settings give another wait: read from the group.
    elb.modify_target_group(
        TargetGroupArn=arn, HealthCheckIntervalSeconds=5, HealthyThresholdCount=2
    )
    elb.deregister_targets(TargetGroupArn=arn, Targets=[{"Id": primary}])
    elb.register_targets(TargetGroupArn=arn, Targets=[{"Id": primary}])
    clock.now += 9.9
    assert _health(proxy.url, arn, primary)["State"] == "initial"
    clock.now += 0.1
    assert _health(proxy.url, arn, primary)["State"] == "healthy"


def test_target_checks_pass_only_once_the_application_answers(layer: Any) -> None:
    """Registered early, while it boots: healthy interval x threshold after
    the service answers (reported by the fleet), not after registration."""
    model, proxy, topo, clock = layer
    model.follow_apps = True
    elb = moto_client(proxy.url, REGION, "elbv2")
    arn = topo.service_target_groups["signaling"][0]
    elb.modify_target_group(
        TargetGroupArn=arn, HealthCheckIntervalSeconds=10, HealthyThresholdCount=3
    )
    backup = topo.instances["signaling"]["backup"]
    _start(proxy.url, backup)
    elb.register_targets(TargetGroupArn=arn, Targets=[{"Id": backup}])
    clock.now += 200
    assert _health(proxy.url, arn, backup)["State"] == "initial"  # its service never answered
    model.app_started(backup)
    clock.now += 29.9
    assert _health(proxy.url, arn, backup)["State"] == "initial"
    clock.now += 0.1
    assert _health(proxy.url, arn, backup)["State"] == "healthy"


def test_a_route53_change_is_pending_then_insync(layer: Any) -> None:
    _model, proxy, topo, clock = layer
    r53 = moto_client(proxy.url, REGION, "route53")
    batch = {
        "Changes": [
            {
                "Action": "UPSERT",
                "ResourceRecordSet": {
                    "Name": f"x.{topo.zone_name}",
                    "Type": "A",
                    "TTL": 60,
                    "ResourceRecords": [{"Value": "10.0.0.9"}],
                },
            }
        ]
    }
    first = r53.change_resource_record_sets(HostedZoneId=topo.zone_id, ChangeBatch=batch)
    assert first["ChangeInfo"]["Status"] == "PENDING"
    clock.now += 30
    second = r53.change_resource_record_sets(HostedZoneId=topo.zone_id, ChangeBatch=batch)
    ids = [c["ChangeInfo"]["Id"].rsplit("/", 1)[-1] for c in (first, second)]
    assert ids[0] != ids[1]  # moto gives every change the same id; each has its own here

    def status(cid: str) -> str:
        return str(r53.get_change(Id=cid)["ChangeInfo"]["Status"])

    assert [status(c) for c in ids] == ["PENDING", "PENDING"]
    clock.now += ROUTE53_SECONDS - 30
    assert [status(c) for c in ids] == ["INSYNC", "PENDING"]
    clock.now += 30
    assert [status(c) for c in ids] == ["INSYNC", "INSYNC"]


def test_scale_multiplies_every_figure(moto: MotoServer) -> None:
    moto.reset()
    clock = Clock()
    model = TimingModel(scale=0.1, clock=clock)
    with TimingProxy(moto.url, model) as proxy:
        topo = seed(proxy.url, REGION)
        model.services = {i: s for s, roles in topo.instances.items() for i in roles.values()}
        model.arm()
        backup = topo.instances["frp"]["backup"]
        _start(proxy.url, backup)
        clock.now += BOOT_SECONDS * 0.1 - 0.01
        assert _state(proxy.url, backup) == "pending"
        clock.now += 0.01
        assert _state(proxy.url, backup) == "running"
        cid = model.change_submitted()
        clock.now += ROUTE53_SECONDS * 0.1
        assert model.change_status(cid) == "INSYNC"
        assert model.target_healthy_at("arn", backup, 10, 3) == pytest.approx(
            clock.now - ROUTE53_SECONDS * 0.1 + (OS_BOOT_SECONDS + 1.0 + 30) * 0.1
        )
        assert model.thresholds({}, (10, 3))["start_timeout"] == "9s"  # 2 x 1.8 s + 5


def test_nothing_changes_until_armed(moto: MotoServer) -> None:
    """Disarmed (and so without --aws-timing, where there is no proxy at
    all) every answer is moto's: running at once, healthy, INSYNC."""
    moto.reset()
    clock = Clock()
    model = TimingModel(clock=clock)
    with TimingProxy(moto.url, model) as proxy:
        topo = seed(proxy.url, REGION)
        backup = topo.instances["signaling"]["backup"]
        _start(proxy.url, backup)
        assert _state(proxy.url, backup) == "running"
        arn = topo.service_target_groups["signaling"][0]
        moto_client(proxy.url, REGION, "elbv2").register_targets(
            TargetGroupArn=arn, Targets=[{"Id": backup}]
        )
        assert _health(proxy.url, arn, backup)["State"] == "healthy"
        assert not model.starts and not model.registered


def test_the_sandbox_uses_no_timing_layer_without_the_flag() -> None:
    from jupiterd.cli import build_parser

    args = build_parser().parse_args(["sandbox", "--drill", "signaling"])
    assert args.aws_timing is None
    from jupiterd.sandbox import timing_for

    assert timing_for(args) is None
    args = build_parser().parse_args(["sandbox", "--aws-timing", "realistic:0.5"])
    model = timing_for(args)
    assert model is not None and model.scale == 0.5


@pytest.mark.slow
@pytest.mark.xdist_group("sandbox")
def test_a_drill_under_the_timing_model_reports_its_breakdown() -> None:
    cmd = [
        sys.executable,
        "-m",
        "jupiterd",
        "sandbox",
        "--drill",
        "signaling",
        "--aws-timing",
        "realistic:0.05",
        "--json",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert report["ok"]
    assert report["aws_timing"]["scale"] == 0.05
    b = report["breakdown"]
    parts = ("detect", "boot", "app_healthy", "attach")
    assert all(b[p] is not None and b[p] >= 0 for p in parts), b
    assert sum(b[p] for p in parts) == pytest.approx(b["total"], abs=0.01)
    assert b["total"] == pytest.approx(report["restored_seconds"], abs=0.01)
    # The standby was stopped: it had to boot and start its service.
    assert b["boot"] > 0 and b["app_healthy"] > 0
    steps = {s["name"]: s for s in report["steps"]}
    assert steps["start_standby"]["ok"] and "to running" in steps["start_standby"]["detail"]
