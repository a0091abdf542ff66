"""The supervisor: probes in, events through the pure machine, actions out.

It owns the state and the I/O loop around ``health.step``: every event
(a probe result, an inventory snapshot, a finished plan, a tick, a pause)
goes through ``dispatch``, and each action the machine returns is carried
out by ``Effects``. Everything runs on one asyncio loop, so a ``dispatch``
is atomic. The parts, each in its own module:

- ``targets``: one ``TargetLoop`` per instance, with its watch and heartbeat;
- ``effects``: what an action does (logs, metrics, wake-ups, plans);
- ``plans``: failover plans on the executor and their outcomes;
- ``refresh``: what AWS says of the fleet, and the retry while it is silent;
- ``pause`` and ``state_files``: the flag and the damage on disk;
- ``status``: the /status document.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from jupiterd import __version__
from jupiterd.config import Config
from jupiterd.core.clock import Clock
from jupiterd.core.execution import Executor, FailoverOutcome
from jupiterd.core.health import (
    Action,
    Event,
    MachineState,
    PauseChanged,
    Policy,
    PrewarmPolicy,
    ServiceState,
    Tick,
    step,
)
from jupiterd.core.inventory import Inventory, ServiceView
from jupiterd.core.types import Role
from jupiterd.runtime.effects import Effects
from jupiterd.runtime.ha import HaParts, HaRunner
from jupiterd.runtime.pause import BY_MAX, PAUSE_FILE, PAUSE_MAX_BYTES, PauseFlag, parse_pause
from jupiterd.runtime.plans import PlanEvent, Plans
from jupiterd.runtime.probe_loop import LagMonitor
from jupiterd.runtime.refresh import Refresher
from jupiterd.runtime.sd_notify import Notifier
from jupiterd.runtime.standbys import Standbys
from jupiterd.runtime.state_files import StateFiles
from jupiterd.runtime.status import DrillStatus, status_json
from jupiterd.runtime.targets import ProbeEvent, Target, Targets
from jupiterd.state import statefile
from jupiterd.telemetry import logs
from jupiterd.telemetry.clock import SystemClock
from jupiterd.telemetry.metrics import Metrics

__all__ = [
    "AWS_RETRY_SECONDS",
    "BY_MAX",
    "HEALTHY_AFTER_SECONDS",
    "INITIAL_INVENTORY_SECONDS",
    "PAUSE_FILE",
    "PAUSE_MAX_BYTES",
    "REFRESH_SECONDS",
    "SHUTDOWN_GRACE_SECONDS",
    "TICK_SECONDS",
    "Observer",
    "PlanEvent",
    "ProbeEvent",
    "Supervisor",
    "parse_pause",
    "policy_of",
]

TICK_SECONDS = 1.0
HEALTHY_AFTER_SECONDS = 5.0  # /healthz fails when the main loop has not run for this long
SHUTDOWN_GRACE_SECONDS = 5.0
REFRESH_SECONDS = 30.0
INITIAL_INVENTORY_SECONDS = 1.0  # how long start-up waits for AWS before probing anyway
# While AWS does not answer, it is re-read after 1 s, doubling up to 10 s,
# each wait jittered down to half so that many daemons do not retry in step.
AWS_RETRY_SECONDS = (1.0, 10.0)


def _restart_only(old: Config, new: Config) -> list[str]:
    """What a reload changed that only a restart applies."""
    out = []
    if new.http.listener_settings() != old.http.listener_settings():
        out.append("http.listen or its connection limits")
    if new.ha != old.ha:
        out.append("ha: (the replicas' table, lease and views)")
    schedules = {n: s.readiness for n, s in new.services.items()}
    if schedules != {n: s.readiness for n, s in old.services.items()}:
        out.append("a service's readiness: (the standby drills' schedule)")
    return out


def policy_of(config: Config) -> Policy:
    return Policy(
        thresholds={n: config.thresholds(n) for n in config.services},
        isolation=config.guards.isolation,
        auto_failover={n: s.auto_failover for n, s in config.services.items()},
        monitor_only=not config.aws.enabled,
        ha=config.ha is not None,
        pool_peers={n: config.pool_peers(n) for n in config.services},
        peer_fallback=frozenset(
            n for n in config.services if config.pool_plan(n) == "peer_then_standby"
        ),
        prewarm={
            n: PrewarmPolicy(s.prewarm_hold, s.prewarm_max_per_hour)
            for n, s in config.services.items()
            if s.prewarm
        },
        warm_hold={n: s.prewarm_hold for n, s in config.services.items()},
    )


Observer = Callable[[Action | ProbeEvent | PlanEvent], None]


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
        clock: Clock | None = None,
        ha: HaParts | None = None,
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
        # Wall time, the tick and the refresh waits, plan timings; the probe
        # loops and ``now()`` keep to the event loop's own clock.
        self.clock = clock or SystemClock()
        self.log = logs.get("jupiterd")
        self.state = MachineState.initial(config.services, paused=config.guards.paused)
        self.views: dict[str, ServiceView] = {}  # what AWS last said, per service
        self.heartbeat = 0.0  # loop time of the last main-loop tick
        self.started_wall = self.clock.time()
        self.last_reload: dict[str, Any] = {"ok": True, "at": self.started_wall, "error": None}
        self.stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        # Called with every action, probe result and finished plan (the
        # sandbox's drill timeline; tests).
        self.observers: list[Observer] = []
        self.drills: DrillStatus | None = None  # the scheduled drills' runner, for /status
        self.lag = LagMonitor()  # a probe that timed out in a loop stall is not the target's
        self.pause_error: str | None = None  # why the pause flag does not say what we do
        self.probes = Targets(self)
        self.effects = Effects(self)
        self.plans = Plans(self)
        self.standbys = Standbys(self)  # readiness drills and pre-warms
        self.refresher = Refresher(self)
        self.files = StateFiles(self)
        # Replicated deciders (config.ha): the table's parts, the runner.
        self.ha_parts = ha
        self.ha: HaRunner | None = None

    # What the parts keep, under the names /status, tests and benchmarks use.

    @property
    def targets(self) -> dict[tuple[str, Role], Target]:
        return self.probes.all

    @property
    def outcomes(self) -> deque[dict[str, Any]]:
        return self.plans.outcomes

    @property
    def inventory_error(self) -> str | None:
        return self.refresher.error

    @property
    def state_files(self) -> list[dict[str, Any]]:
        return self.files.damaged

    # ------------------------------------------------------------------ time

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def wall(self, at: float | None) -> float | None:
        """A loop-clock time as Unix time, for people and /status."""
        if at is None:
            return None
        return self.clock.time() - (self.now() - at)

    # ------------------------------------------------------------------ start/stop

    async def start(self) -> None:
        self._load_pause()
        await asyncio.to_thread(self.files.check_journal)
        self.sync_state_files()
        self.metrics.paused.set(1 if self.state.paused else 0)
        self.metrics.reload_success.set(1)
        self.metrics.reload_timestamp.set(self.started_wall)
        # Start from what AWS says when it answers promptly; when it does not
        # (an API outage, a throttled account), probe the configured addresses
        # meanwhile: the refresh lands when it lands.
        first = self.spawn(self.refresh_inventory(), "inventory-first")
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
                self.probes.add(name, role)
        self.metrics.targets.set(len(self.targets))
        for name in self.config.services:
            self.effects.sync_service(name)
        self.standbys.start()
        self.heartbeat = self.now()
        self.spawn(self._tick_loop(), "tick")
        self.spawn(self.refresher.run(), "inventory")
        self._start_ha()
        self.log.info(
            "started",
            services=len(self.config.services),
            targets=len(self.targets),
            paused=self.state.paused,
            version=__version__,
        )

    def _start_ha(self) -> None:
        if self.config.ha is None:
            return
        if self.ha_parts is None:
            self.log.error(
                "ha: is configured but this process has no access to the replicas' table: "
                "every failover stays held (no_quorum)"
            )
            return
        self.ha = HaRunner(self, self.config.ha, self.ha_parts)
        self.ha.start()

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A task that lives until ``stop``."""
        task = asyncio.create_task(work, name=name)
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(task)
        return task

    async def stop(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
        """Stop probing; give a plan in flight ``grace`` seconds to finish
        its step (the journal lets the next start resume it), then cancel."""
        self.stopping = True
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.probes.stop()
        await self.lag.stop()
        await self.plans.stop(grace)
        if self.ha is not None:
            await self.ha.stop()
        self.log.info("stopped")

    # ------------------------------------------------------------------ events and actions

    def dispatch(self, event: Event) -> list[Action]:
        self.state, actions = step(self.state, event, self.policy)
        for a in actions:
            self._apply(a)
            for observe in self.observers:
                observe(a)
        self.effects.export(event, actions)
        return actions

    def _apply(self, a: Action) -> None:
        self.effects.apply(a)

    async def refresh_inventory(self) -> None:
        await self.refresher.refresh()

    def apply_views(self, views: Mapping[str, ServiceView]) -> None:
        self.refresher.apply(views)

    def resumed(self, o: FailoverOutcome) -> None:
        """A plan a crash interrupted, finished by the executor at start."""
        self.plans.resumed(o)

    # ------------------------------------------------------------------ heartbeat

    async def _tick_loop(self) -> None:
        while True:
            await self.clock.sleep(self.tick_seconds)
            self.heartbeat = self.now()
            self.metrics.heartbeat.set(self.clock.time())
            self.dispatch(Tick(self.heartbeat))
            self.sync_state_files()
            if self.healthy():
                self.notifier.watchdog()

    def healthy(self) -> bool:
        return self.now() - self.heartbeat < max(HEALTHY_AFTER_SECONDS, 3 * self.tick_seconds)

    def sync_state_files(self) -> None:
        self.files.sync()

    # ------------------------------------------------------------------ pause

    def _load_pause(self) -> None:
        """A pause survives restarts; a damaged flag keeps jupiterd paused."""
        saved = PauseFlag(self.config.state_dir).load()
        if saved is None:
            return
        if saved.damaged:
            self.set_paused(True, saved.by, shown=saved.shown)
        else:
            self.dispatch(PauseChanged(True, self.now(), by=saved.by))

    def set_paused(self, paused: bool, by: str, *, shown: str | None = None) -> str | None:
        """Pause or resume, and save it in the flag file. Returns None when
        saved, else the sentence why not: the new state then holds in memory
        only (a pause is still a pause), and /status says it is not saved.
        ``shown``: who paused, as /status says it (default: ``by``)."""
        by = statefile.clean_text(by, BY_MAX) or "api"
        error = PauseFlag(self.config.state_dir).save(paused, by, self.log)
        self.pause_error = error
        self.dispatch(PauseChanged(paused, self.now(), by=shown or by))
        return error

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
        for name, role in list(self.targets):
            new, was = config.services.get(name), old.services.get(name)
            changed = (
                new is None
                or was is None
                or (new.probe, new.primary, new.backup) != (was.probe, was.primary, was.backup)
                or self.policy.thresholds[name].timeout != old_policy.thresholds[name].timeout
            )
            if changed:
                await self.probes.remove((name, role))
        for name in config.services:
            for role in Role:
                if (name, role) not in self.targets:
                    self.probes.add(name, role)
            self.effects.sync_service(name)
        self.metrics.targets.set(len(self.targets))
        for what in _restart_only(old, config):
            self.log.warning(f"{what} changed: the change takes effect at the next restart")
        now = self.clock.time()
        self.last_reload = {"ok": True, "at": now, "error": None}
        self.metrics.reload_success.set(1)
        self.metrics.reload_timestamp.set(now)
        self.metrics.reloads.labels("success").inc()
        self.log.info("configuration reloaded", services=len(config.services))

    def reload_failed(self, error: str) -> None:
        self.last_reload = {"ok": False, "at": self.clock.time(), "error": error}
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
        return "dry_run" if self.executor.dry_run else "live"

    def status(self) -> dict[str, Any]:
        return status_json(self)
