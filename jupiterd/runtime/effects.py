"""What each action of the decision machine does: a log line, metrics, a
probe woken, a watch started or stopped, a failover plan started.

The supervisor hands every action of a ``step`` to ``Effects.apply`` and,
once the step's actions are done, lets ``Effects.export`` bring the gauges
of the services it touched up to date.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jupiterd.core.health import (
    Action,
    ActiveObserved,
    Alert,
    Event,
    FailoverDue,
    FailoverFinished,
    Guard,
    Hold,
    HoldCleared,
    JournalHold,
    MaintenanceObserved,
    Note,
    PauseChanged,
    Prewarm,
    PrewarmCapped,
    PrewarmUndo,
    ProbeNow,
    StartFailover,
    Transition,
)
from jupiterd.core.types import Role, Status

if TYPE_CHECKING:
    from jupiterd.runtime.supervisor import Supervisor

# Actions and events that change what a service's metrics show (tuples: a
# union type would be built anew at each isinstance on the hot path).
_SERVICE_ACTIONS = (Transition, StartFailover, FailoverDue, Hold, HoldCleared, Alert, Note)
_SERVICE_EVENTS = (FailoverFinished, ActiveObserved, MaintenanceObserved, JournalHold)


class Effects:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self._exported: dict[str, tuple[Any, ...]] = {}
        self._degraded_exported = False

    def apply(self, a: Action) -> None:
        sup = self.sup
        log = sup.log
        if isinstance(a, Transition):
            level = log.warning if a.new in (Status.DOWN, Status.SUSPECT) else log.info
            level(
                "target state",
                service=a.service,
                role=a.role.value,
                old=a.old.value,
                new=a.new.value,
                reason=a.reason,
            )
            sup.metrics.target_state.labels(a.service, a.role.value).state(a.new.value)
            sup.metrics.target_transitions.labels(a.service, a.role.value, a.new.value).inc()
            sup.probes.update_watch(a.service, a.role, a.new)
            if a.new is Status.UNKNOWN and a.old is Status.STOPPED:
                sup.probes.wake((a.service, a.role))
        elif isinstance(a, StartFailover):
            log.warning(
                "failover decided",
                service=a.service,
                role=a.from_role.value,
                to=a.to_role.value,
                reason=a.reason,
            )
            sup.plans.start(a)
            sup.standbys.failover_started(a.service)
        elif isinstance(a, FailoverDue):
            log.warning(
                "failover due",
                service=a.service,
                role=a.from_role.value,
                to=a.to_role.value,
                reason=a.reason,
                mode="monitor_only",
            )
            sup.metrics.failovers_due.labels(a.service).inc()
        elif isinstance(a, Hold):
            log.warning("failover held", service=a.service, guard=a.guard.value, reason=a.reason)
            sup.metrics.holds.labels(a.service, a.guard.value).inc()
        elif isinstance(a, HoldCleared):
            log.info("hold cleared", service=a.service, guard=a.guard.value, reason=a.reason)
        elif isinstance(a, Alert):
            log.error("alert", service=a.service, reason=a.reason)
        elif isinstance(a, ProbeNow):
            log.info("probing now", targets=[f"{s}/{r}" for s, r in a.targets], reason=a.reason)
            for key in a.targets:
                sup.probes.wake(key)
        elif isinstance(a, Note):
            log.info("decision", service=a.service, reason=a.reason)
        elif isinstance(a, Prewarm | PrewarmUndo | PrewarmCapped):
            sup.standbys.apply(a)

    def export(self, event: Event, actions: list[Action]) -> None:
        """After a step: the gauges its event and actions may have changed."""
        sup = self.sup
        touched = {a.service for a in actions if isinstance(a, _SERVICE_ACTIONS)}
        if isinstance(event, _SERVICE_EVENTS):
            touched.add(event.service)
        if isinstance(event, PauseChanged):
            sup.metrics.paused.set(1 if sup.state.paused else 0)
        if (sup.state.degraded is not None) != self._degraded_exported:
            self._degraded_exported = sup.state.degraded is not None
            sup.metrics.monitor_degraded.set(1 if self._degraded_exported else 0)
        for name in touched:
            if name in sup.state.services:
                self.sync_service(name)

    def sync_service(self, name: str) -> None:
        """Export a service's gauges, touching only those whose value changed
        (this runs after every decision; label lookups are not free)."""
        s = self.sup.state.services[name]
        now = (
            s.active,
            s.target(s.active).status is Status.UP,
            s.hold.guard if s.hold is not None else None,
            bool(s.alert),
            s.in_flight is not None,
        )
        before = self._exported.get(name)
        if before == now:
            return
        self._exported[name] = now
        m = self.sup.metrics
        active, up, guard, alert, in_flight = now
        if before is None or before[0] is not active:
            for role in Role:
                m.active_role.labels(name, role.value).set(1 if active is role else 0)
        if before is None or before[1] != up:
            m.service_up.labels(name).set(1 if up else 0)
        if before is None or before[2] is not guard:
            for g in Guard:
                if before is None or g in (guard, before[2]):
                    m.hold_active.labels(name, g.value).set(1 if g is guard else 0)
        if before is None or before[3] != alert:
            m.alert_active.labels(name).set(1 if alert else 0)
        if before is None or before[4] != in_flight:
            m.failover_in_progress.labels(name).set(1 if in_flight else 0)
