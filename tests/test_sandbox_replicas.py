"""`jupiterd sandbox --replicas N`: its AWS front (the fault proxy cutting
one AWS service off), the per-replica relays that cut one replica off from
one service, and the replica launcher."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import pytest
import yaml

import probes
from jupiterd.core.types import Role
from jupiterd.sandbox.peers.fault_proxy import FaultProxy, classify, mutating
from jupiterd.sandbox.peers.moto_server import MotoServer, moto_server
from jupiterd.sandbox.peers.process import free_port, peer
from jupiterd.sandbox.relay import ReplicaPaths
from tests.peers.commands import python_peer
from tests.test_sandbox import _assert_cleaned_up, _proc_stat, sandbox


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with moto_server(patch_env=True) as server:
        yield server


def _client(url: str, service: str) -> Any:
    cfg = botocore.config.Config(
        retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=10, read_timeout=20
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
        assert proxy.count("ec2:DescribeInstances") >= 1
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


# ---------------------------------------------------------------- the replicas


def _replicas(banner: str) -> dict[str, tuple[int, str]]:
    found = re.findall(r"^\s+(r\d)\s+pid (\d+)\s+status (http://\S+)/status", banner, re.M)
    return {rid: (int(pid), url) for rid, pid, url in found}


def _control(banner: str) -> str:
    m = re.search(r"curl -X POST (http://127\.0\.0\.1:\d+)/cut/r1/", banner)
    assert m, banner
    return m.group(1)


def _post(url: str) -> str:
    req = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read().decode()


def _status(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/status", timeout=10) as r:
        doc: dict[str, Any] = json.load(r)
    return doc


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _state(pid: int) -> str | None:
    st = _proc_stat(pid)
    return st[0] if st else None


def _settled(pid: int, *want: str | None) -> str | None:
    """The process's state once it is one of ``want`` (signals land a little later)."""
    deadline = time.monotonic() + 10
    while _state(pid) not in want and time.monotonic() < deadline:
        time.sleep(0.05)
    return _state(pid)


@pytest.mark.slow
@pytest.mark.xdist_group("sandbox")
@pytest.mark.timeout(400)
def test_replicas_run_with_their_own_paths_obey_the_controls_and_die_with_it(
    tmp_path: Path,
) -> None:
    with sandbox(tmp_path, args=("--replicas", "2")) as sb:
        reps = _replicas(sb.banner)
        assert set(reps) == {"r1", "r2"}, sb.banner
        for k, (rid, (pid, url)) in enumerate(sorted(reps.items()), start=1):
            assert "-m jupiterd run --config" in _cmdline(pid)
            assert f"replica-{k}.yaml" in _cmdline(pid)
            deadline = time.monotonic() + 60  # the first inventory read gives the targets
            while time.monotonic() < deadline:
                st = _status(url)
                if all(v["targets"]["primary"]["target"] for v in st["services"].values()):
                    break
                time.sleep(0.5)
            assert "nat-a" not in st["services"]  # ICMP: no NAT pool with replicas
            config_path = Path(_cmdline(pid).split("--config ")[1].split()[0])
            config = yaml.safe_load(config_path.read_text())
            assert config["ha"]["replica_id"] == rid and config["ha"]["replicas"] == 2
            for name, svc in st["services"].items():
                # The running primary is probed through this replica's relay...
                assert str(svc["targets"]["primary"]["target"]).startswith(f"127.0.{10 + k}.2:")
                # ...and the stopped backup will be, once it runs.
                assert config["services"][name]["backup"]["address"] == f"127.0.{10 + k}.3"
        ctl = _control(sb.banner)
        r2 = reps["r2"][0]
        assert "SIGSTOP" in _post(f"{ctl}/replica/r2/stop") and _settled(r2, "T") == "T"
        assert "SIGCONT" in _post(f"{ctl}/replica/r2/cont") and _settled(r2, "S", "R") != "T"
        assert "SIGKILL" in _post(f"{ctl}/replica/r2/kill") and _settled(r2, None) is None
        restarted = _post(f"{ctl}/replica/r2/restart")
        new = int(re.search(r"pid (\d+)", restarted).group(1))  # type: ignore[union-attr]
        assert new != r2 and "-m jupiterd run" in _cmdline(new)
        assert _status(reps["r2"][1])["pid"] == new
        assert "unreachable" in _post(f"{ctl}/dynamodb/down")
        assert "reachable again" in _post(f"{ctl}/dynamodb/up")
        assert "cut (silent)" in _post(f"{ctl}/cut/all/frp?role=backup")
        with pytest.raises(urllib.error.HTTPError):
            _post(f"{ctl}/cut/r9/frp")
        sb.proc.kill()  # no cleanup of its own: the kernel's parent-death signal
        sb.wait()
    _assert_cleaned_up(sb, namespaces=False)
    deadline = time.monotonic() + 15
    while _state(new) not in (None, "Z") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _state(new) in (None, "Z"), "the restarted replica outlived the sandbox"


def test_replicas_are_two_to_five(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "jupiterd", "sandbox", "--replicas", "7"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "--replicas takes 2 to 5" in r.stderr, r.stderr


# ---------------------------------------------------------------- the drills, end to end


def _checks(rep: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in rep["checks"]}


HA_ALL = ("--replicas", "3", "--drill", "ha-all", "--json")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_six_ha_drills_pass_end_to_end() -> None:
    """`sandbox --replicas 3 --drill ha-all`: one sandbox, the six drills of
    replicated deciders one after the other, each checked at every
    replica's /status, in AWS and in the calls the replicas made."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "jupiterd",
            "sandbox",
            *("--replicas", "3"),
            "--drill",
            "ha-all",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=880,
    )
    assert r.stdout.strip(), r.stderr[-3000:]
    reports = json.loads(r.stdout)
    by = {rep["drill"]: rep for rep in reports}
    failed = {
        n: [c for c in rep["checks"] if not c["ok"]] for n, rep in by.items() if not rep["ok"]
    }
    assert r.returncode == 0 and not failed, json.dumps(failed, indent=1)[-4000:]
    assert set(by) == {"ha-cutoff", "ha-dies", "ha-kill", "ha-stop", "ha-dynamo", "ha-witness"}

    cutoff = by["ha-cutoff"]
    held = [c for c in cutoff["checks"] if "holds no_quorum" in c["name"]]
    assert held and "1 of 3" in held[0]["detail"]
    assert cutoff["mutating_calls"] == {}

    assert {"exactly one failover", "by the leader", "each mutating call once"} <= _checks(
        by["ha-dies"]
    ).keys()

    kill = by["ha-kill"]
    assert kill["figures"]["takeover_seconds"] > 0
    assert kill["mutating_calls"].get("ec2:AssociateAddress") == 1
    assert kill["mutating_calls"].get("ec2:StartInstances") == 1

    assert any("plan_fenced" in name for name in _checks(by["ha-stop"]))

    assert {"every replica holds no_quorum", "monitoring goes on", "no replica acted on AWS"} <= (
        _checks(by["ha-dynamo"]).keys()
    )
    assert "the leader holds no_quorum, naming the witness" in _checks(by["ha-witness"])
