"""``jupiterd discover`` against moto in server mode seeded with the Jupiter
topology (four service pairs, and two NAT instances sharing one backup):
the configuration it writes names what was seeded, passes ``check-config``
and fails every service over for real. The pure builder's decisions on
odd accounts are tested without AWS."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from jupiterd.cli import main
from jupiterd.core.discover import (
    Facts,
    Instance,
    PortRange,
    Record,
    TargetGroup,
    decide,
)
from jupiterd.core.discover_yaml import render
from jupiterd.sandbox.peers.moto_server import MotoServer, client_env, moto_server
from jupiterd.sandbox.seed import Topology, seed
from tests.peers.jupiter_aws import FAST, HOSTS, listeners

ROOT = Path(__file__).resolve().parent.parent
REGION = "ap-southeast-2"
ORDINARY = ("signaling", "coturn", "frp", "thingsboard")
KINDS = {"signaling": "socketio", "coturn": "turn", "frp": "frp", "thingsboard": "thingsboard"}
SECRETS = {
    "JUPITERD_TURN_SECRET": "dummy-turn",
    "JUPITERD_FRP_TOKEN": "dummy-frp",
    "JUPITERD_TB_PASSWORD": "dummy-tb",
}
PORTS = {"signaling": 3000, "coturn": 3478, "frp": 7000, "thingsboard": 8080}


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with moto_server(patch_env=True) as server:
        yield server


@pytest.fixture
def env(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    moto.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)
    monkeypatch.setenv("AWS_REGION", REGION)
    return moto


def _ec2(topo: Topology) -> Any:
    return boto3.session.Session(region_name=topo.region).client(
        "ec2", endpoint_url=topo.endpoint_url
    )


def full_topology(url: str) -> Topology:
    """The seed, plus what the real stack has besides: a security group per
    service opening its port, and a second NAT instance (the other AZ, its
    own private route table) that shares the seeded NAT backup."""
    topo = seed(url)
    ec2 = _ec2(topo)
    for service, port in PORTS.items():
        sg = ec2.create_security_group(
            GroupName=f"jupiter-{service}", Description=service, VpcId=topo.vpc_id
        )["GroupId"]
        ec2.authorize_security_group_ingress(
            GroupId=sg,
            IpPermissions=[
                {
                    "IpProtocol": "tcp",
                    "FromPort": p,
                    "ToPort": p,
                    "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
                }
                for p in (22, port)
            ],
        )
        for iid in topo.instances[service].values():
            ec2.modify_instance_attribute(InstanceId=iid, Groups=[sg])
    nat_b = ec2.run_instances(
        ImageId="ami-12c6146b",
        MinCount=1,
        MaxCount=1,
        SubnetId=topo.public_subnets[1],
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": [
                    {"Key": "Name", "Value": "jupiter-nat-secondary"},
                    {"Key": "Project", "Value": "Jupiter"},
                    {"Key": "Service", "Value": "nat"},
                    {"Key": "Role", "Value": "primary"},
                ],
            }
        ],
    )["Instances"][0]
    ec2.modify_instance_attribute(InstanceId=nat_b["InstanceId"], SourceDestCheck={"Value": False})
    rt = ec2.create_route_table(VpcId=topo.vpc_id)["RouteTable"]["RouteTableId"]
    ec2.create_route(
        RouteTableId=rt,
        DestinationCidrBlock="0.0.0.0/0",
        NetworkInterfaceId=nat_b["NetworkInterfaces"][0]["NetworkInterfaceId"],
    )
    topo.extra.update(nat_b=nat_b["InstanceId"], nat_b_ip=nat_b["PrivateIpAddress"], nat_b_rt=rt)
    return topo


def discover(
    tmp: Path, *args: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, dict[str, Any]]:
    out = tmp / "discovered.yaml"
    rc = main(["discover", "--project", "Jupiter", "-o", str(out), *args])
    err = capsys.readouterr().err
    doc = yaml.safe_load(out.read_text()) if out.exists() else {}
    return rc, err, doc


def _check_config(path: Path, extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jupiterd", "check-config", str(path)],
        cwd=ROOT,
        env={**client_env(), **extra_env},
        capture_output=True,
        text=True,
        timeout=60,
    )


# --------------------------------------------------------------------------- against moto


def test_discovered_config_names_the_seeded_topology(
    env: MotoServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topo = full_topology(env.url)
    rc, err, doc = discover(tmp_path, capsys=capsys)
    assert rc == 0, err
    assert doc["aws"] == {"region": REGION, "endpoint_url": env.url}
    assert doc["sns_topic_arn"] == topo.topic_arn
    assert set(doc["services"]) == set(ORDINARY)
    for name in ORDINARY:
        svc = doc["services"][name]
        assert svc["probe"]["kind"] == KINDS[name], name
        assert svc["probe"]["port"] == PORTS[name]
        for role in ("primary", "backup"):
            assert svc[role]["instance_id"] == topo.instances[name][role]
            assert svc[role]["address"] == topo.private_ips[name][role]
        seeded = topo.attachments(name)
        att = svc["attachments"]
        assert sorted(att.get("target_groups", [])) == sorted(seeded.get("target_groups", []))
        assert att.get("elastic_ip") == seeded.get("elastic_ip")
        assert [{k: r[k] for k in ("zone_id", "name", "address")} for r in att["route53"]] == (
            seeded["route53"]
        )
        assert "route_tables" not in att
    # Every secret is an environment reference, flagged TODO, and listed.
    text = (tmp_path / "discovered.yaml").read_text()
    for var in SECRETS:
        assert f"{{env: {var}}}  # TODO" in text
        assert var in err
    assert "probe kind undecided" not in err

    # The two NAT instances sharing one backup: a pool.
    pool = doc["pools"]["nat"]
    assert pool["probe"] == {"kind": "icmp"}
    assert pool["members"] == {
        "nat-a": {
            "instance_id": topo.instances["nat"]["primary"],
            "address": topo.private_ips["nat"]["primary"],
            "attachments": {"route_tables": sorted(topo.route_tables)},
        },
        "nat-b": {
            "instance_id": topo.extra["nat_b"],
            "address": topo.extra["nat_b_ip"],
            "attachments": {"route_tables": [topo.extra["nat_b_rt"]]},
        },
    }
    assert pool["standby"] == {
        "instance_id": topo.instances["nat"]["backup"],
        "address": topo.private_ips["nat"]["backup"],
    }

    # check-config accepts the file as written, the pool included.
    p = _check_config(tmp_path / "discovered.yaml", SECRETS)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "6 service(s)" in p.stdout and "nat-a" in p.stdout and "nat-b" in p.stdout
    plain = tmp_path / "services.yaml"
    plain.write_text(yaml.safe_dump(doc, sort_keys=False))
    p = _check_config(plain, {})  # the TODO secrets really are required
    assert p.returncode == 78 and "secret.env: the environment variable" in p.stderr


@pytest.mark.slow
def test_every_discovered_service_fails_over_and_back(
    env: MotoServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    full_topology(env.url)
    rc, err, doc = discover(tmp_path, capsys=capsys)
    assert rc == 0, err
    # The instances are moto's: their services are stood in for by loopback
    # listeners, probed with tcp, and the NAT pool's members by loopback
    # addresses answering its icmp probe (so the surviving member is a fit
    # fallback). Instances and attachments stay as discovered.
    pool = doc["pools"]["nat"]
    for i, member in enumerate(sorted(pool["members"])):
        pool["members"][member]["address"] = f"127.0.0.{20 + i}"
    pool["standby"]["address"] = "127.0.0.29"
    with listeners(ORDINARY) as ls:
        for name, svc in doc["services"].items():
            svc["probe"] = {"kind": "tcp", "port": ls.ports[name]}
            for role in ("primary", "backup"):
                svc[role]["address"] = HOSTS[role]
        doc["defaults"] = dict(FAST)
        doc["state_dir"] = str(tmp_path / "state")
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        for command, direction in (("failover-all", "failover"), ("failback-all", "failback")):
            p = subprocess.run(
                [sys.executable, "-m", "jupiterd", command, "--config", str(path)],
                cwd=ROOT,
                env=client_env(),  # no AWS_ENDPOINT_URL: the discovered aws.endpoint_url
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert p.returncode == 0, p.stdout + p.stderr
            for name in (*ORDINARY, *pool["members"]):
                assert f"{name}: {direction} success" in p.stdout, p.stdout


def test_an_account_with_nothing_tagged(
    env: MotoServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(env.url)
    rc = main(["discover", "--project", "Saturn", "-o", str(tmp_path / "c.yaml")])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"no EC2 instance in {REGION} is tagged Project=Saturn" in err
    assert "Traceback" not in err
    assert not (tmp_path / "c.yaml").exists()


def test_an_undecidable_kind_is_listed_with_a_todo(
    env: MotoServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The bare seed: frp's instances have no security group naming a port,
    # no target group, only an Elastic IP: nothing tells its kind.
    seed(env.url)
    rc, err, doc = discover(tmp_path, capsys=capsys)
    assert rc == 0
    assert "frp: probe kind undecided" in err
    text = (tmp_path / "discovered.yaml").read_text()
    frp = text.split("\n  frp:\n", 1)[1].split("\n  nat:\n", 1)[0]
    assert "# TODO: probe kind undecided" in frp
    assert "probe:  # TODO: kind not decided" in frp
    # The others are decided; the NAT pair is a plain service.
    assert doc["services"]["nat"]["probe"] == {"kind": "icmp"}
    assert doc["services"]["signaling"]["probe"]["kind"] == "socketio"


def test_region_and_endpoint_from_a_config(
    env: MotoServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topo = seed(env.url, region="eu-west-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_REGION", REGION)  # the config's region wins
    cfg = tmp_path / "old.yaml"
    cfg.write_text(
        f"aws: {{region: eu-west-1, endpoint_url: '{env.url}'}}\n"
        "services: {x: {probe: {kind: tcp, port: 1}}}\n"
    )
    rc, err, doc = discover(tmp_path, "--config", str(cfg), capsys=capsys)
    assert rc == 0, err
    assert doc["aws"]["region"] == "eu-west-1"
    assert (
        doc["services"]["coturn"]["backup"]["instance_id"] == (topo.instances["coturn"]["backup"])
    )
    # An existing output is not overwritten without --force.
    rc, err, _ = discover(tmp_path, "--config", str(cfg), capsys=capsys)
    assert rc == 2 and "give --force" in err


# --------------------------------------------------------------------------- the pure builder


def _inst(iid: str, service: str | None, role: str | None, **kw: Any) -> Instance:
    base: dict[str, Any] = {
        "name": None,
        "az": "ap-southeast-2a",
        "state": "running",
        "private_ip": f"10.0.0.{int(iid[-1], 16) + 1}",
        "public_ip": None,
        "source_dest_check": True,
    }
    base.update(kw)
    return Instance(iid, service, role, **base)


def _tg(name: str, port: int, *iids: str) -> TargetGroup:
    arn = f"arn:aws:elasticloadbalancing:{REGION}:123456789012:targetgroup/{name}/0123abcd"
    return TargetGroup(arn, name, port, "HTTP", tuple((i, port) for i in iids))


def test_conflicting_ports_are_undecided_and_a_tag_decides() -> None:
    a, b = _inst("i-0000000a", "web", "primary"), _inst("i-0000000b", "web", "backup")
    facts = Facts(
        "P",
        REGION,
        instances=(a, b),
        target_groups=(_tg("w1", 3000, a.instance_id), _tg("w2", 8080, a.instance_id)),
    )
    d = decide(facts)
    assert d.services[0].probe.kind == "tcp" and not d.services[0].probe.decided
    assert any("socketio, thingsboard" in n.text for n in d.notes)
    assert "TODO: kind not decided" in render(d, "x")

    tagged = Facts(
        "P",
        REGION,
        instances=(_inst("i-0000000a", "web", "primary", probe_tag="socketio"), b),
        target_groups=facts.target_groups,
    )
    d = decide(tagged)
    assert d.services[0].probe.kind == "socketio" and d.services[0].probe.decided


def test_security_group_ports_and_wide_ranges() -> None:
    a = _inst("i-0000000a", "tb", "primary", security_groups=("sg-1",))
    b = _inst("i-0000000b", "tb", "backup", security_groups=("sg-1",))
    groups = {
        "sg-1": (
            PortRange("tcp", 22, 22),
            PortRange("tcp", 8080, 8080),
            PortRange("-1", 0, 65535),
            PortRange("tcp", 0, 65535),
        )
    }
    d = decide(Facts("P", REGION, instances=(a, b), security_groups=groups))
    assert (d.services[0].probe.kind, d.services[0].probe.port) == ("thingsboard", 8080)


def test_layouts_that_cannot_be_served_are_left_out_and_said() -> None:
    insts = (
        _inst("i-0000000a", "solo", "primary"),
        _inst("i-0000000b", "twins", "primary"),
        _inst("i-0000000c", "twins", "primary"),
        _inst("i-0000000d", None, "primary"),
        _inst("i-0000000e", "odd", "canary"),
    )
    d = decide(Facts("P", REGION, instances=insts))
    assert not d.usable
    said = " | ".join(f"{n.where}: {n.text}" for n in d.notes)
    assert "solo: 1 primary and 0 backup" in said
    assert "twins: 2 primary and 0 backup" in said
    assert "i-0000000d: tagged Project=P but has no Service tag" in said
    assert "odd: i-0000000e has Role=canary" in said


def test_a_shared_record_is_not_moved() -> None:
    a, b = _inst("i-0000000a", "web", "primary"), _inst("i-0000000b", "web", "backup")
    records = (
        Record("Z1", "both.example.com.", "A", (a.private_ip or "", "10.9.9.9")),
        Record("Z1", "mine.example.com.", "A", (a.private_ip or "",)),
        Record("Z1", "weighted.example.com.", "A", (a.private_ip or "",), "w1"),
    )
    d = decide(Facts("P", REGION, instances=(a, b), records=records))
    assert d.services[0].attachments.route53 == (("Z1", "mine.example.com", "A", "private"),)
    assert sum("left out, only a single-value" in n.text for n in d.notes) == 2


def test_several_topics_are_not_chosen() -> None:
    a, b = _inst("i-0000000a", "web", "primary"), _inst("i-0000000b", "web", "backup")
    arn = f"arn:aws:sns:{REGION}:123456789012:"
    d = decide(
        Facts(
            "Jupiter",
            REGION,
            instances=(a, b),
            topics=(arn + "jupiter-a", arn + "jupiter-b", arn + "other"),
        )
    )
    assert d.topic is None
    assert any(n.where == "sns_topic_arn" and "choose one" in n.text for n in d.notes)
    assert "sns_topic_arn: null" in render(d, "x")
