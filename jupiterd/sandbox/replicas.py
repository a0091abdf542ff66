"""``jupiterd sandbox --replicas N``: N jupiterd replicas, each a process of
its own with its own paths to the services and to AWS.

- The DynamoDB table they share (``jupiterd.aws.ha_table.create_table``) is
  created in moto.
- Replica K (``rK``) runs ``python -m jupiterd run --config
  <workdir>/replica-K.yaml``: the sandbox's configuration plus ``ha:``
  (short lease: the drills take seconds), its own HTTP port and state
  directory, and its own addresses for every instance (its relays, see
  ``jupiterd.sandbox.relay``: a configured ``address:`` wins over the
  private IP the inventory reads). Its log goes to ``replica-K.log``. It
  dies with the sandbox (PR_SET_PDEATHSIG), however the sandbox dies.
- Each replica reaches AWS through a fault proxy of its own (in the
  sandbox's process): per-replica call counts, and DynamoDB can be cut off.
- ``thingsboard`` has an ELB witness (``witness: {kind: elb}``): moto
  reports a registered running instance ``healthy`` whatever its service
  does, so cutting every replica off from it makes the witness disagree.

The NAT pool is left out: its probe is ICMP, which a user-space relay
cannot carry.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from jupiterd.core.types import Role

from .layout import FRONT_HOST, HOSTS, SandboxError, free_local_port
from .peers.fault_proxy import FaultProxy
from .peers.moto_server import client_env
from .peers.process import ROOT, die_with_parent
from .relay import ReplicaPaths

if TYPE_CHECKING:
    from .stack import Stack

TABLE = "jupiterd-sandbox-ha"
# Short, so that a takeover takes seconds; the ratios are the documented ones.
HA = {"lease_seconds": 4, "lease_margin": 1, "publish_interval": 0.5, "stale_after": 2}
WITNESS_SERVICE = "thingsboard"
# A second failover of the same service within a drill run (ha-all).
COOLDOWN = "5s"
MIN_REPLICAS, MAX_REPLICAS = 2, 5
READY_TIMEOUT = 60.0


class Replica:
    """One jupiterd process and what it goes through."""

    def __init__(self, index: int, workdir: Path, proxy: FaultProxy, paths: ReplicaPaths) -> None:
        self.index = index
        self.id = f"r{index}"
        self.proxy = proxy
        self.paths = paths
        self.config_path = workdir / f"replica-{index}.yaml"
        self.log_path = workdir / f"replica-{index}.log"
        self.state_dir = workdir / f"replica-{index}"
        self.http_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False  # SIGSTOPped

    @property
    def url(self) -> str:
        return f"http://{FRONT_HOST}:{self.http_port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def spawn(self) -> None:
        """Start the process (on the event loop's thread: see die_with_parent)."""
        env = client_env()
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jupiterd", "run", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=ROOT,
                env=env,
                preexec_fn=die_with_parent(signal.SIGKILL),
            )
        self.paused = False

    async def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise SandboxError(f"replica {self.id} exited: see {self.log_path}")
            if await self.status(1.0) is not None:
                return
            await asyncio.sleep(0.2)
        raise SandboxError(f"replica {self.id} did not answer in {timeout:g}s: {self.log_path}")

    def send(self, sig: signal.Signals) -> str:
        if not self.alive or self.proc is None:
            return f"{self.id} is not running"
        os.kill(self.proc.pid, sig)
        if sig is signal.SIGSTOP:
            self.paused = True
        elif sig is signal.SIGCONT:
            self.paused = False
        elif sig is signal.SIGKILL:
            self.proc.wait(10)
        return f"{self.id} (pid {self.proc.pid}): {sig.name}"

    async def restart(self) -> str:
        if self.alive:
            self.send(signal.SIGKILL)
        self.spawn()
        await self.wait_ready()
        return f"{self.id} restarted (pid {self.pid})"

    def terminate(self) -> None:
        if not self.alive or self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            if self.paused:
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    async def status(self, timeout: float = 2.0) -> dict[str, Any] | None:
        """Its /status, or None when it does not answer (dead, stopped)."""
        import aiohttp

        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
                http.get(f"{self.url}/status") as resp,
            ):
                if resp.status != 200:
                    return None
                doc: dict[str, Any] = await resp.json()
                return doc
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return None

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        """Its JSON log lines from byte ``since`` on (others skipped)."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(since)
                lines = f.read().splitlines()
        except OSError:
            return []
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):
                ev = json.loads(line)
                if isinstance(ev, dict):
                    out.append(ev)
        return out


class ReplicaSet:
    """The replicas of a sandbox and the controls drills use on them."""

    def __init__(self, stack: Stack, count: int, *, with_ha: bool = True) -> None:
        """``with_ha=False``: the same processes without ``ha:`` (each decides
        alone: the single-process baseline of bench/ha.py)."""
        if not 1 <= count <= MAX_REPLICAS:
            raise SandboxError(f"--replicas takes {MIN_REPLICAS} to {MAX_REPLICAS}, not {count}")
        self.stack = stack
        self.count = count
        self.with_ha = with_ha
        self.replicas: dict[str, Replica] = {}

    # ------------------------------------------------------------ start / stop

    def hosts(self) -> list[str]:
        """Every replica's relay addresses (the service ports must be free there)."""
        from .relay import relay_host

        return [relay_host(k, r) for k in range(1, self.count + 1) for r in Role]

    async def start(self) -> None:
        stack = self.stack
        await self._create_table()
        spec = {n: (stack.ports[n], n == "coturn") for n in stack.config.services}
        base = yaml.safe_load(stack.config_path.read_text())
        for k in range(1, self.count + 1):
            proxy = FaultProxy(stack.endpoint).start()
            paths = ReplicaPaths(k, spec, dict(HOSTS))
            r = Replica(k, stack.workdir, proxy, paths)
            self.replicas[r.id] = r
            await paths.start()
            r.http_port = free_local_port(stack.http_port + k)
            r.config_path.write_text(
                f"# Generated by `jupiterd sandbox --replicas {self.count}`: replica {r.id}.\n"
                + yaml.safe_dump(self.config_doc(base, r), sort_keys=False)
            )
            r.spawn()
            stack.say(
                f"  replica {r.id}: pid {r.pid}, /status at {r.url}, services via "
                f"{paths.address(Role.PRIMARY)} / {paths.address(Role.BACKUP)}, "
                f"AWS via {proxy.url}"
            )
        await asyncio.gather(*(r.wait_ready() for r in self.replicas.values()))

    async def _create_table(self) -> None:
        from jupiterd.aws.client import Aws
        from jupiterd.aws.ha_table import create_table

        aws = Aws(self.stack.config.aws)
        try:
            await create_table(aws, TABLE)
        finally:
            aws.close()
        self.stack.say(f"  DynamoDB table {TABLE} created (the lease, views and journal)")

    def config_doc(self, base: dict[str, Any], r: Replica) -> dict[str, Any]:
        doc = copy.deepcopy(base)
        doc["aws"]["endpoint_url"] = r.proxy.url
        doc["state_dir"] = str(r.state_dir / "state")
        doc["http"] = {"listen": f"{FRONT_HOST}:{r.http_port}"}
        doc.setdefault("defaults", {})["cooldown"] = COOLDOWN
        for name, svc in doc["services"].items():
            for role in Role:
                svc[role.value]["address"] = r.paths.address(role)
            if name == WITNESS_SERVICE:
                svc["witness"] = {"kind": "elb"}
        if self.with_ha:
            doc["ha"] = {"table": TABLE, "replica_id": r.id, "replicas": self.count, **HA}
        return doc

    async def stop(self) -> None:
        await asyncio.gather(
            *(asyncio.to_thread(r.terminate) for r in self.replicas.values()),
            return_exceptions=True,
        )
        for r in self.replicas.values():
            await r.paths.stop()
            with contextlib.suppress(Exception):
                r.proxy.stop()

    # ------------------------------------------------------------ controls

    def get(self, replica: str) -> Replica:
        if replica not in self.replicas:
            raise SandboxError(f"no replica named {replica} (have: {', '.join(self.replicas)})")
        return self.replicas[replica]

    def cut(
        self, replica: str, service: str, role: Role | None = None, *, heal: bool = False
    ) -> str:
        """Cut (or heal) one replica's path to a service (``all``: every replica)."""
        targets = list(self.replicas.values()) if replica == "all" else [self.get(replica)]
        if service not in self.stack.config.services:
            raise SandboxError(f"no service named {service}")
        for r in targets:
            (r.paths.heal if heal else r.paths.cut)(service, role)
        which = f"{service}'s {role} instance" if role is not None else service
        names = ", ".join(r.id for r in targets)
        return f"{names}: path to {which} {'healed' if heal else 'cut (silent)'}"

    def dynamodb(self, down: bool) -> str:
        for r in self.replicas.values():
            r.proxy.cut_off("dynamodb", down)
        return "DynamoDB " + ("unreachable for every replica" if down else "reachable again")

    async def act(self, replica: str, action: str) -> str:
        """``kill`` (SIGKILL), ``stop`` (SIGSTOP), ``cont`` (SIGCONT), ``restart``."""
        r = self.get(replica)
        sigs = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP, "cont": signal.SIGCONT}
        if action in sigs:
            return r.send(sigs[action])
        if action == "restart":
            return await r.restart()
        raise SandboxError(f"no replica action {action} (kill, stop, cont, restart)")

    # ------------------------------------------------------------ what is going on

    async def statuses(self) -> dict[str, dict[str, Any] | None]:
        got = await asyncio.gather(*(r.status() for r in self.replicas.values()))
        return dict(zip(self.replicas, got, strict=True))

    def lease(self) -> dict[str, Any] | None:
        """The lease item as moto holds it (read past the proxies)."""
        from .seed import moto_client

        ddb = moto_client(self.stack.endpoint, self.stack.topology.region, "dynamodb")
        item = ddb.get_item(TableName=TABLE, Key={"pk": {"S": "lease"}}, ConsistentRead=True)
        raw = item.get("Item")
        if raw is None:
            return None
        return {k: next(iter(v.values())) for k, v in raw.items()}

    def counts(self) -> Counter[str]:
        """Forwarded calls per ``service:Action``, every replica together."""
        total: Counter[str] = Counter()
        for r in self.replicas.values():
            total.update(r.proxy.snapshot())
        return total

    def repeated(self) -> list[str]:
        """Mutating calls (but DynamoDB's) forwarded twice with the same
        request, by whichever replicas: a side effect done twice."""
        total: Counter[tuple[str, str]] = Counter()
        for r in self.replicas.values():
            with r.proxy._lock:
                total.update(r.proxy.requests)
        return sorted(
            f"{key} x{n}"
            for (key, _), n in total.items()
            if n > 1 and not key.startswith("dynamodb:")
        )

    def reset_counts(self) -> None:
        for r in self.replicas.values():
            r.proxy.reset_counts()
