"""The pure machine and monitor errors, table-driven: a probe that failed on
the monitor's side is no evidence either way (it neither counts toward
``fall`` nor breaks a streak), and it holds automatic failover with the
``monitor_degraded`` guard until probes complete without one again."""

from __future__ import annotations

import pytest

from jupiterd.config import IsolationGuard, Thresholds
from jupiterd.core.health import (
    Guard,
    HoldCleared,
    MachineState,
    Note,
    Observation,
    Policy,
    ProbeNow,
    StartFailover,
    Tick,
    step,
)
from jupiterd.core.types import Role, Status

P, B = Role.PRIMARY, Role.BACKUP
TH = Thresholds()  # fall 3, rise 2, failover_after 0


class Run:
    def __init__(self, names=("sig",), up=True):
        self.pol = Policy(thresholds={n: TH for n in names}, isolation=IsolationGuard())
        self.state = MachineState.initial(names)
        self.actions: list = []
        self.t = 0.0
        if up:
            for n in names:
                self.obs(n, P, "++")

    def send(self, event):
        self.state, acts = step(self.state, event, self.pol)
        self.actions += acts
        return acts

    def obs(self, service, role, pattern):
        """+ passed, - refused, m a host-wide monitor error, r a monitor error
        of this target alone (its name does not resolve: this host's resolver)."""
        for ch in pattern:
            self.t += 0.25
            if ch in "+-":
                event = Observation(
                    service, role, ch == "+", self.t, "ok" if ch == "+" else "refused"
                )
            else:
                cause, wide = ("descriptors", True) if ch == "m" else ("resolver", False)
                event = Observation(
                    service, role, False, self.t, "monitor_error", "EMFILE", cause, wide
                )
            self.send(event)

    def svc(self, name):
        return self.state.services[name]

    def guard(self, name):
        hold = self.svc(name).hold
        return "." if hold is None else "M" if hold.guard is Guard.MONITOR_DEGRADED else "?"

    def of(self, kind):
        return [a for a in self.actions if isinstance(a, kind)]


# (the primary's probe results from a fresh start, its statuses and the
# service's hold after each: . none, M monitor_degraded)
TABLE = [
    # EMFILE while the target is healthy: no DOWN, a hold, lifted after 2 clean probes.
    ("++mmmmmm++", "unknown up up up up up up up up up", "..MMMMMMM."),
    ("++mm+m++", "unknown up up up up up up up", "..MMMMM."),
    # Monitor errors do not break a streak of real failures: 3 real ones make DOWN.
    ("++-m-m-", "unknown up suspect suspect suspect suspect down", "...MMMM"),
    # ...nor one of passes.
    ("m+m+", "unknown unknown unknown up", "MMMM"),
    # Monitor errors alone never make a target DOWN, however many.
    ("++" + "m" * 20, "unknown up" + " up" * 20, ".." + "M" * 20),
    # One target's cause (its name does not resolve here) holds its service too.
    ("++rr++", "unknown up up up up up", "..MMM."),
    # A real outage after the trouble ends is decided as usual.
    ("++mm++---", "unknown up up up up up suspect suspect down", "..MMM...."),
]


@pytest.mark.parametrize("pattern,statuses,holds", TABLE)
def test_monitor_errors_are_no_evidence(pattern, statuses, holds):
    r = Run(up=False)
    seen, held = [], []
    for ch in pattern:
        r.obs("sig", P, ch)
        seen.append(str(r.svc("sig").primary.status))
        held.append(r.guard("sig"))
    assert " ".join(seen) == statuses
    assert "".join(held) == holds
    assert not r.of(StartFailover) or pattern.endswith("---")


def test_monitor_errors_neither_count_nor_refresh_the_last_look():
    r = Run()
    before = r.svc("sig").primary
    r.obs("sig", P, "mmm")
    after = r.svc("sig").primary
    assert (after.status, after.fail_streak, after.ok_streak) == (Status.UP, 0, 2)
    assert after.last_probe_at == before.last_probe_at
    assert after.last_reason == "ok"
    assert after.trouble is not None
    assert (after.trouble.cause, after.trouble.errors, after.trouble.detail) == (
        "descriptors",
        3,
        "EMFILE",
    )


def test_hold_sentence_when_no_failover_is_due():
    r = Run()
    r.obs("sig", P, "m")
    hold = r.svc("sig").hold
    assert hold.guard is Guard.MONITOR_DEGRADED
    assert hold.reason == (
        "probes are failing on this host, not at the targets "
        "(descriptors: EMFILE); held until they complete again"
    )
    assert r.svc("sig").decision == f"holding: {hold.reason}"
    r.obs("sig", P, "++")
    [cleared] = r.of(HoldCleared)
    assert cleared.guard is Guard.MONITOR_DEGRADED
    assert cleared.reason == "probes complete again without monitor errors"
    assert r.svc("sig").decision == "watching"


def test_a_host_wide_cause_holds_every_service_and_needs_a_round_to_clear():
    r = Run(names=("sig", "turn", "frp"))
    r.obs("sig", P, "m")
    assert [r.guard(n) for n in ("sig", "turn", "frp")] == ["M", "M", "M"]
    notes = [a.reason for a in r.of(Note) if a.service == "*"]
    assert notes == [
        "probes are failing on this host (descriptors: EMFILE): "
        "automatic failover held for every service"
    ]
    # Three services: three probes in a row must complete without a monitor error.
    r.obs("turn", P, "+")
    r.obs("frp", P, "+")
    assert r.state.degraded is not None
    r.obs("turn", P, "m")  # the count starts again
    r.obs("frp", P, "+")
    r.obs("turn", P, "+")
    assert r.state.degraded is not None
    r.obs("sig", P, "+")
    assert r.state.degraded is None
    # sig and turn each had their own trouble too: rise (2) clean probes each.
    assert [r.guard(n) for n in ("sig", "turn", "frp")] == ["M", "M", "."]
    r.obs("sig", P, "+")
    r.obs("turn", P, "+")
    assert [r.guard(n) for n in ("sig", "turn", "frp")] == [".", ".", "."]
    assert [a.reason for a in r.of(Note) if a.service == "*"][-1] == (
        "probes complete again: automatic failover no longer held by this host"
    )


def test_one_targets_cause_holds_its_service_alone():
    r = Run(names=("sig", "turn", "frp"))
    r.obs("sig", P, "r")
    assert [r.guard(n) for n in ("sig", "turn", "frp")] == ["M", ".", "."]
    assert r.state.degraded is None
    assert "the primary instance cannot be probed from this host (resolver: EMFILE)" in (
        r.svc("sig").hold.reason
    )


def test_a_due_failover_is_held_then_goes_ahead_when_probes_complete_again():
    r = Run(names=("sig", "turn", "frp"))
    r.obs("sig", P, "--")
    r.obs("turn", P, "m")  # the host runs out of descriptors...
    r.obs("sig", P, "-")  # ...as sig's third real failure comes in
    assert r.svc("sig").primary.status is Status.DOWN
    hold = r.svc("sig").hold
    assert hold.guard is Guard.MONITOR_DEGRADED
    assert hold.reason.startswith("the primary instance has been down for ")
    assert ", but probes are failing on this host, not at the targets" in hold.reason
    assert not r.of(StartFailover)
    r.send(Tick(r.t + 60))  # time alone does not lift it
    assert not r.of(StartFailover)
    r.obs("turn", P, "++")
    r.obs("frp", P, "+")
    r.obs("sig", P, "-")
    [start] = r.of(StartFailover)
    assert start.service == "sig"


def test_a_peer_that_cannot_be_probed_does_not_stall_the_isolation_check():
    r = Run(names=("sig", "turn", "frp"))
    r.obs("turn", P, "r")  # turn's name does not resolve on this host
    r.obs("sig", P, "---")
    [look] = r.of(ProbeNow)
    assert look.targets == (("frp", P),)  # not turn: no fresh look can come from it
    r.obs("frp", P, "+")
    [start] = r.of(StartFailover)
    assert start.service == "sig"


def test_a_stopped_target_ignores_its_own_late_monitor_errors():
    r = Run()
    r.obs("sig", B, "r")
    assert r.svc("sig").backup.status is Status.STOPPED
    assert r.svc("sig").backup.trouble is None and r.svc("sig").hold is None
