"""The NAT instances as network namespaces (root only): the two NAT
instances of the pool (``primary`` in AZ a, ``secondary`` in AZ b) and
their shared ``backup``; and the removal of those that sandboxes no longer
running left behind."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from .layout import SandboxError

NETNS_PREFIX = "jupiterd-sandbox-"
SLOTS = ("primary", "secondary", "backup")
_NETNS = re.compile(rf"^{NETNS_PREFIX}(\d+)-(\d+)-(?:primary|secondary|backup)$")
_VETH = re.compile(r"^jsbx(\d+)[psb]$")  # host side; interface names are 15 bytes at most


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
        # One /30 each: the host's side .1/.5/.9, the namespace's .2/.6/.10.
        self.addresses = {slot: f"198.19.{octet}.{4 * i + 2}" for i, slot in enumerate(SLOTS)}
        self._gateways = {slot: f"198.19.{octet}.{4 * i + 1}" for i, slot in enumerate(SLOTS)}

    @staticmethod
    def available() -> bool:
        if os.geteuid() != 0 or shutil.which("ip") is None:
            return False
        r = subprocess.run(["ip", "netns", "list"], capture_output=True, timeout=10)
        return r.returncode == 0

    def _ns(self, slot: str) -> str:
        return f"{NETNS_PREFIX}{self.pid}-{self.start}-{slot}"

    def _ip(self, *args: str) -> None:
        r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
        if r.returncode != 0:
            raise SandboxError(f"ip {' '.join(args)}: {r.stderr.strip()}")

    def create(self) -> None:
        for slot in SLOTS:
            ns, host_if, ns_if = self._ns(slot), f"jsbx{self.pid}{slot[0]}", "eth0"
            self._ip("netns", "add", ns)
            self.created.append((ns, host_if))
            self._ip("link", "add", host_if, "type", "veth", "peer", "name", f"{host_if}n")
            self._ip("link", "set", f"{host_if}n", "netns", ns)
            self._ip("-n", ns, "link", "set", f"{host_if}n", "name", ns_if)
            self._ip("addr", "add", f"{self._gateways[slot]}/30", "dev", host_if)
            self._ip("link", "set", host_if, "up")
            self._ip("-n", ns, "addr", "add", f"{self.addresses[slot]}/30", "dev", ns_if)
            self._ip("-n", ns, "link", "set", "lo", "up")
            self.set_running(slot, False)

    def set_running(self, slot: str, up: bool) -> None:
        self._ip("-n", self._ns(slot), "link", "set", "eth0", "up" if up else "down")

    def destroy(self) -> None:
        for ns, host_if in reversed(self.created):
            subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=10)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        self.created.clear()
