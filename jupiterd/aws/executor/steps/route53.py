"""The Route 53 step: point a record at the standby and wait until the
change is INSYNC."""

from __future__ import annotations

import dataclasses
from typing import Any

from jupiterd.aws.executor.context import StepContext, StepFailed
from jupiterd.aws.executor.run import _Run
from jupiterd.core.plan import STOPPED_STATES, Step, record_value, zone_key


async def upsert(ctx: StepContext, run: _Run, step: Step) -> tuple[str, dict[str, Any]]:
    assert run.facts is not None
    p = step.params
    zone = zone_key(p["zone_id"])
    name, type_, address = p["name"], p["type"], p["address"]
    rr = await ctx.inventory.record_set(zone, name, type_)
    if rr is None:
        raise StepFailed(f"record {name} {type_} does not exist in hosted zone {zone}")
    inst = run.facts.instance(step.role)
    value: str | None = None
    if address == "public" and run.facts.elastic_ip is None:
        # A public IP without an EIP exists only once the instance runs.
        fresh = await ctx.instance(inst.instance_id, step.role)
        inst = dataclasses.replace(inst, public_ip=fresh.get("PublicIpAddress"))
        if ctx.dry_run and not inst.public_ip and fresh["State"]["Name"] in STOPPED_STATES:
            # Not started by the dry run; the preflight checked that EC2
            # gives it a public address when it starts.
            value = f"the public address {inst.instance_id} gets when it starts"
    value = value or record_value(address, inst, run.facts.elastic_ip)
    if not value:
        raise StepFailed(
            f"the {step.role} instance {inst.instance_id} has no {address} address for {name}"
        )
    current = tuple(v["Value"] for v in rr.get("ResourceRecords", []))
    if current == (value,):
        return f"{name} {type_} already holds {value}", {}
    ttl = p.get("ttl") if p.get("ttl") is not None else rr.get("TTL", 60)
    was = ", ".join(current)
    change = await ctx.aws._mutate(
        run,
        "route53",
        "ChangeResourceRecordSets",
        f"{name} {type_} in hosted zone {zone}",
        would=f"would set {name} {type_} to {value} (TTL {ttl}, was {was})",
        HostedZoneId=zone,
        ChangeBatch={
            "Comment": f"jupiterd {run.request.direction} of {run.service}",
            "Changes": [
                {
                    "Action": "UPSERT",
                    "ResourceRecordSet": {
                        "Name": rr["Name"],
                        "Type": type_,
                        "TTL": ttl,
                        "ResourceRecords": [{"Value": value}],
                    },
                }
            ],
        },
    )
    change_id = change.get("ChangeInfo", {}).get("Id", "")
    status = change.get("ChangeInfo", {}).get("Status", "PENDING")
    if status != "INSYNC" and change_id:
        th = ctx.thresholds(run)
        cid = change_id.rsplit("/", 1)[-1]

        async def check() -> tuple[bool, str]:
            r = await ctx.aws.call("route53", "GetChange", resource=f"change {cid}", Id=cid)
            s = str(r.get("ChangeInfo", {}).get("Status", "PENDING"))
            return s == "INSYNC", s

        ok, status, _ = await ctx.wait(
            run, step, f"{name} change {cid} to be INSYNC", check, th.target_healthy_timeout
        )
        if not ok:
            return f"{name} {type_} set to {value} (TTL {ttl}); still {status}: continuing", {}
    return f"{name} {type_} set to {value} (TTL {ttl}, was {was})", {}
