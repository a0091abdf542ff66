"""The AWS client of a plan's steps: reads pass through to ``Aws``; every
change goes through ``_mutate``, the one door the IAM test watches.

``StepAws`` sends changes and notes on the run that AWS may have changed.
``DryRunAws`` sends none: it logs each change with its parameters, proves
EC2 permissions with ``DryRun=True``, and ends the step there: a step's
dry run stops at its first change (or its first wait for one, see
``StepContext.wait``) and reports the ``would`` sentence given there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from jupiterd.aws.client import (
    Aws,
    AwsAccessDenied,
    AwsNotFound,
    AwsThrottled,
    AwsUnavailable,
    iam_action,
)
from jupiterd.aws.executor.run import _Run

log = structlog.get_logger("jupiterd.executor")


def _refused(exc: BaseException) -> bool:
    """Whether a mutating call surely took no effect: AWS answered it with a
    refusal (denied, not found, throttled) or it was never sent (no
    credentials). No answer (a timeout, a closed connection) or any other
    error may hide a call that took effect."""
    if isinstance(exc, AwsAccessDenied | AwsNotFound | AwsThrottled):
        return True
    return isinstance(exc, AwsUnavailable) and exc.code == "NoCredentials"


class DryRunEnd(Exception):
    """A dry run's step ends here; ``detail`` is what it would have done."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _shown(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k != "Message"}  # the SNS summary: long


class StepAws:
    """Reads pass through; changes are sent. ``guard`` (the shared
    journal's ``before_change``) runs in a thread before each change, with
    the plan's id: it raises (``Fenced``) when this decider may no longer
    act, and the change is not sent."""

    dry_run = False

    def __init__(self, aws: Aws, guard: Callable[[str | None], None] | None = None) -> None:
        self.aws = aws
        self.call = aws.call  # reads pass through
        self.guard = guard

    async def _mutate(
        self,
        run: _Run,
        service: str,
        operation: str,
        resource: str,
        *,
        proof: Mapping[str, Any] | None = None,
        would: str | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """A call that changes AWS. ``proof`` and ``would`` matter only in
        a dry run (see ``DryRunAws``)."""
        action = iam_action(service, operation)
        log.info(
            "aws_change",
            service=run.service,
            action=action,
            resource=resource,
            params=_shown(params),
        )
        if self.guard is not None:
            await asyncio.to_thread(self.guard, run.plan_id)
        if service == "sns":  # a notification moves no traffic
            return await self.aws.call(service, operation, resource=resource, **params)
        try:
            response = await self.aws.call(service, operation, resource=resource, **params)
        except BaseException as exc:
            if not _refused(exc):
                run.changed = True
            raise
        run.changed = True
        return response


class DryRunAws(StepAws):
    """Reads pass through; changes are logged and, for EC2, sent with
    ``DryRun=True`` to prove the permission; nothing changes."""

    dry_run = True

    async def _mutate(
        self,
        run: _Run,
        service: str,
        operation: str,
        resource: str,
        *,
        proof: Mapping[str, Any] | None = None,
        would: str | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """``proof``: the parameters of a harmless variant of the call that
        needs the same permission, sent instead of ``params``. ``would``:
        the step ends here and reports it."""
        action = iam_action(service, operation)
        log.info(
            "dry_run_call",
            service=run.service,
            action=action,
            resource=resource,
            params=_shown(params),
        )
        if service == "ec2":
            sent = dict(proof) if proof is not None else params
            await self.aws.call(service, operation, resource=resource, dry_run=True, **sent)
        if would is not None:
            raise DryRunEnd(would)
        return {}
