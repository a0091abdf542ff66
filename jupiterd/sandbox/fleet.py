"""The instances' services follow their instances in moto: starting an
instance starts its service process, stopping it stops the process; a
service broken by a drill stays down until its instance stops."""

from __future__ import annotations

import asyncio
import shutil
import signal
from collections.abc import Callable
from typing import Any

from jupiterd.core.types import Role

from .layout import Instance, SandboxError, service_command
from .nat import NatNamespaces
from .peers.process import Peer


class Fleet:
    """The instances (``instances``) and their service processes."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.say = log
        self.coturn = shutil.which("turnserver") is not None
        self._children: list[Any] = []  # every service process started (Peer)
        self.endpoint = ""  # moto's
        self.instances: dict[tuple[str, Role], Instance] = {}
        self.nat: NatNamespaces | None = None
        self.supervisor: Any = None  # jupiterd's, once it runs: which role is active
        self.routes: dict[str, Role | None] = {}  # where AWS sends each service's traffic
        # With --aws-timing: whether an instance's service has finished
        # starting (else it is started later), and told when it answers.
        self.app_gate: Callable[[Instance], bool] | None = None
        self.on_app_ready: Callable[[Instance], None] | None = None
        self.timing: Any = None  # a timing.TimingModel, set before start()
        self.timing_proxy: Any = None
        self.extra_plan_seconds = 0.0  # the drill waits this much longer for a plan

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
        from jupiterd.sandbox.seed import moto_client

        ec2 = moto_client(self.endpoint, "ap-southeast-2", "ec2")
        ids = list(dict.fromkeys(i.instance_id for i in self.instances.values()))
        resp = ec2.describe_instances(InstanceIds=ids)
        return {
            i["InstanceId"]: i["State"]["Name"]
            for r in resp["Reservations"]
            for i in r["Instances"]
        }

    async def follow_once(self) -> None:
        states = await asyncio.to_thread(self._describe)
        # A pool's shared standby is one Instance under each member's key.
        for inst in {id(i): i for i in self.instances.values()}.values():
            inst.state = states.get(inst.instance_id, "unknown")
            running = inst.state in ("running", "pending")
            if not running:
                inst.broken = False  # a stop heals: the next start boots a fresh service
            if inst.slot is not None:
                assert self.nat is not None
                want = running and not inst.broken and self._may_start(inst)
                if want != bool(inst.process):
                    await asyncio.to_thread(self.nat.set_running, inst.slot, want)
                    inst.process = want or None
                continue
            alive = inst.process is not None and inst.process.alive
            if running and not inst.broken and not alive and self._may_start(inst):
                self.say(
                    f"  {inst.label} instance is running: starting its service on "
                    f"{inst.address}:{inst.port}"
                )
                inst.process = await self._spawn(service_command(inst, self.coturn))
                if self.on_app_ready is not None:
                    self.on_app_ready(inst)
            elif not running and inst.process is not None:
                self.say(f"  {inst.label} instance is {inst.state}: stopping its service")
                await asyncio.to_thread(inst.process.stop)
                inst.process = None

    def _may_start(self, inst: Instance) -> bool:
        return self.app_gate is None or self.app_gate(inst)

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
        if inst.slot is not None:
            assert self.nat is not None
            self.nat.set_running(inst.slot, False)
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
        # No daemon in this process (--replicas): where AWS sends the traffic.
        return self.routes.get(service) or Role.PRIMARY
