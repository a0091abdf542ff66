"""The Jupiter stack for executor tests: moto seeded with the topology, and
a TCP listener per service instance on loopback standing in for the
service process (the configuration maps each EC2 instance to its listener's
address, the way the sandbox maps instances to loopback addresses).

- ``Listeners``: one TCP listener per (service, role) on 127.0.0.2 (primary)
  and 127.0.0.3 (backup), one free port per service; ``stop()``/``start()``
  make an instance's service go away or come back.
- ``FAST``: thresholds that keep the tests short.
- ``Stack``: a seeded topology, its listeners and a parsed config.
- ``edge_service``: one more service, ``edge``, on the NAT pair, with one
  attachment of every kind (target group, Elastic IP, Route 53 record, the
  private route tables): the plan with every step kind, for the crash tests
  and the benchmark.

Listeners accept and close in a thread, so a CLI subprocess under test can
probe them while the test itself blocks.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from jupiterd.config import Config, parse_config
from jupiterd.sandbox.seed import SERVICES, Topology, moto_client, seed

HOSTS = {"primary": "127.0.0.2", "backup": "127.0.0.3"}

FAST: dict[str, Any] = {
    "interval": 0.2,
    "fast_interval": 0.05,
    "timeout": 0.2,
    "rise": 2,
    "healthy_timeout": 1.0,
    "start_timeout": 5,
    "drain_timeout": 0.5,  # also bounds the DNS drain before stopping a still-serving instance
    "target_healthy_timeout": 5,
}


class _Listener:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._sock is not None:
            return
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.port))
        s.listen(64)
        s.settimeout(0.1)
        self._sock = s
        self._thread = threading.Thread(target=self._serve, args=(s,), daemon=True)
        self._thread.start()

    def _serve(self, s: socket.socket) -> None:
        while self._sock is s:
            try:
                conn, _ = s.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.close()

    def stop(self) -> None:
        s, self._sock = self._sock, None
        if s is not None:
            # Wakes the accept() at once (Linux), not at its next timeout:
            # ten listeners stopped in turn cost most of a second otherwise.
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        if self._thread is not None:
            self._thread.join(1)
            self._thread = None


def _port_free_on_both() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind((HOSTS["primary"], 0))
            port = int(a.getsockname()[1])
            try:
                with socket.socket() as b:
                    b.bind((HOSTS["backup"], port))
                    return port
            except OSError:
                continue
    raise RuntimeError("no port free on both loopback addresses")


class Listeners:
    def __init__(self, services: Iterable[str]) -> None:
        self._pick(list(services))
        self._started = False

    def _pick(self, services: list[str]) -> None:
        self.ports = {s: _port_free_on_both() for s in services}
        self._l = {
            (s, role): _Listener(host, port)
            for s, port in self.ports.items()
            for role, host in HOSTS.items()
        }

    def start(self, service: str | None = None, role: str | None = None) -> None:
        for attempt in range(5):
            try:
                for (s, r), lis in self._l.items():
                    if (service is None or s == service) and (role is None or r == role):
                        lis.start()
                break
            except OSError as exc:
                # A port found free was taken before the first bind (the
                # other test worker, an ephemeral port): while no one has
                # seen the ports yet, new ones, not a failed test.
                if exc.errno != errno.EADDRINUSE or self._started or attempt == 4:
                    raise
                self.stop()
                self._pick(list(self.ports))
        self._started = True

    def stop(self, service: str | None = None, role: str | None = None) -> None:
        for (s, r), lis in self._l.items():
            if (service is None or s == service) and (role is None or r == role):
                lis.stop()

    def spec(self, **per_service: Any) -> dict[str, dict[str, Any]]:
        """What ``Topology.config_dict`` takes: a tcp probe per service."""
        return {
            s: {
                "probe": {"kind": "tcp", "port": port},
                "primary": HOSTS["primary"],
                "backup": HOSTS["backup"],
                **per_service,
            }
            for s, port in self.ports.items()
        }


@contextlib.contextmanager
def listeners(services: Iterable[str] = SERVICES) -> Iterator[Listeners]:
    ls = Listeners(services)
    ls.start()
    try:
        yield ls
    finally:
        ls.stop()


@dataclass
class Stack:
    topology: Topology
    listeners: Listeners
    config: Config
    config_path: Path


@contextlib.contextmanager
def jupiter_stack(
    endpoint_url: str,
    tmp: Path,
    *,
    services: Iterable[str] = SERVICES,
    client_endpoint: str | None = None,
    defaults: Mapping[str, Any] = FAST,
    **config_kw: Any,
) -> Iterator[Stack]:
    """Seed ``endpoint_url`` (moto, freshly reset by the caller) and start
    the listeners. ``client_endpoint`` is what the configuration points
    jupiterd at (a fault proxy in front of moto, say)."""
    topo = seed(endpoint_url)
    if client_endpoint:
        topo.endpoint_url = client_endpoint
    with listeners(services) as ls:
        doc = topo.config_dict(
            ls.spec(), state_dir=str(tmp / "state"), defaults=dict(defaults), **config_kw
        )
        path = tmp / "jupiterd.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        yield Stack(topo, ls, parse_config(doc), path)


EDGE = "edge"


def edge_service(
    topo: Topology,
    ls: Listeners,
    *,
    state_dir: str,
    client_endpoint: str | None = None,
    defaults: Mapping[str, Any] = FAST,
) -> dict[str, Any]:
    """Give the seeded NAT pair an attachment of every kind and return a
    configuration with the single service ``edge`` on it (``ls`` must have
    listeners for ``edge``)."""
    ec2, elb, r53 = (
        moto_client(topo.endpoint_url, topo.region, n) for n in ("ec2", "elbv2", "route53")
    )
    primary, backup = topo.instances["nat"]["primary"], topo.instances["nat"]["backup"]
    tg = elb.create_target_group(
        Name="edge-tcp", Protocol="TCP", Port=7000, VpcId=topo.vpc_id, TargetType="instance"
    )["TargetGroups"][0]["TargetGroupArn"]
    elb.create_listener(
        LoadBalancerArn=topo.nlb_arn,
        Protocol="TCP",
        Port=7000,
        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}],
    )
    elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": primary, "Port": 7000}])
    eip = ec2.allocate_address(Domain="vpc")["AllocationId"]
    ec2.associate_address(AllocationId=eip, InstanceId=primary)
    r53.change_resource_record_sets(
        HostedZoneId=topo.zone_id,
        ChangeBatch={
            "Changes": [
                {
                    "Action": "UPSERT",
                    "ResourceRecordSet": {
                        "Name": f"edge.{topo.zone_name}",
                        "Type": "A",
                        "TTL": 30,
                        "ResourceRecords": [{"Value": topo.private_ips["nat"]["primary"]}],
                    },
                }
            ]
        },
    )
    return {
        "aws": {"region": topo.region, "endpoint_url": client_endpoint or topo.endpoint_url},
        "state_dir": state_dir,
        "sns_topic_arn": topo.topic_arn,
        "defaults": dict(defaults),
        "services": {
            EDGE: {
                "probe": {"kind": "tcp", "port": ls.ports[EDGE]},
                "primary": {"instance_id": primary, "address": HOSTS["primary"]},
                "backup": {"instance_id": backup, "address": HOSTS["backup"]},
                "attachments": {
                    "target_groups": [tg],
                    "elastic_ip": eip,
                    "route53": [{"zone_id": topo.zone_id, "name": f"edge.{topo.zone_name}"}],
                    "route_tables": list(topo.route_tables),
                },
            }
        },
    }
