"""The route table steps: point a route at the standby's network interface
(a NAT instance), or first, for a NAT pool member, at a surviving member's
(``reroute``)."""

from __future__ import annotations

from typing import Any

from jupiterd.aws.executor.context import StepContext, StepFailed
from jupiterd.aws.executor.run import _Run
from jupiterd.core.plan import Step


async def replace(ctx: StepContext, run: _Run, step: Step) -> tuple[str, dict[str, Any]]:
    assert run.facts is not None
    inst = run.facts.instance(step.role)
    if not inst.eni_id:
        raise StepFailed(f"the {step.role} instance {inst.instance_id} has no network interface")
    what = await _point(ctx, run, step, inst.eni_id, f"{inst.instance_id}")
    return what, {}


async def reroute(ctx: StepContext, run: _Run, step: Step) -> tuple[str, dict[str, Any]]:
    """The dead member's default route through another NAT that already
    forwards, at once. Refused if that instance is no longer running: a
    route is never pointed at a stopped instance."""
    iid, eni, via = step.params["instance_id"], step.params["eni_id"], step.params["via"]
    inst = await ctx.instance(iid, step.role)
    state = inst["State"]["Name"]
    if state != "running":
        raise StepFailed(f"not rerouting through {via}: it is {state}")
    return await _point(ctx, run, step, eni, via), {"via": iid}


async def _point(ctx: StepContext, run: _Run, step: Step, eni: str, who: str) -> str:
    rtb = step.params["route_table_id"]
    dest = step.params["destination"]
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
        return f"{rtb} {dest} already goes via {eni}"
    was = route.get("NetworkInterfaceId") or route.get("InstanceId") or route.get("GatewayId")
    # The dry run's permission proof re-points the route at its current
    # target: the same permission (ec2:ReplaceRoute on the table), and no
    # change even where DryRun is ignored (moto's ReplaceRoute does).
    now = next(
        ((k, route[k]) for k in ("NetworkInterfaceId", "InstanceId", "GatewayId") if route.get(k)),
        None,
    )
    proof = {"RouteTableId": rtb, "DestinationCidrBlock": dest, now[0]: now[1]} if now else None
    what = f"{rtb} {dest} at {eni} of {who} (was {was})"
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
    return f"pointed {what}"
