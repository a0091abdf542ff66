"""`jupiterd sandbox --replicas N`: its AWS front (the fault proxy cutting
one AWS service off), the per-replica relays that cut one replica off from
one service, and the replica launcher."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import pytest

import probes
from jupiterd.core.types import Role
from jupiterd.sandbox.peers.fault_proxy import FaultProxy, classify, mutating
from jupiterd.sandbox.peers.moto_server import MotoServer, moto_server
from jupiterd.sandbox.peers.process import free_port, peer
from jupiterd.sandbox.relay import ReplicaPaths
from tests.peers.commands import python_peer


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


# ---------------------------------------------------------------- relays

HOSTS = {Role.PRIMARY: "127.0.0.2", Role.BACKUP: "127.0.0.3"}


@pytest.fixture(scope="module")
def services() -> Iterator[dict[str, int]]:
    """A socket.io server (TCP) and a STUN/TURN responder (UDP) on the
    primary's address, as the sandbox runs them."""
    sig, turn = (
        free_port(host=HOSTS[Role.PRIMARY]),
        free_port(socket.SOCK_DGRAM, HOSTS[Role.PRIMARY]),
    )
    host = HOSTS[Role.PRIMARY]
    with (
        peer(python_peer("signaling_server.py", "--host", host, "--port", str(sig))),
        peer(python_peer("stun_standin.py", "--host", host, "--port", str(turn))),
    ):
        yield {"signaling": sig, "coturn": turn}


async def _probe(kind: str, target: str) -> probes.ProbeResult:
    return await probes.get_kind(kind).probe(target, probes.get_kind(kind).parse_options({}), 2.0)


async def _paths(services: dict[str, int], *indexes: int) -> list[ReplicaPaths]:
    spec = {"signaling": (services["signaling"], False), "coturn": (services["coturn"], True)}
    out = []
    for i in indexes:
        paths = ReplicaPaths(i, spec, HOSTS)
        await paths.start()
        out.append(paths)
    return out


async def test_a_cut_replica_loses_that_service_the_others_keep_it(services) -> None:
    r1, r2 = await _paths(services, 1, 2)
    sig = f"{r1.address(Role.PRIMARY)}:{services['signaling']}"
    sig2 = f"{r2.address(Role.PRIMARY)}:{services['signaling']}"
    turn = f"{r1.address(Role.PRIMARY)}:{services['coturn']}"
    turn2 = f"{r2.address(Role.PRIMARY)}:{services['coturn']}"
    try:
        assert r1.address(Role.PRIMARY) == "127.0.11.2" and r2.address(Role.BACKUP) == "127.0.12.3"
        for kind, target in (("socketio", sig), ("socketio", sig2), ("turn", turn)):
            assert (await _probe(kind, target)).ok, target
        r1.cut("signaling")  # TCP
        assert r1.cuts == ["signaling/primary", "signaling/backup"]
        bad = await _probe("socketio", sig)
        assert not bad.ok and bad.reason == "timeout", bad.summary()
        assert (await _probe("socketio", sig2)).ok  # the other replica's path
        assert (await _probe("turn", turn)).ok  # the cut replica's other service
        r1.cut("coturn", Role.PRIMARY)  # UDP
        assert not (await _probe("turn", turn)).ok
        assert (await _probe("turn", turn2)).ok
        r1.heal("signaling")
        r1.heal("coturn")
        assert r1.cuts == []
        assert (await _probe("socketio", sig)).ok and (await _probe("turn", turn)).ok
    finally:
        for p in (r1, r2):
            await p.stop()


async def test_a_cut_is_silence_and_a_connection_resumes_when_healed() -> None:
    """A connection open across the cut gets no answer and no reset; its
    bytes arrive once the path heals. A new one is accepted, then silent."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, HOSTS[Role.PRIMARY], 0)
    port = server.sockets[0].getsockname()[1]
    (r1,) = await _paths({"signaling": port, "coturn": free_port(socket.SOCK_DGRAM)}, 3)
    try:
        reader, writer = await asyncio.open_connection(r1.address(Role.PRIMARY), port)
        writer.write(b"one")
        assert await reader.readexactly(3) == b"one"
        r1.cut("signaling")
        writer.write(b"two")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readexactly(3), 0.5)
        r2, w2 = await asyncio.open_connection(r1.address(Role.PRIMARY), port)  # accepted...
        w2.write(b"new")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r2.readexactly(3), 0.5)  # ...and silent
        r1.heal("signaling")
        assert await asyncio.wait_for(reader.readexactly(3), 10) == b"two"
        assert await asyncio.wait_for(r2.readexactly(3), 10) == b"new"
        writer.close()
        w2.close()
    finally:
        await r1.stop()
        server.close()
