"""Where the sandbox puts things: the services' hosts and ports, the
shared secrets, the fast thresholds, the instance records, and each
service's probe and command line."""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass
from typing import Any

from jupiterd.core.types import Role

from .peers.process import PEERS

SERVICE_PORTS = {"signaling": 3000, "coturn": 3478, "frp": 7000, "thingsboard": 8080}
PORT_OFFSET = 10000
HOSTS = {Role.PRIMARY: "127.0.0.2", Role.BACKUP: "127.0.0.3"}
FRONT_HOST = "127.0.0.1"
TURN_SECRET = "sandbox-turn-secret"
FRP_TOKEN = "sandbox-frp-token"
TB_USER, TB_PASSWORD = "probe@jupiter.example.com", "sandbox-password"

# Fast enough for a drill in seconds, with the production logic unchanged.
THRESHOLDS: dict[str, Any] = {
    "interval": "1s",
    "fast_interval": "250ms",
    "timeout": "800ms",
    "fall": 3,
    "rise": 2,
    "cooldown": "1m",
    "max_failovers_per_hour": 10,
    "start_timeout": "30s",
    "healthy_timeout": "30s",
    "drain_timeout": "3s",  # also bounds the DNS drain of a still-serving old instance
    "target_healthy_timeout": "30s",
}
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "ap-southeast-2",
    "AWS_EC2_METADATA_DISABLED": "true",
}


class SandboxError(Exception):
    """A sandbox that cannot start: the message says what to do."""


def _free(host: str, port: int, kind: int = socket.SOCK_STREAM) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def pick_port(service: str, hosts: list[str]) -> int:
    """The production port if free on every address (TCP, and UDP for
    coturn), else the documented offset, else any free port."""
    kinds = [socket.SOCK_STREAM] + ([socket.SOCK_DGRAM] if service == "coturn" else [])
    base = SERVICE_PORTS[service]
    for port in (base, base + PORT_OFFSET, base + 2 * PORT_OFFSET):
        if all(_free(h, port, k) for h in hosts for k in kinds):
            return port
    for _ in range(100):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = int(s.getsockname()[1])
        if all(_free(h, port, k) for h in hosts for k in kinds):
            return port
    raise SandboxError(f"no port free for {service} on {', '.join(hosts)}")


def free_local_port(preferred: int) -> int:
    if _free(FRONT_HOST, preferred):
        return preferred
    with socket.socket() as s:
        s.bind((FRONT_HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Instance:
    service: str
    role: Role
    instance_id: str
    address: str
    port: int | None
    process: Any = None  # a Peer while running
    broken: bool = False  # killed on purpose: stays down until the instance stops
    state: str = "unknown"
    slot: str | None = None  # a NAT instance: its network namespace (nat.SLOTS)

    @property
    def label(self) -> str:
        return f"{self.service} {self.role}"


def probe_spec(name: str, port: int | None, coturn: bool) -> dict[str, Any]:
    """The probe of service ``name`` in the generated config; ``coturn``:
    the real turnserver runs (it wants the shared secret)."""
    if name == "signaling":
        return {"kind": "socketio", "port": port}
    if name == "coturn":
        opts = {"secret": TURN_SECRET} if coturn else {}
        return {"kind": "turn", "port": port, "options": opts}
    if name == "frp":
        return {"kind": "frp", "port": port, "options": {"token": FRP_TOKEN}}
    if name == "thingsboard":
        return {
            "kind": "thingsboard",
            "port": port,
            "options": {"username": TB_USER, "password": TB_PASSWORD},
        }
    return {"kind": "icmp"}


def service_command(inst: Instance, coturn: bool) -> list[str]:
    """The command line of ``inst``'s service (a peer script)."""
    py = [sys.executable]
    host, port = inst.address, str(inst.port)
    if inst.service == "signaling":
        return [*py, str(PEERS / "signaling_server.py"), "--host", host, "--port", port]
    if inst.service == "coturn":
        if coturn:
            return [
                *py,
                str(PEERS / "coturn.py"),
                "--host",
                host,
                "--port",
                port,
                "--secret",
                TURN_SECRET,
            ]
        return [*py, str(PEERS / "stun_standin.py"), "--host", host, "--port", port]
    if inst.service == "frp":
        return [
            *py,
            str(PEERS / "frps_standin.py"),
            "--host",
            host,
            "--port",
            port,
            "--token",
            FRP_TOKEN,
        ]
    return [
        *py,
        str(PEERS / "thingsboard_standin.py"),
        "--host",
        host,
        "--port",
        port,
        "--user",
        TB_USER,
        "--password",
        TB_PASSWORD,
    ]
