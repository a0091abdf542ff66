"""The Elastic IP step: associate the address with the standby."""

from __future__ import annotations

from typing import Any

from jupiterd.aws.executor.context import StepContext, StepFailed
from jupiterd.aws.executor.run import _Run
from jupiterd.core.plan import Step


async def associate(ctx: StepContext, run: _Run, step: Step) -> tuple[str, dict[str, Any]]:
    assert run.facts is not None
    alloc = step.params["allocation_id"]
    iid = run.facts.instance(step.role).instance_id
    if not iid:
        raise StepFailed(f"the {step.role} instance was not found")
    resp = await ctx.aws.call(
        "ec2",
        "DescribeAddresses",
        resource=alloc,
        Filters=[{"Name": "allocation-id", "Values": [alloc]}],
    )
    addrs = resp.get("Addresses", [])
    if not addrs:
        raise StepFailed(f"Elastic IP {alloc} does not exist")
    addr = addrs[0]
    ip = addr.get("PublicIp")
    if addr.get("InstanceId") == iid:
        return f"{ip} is already on {iid}", {}
    what = f"{ip} from {addr.get('InstanceId') or 'nothing'} to {iid}"
    await ctx.aws._mutate(
        run,
        "ec2",
        "AssociateAddress",
        alloc,
        would=f"would move {what}",
        AllocationId=alloc,
        InstanceId=iid,
        AllowReassociation=True,
    )
    return f"moved {what}", {}
