"""Failover plans, and what AWS facts say about a service: pure, no I/O.

A plan is the ordered list of idempotent steps that moves a service's
traffic from one instance to the other (DESIGN.md "Health decisions"):
preflight, start the standby, wait until it passes its own probes, attach
traffic to it (target groups, Elastic IP, Route 53, NAT routes; independent
attachments run concurrently), detach the old instance, stop it, notify.
Each step declares the IAM actions it needs, with resource ARNs and
conditions, so a least-privilege policy and a dry run can be derived from
plans without touching AWS.

The facts types hold what the read-only describes returned
(``jupiterd.aws.inventory`` fills them); the functions below turn them into the
answer to "which instance carries the traffic, and do the attachments agree"
and into preflight problems. Everything here is tested table-driven.

The package: ``facts`` (what AWS said, names and ARNs), ``model`` (plans, steps,
permissions), ``build`` (the plan and its rollback), ``status`` (what the
facts say of a service), ``preflight`` (why a plan must not start), ``pool``
(shared instances: who else points at one, a pool as a whole, a NAT
member's reroute through a surviving member), ``standby`` (what the preflight
warns of without stopping the plan: hibernation, health-check time).
"""

from __future__ import annotations

from jupiterd.core.plan.build import (
    ROLLBACK_PREFIX,
    build_plan,
    build_rollback,
    plan_permissions,
)
from jupiterd.core.plan.facts import (
    GONE_STATES,
    MISSING,
    ArnContext,
    EipFacts,
    Fallback,
    InstanceFacts,
    RecordFacts,
    RouteTableFacts,
    ServiceFacts,
    TargetGroupFacts,
    normalize_record_name,
    target_group_name,
    zone_key,
)
from jupiterd.core.plan.model import (
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
from jupiterd.core.plan.pool import (
    PEER_THEN_STANDBY,
    MemberView,
    PoolView,
    attachment_users,
    pool_view,
    sharing_services,
)
from jupiterd.core.plan.preflight import (
    is_done,
    preflight_problems,
)
from jupiterd.core.plan.standby import (
    HIBERNATE_HOWTO,
    health_check_note,
    preflight_warnings,
)
from jupiterd.core.plan.status import (
    AttachmentKind,
    AttachmentState,
    ServiceStatus,
    attachment_states,
    eip_role,
    record_value,
    service_status,
    target_id,
    target_registered,
    target_serving,
)
from jupiterd.core.types import STOPPED_STATES

__all__ = [
    "GONE_STATES",
    "HIBERNATE_HOWTO",
    "MISSING",
    "PEER_THEN_STANDBY",
    "READ_PERMISSIONS",
    "ROLLBACK_PREFIX",
    "STOPPED_STATES",
    "TRAFFIC_KINDS",
    "ArnContext",
    "AttachmentKind",
    "AttachmentState",
    "Conditions",
    "EipFacts",
    "Fallback",
    "InstanceFacts",
    "MemberView",
    "Permission",
    "Plan",
    "PoolView",
    "RecordFacts",
    "RouteTableFacts",
    "ServiceFacts",
    "ServiceStatus",
    "Stage",
    "Step",
    "StepKind",
    "TargetGroupFacts",
    "attachment_states",
    "attachment_users",
    "build_plan",
    "build_rollback",
    "eip_role",
    "health_check_note",
    "is_done",
    "merge_permissions",
    "normalize_record_name",
    "plan_permissions",
    "pool_view",
    "preflight_problems",
    "preflight_warnings",
    "record_value",
    "service_status",
    "sharing_services",
    "target_group_name",
    "target_id",
    "target_registered",
    "target_serving",
    "zone_key",
]
