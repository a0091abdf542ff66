"""The supervisor: probes in, events through the pure machine, actions out.

It owns the I/O around ``machine.step``: it schedules probes (one
``TargetLoop`` per instance), turns results and inventory snapshots into
events, and carries out the actions: logs, metrics, probe wake-ups and
failover plans on the executor. Everything runs on one asyncio loop, so a
``dispatch`` is atomic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import probes
from jupiterd import __version__
from jupiterd.config import Config
from jupiterd.core.execution import Executor, FailoverOutcome, FailoverRequest, direction_of
from jupiterd.core.health import (
    Action,
    ActiveObserved,
    Alert,
    AwsReachability,
    Event,
    FailoverDue,
    FailoverFinished,
    Guard,
    Hold,
    HoldCleared,
    InstanceRunning,
    JournalHold,
    MachineState,
    MaintenanceObserved,
    MonitorTrouble,
    Note,
    Observation,
    PauseChanged,
    Policy,
    ProbeNow,
    ServiceState,
    StartFailover,
    Tick,
    Transition,
    probe_interval,
    step,
)
from jupiterd.core.inventory import Inventory, ServiceView
from jupiterd.core.types import Role, Status
from jupiterd.runtime.heartbeat import CONFIRM_SPACING, Heartbeat, link_for
from jupiterd.runtime.probe_loop import LagMonitor, ProbeSpec, TargetLoop
from jupiterd.runtime.sd_notify import Notifier
from jupiterd.runtime.watch import Watch
from jupiterd.state import statefile
from jupiterd.state.journal import Journal, JournalError, LockBusy, PlanLock, held_services
from jupiterd.telemetry import logs
from jupiterd.telemetry.metrics import Metrics
from probes import ProbeResult
from probes.options import parse_hostport

TICK_SECONDS = 1.0
HEALTHY_AFTER_SECONDS = 5.0  # /healthz fails when the main loop has not run for this long
SHUTDOWN_GRACE_SECONDS = 5.0
REFRESH_SECONDS = 30.0
INITIAL_INVENTORY_SECONDS = 1.0  # how long start-up waits for AWS before probing anyway
# While AWS does not answer, it is re-read after 1 s, doubling up to 10 s,
# each wait jittered down to half so that many daemons do not retry in step.
AWS_RETRY_SECONDS = (1.0, 10.0)
PAUSE_FILE = "paused"
PAUSE_MAX_BYTES = 4096
BY_MAX = 100  # characters of who paused or resumed


def parse_pause(data: bytes) -> str:
    """The pause flag's content: ``{"by": str, "at": number}``; who paused."""
    doc = statefile.loads(data)
    if not isinstance(doc, dict):
        raise statefile.Invalid("not a JSON object")
    by = statefile.text_field(doc, "by", 2 * BY_MAX)
    statefile.number_field(doc, "at")
    return statefile.clean_text(by or "", BY_MAX) or "a previous run"


def _utc(at: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(at))


def policy_of(config: Config) -> Policy:
    return Policy(
        thresholds={n: config.thresholds(n) for n in config.services},
        isolation=config.guards.isolation,
        auto_failover={n: s.auto_failover for n, s in config.services.items()},
        monitor_only=not config.aws.enabled,
    )


@dataclass(frozen=True, slots=True)
class ProbeEvent:
    """A probe result, as observers see it."""

    service: str
    role: Role
    result: ProbeResult
    at: float


@dataclass(frozen=True, slots=True)
class PlanEvent:
    """A finished plan, as observers see it."""

    request: FailoverRequest
    outcome: FailoverOutcome
    at: float


Observer = Callable[[Action | ProbeEvent | PlanEvent], None]

# Actions and events that change what a service's metrics show (tuples: a
# union type would be built anew at each isinstance on the hot path).
_SERVICE_ACTIONS = (Transition, StartFailover, FailoverDue, Hold, HoldCleared, Alert, Note)
_SERVICE_EVENTS = (FailoverFinished, ActiveObserved, MaintenanceObserved, JournalHold)


@dataclass(slots=True)
class _Target:
    loop: TargetLoop
    address: str | None
    instance_id: str | None
    labels: tuple[Any, Any, Any]  # cached metric children: success, duration, kind
    watch: Watch | None = None
    heartbeat: Heartbeat | None = None
    results: dict[str, Any] = field(default_factory=dict)  # reason -> counter child


class Supervisor:
    def __init__(
        self,
        config: Config,
        *,
        executor: Executor,
        inventory: Inventory,
        metrics: Metrics | None = None,
        notifier: Notifier | None = None,
        config_path: str | None = None,
        rng: random.Random | None = None,
        refresh_seconds: float = REFRESH_SECONDS,
        tick_seconds: float = TICK_SECONDS,
        aws_retry_seconds: tuple[float, float] = AWS_RETRY_SECONDS,
    ) -> None:
        self.config = config
        self.policy = policy_of(config)
        self.executor = executor
        self.inventory = inventory
        self.metrics = metrics or Metrics()
        self.notifier = notifier or Notifier({})
        self.config_path = config_path
        self.rng = rng or random.Random()
        self.refresh_seconds = refresh_seconds
        self.tick_seconds = tick_seconds
        self.aws_retry_seconds = aws_retry_seconds
        self._aws_retry: asyncio.Task[None] | None = None
        self.log = logs.get("jupiterd")
        self.state = MachineState.initial(config.services, paused=config.guards.paused)
        self.targets: dict[tuple[str, Role], _Target] = {}
        self.views: dict[str, ServiceView] = {}
        self.plans: dict[str, asyncio.Task[None]] = {}
        self.outcomes: deque[dict[str, Any]] = deque(maxlen=20)
        self.heartbeat = 0.0  # loop time of the last main-loop tick
        self.started_wall = time.time()
        self.last_reload: dict[str, Any] = {"ok": True, "at": self.started_wall, "error": None}
        self.inventory_error: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._exported: dict[str, tuple[Any, ...]] = {}
        # Called with every action, probe result and finished plan (the
        # sandbox's drill timeline; tests).
        self.observers: list[Observer] = []
        self.drills: Any = None  # the scheduled drills' runner, for /status
        self.lag = LagMonitor()  # a probe that timed out in a loop stall is not the target's
        self._degraded_exported = False
        self.pause_error: str | None = None  # why the pause flag does not say what we do
        self.state_files: list[dict[str, Any]] = []  # damaged files not yet acknowledged
        self._damage_seen = 0  # statefile events already counted
        self._stuck: list[statefile.Damage] = []  # damage that could not be moved aside
        self._state_files_exported = False

    # ------------------------------------------------------------------ time

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def wall(self, at: float | None) -> float | None:
        """A loop-clock time as Unix time, for people and /status."""
        if at is None:
            return None
        return time.time() - (self.now() - at)

    # ------------------------------------------------------------------ start/stop

    async def start(self) -> None:
        self._load_pause()
        await asyncio.to_thread(self._check_journal)
        self.sync_state_files()
        self.metrics.paused.set(1 if self.state.paused else 0)
        self.metrics.reload_success.set(1)
        self.metrics.reload_timestamp.set(self.started_wall)
        # Start from what AWS says when it answers promptly; when it does not
        # (an API outage, a throttled account), probe the configured addresses
        # meanwhile: the refresh lands when it lands.
        first = asyncio.create_task(self.refresh_inventory(), name="inventory-first")
        self._tasks.append(first)
        done, _ = await asyncio.wait({first}, timeout=INITIAL_INVENTORY_SECONDS)
        if not done:
            self.log.warning(
                "AWS has not answered yet: probing the configured addresses meanwhile",
                waited_seconds=INITIAL_INVENTORY_SECONDS,
            )
        self.lag.start()
        self.metrics.monitor_degraded.set(0)
        for name in self.config.services:
            for role in Role:
                self._add_target(name, role)
        self.metrics.targets.set(len(self.targets))
        for name in self.config.services:
            self._sync_service_metrics(name)
        self.heartbeat = self.now()
        self._tasks.append(asyncio.create_task(self._tick_loop(), name="tick"))
        self._tasks.append(asyncio.create_task(self._refresh_loop(), name="inventory"))
        self.log.info(
            "started",
            services=len(self.config.services),
            targets=len(self.targets),
            paused=self.state.paused,
            version=__version__,
        )

    async def stop(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
        """Stop probing; give a plan in flight ``grace`` seconds to finish
        its step (the journal lets the next start resume it), then cancel."""
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for target in self.targets.values():
            if target.watch is not None:
                target.watch.stop()
            if target.heartbeat is not None:
                target.heartbeat.stop()
        await asyncio.gather(*(target.loop.stop() for target in self.targets.values()))
        await self.lag.stop()
        running = [t for t in self.plans.values() if not t.done()]
        if running:
            self.log.warning("stopping with a plan in flight", grace_seconds=grace)
            _, pending = await asyncio.wait(running, timeout=grace)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self.log.info("stopped")

    # ------------------------------------------------------------------ targets

    def _spec(self, name: str, address: str | None) -> ProbeSpec | None:
        if address is None:
            return None
        svc = self.config.services[name]
        return ProbeSpec(
            kind=probes.get_kind(svc.probe.kind),
            target=svc.probe.target_for(address),
            options=svc.probe.parsed_options,
            timeout=self.policy.thresholds[name].timeout,
        )

    def _address(self, name: str, role: Role) -> tuple[str | None, str | None]:
        ref = (
            self.config.services[name].primary
            if role is Role.PRIMARY
            else self.config.services[name].backup
        )
        view = self.views.get(name)
        info = view.instance(role) if view is not None else None
        address = ref.address or (info.address if info is not None else None)
        instance_id = ref.instance_id or (info.instance_id if info is not None else None)
        return address, instance_id

    def _add_target(self, name: str, role: Role) -> None:
        address, instance_id = self._address(name, role)
        kind = self.config.services[name].probe.kind
        m = self.metrics
        labels = (
            m.probe_success.labels(name, role.value, kind),
            m.probe_duration.labels(name, role.value, kind),
            kind,
        )
        loop = TargetLoop(
            f"probe:{name}:{role}",
            self._spec(name, address),
            lambda result, end: self._on_result(name, role, result, end),
            lambda: self._interval(name, role),
            rng=self.rng,
            on_late=m.probe_lateness.observe,
            on_skip=m.probes_skipped.labels(name, role.value).inc,
            lag=self.lag,
        )
        self.targets[(name, role)] = _Target(loop, address, instance_id, labels)
        m.target_state.labels(name, role.value).state(
            self.state.services[name].target(role).status.value
        )
        loop.start()

    def _update_watch(self, name: str, role: Role, status: Status) -> None:
        """Watch a target only while it is up: then a close means news."""
        t = self.targets.get((name, role))
        if t is None:
            return
        spec = t.loop.spec
        streams = self._update_heartbeat(name, role, t, status is Status.UP)
        wanted = (
            status is Status.UP
            and spec is not None
            and self.config.services[name].probe.watch_enabled
            and not streams  # the heartbeat's own connection tells a close
            and not self._stopping
        )
        if not wanted:
            if t.watch is not None:
                t.watch.stop()
            return
        assert spec is not None
        hp = parse_hostport(spec.target, spec.kind.default_port)
        if t.watch is None or (t.watch.host, t.watch.port) != (hp.host, hp.port):
            if t.watch is not None:
                t.watch.stop()
            counter = self.metrics.watch_closes.labels(name, role.value)

            def closed(loop: TargetLoop = t.loop) -> None:
                counter.inc()
                loop.wake()

            t.watch = Watch(hp.host, hp.port, closed)
        t.watch.start()

    def _update_heartbeat(self, name: str, role: Role, t: _Target, up: bool) -> bool:
        """Run a target's heartbeat while it is up; True while it runs over TCP."""
        spec = t.loop.spec
        settings = self.config.services[name].probe.heartbeat_settings
        if not up or spec is None or settings is None or self._stopping:
            if t.heartbeat is not None:
                t.heartbeat.stop()
                t.heartbeat = None
            return False
        first = link_for(spec.kind.name, spec.target, spec.options)
        if first is None:
            return False
        if t.heartbeat is None:
            counter = self.metrics.heartbeat_misses.labels(name, role.value)
            target = spec.target

            def make(kind: str = spec.kind.name, options: Any = spec.options) -> Any:
                return link_for(kind, target, options)

            def missed(loop: TargetLoop = t.loop) -> None:
                fall = self.policy.thresholds[name].fall  # as reloaded
                counter.inc()
                self.log.info(
                    "heartbeat missed: confirming with full probes",
                    service=name,
                    role=role.value,
                    silent_seconds=settings.interval * settings.multiplier,
                    probes=fall,
                )
                loop.confirm(fall, CONFIRM_SPACING)

            def closed(loop: TargetLoop = t.loop) -> None:
                loop.wake()

            t.heartbeat = Heartbeat(make, settings.interval, settings.multiplier, missed, closed)
        t.heartbeat.start()
        return not first.pipelined

    def _interval(self, name: str, role: Role) -> tuple[float | None, float]:
        th = self.policy.thresholds[name]
        s = self.state.services.get(name)
        if s is None:
            return None, 0.0
        return probe_interval(s.target(role), th), th.jitter

    def _on_result(self, name: str, role: Role, result: ProbeResult, at: float) -> None:
        t = self.targets.get((name, role))
        if t is None or self._stopping:
            return
        success, duration, kind = t.labels
        cause = result.cause
        if cause is None:  # a monitor error is no verdict on the target
            success.set(1 if result.ok else 0)
            duration.observe(result.duration_seconds)
        else:
            self.metrics.monitor_errors.labels(name, role.value, cause.value).inc()
        reason = result.reason.value
        counter = t.results.get(reason)
        if counter is None:
            counter = t.results[reason] = self.metrics.probe_results.labels(
                name, role.value, kind, reason
            )
        counter.inc()
        for observe in self.observers:
            observe(ProbeEvent(name, role, result, at))
        if not result.ok:
            self.log.debug(
                "probe failed",
                service=name,
                role=role.value,
                target=result.target,
                reason=result.reason.value,
                detail=result.detail,
            )
        self.dispatch(
            Observation(
                name,
                role,
                result.ok,
                at,
                result.reason.value,
                result.detail,
                cause=None if cause is None else cause.value,
                host_wide=cause is not None and cause.host_wide,
            )
        )

    # ------------------------------------------------------------------ events and actions

    def dispatch(self, event: Event) -> list[Action]:
        self.state, actions = step(self.state, event, self.policy)
        touched: set[str] = set()
        for a in actions:
            self._apply(a)
            for observe in self.observers:
                observe(a)
            if isinstance(a, _SERVICE_ACTIONS):
                touched.add(a.service)
        if isinstance(event, _SERVICE_EVENTS):
            touched.add(event.service)
        if isinstance(event, PauseChanged):
            self.metrics.paused.set(1 if self.state.paused else 0)
        if (self.state.degraded is not None) != self._degraded_exported:
            self._degraded_exported = self.state.degraded is not None
            self.metrics.monitor_degraded.set(1 if self._degraded_exported else 0)
        for name in touched:
            if name in self.state.services:
                self._sync_service_metrics(name)
        return actions

    def _apply(self, a: Action) -> None:
        log = self.log
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
            self.metrics.target_state.labels(a.service, a.role.value).state(a.new.value)
            self.metrics.target_transitions.labels(a.service, a.role.value, a.new.value).inc()
            self._update_watch(a.service, a.role, a.new)
            if a.new is Status.UNKNOWN and a.old is Status.STOPPED:
                t = self.targets.get((a.service, a.role))
                if t is not None:
                    t.loop.wake()
        elif isinstance(a, StartFailover):
            log.warning(
                "failover decided",
                service=a.service,
                role=a.from_role.value,
                to=a.to_role.value,
                reason=a.reason,
            )
            self._start_plan(a)
        elif isinstance(a, FailoverDue):
            log.warning(
                "failover due",
                service=a.service,
                role=a.from_role.value,
                to=a.to_role.value,
                reason=a.reason,
                mode="monitor_only",
            )
            self.metrics.failovers_due.labels(a.service).inc()
        elif isinstance(a, Hold):
            log.warning("failover held", service=a.service, guard=a.guard.value, reason=a.reason)
            self.metrics.holds.labels(a.service, a.guard.value).inc()
        elif isinstance(a, HoldCleared):
            log.info("hold cleared", service=a.service, guard=a.guard.value, reason=a.reason)
        elif isinstance(a, Alert):
            log.error("alert", service=a.service, reason=a.reason)
        elif isinstance(a, ProbeNow):
            log.info("probing now", targets=[f"{s}/{r}" for s, r in a.targets], reason=a.reason)
            for key in a.targets:
                t = self.targets.get(key)
                if t is not None:
                    t.loop.wake()
        elif isinstance(a, Note):
            log.info("decision", service=a.service, reason=a.reason)

    def _sync_service_metrics(self, name: str) -> None:
        """Export a service's gauges, touching only those whose value changed
        (this runs after every decision; label lookups are not free)."""
        s = self.state.services[name]
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
        m = self.metrics
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

    # ------------------------------------------------------------------ failovers

    def _start_plan(self, a: StartFailover) -> None:
        req = FailoverRequest(a.service, a.from_role, a.to_role, a.reason, "daemon")
        self.plans[a.service] = asyncio.create_task(self._run_plan(req), name=f"plan:{a.service}")

    async def _run_plan(self, req: FailoverRequest) -> None:
        started = time.monotonic()
        try:
            outcome = await self.executor.run(req)
        except asyncio.CancelledError:
            self.log.warning(
                "plan interrupted by shutdown; the journal resumes it at the next start",
                service=req.service,
            )
            raise
        except Exception as exc:  # an executor bug must not take the daemon down
            self.log.exception("executor failed", service=req.service)
            outcome = FailoverOutcome(
                req.service,
                req.from_role,
                req.to_role,
                "failed",
                f"internal error in the executor: {exc!r}",
                time.monotonic() - started,
            )
        self._record_outcome(req, outcome)
        self.dispatch(self._finished(outcome))
        if outcome.result != "dry_run":
            with contextlib.suppress(Exception):
                await self.refresh_inventory()

    def resumed(self, o: FailoverOutcome) -> None:
        """A plan a crash interrupted, finished by the executor at start."""
        req = FailoverRequest(
            o.service, o.from_role, o.to_role, "resumed after a restart", "resume"
        )
        self.log.warning(
            "resumed an interrupted plan", service=o.service, result=o.result, detail=o.detail
        )
        self._record_outcome(req, o)
        if o.service in self.state.services:
            self.dispatch(self._finished(o))

    def _finished(self, o: FailoverOutcome) -> FailoverFinished:
        return FailoverFinished(
            o.service,
            o.to_role,
            o.ok,
            self.now(),
            o.detail,
            stopped_old=o.stopped_old,
            dry_run=o.result == "dry_run",
            changed=o.changed,
            aws_unreachable=o.aws_unreachable,
        )

    def _record_outcome(self, req: FailoverRequest, o: FailoverOutcome) -> None:
        m = self.metrics
        direction = req.direction
        m.failovers.labels(req.service, direction, o.result).inc()
        m.failover_duration.labels(req.service, direction).observe(o.seconds)
        m.last_failover.labels(req.service).set(time.time())
        entry = {
            "service": req.service,
            "direction": direction,
            "from": req.from_role.value,
            "to": req.to_role.value,
            "result": o.result,
            "detail": o.detail,
            "seconds": round(o.seconds, 3),
            "finished_at": time.time(),
            "reason": req.reason,
            "steps": [
                {"name": s.name, "ok": s.ok, "seconds": round(s.seconds, 3), "detail": s.detail}
                for s in o.steps
            ],
        }
        self.outcomes.append(entry)
        for observe in self.observers:
            observe(PlanEvent(req, o, self.now()))
        log = self.log.info if o.ok or o.result == "dry_run" else self.log.error
        log(
            "plan finished",
            service=req.service,
            direction=direction,
            result=o.result,
            seconds=round(o.seconds, 3),
            detail=o.detail,
        )

    # ------------------------------------------------------------------ inventory

    async def refresh_inventory(self) -> None:
        try:
            views = await self.inventory.snapshot()
        except Exception as exc:
            msg = f"{type(exc).__name__}: {exc}"
            if msg != self.inventory_error:
                self.log.error("inventory refresh failed; keeping the last known state", error=msg)
            self.inventory_error = msg
            # AwsError's metric label (this module does not import boto3):
            # unreachable or throttled is no answer; any other is an answer
            # (a denial, say), which a plan's preflight reports for itself.
            answer = getattr(exc, "result", None)
            if answer in ("unreachable", "throttled"):
                self.dispatch(AwsReachability(False, self.now(), str(exc)))
            elif answer is not None and self.state.aws_error is not None:
                self.dispatch(AwsReachability(True, self.now()))
            if self.state.aws_error is not None:
                self._retry_aws()
            return
        if self.inventory_error is not None:
            self.log.info("inventory refresh works again")
        self.inventory_error = None
        self.apply_views(views)
        if self.state.aws_error is not None:
            self.dispatch(AwsReachability(True, self.now()))

    def _retry_aws(self) -> None:
        """Re-read AWS with a bounded, jittered backoff while it does not
        answer (a plan's preflight or the refresh found it so)."""
        if self._stopping or (self._aws_retry is not None and not self._aws_retry.done()):
            return
        self._aws_retry = asyncio.create_task(self._aws_retry_loop(), name="aws-retry")
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(self._aws_retry)

    async def _aws_retry_loop(self) -> None:
        first, most = self.aws_retry_seconds
        delay = first
        while self.state.aws_error is not None:
            await asyncio.sleep(delay * (0.5 + self.rng.random() / 2))
            if any(not t.done() for t in self.plans.values()):
                continue  # a plan reads AWS itself; its outcome says
            await self.refresh_inventory()
            delay = min(delay * 2, most)

    def apply_views(self, views: Mapping[str, ServiceView]) -> None:
        at = self.now()
        self.views.update(views)
        for name, view in views.items():
            if name not in self.state.services:
                continue
            current = self.state.services[name]
            for role in Role:
                info = view.instance(role)
                # Only news becomes an event: a refresh of an unchanged fleet
                # costs no decisions.
                stopped = current.target(role).status is Status.STOPPED
                known = info.state in (
                    "running",
                    "stopped",
                    "terminated",
                    "stopping",
                    "shutting-down",
                )
                if known and info.running == stopped:
                    self.dispatch(InstanceRunning(name, role, info.running, at))
                t = self.targets.get((name, role))
                if t is not None:
                    address, instance_id = self._address(name, role)
                    t.instance_id = instance_id
                    if address != t.address:
                        t.address = address
                        t.loop.spec = self._spec(name, address)
                        if t.heartbeat is not None:
                            t.heartbeat.stop()  # the next one goes to the new address
                            t.heartbeat = None
                        t.loop.wake()  # a target that had no address waits for this
                        status = self.state.services[name].target(role).status
                        self._update_watch(name, role, status)
            if view.active is not None and view.active is not current.active:
                self.dispatch(ActiveObserved(name, view.active, at))
            maintenance = view.primary.maintenance or view.backup.maintenance
            if maintenance != current.maintenance:
                self.dispatch(MaintenanceObserved(name, maintenance, at))

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            if not any(not t.done() for t in self.plans.values()):
                await self.refresh_inventory()

    # ------------------------------------------------------------------ heartbeat

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_seconds)
            self.heartbeat = self.now()
            self.metrics.heartbeat.set(time.time())
            self.dispatch(Tick(self.heartbeat))
            self.sync_state_files()
            if self.healthy():
                self.notifier.watchdog()

    def healthy(self) -> bool:
        return self.now() - self.heartbeat < max(HEALTHY_AFTER_SECONDS, 3 * self.tick_seconds)

    # ------------------------------------------------------------------ pause

    def _pause_path(self) -> Path:
        return Path(self.config.state_dir) / PAUSE_FILE

    def _load_pause(self) -> None:
        """A pause survives restarts: an operator's maintenance window must not
        end because systemd restarted the daemon. A damaged flag most likely
        was a pause: it is moved aside and jupiterd stays paused (saying so)
        until someone resumes it."""
        try:
            by = statefile.read(
                self._pause_path(), statefile.PAUSE_FLAG, parse_pause, PAUSE_MAX_BYTES
            )
        except statefile.Damaged as exc:
            where = f"moved aside to {exc.moved_to.name}" if exc.moved_to else "left in place"
            shown = (
                f"jupiterd, because the pause flag was damaged ({where}); "
                "`jupiterd resume` ends the pause"
            )
            self.set_paused(True, "jupiterd (the pause flag was damaged)", shown=shown)
            return
        if by is not None:
            self.dispatch(PauseChanged(True, self.now(), by=by))

    def set_paused(self, paused: bool, by: str, *, shown: str | None = None) -> str | None:
        """Pause or resume, and save it in the flag file. Returns None when
        saved, else the sentence why not: the new state then holds in memory
        only (a pause is still a pause), and /status says it is not saved.
        ``shown``: who paused, as /status says it (default: ``by``)."""
        by = statefile.clean_text(by, BY_MAX) or "api"
        path = self._pause_path()
        error = None
        try:
            if paused:
                path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
                doc = {"by": by, "at": time.time()}
                statefile.write_atomic(path, json.dumps(doc).encode())
            else:
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    os.unlink(path)  # a link is removed, not followed
        except OSError as exc:
            error = (
                f"the pause flag {path} could not be saved ({exc.strerror or exc}): "
                "jupiterd is paused until it stops, but a restart will not be paused"
                if paused
                else f"the pause flag {path} could not be removed ({exc.strerror or exc}): "
                "jupiterd is resumed until it stops, but a restart will be paused again"
            )
            self.log.error("could not persist the pause flag", path=str(path), error=error)
        self.pause_error = error
        self.dispatch(PauseChanged(paused, self.now(), by=shown or by))
        return error

    # ------------------------------------------------------------------ state files

    def _check_journal(self) -> None:
        """Read the journal once at start, so damage shows (and holds) now
        rather than at the next plan. Moving it aside needs the plan lock:
        while a failover from the CLI holds it, that failover reads it."""
        lock = PlanLock(self.config.state_dir)
        try:
            lock.acquire()
        except (LockBusy, JournalError):
            return
        try:
            Journal(self.config.state_dir).read()
        except JournalError as exc:
            self.log.error("cannot read the journal", error=str(exc))
        finally:
            lock.release()

    def sync_state_files(self) -> None:
        """Export damaged state files (this process's finds, and the
        moved-aside files not yet acknowledged) and hold the services a
        damaged journal may concern."""
        state_dir = self.config.state_dir
        found, self._damage_seen = statefile.events(state_dir, self._damage_seen)
        for d in found:
            self.metrics.state_file_damage.labels(d.kind).inc()
            if d.left_in_place:
                self._stuck.append(d)
        files = statefile.summary(state_dir)
        files += [
            {"file": d.kind, "moved_to": None, "found": _utc(d.at), "reason": d.reason}
            for d in self._stuck
        ]
        if files != self.state_files or not self._state_files_exported:
            self._state_files_exported = True
            self.state_files = files
            for kind in statefile.KINDS:
                n = sum(1 for f in files if f["file"] == kind)
                self.metrics.state_file_damaged.labels(kind).set(n)
        holds = held_services(state_dir, self.state.services)
        for name, s in self.state.services.items():
            if holds.get(name) != s.journal_hold:
                self.dispatch(JournalHold(name, holds.get(name), self.now()))

    # ------------------------------------------------------------------ reload

    async def reload(self, config: Config) -> None:
        """Apply a new, already validated configuration. Decisions in progress
        (states, holds, a plan in flight) carry over; probe loops are rebuilt
        only for services whose probe or instances changed."""
        old, old_policy = self.config, self.policy
        self.config = config
        self.policy = policy_of(config)
        services = {n: self.state.services.get(n) or ServiceState(name=n) for n in config.services}
        self.state = replace(
            self.state,
            services=MappingProxyType(services),
            awaiting=self.state.awaiting & frozenset(services),
        )
        for (name, role), t in list(self.targets.items()):
            new, was = config.services.get(name), old.services.get(name)
            changed = (
                new is None
                or was is None
                or (new.probe, new.primary, new.backup) != (was.probe, was.primary, was.backup)
                or self.policy.thresholds[name].timeout != old_policy.thresholds[name].timeout
            )
            if changed:
                if t.watch is not None:
                    t.watch.stop()
                if t.heartbeat is not None:
                    t.heartbeat.stop()
                await t.loop.stop()
                del self.targets[(name, role)]
        for name in config.services:
            for role in Role:
                if (name, role) not in self.targets:
                    self._add_target(name, role)
            self._sync_service_metrics(name)
        self.metrics.targets.set(len(self.targets))
        if config.http.listener_settings() != old.http.listener_settings():
            self.log.warning(
                "http.listen or its connection limits changed: they take effect at the next restart"
            )
        now = time.time()
        self.last_reload = {"ok": True, "at": now, "error": None}
        self.metrics.reload_success.set(1)
        self.metrics.reload_timestamp.set(now)
        self.metrics.reloads.labels("success").inc()
        self.log.info("configuration reloaded", services=len(config.services))

    def reload_failed(self, error: str) -> None:
        self.last_reload = {"ok": False, "at": time.time(), "error": error}
        self.metrics.reload_success.set(0)
        self.metrics.reloads.labels("failure").inc()
        self.log.error(
            "configuration reload failed; keeping the running configuration", error=error
        )

    # ------------------------------------------------------------------ status

    def mode(self) -> str:
        """``monitor_only`` (aws.enabled: false: nothing is ever carried out),
        ``dry_run`` (--dry-run: plans run without changing AWS) or ``live``."""
        if not self.config.aws.enabled:
            return "monitor_only"
        return "dry_run" if getattr(self.executor, "dry_run", False) else "live"

    def _trouble(self, t: MonitorTrouble | None) -> dict[str, Any] | None:
        if t is None:
            return None
        return {
            "cause": t.cause,
            "detail": t.detail,
            "since": self.wall(t.since),
            "errors": t.errors,
            "clean_probes": t.clean,
        }

    def status(self) -> dict[str, Any]:
        services = {}
        for name, s in self.state.services.items():
            targets = {}
            for role in Role:
                t = s.target(role)
                held = self.targets.get((name, role))
                targets[role.value] = {
                    "state": t.status.value,
                    "since": self.wall(t.since) if t.since else None,
                    "why": t.why,
                    "target": held.loop.spec.target if held and held.loop.spec else None,
                    "instance_id": held.instance_id if held else None,
                    "last_probe_at": self.wall(t.last_probe_at),
                    "last_ok": t.last_ok,
                    "last_reason": t.last_reason or None,
                    "last_detail": t.last_detail or None,
                    "consecutive_failures": t.fail_streak,
                    "consecutive_successes": t.ok_streak,
                    "monitor_error": self._trouble(t.trouble),
                }
            view = self.views.get(name)
            services[name] = {
                "kind": self.config.services[name].probe.kind,
                "active": s.active.value,
                "healthy": s.target(s.active).status is Status.UP,
                "decision": s.decision,
                "hold": None
                if s.hold is None
                else {
                    "guard": s.hold.guard.value,
                    "reason": s.hold.reason,
                    "since": self.wall(s.hold.since),
                },
                "alert": s.alert,
                "in_flight": None
                if s.in_flight is None
                else {
                    "to": s.in_flight.value,
                    "direction": direction_of(s.in_flight),
                },
                "maintenance": s.maintenance,
                "auto_failover": self.config.services[name].auto_failover,
                "last_failover_at": self.wall(s.last_failover_at),
                "failover_due": None
                if s.due_since is None
                else {"to": s.active.other.value, "since": self.wall(s.due_since)},
                "failovers_last_hour": len(s.attempts),
                "aws_notes": list(view.notes) if view is not None else [],
                "targets": targets,
            }
        return {
            "version": __version__,
            "pid": os.getpid(),
            "started_at": self.started_wall,
            "healthy": self.healthy(),
            "paused": self.state.paused,
            "pause_reason": self.state.pause_reason or None,
            "mode": self.mode(),
            "dry_run": self.mode() == "dry_run",
            "aws_unreachable": None
            if self.state.aws_error is None
            else {"error": self.state.aws_error, "since": self.wall(self.state.aws_error_since)},
            "pause_saved": self.pause_error is None,
            "pause_error": self.pause_error,
            "state_files": {"dir": self.config.state_dir, "damaged": self.state_files},
            "config": {"path": self.config_path, "last_reload": self.last_reload},
            "inventory_error": self.inventory_error,
            "monitor_degraded": self._trouble(self.state.degraded),
            "services": services,
            "recent_plans": list(self.outcomes),
            "drills": self.drills.status() if self.drills is not None else {},
        }
