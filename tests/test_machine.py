"""The pure state machine, table-driven: events with their times in, states,
actions and reason sentences out. No asyncio, no sleeps, no patching."""

from __future__ import annotations

from dataclasses import replace

import pytest

from jupiterd.config import IsolationGuard, Thresholds
from jupiterd.core.health import (
    ActiveObserved,
    Alert,
    AwsReachability,
    FailoverDue,
    FailoverFinished,
    Guard,
    Hold,
    HoldCleared,
    InstanceRunning,
    MachineState,
    MaintenanceObserved,
    Note,
    Observation,
    PauseChanged,
    Policy,
    ProbeNow,
    StartFailover,
    TargetState,
    Tick,
    Transition,
    observe,
    probe_interval,
    retry_delay,
    step,
)
from jupiterd.core.types import Role, Status

P, B = Role.PRIMARY, Role.BACKUP
TH = Thresholds()  # interval 2, fast 0.25, fall 3, rise 2, cooldown 600, max 2/h


def policy(names=("sig", "turn", "frp"), **over):
    th = Thresholds.model_validate({**TH.model_dump(), **over})
    return Policy(thresholds={n: th for n in names}, isolation=IsolationGuard())


# --------------------------------------------------------------------------- targets

# (pattern of probe results at 0.25 s steps, thresholds, expected statuses after each)
TARGET_TABLE = [
    ("++", {}, "unknown up"),
    ("+-+", {"rise": 1}, "up suspect up"),
    ("++---", {}, "unknown up suspect suspect down"),
    ("---", {}, "unknown unknown down"),
    ("++---++", {}, "unknown up suspect suspect down recovering up"),
    ("++---+-", {}, "unknown up suspect suspect down recovering down"),
    ("++----", {"fall": 4}, "unknown up suspect suspect suspect down"),
    ("++-+--+", {}, "unknown up suspect up suspect suspect up"),
    ("+" + "-" * 10, {"rise": 1, "min_down": 2.0}, "up" + " suspect" * 8 + " down down"),
]


@pytest.mark.parametrize("pattern,over,expected", TARGET_TABLE)
def test_target_hysteresis(pattern, over, expected):
    th = Thresholds.model_validate({**TH.model_dump(), **over})
    t = TargetState()
    seen = []
    for i, ch in enumerate(pattern):
        t = observe(t, ch == "+", i * 0.25, th, "ok" if ch == "+" else "refused", "")
        seen.append(str(t.status))
    assert " ".join(seen) == expected


def test_down_sentence_counts_failures_and_names_the_reason():
    t = TargetState(status=Status.UP)
    for i in range(3):
        t = observe(t, False, 10 + i * 0.25, TH, "refused", "connection refused during connect")
    assert t.status is Status.DOWN
    assert t.why == (
        "3 consecutive probes failed over 0.5s (fall 3): refused: connection refused during connect"
    )
    assert t.failing_since == 10 and t.since == 10.5


def test_stopped_target_ignores_late_results():
    t = TargetState(status=Status.STOPPED, since=5)
    assert observe(t, False, 6, TH, "timeout", "") is t


@pytest.mark.parametrize(
    "status,fails,expected",
    [
        (Status.UP, 0, 2.0),
        (Status.UP, 1, 0.25),
        (Status.SUSPECT, 1, 0.25),
        (Status.UNKNOWN, 0, 2.0),
        (Status.UNKNOWN, 1, 0.25),
        (Status.DOWN, 5, 2.0),
        (Status.RECOVERING, 0, 0.25),
        (Status.STOPPED, 0, None),
    ],
)
def test_probe_interval_is_fast_while_changing_state(status, fails, expected):
    assert probe_interval(TargetState(status=status, fail_streak=fails), TH) == expected


# --------------------------------------------------------------------------- services


class Run:
    """Feeds events and keeps every action, for assertions."""

    def __init__(self, pol=None, names=("sig", "turn", "frp"), up=True, at=0.0):
        self.pol = pol or policy(names)
        self.state = MachineState.initial(names)
        self.actions: list = []
        self.t = at
        if up:
            for n in names:
                self.obs(n, P, "++")

    def send(self, event):
        before = self.state
        self.state, acts = step(self.state, event, self.pol)
        assert before is not self.state or not acts or all(isinstance(a, Hold | Note) for a in acts)
        self.actions += acts
        return acts

    def obs(self, service, role, pattern, dt=0.25, reason="refused"):
        out = []
        for ch in pattern:
            self.t += dt
            ok = ch == "+"
            out += self.send(Observation(service, role, ok, self.t, "ok" if ok else reason, ""))
        return out

    def svc(self, name):
        return self.state.services[name]

    def of(self, kind):
        return [a for a in self.actions if isinstance(a, kind)]


def test_one_service_down_fails_over_after_a_fresh_look_at_the_others():
    r = Run()
    acts = r.obs("sig", P, "---")
    # The other services were last probed before sig started failing.
    assert [a for a in acts if isinstance(a, ProbeNow)] == [
        ProbeNow(
            (("turn", P), ("frp", P)),
            "sig is down: a fresh look at the other services tells an outage "
            "from a monitor network fault",
            r.t,
        )
    ]
    assert not r.of(StartFailover)
    assert "checking the other services first" in r.svc("sig").decision
    r.obs("turn", P, "+")
    assert not r.of(StartFailover), "frp has not been looked at yet"
    r.obs("frp", P, "+")
    [start] = r.of(StartFailover)
    assert (start.service, start.from_role, start.to_role) == ("sig", P, B)
    assert start.reason.startswith("the primary instance has been down for")
    assert (
        "failing over to the stopped standby (it will be started and checked first)" in start.reason
    )
    assert r.svc("sig").in_flight is B


def test_second_failover_is_held_while_one_is_in_flight():
    r = Run()
    r.obs("sig", P, "---")
    r.obs("turn", P, "+")
    r.obs("frp", P, "+")
    r.obs("sig", P, "--")
    assert len(r.of(StartFailover)) == 1
    [hold] = r.of(Hold)
    assert hold.guard is Guard.IN_FLIGHT
    assert hold.reason == "a failover to the backup is already running"


def test_failover_after_waits_for_a_tick():
    r = Run(pol=policy(failover_after=5.0))
    r.obs("turn", P, "+")
    r.obs("frp", P, "+")
    r.obs("sig", P, "---")
    r.obs("turn", P, "+")
    r.obs("frp", P, "+")
    down_at = r.svc("sig").primary.since
    r.send(Tick(down_at + 4.9))
    assert not r.of(StartFailover)
    assert r.svc("sig").decision.endswith("failover after 5s")
    r.obs("turn", P, "+")
    r.obs("frp", P, "+")
    r.send(Tick(down_at + 5.0))
    assert len(r.of(StartFailover)) == 1


def test_everything_failing_at_once_is_held_as_isolation():
    r = Run()
    r.obs("sig", P, "---")
    r.obs("turn", P, "---")
    r.obs("frp", P, "---")
    # Each asked for a fresh look at the others; the answers come in.
    assert {t for a in r.of(ProbeNow) for t in a.targets} == {("sig", P), ("turn", P), ("frp", P)}
    r.obs("sig", P, "-")
    r.obs("turn", P, "-")
    assert not r.of(StartFailover)
    holds = {h.service: h for h in r.of(Hold)}
    assert set(holds) == {"sig", "turn", "frp"}
    assert all(h.guard is Guard.ISOLATION for h in holds.values())
    assert "3 of 3 services are failing at once (frp, sig, turn)" in holds["frp"].reason
    assert "the monitor's own network is the likelier fault" in holds["frp"].reason


def test_isolation_holds_for_as_long_as_everything_stays_down():
    r = Run()
    for n in ("sig", "turn", "frp"):
        r.obs(n, P, "---")
    for n in ("sig", "turn", "frp"):
        r.obs(n, P, "-")
    r.t += 600  # long after the 10 s window: still "all at once"
    for n in ("sig", "turn", "frp"):
        r.obs(n, P, "-")
    r.send(Tick(r.t))
    assert not r.of(StartFailover)
    assert {s.hold.guard for s in r.state.services.values()} == {Guard.ISOLATION}


def test_failures_far_apart_are_not_isolation():
    r = Run()
    r.obs("turn", P, "---")  # turn has been down since long ago...
    r.obs("sig", P, "+")
    r.obs("frp", P, "+")
    turn_start = r.of(StartFailover)
    assert len(turn_start) == 1
    r.t += 300
    r.obs("sig", P, "---")  # ...and sig fails much later: a separate outage
    r.obs("turn", P, "-")
    r.obs("frp", P, "+")
    assert [a.service for a in r.of(StartFailover)] == ["turn", "sig"]


def test_isolation_lifts_when_the_others_come_back():
    r = Run()
    for n in ("sig", "turn", "frp"):
        r.obs(n, P, "---")
    r.obs("turn", P, "+")
    r.obs("frp", P, "+")
    r.obs("sig", P, "-")
    [start] = r.of(StartFailover)
    assert start.service == "sig"


def test_cooldown_then_failback_after_it_expires():
    r = Run()
    r.obs("sig", P, "---")
    r.obs("turn", P, "+")
    r.obs("frp", P, "+")
    t_done = r.t + 30
    r.send(InstanceRunning("sig", B, True, t_done - 20))
    r.send(FailoverFinished("sig", B, True, t_done, "moved", stopped_old=True))
    s = r.svc("sig")
    assert s.active is B and s.in_flight is None and s.primary.status is Status.STOPPED
    assert s.decision == "traffic moved to the backup: moved"
    # An operator starts the old primary again; it passes its probes.
    r.send(InstanceRunning("sig", P, True, t_done + 50))
    r.t = t_done + 50
    r.obs("sig", P, "++")
    r.t = t_done + 100
    r.obs("sig", B, "++---")
    r.obs("turn", P, "+")
    r.obs("frp", P, "+")
    guards = [h.guard for h in r.of(Hold) if h.service == "sig"]
    assert guards == [Guard.IN_FLIGHT, Guard.COOLDOWN]
    hold = r.of(Hold)[-1]
    assert "the last failover was " in hold.reason and "(cooldown 600s, " in hold.reason
    r.obs("turn", P, "+")
    r.obs("frp", P, "+")
    r.send(Tick(t_done + 600))
    starts = r.of(StartFailover)
    assert len(starts) == 2
    assert (starts[1].from_role, starts[1].to_role) == (B, P)
    assert r.of(HoldCleared)[-1].reason == "failover starting"


def test_hourly_cap():
    r = Run(pol=policy(cooldown=0, max_failovers_per_hour=1))
    r.obs("sig", P, "---")
    r.obs("turn", P, "+")
    r.obs("frp", P, "+")
    r.t += 1
    r.send(FailoverFinished("sig", B, False, r.t, "standby never became healthy"))
    r.obs("sig", P, "-")
    r.obs("turn", P, "+")
    r.obs("frp", P, "+")
    hold = r.of(Hold)[-1]
    assert hold.guard is Guard.RATE_LIMIT
    assert "1 failover(s) started in the last hour (max_failovers_per_hour 1)" in hold.reason
    # An hour after the attempt, it may try again.
    r.obs("turn", P, "+")
    r.obs("frp", P, "+")
    r.send(Tick(r.of(StartFailover)[0].at + 3600.01))
    assert len(r.of(StartFailover)) == 2


def test_failed_failover_alerts_and_counts_for_cooldown():
    r = Run()
    r.obs("sig", P, "---")
    r.obs("turn", P, "+")
    r.obs("frp", P, "+")
    r.send(FailoverFinished("sig", B, False, r.t + 1, "standby never passed 2 probes"))
    [alert] = r.of(Alert)
    assert alert.reason == "failover to the backup failed: standby never passed 2 probes"
    s = r.svc("sig")
    assert s.active is P and s.in_flight is None and s.alert == alert.reason


def test_both_down_alerts_once_and_holds():
    r = Run()
    r.send(InstanceRunning("sig", B, True, r.t))
    r.obs("sig", B, "---")
    r.obs("sig", P, "---")
    r.obs("turn", P, "+")
    r.obs("frp", P, "+")
    r.obs("sig", P, "---")
    [alert] = r.of(Alert)
    assert alert.reason == "both instances are down (the backup too: refused)"
    holds = [h for h in r.of(Hold) if h.service == "sig"]
    assert [h.guard for h in holds] == [Guard.BOTH_DOWN]
    assert not r.of(StartFailover)


def test_running_standby_not_yet_proven_is_held():
    r = Run()
    r.send(InstanceRunning("sig", B, True, r.t))
    r.obs("sig", B, "+")  # one pass, rise is 2
    r.obs("sig", P, "---")
    r.obs("turn", P, "+")
    r.obs("frp", P, "+")
    hold = r.of(Hold)[-1]
    assert hold.guard is Guard.STANDBY_UNHEALTHY
    assert "the running backup has not passed 2 probe(s) yet (it is unknown)" in hold.reason
    r.obs("sig", B, "+")
    r.obs("sig", P, "-")
    [start] = r.of(StartFailover)
    assert "failing over to the healthy standby" in start.reason


def test_pause_holds_and_resume_acts():
    r = Run()
    r.send(PauseChanged(True, r.t, by="cli"))
    assert r.of(Note)[-1].reason == "jupiterd paused by cli: no automatic action"
    r.obs("sig", P, "---")
    hold = r.of(Hold)[-1]
    assert hold.guard is Guard.PAUSED
    assert hold.reason.endswith("but jupiterd is paused (paused by cli)")
    r.obs("turn", P, "+")
    r.obs("frp", P, "+")
    r.send(PauseChanged(False, r.t, by="cli"))
    assert len(r.of(StartFailover)) == 1


def test_maintenance_tag_and_manual_mode_hold():
    r = Run()
    r.send(MaintenanceObserved("sig", True, r.t))
    r.obs("sig", P, "---")
    assert r.of(Hold)[-1].reason.endswith("but the service is in maintenance (instance tag)")
    pol = replace(policy(), auto_failover={"sig": False})
    r2 = Run(pol=pol)
    r2.obs("sig", P, "---")
    hold = r2.of(Hold)[-1]
    assert hold.guard is Guard.MANUAL and "run `jupiterd failover sig` to act" in hold.reason


def test_holds_are_not_repeated():
    r = Run()
    r.send(MaintenanceObserved("sig", True, r.t))
    r.obs("sig", P, "-" * 10)
    assert len(r.of(Hold)) == 1


def test_dry_run_outcome_changes_nothing_but_cooldown():
    r = Run()
    r.obs("sig", P, "---")
    r.obs("turn", P, "+")
    r.obs("frp", P, "+")
    r.send(FailoverFinished("sig", B, True, r.t, "plan of 9 steps logged", dry_run=True))
    s = r.svc("sig")
    assert s.active is P and s.in_flight is None and s.last_failover_at == r.t
    assert r.of(Note)[-1].reason == (
        "dry run: would have failed over to the backup (plan of 9 steps logged)"
    )
    r.obs("sig", P, "-")
    assert r.of(Hold)[-1].guard is Guard.COOLDOWN


def test_active_observed_from_aws_and_instance_state_events():
    r = Run()
    r.send(ActiveObserved("sig", B, r.t))
    assert r.svc("sig").active is B
    assert "changed outside this daemon" in r.of(Note)[-1].reason
    r.send(InstanceRunning("sig", P, False, r.t))
    tr = r.of(Transition)[-1]
    assert (tr.role, tr.old, tr.new) == (P, Status.UP, Status.STOPPED)
    r.send(InstanceRunning("sig", P, True, r.t + 1))
    assert r.svc("sig").primary.status is Status.UNKNOWN


def test_recovery_clears_hold_and_alert():
    r = Run()
    r.send(MaintenanceObserved("sig", True, r.t))
    r.obs("sig", P, "---")
    r.obs("sig", P, "++")
    cleared = r.of(HoldCleared)[-1]
    assert cleared.guard is Guard.MAINTENANCE
    assert cleared.reason == "the primary instance is recovering again" or "up" in cleared.reason
    assert r.svc("sig").hold is None and r.svc("sig").primary.status is Status.UP


def test_step_is_pure():
    r = Run()
    before = r.state
    snapshot = dict(before.services)
    step(before, Observation("sig", P, False, 99.0, "refused", ""), r.pol)
    assert dict(before.services) == snapshot


def test_unknown_service_event_is_ignored():
    r = Run()
    state, acts = step(r.state, Observation("gone", P, False, 1.0), r.pol)
    assert state is r.state and acts == []


# --------------------------------------------------------------------------- AWS trouble


def _due(r, name="sig"):
    """Make ``name``'s primary DOWN with the other services freshly up."""
    r.obs(name, P, "---")
    for other in ("sig", "turn", "frp"):
        if other != name:
            r.obs(other, P, "+")


def test_a_plan_that_changed_nothing_counts_toward_neither_cooldown_nor_cap():
    r = Run(pol=policy(max_failovers_per_hour=2))
    _due(r)
    assert r.svc("sig").attempts
    r.t += 1
    r.send(
        FailoverFinished(
            "sig", B, False, r.t, "preflight: no answer; nothing was changed", changed=False
        )
    )
    s = r.svc("sig")
    assert s.last_failover_at is None and s.attempts == ()
    # Retried with backoff, not held by the cooldown or the hourly cap.
    r.obs("sig", P, "-")
    hold = r.of(Hold)[-1]
    assert hold.guard is Guard.RETRY_BACKOFF
    assert "the last 1 plan(s) aborted before changing anything" in hold.reason
    for _ in range(3):  # more aborted plans than the hourly cap allows
        r.t = r.svc("sig").retry_at
        r.obs("turn", P, "+")
        r.obs("frp", P, "+")
        r.send(Tick(r.t))
        r.send(FailoverFinished("sig", B, False, r.t, "AccessDenied", changed=False))
    assert r.svc("sig").retries == 4
    assert r.svc("sig").retry_at - r.t == 16.0  # 2, 4, 8, 16 s
    r.t = r.svc("sig").retry_at
    r.obs("turn", P, "+")
    r.obs("frp", P, "+")
    r.send(Tick(r.t))
    assert len(r.of(StartFailover)) == 5
    assert Guard.RATE_LIMIT not in {h.guard for h in r.of(Hold)}
    assert Guard.COOLDOWN not in {h.guard for h in r.of(Hold)}


def test_a_plan_that_changed_something_still_counts():
    r = Run(pol=policy(max_failovers_per_hour=2))
    _due(r)
    r.t += 1
    r.send(FailoverFinished("sig", B, False, r.t, "rollback failed", changed=True))
    s = r.svc("sig")
    assert s.last_failover_at == r.t and len(s.attempts) == 1
    r.obs("sig", P, "-")
    assert r.of(Hold)[-1].guard is Guard.COOLDOWN


def test_retry_delay_is_bounded_by_the_cooldown():
    th = Thresholds.model_validate({**TH.model_dump(), "cooldown": 60})
    assert [retry_delay(n, th) for n in (1, 2, 3, 6, 7, 50)] == [2, 4, 8, 60, 60, 60]


def test_aws_unreachable_holds_and_the_failover_starts_when_aws_answers():
    """The fault matrix: AWS unreachable for longer than the cooldown while a
    failover is due; the plan aborts at preflight having changed nothing."""
    r = Run(pol=policy(cooldown=5, max_failovers_per_hour=1))
    _due(r)
    r.t += 1
    r.send(
        FailoverFinished(
            "sig",
            B,
            False,
            r.t,
            "preflight: cannot reach the AWS endpoint; nothing was changed",
            changed=False,
            aws_unreachable=True,
        )
    )
    hold = r.svc("sig").hold
    assert hold is not None and hold.guard is Guard.AWS_UNREACHABLE
    assert "AWS does not answer jupiterd's reads" in hold.reason
    assert "it starts as soon as AWS answers" in hold.reason
    # The daemon's own reads keep failing for longer than the cooldown.
    for _ in range(3):
        r.t += 4
        r.send(AwsReachability(False, r.t, "ec2:DescribeInstances: no answer"))
        r.obs("turn", P, "+")
        r.obs("frp", P, "+")
        r.send(Tick(r.t))
    assert len(r.of(StartFailover)) == 1
    s = r.svc("sig")
    assert s.hold.guard is Guard.AWS_UNREACHABLE
    assert s.attempts == () and s.last_failover_at is None
    assert r.state.aws_error == "ec2:DescribeInstances: no answer"
    acts = r.send(AwsReachability(True, r.t + 0.5))
    assert Note("*", "AWS answers again (after 14s)", r.t + 0.5) in acts
    starts = [a for a in acts if isinstance(a, StartFailover)]
    assert len(starts) == 1 and starts[0].to_role is B
    assert r.svc("sig").hold is None and r.state.aws_error is None


def test_aws_unreachable_holds_every_due_service_from_the_inventory_refresh():
    r = Run()
    r.send(AwsReachability(False, r.t, "no answer"))
    assert r.of(Note)[-1].reason == "AWS does not answer: no answer; retrying"
    _due(r)
    assert not r.of(StartFailover)
    assert r.svc("sig").hold.guard is Guard.AWS_UNREACHABLE
    r.send(AwsReachability(False, r.t + 1, "no answer"))  # no news: no actions
    assert r.send(AwsReachability(False, r.t + 2, "no answer")) == []
    r.send(AwsReachability(True, r.t + 3))
    assert len(r.of(StartFailover)) == 1


# --------------------------------------------------------------------------- both down


def _failed_over_and_fenced(r):
    _due(r)
    r.t += 1
    r.send(InstanceRunning("sig", B, True, r.t))
    r.send(FailoverFinished("sig", B, True, r.t, "moved", stopped_old=True))
    r.obs("sig", B, "++")


def test_a_dead_old_primary_stopped_by_the_failover_is_not_restarted():
    r = Run(pol=policy(cooldown=60))
    _failed_over_and_fenced(r)
    assert r.svc("sig").primary.known_down.startswith("3 consecutive probes failed")
    r.t += 100  # past the cooldown
    r.obs("sig", B, "---")
    r.obs("turn", P, "+")
    r.obs("frp", P, "+")
    r.t += 1000
    r.send(Tick(r.t))
    assert len(r.of(StartFailover)) == 1  # only the first failover
    s = r.svc("sig")
    assert s.hold.guard is Guard.BOTH_DOWN
    assert "the primary was stopped by the failover while failing" in s.hold.reason
    assert "not restarting it automatically" in s.hold.reason
    assert "run `jupiterd failover sig`" in s.hold.reason
    assert r.of(Alert)[-1].reason == s.alert
    # The operator starts it; once it passes its probes the traffic moves back.
    r.send(InstanceRunning("sig", P, True, r.t))
    assert r.svc("sig").primary.known_down is None
    r.obs("sig", P, "++")
    r.obs("sig", B, "-")
    assert len(r.of(StartFailover)) == 2
    assert r.of(StartFailover)[-1].to_role is P


def test_a_healthy_old_primary_stopped_by_a_failover_may_be_started():
    r = Run(pol=policy(cooldown=60))
    r.send(InstanceRunning("sig", B, True, r.t))
    r.obs("sig", B, "++")
    r.send(FailoverFinished("sig", B, True, r.t, "planned move", stopped_old=True))
    assert r.svc("sig").primary.known_down is None
    r.t += 100
    r.obs("sig", B, "---")
    r.obs("turn", P, "+")
    r.obs("frp", P, "+")
    [start] = r.of(StartFailover)
    assert start.to_role is P and "stopped standby" in start.reason


# --------------------------------------------------------------------------- monitor-only


def test_monitor_only_reports_a_due_failover_once_without_bookkeeping():
    pol = replace(policy(cooldown=600), monitor_only=True)
    r = Run(pol=pol)
    _due(r)
    [due] = r.of(FailoverDue)
    assert (due.service, due.from_role, due.to_role) == ("sig", P, B)
    assert "monitor-only mode changes nothing" in due.reason
    assert not r.of(StartFailover)
    s = r.svc("sig")
    assert s.in_flight is None and s.attempts == () and s.last_failover_at is None
    assert s.decision.startswith("failover due to the backup")
    r.obs("sig", P, "-----")
    r.send(Tick(r.t + 10))
    assert len(r.of(FailoverDue)) == 1  # once per outage
    # It recovers, and a later outage is reported again: no cooldown.
    r.obs("sig", P, "++")
    assert r.svc("sig").due_since is None
    r.t += 30
    _due(r)
    assert len(r.of(FailoverDue)) == 2
    assert not [h for h in r.of(Hold) if h.guard in (Guard.COOLDOWN, Guard.RATE_LIMIT)]


def test_monitor_only_still_reports_guards():
    pol = replace(policy(), monitor_only=True)
    r = Run(pol=pol)
    r.send(PauseChanged(True, r.t, by="cli"))
    _due(r)
    assert not r.of(FailoverDue)
    assert r.svc("sig").hold.guard is Guard.PAUSED
    r.send(PauseChanged(False, r.t, by="cli"))
    assert len(r.of(FailoverDue)) == 1
    assert r.svc("sig").hold is None
    # Paused and resumed again within the same outage: the hold is lifted,
    # the due failover is not reported twice.
    r.send(PauseChanged(True, r.t, by="cli"))
    assert r.svc("sig").hold.guard is Guard.PAUSED
    r.send(PauseChanged(False, r.t, by="cli"))
    assert r.svc("sig").hold is None and len(r.of(FailoverDue)) == 1
