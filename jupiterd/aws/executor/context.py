"""What a step handler gets: the configuration, the AWS client of the steps
(``changes.StepAws``, or ``DryRunAws`` in a dry run), the inventory, the
prober and the waits. Every handler has one signature, ``Handler``: it
returns its sentence for the report and data for the journal, or raises
``StepFailed`` (or an ``AwsError``) with the sentence of the failure."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import probes
from jupiterd.aws.executor.changes import DryRunEnd, StepAws
from jupiterd.aws.executor.polling import Check, Poller
from jupiterd.aws.executor.run import _Run
from jupiterd.aws.inventory import AwsInventory, _instances
from jupiterd.config import Config, Thresholds
from jupiterd.core.clock import Clock
from jupiterd.core.plan import Step
from jupiterd.core.types import Role
from jupiterd.telemetry.metrics import Metrics
from probes import ProbeOptions, ProbeResult

Prober = Callable[[str, str, ProbeOptions, float], Awaitable[ProbeResult]]


async def default_prober(
    kind: str, target: str, options: ProbeOptions, timeout: float
) -> ProbeResult:
    return await probes.get_kind(kind).probe(target, options, timeout)


class StepFailed(Exception):
    """A step could not do its job; the message is the sentence to report."""


@dataclass(frozen=True)
class StepContext:
    config: Config
    aws: StepAws
    inventory: AwsInventory
    prober: Prober
    poller: Poller
    metrics: Metrics | None = None  # the executor's, for the steps' own counters

    @property
    def clock(self) -> Clock:
        """The executor's clock, for every wait and every step's timing."""
        return self.poller.clock

    @property
    def dry_run(self) -> bool:
        return self.aws.dry_run

    def thresholds(self, run: _Run) -> Thresholds:
        return self.config.thresholds(run.service)

    async def wait(
        self,
        run: _Run,
        step: Step,
        what: str,
        check: Check,
        timeout: float,
        *,
        would: str | None = None,
        interval: float | None = None,
    ) -> tuple[bool, str, float]:
        """``Poller.wait``. In a dry run, a wait for a change the dry run did
        not make (``would`` given) ends the step with ``would`` instead."""
        if would is not None and self.dry_run:
            raise DryRunEnd(would)
        return await self.poller.wait(
            run.service, step.name, what, check, timeout, interval=interval
        )

    async def describe(self, *instance_ids: str) -> dict[str, dict[str, Any]]:
        resp = await self.aws.call(
            "ec2",
            "DescribeInstances",
            resource=", ".join(instance_ids),
            Filters=[{"Name": "instance-id", "Values": list(instance_ids)}],
        )
        return {i["InstanceId"]: i for i in _instances(resp)}

    async def instance(self, iid: str | None, role: Role) -> dict[str, Any]:
        if not iid:
            raise StepFailed(f"the {role} instance was not found")
        found = (await self.describe(iid)).get(iid)
        if found is None:
            raise StepFailed(f"the {role} instance {iid} does not exist")
        return found


Handler = Callable[[StepContext, _Run, Step], Awaitable[tuple[str, dict[str, Any]]]]
