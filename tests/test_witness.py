"""The AWS-side witness (``jupiterd.aws.witness``) against moto in server
mode, seeded with the Jupiter topology (``jupiterd.sandbox.seed``).

moto never reports a registered target ``unhealthy`` nor an instance status
check ``impaired``: those two mappings are tested on answers shaped as
AWS's documentation says, each checked against botocore's own model of the
operation's output."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.session
import botocore.validate
import pytest

from jupiterd.aws.client import Aws
from jupiterd.aws.witness import (
    Witness,
    WitnessVerdict,
    alarm_verdict,
    ec2_status_verdict,
    elb_verdict,
)
from jupiterd.config import AwsConfig, Config, parse_config
from jupiterd.sandbox.peers.moto_server import MotoServer
from jupiterd.sandbox.seed import Topology, seed
from jupiterd.telemetry.metrics import Metrics
from tests.clock import FakeClock
from tests.test_lease import moto  # noqa: F401 - the module's moto server fixture

ALARM = "signaling-5xx"


@pytest.fixture
def topo(moto: MotoServer) -> Topology:  # noqa: F811
    moto.reset()
    return seed(moto.url)


def _config(topo: Topology, witnesses: dict[str, dict[str, Any]]) -> Config:
    spec = {
        s: {"probe": {"kind": "tcp", "port": 9}, "primary": "127.0.0.2", "backup": "127.0.0.3"}
        for s in ("signaling", "coturn", "thingsboard", "nat")
    }
    doc = topo.config_dict(spec, state_dir="/nonexistent")
    for service, w in witnesses.items():
        doc["services"][service]["witness"] = w
    return parse_config(doc)


@pytest.fixture
def aws(topo: Topology) -> Iterator[Aws]:
    client = Aws(AwsConfig(region=topo.region, endpoint_url=topo.endpoint_url, max_attempts=1))
    yield client
    client.close()


def _client(topo: Topology, service: str) -> Any:
    return boto3.session.Session(region_name=topo.region).client(
        service, endpoint_url=topo.endpoint_url
    )


def _ask(w: Witness, service: str, instance: str | None) -> WitnessVerdict | None:
    return asyncio.run(w.verdict(service, instance))


def _fresh(aws: Aws, config: Config) -> Witness:
    return Witness(aws, config, cache_seconds=0.0)


# --------------------------------------------------------------------------- elb


def test_elb_witness_follows_the_target_health(aws: Aws, topo: Topology) -> None:
    w = _fresh(aws, _config(topo, {"signaling": {"kind": "elb"}, "coturn": {"kind": "elb"}}))
    primary, backup = topo.instances["signaling"]["primary"], topo.instances["signaling"]["backup"]
    up = _ask(w, "signaling", primary)
    assert up == WitnessVerdict("elb", False, up.detail if up else "", True)
    assert "jupiter-signaling: healthy" in up.detail
    # the standby is not registered: no verdict, and the reason says so
    standby = _ask(w, "signaling", backup)
    assert standby is not None and standby.down is None
    assert "Target.NotRegistered" in standby.detail
    # coturn is in two groups (UDP and TCP): healthy in both
    cp = topo.instances["coturn"]["primary"]
    both = _ask(w, "coturn", cp)
    assert both is not None and both.down is False
    assert "jupiter-coturn-udp: healthy" in both.detail
    assert "jupiter-coturn-tcp: healthy" in both.detail
    # out of one group: the other still speaks
    udp = next(a for a in topo.service_target_groups["coturn"] if "udp" in a)
    _client(topo, "elbv2").deregister_targets(TargetGroupArn=udp, Targets=[{"Id": cp}])
    one = _ask(w, "coturn", cp)
    assert one is not None and one.down is False and "Target.NotRegistered" in one.detail
    # the instance stops: every group says so
    _client(topo, "ec2").stop_instances(InstanceIds=[primary, cp])
    down = _ask(w, "signaling", primary)
    assert down is not None and down.down is True and "Target.InvalidState" in down.detail
    assert _ask(w, "coturn", cp).down is True  # type: ignore[union-attr]


def test_elb_witness_asks_only_its_own_target_group(aws: Aws, topo: Topology) -> None:
    udp = next(a for a in topo.service_target_groups["coturn"] if "udp" in a)
    tcp = next(a for a in topo.service_target_groups["coturn"] if "tcp" in a)
    metrics = Metrics()
    aws.metrics = metrics
    w = _fresh(aws, _config(topo, {"coturn": {"kind": "elb", "target_group": tcp, "veto": False}}))
    cp = topo.instances["coturn"]["primary"]
    _client(topo, "elbv2").deregister_targets(TargetGroupArn=tcp, Targets=[{"Id": cp}])
    got = _ask(w, "coturn", cp)
    assert got is not None and got.down is None and not got.veto
    assert "jupiter-coturn-tcp" in got.detail and udp.split("/")[1] not in got.detail
    calls = metrics.registry.get_sample_value(
        "jupiterd_aws_api_calls_total",
        {"operation": "elasticloadbalancing:DescribeTargetHealth", "result": "ok"},
    )
    assert calls == 1


# --------------------------------------------------------------------------- ec2_status


def test_ec2_status_witness(aws: Aws, topo: Topology) -> None:
    w = _fresh(aws, _config(topo, {"nat": {"kind": "ec2_status"}}))
    primary, backup = topo.instances["nat"]["primary"], topo.instances["nat"]["backup"]
    up = _ask(w, "nat", primary)
    assert up is not None and up.down is False
    assert "running, instance status ok, system status ok" in up.detail
    stopped = _ask(w, "nat", backup)
    assert stopped is not None and stopped.down is True and "is stopped" in stopped.detail
    gone = _ask(w, "nat", "i-0123456789abcdef0")
    assert gone is not None and gone.down is None and "i-0123456789abcdef0" in gone.detail


# --------------------------------------------------------------------------- cloudwatch


def test_cloudwatch_witness_follows_the_alarm(aws: Aws, topo: Topology) -> None:
    w = _fresh(aws, _config(topo, {"signaling": {"kind": "cloudwatch", "alarm": ALARM}}))
    primary = topo.instances["signaling"]["primary"]
    missing = _ask(w, "signaling", primary)
    assert missing is not None and missing.down is None
    assert f"no alarm named {ALARM}" in missing.detail
    cw = _client(topo, "cloudwatch")
    cw.put_metric_alarm(
        AlarmName=ALARM,
        MetricName="HTTPCode_Target_5XX_Count",
        Namespace="AWS/ApplicationELB",
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=10,
        ComparisonOperator="GreaterThanThreshold",
    )
    for state, down in (("ALARM", True), ("OK", False), ("INSUFFICIENT_DATA", None)):
        cw.set_alarm_state(AlarmName=ALARM, StateValue=state, StateReason=f"drill {state}")
        got = _ask(w, "signaling", None)  # an alarm needs no instance id
        assert got is not None and got.down is down, state
        assert got.detail == f"CloudWatch alarm {ALARM} is {state} (drill {state})"


# --------------------------------------------------------------------------- the cache


def test_a_verdict_is_kept_a_second_and_shared(aws: Aws, topo: Topology) -> None:
    metrics = Metrics()
    aws.metrics = metrics
    clock = FakeClock()
    w = Witness(
        aws, _config(topo, {"signaling": {"kind": "cloudwatch", "alarm": ALARM}}), clock=clock
    )

    def calls() -> float:
        return (
            metrics.registry.get_sample_value(
                "jupiterd_aws_api_calls_total",
                {"operation": "cloudwatch:DescribeAlarms", "result": "ok"},
            )
            or 0.0
        )

    async def many() -> list[WitnessVerdict | None]:
        return list(await asyncio.gather(*(w.verdict("signaling", "i-1") for _ in range(5))))

    first = asyncio.run(many())
    assert calls() == 1 and all(v == first[0] for v in first)
    # asked every 0.25 s: one call a second
    for _ in range(3):
        clock.mono += 0.25
        assert _ask(w, "signaling", "i-1") == first[0]
    assert calls() == 1
    clock.mono += 0.25
    _ask(w, "signaling", "i-1")
    assert calls() == 2


# --------------------------------------------------------------------------- never raises


def test_no_witness_configured_is_none(aws: Aws, topo: Topology) -> None:
    w = _fresh(aws, _config(topo, {}))
    assert _ask(w, "signaling", topo.instances["signaling"]["primary"]) is None
    assert _ask(w, "no-such-service", None) is None


def test_an_unknown_instance_is_no_verdict(aws: Aws, topo: Topology) -> None:
    w = _fresh(aws, _config(topo, {"signaling": {"kind": "elb"}, "nat": {"kind": "ec2_status"}}))
    for service in ("signaling", "nat"):
        got = _ask(w, service, None)
        assert got is not None and got.down is None and "id is not known" in got.detail


def test_aws_unreachable_is_no_verdict_and_no_exception(topo: Topology) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends
    down = Aws(
        AwsConfig(
            region=topo.region,
            endpoint_url=f"http://127.0.0.1:{port}",
            max_attempts=1,
            connect_timeout=0.5,
            read_timeout=0.5,
        )
    )
    config = _config(
        topo,
        {
            "signaling": {"kind": "elb"},
            "nat": {"kind": "ec2_status"},
            "coturn": {"kind": "cloudwatch", "alarm": ALARM},
        },
    )
    try:
        w = _fresh(down, config)
        for service, action in (
            ("signaling", "elasticloadbalancing:DescribeTargetHealth"),
            ("nat", "ec2:DescribeInstanceStatus"),
            ("coturn", "cloudwatch:DescribeAlarms"),
        ):
            got = _ask(w, service, topo.instances[service]["primary"])
            assert got is not None and got.down is None, service
            assert action in got.detail and "cannot reach the AWS endpoint" in got.detail
    finally:
        down.close()


def test_an_unreadable_answer_is_no_verdict(aws: Aws, topo: Topology) -> None:
    w = _fresh(aws, _config(topo, {"nat": {"kind": "ec2_status"}}))

    async def garbage(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"InstanceStatuses": [None, 5, {"InstanceId": "i-1", "InstanceState": "x"}]}

    aws.call = garbage  # type: ignore[method-assign]
    got = _ask(w, "nat", "i-1")
    assert got is not None and got.down is None and "unreadably" in got.detail


# --------------------------------------------------------------------------- mappings


def _output_shape(service: str, operation: str) -> Any:
    model = botocore.session.get_session().get_service_model(service)
    return model.operation_model(operation).output_shape


def _valid(service: str, operation: str, response: dict[str, Any]) -> dict[str, Any]:
    report = botocore.validate.ParamValidator().validate(
        response, _output_shape(service, operation)
    )
    assert not report.has_errors(), report.generate_report()
    return response


def _health(instance: str, state: str, reason: str | None = None) -> dict[str, Any]:
    th: dict[str, Any] = {"State": state}
    if reason:
        th["Reason"] = reason
        th["Description"] = "as AWS words it"
    return _valid(
        "elbv2",
        "DescribeTargetHealth",
        {
            "TargetHealthDescriptions": [
                {
                    "Target": {"Id": instance, "Port": 80},
                    "HealthCheckPort": "80",
                    "TargetHealth": th,
                }
            ]
        },
    )


TG_A = "arn:aws:elasticloadbalancing:us-west-2:123456789012:targetgroup/web-a/73e2d6bc24d8a067"
TG_B = "arn:aws:elasticloadbalancing:us-west-2:123456789012:targetgroup/web-b/73e2d6bc24d8a068"


@pytest.mark.parametrize(
    ("a", "b", "down", "says"),
    [
        (
            ("unhealthy", "Target.ResponseCodeMismatch"),
            ("unhealthy", "Target.Timeout"),
            True,
            "failing",
        ),
        (("unhealthy", "Target.Timeout"), ("unused", "Target.NotRegistered"), True, "failing"),
        (("healthy", None), ("initial", "Elb.RegistrationInProgress"), False, "healthy"),
        (("healthy", None), ("unhealthy", "Target.FailedHealthChecks"), None, "disagree"),
        (("draining", "Target.DeregistrationInProgress"), ("unavailable", None), None, "no health"),
        (("unused", "Target.NotInUse"), ("unused", "Target.IpUnusable"), None, "no health"),
        (("unused", "Target.InvalidState"), ("unhealthy", "Target.Timeout"), True, "failing"),
    ],
)
def test_elb_mapping(
    a: tuple[str, str | None], b: tuple[str, str | None], down: Any, says: str
) -> None:
    got, detail = elb_verdict([(TG_A, _health("i-1", *a)), (TG_B, _health("i-1", *b))], "i-1")
    assert got is down and says in detail
    assert detail.count("web-a: ") == 1 and detail.count("web-b: ") == 1
    assert elb_verdict([], "i-1") == (None, "ELB gives no health of i-1 (no target group)")
    other = elb_verdict([(TG_A, _health("i-2", "unhealthy"))], "i-1")
    assert other[0] is None and "no health for it" in other[1]


def _status(state: str, inst: str, system: str) -> dict[str, Any]:
    codes = {"pending": 0, "running": 16, "stopping": 64, "stopped": 80}
    return _valid(
        "ec2",
        "DescribeInstanceStatus",
        {
            "InstanceStatuses": [
                {
                    "AvailabilityZone": "us-east-1d",
                    "InstanceId": "i-1",
                    "InstanceState": {"Code": codes[state], "Name": state},
                    "InstanceStatus": {
                        "Details": [{"Name": "reachability", "Status": "failed"}],
                        "Status": inst,
                    },
                    "SystemStatus": {"Status": system},
                }
            ]
        },
    )


@pytest.mark.parametrize(
    ("state", "inst", "system", "down"),
    [
        ("running", "ok", "ok", False),
        ("running", "impaired", "ok", True),
        ("running", "ok", "impaired", True),
        ("running", "initializing", "ok", None),
        ("running", "insufficient-data", "insufficient-data", None),
        ("pending", "not-applicable", "not-applicable", None),
        ("stopping", "not-applicable", "not-applicable", True),
        ("stopped", "not-applicable", "not-applicable", True),
    ],
)
def test_ec2_status_mapping(state: str, inst: str, system: str, down: Any) -> None:
    got, detail = ec2_status_verdict(_status(state, inst, system), "i-1")
    assert got is down
    assert detail == f"EC2: i-1 is {state}, instance status {inst}, system status {system}"


@pytest.mark.parametrize(
    ("key", "state", "down"),
    [
        ("MetricAlarms", "ALARM", True),
        ("MetricAlarms", "OK", False),
        ("MetricAlarms", "INSUFFICIENT_DATA", None),
        ("CompositeAlarms", "ALARM", True),
    ],
)
def test_alarm_mapping(key: str, state: str, down: Any) -> None:
    response = _valid(
        "cloudwatch",
        "DescribeAlarms",
        {key: [{"AlarmName": ALARM, "StateValue": state, "StateReason": "Threshold Crossed"}]},
    )
    assert alarm_verdict(response, ALARM) == (
        down,
        f"CloudWatch alarm {ALARM} is {state} (Threshold Crossed)",
    )
    assert alarm_verdict(response, "other")[0] is None
