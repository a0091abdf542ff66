"""The whole Jupiter stack on one machine, with no AWS account.

- AWS: moto in server mode on loopback, seeded with the Jupiter topology
  (``jupiterd.sandbox.seed``).
- The services, for real, one process per EC2 instance: primaries on
  127.0.0.2, backups on 127.0.0.3, at the production ports where free
  (3000, 3478, 7000, 8080), else those plus 10000. Signaling is a
  python-socketio server, coturn the real ``turnserver`` when installed (a
  small STUN/TURN responder otherwise), frp and ThingsBoard stand-ins
  (``jupiterd.sandbox.peers``). The NAT instances are network namespaces answering ping
  (root only; without it the NAT service is left out).
- Each service follows its instance in moto: starting the instance starts
  the process, stopping it stops the process. A process killed by a drill
  stays dead until its instance is stopped (an instance restart heals it).
- Nothing outlives the sandbox: every process it starts (moto, the
  services, and coturn's ``turnserver`` under its script) gets SIGKILL from
  the kernel when its parent dies, however it dies (PR_SET_PDEATHSIG; they
  are started from the event loop's thread, which lives as long as the
  sandbox). Its namespaces are named ``jupiterd-sandbox-<pid>-<start>-<role>``
  after the sandbox process (pid and start time); a start removes those of
  sandboxes no longer running, with any process inside.
- Front doors on 127.0.0.1 at the service ports stand in for the load
  balancers and the Elastic IP: they forward to whichever instance the AWS
  attachments point at.
- jupiterd itself, in this process: real probes, the real executor against
  moto, /status and /metrics on 127.0.0.1:9478 (or a free port).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from jupiterd.core.types import Role

from .peers.process import PEERS, Peer

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

    @property
    def label(self) -> str:
        return f"{self.service} {self.role}"


NETNS_PREFIX = "jupiterd-sandbox-"
_NETNS = re.compile(rf"^{NETNS_PREFIX}(\d+)-(\d+)-(?:primary|backup)$")
_VETH = re.compile(r"^jsbx(\d+)[pb]$")  # host side; interface names are 15 bytes at most


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), or None if no
    process of that pid runs (a zombie has stopped running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # fields 3.. (the name may hold spaces)
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _ip_out(*args: str) -> str:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    return r.stdout if r.returncode == 0 else ""


def remove_stale_namespaces() -> list[str]:
    """Remove the namespaces (killing any process inside) and host-side veths
    that sandboxes no longer running left behind: a SIGKILLed sandbox cannot
    remove them itself. Only names of the sandbox's own pattern are touched,
    and only those whose owner (pid and start time) is gone. Returns the
    names removed."""
    removed = []
    for line in _ip_out("netns", "list").splitlines():
        name = line.split()[0] if line.split() else ""
        m = _NETNS.match(name)
        if m is None or process_start(int(m.group(1))) == int(m.group(2)):
            continue
        for pid in _ip_out("netns", "pids", name).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        r = subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
        if r.returncode == 0:
            removed.append(name)
    for line in _ip_out("-o", "link", "show").splitlines():
        # "7: jsbx123p@if6: <BROADCAST,...": a veth whose namespace end was never moved
        parts = line.split(":")
        link = parts[1].strip().split("@")[0] if len(parts) > 2 else ""
        m = _VETH.match(link)
        if m is None:
            continue
        owner = int(m.group(1))
        if owner == os.getpid() or process_start(owner) is None:  # ours: not created yet
            r = subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=10)
            if r.returncode == 0:
                removed.append(link)
    return removed


class NatNamespaces:
    """NAT instances as network namespaces behind veth pairs: an instance
    that runs answers ping; a stopped (or broken) one does not. The names
    carry this process's pid and start time (see remove_stale_namespaces)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.start = process_start(self.pid)
        self.created: list[tuple[str, str]] = []  # (netns, host-side veth)
        octet = os.getpid() % 250
        self.addresses = {Role.PRIMARY: f"198.19.{octet}.2", Role.BACKUP: f"198.19.{octet}.6"}
        self._nets = {Role.PRIMARY: (f"198.19.{octet}.1", 0), Role.BACKUP: (f"198.19.{octet}.5", 4)}

    @staticmethod
    def available() -> bool:
        if os.geteuid() != 0 or shutil.which("ip") is None:
            return False
        r = subprocess.run(["ip", "netns", "list"], capture_output=True, timeout=10)
        return r.returncode == 0

    def _ns(self, role: Role) -> str:
        return f"{NETNS_PREFIX}{self.pid}-{self.start}-{role.value}"

    def _ip(self, *args: str) -> None:
        r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
        if r.returncode != 0:
            raise SandboxError(f"ip {' '.join(args)}: {r.stderr.strip()}")

    def create(self) -> None:
        for role in Role:
            ns, host_if, ns_if = self._ns(role), f"jsbx{self.pid}{role.value[0]}", "eth0"
            self._ip("netns", "add", ns)
            self.created.append((ns, host_if))
            self._ip("link", "add", host_if, "type", "veth", "peer", "name", f"{host_if}n")
            self._ip("link", "set", f"{host_if}n", "netns", ns)
            self._ip("-n", ns, "link", "set", f"{host_if}n", "name", ns_if)
            gw, _ = self._nets[role]
            self._ip("addr", "add", f"{gw}/30", "dev", host_if)
            self._ip("link", "set", host_if, "up")
            self._ip("-n", ns, "addr", "add", f"{self.addresses[role]}/30", "dev", ns_if)
            self._ip("-n", ns, "link", "set", "lo", "up")
            self.set_running(role, False)

    def set_running(self, role: Role, up: bool) -> None:
        self._ip("-n", self._ns(role), "link", "set", "eth0", "up" if up else "down")

    def destroy(self) -> None:
        for ns, host_if in reversed(self.created):
            subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=10)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        self.created.clear()


class Stack:
    """Starts, follows and stops everything; ``stop()`` is safe to call twice."""

    def __init__(
        self,
        *,
        workdir: Path | None = None,
        http_port: int = 9478,
        log: Callable[[str], None] = print,
        with_nat: bool | None = None,
    ) -> None:
        self.own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="jupiterd-sandbox-"))
        self.http_port = http_port
        self.say = log
        self.with_nat = NatNamespaces.available() if with_nat is None else with_nat
        self.coturn = shutil.which("turnserver") is not None
        self.moto: Any = None  # a peers.moto_server.MotoServer
        self._children: list[Any] = []  # every service process started (Peer)
        self.endpoint = ""
        self.topology: Any = None
        self.instances: dict[tuple[str, Role], Instance] = {}
        self.ports: dict[str, int] = {}
        self.nat: NatNamespaces | None = None
        self.doors: list[Any] = []
        self.routes: dict[str, Role | None] = {}
        self.config_path = self.workdir / "jupiterd.yaml"
        self.config: Any = None
        self.supervisor: Any = None
        self.runner: Any = None
        self.executor: Any = None
        self.inventory: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._saved_env: dict[str, str | None] = {}
        # Told of every plan step as it finishes (the drill's timeline).
        self.step_listeners: list[Callable[[str, Any], None]] = []
        self.started_in = 0.0
        self._stopped = False

    # ------------------------------------------------------------------ start

    async def start(self) -> None:
        t0 = time.monotonic()
        self._set_env()
        from jupiterd.telemetry import logs

        self.log_path = self.workdir / "jupiterd.log"
        self._log_file = self.log_path.open("a", buffering=1)
        logs.configure("info", "json", stream=self._log_file)
        await self._start_moto()
        self.say(f"  AWS endpoint (moto) at {self.endpoint}")
        from jupiterd.sandbox.seed import seed

        self.topology = await asyncio.to_thread(seed, self.endpoint)
        self.say(
            f"  seeded the Jupiter topology: VPC {self.topology.vpc_id}, "
            f"{sum(len(v) for v in self.topology.instances.values())} instances"
        )
        services = [s for s in ("signaling", "coturn", "frp", "thingsboard")]
        for name in services:
            self.ports[name] = pick_port(name, [*HOSTS.values(), FRONT_HOST])
        if self.with_nat:
            for name in await asyncio.to_thread(remove_stale_namespaces):
                self.say(f"  removed {name}, left by a sandbox that is no longer running")
            self.nat = NatNamespaces()
            await asyncio.to_thread(self.nat.create)
            services.append("nat")
        for name in services:
            for role in Role:
                address = self.nat.addresses[role] if name == "nat" and self.nat else HOSTS[role]
                self.instances[(name, role)] = Instance(
                    name,
                    role,
                    self.topology.instances[name][role.value],
                    address,
                    self.ports.get(name),
                )
        self._write_config(services)
        from jupiterd.config import load_config

        self.config = load_config(str(self.config_path))
        await self.follow_once()
        self._tasks.append(asyncio.create_task(self._follow(), name="sandbox-follow"))
        await self._start_front_doors(services)
        await self._start_daemon()
        self.started_in = time.monotonic() - t0

    def _set_env(self) -> None:
        for k, v in AWS_ENV.items():
            self._saved_env[k] = os.environ.get(k)
            os.environ[k] = v
        for k in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
            self._saved_env[k] = os.environ.pop(k, None)

    def _restore_env(self) -> None:
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    async def _start_moto(self) -> None:
        from .peers.moto_server import start_moto

        # Started on this thread, waited for on another (see _spawn).
        self.moto = start_moto(FRONT_HOST, parent_death_signal=signal.SIGKILL)
        try:
            await asyncio.to_thread(self.moto.wait_ready)
        except RuntimeError as exc:
            raise SandboxError(
                f"{exc}: is moto[server] installed? pip install 'jupiterd[sandbox]'"
            ) from exc
        self.endpoint = self.moto.url

    def _probe_spec(self, name: str) -> dict[str, Any]:
        port = self.ports.get(name)
        if name == "signaling":
            return {"kind": "socketio", "port": port}
        if name == "coturn":
            opts = {"secret": TURN_SECRET} if self.coturn else {}
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

    def _write_config(self, services: list[str]) -> None:
        listen = {
            n: {
                "probe": self._probe_spec(n),
                "primary": self.instances[(n, Role.PRIMARY)].address,
                "backup": self.instances[(n, Role.BACKUP)].address,
            }
            for n in services
        }
        self.http_port = free_local_port(self.http_port)
        doc = self.topology.config_dict(
            listen,
            state_dir=str(self.workdir / "state"),
            defaults=THRESHOLDS,
            extra={
                "http": {"listen": f"{FRONT_HOST}:{self.http_port}"},
                "log": {"format": "json", "level": "info"},
            },
        )
        self.config_path.write_text(
            "# Generated by `jupiterd sandbox`: the topology in moto, services on loopback.\n"
            + yaml.safe_dump(doc, sort_keys=False)
        )

    # ------------------------------------------------------------------ instances follow moto

    def _command(self, inst: Instance) -> list[str]:
        py = [sys.executable]
        host, port = inst.address, str(inst.port)
        if inst.service == "signaling":
            return [*py, str(PEERS / "signaling_server.py"), "--host", host, "--port", port]
        if inst.service == "coturn":
            if self.coturn:
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

    async def _spawn(self, cmd: list[str]) -> Any:
        """Start a service process and wait until it is ready. The fork is
        done on this thread, the event loop's, which lives as long as the
        sandbox: the kernel sends the child its parent-death signal when the
        forking *thread* ends, so a pool thread could kill it early. The
        process is known to stop() from the fork on, even if this is
        cancelled while it waits."""
        self._children = [c for c in self._children if c.alive]
        peer = Peer(cmd, wait=False, parent_death_signal=signal.SIGKILL)
        self._children.append(peer)
        await asyncio.to_thread(peer.wait_ready)
        return peer

    def _describe(self) -> dict[str, str]:
        from jupiterd.sandbox.seed import _client

        ec2 = _client(self.endpoint, "ap-southeast-2", "ec2")
        ids = [i.instance_id for i in self.instances.values()]
        resp = ec2.describe_instances(InstanceIds=ids)
        return {
            i["InstanceId"]: i["State"]["Name"]
            for r in resp["Reservations"]
            for i in r["Instances"]
        }

    async def follow_once(self) -> None:
        states = await asyncio.to_thread(self._describe)
        for inst in self.instances.values():
            inst.state = states.get(inst.instance_id, "unknown")
            running = inst.state in ("running", "pending")
            if not running:
                inst.broken = False  # a stop heals: the next start boots a fresh service
            if inst.service == "nat":
                assert self.nat is not None
                want = running and not inst.broken
                if want != bool(inst.process):
                    await asyncio.to_thread(self.nat.set_running, inst.role, want)
                    inst.process = want or None
                continue
            alive = inst.process is not None and inst.process.alive
            if running and not inst.broken and not alive:
                self.say(
                    f"  {inst.label} instance is running: starting its service on "
                    f"{inst.address}:{inst.port}"
                )
                inst.process = await self._spawn(self._command(inst))
            elif not running and inst.process is not None:
                self.say(f"  {inst.label} instance is {inst.state}: stopping its service")
                await asyncio.to_thread(inst.process.stop)
                inst.process = None

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(0.3)
            try:
                await self.follow_once()
            except Exception as exc:  # keep following; say why once in a while
                self.say(f"  (could not follow moto: {exc})")
                await asyncio.sleep(2)

    def break_service(self, service: str) -> str:
        inst = self.instances.get((service, self.active_role(service)))
        if inst is None:
            raise SandboxError(f"no service named {service}")
        inst.broken = True
        if inst.service == "nat":
            assert self.nat is not None
            self.nat.set_running(inst.role, False)
            inst.process = None
            return f"{inst.label}: the namespace stopped answering ping"
        if inst.process is not None:
            inst.process.crash()
            inst.process = None
        return f"{inst.label}: service process killed (SIGKILL); the instance stays running"

    def heal_service(self, service: str) -> str:
        healed = []
        for role in Role:
            inst = self.instances.get((service, role))
            if inst is not None and inst.broken:
                inst.broken = False
                healed.append(inst.label)
        return ("healed " + ", ".join(healed)) if healed else f"{service}: nothing was broken"

    def active_role(self, service: str) -> Role:
        if self.supervisor is not None and service in self.supervisor.state.services:
            return self.supervisor.state.services[service].active  # type: ignore[no-any-return]
        return Role.PRIMARY

    # ------------------------------------------------------------------ front doors

    async def refresh_routes(self) -> None:
        from jupiterd.core.plan import attachment_states

        facts = await self.inventory.facts()
        for name, f in facts.items():
            states = attachment_states(self.config, name, f)
            serving = [s for s in states if s.healthy and s.points_to]
            roles = {r for s in serving for r in s.points_to}
            if len(roles) == 1:
                self.routes[name] = next(iter(roles))
            elif roles:
                self.routes[name] = Role.PRIMARY if Role.PRIMARY in roles else Role.BACKUP
            else:
                self.routes[name] = None

    def route(self, service: str) -> tuple[str, int] | None:
        role = self.routes.get(service)
        if role is None:
            return None
        inst = self.instances[(service, role)]
        return (inst.address, inst.port or 0)

    def public_target(self, service: str) -> str:
        """Where a client reaches the service: its front door, or for NAT the
        instance the private route tables send traffic through."""
        if service == "nat":
            role = self.routes.get("nat") or Role.PRIMARY
            return self.instances[("nat", role)].address
        return f"{FRONT_HOST}:{self.ports[service]}"

    async def _start_front_doors(self, services: list[str]) -> None:
        from jupiterd.aws.inventory import AwsInventory

        from .frontdoor import TcpFrontDoor, UdpFrontDoor

        self.inventory = AwsInventory(self.config)
        await self.refresh_routes()
        for name in services:
            if name == "nat":
                continue
            port = self.ports[name]
            route = self._router(name)
            door: Any = TcpFrontDoor(FRONT_HOST, port, route)
            await door.start()
            self.doors.append(door)
            if name == "coturn":
                udp = UdpFrontDoor(FRONT_HOST, port, route)
                await udp.start()
                self.doors.append(udp)
        self._tasks.append(asyncio.create_task(self._routes_loop(), name="sandbox-routes"))

    def _router(self, name: str) -> Callable[[], tuple[str, int] | None]:
        return lambda: self.route(name)

    async def _routes_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            with contextlib.suppress(Exception):
                await self.refresh_routes()

    # ------------------------------------------------------------------ jupiterd

    async def _start_daemon(self) -> None:
        from jupiterd.aws.executor import AwsExecutor
        from jupiterd.runtime.api import start_server
        from jupiterd.runtime.supervisor import Supervisor
        from jupiterd.telemetry.metrics import Metrics

        metrics = Metrics()
        self.executor = AwsExecutor(
            self.config,
            metrics=metrics,
            poll_interval=0.2,
            progress_interval=5.0,
            on_step=self._on_step,
        )
        await self.executor.resume_pending()
        self.supervisor = Supervisor(
            self.config,
            executor=self.executor,
            inventory=self.inventory,
            metrics=metrics,
            config_path=str(self.config_path),
            refresh_seconds=2.0,
            tick_seconds=0.5,
        )
        self.runner = await start_server(self.supervisor, self.config.http.listen)
        await self.supervisor.start()

    async def _on_step(self, service: str, report: Any) -> None:
        for listener in self.step_listeners:
            listener(service, report)

    # ------------------------------------------------------------------ stop

    async def stop(self) -> None:
        """Stop everything, each part even if an earlier one failed."""
        if self._stopped:
            return
        self._stopped = True

        async def step(what: str, run: Callable[[], Awaitable[Any] | None]) -> None:
            try:
                result = run()
                if result is not None:
                    await result
            except Exception as exc:
                self.say(f"  (stopping {what} failed: {exc!r})")

        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.supervisor is not None:
            await step("jupiterd", lambda: self.supervisor.stop(grace=2))
        if self.runner is not None:
            await step("the API", self.runner.cleanup)
        for door in self.doors:
            await step("a front door", door.stop)
        if self.executor is not None:
            await step("the executor", self.executor.close)
        for inst in self.instances.values():
            if inst.service != "nat":
                inst.process = None
        # Every process ever started, including one whose start was cancelled.
        await asyncio.gather(
            *(
                step(Path(child.cmd[1]).name, partial(asyncio.to_thread, child.stop))
                for child in self._children
            )
        )
        if self.nat is not None:
            await step("the NAT namespaces", partial(asyncio.to_thread, self.nat.destroy))
        if self.moto is not None:
            await step("moto", partial(asyncio.to_thread, self.moto.stop))
        if getattr(self, "_log_file", None) is not None:
            self._log_file.close()
        self._restore_env()
        if self.own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
