"""Building the failover plan of a service, and the rollback of an
interrupted one, with each step's least-privilege permissions."""

from __future__ import annotations

from collections.abc import Iterable

from jupiterd.config import Config, Route53Record
from jupiterd.core.plan.facts import (
    ArnContext,
    InstanceFacts,
    ServiceFacts,
    _unique_tgs,
    normalize_record_name,
    zone_key,
)
from jupiterd.core.plan.model import (
    PUBLIC_ADDRESS_READS,
    READ_PERMISSIONS,
    TRAFFIC_KINDS,
    Conditions,
    Permission,
    Plan,
    Stage,
    Step,
    StepKind,
    merge_permissions,
)
from jupiterd.core.plan.pool import fallback_steps
from jupiterd.core.types import Role


def _instance_resource(
    arns: ArnContext, config: Config, service: str, inst: InstanceFacts
) -> tuple[tuple[str, ...], Conditions]:
    """The instance's ARN; without an id (policy built before the instance
    exists), any instance carrying the service's tags."""
    if inst.instance_id:
        return (arns.ec2("instance", inst.instance_id),), {}
    return (arns.ec2("instance", "*"),), {
        "StringEquals": {
            "aws:ResourceTag/Project": (config.project_tag,),
            "aws:ResourceTag/Service": (service,),
            "aws:ResourceTag/Role": (str(inst.role),),
        }
    }


def _record_step_name(rec: Route53Record) -> str:
    return f"upsert_record:{normalize_record_name(rec.name)}/{rec.type}"


def build_plan(
    config: Config,
    service: str,
    to_role: Role,
    facts: ServiceFacts,
    *,
    stop_old: bool | None = None,
) -> Plan:
    """The steps that move ``service`` to ``to_role``. The list depends only
    on the configuration and the instances' identities, never on their
    current state: a resumed plan has the same step names as the first run,
    and each step checks AWS itself before acting. The one exception: an
    instance another service's attachment points at (``facts.in_use``, a
    pool's shared standby) is never stopped, and ``Plan.notes`` says why."""
    svc = config.services[service]
    arns = ArnContext.from_config(config)
    from_role = to_role.other
    standby = facts.instance(to_role)
    old = facts.instance(from_role)
    s_res, s_cond = _instance_resource(arns, config, service, standby)
    o_res, o_cond = _instance_resource(arns, config, service, old)
    sid = standby.instance_id or f"({to_role})"
    oid = old.instance_id or f"({from_role})"
    att = svc.attachments
    first, fb_notes = fallback_steps(config, service, to_role, facts, arns)
    start_perms = [Permission("ec2:StartInstances", s_res, s_cond)]
    if to_role is Role.BACKUP and svc.fallback_instance_types:
        # No capacity for its type: the stopped backup is changed to another.
        start_perms.append(Permission("ec2:ModifyInstanceAttribute", s_res, s_cond))
    steps: list[Step] = [
        *first,
        Step(
            "start_standby",
            StepKind.START_STANDBY,
            Stage.START,
            to_role,
            sid,
            {"instance_id": standby.instance_id},
            tuple(start_perms),
        ),
        Step(
            "standby_healthy",
            StepKind.STANDBY_HEALTHY,
            Stage.HEALTHY,
            to_role,
            sid,
            {"instance_id": standby.instance_id},
        ),
    ]
    if svc.register_early:
        # Registered as soon as the standby runs (EC2 refuses a pending
        # instance), beside its probes: the load balancer's health checks
        # then overlap the application's start. The old target stays.
        steps += [
            Step(
                f"register_early:{name}",
                StepKind.REGISTER_EARLY,
                Stage.HEALTHY,
                to_role,
                arn,
                {"arn": arn, "port": port},
                (Permission("elasticloadbalancing:RegisterTargets", (arn,)),),
            )
            for name, arn, port in _unique_tgs(att.target_groups)
        ]
    if att.route_tables:
        steps.append(
            Step(
                "source_dest_check",
                StepKind.SOURCE_DEST_CHECK,
                Stage.ATTACH,
                to_role,
                sid,
                {"instance_id": standby.instance_id},
                (Permission("ec2:ModifyInstanceAttribute", s_res, s_cond),),
            )
        )
    for name, arn, port in _unique_tgs(att.target_groups):
        steps.append(
            Step(
                f"register_target:{name}",
                StepKind.REGISTER_TARGET,
                Stage.ATTACH,
                to_role,
                arn,
                {"arn": arn, "port": port},
                (Permission("elasticloadbalancing:RegisterTargets", (arn,)),),
            )
        )
    if att.elastic_ip:
        eni = standby.eni_id or "*"
        steps.append(
            Step(
                f"associate_eip:{att.elastic_ip}",
                StepKind.ASSOCIATE_EIP,
                Stage.ATTACH,
                to_role,
                att.elastic_ip,
                {"allocation_id": att.elastic_ip},
                (
                    Permission(
                        "ec2:AssociateAddress",
                        (
                            arns.ec2("elastic-ip", att.elastic_ip),
                            *s_res,
                            arns.ec2("network-interface", eni),
                        ),
                    ),
                ),
            )
        )
    for rec in att.route53:
        norm = normalize_record_name(rec.name)
        steps.append(
            Step(
                _record_step_name(rec),
                StepKind.UPSERT_RECORD,
                Stage.ATTACH,
                to_role,
                f"{rec.name} {rec.type} in {zone_key(rec.zone_id)}",
                {
                    "zone_id": rec.zone_id,
                    "name": rec.name,
                    "type": rec.type,
                    "address": rec.address,
                    "ttl": rec.ttl,
                },
                (
                    Permission(
                        "route53:ChangeResourceRecordSets",
                        (arns.hosted_zone(rec.zone_id),),
                        {
                            "ForAllValues:StringEquals": {
                                "route53:ChangeResourceRecordSetsNormalizedRecordNames": (norm,),
                                "route53:ChangeResourceRecordSetsRecordTypes": (rec.type,),
                                "route53:ChangeResourceRecordSetsActions": ("UPSERT",),
                            }
                        },
                    ),
                    Permission("route53:ListResourceRecordSets", (arns.hosted_zone(rec.zone_id),)),
                    Permission("route53:GetChange", (arns.route53_change(),)),
                    *(PUBLIC_ADDRESS_READS if rec.address == "public" else ()),
                ),
            )
        )
    for rtb in dict.fromkeys(att.route_tables):
        steps.append(
            Step(
                f"replace_route:{rtb}",
                StepKind.REPLACE_ROUTE,
                Stage.ATTACH,
                to_role,
                rtb,
                {"route_table_id": rtb, "destination": "0.0.0.0/0"},
                (Permission("ec2:ReplaceRoute", (arns.ec2("route-table", rtb),)),),
                after=("source_dest_check",),
            )
        )
    for name, arn, port in _unique_tgs(att.target_groups):
        steps.append(
            Step(
                f"deregister_target:{name}",
                StepKind.DEREGISTER_TARGET,
                Stage.DETACH,
                from_role,
                arn,
                {"arn": arn, "port": port},
                (Permission("elasticloadbalancing:DeregisterTargets", (arn,)),),
            )
        )
    notes = list(fb_notes)
    users = facts.in_use.get(old.instance_id or "", ())
    stop = svc.stop_old if stop_old is None else stop_old
    if stop and users:
        # Never strand an attachment: another service still sends traffic there.
        stop = False
        notes.append(
            f"the {from_role} ({oid}) is not stopped: {', '.join(users)} still "
            f"point{'s' if len(users) == 1 else ''} at it"
        )
    if stop:
        steps.append(
            Step(
                "stop_old",
                StepKind.STOP_INSTANCE,
                Stage.STOP,
                from_role,
                oid,
                {"instance_id": old.instance_id},
                (Permission("ec2:StopInstances", o_res, o_cond),),
            )
        )
    topic = config.topic_for(service)
    if topic:
        steps.append(
            Step(
                "notify",
                StepKind.NOTIFY,
                Stage.NOTIFY,
                to_role,
                topic,
                {"topic_arn": topic},
                # GetTopicAttributes: a dry run's proof that the topic exists.
                (
                    Permission("sns:Publish", (topic,)),
                    Permission("sns:GetTopicAttributes", (topic,)),
                ),
            )
        )
    return Plan(service, from_role, to_role, tuple(steps), tuple(notes))


ROLLBACK_PREFIX = "rollback:"


def build_rollback(
    config: Config,
    plan: Plan,
    facts: ServiceFacts,
    *,
    started_standby: bool,
    traffic_moved: bool,
    registered_early: bool = False,
) -> Plan:
    """Undo an interrupted plan: traffic back to the old instance (when any
    of it moved), the standby detached, and stopped again if this plan
    started it. The steps are the reverse plan's, renamed ``rollback:...``.
    ``registered_early``: the standby was put in its target groups before
    any traffic moved (the old target never left): it is deregistered."""
    reverse = build_plan(config, plan.service, plan.from_role, facts, stop_old=started_standby)
    keep: list[Step] = []
    skipped = (
        StepKind.START_STANDBY,
        StepKind.NOTIFY,
        StepKind.SOURCE_DEST_CHECK,
        StepKind.REGISTER_EARLY,
    )
    for s in reverse.steps:
        if s.kind in skipped:
            continue
        if s.kind is StepKind.STANDBY_HEALTHY and not traffic_moved:
            continue
        if s.kind in TRAFFIC_KINDS and not traffic_moved:
            continue
        if s.kind is StepKind.DEREGISTER_TARGET and not (traffic_moved or registered_early):
            continue
        after = tuple(ROLLBACK_PREFIX + a for a in s.after if a != "source_dest_check")
        keep.append(
            Step(
                ROLLBACK_PREFIX + s.name.replace("stop_old", "stop_standby"),
                s.kind,
                s.stage,
                s.role,
                s.resource,
                s.params,
                s.permissions,
                after,
            )
        )
    notes = reverse.notes if started_standby else ()
    return Plan(plan.service, plan.to_role, plan.from_role, tuple(keep), notes)


def plan_permissions(plans: Iterable[Plan]) -> tuple[Permission, ...]:
    """Everything a set of plans needs, the read-only calls included."""
    return merge_permissions([*READ_PERMISSIONS, *(p for pl in plans for p in pl.permissions())])
