"""The route table step: point a route at the standby's network interface
(a NAT instance)."""

from __future__ import annotations

from typing import Any

from jupiterd.aws.executor.context import StepContext, StepFailed
from jupiterd.aws.executor.run import _Run
from jupiterd.core.plan import Step


async def replace(ctx: StepContext, run: _Run, step: Step) -> tuple[str, dict[str, Any]]:
    assert run.facts is not None
    rtb = step.params["route_table_id"]
    dest = step.params["destination"]
    inst = run.facts.instance(step.role)
    eni = inst.eni_id
    if not eni:
        raise StepFailed(f"the {step.role} instance {inst.instance_id} has no network interface")
    resp = await ctx.aws.call(
        "ec2",
        "DescribeRouteTables",
        resource=rtb,
        Filters=[{"Name": "route-table-id", "Values": [rtb]}],
    )
    tables = resp.get("RouteTables", [])
    if not tables:
        raise StepFailed(f"route table {rtb} does not exist")
    route = next(
        (r for r in tables[0].get("Routes", []) if r.get("DestinationCidrBlock") == dest), None
    )
    if route is None:
        raise StepFailed(f"route table {rtb} has no {dest} route")
    if route.get("NetworkInterfaceId") == eni and route.get("State") != "blackhole":
        return f"{rtb} {dest} already goes via {eni}", {}
    was = route.get("NetworkInterfaceId") or route.get("InstanceId") or route.get("GatewayId")
    # The dry run's permission proof re-points the route at its current
    # target: the same permission (ec2:ReplaceRoute on the table), and no
    # change even where DryRun is ignored (moto's ReplaceRoute does).
    now = next(
        ((k, route[k]) for k in ("NetworkInterfaceId", "InstanceId", "GatewayId") if route.get(k)),
        None,
    )
    proof = {"RouteTableId": rtb, "DestinationCidrBlock": dest, now[0]: now[1]} if now else None
    what = f"{rtb} {dest} at {eni} of {inst.instance_id} (was {was})"
    await ctx.aws._mutate(
        run,
        "ec2",
        "ReplaceRoute",
        rtb,
        proof=proof,
        would=f"would point {what}",
        RouteTableId=rtb,
        DestinationCidrBlock=dest,
        NetworkInterfaceId=eni,
    )
    return f"pointed {what}", {}
