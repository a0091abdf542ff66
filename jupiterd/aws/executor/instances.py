"""Starting and stopping an instance the way a recovery needs it.

``start_standby`` starts a stopped standby and waits until it is running.
StartInstances may be refused for want of capacity in the instance's
Availability Zone (``InsufficientInstanceCapacity``, after the SDK's own
retries): the start is tried again with backoff for up to ``start_timeout``,
then, for the configured backup only, the stopped instance is changed to each
of the service's ``fallback_instance_types`` in turn (ModifyInstanceAttribute
InstanceType) and started again. Every attempt is in the result (the step's
journal data and detail, the plan's timeline), logged (``capacity_error``)
and counted (``jupiterd_capacity_errors_total{service,instance_type}``). A
type change is said in a note naming the original type, to be set back while
the instance is stopped. When no attempt succeeds the instance is left
stopped, with its original type.

``stop_instance`` stops an instance, with hibernation when asked and the
instance was launched with it (``HibernationOptions.Configured``); otherwise
(or when EC2 refuses to hibernate it) a plain stop, with a note saying what
to change.

Both take the executor's ``StepContext`` and the ``_Run`` of the operation,
so every change goes through ``StepAws._mutate`` (the one door the IAM test
watches; a dry run proves the permission and stops there). Outside a plan (a
readiness drill, a pre-warm) pass a run made by ``operation_run``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from jupiterd.aws.client import AwsError
from jupiterd.aws.executor.changes import DryRunEnd
from jupiterd.aws.executor.context import StepContext, StepFailed
from jupiterd.aws.executor.run import _Run
from jupiterd.core.clock import Clock
from jupiterd.core.execution import FailoverRequest
from jupiterd.core.plan import GONE_STATES, HIBERNATE_HOWTO
from jupiterd.core.types import Role

log = structlog.get_logger("jupiterd.executor")

# EC2's answer when the AZ has no capacity for the instance type (a 5xx).
CAPACITY_CODES = frozenset({"InsufficientInstanceCapacity", "InsufficientCapacity"})
# EC2 refusing a hibernation the instance cannot do now: stop it plainly.
HIBERNATE_REFUSED = frozenset({"UnsupportedHibernationConfiguration", "UnsupportedOperation"})
HIBERNATED_REASON = "Client.UserInitiatedHibernate"  # a hibernated instance's StateReason
BACKOFF_FIRST = 2.0  # seconds before the second try; doubled each time
BACKOFF_MAX = 30.0


class StartFailed(StepFailed):
    """The instance did not start; ``result`` holds every attempt."""

    def __init__(self, sentence: str, result: StartResult) -> None:
        super().__init__(sentence)
        self.result = result


@dataclass(frozen=True, slots=True)
class StartAttempt:
    """One StartInstances (or type change) of a start, for the timeline."""

    action: str  # "start" or "set_type"
    instance_type: str | None
    at: float  # seconds since the start began
    ok: bool
    detail: str  # the error code, or what was done

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "instance_type": self.instance_type,
            "at": round(self.at, 3),
            "ok": self.ok,
            "detail": self.detail,
        }


@dataclass(slots=True)
class StartResult:
    instance_id: str
    previous_state: str
    instance_type: str | None  # what it was started as (or last tried)
    original_type: str | None  # its type before this start
    attempts: list[StartAttempt] = field(default_factory=list)
    started: bool = False  # a StartInstances of this call was accepted
    seconds_to_running: float | None = None

    @property
    def type_changed(self) -> bool:
        return self.started and self.instance_type != self.original_type

    @property
    def capacity_errors(self) -> int:
        return sum(1 for a in self.attempts if a.action == "start" and not a.ok)

    def note(self) -> str | None:
        """The sentence for the operator when the start changed the type."""
        if not self.type_changed:
            return None
        return (
            f"instance {self.instance_id} runs as {self.instance_type} for want of "
            f"{self.original_type} capacity; its type was {self.original_type}: set it back "
            f"while it is stopped (aws ec2 modify-instance-attribute --instance-id "
            f"{self.instance_id} --instance-type Value={self.original_type})"
        )

    def summary(self) -> str:
        """What the attempts were, in a clause (empty without capacity errors)."""
        if not self.capacity_errors:
            return ""
        per_type: dict[str | None, int] = {}
        for a in self.attempts:
            if a.action == "start" and not a.ok:
                per_type[a.instance_type] = per_type.get(a.instance_type, 0) + 1
        parts = [f"{n} for {t}" for t, n in per_type.items()]
        return f"{self.capacity_errors} InsufficientInstanceCapacity answer(s) ({', '.join(parts)})"

    def data(self) -> dict[str, Any]:
        """For the journal and the timeline."""
        return {
            "started": self.started,
            "previous_state": self.previous_state,
            "instance_type": self.instance_type,
            "original_type": self.original_type,
            "attempts": [a.to_dict() for a in self.attempts],
            "seconds_to_running": (
                None if self.seconds_to_running is None else round(self.seconds_to_running, 3)
            ),
        }


def operation_run(
    service: str,
    clock: Clock,
    *,
    reason: str,
    requested_by: Literal["daemon", "cli", "drill"] = "drill",
    to_role: Role = Role.BACKUP,
) -> _Run:
    """The run of an operation that is not a failover plan (a readiness
    drill, a pre-warm), for ``start_standby`` and ``stop_instance``: it
    names the service in logs and records whether AWS was changed."""
    return _Run(FailoverRequest(service, to_role.other, to_role, reason, requested_by), clock)


# --------------------------------------------------------------------------- start


async def start_standby(
    ctx: StepContext,
    run: _Run,
    instance_id: str,
    *,
    role: Role = Role.BACKUP,
    fallback_instance_types: Sequence[str] | None = None,
    wait: bool = True,
    step: str = "start_standby",
) -> StartResult:
    """Start ``instance_id`` (the ``role`` instance of ``run.service``) and,
    with ``wait``, wait until it is running, within the service's
    ``start_timeout``. ``fallback_instance_types``: None takes the
    service's for the backup (the primary keeps its type). Raises
    ``StartFailed`` (a ``StepFailed``) with the sentence and the attempts;
    ``DryRunEnd`` in a dry run; ``AwsError`` for AWS trouble other than
    capacity."""
    th = ctx.thresholds(run)
    inst = await ctx.instance(instance_id, role)
    state = inst["State"]["Name"]
    itype = inst.get("InstanceType")
    res = StartResult(instance_id, state, itype, itype)
    if state == "running":
        res.seconds_to_running = 0.0
        return res
    if state in GONE_STATES:
        raise StartFailed(f"the {role} instance {instance_id} is {state}", res)
    if fallback_instance_types is None:
        svc = ctx.config.services[run.service]
        fallback_instance_types = svc.fallback_instance_types if role is Role.BACKUP else []
    would = f"would start {instance_id} (now {state}): ec2:StartInstances is allowed"
    # A dry run proves the permission at once: it has no stop to wait for.
    if state == "stopping" and not ctx.dry_run:
        what = f"{instance_id} to finish stopping"
        check = _settled(ctx, instance_id)
        ok, st, _ = await ctx.poller.wait(run.service, step, what, check, th.start_timeout)
        if not ok:
            raise StartFailed(f"{instance_id} was still {st} after {th.start_timeout:g}s", res)
        state = st
        inst = (await ctx.describe(instance_id)).get(instance_id, inst)
    if ctx.dry_run and fallback_instance_types and state in ("stopped", "stopping"):
        # Prove the type change a capacity fallback would make is allowed.
        await ctx.aws._mutate(
            run,
            "ec2",
            "ModifyInstanceAttribute",
            instance_id,
            InstanceId=instance_id,
            InstanceType={"Value": fallback_instance_types[0]},
        )
    if state in ("stopped", "stopping"):
        await _start(ctx, run, res, inst, list(fallback_instance_types), would, th.start_timeout)
    if not wait:
        return res
    if ctx.dry_run:
        raise DryRunEnd(would)
    res.seconds_to_running = await _wait_running(
        ctx, run, instance_id, role, step, th.start_timeout
    )
    return res


async def _start(
    ctx: StepContext,
    run: _Run,
    res: StartResult,
    inst: Mapping[str, Any],
    fallbacks: list[str],
    would: str,
    window: float,
) -> None:
    """StartInstances, retried with backoff while EC2 has no capacity, for
    up to ``window`` seconds, then with each fallback type in turn."""
    iid = res.instance_id
    clock = ctx.clock
    t0 = clock.monotonic()
    delay = BACKOFF_FIRST
    while True:
        if await _try_start(ctx, run, res, t0, would):
            return
        elapsed = clock.monotonic() - t0
        if elapsed >= window:
            break
        pause = min(delay, window - elapsed)
        _log_capacity(run, res, f"retry in {pause:g}s")
        await clock.sleep(pause)
        delay = min(delay * 2, BACKOFF_MAX)
    others = [t for t in fallbacks if t != res.original_type]
    why_not = ""
    if not others:
        why_not = "no fallback_instance_types are configured"
    elif inst.get("StateReason", {}).get("Code") == HIBERNATED_REASON:
        why_not = "it is hibernated, and a hibernated instance's type cannot change"
        others = []
    for itype in others:
        _log_capacity(run, res, f"changing the type to {itype}")
        if not await _set_type(ctx, run, res, itype, t0):
            why_not = f"its type could not be changed to {itype}"
            break
        if await _try_start(ctx, run, res, t0, would):
            return
    tried = f"{res.summary()} over {clock.monotonic() - t0:.0f}s (start_timeout {window:g}s)"
    if others and res.instance_type != res.original_type and res.original_type:
        restored = await _set_type(ctx, run, res, res.original_type, t0)
        back = (
            f"; its type was set back to {res.original_type}"
            if restored
            else f"; its type is left at {res.instance_type} (it was {res.original_type})"
        )
    else:
        back = ""
    _log_capacity(run, res, "giving up")
    tail = f"; {why_not}" if why_not else ""
    raise StartFailed(
        f"no capacity to start {iid} in its Availability Zone: {tried}{tail}{back}; "
        "it was left stopped",
        res,
    )


async def _try_start(ctx: StepContext, run: _Run, res: StartResult, t0: float, would: str) -> bool:
    """One StartInstances; False when EC2 has no capacity for it."""
    iid = res.instance_id
    at = ctx.clock.monotonic() - t0
    try:
        await ctx.aws._mutate(run, "ec2", "StartInstances", iid, would=would, InstanceIds=[iid])
    except AwsError as exc:
        if exc.code not in CAPACITY_CODES:
            raise
        res.attempts.append(StartAttempt("start", res.instance_type, at, False, exc.code))
        if ctx.metrics is not None:
            ctx.metrics.capacity_errors.labels(run.service, res.instance_type or "unknown").inc()
        return False
    res.attempts.append(StartAttempt("start", res.instance_type, at, True, "started"))
    res.started = True
    return True


async def _set_type(ctx: StepContext, run: _Run, res: StartResult, itype: str, t0: float) -> bool:
    iid = res.instance_id
    at = ctx.clock.monotonic() - t0
    try:
        await ctx.aws._mutate(
            run,
            "ec2",
            "ModifyInstanceAttribute",
            iid,
            InstanceId=iid,
            InstanceType={"Value": itype},
        )
    except AwsError as exc:
        res.attempts.append(StartAttempt("set_type", itype, at, False, exc.code))
        log.error("instance_type_change_failed", service=run.service, instance=iid, reason=str(exc))
        return False
    res.attempts.append(StartAttempt("set_type", itype, at, True, f"was {res.instance_type}"))
    log.warning(
        "instance_type_changed",
        service=run.service,
        instance=iid,
        instance_type=itype,
        was=res.instance_type,
        original=res.original_type,
    )
    res.instance_type = itype
    return True


def _log_capacity(run: _Run, res: StartResult, then: str) -> None:
    last = res.attempts[-1]
    log.warning(
        "capacity_error",
        service=run.service,
        instance=res.instance_id,
        instance_type=last.instance_type,
        code=last.detail,
        attempt=res.capacity_errors,
        seconds=round(last.at, 3),
        then=then,
    )


def _settled(ctx: StepContext, iid: str) -> Any:
    async def check() -> tuple[bool, str]:
        cur = (await ctx.describe(iid)).get(iid)
        name = cur["State"]["Name"] if cur else "missing"
        return name not in ("stopping", "pending", "shutting-down"), name

    return check


async def _wait_running(
    ctx: StepContext, run: _Run, iid: str, role: Role, step: str, timeout: float
) -> float:
    stopped_polls = 0

    async def check() -> tuple[bool, str]:
        nonlocal stopped_polls
        cur = (await ctx.describe(iid)).get(iid)
        if cur is None:
            raise StepFailed(f"the {role} instance {iid} disappeared")
        name = cur["State"]["Name"]
        if name in GONE_STATES:
            raise StepFailed(f"the {role} instance {iid} is {name}")
        # EC2 may fall back to stopped (e.g. no capacity in the AZ); a
        # stopped answer right after the start can also be stale.
        stopped_polls = stopped_polls + 1 if name == "stopped" else 0
        if stopped_polls >= 3:
            why = cur.get("StateReason", {}).get("Message", "no reason given")
            raise StepFailed(f"{iid} went back to stopped after the start ({why})")
        return name == "running", name

    ok, st, secs = await ctx.poller.wait(run.service, step, f"{iid} to be running", check, timeout)
    if not ok:
        raise StepFailed(
            f"the {role} instance {iid} was still {st} after {timeout:g}s (start_timeout)"
        )
    return secs


# --------------------------------------------------------------------------- stop


@dataclass(frozen=True, slots=True)
class StopResult:
    instance_id: str
    hibernated: bool  # StopInstances carried Hibernate=True and EC2 took it
    note: str | None  # what to change, when hibernation was asked for and not done

    def sentence(self, was: str) -> str:
        how = "hibernation" if self.hibernated else "stop"
        return f"{how} requested for {self.instance_id} (was {was})"


async def stop_instance(
    ctx: StepContext,
    run: _Run,
    instance_id: str,
    *,
    hibernate: bool,
    instance: Mapping[str, Any] | None = None,
) -> StopResult:
    """StopInstances for ``instance_id``; with ``hibernate``, Hibernate=True
    when the instance was launched with hibernation configured (else a
    plain stop, and the note says what to change). ``instance``: its
    DescribeInstances entry, when already read. Does not wait."""
    iid = instance_id
    note: str | None = None
    if hibernate:
        cur = instance if instance is not None else (await ctx.describe(iid)).get(iid, {})
        if cur.get("HibernationOptions", {}).get("Configured"):
            try:
                await ctx.aws._mutate(
                    run,
                    "ec2",
                    "StopInstances",
                    iid,
                    would=f"would hibernate {iid}: ec2:StopInstances is allowed",
                    InstanceIds=[iid],
                    Hibernate=True,
                )
            except AwsError as exc:
                if exc.code not in HIBERNATE_REFUSED:
                    raise
                note = (
                    f"instance {iid} was stopped without hibernation: EC2 refused to hibernate it "
                    f"({exc.code}); check the hibernation prerequisites ({HIBERNATE_HOWTO})"
                )
            else:
                log.info("hibernating", service=run.service, instance=iid)
                return StopResult(iid, True, None)
        else:
            note = (
                f"instance {iid} was stopped without hibernation (standby_stop: hibernate): it was "
                f"not launched with hibernation configured; {HIBERNATE_HOWTO}"
            )
        log.warning("hibernation_skipped", service=run.service, instance=iid, reason=note)
    await ctx.aws._mutate(
        run,
        "ec2",
        "StopInstances",
        iid,
        would=f"would stop {iid}: ec2:StopInstances is allowed",
        InstanceIds=[iid],
    )
    return StopResult(iid, False, note)
