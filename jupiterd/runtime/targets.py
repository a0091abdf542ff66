"""The probed targets: one ``TargetLoop`` per (service, role), and around it
the watch and the heartbeat that make a failure show between probes.

A target's address is the configuration's, else what AWS says (an instance
that has none yet waits for the next inventory). Each result is exported and
becomes an ``Observation`` for the supervisor's dispatch. While a target is
up it is watched: a heartbeat when its probe kind has one (the heartbeat's
own connection then tells a close), else an idle TCP connection whose close
wakes its probe.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import probes
from jupiterd.core.health import Observation, probe_interval
from jupiterd.core.types import Role, Status
from jupiterd.runtime.heartbeat import CONFIRM_SPACING, Heartbeat, link_for
from jupiterd.runtime.probe_loop import ProbeSpec, TargetLoop
from jupiterd.runtime.watch import Watch
from probes import ProbeResult
from probes.options import parse_hostport

if TYPE_CHECKING:
    from jupiterd.runtime.supervisor import Supervisor

Key = tuple[str, Role]


@dataclass(frozen=True, slots=True)
class ProbeEvent:
    """A probe result, as observers see it."""

    service: str
    role: Role
    result: ProbeResult
    at: float


@dataclass(slots=True)
class Target:
    loop: TargetLoop
    address: str | None
    instance_id: str | None
    labels: tuple[Any, Any, Any]  # cached metric children: success, duration, kind
    watch: Watch | None = None
    heartbeat: Heartbeat | None = None
    results: dict[str, Any] = field(default_factory=dict)  # reason -> counter child

    def quiet(self) -> None:
        """Stop watching (the loop goes on)."""
        if self.watch is not None:
            self.watch.stop()
        if self.heartbeat is not None:
            self.heartbeat.stop()


class Targets:
    """The supervisor's targets, keyed by (service, role)."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.all: dict[Key, Target] = {}

    def spec(self, name: str, address: str | None) -> ProbeSpec | None:
        if address is None:
            return None
        svc = self.sup.config.services[name]
        return ProbeSpec(
            kind=probes.get_kind(svc.probe.kind),
            target=svc.probe.target_for(address),
            options=svc.probe.parsed_options,
            timeout=self.sup.policy.thresholds[name].timeout,
        )

    def address(self, name: str, role: Role) -> tuple[str | None, str | None]:
        svc = self.sup.config.services[name]
        ref = svc.primary if role is Role.PRIMARY else svc.backup
        view = self.sup.views.get(name)
        info = view.instance(role) if view is not None else None
        address = ref.address or (info.address if info is not None else None)
        instance_id = ref.instance_id or (info.instance_id if info is not None else None)
        return address, instance_id

    def add(self, name: str, role: Role) -> None:
        sup = self.sup
        address, instance_id = self.address(name, role)
        kind = sup.config.services[name].probe.kind
        m = sup.metrics
        labels = (
            m.probe_success.labels(name, role.value, kind),
            m.probe_duration.labels(name, role.value, kind),
            kind,
        )
        loop = TargetLoop(
            f"probe:{name}:{role}",
            self.spec(name, address),
            lambda result, end: self.on_result(name, role, result, end),
            lambda: self.interval(name, role),
            rng=sup.rng,
            on_late=m.probe_lateness.observe,
            on_skip=m.probes_skipped.labels(name, role.value).inc,
            lag=sup.lag,
        )
        self.all[(name, role)] = Target(loop, address, instance_id, labels)
        m.target_state.labels(name, role.value).state(
            sup.state.services[name].target(role).status.value
        )
        loop.start()

    async def remove(self, key: Key) -> None:
        t = self.all[key]
        t.quiet()
        await t.loop.stop()
        del self.all[key]

    async def stop(self) -> None:
        for t in self.all.values():
            t.quiet()
        await asyncio.gather(*(t.loop.stop() for t in self.all.values()))

    def wake(self, key: Key) -> None:
        t = self.all.get(key)
        if t is not None:
            t.loop.wake()

    def readdress(self, name: str, role: Role) -> None:
        """Follow what AWS says of a target's instance."""
        t = self.all.get((name, role))
        if t is None:
            return
        address, instance_id = self.address(name, role)
        t.instance_id = instance_id
        if address == t.address:
            return
        t.address = address
        t.loop.spec = self.spec(name, address)
        if t.heartbeat is not None:
            t.heartbeat.stop()  # the next one goes to the new address
            t.heartbeat = None
        t.loop.wake()  # a target that had no address waits for this
        self.update_watch(name, role, self.sup.state.services[name].target(role).status)

    def interval(self, name: str, role: Role) -> tuple[float | None, float]:
        th = self.sup.policy.thresholds[name]
        s = self.sup.state.services.get(name)
        if s is None:
            return None, 0.0
        return probe_interval(s.target(role), th), th.jitter

    def on_result(self, name: str, role: Role, result: ProbeResult, at: float) -> None:
        sup = self.sup
        t = self.all.get((name, role))
        if t is None or sup.stopping:
            return
        success, duration, kind = t.labels
        cause = result.cause
        if cause is None:  # a monitor error is no verdict on the target
            success.set(1 if result.ok else 0)
            duration.observe(result.duration_seconds)
        else:
            sup.metrics.monitor_errors.labels(name, role.value, cause.value).inc()
        reason = result.reason.value
        counter = t.results.get(reason)
        if counter is None:
            counter = t.results[reason] = sup.metrics.probe_results.labels(
                name, role.value, kind, reason
            )
        counter.inc()
        for observe in sup.observers:
            observe(ProbeEvent(name, role, result, at))
        if not result.ok:
            sup.log.debug(
                "probe failed",
                service=name,
                role=role.value,
                target=result.target,
                reason=result.reason.value,
                detail=result.detail,
            )
        sup.dispatch(
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

    # ------------------------------------------------------------------ watches

    def update_watch(self, name: str, role: Role, status: Status) -> None:
        """Watch a target only while it is up: then a close means news."""
        t = self.all.get((name, role))
        if t is None:
            return
        spec = t.loop.spec
        streams = self._update_heartbeat(name, role, t, status is Status.UP)
        wanted = (
            status is Status.UP
            and spec is not None
            and self.sup.config.services[name].probe.watch_enabled
            and not streams  # the heartbeat's own connection tells a close
            and not self.sup.stopping
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
            counter = self.sup.metrics.watch_closes.labels(name, role.value)

            def closed(loop: TargetLoop = t.loop) -> None:
                counter.inc()
                loop.wake()

            t.watch = Watch(hp.host, hp.port, closed)
        t.watch.start()

    def _update_heartbeat(self, name: str, role: Role, t: Target, up: bool) -> bool:
        """Run a target's heartbeat while it is up; True while it runs over TCP."""
        sup = self.sup
        spec = t.loop.spec
        settings = sup.config.services[name].probe.heartbeat_settings
        if not up or spec is None or settings is None or sup.stopping:
            if t.heartbeat is not None:
                t.heartbeat.stop()
                t.heartbeat = None
            return False
        first = link_for(spec.kind.name, spec.target, spec.options)
        if first is None:
            return False
        if t.heartbeat is None:
            counter = sup.metrics.heartbeat_misses.labels(name, role.value)
            target = spec.target

            def make(kind: str = spec.kind.name, options: Any = spec.options) -> Any:
                return link_for(kind, target, options)

            def missed(loop: TargetLoop = t.loop) -> None:
                fall = sup.policy.thresholds[name].fall  # as reloaded
                counter.inc()
                sup.log.info(
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
