"""The least-privilege IAM policy for a configuration: pure, no I/O.

The policy is derived from the plans themselves: every failover and failback
plan of every configured service, with its full rollback, declares the IAM
actions its steps need with resource ARNs and conditions (``plan.Step``).
This module unites them with the read-only calls every plan and the
inventory make, and narrows the result further:

- mutating actions carry ``aws:ResourceTag/Project = <project_tag>`` where
  AWS evaluates resource tags for every resource type the statement names
  (EC2 instances, Elastic IPs, route tables, network interfaces, ELB target
  groups, SNS topics). Route 53 hosted zones have no tag conditions: there
  the plan's record-name, record-type and UPSERT-only conditions apply;
- resources are exact ARNs wherever the action supports resource-level
  permissions; ``*`` only for the describes that support nothing else, and
  those are pinned to the configured region with ``aws:RequestedRegion``;
- every statement's ``Sid`` says why it exists.

A service's AWS-side witness (``witness:``) adds the one read its kind
makes: DescribeTargetHealth (elb), DescribeInstanceStatus (ec2_status,
``*`` only, pinned to the region) or DescribeAlarms on that alarm's ARN
(cloudwatch).

``jupiterd iam-policy`` prints ``policy_json(config)``;
``config/iam-policy.json`` is that output for ``config/jupiter.example.yaml``.

The leader lease of replicated deciders (``jupiterd.aws.lease``) is not
wired into the daemon yet: its DynamoDB calls on the one table are a
statement set of their own, ``ha_policy(region, table)`` (``jupiterd
iam-policy --ha TABLE``).

``jupiterd discover`` reads the whole account once, before a configuration
exists, with calls the daemon never makes (every hosted zone, the topics,
the security groups): they are a policy of their own for the person who
runs it, ``discover_policy(region)`` (``jupiterd iam-policy --discover``),
not part of the daemon's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jupiterd.config import Config
from jupiterd.core.plan import (
    ArnContext,
    InstanceFacts,
    Permission,
    Plan,
    ServiceFacts,
    build_plan,
    build_rollback,
    merge_permissions,
    plan_permissions,
)
from jupiterd.core.types import Role

# Actions whose every resource type accepts aws:ResourceTag conditions
# (AWS Service Authorization Reference; tests cross-check parliament's copy).
TAG_CONDITIONED = frozenset(
    {
        "ec2:StartInstances",
        "ec2:StopInstances",
        "ec2:ModifyInstanceAttribute",
        "ec2:AssociateAddress",
        "ec2:ReplaceRoute",
        "elasticloadbalancing:RegisterTargets",
        "elasticloadbalancing:DeregisterTargets",
        "sns:Publish",
    }
)

# Describes that support no resource-level permissions: Resource "*" is the
# only form AWS accepts; the region condition is the narrowing left.
STAR_ONLY = frozenset(
    {
        "ec2:DescribeInstances",
        "ec2:DescribeAddresses",
        "ec2:DescribeRouteTables",
        "ec2:DescribeSubnets",
        "ec2:DescribeNetworkInterfaceAttribute",
        "elasticloadbalancing:DescribeTargetGroups",
        "elasticloadbalancing:DescribeTargetHealth",
        "ec2:DescribeInstanceStatus",
    }
)

# Statement order and the reason each exists, as its Sid (IAM allows only
# letters and digits there). Actions not listed get a Sid naming them.
GROUPS: tuple[tuple[str, frozenset[str]], ...] = (
    (
        "ReadEc2StateDescribeSupportsOnlyStarSoPinnedToRegion",
        frozenset(
            {
                "ec2:DescribeInstances",
                "ec2:DescribeAddresses",
                "ec2:DescribeRouteTables",
                "ec2:DescribeSubnets",
                "ec2:DescribeNetworkInterfaceAttribute",
            }
        ),
    ),
    (
        "ReadTargetGroupsDescribeSupportsOnlyStarSoPinnedToRegion",
        frozenset(
            {
                "elasticloadbalancing:DescribeTargetGroups",
                "elasticloadbalancing:DescribeTargetHealth",
            }
        ),
    ),
    (
        "StartStandbyAndStopOldInstanceOnlyTaggedProjectInstances",
        frozenset({"ec2:StartInstances", "ec2:StopInstances"}),
    ),
    (
        "NatSourceDestCheckOrStandbyFallbackTypeOnlyTaggedProjectInstances",
        frozenset({"ec2:ModifyInstanceAttribute"}),
    ),
    ("MoveElasticIpToStandbyOnlyTaggedProjectResources", frozenset({"ec2:AssociateAddress"})),
    ("PointNatRoutesAtStandbyOnlyTaggedProjectRouteTables", frozenset({"ec2:ReplaceRoute"})),
    (
        "MoveTargetsBetweenInstancesOnlyTaggedProjectTargetGroups",
        frozenset(
            {
                "elasticloadbalancing:RegisterTargets",
                "elasticloadbalancing:DeregisterTargets",
            }
        ),
    ),
    ("ReadRecordsOfConfiguredHostedZones", frozenset({"route53:ListResourceRecordSets"})),
    (
        "UpsertOnlyConfiguredRecordsRoute53HasNoTagConditions",
        frozenset({"route53:ChangeResourceRecordSets"}),
    ),
    ("WaitForRoute53ChangesToBeInSync", frozenset({"route53:GetChange"})),
    ("PublishFailoverSummariesOnlyTaggedProjectTopics", frozenset({"sns:Publish"})),
    ("CheckNotificationTopicExistsInDryRun", frozenset({"sns:GetTopicAttributes"})),
    (
        "WitnessReadsEc2StatusChecksDescribeSupportsOnlyStarSoPinnedToRegion",
        frozenset({"ec2:DescribeInstanceStatus"}),
    ),
    ("WitnessReadsTheStateOfConfiguredAlarmsOnly", frozenset({"cloudwatch:DescribeAlarms"})),
)

# Managed policies hold at most 6,144 characters, whitespace not counted.
MANAGED_POLICY_LIMIT = 6144


@dataclass(frozen=True, slots=True)
class Statement:
    sid: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    conditions: Mapping[str, Mapping[str, tuple[str, ...]]]

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "Sid": self.sid,
            "Effect": "Allow",
            "Action": list(self.actions) if len(self.actions) > 1 else self.actions[0],
            "Resource": list(self.resources) if len(self.resources) > 1 else self.resources[0],
        }
        if self.conditions:
            doc["Condition"] = {
                op: {k: list(v) if len(v) > 1 else v[0] for k, v in sorted(keys.items())}
                for op, keys in sorted(self.conditions.items())
            }
        return doc


def _facts(config: Config, service: str) -> ServiceFacts:
    """What a plan needs to know about the instances without asking AWS:
    their ids from the configuration (or none: then plans name them by
    tags). Network interfaces are unknown offline, so their ARN is a
    wildcard, narrowed by the tag condition."""
    svc = config.services[service]
    return ServiceFacts(
        service,
        InstanceFacts(Role.PRIMARY, svc.primary.instance_id, "unknown"),
        InstanceFacts(Role.BACKUP, svc.backup.instance_id, "unknown"),
    )


def plans_for(config: Config) -> list[Plan]:
    """Every plan the executor may run: both directions of every service,
    and each one's complete rollback (which may stop a standby it started
    even when ``stop_old`` is off)."""
    out: list[Plan] = []
    for name in config.services:
        facts = _facts(config, name)
        for to_role in (Role.BACKUP, Role.PRIMARY):
            plan = build_plan(config, name, to_role, facts)
            out.append(plan)
            out.append(
                build_rollback(config, plan, facts, started_standby=True, traffic_moved=True)
            )
    return out


def _with_tag(perm: Permission, project_tag: str) -> Permission:
    if perm.action not in TAG_CONDITIONED:
        return perm
    conds = {op: dict(keys) for op, keys in perm.conditions.items()}
    conds.setdefault("StringEquals", {})["aws:ResourceTag/Project"] = (project_tag,)
    return Permission(perm.action, perm.resources, conds)


def _with_region(perm: Permission, region: str) -> Permission:
    if perm.action not in STAR_ONLY:
        return perm
    conds = {op: dict(keys) for op, keys in perm.conditions.items()}
    conds.setdefault("StringEquals", {})["aws:RequestedRegion"] = (region,)
    return Permission(perm.action, ("*",), conds)


def witness_permissions(config: Config) -> list[Permission]:
    """The reads of the AWS-side witnesses configured (``witness:`` of a
    service, ``jupiterd.aws.witness``): none without one."""
    arns = ArnContext.from_config(config)
    out: list[Permission] = []
    for svc in config.services.values():
        w = svc.witness
        if w is None:
            continue
        if w.kind == "elb":
            out.append(Permission("elasticloadbalancing:DescribeTargetHealth"))
        elif w.kind == "ec2_status":
            out.append(Permission("ec2:DescribeInstanceStatus"))
        else:
            alarm = f"arn:{arns.partition}:cloudwatch:{arns.region}:{arns.account}:alarm:{w.alarm}"
            out.append(Permission("cloudwatch:DescribeAlarms", (alarm,)))
    return out


def permissions(config: Config) -> tuple[Permission, ...]:
    """Everything jupiterd may call for ``config``, narrowed."""
    plans = plans_for(config)
    # the plans' read-only calls included
    perms = (*plan_permissions(plans), *witness_permissions(config))
    narrowed = [_with_region(_with_tag(p, config.project_tag), config.aws.region) for p in perms]
    # Sorted resources, so that actions on the same set share a statement.
    return merge_permissions(
        Permission(p.action, tuple(sorted(p.resources)), p.conditions) for p in narrowed
    )


def _cond_key(conditions: Mapping[str, Mapping[str, tuple[str, ...]]]) -> str:
    return json.dumps(
        {op: {k: list(v) for k, v in keys.items()} for op, keys in conditions.items()},
        sort_keys=True,
    )


def statements(config: Config) -> list[Statement]:
    perms = permissions(config)
    order = {a: i for i, (_, actions) in enumerate(GROUPS) for a in actions}
    by_group: dict[str, list[Permission]] = {}
    for p in perms:
        i = order.get(p.action)
        sid = GROUPS[i][0] if i is not None else _sid_for(p.action)
        by_group.setdefault(sid, []).append(p)
    sids = [sid for sid, _ in GROUPS if sid in by_group]
    sids += sorted(s for s in by_group if s not in sids)
    out: list[Statement] = []
    for sid in sids:
        # Actions on the same resources under the same conditions share a
        # statement; anything narrower stays apart (per-record conditions).
        parts: dict[tuple[tuple[str, ...], str], list[Permission]] = {}
        for p in by_group[sid]:
            parts.setdefault((p.resources, _cond_key(p.conditions)), []).append(p)
        for n, ((resources, _), group) in enumerate(parts.items(), start=1):
            actions = tuple(sorted({p.action for p in group}))
            suffix = str(n) if len(parts) > 1 else ""
            out.append(Statement(sid + suffix, actions, resources, group[0].conditions))
    return out


def _sid_for(action: str) -> str:
    service, _, name = action.partition(":")
    return "DeclaredByPlanStep" + "".join(w.capitalize() for w in service.split("-")) + name


def policy(config: Config) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [s.to_json() for s in statements(config)],
    }


def policy_json(config: Config) -> str:
    """The policy document as ``jupiterd iam-policy`` prints it."""
    return json.dumps(policy(config), indent=2) + "\n"


def compact_size(document: str) -> int:
    """The length IAM counts against its quota: whitespace excluded."""
    return len(json.dumps(json.loads(document), separators=(",", ":")))


# --------------------------------------------------------------------------- discover

# What ``jupiterd.aws.discover`` calls; tests check it against the code.
DISCOVER_REGIONAL = (
    "ec2:DescribeAddresses",
    "ec2:DescribeInstances",
    "ec2:DescribeRouteTables",
    "ec2:DescribeSecurityGroups",
    "elasticloadbalancing:DescribeTargetGroups",
    "elasticloadbalancing:DescribeTargetHealth",
    "sns:ListTopics",
)
DISCOVER_ACTIONS = frozenset(
    {*DISCOVER_REGIONAL, "route53:ListHostedZones", "route53:ListResourceRecordSets"}
)


def discover_policy(region: str) -> dict[str, Any]:
    """The read-only policy ``jupiterd discover`` needs: describes and lists
    only, pinned to ``region`` where the action is regional."""
    stmts = [
        Statement(
            "DiscoverReadsInstancesAndWhatPointsAtThemOnlyStarSoPinnedToRegion",
            DISCOVER_REGIONAL,
            ("*",),
            {"StringEquals": {"aws:RequestedRegion": (region,)}},
        ),
        Statement(
            "DiscoverListsHostedZonesRoute53IsGlobal", ("route53:ListHostedZones",), ("*",), {}
        ),
        Statement(
            "DiscoverReadsRecordsOfEveryHostedZone",
            ("route53:ListResourceRecordSets",),
            ("arn:aws:route53:::hostedzone/*",),
            {},
        ),
    ]
    return {"Version": "2012-10-17", "Statement": [s.to_json() for s in stmts]}


# --------------------------------------------------------------------------- ha

# What ``jupiterd.aws.lease``, ``views``, ``ha_table`` and the shared journal
# (``ha_journal``, ``ha_reader``) call; tests check it against the code.
HA_RUN = (
    "dynamodb:BatchGetItem",
    "dynamodb:ConditionCheckItem",
    "dynamodb:GetItem",
    "dynamodb:UpdateItem",
)
HA_VIEWS = ("dynamodb:Scan",)  # every replica's view, one Scan (UpdateItem: its own)
# TransactWriteItems is no IAM action: each item of a transaction needs the
# permission of its kind (the journal's: a ConditionCheck on the lease item
# and Updates of its own items).
HA_TRANSACT = {
    "dynamodb:TransactWriteItems": ("dynamodb:ConditionCheckItem", "dynamodb:UpdateItem")
}
HA_INIT = (
    "dynamodb:CreateTable",
    "dynamodb:DescribeTable",
    "dynamodb:DescribeTimeToLive",
    "dynamodb:UpdateTimeToLive",
)
HA_ACTIONS = frozenset({*HA_RUN, *HA_VIEWS, *HA_INIT})


def ha_policy(region: str, table: str) -> dict[str, Any]:
    """The DynamoDB statements replicated deciders need on ``table`` only:
    reading and conditionally updating its items (the lease, each
    replica's view, the shared journal), reading every view, and (``ha
    init``) creating the table and its TTL."""
    arn = f"arn:aws:dynamodb:{region}:*:table/{table}"
    stmts = [
        Statement("LeaderLeaseConditionalWritesOnTheHaTableOnly", HA_RUN, (arn,), {}),
        Statement("ReplicaViewsReadWithOneScanOfTheHaTableOnly", HA_VIEWS, (arn,), {}),
        Statement("HaInitCreatesTheHaTableAndItsTtlOnly", HA_INIT, (arn,), {}),
    ]
    return {"Version": "2012-10-17", "Statement": [s.to_json() for s in stmts]}
