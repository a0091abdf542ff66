"""The whole Jupiter stack on one machine, with no AWS account.

- AWS: moto in server mode on loopback, seeded with the Jupiter topology
  (``jupiterd.sandbox.seed``).
- The services, for real, one process per EC2 instance: primaries on
  127.0.0.2, backups on 127.0.0.3, at the production ports where free
  (3000, 3478, 7000, 8080), else those plus 10000. Signaling is a
  python-socketio server, coturn the real ``turnserver`` when installed (a
  small STUN/TURN responder otherwise), frp and ThingsBoard stand-ins
  (``jupiterd.sandbox.peers``). The NAT instances are network namespaces
  answering ping (root only; without it the NAT services are left out):
  two, ``nat-a`` and ``nat-b`` (one per AZ, each the default route of its
  private route table), members of the pool ``nat`` sharing one stopped
  backup.
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
  moto, /status and /metrics on 127.0.0.1:9478 (or a free port). With
  ``replicas``, N jupiterd processes instead (``jupiterd.sandbox.replicas``)
  and no NAT pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from jupiterd.core.types import Role

from . import timed
from .fleet import Fleet
from .layout import (
    AWS_ENV,
    FRONT_HOST,
    HOSTS,
    THRESHOLDS,
    Instance,
    SandboxError,
    free_local_port,
    pick_port,
    probe_spec,
)
from .nat import NETNS_PREFIX, NatNamespaces, process_start, remove_stale_namespaces
from .replicas import ReplicaSet

__all__ = [
    "NETNS_PREFIX",
    "SandboxError",
    "Stack",
    "free_local_port",
    "process_start",
    "remove_stale_namespaces",
]


class Stack(Fleet):
    """Starts, follows and stops everything; ``stop()`` is safe to call twice."""

    def __init__(
        self,
        *,
        workdir: Path | None = None,
        http_port: int = 9478,
        log: Callable[[str], None] = print,
        with_nat: bool | None = None,
        replicas: int = 0,
        replica_ha: bool = True,
    ) -> None:
        super().__init__(log)
        self.replicas: Any = ReplicaSet(self, replicas, with_ha=replica_ha) if replicas else None
        if replicas:
            with_nat = False  # ICMP: no per-replica relay carries it
        self.own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="jupiterd-sandbox-"))
        self.http_port = http_port
        self.with_nat = NatNamespaces.available() if with_nat is None else with_nat
        self.moto: Any = None  # a peers.moto_server.MotoServer
        self.topology: Any = None
        self.ports: dict[str, int] = {}
        self.doors: list[Any] = []
        self.nat_services: list[str] = []  # the NAT pool's members
        self.nat_via: dict[str, str] = {}  # NAT member -> the address its routes go through
        self.config_path = self.workdir / "jupiterd.yaml"
        # Keys set on every service of the generated config (e.g. prewarm).
        self.service_options: dict[str, Any] = {}
        self.config: Any = None
        self.runner: Any = None
        self.executor: Any = None
        self.inventory: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._saved_env: dict[str, str | None] = {}  # what start() changed
        # Told of every plan step as it finishes (the drill's timeline).
        self.step_listeners: list[Callable[[str, Any], None]] = []
        self.started_in = 0.0
        self._stopped = False

    # ------------------------------------------------------------------ start

    async def start(self) -> None:
        t0 = time.monotonic()
        self._saved_env = _set_env()
        from jupiterd.telemetry import logs

        self.log_path = self.workdir / "jupiterd.log"
        self._log_file = self.log_path.open("a", buffering=1)
        logs.configure("info", "json", stream=self._log_file)
        await self._start_moto()
        self.say(f"  AWS endpoint (moto) at {self.endpoint}")
        from jupiterd.sandbox.seed import seed

        self.topology = await asyncio.to_thread(
            partial(seed, nat_pool=self.with_nat), self.endpoint
        )
        await timed.after_seed(self)  # --aws-timing: from now on, AWS's delays
        self.say(
            f"  seeded the Jupiter topology: VPC {self.topology.vpc_id}, "
            f"{sum(len(v) for v in self.topology.instances.values())} instances"
        )
        services = [s for s in ("signaling", "coturn", "frp", "thingsboard")]
        hosts = [*HOSTS.values(), FRONT_HOST, *(self.replicas.hosts() if self.replicas else [])]
        for name in services:
            self.ports[name] = pick_port(name, hosts)
        if self.with_nat:
            for name in await asyncio.to_thread(remove_stale_namespaces):
                self.say(f"  removed {name}, left by a sandbox that is no longer running")
            self.nat = NatNamespaces()
            await asyncio.to_thread(self.nat.create)
            self._nat_instances(self.nat)
        for name in services:
            for role in Role:
                self.instances[(name, role)] = Instance(
                    name,
                    role,
                    self.topology.instances[name][role.value],
                    HOSTS[role],
                    self.ports.get(name),
                )
        self._write_config(services)
        from jupiterd.config import load_config

        self.config = load_config(str(self.config_path))
        await self.follow_once()
        self._tasks.append(asyncio.create_task(self._follow(), name="sandbox-follow"))
        await self._start_front_doors(services)
        if self.replicas is not None:
            await self.replicas.start()
        else:
            await self._start_daemon()
        self.started_in = time.monotonic() - t0

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
        self.endpoint = timed.endpoint(self)  # moto's, or the timing proxy's in front of it

    def _nat_instances(self, nat: NatNamespaces) -> None:
        """The pool's members, each a namespace; the standby is one Instance
        under both members' keys."""
        pool = self.topology.extra["nat_pool"]
        standby = Instance(
            "nat", Role.BACKUP, pool["standby"], nat.addresses["backup"], None, slot="backup"
        )
        for member, slot in (("nat-a", "primary"), ("nat-b", "secondary")):
            self.instances[(member, Role.PRIMARY)] = Instance(
                member,
                Role.PRIMARY,
                pool[member]["instance_id"],
                nat.addresses[slot],
                None,
                slot=slot,
            )
            self.instances[(member, Role.BACKUP)] = standby
            self.nat_services.append(member)

    def _nat_pool(self) -> dict[str, Any]:
        pool = self.topology.extra["nat_pool"]
        members = {
            m: {
                "instance_id": pool[m]["instance_id"],
                "address": self.instances[(m, Role.PRIMARY)].address,
                "attachments": {"route_tables": pool[m]["route_tables"]},
            }
            for m in self.nat_services
        }
        standby = self.instances[(self.nat_services[0], Role.BACKUP)]
        return {
            "nat": {
                "probe": probe_spec("nat", None, False),
                # The drill nat-both fails nat-a over again soon after the
                # drill of nat-a: a cooldown of 1 minute would hold it.
                "thresholds": {"cooldown": "5s"},
                "members": members,
                "standby": {"instance_id": standby.instance_id, "address": standby.address},
            }
        }

    def _write_config(self, services: list[str]) -> None:
        listen = {
            n: {
                "probe": probe_spec(n, self.ports.get(n), self.coturn),
                "primary": self.instances[(n, Role.PRIMARY)].address,
                "backup": self.instances[(n, Role.BACKUP)].address,
            }
            for n in services
        }
        self.http_port = free_local_port(self.http_port)
        doc = self.topology.config_dict(
            listen,
            state_dir=str(self.workdir / "state"),
            defaults=timed.thresholds(self, THRESHOLDS),
            extra={
                "http": {"listen": f"{FRONT_HOST}:{self.http_port}"},
                "log": {"format": "json", "level": "info"},
                **({"pools": self._nat_pool()} if self.nat_services else {}),
            },
        )
        for section in doc["services"].values():
            section.update(self.service_options)
        self.config_path.write_text(
            "# Generated by `jupiterd sandbox`: the topology in moto, services on loopback.\n"
            + yaml.safe_dump(doc, sort_keys=False)
        )

    # ------------------------------------------------------------------ front doors

    async def refresh_routes(self) -> None:
        from jupiterd.core.plan import attachment_states

        facts = await self.inventory.facts()
        via = {
            f.instance(role).eni_id: self.instances[(name, role)].address
            for name, f in facts.items()
            if name in self.nat_services
            for role in Role
        }
        for name in self.nat_services:
            tables = facts[name].route_tables if name in facts else ()
            self.nat_via[name] = via.get(tables[0].eni_id, "") if tables else ""
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
        """Where a client reaches the service: its front door, or for a NAT
        instance the one its private route tables send traffic through
        (during a NAT plan, first the other member's)."""
        if service in self.nat_services:
            return self.nat_via.get(service) or self.instances[(service, Role.PRIMARY)].address
        return f"{FRONT_HOST}:{self.ports[service]}"

    async def _start_front_doors(self, services: list[str]) -> None:
        from jupiterd.aws.inventory import AwsInventory

        from .frontdoor import TcpFrontDoor, UdpFrontDoor

        self.inventory = AwsInventory(self.config)
        await self.refresh_routes()
        for name in services:
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
        if self.replicas is not None:
            await step("the replicas", self.replicas.stop)
        if self.runner is not None:
            await step("the API", self.runner.cleanup)
        for door in self.doors:
            await step("a front door", door.stop)
        if self.executor is not None:
            await step("the executor", self.executor.close)
        for inst in self.instances.values():
            if inst.slot is None:
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
        await step("the timing proxy", partial(asyncio.to_thread, timed.stop, self))
        if self.moto is not None:
            await step("moto", partial(asyncio.to_thread, self.moto.stop))
        if getattr(self, "_log_file", None) is not None:
            self._log_file.close()
        _restore_env(self._saved_env)
        if self.own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _set_env() -> dict[str, str | None]:
    """The sandbox's AWS settings in this process's environment; returns
    what they replaced."""
    saved: dict[str, str | None] = {}
    for k, v in AWS_ENV.items():
        saved[k] = os.environ.get(k)
        os.environ[k] = v
    for k in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        saved[k] = os.environ.pop(k, None)
    return saved


def _restore_env(saved: dict[str, str | None]) -> None:
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
