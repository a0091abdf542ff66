"""The sandbox's AWS timing model: ``--aws-timing realistic[:SCALE]``.

moto answers at once: an instance started is ``running`` on the next
DescribeInstances, a target registered is ``healthy``, a Route 53 change is
``INSYNC``. Real AWS takes its time, and on a failover to a stopped standby
that time, not jupiterd's detection, is most of the outage. With the flag,
a proxy in front of moto (``timing_proxy``) delays what AWS delays, from
these figures (each multiplied by SCALE, default 1.0; 0.05 fits a drill in
CI):

- EC2 pending -> running after StartInstances: ``BOOT_SECONDS`` = 18 s.
  Published measurements: pending -> running took 16.4-16.6 s for every
  instance family tried (t3, m6i, m7i, c7i, r7i) and about 18 s of a
  25.8 s launch (github.com/brevdev/ec2-coldboot-research, @fix_plan.md);
  a stop and start of a Linux instance took about 13 s
  (github.com/aws/karpenter-provider-aws issue 3798). The issue's own
  figure is 16-21 s.
- Operating system boot after ``running``, before any service starts:
  ``OS_BOOT_SECONDS`` = 6 s (running -> SSH open took 3.2 s on Amazon Linux
  with cloud-init in the same brevdev study, 9-23 s on older AMIs in
  www.daemonology.net/blog/2021-08-12-EC2-boot-time-benchmarking.html).
- The application's own start, per service (``APP_START_SECONDS``):
  ThingsBoard 90 s, a JVM with Spring: its Kubernetes install guide shows
  "Started ThingsboardServerApplication in 113.64 seconds (JVM running for
  118.624)", another published log 65.457 s (thingsboard.github.io); the
  signaling server (Node.js), coturn and frps are single native or
  interpreted processes that listen within a second or two (an estimate:
  no published figure). Only after the OS boot and this start does the
  sandbox start the service's process, so jupiterd's own rise probes of the
  standby fail until then.
- A target group's health: a target becomes ``healthy`` only after
  HealthCheckIntervalSeconds x HealthyThresholdCount of passing checks,
  counted from when it is registered and its application answers (read from
  the target group; AWS's defaults are 30 s x 5, the API reference of
  CreateTargetGroup). Until then DescribeTargetHealth says ``initial``
  (Elb.RegistrationInProgress), and the sandbox's front door, which follows
  DescribeTargetHealth, sends it no traffic. The sandbox sets its target
  groups to ``SANDBOX_HEALTH_CHECK`` = 10 s x 3, a common failover tuning.
- Route 53: ``ChangeResourceRecordSets`` answers PENDING and GetChange says
  INSYNC after ``ROUTE53_SECONDS`` = 60 s ("Amazon Route 53 is designed to
  propagate updates ... within 60 seconds under normal conditions", the
  Route 53 FAQ).
- Resume from hibernation (a StopInstances with Hibernate=true, or an
  instance marked with ``TimingModel.mark_hibernated``): EC2 still moves
  the instance through ``pending`` onto a host (``RESUME_BOOT_SECONDS`` =
  18 s, as a start: no published figure shows it shorter), then the RAM is
  read back (``RESUME_RESTORE_SECONDS`` = 3 s) and the application is
  already started: no OS boot, no application start.

Without the flag nothing of this runs: the sandbox talks to moto directly.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

BOOT_SECONDS = 18.0
OS_BOOT_SECONDS = 6.0
APP_START_SECONDS: dict[str, float] = {
    "signaling": 2.0,
    "coturn": 1.0,
    "frp": 1.0,
    "thingsboard": 90.0,
}
RESUME_BOOT_SECONDS = 18.0
RESUME_RESTORE_SECONDS = 3.0
ROUTE53_SECONDS = 60.0
SANDBOX_HEALTH_CHECK = (10, 3)  # HealthCheckIntervalSeconds, HealthyThresholdCount
# The reference: a published Route 53 + ALB failover drill (jspoth.com/dr,
# "RTO: 83 seconds (Route 53 ~61s + ALB health check ~22s)").
REFERENCE_RTO_SECONDS = 83.0

UNCONSTRAINED = -math.inf


class TimingSpecError(ValueError):
    pass


def parse_spec(spec: str) -> float:
    """``realistic`` or ``realistic:SCALE``: the scale (a float > 0)."""
    name, _, scale = spec.partition(":")
    if name != "realistic":
        raise TimingSpecError(f"--aws-timing takes realistic[:SCALE], not {spec!r}")
    if not scale:
        return 1.0
    try:
        value = float(scale)
    except ValueError:
        raise TimingSpecError(f"--aws-timing: SCALE must be a number, not {scale!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise TimingSpecError(f"--aws-timing: SCALE must be above 0, not {scale}")
    return value


@dataclass
class Start:
    at: float  # StartInstances, on the model's clock
    boot: float  # pending -> running, scaled
    app: float  # running -> the service answers, scaled
    resumed: bool

    @property
    def running_at(self) -> float:
        return self.at + self.boot


@dataclass
class TimingModel:
    """What AWS would answer now, for the instances, targets and changes
    seen since ``arm()``. Thread-safe: the proxy serves from threads."""

    scale: float = 1.0
    boot: float = BOOT_SECONDS
    os_boot: float = OS_BOOT_SECONDS
    app_start: dict[str, float] = field(default_factory=lambda: dict(APP_START_SECONDS))
    resume_boot: float = RESUME_BOOT_SECONDS
    resume_restore: float = RESUME_RESTORE_SECONDS
    route53: float = ROUTE53_SECONDS
    clock: Callable[[], float] = time.monotonic
    services: dict[str, str] = field(default_factory=dict)  # instance id -> service
    # The sandbox's fleet reports when each started service answers: target
    # health counts from then, not from the modelled start.
    follow_apps: bool = False
    armed: bool = False

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.starts: dict[str, Start] = {}
        self.last_start: dict[str, Start] = {}  # kept after a stop: the drill's figures
        self.hibernated: set[str] = set()
        self.app_up: dict[str, float] = {}
        self.registered: dict[tuple[str, str], float] = {}
        self.changes: dict[str, float] = {}
        self._ids = itertools.count(1)

    @classmethod
    def from_spec(cls, spec: str, **kw: Any) -> TimingModel:
        return cls(scale=parse_spec(spec), **kw)

    def arm(self) -> None:
        """From now on, delay what AWS delays (the seed ran before)."""
        self.armed = True

    def scaled(self, seconds: float) -> float:
        return seconds * self.scale

    def app_seconds(self, service: str | None) -> float:
        """Running -> the service answers, after a cold start (unscaled)."""
        return self.os_boot + self.app_start.get(service or "", 0.0)

    # ---------------------------------------------------------------- EC2

    def instance_started(self, iid: str) -> None:
        with self._lock:
            resumed = iid in self.hibernated
            self.hibernated.discard(iid)
            self.app_up.pop(iid, None)
            boot = self.resume_boot if resumed else self.boot
            app = self.resume_restore if resumed else self.app_seconds(self.services.get(iid))
            start = Start(self.clock(), self.scaled(boot), self.scaled(app), resumed)
            self.starts[iid] = self.last_start[iid] = start

    def instance_stopped(self, iid: str, *, hibernate: bool = False) -> None:
        with self._lock:
            self.starts.pop(iid, None)
            self.app_up.pop(iid, None)
            if hibernate:
                self.hibernated.add(iid)
            else:
                self.hibernated.discard(iid)

    def mark_hibernated(self, iid: str) -> None:
        """The stopped ``iid`` was hibernated: its next start is a resume."""
        with self._lock:
            self.hibernated.add(iid)

    def pending(self, iid: str) -> bool:
        """Started, and EC2 would still say ``pending``."""
        with self._lock:
            s = self.starts.get(iid)
            return s is not None and self.clock() < s.running_at

    def app_may_run(self, iid: str) -> bool:
        """Whether the service of ``iid`` has finished starting: the OS boot
        and the application's start after ``running`` (for a resume, the
        RAM restore). An instance not started since ``arm()``: yes."""
        with self._lock:
            s = self.starts.get(iid)
            return s is None or self.clock() >= s.running_at + s.app

    def app_started(self, iid: str) -> None:
        """The sandbox's service process of ``iid`` answers now."""
        with self._lock:
            self.app_up[iid] = self.clock()

    def _app_ready_at(self, iid: str) -> float | None:
        s = self.starts.get(iid)
        if s is None:
            return UNCONSTRAINED
        if self.follow_apps:
            return self.app_up.get(iid)
        return s.running_at + s.app

    # ---------------------------------------------------------------- ELB

    def target_registered(self, arn: str, iid: str) -> None:
        with self._lock:
            self.registered[(arn, iid)] = self.clock()

    def target_deregistered(self, arn: str, iid: str) -> None:
        with self._lock:
            self.registered.pop((arn, iid), None)

    def target_healthy_at(
        self, arn: str, iid: str, interval: float, threshold: int
    ) -> float | None:
        """When the load balancer reports ``iid`` healthy in ``arn``:
        ``interval x threshold`` after it is both registered and answering.
        ``None``: not yet known (its service does not answer yet);
        ``-inf``: nothing to delay (not registered or started since arm)."""
        with self._lock:
            reg = self.registered.get((arn, iid))
            ready = self._app_ready_at(iid)
            if ready is None:
                return None
            since = max(reg if reg is not None else UNCONSTRAINED, ready)
            if since == UNCONSTRAINED:
                return UNCONSTRAINED
            return since + self.scaled(interval * threshold)

    def target_initial(self, arn: str, iid: str, interval: float, threshold: int) -> bool:
        """Whether DescribeTargetHealth must say ``initial`` for it now."""
        at = self.target_healthy_at(arn, iid, interval, threshold)
        return at is None or self.clock() < at

    # ---------------------------------------------------------------- Route 53

    def change_submitted(self) -> str:
        with self._lock:
            cid = f"CJUPITERD{next(self._ids):08d}"
            self.changes[cid] = self.clock()
            return cid

    def change_status(self, cid: str) -> str | None:
        """PENDING or INSYNC for a change the model answered; None: not one."""
        with self._lock:
            at = self.changes.get(cid)
        if at is None:
            return None
        return "INSYNC" if self.clock() >= at + self.scaled(self.route53) else "PENDING"

    # ---------------------------------------------------------------- config

    def thresholds(self, base: dict[str, Any], health_check: tuple[int, int]) -> dict[str, Any]:
        """The sandbox's thresholds with room for the modelled waits: each
        step's timeout at least twice what the model makes it wait."""

        def seconds(value: Any) -> float:
            from jupiterd.config.values import parse_duration

            return float(parse_duration(value))

        slowest_app = max(self.app_seconds(s) for s in [*self.app_start, None])
        want = {
            "start_timeout": 2 * self.scaled(max(self.boot, self.resume_boot)) + 5,
            "healthy_timeout": 2 * self.scaled(slowest_app) + 5,
            "target_healthy_timeout": 2
            * self.scaled(max(health_check[0] * health_check[1] + slowest_app, self.route53))
            + 5,
        }
        out = dict(base)
        for key, value in want.items():
            if key not in base or seconds(base[key]) < value:
                out[key] = f"{math.ceil(value)}s"
        return out

    def plan_seconds(self, health_check: tuple[int, int]) -> float:
        """About the longest a failover takes under this model, unscaled
        jupiterd overheads aside."""
        slowest_app = max(self.app_seconds(s) for s in [*self.app_start, None])
        return self.scaled(
            max(self.boot, self.resume_boot)
            + slowest_app
            + max(health_check[0] * health_check[1], self.route53)
        )

    def describe(self) -> dict[str, Any]:
        """The figures, unscaled, and the scale."""
        return {
            "scale": self.scale,
            "boot_seconds": self.boot,
            "os_boot_seconds": self.os_boot,
            "app_start_seconds": dict(self.app_start),
            "resume_boot_seconds": self.resume_boot,
            "resume_restore_seconds": self.resume_restore,
            "route53_seconds": self.route53,
        }
