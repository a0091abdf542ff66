"""`jupiterd sandbox --replicas N`: its AWS front (the fault proxy cutting
one AWS service off), the per-replica relays that cut one replica off from
one service, and the replica launcher."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import pytest

from jupiterd.sandbox.peers.fault_proxy import FaultProxy, classify, mutating
from jupiterd.sandbox.peers.moto_server import MotoServer, moto_server


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with moto_server(patch_env=True) as server:
        yield server


def _client(url: str, service: str) -> Any:
    cfg = botocore.config.Config(
        retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=2, read_timeout=2
    )
    return boto3.session.Session(
        region_name="ap-southeast-2", aws_access_key_id="testing", aws_secret_access_key="testing"
    ).client(service, endpoint_url=url, config=cfg)


def test_dynamodb_calls_are_classified_by_their_target_header() -> None:
    auth = (
        "AWS4-HMAC-SHA256 Credential=testing/20240101/ap-southeast-2/dynamodb/aws4_request, "
        "SignedHeaders=host, Signature=00"
    )
    headers = {"authorization": auth, "x-amz-target": "DynamoDB_20120810.TransactWriteItems"}
    assert classify("POST", "/", headers, b"{}") == ("dynamodb", "TransactWriteItems")
    assert mutating("TransactWriteItems") and mutating("StartInstances")
    assert not mutating("GetItem") and not mutating("DescribeTargetHealth")


def test_only_dynamodb_is_unreachable_while_cut_off(moto: MotoServer) -> None:
    with FaultProxy(moto.url) as proxy:
        ddb, ec2 = _client(proxy.url, "dynamodb"), _client(proxy.url, "ec2")
        ddb.list_tables()
        proxy.cut_off("dynamodb")
        with pytest.raises(botocore.exceptions.BotoCoreError):
            ddb.list_tables()
        ec2.describe_instances()  # EC2 still answers
        assert proxy.faults["unanswered dynamodb:ListTables"] >= 1
        assert proxy.count("ec2:DescribeInstances") == 1
        proxy.cut_off("dynamodb", down=False)
        ddb.list_tables()
        assert proxy.count("dynamodb:ListTables") == 2


def test_cutting_every_service_spares_none_but_the_spared(moto: MotoServer) -> None:
    with FaultProxy(moto.url) as proxy:
        ec2, sqs = _client(proxy.url, "ec2"), _client(proxy.url, "sqs")
        proxy.cut_off("all")
        with pytest.raises(botocore.exceptions.BotoCoreError):
            ec2.describe_instances()
        sqs.list_queues()  # what the tests read results with stays reachable
        proxy.cut_off("all", down=False)
        ec2.describe_instances()


def test_the_same_side_effect_asked_twice_is_listed(moto: MotoServer) -> None:
    with FaultProxy(moto.url) as proxy:
        ec2 = _client(proxy.url, "ec2")
        vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
        ec2.create_tags(Resources=[vpc], Tags=[{"Key": "a", "Value": "1"}])
        ec2.create_tags(Resources=[vpc], Tags=[{"Key": "a", "Value": "2"}])
        ec2.describe_vpcs()
        ec2.describe_vpcs()  # reads repeat freely
        assert proxy.repeated() == []
        ec2.create_tags(Resources=[vpc], Tags=[{"Key": "a", "Value": "2"}])
        assert proxy.repeated() == ["ec2:CreateTags x2"]
        assert proxy.repeated(exclude=["ec2"]) == []
        assert proxy.snapshot()["ec2:CreateTags"] == 3
        proxy.reset_counts()
        assert proxy.repeated() == [] and proxy.snapshot() == {}
