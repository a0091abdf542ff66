"""What AWS itself says of a service's active instance: one more vote for
the quorum of replicated deciders (``witness:`` of a service).

- ``elb``: DescribeTargetHealth of the instance in the witness's
  ``target_group``, else in every target group of the service's
  attachments. Per group, ``healthy`` is an up and ``unhealthy`` a down;
  ``unused`` because the instance is stopped or terminated
  (``Target.InvalidState``) is a down too; ``initial``, ``draining``,
  ``unavailable``, any other ``unused`` (not registered, not in use) give
  no verdict. Over several groups: down when every group with a verdict
  says down, up when every one says up; groups that disagree give no
  verdict (AWS itself is split: the replicas decide alone).
- ``ec2_status``: DescribeInstanceStatus (all instances, running or not):
  a stopped, stopping, shutting-down or terminated instance is a down; an
  ``impaired`` instance or system check is a down; both ``ok`` an up;
  ``initializing``, ``insufficient-data`` and ``not-applicable`` no verdict.
- ``cloudwatch``: DescribeAlarms of the one alarm: ``ALARM`` a down, ``OK``
  an up, ``INSUFFICIENT_DATA`` or no such alarm no verdict.

``Witness.verdict`` never raises: a failed call is no verdict, its detail
says what failed. A verdict is kept ``cache_seconds`` (1 s) so a leader
asking every 0.25 s makes one call a second per service, and concurrent
askers share one call.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from jupiterd.aws.client import Aws, AwsError
from jupiterd.config import Config
from jupiterd.config.ha import WitnessConfig
from jupiterd.core.clock import Clock
from jupiterd.telemetry.clock import SystemClock

log = structlog.get_logger("jupiterd.witness")

CACHE_SECONDS = 1.0
_GONE = frozenset({"stopping", "stopped", "shutting-down", "terminated"})


@dataclass(frozen=True, slots=True)
class WitnessVerdict:
    kind: str  # "elb" | "ec2_status" | "cloudwatch"
    down: bool | None  # True: AWS sees it failing; False: healthy; None: no verdict
    detail: str  # one sentence: what AWS said
    veto: bool  # from the config


# --------------------------------------------------------------------------- mappings


def _name(arn: str) -> str:
    """``jupiter-signaling`` from a target group's ARN."""
    parts = arn.split("targetgroup/", 1)
    return parts[1].split("/")[0] if len(parts) == 2 else arn


def target_health(response: Mapping[str, Any], instance_id: str) -> tuple[bool | None, str]:
    """One target group's DescribeTargetHealth -> (down, what it said)."""
    descs = [
        d
        for d in response.get("TargetHealthDescriptions") or ()
        if isinstance(d, dict) and (d.get("Target") or {}).get("Id") == instance_id
    ]
    if not descs:
        return None, "no health for it"
    health = descs[0].get("TargetHealth") or {}
    state, reason = str(health.get("State", "?")), str(health.get("Reason", ""))
    said = f"{state} ({reason})" if reason else state
    if state == "healthy":
        return False, said
    if state == "unhealthy":
        return True, said
    if state == "unused" and reason == "Target.InvalidState":
        return True, said  # the instance is stopped or terminated
    return None, said


def elb_verdict(
    groups: Sequence[tuple[str, Mapping[str, Any]]], instance_id: str
) -> tuple[bool | None, str]:
    """Several groups' answers -> one verdict (see the module)."""
    seen = [(_name(arn), *target_health(r, instance_id)) for arn, r in groups]
    said = "; ".join(f"{name}: {what}" for name, _, what in seen)
    votes = {down for _, down, _ in seen if down is not None}
    if votes == {True}:
        return True, f"ELB sees {instance_id} failing ({said})"
    if votes == {False}:
        return False, f"ELB sees {instance_id} healthy ({said})"
    if votes:
        return None, f"ELB's target groups disagree on {instance_id} ({said})"
    return None, f"ELB gives no health of {instance_id} ({said or 'no target group'})"


def ec2_status_verdict(response: Mapping[str, Any], instance_id: str) -> tuple[bool | None, str]:
    statuses = [
        s
        for s in response.get("InstanceStatuses") or ()
        if isinstance(s, dict) and s.get("InstanceId") == instance_id
    ]
    if not statuses:
        return None, f"EC2 gives no status of {instance_id}"
    s = statuses[0]
    state = str((s.get("InstanceState") or {}).get("Name", "?"))
    inst = str((s.get("InstanceStatus") or {}).get("Status", "?"))
    system = str((s.get("SystemStatus") or {}).get("Status", "?"))
    said = f"{instance_id} is {state}, instance status {inst}, system status {system}"
    if state in _GONE or "impaired" in (inst, system):
        return True, "EC2: " + said
    if state == "running" and inst == "ok" and system == "ok":
        return False, "EC2: " + said
    return None, "EC2: " + said


def alarm_verdict(response: Mapping[str, Any], alarm: str) -> tuple[bool | None, str]:
    alarms = [
        a
        for key in ("MetricAlarms", "CompositeAlarms")
        for a in response.get(key) or ()
        if isinstance(a, dict) and a.get("AlarmName") == alarm
    ]
    if not alarms:
        return None, f"CloudWatch has no alarm named {alarm}"
    state = str(alarms[0].get("StateValue", "?"))
    reason = str(alarms[0].get("StateReason", ""))[:200]
    said = f"CloudWatch alarm {alarm} is {state}" + (f" ({reason})" if reason else "")
    if state == "ALARM":
        return True, said
    if state == "OK":
        return False, said
    return None, said


# --------------------------------------------------------------------------- the witness


class Witness:
    """Asks AWS about each service's active instance, per its ``witness:``."""

    def __init__(
        self,
        aws: Aws,
        config: Config,
        *,
        clock: Clock | None = None,
        cache_seconds: float = CACHE_SECONDS,
    ) -> None:
        self.aws = aws
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.cache_seconds = cache_seconds
        self._cache: dict[tuple[str, str | None], tuple[float, WitnessVerdict]] = {}
        self._asking: dict[tuple[str, str | None], asyncio.Future[WitnessVerdict]] = {}

    async def verdict(self, service: str, instance_id: str | None) -> WitnessVerdict | None:
        """None when the service has no witness; never raises."""
        svc = self.config.services.get(service)
        if svc is None or svc.witness is None:
            return None
        key = (service, instance_id)
        hit = self._cache.get(key)
        if hit is not None and self.clock.monotonic() - hit[0] < self.cache_seconds:
            return hit[1]
        task = self._asking.get(key)
        if task is None:
            # One call for every asker; an asker cancelled does not cancel it.
            task = asyncio.ensure_future(self._ask(service, svc.witness, instance_id))
            self._asking[key] = task
            task.add_done_callback(functools.partial(self._done, key))
        return await asyncio.shield(task)

    def _done(self, key: tuple[str, str | None], task: asyncio.Future[WitnessVerdict]) -> None:
        self._asking.pop(key, None)
        if not task.cancelled() and task.exception() is None:
            self._cache[key] = (self.clock.monotonic(), task.result())

    async def _ask(self, service: str, w: WitnessConfig, instance_id: str | None) -> WitnessVerdict:
        try:
            down, detail = await self._call(service, w, instance_id)
        except AwsError as exc:
            down, detail = None, f"no witness: {exc.sentence()}"
        except Exception as exc:  # an answer not shaped as documented
            log.warning("witness_failed", service=service, kind=w.kind, error=repr(exc))
            down, detail = None, f"no witness: {w.kind} answered unreadably ({exc!r:.200})"
        return WitnessVerdict(w.kind, down, detail, w.veto)

    async def _call(
        self, service: str, w: WitnessConfig, instance_id: str | None
    ) -> tuple[bool | None, str]:
        if w.kind == "cloudwatch":
            alarm = w.alarm or ""
            r = await self.aws.call(
                "cloudwatch",
                "DescribeAlarms",
                resource=alarm,
                AlarmNames=[alarm],
                AlarmTypes=["MetricAlarm", "CompositeAlarm"],
            )
            return alarm_verdict(r, alarm)
        if instance_id is None:
            return None, "no witness: the active instance's id is not known"
        if w.kind == "ec2_status":
            r = await self.aws.call(
                "ec2",
                "DescribeInstanceStatus",
                resource=instance_id,
                InstanceIds=[instance_id],
                IncludeAllInstances=True,
            )
            return ec2_status_verdict(r, instance_id)
        svc = self.config.services[service]
        if w.target_group:
            groups: list[tuple[str, int | None]] = [(w.target_group, None)]
        else:
            groups = [(t.arn, t.port) for t in svc.attachments.target_groups]
        answers = await asyncio.gather(
            *(self._target_health(arn, port, instance_id) for arn, port in groups)
        )
        return elb_verdict(list(zip((a for a, _ in groups), answers, strict=True)), instance_id)

    async def _target_health(self, arn: str, port: int | None, instance_id: str) -> dict[str, Any]:
        target: dict[str, Any] = {"Id": instance_id}
        if port is not None:
            target["Port"] = port
        return await self.aws.call(
            "elbv2", "DescribeTargetHealth", resource=arn, TargetGroupArn=arn, Targets=[target]
        )
