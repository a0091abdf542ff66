"""A NAT pool's failover plan, without AWS: the reroute through a
surviving member before the standby starts (peer_then_standby), its guard,
the plan option and its validation, and the machine no longer holding a
NAT member while the standby serves another."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from jupiterd.aws.executor.run import _Run, _Verdict
from jupiterd.aws.executor.steps.sns import summary
from jupiterd.config import ConfigError, parse_config
from jupiterd.core.execution import FailoverRequest, StepReport
from jupiterd.core.health import Guard, Hold, StartFailover, evaluate
from jupiterd.core.plan import (
    Fallback,
    Stage,
    StepKind,
    build_plan,
    build_rollback,
    preflight_problems,
)
from jupiterd.core.types import Role
from jupiterd.runtime.supervisor import policy_of
from tests.clock import FakeClock
from tests.test_pools import (
    B_ID,
    CFG,
    ENI,
    RTB_A,
    S_ID,
    _machine,
    pool_doc,
    pool_facts,
)

VIA_B = Fallback(B_ID, ENI[B_ID], f"nat-b's instance {B_ID}")


def kinds(plan: Any) -> list[tuple[str, Stage]]:
    return [(s.name, s.stage) for s in plan.steps]


def test_default_plan_reroutes_through_the_surviving_member_first() -> None:
    f = replace(pool_facts(Role.PRIMARY, Role.PRIMARY)["nat-a"], fallback=VIA_B)
    plan = build_plan(CFG, "nat-a", Role.BACKUP, f)
    assert kinds(plan)[:3] == [
        (f"reroute_peer:{RTB_A}", Stage.FALLBACK),
        ("start_standby", Stage.START),
        ("standby_healthy", Stage.HEALTHY),
    ]
    first = plan.steps[0]
    assert first.kind is StepKind.REROUTE_PEER
    assert first.params["eni_id"] == ENI[B_ID] and first.params["instance_id"] == B_ID
    # ...and then the routes move to the standby, one NAT per AZ again.
    moves = [s for s in plan.steps if s.kind is StepKind.REPLACE_ROUTE]
    assert [(s.params["route_table_id"], s.role) for s in moves] == [(RTB_A, Role.BACKUP)]
    assert "ec2:ReplaceRoute" in {p.action for p in first.permissions}
    assert plan.notes == ()


def test_guard_no_fallback_gives_the_standby_only_plan_and_says_why() -> None:
    why = f"nat-b's instance {B_ID} fails its icmp probe (timeout: no answer)"
    f = replace(
        pool_facts(Role.PRIMARY, Role.PRIMARY)["nat-a"], fallback=Fallback(None, reason=why)
    )
    plan = build_plan(CFG, "nat-a", Role.BACKUP, f)
    assert not [s for s in plan.steps if s.kind is StepKind.REROUTE_PEER]
    assert plan.steps[0].name == "start_standby"
    assert plan.notes == (f"no reroute through another NAT first: {why}; standby only",)


def test_failback_and_rollback_have_no_reroute() -> None:
    f = replace(pool_facts(Role.BACKUP, Role.PRIMARY)["nat-a"], fallback=VIA_B)
    back = build_plan(CFG, "nat-a", Role.PRIMARY, f)
    assert not [s for s in back.steps if s.kind is StepKind.REROUTE_PEER]
    fwd = build_plan(CFG, "nat-a", Role.BACKUP, replace(f, in_use={}))
    rb = build_rollback(CFG, fwd, f, started_standby=True, traffic_moved=True)
    assert not [s for s in rb.steps if s.kind is StepKind.REROUTE_PEER]


def test_standby_only_option_never_reroutes() -> None:
    doc = pool_doc()
    doc["pools"]["nat"]["plan"] = "standby_only"
    cfg = parse_config(doc)
    f = replace(pool_facts(Role.PRIMARY, Role.PRIMARY)["nat-a"], fallback=VIA_B)
    plan = build_plan(cfg, "nat-a", Role.BACKUP, f)
    assert plan.steps[0].kind is StepKind.START_STANDBY


def test_a_nat_member_fails_over_while_the_standby_serves_another() -> None:
    # The standby forwards for nat-a: nat-b's plan reroutes through it.
    f = pool_facts(Role.BACKUP, Role.PRIMARY)["nat-b"]
    assert preflight_problems(CFG, "nat-b", f, Role.BACKUP) == []
    plan = build_plan(CFG, "nat-b", Role.BACKUP, replace(f, fallback=Fallback(S_ID, ENI[S_ID])))
    assert plan.steps[0].params["eni_id"] == ENI[S_ID]


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"plan": "both"}, "pools.nat.plan"),
        ({"plan": "peer_then_standby", "probe": {"kind": "tcp", "port": 22}}, "pools.nat.plan"),
    ],
)
def test_the_plan_option_is_validated(change: dict[str, Any], key: str) -> None:
    doc = pool_doc()
    doc["pools"]["nat"].update(change)
    with pytest.raises(ConfigError) as err:
        parse_config(doc)
    assert key in str(err.value)


def test_peer_then_standby_needs_route_tables_only() -> None:
    doc = pool_doc()
    doc["pools"]["nat"]["members"]["nat-a"]["attachments"]["elastic_ip"] = "eipalloc-0123456789"
    assert parse_config(doc).pool_plan("nat-a") == "standby_only"  # the default falls back
    doc["pools"]["nat"]["plan"] = "peer_then_standby"
    with pytest.raises(ConfigError, match="attachments other than route_tables"):
        parse_config(doc)


def test_defaults_and_the_daemon_s_policy() -> None:
    assert CFG.pool_plan("nat-a") == "peer_then_standby" and CFG.pool_plan("web") is None
    assert policy_of(CFG).peer_fallback == {"nat-a", "nat-b"}


def test_the_machine_does_not_hold_a_nat_member_while_the_standby_serves_another() -> None:
    state, policy = _machine(Role.BACKUP)
    _, actions = evaluate(state, "nat-b", 10.0, policy)
    assert [h.guard for h in actions if isinstance(h, Hold)] == [Guard.STANDBY_BUSY]
    policy = replace(policy, peer_fallback=frozenset({"nat-a", "nat-b"}))
    _, actions = evaluate(state, "nat-b", 10.0, policy)
    assert [a for a in actions if isinstance(a, StartFailover)]
    assert not [a for a in actions if isinstance(a, Hold)]


def test_the_sns_summary_has_the_step_timeline() -> None:
    run = _Run(FailoverRequest("nat-a", Role.PRIMARY, Role.BACKUP, "down", "daemon"), FakeClock())
    run.reports = [
        StepReport("preflight", True, 0.05, "instances and attachments found"),
        StepReport(f"reroute_peer:{RTB_A}", True, 0.1, "pointed ..."),
        StepReport("start_standby", False, 2.0, "it stayed stopped"),
    ]
    run.began = {f"reroute_peer:{RTB_A}": 0.2, "start_standby": 0.3}
    _, body = summary(run, _Verdict("aborted", "start_standby: it stayed stopped"))
    assert json.loads(body)["timeline"] == [
        "- preflight ok at 0.1s: instances and attachments found",
        f"+0.2s reroute_peer:{RTB_A} ok at +0.3s: pointed ...",
        "+0.3s start_standby FAILED at +2.3s: it stayed stopped",
    ]
