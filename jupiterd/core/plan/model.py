"""A plan's shape: its steps, their stages and kinds, and the IAM
permissions each declares."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any

from jupiterd.core.execution import Direction, direction_of
from jupiterd.core.types import Role

# --------------------------------------------------------------------------- steps

Conditions = Mapping[str, Mapping[str, tuple[str, ...]]]


@dataclass(frozen=True, slots=True)
class Permission:
    """One IAM statement's worth: an action on resources, with conditions."""

    action: str  # "ec2:StartInstances"
    resources: tuple[str, ...] = ("*",)
    conditions: Conditions = field(default_factory=dict)


class Stage(IntEnum):
    PREFLIGHT = 1
    FALLBACK = 2  # a NAT pool member's routes through a surviving member at once
    START = 3
    HEALTHY = 4
    ATTACH = 5
    DETACH = 6
    STOP = 7
    NOTIFY = 8


class StepKind(StrEnum):
    START_STANDBY = "start_standby"
    STANDBY_HEALTHY = "standby_healthy"
    REGISTER_EARLY = "register_early"  # the standby in its target groups once it runs
    SOURCE_DEST_CHECK = "source_dest_check"
    REGISTER_TARGET = "register_target"
    ASSOCIATE_EIP = "associate_eip"
    UPSERT_RECORD = "upsert_record"
    REPLACE_ROUTE = "replace_route"
    REROUTE_PEER = "reroute_peer"
    DEREGISTER_TARGET = "deregister_target"
    STOP_INSTANCE = "stop_instance"
    NOTIFY = "notify"


TRAFFIC_KINDS = frozenset(
    {
        StepKind.REGISTER_TARGET,
        StepKind.ASSOCIATE_EIP,
        StepKind.UPSERT_RECORD,
        StepKind.REPLACE_ROUTE,
        StepKind.REROUTE_PEER,
    }
)


@dataclass(frozen=True, slots=True)
class Step:
    """One idempotent step. ``role`` is the instance it acts on or for;
    ``resource`` is what error messages name; ``after`` names steps of the
    same stage that must finish first (the NAT source/dest check before the
    routes)."""

    name: str
    kind: StepKind
    stage: Stage
    role: Role
    resource: str
    params: Mapping[str, Any] = field(default_factory=dict)
    permissions: tuple[Permission, ...] = ()
    after: tuple[str, ...] = ()

    @property
    def mutating(self) -> bool:
        return self.kind is not StepKind.STANDBY_HEALTHY


@dataclass(frozen=True, slots=True)
class Plan:
    service: str
    from_role: Role
    to_role: Role
    steps: tuple[Step, ...]
    # Sentences on what the plan leaves out and why (an instance kept
    # running because another service's attachment points at it).
    notes: tuple[str, ...] = ()

    @property
    def direction(self) -> Direction:
        return direction_of(self.to_role)

    def stages(self) -> list[tuple[Stage, tuple[Step, ...]]]:
        out: dict[Stage, list[Step]] = {}
        for s in self.steps:
            out.setdefault(s.stage, []).append(s)
        return [(stage, tuple(out[stage])) for stage in sorted(out)]

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def permissions(self) -> tuple[Permission, ...]:
        return merge_permissions(p for s in self.steps for p in s.permissions)


def merge_permissions(perms: Iterable[Permission]) -> tuple[Permission, ...]:
    """One entry per (action, conditions), resources united, order kept."""
    merged: dict[tuple[str, str], list[str]] = {}
    conds: dict[tuple[str, str], Conditions] = {}
    for p in perms:
        key = (p.action, repr(sorted((k, sorted(v.items())) for k, v in p.conditions.items())))
        res = merged.setdefault(key, [])
        conds[key] = p.conditions
        for r in p.resources:
            if r not in res:
                res.append(r)
    out = []
    for key, res in merged.items():
        resources = ("*",) if "*" in res else tuple(res)
        out.append(Permission(key[0], resources, conds[key]))
    return tuple(out)


# Read-only calls every plan makes (preflight, state checks, waits).
READ_PERMISSIONS = (
    Permission("ec2:DescribeInstances"),
    Permission("ec2:DescribeAddresses"),
    Permission("ec2:DescribeRouteTables"),
    Permission("elasticloadbalancing:DescribeTargetGroups"),
    Permission("elasticloadbalancing:DescribeTargetHealth"),
)

# What a record that points at a public address reads at preflight: whether
# a stopped standby gets a public address when it starts.
PUBLIC_ADDRESS_READS = (
    Permission("ec2:DescribeSubnets"),
    Permission("ec2:DescribeNetworkInterfaceAttribute"),
)
