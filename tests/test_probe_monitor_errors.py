"""Failures on the monitor's side are told from the target's: each errno and
resolver error the probes can meet on this host is classified, and the same
errno reported back by the network (a router's ICMP) stays the target's.

The namespace tests run probes in a network namespace of their own
(``unshare -n``: it ends with the process), where the routing table, the
resolver and an ICMP-sending firewall rule are under the test's control.
"""

from __future__ import annotations

import errno
import json
import shutil
import socket
import subprocess
import sys

import pytest

import probes
from probes import MonitorCause, Reason
from probes.result import (
    ProbeFailure,
    Trace,
    classify_exception,
    entrypoint,
    monitor_failure,
    network_error,
)

M = Reason.MONITOR_ERROR


def os_error(code: int) -> OSError:
    import os

    return OSError(code, os.strerror(code))


# (exception, reason, cause or None, words the detail must hold)
TABLE = [
    (os_error(errno.EMFILE), M, MonitorCause.DESCRIPTORS, "jupiterd is out of file descriptors"),
    (os_error(errno.ENFILE), M, MonitorCause.DESCRIPTORS, "this host is out of file descriptors"),
    (os_error(errno.ENOBUFS), M, MonitorCause.BUFFERS, "out of socket buffers"),
    (os_error(errno.ENOMEM), M, MonitorCause.MEMORY, "out of memory"),
    (MemoryError(), M, MonitorCause.MEMORY, "jupiterd is out of memory"),
    (RuntimeError("can't start new thread"), M, MonitorCause.THREADS, "could not start a thread"),
    (os_error(errno.EADDRNOTAVAIL), M, MonitorCause.LOCAL_ADDRESS, "no free local port"),
    (os_error(errno.ENETUNREACH), M, MonitorCause.NO_ROUTE, "this host has no route"),
    (os_error(errno.ENETDOWN), M, MonitorCause.NO_ROUTE, "network interface is down"),
    (socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"), M,
     MonitorCause.RESOLVER, "this host's resolver failed (Temporary failure"),
    (socket.gaierror(socket.EAI_FAIL, "Non-recoverable failure in name resolution"), M,
     MonitorCause.RESOLVER, "this host's resolver failed"),
    (socket.gaierror(socket.EAI_SYSTEM, "System error"), M, MonitorCause.RESOLVER, "resolver"),
    (socket.gaierror(socket.EAI_MEMORY, "Memory allocation failure"), M, MonitorCause.RESOLVER,
     "resolver"),
    # The target's (or its network's) doing:
    (os_error(errno.EHOSTUNREACH), Reason.UNREACHABLE, None, "No route to host"),
    (os_error(errno.EHOSTDOWN), Reason.UNREACHABLE, None, "Host is down"),
    (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), Reason.REFUSED, None, "refused"),
    (ConnectionResetError(errno.ECONNRESET, "reset"), Reason.RESET, None, "reset"),
    (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), Reason.DNS_ERROR, None,
     "Name or service not known"),
    (socket.gaierror(getattr(socket, "EAI_NODATA", -5), "No address associated with hostname"),
     Reason.DNS_ERROR, None, "No address"),
]  # fmt: skip


@pytest.mark.parametrize("exc,reason,cause,words", TABLE, ids=lambda v: repr(v)[:40])
def test_classifier(exc, reason, cause, words):
    got_reason, detail = classify_exception(exc, "connect")
    assert got_reason is reason
    assert words in detail
    monitor = monitor_failure(exc, "connect")
    if cause is None:
        assert monitor is None
    else:
        assert monitor is not None and monitor.cause is cause
        assert detail.endswith("not the target's fault")


@pytest.mark.parametrize("exc,reason,cause,words", TABLE, ids=lambda v: repr(v)[:40])
async def test_entrypoint_sets_the_cause_without_string_matching(exc, reason, cause, words):
    @entrypoint("fake")
    async def fake(trace: Trace, target: str, options: None, timeout: float):
        with trace.phase("connect"):
            raise exc

    result = await fake("127.0.0.1:1", None, 1.0)
    assert not result.ok and result.reason is reason
    assert result.monitor_error is (cause is not None)
    assert result.cause is cause
    if cause is not None:
        assert result.to_dict()["cause"] == cause.value
        assert "during connect" in result.detail or cause is MonitorCause.RESOLVER
    else:
        assert "cause" not in result.to_dict()


def test_host_wide_causes():
    local = {c for c in MonitorCause if not c.host_wide}
    assert local == {MonitorCause.NO_ROUTE, MonitorCause.RESOLVER, MonitorCause.DEFECT}


def test_a_routers_answer_is_the_networks_not_the_monitors():
    failure = network_error(os_error(errno.ENETUNREACH), "connect")
    assert isinstance(failure, ProbeFailure)
    assert failure.reason is Reason.UNREACHABLE
    assert failure.detail == "a router answered: Network is unreachable during connect"
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "refused")
    assert network_error(refused, "connect") is refused


# --------------------------------------------------------------------------- a namespace

RUNNER = r"""
import asyncio, json, sys
import probes

async def main():
    out = {}
    for name, kind, target, options in json.loads(sys.argv[1]):
        r = await probes.run(kind, target, options, 1.0)
        out[name] = [r.reason.value, r.cause.value if r.cause else None, r.detail]
    print(json.dumps(out))

asyncio.run(main())
"""

SETUP = """
set -e
ip link set lo up
ip addr add 10.9.9.1/24 dev lo
ip route add unreachable 10.7.0.0/16
iptables -A INPUT -p tcp -d 10.9.9.9 --dport 80 -j REJECT --reject-with icmp-net-unreachable
exec "$@"
"""

SCENARIOS = [
    # No route in this host's table: connect() fails at once.
    ("no_route", "tcp", "10.8.8.8:80", {}),
    # A router (here: a REJECT rule) answers the SYN with ICMP net unreachable.
    ("router_says_no_net", "tcp", "10.9.9.9:80", {}),
    # An unreachable route: the host is unreachable, as a missing neighbour is.
    ("host_unreachable", "tcp", "10.7.1.1:80", {}),
    # A UDP probe without a route: the connect of its socket fails at once.
    ("no_route_udp", "stun", "10.8.8.8:3478", {}),
    # The resolver's server is unreachable from here: EAI_AGAIN.
    ("resolver_down", "tcp", "jupiterd-test.invalid:80", {}),
]


@pytest.fixture(scope="module")
def in_namespace():
    if shutil.which("unshare") is None or shutil.which("iptables") is None:
        pytest.skip("unshare and iptables are needed for a namespace of the test's own")
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"network namespaces need root: {probe.stderr.decode().strip()}")

    def run(scenarios):
        argv = ["unshare", "-n", "sh", "-c", SETUP, "sh", sys.executable, "-c", RUNNER]
        done = subprocess.run(
            [*argv, json.dumps(scenarios)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    return run


def test_errors_in_a_namespace(in_namespace):
    got = in_namespace(SCENARIOS)
    assert got["no_route"][:2] == ["monitor_error", "no_route"]
    assert "this host has no route to the target (Network is unreachable)" in got["no_route"][2]
    assert got["router_says_no_net"] == [
        "unreachable",
        None,
        "a router answered: Network is unreachable during connect",
    ]
    assert got["host_unreachable"][:2] == ["unreachable", None]
    assert got["no_route_udp"][:2] == ["monitor_error", "no_route"]
    assert got["resolver_down"][:2] == ["monitor_error", "resolver"]
    assert "this host's resolver failed" in got["resolver_down"][2]


def test_reason_is_documented():
    assert Reason.MONITOR_ERROR in probes.REASON_DESCRIPTIONS
