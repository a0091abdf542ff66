"""The AWS wrapper: error translation, retry configuration, endpoint chain,
metrics, no secrets in logs; the seed's loopback guard; and that the fault
proxy's errors are what botocore parses for each protocol."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.exceptions
import pytest
import structlog
from botocore.config import Config as BotoConfig
from structlog.testing import capture_logs

from jupiterd.aws.client import (
    Aws,
    AwsAccessDenied,
    AwsError,
    AwsNotFound,
    AwsThrottled,
    AwsUnavailable,
    classify,
)
from jupiterd.config import AwsConfig
from jupiterd.sandbox.peers.moto_server import MotoServer, moto_server
from jupiterd.sandbox.seed import SeedError, check_loopback
from jupiterd.telemetry.metrics import Metrics
from tests.peers import fault_proxy
from tests.peers.fault_proxy import FaultProxy
from tests.peers.hostile import free_port


def client_error(code: str, message: str = "m", status: int = 400) -> Exception:
    return botocore.exceptions.ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "Op",
    )


@pytest.mark.parametrize(
    ("code", "status", "kind", "words"),
    [
        ("AccessDenied", 403, AwsAccessDenied, "AWS denied ec2:StartInstances on i-1"),
        ("UnauthorizedOperation", 403, AwsAccessDenied, "must allow ec2:StartInstances on i-1"),
        ("AuthorizationError", 403, AwsAccessDenied, "(AuthorizationError)"),
        ("InvalidInstanceID.NotFound", 400, AwsNotFound, "i-1 does not exist"),
        ("TargetGroupNotFound", 400, AwsNotFound, "(TargetGroupNotFound from ec2:StartInstances"),
        ("NoSuchHostedZone", 404, AwsNotFound, "does not exist"),
        ("RequestLimitExceeded", 503, AwsThrottled, "still throttled after every retry"),
        ("PriorRequestNotComplete", 400, AwsThrottled, "PriorRequestNotComplete"),
        ("InternalError", 500, AwsError, "AWS answered 500 after every retry"),
        ("InvalidParameterValue", 400, AwsError, "ec2:StartInstances on i-1 failed"),
    ],
)
def test_classify(code: str, status: int, kind: type[AwsError], words: str):
    err = classify(client_error(code, "boom", status), "ec2:StartInstances", "i-1")
    assert type(err) is kind
    assert err is not None and words in str(err)
    assert err.code == code


def test_encoded_authorization_message_is_dropped():
    exc = client_error(
        "UnauthorizedOperation",
        "You are not authorized to perform this operation. "
        "Encoded authorization failure message: AbCdEf0123",
        403,
    )
    err = classify(exc, "ec2:StopInstances", "i-1")
    assert isinstance(err, AwsAccessDenied)
    assert "AbCdEf" not in err.message and "AbCdEf" not in str(err)


def test_not_an_aws_error_is_left_alone():
    assert classify(ValueError("x"), "a:B", "r") is None


def test_standard_retry_mode_and_timeouts():
    aws = Aws(AwsConfig(max_attempts=5, connect_timeout=1.5, read_timeout=4))
    try:
        c = aws.client("ec2")
        assert c.meta.config.retries == {"mode": "standard", "total_max_attempts": 5}
        assert c.meta.config.connect_timeout == 1.5 and c.meta.config.read_timeout == 4
        assert c.meta.region_name == "ap-southeast-2"
    finally:
        aws.close()


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with moto_server(patch_env=True) as server:
        yield server


async def test_endpoint_from_the_environment_chain(moto: MotoServer, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)
    metrics = Metrics()
    aws = Aws(AwsConfig(), metrics)  # no endpoint_url: botocore's chain finds moto
    try:
        resp = await aws.call("ec2", "DescribeInstances", resource="all")
        assert "Reservations" in resp
        with pytest.raises(AwsNotFound) as err:
            await aws.call(
                "ec2",
                "StartInstances",
                resource="i-0123456789abcdef0",
                InstanceIds=["i-0123456789abcdef0"],
            )
        assert "i-0123456789abcdef0 does not exist" in str(err.value)
    finally:
        aws.close()
    get = metrics.registry.get_sample_value
    assert (
        get("jupiterd_aws_api_calls_total", {"operation": "ec2:DescribeInstances", "result": "ok"})
        == 1
    )
    assert (
        get(
            "jupiterd_aws_api_calls_total",
            {"operation": "ec2:StartInstances", "result": "not_found"},
        )
        == 1
    )


async def test_dry_run_permission_proof(moto: MotoServer):
    aws = Aws(AwsConfig(endpoint_url=moto.url))
    try:
        # The wrapper's clients know only the operations jupiterd calls: the
        # test makes its instance with a full client.
        ec2 = _client("ec2", moto.url)
        iid = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"][0][
            "InstanceId"
        ]
        assert (
            await aws.call("ec2", "StopInstances", resource=iid, dry_run=True, InstanceIds=[iid])
            == {}
        )
        state = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
        assert state["State"]["Name"] == "running"  # DryRun changed nothing
    finally:
        aws.close()


async def test_unreachable_endpoint(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    port = free_port()
    aws = Aws(
        AwsConfig(endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1, connect_timeout=0.5)
    )
    try:
        with pytest.raises(AwsUnavailable) as err:
            await aws.call("ec2", "DescribeInstances", resource="all")
    finally:
        aws.close()
    assert "cannot reach the AWS endpoint" in str(err.value)


async def test_no_credentials(monkeypatch, tmp_path):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    aws = Aws(AwsConfig(endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=1))
    try:
        with pytest.raises(AwsUnavailable) as err:
            await aws.call("ec2", "DescribeInstances", resource="all")
    finally:
        aws.close()
    assert "no AWS credentials found" in str(err.value)


async def test_credentials_never_reach_the_logs(moto: MotoServer, monkeypatch):
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    aws = Aws(AwsConfig(endpoint_url=moto.url))
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with capture_logs() as logs:
            await aws.call("ec2", "DescribeInstances", resource="all")
            with pytest.raises(AwsError) as err:
                await aws.call("ec2", "StartInstances", resource="i-1", InstanceIds=["i-1"])
    finally:
        aws.close()
        structlog.configure(**saved)
    assert logs and secret not in repr(logs) and secret not in str(err.value)
    assert "testing" not in repr(logs)  # the access key id neither


@pytest.mark.parametrize(
    "url",
    [
        "https://ec2.ap-southeast-2.amazonaws.com",
        "http://10.0.0.5:5000",
        "http://moto.internal:5000",
    ],
)
def test_seed_refuses_anything_but_loopback(url: str):
    with pytest.raises(SeedError, match="refusing to seed"):
        check_loopback(url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:5000", "http://localhost:1", "http://[::1]:9"])
def test_seed_accepts_loopback(url: str):
    check_loopback(url)


# --------------------------------------------------------------------------- the fault proxy


@pytest.fixture(scope="module")
def faulty(moto: MotoServer) -> Iterator[FaultProxy]:
    with FaultProxy(moto.url, throttle=1.0, seed=3) as p:
        yield p


def _client(service: str, url: str) -> Any:
    return boto3.session.Session(region_name="ap-southeast-2").client(
        service,
        endpoint_url=url,
        config=BotoConfig(retries={"mode": "standard", "max_attempts": 1}),
    )


@pytest.mark.parametrize(
    ("service", "call", "codes"),
    [
        ("ec2", lambda c: c.describe_instances(), {"RequestLimitExceeded"}),
        ("elbv2", lambda c: c.describe_target_groups(), {"Throttling"}),
        ("sns", lambda c: c.list_topics(), {"Throttling"}),
        (
            "route53",
            lambda c: c.list_hosted_zones(),
            {"Throttling", "PriorRequestNotComplete"},
        ),
    ],
)
def test_proxy_throttling_is_what_botocore_parses(faulty: FaultProxy, service, call, codes):
    seen = set()
    for _ in range(2):
        with pytest.raises(botocore.exceptions.ClientError) as err:
            call(_client(service, faulty.url))
        seen.add(err.value.response["Error"]["Code"])
    assert seen <= codes and seen


def test_proxy_server_errors_and_denials(moto: MotoServer):
    with FaultProxy(moto.url, errors=1.0, deny=["sns:ListTopics"]) as p:
        with pytest.raises(botocore.exceptions.ClientError) as err:
            _client("ec2", p.url).describe_instances()
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] in (500, 503)
        with pytest.raises(botocore.exceptions.ClientError) as err:
            _client("sns", p.url).list_topics()
        assert err.value.response["Error"]["Code"] == "AuthorizationError"
        assert p.forwarded == {}


def test_proxy_forwards_and_counts(moto: MotoServer):
    with FaultProxy(moto.url) as p:
        _client("ec2", p.url).describe_instances()
        _client("route53", p.url).list_hosted_zones()
        assert p.count("ec2:DescribeInstances") == 1
        assert p.count("route53:ListHostedZones") == 1


@pytest.mark.parametrize(
    ("method", "path", "action"),
    [
        ("POST", "/2013-04-01/hostedzone/Z1/rrset/", "ChangeResourceRecordSets"),
        ("GET", "/2013-04-01/hostedzone/Z1/rrset?name=a", "ListResourceRecordSets"),
        ("GET", "/2013-04-01/change/C1", "GetChange"),
    ],
)
def test_proxy_names_route53_actions(method, path, action):
    auth = "AWS4-HMAC-SHA256 Credential=AK/20260101/us-east-1/route53/aws4_request, X"
    assert fault_proxy.classify(method, path, {"authorization": auth}, b"") == ("route53", action)


def test_models_are_pruned_to_the_operations_jupiterd_calls():
    from jupiterd.aws.client import OPERATIONS, iam_action
    from tests.test_iam import _aws_calls

    called, _ = _aws_calls()
    allowed = {iam_action(svc, op) for svc, ops in OPERATIONS.items() for op in ops}
    assert called == allowed, "update aws.OPERATIONS: the code calls " + ", ".join(
        sorted(called ^ allowed)
    )
    aws = Aws(AwsConfig(endpoint_url="http://127.0.0.1:9"))
    try:
        ec2 = aws.client("ec2")
        assert hasattr(ec2, "start_instances") and not hasattr(ec2, "run_instances")
        assert ec2.can_paginate("describe_instances")
    finally:
        aws.close()


# ---------------------------------------------------------------- the pruned models' cache


def _no_child(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the pruned models were made again instead of read from the cache")


def test_pruned_models_are_kept_in_the_state_dir_and_read_back(tmp_path, monkeypatch):
    import jupiterd.aws.models as awsmod

    monkeypatch.setattr(awsmod, "_pruned", None)
    made = awsmod.pruned_models(tmp_path)
    path = awsmod.models_cache_file(tmp_path)
    assert path.exists() and botocore.__version__ in path.name
    assert {svc: set(m["operations"]) for svc, m in made.items()} == awsmod.OPERATIONS

    # The next start reads the file: no child process, the same models.
    monkeypatch.setattr(awsmod, "_pruned", None)
    monkeypatch.setattr(awsmod.subprocess, "run", _no_child)
    assert awsmod.pruned_models(tmp_path) == made
    aws = Aws(AwsConfig(endpoint_url="http://127.0.0.1:9"), cache_dir=tmp_path)
    monkeypatch.setattr(awsmod, "_pruned", None)
    try:
        assert hasattr(aws.client("sns"), "publish")
    finally:
        aws.close()


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b"[]", b'{"ec2": {"operations": {}}}', b"\xff\xfe"],
    ids=["empty", "truncated", "not-a-mapping", "wrong-operations", "not-utf8"],
)
def test_a_damaged_cache_is_made_again(tmp_path, monkeypatch, content):
    import jupiterd.aws.models as awsmod

    path = awsmod.models_cache_file(tmp_path)
    path.write_bytes(content)
    monkeypatch.setattr(awsmod, "_pruned", None)
    made = awsmod.pruned_models(tmp_path)
    assert set(made) == set(awsmod.OPERATIONS)
    assert awsmod._read_cache(path) == made  # rewritten whole


def test_a_new_botocore_leaves_no_old_cache_behind(tmp_path, monkeypatch):
    import jupiterd.aws.models as awsmod

    old = tmp_path / "aws-models-0.0.1-000000000000.json"
    old.write_text("{}")
    monkeypatch.setattr(awsmod, "_pruned", None)
    awsmod.pruned_models(tmp_path)
    assert not old.exists()
    assert [p.name for p in tmp_path.iterdir()] == [awsmod.models_cache_file(tmp_path).name]


def test_an_unwritable_state_dir_only_costs_the_pruning(tmp_path, monkeypatch):
    import jupiterd.aws.models as awsmod

    missing = tmp_path / "no" / "such" / "dir"
    monkeypatch.setattr(awsmod, "_pruned", None)
    assert set(awsmod.pruned_models(missing)) == set(awsmod.OPERATIONS)
    assert not missing.exists()


def test_models_are_pruned_in_a_child_process_not_the_daemons(tmp_path, monkeypatch):
    """The child keeps botocore's full models out of the daemon's memory:
    its module must run as a program (it did not once the package moved)."""
    import jupiterd.aws.models as awsmod

    monkeypatch.setattr(awsmod, "_pruned", None)

    def in_process() -> Any:
        raise AssertionError("the models were pruned in the daemon's own process")

    monkeypatch.setattr(awsmod, "_prune_all", in_process)
    made = awsmod.pruned_models(tmp_path)
    assert set(made) == set(awsmod.OPERATIONS)
