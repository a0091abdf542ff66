"""The daemon against real local peers: coturn, a python-socketio signaling
server, the frps and ThingsBoard stand-ins, each a process per instance
(primary on 127.0.0.2, backup on 127.0.0.3). Crashing one primary (SIGKILL)
must be reported DOWN within interval x fall plus the fast re-probes, lead
to exactly one failover, and a second one must be held by the cooldown.
Crashing every primary at once must be held by the isolation guard."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry

from jupiterd.core.health import Guard, Transition
from jupiterd.core.inventory import StaticInventory
from jupiterd.core.types import Status
from jupiterd.runtime.supervisor import Supervisor
from jupiterd.sandbox.peers.coturn import _free_on_both, free_port_pair
from jupiterd.sandbox.peers.process import Peer
from jupiterd.telemetry.metrics import Metrics
from tests.conftest import need
from tests.daemon_helpers import B, FakeExecutor, P, config_for, wait_for
from tests.peers.commands import python_peer

pytestmark = pytest.mark.slow

HOSTS = {P: "127.0.0.2", B: "127.0.0.3"}
SECRET = "jupiter-turn-secret"
TOKEN = "jupiter-frp-token"
TB_USER, TB_PASSWORD = "probe@jupiter.test", "probe-password"
TH = {"interval": 0.5, "fast_interval": 0.1, "timeout": 0.4, "jitter": 0, "fall": 3, "rise": 2}


def start(kind: str, role, port: int) -> Peer:
    host = HOSTS[role]
    if kind == "signaling":
        return Peer(python_peer("signaling_server.py", "--host", host, "--port", str(port)))
    if kind == "coturn":
        return Peer(
            python_peer("coturn.py", "--host", host, "--port", str(port), "--secret", SECRET)
        )
    if kind == "frp":
        return Peer(
            python_peer("frps_standin.py", "--host", host, "--port", str(port), "--token", TOKEN)
        )
    return Peer(
        python_peer(
            "thingsboard_standin.py",
            "--host",
            host,
            "--port",
            str(port),
            "--user",
            TB_USER,
            "--password",
            TB_PASSWORD,
        )
    )


def coturn_port() -> int:
    for _ in range(50):
        port = free_port_pair(HOSTS[P])
        if _free_on_both(HOSTS[B], port):
            return port
    raise RuntimeError("no port free on both loopback addresses")


@pytest.fixture
async def stack(tmp_path):
    need("turnserver")
    peers: dict[tuple[str, object], Peer] = {}
    try:
        for name in ("signaling", "coturn", "frp", "thingsboard"):
            port = coturn_port() if name == "coturn" else 0
            primary = start(name, P, port)
            peers[(name, P)] = primary
            peers[(name, B)] = start(name, B, primary.port)
        probe = {
            "signaling": {"kind": "socketio", "options": {"transport": "websocket"}},
            "coturn": {"kind": "turn", "options": {"secret": SECRET}},
            "frp": {"kind": "frp", "options": {"token": TOKEN}},
            "thingsboard": {
                "kind": "thingsboard",
                "options": {"username": TB_USER, "password": TB_PASSWORD},
            },
        }
        services = {
            n: {
                "probe": {**probe[n], "port": peers[(n, P)].port},
                "primary": {"address": HOSTS[P]},
                "backup": {"address": HOSTS[B]},
            }
            for n in probe
        }
        cfg = config_for(services, str(tmp_path), defaults=TH)
        executor = FakeExecutor()
        inv = StaticInventory(cfg)
        sup = Supervisor(
            cfg,
            executor=executor,
            inventory=inv,
            metrics=Metrics(CollectorRegistry()),
            rng=random.Random(7),
            tick_seconds=0.1,
        )
        transitions: list[tuple[float, Transition]] = []
        apply = sup._apply

        def spy(action):
            if isinstance(action, Transition):
                transitions.append((sup.now(), action))
            apply(action)

        sup._apply = spy  # type: ignore[method-assign]
        await sup.start()
        yield sup, executor, inv, peers, transitions
        await sup.stop(grace=1)
    finally:
        for p in peers.values():
            p.stop()


def up(sup, names=("signaling", "coturn", "frp", "thingsboard")):
    return all(sup.state.services[n].primary.status is Status.UP for n in names)


async def test_real_peers_come_up_and_one_crash_fails_over_once(stack):
    sup, executor, inv, peers, transitions = stack
    await wait_for(lambda: up(sup), timeout=20, what="every primary up")
    details = {n: sup.state.services[n].primary.last_detail for n in sup.state.services}
    assert all(details.values()), details

    peers[("frp", P)].crash()
    crashed = sup.now()
    # interval x fall plus the fast re-probes, with room for a noisy machine.
    bound = TH["interval"] + TH["fall"] * (TH["fast_interval"] + TH["timeout"]) + 2.0
    await wait_for(
        lambda: sup.state.services["frp"].primary.status is Status.DOWN,
        timeout=bound,
        what="frp primary DOWN",
    )
    down_at = next(t for t, a in transitions if a.service == "frp" and a.new is Status.DOWN)
    assert down_at - crashed <= bound
    await wait_for(lambda: executor.requests, timeout=5, what="the failover request")
    [req] = executor.requests
    assert (req.service, req.from_role, req.to_role) == ("frp", P, B)
    assert "frp" in req.service and "consecutive probes failed" in req.reason

    # The (fake) plan moved frp to its running backup; then the backup dies.
    await wait_for(lambda: sup.state.services["frp"].active is B, what="frp on the backup")
    inv.set_state("frp", B, "running")
    inv.set_state("frp", P, "stopped")
    await sup.refresh_inventory()
    await wait_for(
        lambda: sup.state.services["frp"].backup.status is Status.UP,
        timeout=10,
        what="frp backup probed up",
    )
    peers[("frp", B)].crash()
    await wait_for(
        lambda: sup.state.services["frp"].hold is not None, timeout=bound + 5, what="a hold on frp"
    )
    assert sup.state.services["frp"].hold.guard is Guard.COOLDOWN
    assert len(executor.requests) == 1
    # The other services never moved.
    assert up(sup, ("signaling", "coturn", "thingsboard"))


async def test_every_primary_crashing_at_once_is_held_as_isolation(stack):
    sup, executor, _inv, peers, _transitions = stack
    await wait_for(lambda: up(sup), timeout=20, what="every primary up")
    for name in ("signaling", "coturn", "frp", "thingsboard"):
        peers[(name, P)].crash()
    await wait_for(
        lambda: all(s.hold is not None for s in sup.state.services.values()),
        timeout=15,
        what="every service held",
    )
    guards = {n: s.hold.guard for n, s in sup.state.services.items()}
    assert set(guards.values()) == {Guard.ISOLATION}, guards
    assert executor.requests == []
    reason = sup.state.services["coturn"].hold.reason
    assert "4 of 4 services are failing at once" in reason
