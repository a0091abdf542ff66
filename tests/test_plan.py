"""Plan building and the reading of AWS facts: pure, table-driven, no AWS."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from jupiterd.config import Config, parse_config
from jupiterd.core.plan import (
    MISSING,
    EipFacts,
    InstanceFacts,
    Permission,
    RecordFacts,
    RouteTableFacts,
    ServiceFacts,
    Stage,
    StepKind,
    TargetGroupFacts,
    build_plan,
    build_rollback,
    health_check_note,
    is_done,
    merge_permissions,
    normalize_record_name,
    plan_permissions,
    preflight_problems,
    preflight_warnings,
    service_status,
    target_group_name,
)
from jupiterd.core.types import Role

ACCOUNT = "123456789012"
TG1 = f"arn:aws:elasticloadbalancing:ap-southeast-2:{ACCOUNT}:targetgroup/sig/0123456789abcdef"
TG2 = f"arn:aws:elasticloadbalancing:ap-southeast-2:{ACCOUNT}:targetgroup/turn-udp/0123456789abcdee"
TOPIC = f"arn:aws:sns:ap-southeast-2:{ACCOUNT}:jupiter-failover-notifications"
EIP = "eipalloc-0123456789abcdef0"
RTB1, RTB2 = "rtb-0123456789abcdef0", "rtb-0123456789abcdef1"
ZONE = "Z0123456789ABCDEFGHIJ"
P_ID, B_ID = "i-0aaaaaaaaaaaaaaa1", "i-0bbbbbbbbbbbbbbb2"


def cfg(attachments: dict[str, Any] | None = None, **svc: Any) -> Config:
    return parse_config(
        {
            "sns_topic_arn": TOPIC,
            "services": {
                "web": {
                    "probe": {"kind": "tcp", "port": 3000},
                    "primary": {"instance_id": P_ID},
                    "backup": {"instance_id": B_ID},
                    "attachments": attachments or {},
                    **svc,
                }
            },
        }
    )


FULL = {
    "target_groups": [TG1, {"arn": TG2, "port": 3478}],
    "elastic_ip": EIP,
    "route53": [
        {"zone_id": ZONE, "name": "web.example.com", "address": "private"},
        {"zone_id": ZONE, "name": "pub.example.com", "address": "public"},
    ],
    "route_tables": [RTB1, RTB2],
}


def inst(role: Role, state: str, n: int) -> InstanceFacts:
    iid = P_ID if role is Role.PRIMARY else B_ID
    return InstanceFacts(
        role,
        iid,
        state,
        private_ip=f"10.0.1.{n}",
        public_ip=f"54.0.0.{n}" if state == "running" else None,
        eni_id=f"eni-0{n:016x}",
        source_dest_check=True,
    )


def facts_on(role: Role, *, backup_state: str = "stopped", both_tg: bool = False) -> ServiceFacts:
    """All attachments on ``role``."""
    p = inst(Role.PRIMARY, "running", 10)
    b = inst(Role.BACKUP, backup_state if role is Role.PRIMARY else "running", 11)
    on = p if role is Role.PRIMARY else b
    health: dict[str, tuple[str, str]] = {on.instance_id or "": ("healthy", "")}
    if both_tg:
        other = b if on is p else p
        health[other.instance_id or ""] = ("healthy", "")
    eip = EipFacts(EIP, True, "3.3.3.3", on.instance_id, on.eni_id)
    return ServiceFacts(
        "web",
        p,
        b,
        target_groups=(
            TargetGroupFacts(TG1, True, 3000, health=dict(health)),
            TargetGroupFacts(TG2, True, 3478, health=dict(health)),
        ),
        elastic_ip=eip,
        records=(
            RecordFacts(ZONE, "web.example.com.", "A", True, 60, (on.private_ip or "",)),
            RecordFacts(ZONE, "pub.example.com.", "A", True, 300, ("3.3.3.3",)),
        ),
        route_tables=(
            RouteTableFacts(RTB1, True, True, on.eni_id, None, "active"),
            RouteTableFacts(RTB2, True, True, on.eni_id, None, "active"),
        ),
    )


# --------------------------------------------------------------------------- plan shape


def test_full_plan_order_and_stages():
    plan = build_plan(cfg(FULL), "web", Role.BACKUP, facts_on(Role.PRIMARY))
    assert plan.direction == "failover"
    assert [s.name for s in plan.steps] == [
        "start_standby",
        "standby_healthy",
        "register_early:sig",
        "register_early:turn-udp",
        "source_dest_check",
        "register_target:sig",
        "register_target:turn-udp",
        f"associate_eip:{EIP}",
        "upsert_record:web.example.com/A",
        "upsert_record:pub.example.com/A",
        f"replace_route:{RTB1}",
        f"replace_route:{RTB2}",
        "deregister_target:sig",
        "deregister_target:turn-udp",
        "stop_old",
        "notify",
    ]
    stages = dict(plan.stages())
    assert list(stages) == [
        Stage.START,
        Stage.HEALTHY,
        Stage.ATTACH,
        Stage.DETACH,
        Stage.STOP,
        Stage.NOTIFY,
    ]
    assert len(stages[Stage.ATTACH]) == 8
    # The standby enters its target groups beside its probes, before any traffic step.
    assert [s.name for s in stages[Stage.HEALTHY]] == [
        "standby_healthy",
        "register_early:sig",
        "register_early:turn-udp",
    ]
    late = build_plan(cfg(FULL, register_early=False), "web", Role.BACKUP, facts_on(Role.PRIMARY))
    assert [s.name for s in late.stages()[1][1]] == ["standby_healthy"]
    assert plan.step(f"replace_route:{RTB1}").after == ("source_dest_check",)
    assert plan.step("register_target:sig").after == ()
    assert plan.step("stop_old").role is Role.PRIMARY
    assert plan.step("start_standby").params["instance_id"] == B_ID
    assert plan.step("register_target:turn-udp").params["port"] == 3478


def test_failback_swaps_roles():
    plan = build_plan(cfg(FULL), "web", Role.PRIMARY, facts_on(Role.BACKUP))
    assert plan.direction == "failback"
    assert plan.step("start_standby").params["instance_id"] == P_ID
    assert plan.step("stop_old").params["instance_id"] == B_ID
    assert plan.step("deregister_target:sig").role is Role.BACKUP


@pytest.mark.parametrize(
    ("attachments", "extra", "present", "absent"),
    [
        ({}, {}, {"start_standby", "stop_old", "notify"}, {"source_dest_check"}),
        ({"route_tables": [RTB1]}, {}, {"source_dest_check"}, set()),
        ({"target_groups": [TG1]}, {"stop_old": False}, {"deregister_target:sig"}, {"stop_old"}),
        ({"target_groups": [TG1, TG1]}, {}, {"register_target:sig"}, set()),
    ],
)
def test_plan_steps_follow_the_config(attachments, extra, present, absent):
    plan = build_plan(cfg(attachments, **extra), "web", Role.BACKUP, facts_on(Role.PRIMARY))
    names = [s.name for s in plan.steps]
    assert present <= set(names)
    assert not absent & set(names)
    assert len(names) == len(set(names))


def test_no_topic_no_notify():
    c = cfg({}).model_copy(update={"sns_topic_arn": None})
    plan = build_plan(c, "web", Role.BACKUP, facts_on(Role.PRIMARY))
    assert "notify" not in [s.name for s in plan.steps]


def test_plan_does_not_depend_on_state():
    """A resumed plan must have the same step names as the first run."""
    c = cfg(FULL)
    a = build_plan(c, "web", Role.BACKUP, facts_on(Role.PRIMARY))
    b = build_plan(c, "web", Role.BACKUP, facts_on(Role.BACKUP))
    assert [s.name for s in a.steps] == [s.name for s in b.steps]


# --------------------------------------------------------------------------- IAM


def test_permissions_name_resources():
    plan = build_plan(cfg(FULL), "web", Role.BACKUP, facts_on(Role.PRIMARY))
    perms = {p.action: p for p in plan_permissions([plan])}
    assert perms["ec2:StartInstances"].resources == (
        f"arn:aws:ec2:ap-southeast-2:{ACCOUNT}:instance/{B_ID}",
    )
    assert perms["ec2:StopInstances"].resources == (
        f"arn:aws:ec2:ap-southeast-2:{ACCOUNT}:instance/{P_ID}",
    )
    assert perms["elasticloadbalancing:RegisterTargets"].resources == (TG1, TG2)
    assert perms["ec2:ReplaceRoute"].resources == (
        f"arn:aws:ec2:ap-southeast-2:{ACCOUNT}:route-table/{RTB1}",
        f"arn:aws:ec2:ap-southeast-2:{ACCOUNT}:route-table/{RTB2}",
    )
    assert f"arn:aws:ec2:ap-southeast-2:{ACCOUNT}:elastic-ip/{EIP}" in (
        perms["ec2:AssociateAddress"].resources
    )
    assert perms["sns:Publish"].resources == (TOPIC,)
    assert perms["sns:GetTopicAttributes"].resources == (TOPIC,)
    assert perms["ec2:DescribeInstances"].resources == ("*",)
    change = [p for p in plan_permissions([plan]) if p.action == "route53:ChangeResourceRecordSets"]
    names = {
        c.conditions["ForAllValues:StringEquals"][
            "route53:ChangeResourceRecordSetsNormalizedRecordNames"
        ][0]
        for c in change
    }
    assert names == {"web.example.com", "pub.example.com"}
    assert all(c.resources == (f"arn:aws:route53:::hostedzone/{ZONE}",) for c in change)


def test_permissions_without_instance_ids_use_tag_conditions():
    c = parse_config({"services": {"web": {"probe": {"kind": "tcp", "port": 1}}}})
    f = ServiceFacts(
        "web", InstanceFacts(Role.PRIMARY, None, MISSING), InstanceFacts(Role.BACKUP, None, MISSING)
    )
    plan = build_plan(c, "web", Role.BACKUP, f)
    start = plan.step("start_standby").permissions[0]
    assert start.resources == ("arn:aws:ec2:ap-southeast-2:*:instance/*",)
    assert start.conditions["StringEquals"]["aws:ResourceTag/Role"] == ("backup",)
    assert start.conditions["StringEquals"]["aws:ResourceTag/Service"] == ("web",)


def test_merge_permissions():
    merged = merge_permissions(
        [
            Permission("a:X", ("r1",)),
            Permission("a:X", ("r2", "r1")),
            Permission("a:Y"),
            Permission("a:X", ("*",), {"StringEquals": {"k": ("v",)}}),
        ]
    )
    assert merged == (
        Permission("a:X", ("r1", "r2")),
        Permission("a:Y", ("*",)),
        Permission("a:X", ("*",), {"StringEquals": {"k": ("v",)}}),
    )


# --------------------------------------------------------------------------- rollback


def test_rollback_before_traffic_only_stops_the_standby():
    c = cfg(FULL)
    plan = build_plan(c, "web", Role.BACKUP, facts_on(Role.PRIMARY))
    rb = build_rollback(c, plan, facts_on(Role.PRIMARY), started_standby=True, traffic_moved=False)
    assert [s.name for s in rb.steps] == ["rollback:stop_standby"]
    assert rb.steps[0].params["instance_id"] == B_ID
    rb = build_rollback(c, plan, facts_on(Role.PRIMARY), started_standby=False, traffic_moved=False)
    assert rb.steps == ()


def test_rollback_of_an_early_registration_deregisters_the_standby():
    c = cfg(FULL)
    plan = build_plan(c, "web", Role.BACKUP, facts_on(Role.PRIMARY))
    rb = build_rollback(
        c,
        plan,
        facts_on(Role.PRIMARY),
        started_standby=True,
        traffic_moved=False,
        registered_early=True,
    )
    # No health check of the old instance: nothing moved off it.
    assert [s.name for s in rb.steps] == [
        "rollback:deregister_target:sig",
        "rollback:deregister_target:turn-udp",
        "rollback:stop_standby",
    ]
    assert all(s.role is Role.BACKUP for s in rb.steps)
    assert rb.steps[0].stage < rb.steps[-1].stage  # detached before it is stopped


def test_rollback_after_traffic_moves_it_back():
    c = cfg(FULL)
    plan = build_plan(c, "web", Role.BACKUP, facts_on(Role.PRIMARY))
    rb = build_rollback(c, plan, facts_on(Role.PRIMARY), started_standby=True, traffic_moved=True)
    names = [s.name for s in rb.steps]
    assert names[0] == "rollback:standby_healthy"  # the old instance must still be healthy
    assert rb.steps[0].role is Role.PRIMARY
    assert "rollback:register_target:sig" in names
    assert "rollback:deregister_target:sig" in names
    assert names[-1] == "rollback:stop_standby"
    assert rb.step("rollback:deregister_target:sig").role is Role.BACKUP
    assert rb.step(f"rollback:replace_route:{RTB1}").after == ()
    assert all(s.kind is not StepKind.NOTIFY for s in rb.steps)


# --------------------------------------------------------------------------- status


def test_status_all_on_primary():
    st = service_status(cfg(FULL), "web", facts_on(Role.PRIMARY))
    assert st.active is Role.PRIMARY
    assert st.agree and st.healthy, st.notes
    assert st.notes == ()
    assert len(st.attachments) == 7


def test_status_all_on_backup():
    st = service_status(cfg(FULL), "web", facts_on(Role.BACKUP))
    assert st.active is Role.BACKUP and st.agree and st.healthy


def test_status_half_done_target_group_has_both():
    st = service_status(
        cfg(FULL), "web", facts_on(Role.PRIMARY, backup_state="running", both_tg=True)
    )
    assert st.active is None and not st.agree and not st.healthy
    assert any("has both instances" in n and "half-done" in n for n in st.notes), st.notes


def test_status_split_eip_elsewhere():
    f = facts_on(Role.PRIMARY, backup_state="running")
    f = replace(f, elastic_ip=replace(f.elastic_ip, instance_id=B_ID))
    st = service_status(cfg(FULL), "web", f)
    assert st.active is None and not st.agree
    split = [n for n in st.notes if n.startswith("split:")]
    assert split and f"elastic ip {EIP} -> backup" in split[0]
    # the public record follows the EIP, so it moved with it
    assert "route53 pub.example.com A -> backup" in split[0]


def test_status_traffic_on_a_stopped_instance():
    f = facts_on(Role.PRIMARY)
    f = replace(f, primary=replace(f.primary, state="stopped"))
    st = service_status(cfg(FULL), "web", f)
    assert st.active is Role.PRIMARY and st.agree and not st.healthy
    assert any("which is stopped" in n for n in st.notes)
    assert any("both instances are stopped" in n for n in st.notes)


def test_status_missing_attachments():
    f = replace(facts_on(Role.PRIMARY), target_groups=(), route_tables=())
    st = service_status(cfg(FULL), "web", f)
    assert not st.agree
    assert any("target group sig points at neither instance (not found)" in n for n in st.notes)


def test_status_no_attachments():
    st = service_status(cfg({}), "web", facts_on(Role.PRIMARY))
    assert st.active is None and st.agree and st.healthy
    assert any("no attachments" in n for n in st.notes)


def test_status_ip_target_groups_use_private_ips():
    f = facts_on(Role.PRIMARY)
    f = replace(
        f,
        target_groups=(
            TargetGroupFacts(TG1, True, 3000, "ip", health={"10.0.1.10": ("healthy", "")}),
            TargetGroupFacts(TG2, True, 3478, "ip", health={"10.0.1.10": ("healthy", "")}),
        ),
    )
    assert service_status(cfg(FULL), "web", f).active is Role.PRIMARY


# --------------------------------------------------------------------------- preflight


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda f: f, None),
        (
            lambda f: replace(f, backup=replace(f.backup, state="terminated")),
            "is terminated: nothing to fail over to",
        ),
        (
            lambda f: replace(f, backup=InstanceFacts(Role.BACKUP, None, MISSING)),
            "the backup instance (tags Project=Jupiter, Service=web, Role=backup) does not exist",
        ),
        (
            lambda f: replace(f, target_groups=(TargetGroupFacts(TG1, False),)),
            f"target group {TG1} does not exist",
        ),
        (
            lambda f: replace(f, elastic_ip=EipFacts(EIP, False)),
            f"Elastic IP {EIP} does not exist",
        ),
        (
            lambda f: replace(
                f, records=(RecordFacts(ZONE, "web.example.com", "A", True, alias=True),)
            ),
            "is an alias record",
        ),
        (
            lambda f: replace(
                f, route_tables=(RouteTableFacts(RTB1, True, False), f.route_tables[1])
            ),
            f"route table {RTB1} has no 0.0.0.0/0 route to move",
        ),
        (
            lambda f: replace(f, backup=replace(f.backup, problem="2 instances carry its tags")),
            "2 instances carry its tags",
        ),
    ],
)
def test_preflight(change, expected):
    problems = preflight_problems(cfg(FULL), "web", change(facts_on(Role.PRIMARY)), Role.BACKUP)
    if expected is None:
        assert problems == []
    else:
        assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("svc", "hibernation", "expected"),
    [
        ({}, False, []),  # standby_stop: stop asks for nothing
        ({"standby_stop": "hibernate"}, True, []),
        ({"standby_stop": "hibernate"}, None, []),  # EC2 did not say: no guess
        ({"standby_stop": "hibernate"}, False, ["was not launched with hibernation configured"]),
        (
            {"standby_stop": "hibernate", "fallback_instance_types": ["m5.large"]},
            True,
            ["fallback_instance_types do not apply while"],
        ),
    ],
)
def test_preflight_warnings(svc, hibernation, expected):
    f = facts_on(Role.PRIMARY)
    f = replace(f, backup=replace(f.backup, hibernation_configured=hibernation))
    c = cfg(FULL, **svc)
    warnings = preflight_warnings(c, "web", f)
    assert len(warnings) == len(expected)
    for w, e in zip(warnings, expected, strict=True):
        assert e in w and B_ID in w
    # a warning never stops the plan
    assert preflight_problems(c, "web", f, Role.BACKUP) == []


def test_health_check_note():
    f = facts_on(Role.PRIMARY)
    tg1 = replace(f.target_groups[0], health_check_interval=30, healthy_threshold=5)
    tg2 = replace(f.target_groups[1], health_check_interval=10, healthy_threshold=3)
    f = replace(f, target_groups=(tg1, tg2))
    note = health_check_note(cfg(FULL), "web", f)
    assert note is not None
    assert "sig 30s x 5 = up to 150s, turn-udp 10s x 3 = up to 30s" in note
    assert "overlap its application's start" in note
    late = health_check_note(cfg(FULL, register_early=False), "web", f)
    assert late is not None and "register_early is off" in late
    # Without health checks, or figures, nothing to say.
    off = replace(f, target_groups=(replace(tg1, health_check_enabled=False),))
    assert health_check_note(cfg({"target_groups": [TG1]}), "web", off) is None
    assert health_check_note(cfg(FULL), "web", facts_on(Role.PRIMARY)) is None


def test_is_done():
    c = cfg(FULL)
    assert not is_done(c, "web", facts_on(Role.PRIMARY), Role.BACKUP)
    on_b = facts_on(Role.BACKUP)
    # traffic on the backup, but the old primary still runs and stop_old is on
    assert not is_done(c, "web", on_b, Role.BACKUP)
    stopped = replace(on_b, primary=replace(on_b.primary, state="stopped"))
    assert is_done(c, "web", stopped, Role.BACKUP)
    assert is_done(cfg(FULL, stop_old=False), "web", on_b, Role.BACKUP)
    assert not is_done(c, "web", stopped, Role.PRIMARY)


@pytest.mark.parametrize(
    ("name", "norm"),
    [("Web.Example.com.", "web.example.com"), ("\\052.example.com.", "*.example.com")],
)
def test_record_names(name, norm):
    assert normalize_record_name(name) == norm


def test_target_group_name():
    assert target_group_name(TG1) == "sig"
