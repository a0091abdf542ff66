"""One target's hysteresis (UNKNOWN, UP, SUSPECT, DOWN, RECOVERING, STOPPED),
probes failing on the monitor's side, and how often a target is probed."""

from __future__ import annotations

from dataclasses import replace

from jupiterd.config import Thresholds
from jupiterd.core.health.state import MachineState, MonitorTrouble, ServiceState, TargetState
from jupiterd.core.types import Status

# --------------------------------------------------------------------------- targets


def _fmt(seconds: float) -> str:
    return f"{seconds:.3g}s" if seconds < 10 else f"{seconds:.0f}s"


def observe(
    t: TargetState, ok: bool, at: float, th: Thresholds, reason: str, detail: str
) -> TargetState:
    """Apply one probe result to a target's hysteresis."""
    if t.status is Status.STOPPED:
        return t  # a late result from before the stop: ignore
    if ok:
        streak = t.ok_streak + 1
        base = replace(
            t,
            ok_streak=streak,
            fail_streak=0,
            last_probe_at=at,
            last_reason=reason,
            last_detail=detail,
        )
        if t.status is Status.UP:
            return base
        if t.status is Status.SUSPECT:
            # Never reached DOWN: one success is enough to trust it again.
            return replace(
                base,
                status=Status.UP,
                since=at,
                failing_since=None,
                why=f"probe passed again after {t.fail_streak} failure(s)",
            )
        if streak >= th.rise:
            what = "first" if t.status is Status.UNKNOWN else "after being down,"
            return replace(
                base,
                status=Status.UP,
                since=at,
                failing_since=None,
                why=f"{what} {streak} consecutive probe(s) passed (rise {th.rise})",
            )
        if t.status is Status.DOWN:
            return replace(
                base,
                status=Status.RECOVERING,
                since=at,
                why=f"probe passed, {streak} of {th.rise} needed to come back up",
            )
        return base
    failing_since = t.failing_since if t.fail_streak > 0 and t.failing_since is not None else at
    streak = t.fail_streak + 1
    base = replace(
        t,
        fail_streak=streak,
        ok_streak=0,
        failing_since=failing_since,
        last_probe_at=at,
        last_reason=reason,
        last_detail=detail,
    )
    if t.status is Status.DOWN:
        return base
    if t.status is Status.RECOVERING:
        return replace(
            base, status=Status.DOWN, since=at, why=f"failed again while recovering: {reason}"
        )
    failing_for = at - failing_since
    if streak >= th.fall and failing_for >= th.min_down:
        return replace(
            base,
            status=Status.DOWN,
            since=at,
            why=f"{streak} consecutive probes failed over {_fmt(failing_for)} "
            f"(fall {th.fall}): {reason}: {detail}".rstrip(": "),
        )
    if t.status is Status.UP:
        return replace(base, status=Status.SUSPECT, since=at, why=f"probe failed: {reason}")
    return base


def _troubled(trouble: MonitorTrouble | None, cause: str, detail: str, at: float) -> MonitorTrouble:
    if trouble is None:
        return MonitorTrouble(cause, detail, at)
    return replace(trouble, cause=cause, detail=detail, errors=trouble.errors + 1, clean=0)


def _cleaner(trouble: MonitorTrouble | None, needed: int) -> MonitorTrouble | None:
    """One more probe completed without a monitor error: ``needed`` in a row end it."""
    if trouble is None or trouble.clean + 1 >= needed:
        return None
    return replace(trouble, clean=trouble.clean + 1)


def monitor_error(t: TargetState, cause: str, detail: str, at: float) -> TargetState:
    """A probe that failed on the monitor's side says nothing of the target:
    its status, streaks and last look stay as they were; the trouble is noted."""
    if t.status is Status.STOPPED:
        return t
    return replace(t, trouble=_troubled(t.trouble, cause, detail, at))


def host_clean_needed(state: MachineState) -> int:
    """Probes that must complete in a row, anywhere, to end a host-wide trouble:
    about one round of the services' active targets."""
    return max(2, len(state.services))


def _monitor_trouble(state: MachineState, s: ServiceState) -> str | None:
    """Why this service's failover cannot be trusted to the probes now."""
    d = state.degraded
    if d is not None:
        return (
            f"probes are failing on this host, not at the targets ({d.cause}: {d.detail}); "
            "held until they complete again"
        )
    for role in (s.active, s.active.other):
        t = s.target(role).trouble
        if t is not None:
            return (
                f"the {role} instance cannot be probed from this host ({t.cause}: {t.detail}); "
                "held until its probes complete again"
            )
    return None


def probe_interval(t: TargetState, th: Thresholds) -> float | None:
    """Seconds until this target's next probe; None while it is not probed."""
    if t.status is Status.STOPPED:
        return None
    if t.fail_streak > 0 and t.status is not Status.DOWN:
        return th.fast_interval  # confirm a failure quickly (HAProxy's fastinter)
    if t.status is Status.RECOVERING:
        return th.fast_interval  # and a recovery
    # A new target passing its first probes is not urgent: probing every
    # new target at the fast interval would make start-up a thundering herd.
    return th.interval
