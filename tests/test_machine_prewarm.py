"""Pre-warm on suspicion in the pure machine: the standby is started when
the active first fails, stopped again ``prewarm_hold`` after it recovers,
taken over by a failover, capped per hour, and never while it is already
running, shared, paused or in maintenance. A warm standby that has not
passed its probes yet is not a dead one."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from jupiterd.config import IsolationGuard, Thresholds
from jupiterd.core.health import (
    Alert,
    FailoverFinished,
    Guard,
    Hold,
    InstanceRunning,
    MachineState,
    MaintenanceObserved,
    Observation,
    PauseChanged,
    Policy,
    Prewarm,
    PrewarmCapped,
    PrewarmPolicy,
    PrewarmUndo,
    StandbyWarming,
    StartFailover,
    Tick,
    step,
)
from jupiterd.core.types import Role, Status

P, B = Role.PRIMARY, Role.BACKUP
TH = Thresholds()  # fall 3, rise 2, failover_after 0
HOLD = 300.0


def policy(prewarm: bool = True, cap: int = 4, **over: Any) -> Policy:
    th = Thresholds.model_validate({**TH.model_dump(), **over})
    return Policy(
        thresholds={"sig": th},
        isolation=IsolationGuard(enabled=False),
        prewarm={"sig": PrewarmPolicy(HOLD, cap)} if prewarm else {},
    )


class Run:
    """Feeds events, keeps every action."""

    def __init__(self, pol: Policy) -> None:
        self.pol = pol
        self.state = MachineState.initial(["sig"])
        self.actions: list[Any] = []

    def __call__(self, event: Any) -> list[Any]:
        self.state, acts = step(self.state, event, self.pol)
        self.actions += acts
        return acts

    def probe(self, role: Role, ok: bool, at: float) -> list[Any]:
        return self(Observation("sig", role, ok, at, "ok" if ok else "refused"))

    @property
    def s(self) -> Any:
        return self.state.services["sig"]

    def of(self, kind: type) -> list[Any]:
        return [a for a in self.actions if isinstance(a, kind)]


def up(pol: Policy) -> Run:
    r = Run(pol)
    r.probe(P, True, 0.0)
    r.probe(P, True, 1.0)
    assert r.s.primary.status is Status.UP and r.s.backup.status is Status.STOPPED
    return r


def test_prewarm_starts_on_the_first_failure_and_only_once() -> None:
    r = up(policy())
    acts = r.probe(P, False, 10.0)
    assert r.s.primary.status is Status.SUSPECT
    [pw] = [a for a in acts if isinstance(a, Prewarm)]
    assert pw.role is B and "starting the stopped backup now" in pw.reason
    assert r.s.warm is not None and r.s.warm.kind == "prewarm"
    r.probe(P, False, 10.5)
    assert len(r.of(Prewarm)) == 1  # still warming: not started again


def test_no_prewarm_without_the_key() -> None:
    r = up(policy(prewarm=False))
    r.probe(P, False, 10.0)
    assert r.of(Prewarm) == [] and r.s.warm is None


def test_undone_after_the_hold_when_the_active_recovers() -> None:
    r = up(policy())
    r.probe(P, False, 10.0)
    r.probe(P, True, 11.0)  # SUSPECT -> UP: recovered
    assert r.s.warm is not None and r.s.warm.undo_at == 11.0 + HOLD
    r(Tick(11.0 + HOLD - 1))
    assert r.of(PrewarmUndo) == []
    r(Tick(11.0 + HOLD))
    [undo] = r.of(PrewarmUndo)
    assert undo.role is B and "prewarm_hold" in undo.reason
    assert r.s.warm is None


def test_a_standby_a_drill_kept_warm_is_stopped_after_the_service_s_hold() -> None:
    """Without ``prewarm: true``: the drill hands the daemon a pre-warm, and
    the service's own ``prewarm_hold`` (``warm_hold``) times it out."""
    pol = replace(policy(prewarm=False), warm_hold={"sig": 60.0})
    r = up(pol)
    r.probe(P, False, 10.0)  # the active fails mid-drill
    r(StandbyWarming("sig", B, "prewarm", True, 10.5))
    assert r.of(Prewarm) == [] and r.s.warm is not None
    r.probe(P, True, 11.0)  # recovered: no failover will come
    assert r.s.warm.undo_at == 11.0 + 60.0
    r(Tick(11.0 + 59.0))
    assert r.of(PrewarmUndo) == []
    r(Tick(11.0 + 60.0))
    [undo] = r.of(PrewarmUndo)
    assert undo.role is B and r.s.warm is None


def test_failing_again_during_the_hold_keeps_the_standby() -> None:
    r = up(policy())
    r.probe(P, False, 10.0)
    r.probe(P, True, 11.0)
    r.probe(P, False, 100.0)  # fails again within the hold
    assert r.s.warm is not None and r.s.warm.undo_at is None
    r(Tick(11.0 + HOLD + 1))
    assert r.of(PrewarmUndo) == []
    assert len(r.of(Prewarm)) == 1  # the same pre-warm, not a new one


def test_the_failover_takes_the_prewarmed_standby_over() -> None:
    r = up(policy())
    r.probe(P, False, 10.0)
    r(InstanceRunning("sig", B, True, 10.5))  # booted: probed from now on
    r.probe(B, False, 10.6)  # its application is still starting
    r.probe(P, False, 10.7)
    r.probe(B, False, 10.8)
    r.probe(B, False, 10.9)
    assert r.s.backup.status is Status.DOWN  # booting, judged down by its probes
    r.probe(P, False, 11.0)  # fall 3: the primary is DOWN
    [sf] = r.of(StartFailover)
    assert "pre-warmed standby" in sf.reason
    # Not held as both down or an unhealthy standby, and no alert.
    assert r.of(Alert) == [] and not [h for h in r.of(Hold) if h.guard is Guard.BOTH_DOWN]
    assert r.s.warm is None and r.s.in_flight is B
    r(FailoverFinished("sig", B, True, 20.0, "moved"))
    r(Tick(20.0 + HOLD + 1))
    assert r.of(PrewarmUndo) == []


def test_without_the_warm_flag_a_booting_standby_is_both_down() -> None:
    # What the flag prevents: the same events, no pre-warm.
    r = up(policy(prewarm=False))
    r.probe(P, False, 10.0)
    r(InstanceRunning("sig", B, True, 10.5))
    for at in (10.6, 10.8, 10.9):
        r.probe(B, False, at)
    r.probe(P, False, 10.7)
    r.probe(P, False, 11.0)
    assert r.of(StartFailover) == [] and r.of(Alert)


def test_a_drill_warming_the_standby_is_taken_over_too() -> None:
    r = up(policy(prewarm=False))
    r(StandbyWarming("sig", B, "drill", True, 5.0))
    r(InstanceRunning("sig", B, True, 6.0))
    for i, at in enumerate((10.0, 10.2, 10.4)):
        r.probe(P, False, at)
        r.probe(B, i == 0, at + 0.1)  # the backup is still coming up: UNKNOWN
    [sf] = r.of(StartFailover)
    assert "pre-warmed standby" in sf.reason and r.of(Alert) == []
    r(StandbyWarming("sig", B, "drill", False, 12.0))  # the drill ends: nothing left
    assert r.s.warm is None


def test_capped_per_hour_and_said_once() -> None:
    r = up(policy(cap=2))
    t = 10.0
    for _ in range(2):
        r.probe(P, False, t)
        r.probe(P, True, t + 1)
        r(Tick(t + 1 + HOLD))
        r(InstanceRunning("sig", B, False, t + 2 + HOLD))
        t += 2 * HOLD
    assert len(r.of(Prewarm)) == 2 and len(r.of(PrewarmUndo)) == 2
    r.probe(P, False, t)
    r.probe(P, False, t + 0.25)
    [capped] = r.of(PrewarmCapped)
    assert "prewarm_max_per_hour 2" in capped.reason
    assert len(r.of(Prewarm)) == 2
    # An hour after the first, the cap has room again.
    r.probe(P, True, t + 1)
    r.probe(P, False, 10.0 + 3601)
    assert len(r.of(Prewarm)) == 3


def test_not_when_the_standby_already_runs() -> None:
    r = up(policy())
    r(InstanceRunning("sig", B, True, 5.0))
    r.probe(P, False, 10.0)
    assert r.of(Prewarm) == []


def test_not_while_paused_or_in_maintenance() -> None:
    r = up(policy())
    r(PauseChanged(True, 5.0))
    r.probe(P, False, 10.0)
    assert r.of(Prewarm) == []
    r2 = up(policy())
    r2(MaintenanceObserved("sig", True, 5.0))
    r2.probe(P, False, 10.0)
    assert r2.of(Prewarm) == []


def test_not_when_the_pool_s_standby_serves_another_member() -> None:
    th = Thresholds()
    pol = Policy(
        thresholds={"a": th, "b": th},
        isolation=IsolationGuard(enabled=False),
        pool_peers={"a": ("b",), "b": ("a",)},
        prewarm={"a": PrewarmPolicy(HOLD, 4)},
    )
    state = MachineState.initial(["a", "b"])
    b = replace(state.services["b"], active=B)
    state = state.with_service(b)
    for ok, at in ((True, 0.0), (True, 1.0), (False, 10.0)):
        state, acts = step(state, Observation("a", P, ok, at, "x"), pol)
    assert not [a for a in acts if isinstance(a, Prewarm)]
    assert state.services["a"].warm is None


def test_only_the_leader_prewarms_under_ha() -> None:
    from jupiterd.core.health import ClusterChanged
    from jupiterd.core.quorum import Cluster

    follower = up(replace(policy(), ha=True))
    follower(ClusterChanged(Cluster(False, "follower", "az-b", "az-b leads"), 2.0))
    follower.probe(P, False, 10.0)
    assert follower.s.primary.status is Status.SUSPECT
    assert follower.of(Prewarm) == [] and follower.s.warm is None

    leader = up(replace(policy(), ha=True))
    leader(ClusterChanged(Cluster(True, "leader", "az-a", ""), 2.0))
    leader.probe(P, False, 10.0)
    assert len(leader.of(Prewarm)) == 1
