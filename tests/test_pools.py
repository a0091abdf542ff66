"""Pools (a shared standby, N+1), without AWS: the configuration's
expansion and refusals, the plan rule "never stop an instance an attachment
uses", the pool's view, and the machine's ``standby_busy`` guard."""

from __future__ import annotations

import copy
import itertools
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from jupiterd.config import ConfigError, IsolationGuard, parse_config
from jupiterd.core.health import (
    Alert,
    Guard,
    Hold,
    MachineState,
    Policy,
    StartFailover,
    TargetState,
    evaluate,
)
from jupiterd.core.plan import (
    InstanceFacts,
    RouteTableFacts,
    ServiceFacts,
    StepKind,
    attachment_users,
    build_plan,
    build_rollback,
    pool_view,
    preflight_problems,
)
from jupiterd.core.types import Role, Status

A_ID, B_ID, S_ID = "i-0aaaaaaaaaaaaaaa1", "i-0bbbbbbbbbbbbbbb2", "i-0ccccccccccccccc3"
RTB_A, RTB_B = "rtb-0aaaaaaaaaaaaaaa1", "rtb-0bbbbbbbbbbbbbbb2"
ENI = {A_ID: "eni-0aaaaaaaaaaaaaaa1", B_ID: "eni-0bbbbbbbbbbbbbbb2", S_ID: "eni-0ccccccccccccccc3"}


def pool_doc() -> dict[str, Any]:
    return {
        "services": {
            "web": {
                "probe": {"kind": "tcp", "port": 3000},
                "primary": {"instance_id": "i-0ddddddddddddddd4"},
                "backup": {"instance_id": "i-0eeeeeeeeeeeeeee5"},
            }
        },
        "pools": {
            "nat": {
                "probe": {"kind": "icmp"},
                "thresholds": {"fall": 5},
                "stop_old": True,
                "members": {
                    "nat-a": {
                        "instance_id": A_ID,
                        "address": "10.0.1.5",
                        "attachments": {"route_tables": [RTB_A]},
                    },
                    "nat-b": {
                        "instance_id": B_ID,
                        "address": "10.0.2.5",
                        "attachments": {"route_tables": [RTB_B]},
                    },
                },
                "standby": {"instance_id": S_ID, "address": "10.0.3.5"},
            }
        },
    }


# --------------------------------------------------------------------------- configuration


def test_members_expand_into_services_of_the_pool() -> None:
    cfg = parse_config(pool_doc())
    assert list(cfg.services) == ["web", "nat-a", "nat-b"]
    a, b = cfg.services["nat-a"], cfg.services["nat-b"]
    assert (a.pool, b.pool, cfg.services["web"].pool) == ("nat", "nat", None)
    assert a.primary.instance_id == A_ID and b.primary.instance_id == B_ID
    assert a.backup.instance_id == b.backup.instance_id == S_ID
    assert a.backup.address == "10.0.3.5"
    assert a.attachments.route_tables == [RTB_A] and b.attachments.route_tables == [RTB_B]
    assert a.probe.kind == "icmp" and cfg.thresholds("nat-b").fall == 5
    assert cfg.pool_peers("nat-a") == ("nat-b",) and cfg.pool_peers("web") == ()
    assert cfg.pool_members("nat") == ("nat-a", "nat-b")


def test_a_config_of_pools_only_is_valid() -> None:
    doc = pool_doc()
    del doc["services"]
    assert list(parse_config(doc).services) == ["nat-a", "nat-b"]


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    *head, last = path.split(".")
    for k in head:
        doc = doc[k]
    if value is _DEL:
        del doc[last]
    else:
        doc[last] = value


_DEL = object()
WEB_B = "i-0eeeeeeeeeeeeeee5"


@pytest.mark.parametrize(
    ("edits", "key", "words"),
    [
        (
            [("pools.nat.members.nat-b", _DEL)],
            "pools.nat.members",
            "a pool needs at least 2 members (1 given)",
        ),
        (
            [("pools.nat.standby", [{"instance_id": S_ID}, {"instance_id": WEB_B}])],
            "pools.nat.standby",
            "one standby per pool is what is supported",
        ),
        ([("pools.nat.standby", _DEL)], "pools.nat.standby", "required key is missing"),
        (
            [("pools.nat.standby", {"address": "10.0.3.5"})],
            "pools.nat.standby.instance_id",
            "needs its instance_id",
        ),
        (
            [("pools.nat.members.web", {"instance_id": "i-0fffffffffffffff6"})],
            "pools.nat.members.web",
            "a service of that name already exists",
        ),
        (
            [("pools.nat.members.nat-b.instance_id", A_ID)],
            "pools.nat.members.nat-b.instance_id",
            f"{A_ID} is already the primary of nat-a",
        ),
        (
            [("services.web.primary.instance_id", A_ID)],
            "pools.nat.members.nat-a.instance_id",
            f"{A_ID} is already the primary of web",
        ),
        (
            [("pools.nat.standby.instance_id", A_ID)],
            "pools.nat.standby.instance_id",
            f"{A_ID} is also the primary of nat-a",
        ),
        (
            [("services.web.backup.instance_id", S_ID)],
            "pools.nat.standby.instance_id",
            f"{S_ID} is also the backup of web",
        ),
        (
            [
                (
                    "services.web2",
                    {
                        "probe": {"kind": "tcp", "port": 1},
                        "primary": {"instance_id": "i-0fffffffffffffff6"},
                        "backup": {"instance_id": WEB_B},
                    },
                )
            ],
            "services.web2.backup.instance_id",
            f"{WEB_B} is also the backup of web: a standby shared by several services",
        ),
        (
            [("pools.nat.members.nat-b.attachments.route_tables", [RTB_B, RTB_A])],
            "pools.nat.members.nat-b.attachments.route_tables",
            f"{RTB_A} is also an attachment of nat-a",
        ),
        ([("services.web.pool", "nat")], "services.web.pool", "set only by `pools:`"),
        (
            [("pools.nat.members.Nat-C", {"instance_id": "i-0fffffffffffffff6"})],
            "pools",
            "member name 'Nat-C' must be lower-case",
        ),
        (
            [("pools.nat.members.nat-a.backup", {"instance_id": WEB_B})],
            "pools.nat.members.nat-a.backup",
            "unknown key",
        ),
        ([("pools.nat.probe.port", 80)], "pools.nat.probe.port", "an icmp probe has no port"),
    ],
)
def test_layouts_a_pool_cannot_serve_are_refused_naming_the_key(
    edits: list[tuple[str, Any]], key: str, words: str
) -> None:
    doc = pool_doc()
    for path, value in edits:
        _set(doc, path, copy.deepcopy(value) if value is not _DEL else value)
    with pytest.raises(ConfigError) as err:
        parse_config(doc, "f.yaml")
    assert err.value.key == key, str(err.value)
    assert words in err.value.message, str(err.value)


def test_check_config_refuses_a_shared_backup_outside_a_pool_with_exit_78(tmp_path: Any) -> None:
    import subprocess
    import sys

    doc = pool_doc()
    doc["services"]["web"]["backup"]["instance_id"] = S_ID
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    r = subprocess.run(
        [sys.executable, "-m", "jupiterd", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 78, r.stderr
    assert "pools.nat.standby.instance_id" in r.stderr and "Traceback" not in r.stderr


# --------------------------------------------------------------------------- facts


def inst(role: Role, iid: str, state: str) -> InstanceFacts:
    return InstanceFacts(role, iid, state, private_ip="10.0.0.1", eni_id=ENI[iid])


def member_facts(name: str, on: Role, standby_state: str = "running") -> ServiceFacts:
    own = A_ID if name == "nat-a" else B_ID
    rtb = RTB_A if name == "nat-a" else RTB_B
    target = own if on is Role.PRIMARY else S_ID
    return ServiceFacts(
        name,
        inst(Role.PRIMARY, own, "running"),
        inst(Role.BACKUP, S_ID, standby_state),
        route_tables=(RouteTableFacts(rtb, True, True, ENI[target], None, "active"),),
    )


def pool_facts(a_on: Role, b_on: Role) -> dict[str, ServiceFacts]:
    busy = Role.BACKUP in (a_on, b_on)
    state = "running" if busy else "stopped"
    facts = {
        "nat-a": member_facts("nat-a", a_on, state),
        "nat-b": member_facts("nat-b", b_on, state),
    }
    cfg = parse_config(pool_doc())
    return {n: replace(f, in_use=attachment_users(cfg, facts, n)) for n, f in facts.items()}


CFG = parse_config(pool_doc())


def stop_steps(plan: Any) -> list[str]:
    return [s.params["instance_id"] for s in plan.steps if s.kind is StepKind.STOP_INSTANCE]


# --------------------------------------------------------------------------- plans


def test_failover_a_takes_the_free_standby_and_stops_a() -> None:
    f = pool_facts(Role.PRIMARY, Role.PRIMARY)
    assert f["nat-a"].in_use == {}
    assert preflight_problems(CFG, "nat-a", f["nat-a"], Role.BACKUP) == []
    plan = build_plan(CFG, "nat-a", Role.BACKUP, f["nat-a"])
    assert stop_steps(plan) == [A_ID] and plan.notes == ()


def test_failover_b_while_the_standby_serves_a_is_refused_at_preflight() -> None:
    # The standby-only plan; a NAT pool's default plan shares the standby
    # (test_nat_plan.py).
    doc = pool_doc()
    doc["pools"]["nat"]["plan"] = "standby_only"
    f = pool_facts(Role.BACKUP, Role.PRIMARY)
    assert f["nat-b"].in_use == {S_ID: (f"nat-a's route table {RTB_A}",)}
    problems = preflight_problems(parse_config(doc), "nat-b", f["nat-b"], Role.BACKUP)
    assert len(problems) == 1
    assert "shared standby of pool nat and already serves another member" in problems[0]
    assert f"nat-a's route table {RTB_A}" in problems[0]


def test_failback_a_while_the_standby_serves_b_keeps_the_standby_running() -> None:
    # The reproduction: failover a, failover b, failback a.
    f = pool_facts(Role.BACKUP, Role.BACKUP)
    plan = build_plan(CFG, "nat-a", Role.PRIMARY, f["nat-a"])
    assert stop_steps(plan) == []
    assert plan.notes == (
        f"the backup ({S_ID}) is not stopped: nat-b's route table {RTB_B} still points at it",
    )
    # ...and the route of a alone moves back.
    routes = [s.params["route_table_id"] for s in plan.steps if s.kind is StepKind.REPLACE_ROUTE]
    assert routes == [RTB_A]


def test_failback_of_the_last_member_on_the_standby_stops_it() -> None:
    f = pool_facts(Role.BACKUP, Role.PRIMARY)
    plan = build_plan(CFG, "nat-a", Role.PRIMARY, f["nat-a"])
    assert stop_steps(plan) == [S_ID] and plan.notes == ()


def test_rollback_never_stops_a_standby_another_member_uses() -> None:
    f = pool_facts(Role.PRIMARY, Role.BACKUP)
    forward = build_plan(CFG, "nat-a", Role.BACKUP, f["nat-a"])
    rb = build_rollback(CFG, forward, f["nat-a"], started_standby=True, traffic_moved=True)
    assert stop_steps(rb) == [] and "nat-b's route table" in rb.notes[0]
    free = pool_facts(Role.PRIMARY, Role.PRIMARY)
    rb = build_rollback(CFG, forward, free["nat-a"], started_standby=True, traffic_moved=True)
    assert stop_steps(rb) == [S_ID]


@pytest.mark.parametrize(
    ("a_on", "b_on", "to"),
    [
        (a, b, t)
        for a, b in itertools.product((Role.PRIMARY, Role.BACKUP), repeat=2)
        for t in (Role.PRIMARY, Role.BACKUP)
    ],
)
def test_no_plan_stops_an_instance_another_attachment_uses(
    a_on: Role, b_on: Role, to: Role
) -> None:
    f = pool_facts(a_on, b_on)
    used_by_b = {S_ID} if b_on is Role.BACKUP else {B_ID}
    plan = build_plan(CFG, "nat-a", to, f["nat-a"])
    assert not set(stop_steps(plan)) & used_by_b
    rb = build_rollback(CFG, plan, f["nat-a"], started_standby=True, traffic_moved=True)
    assert not set(stop_steps(rb)) & used_by_b


@pytest.mark.parametrize(
    ("a_on", "b_on", "serves", "summary"),
    [
        (Role.PRIMARY, Role.PRIMARY, (), "serves none"),
        (Role.BACKUP, Role.PRIMARY, ("nat-a",), "serves nat-a"),
        (Role.PRIMARY, Role.BACKUP, ("nat-b",), "serves nat-b"),
        (Role.BACKUP, Role.BACKUP, ("nat-a", "nat-b"), "serves all (nat-a, nat-b)"),
    ],
)
def test_pool_view_says_which_members_the_standby_serves(
    a_on: Role, b_on: Role, serves: tuple[str, ...], summary: str
) -> None:
    pv = pool_view(CFG, "nat", pool_facts(a_on, b_on))
    assert pv.standby_id == S_ID
    assert pv.standby_serves == serves and pv.summary() == summary
    assert {m.name: m.served_by for m in pv.members} == {"nat-a": a_on, "nat-b": b_on}


def test_pool_view_without_facts_of_a_member_does_not_raise() -> None:
    pv = pool_view(CFG, "nat", {})
    assert [m.served_by for m in pv.members] == [None, None] and pv.summary() == "serves none"


# --------------------------------------------------------------------------- the machine


def _machine(a_active: Role, a_in_flight: Role | None = None) -> tuple[MachineState, Policy]:
    state = MachineState.initial(["nat-a", "nat-b"])
    a = replace(state.services["nat-a"], active=a_active, in_flight=a_in_flight)
    b = replace(
        state.services["nat-b"],
        primary=TargetState(Status.DOWN, since=0.0, fail_streak=5, failing_since=0.0),
        backup=TargetState(Status.UP if a_active is Role.BACKUP else Status.STOPPED),
    )
    state = state.with_service(a).with_service(b)
    policy = Policy(
        thresholds={n: CFG.thresholds(n) for n in CFG.services},
        isolation=IsolationGuard(enabled=False),
        pool_peers={n: CFG.pool_peers(n) for n in CFG.services},
    )
    return state, policy


@pytest.mark.parametrize(
    ("active", "in_flight"), [(Role.BACKUP, None), (Role.PRIMARY, Role.BACKUP)]
)
def test_failover_of_b_is_held_while_the_standby_serves_a(
    active: Role, in_flight: Role | None
) -> None:
    state, policy = _machine(active, in_flight)
    state, actions = evaluate(state, "nat-b", 10.0, policy)
    assert not [a for a in actions if isinstance(a, StartFailover)]
    holds = [a for a in actions if isinstance(a, Hold)]
    assert [h.guard for h in holds] == [Guard.STANDBY_BUSY]
    assert "the pool's shared standby already serves nat-a" in holds[0].reason
    assert "jupiterd failback nat-a" in holds[0].reason
    alerts = [a for a in actions if isinstance(a, Alert)]
    assert len(alerts) == 1 and "nat-a" in alerts[0].reason
    # Later evaluations neither start a plan nor alert again.
    state, actions = evaluate(state, "nat-b", 70.0, policy)
    assert not [a for a in actions if isinstance(a, StartFailover | Alert | Hold)]
    assert state.services["nat-b"].hold is not None
    assert state.services["nat-b"].hold.guard is Guard.STANDBY_BUSY


def test_the_hold_lifts_and_b_fails_over_once_a_is_back() -> None:
    state, policy = _machine(Role.BACKUP)
    state, _ = evaluate(state, "nat-b", 10.0, policy)
    a = replace(state.services["nat-a"], active=Role.PRIMARY)
    b = replace(state.services["nat-b"], backup=TargetState(Status.STOPPED))
    state = state.with_service(a).with_service(b)
    state, actions = evaluate(state, "nat-b", 20.0, policy)
    assert [type(x).__name__ for x in actions] == ["HoldCleared", "StartFailover"]
    assert state.services["nat-b"].in_flight is Role.BACKUP


def test_failover_of_b_starts_when_the_standby_is_free() -> None:
    state, policy = _machine(Role.PRIMARY)
    _, actions = evaluate(state, "nat-b", 10.0, policy)
    assert [type(a) for a in actions if isinstance(a, StartFailover)] == [StartFailover]


def test_outside_a_pool_the_guard_never_holds() -> None:
    state, policy = _machine(Role.BACKUP)
    policy = replace(policy, pool_peers={})
    _, actions = evaluate(state, "nat-b", 10.0, policy)
    assert [a for a in actions if isinstance(a, StartFailover)]


# --------------------------------------------------------------------------- documentation

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_s_pool_example_is_valid() -> None:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Pools (shared standby)") :]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    cfg = parse_config(yaml.safe_load(block))
    assert [s.pool for s in cfg.services.values()] == ["nat", "nat"]


def test_the_example_config_s_commented_pool_replaces_its_nat_service() -> None:
    text = (ROOT / "config" / "jupiter.example.yaml").read_text()
    pool = text[text.index("#pools:") :]
    doc = yaml.safe_load(text)
    del doc["services"]["nat"]
    doc.update(yaml.safe_load("\n".join(line[1:] for line in pool.splitlines())))
    cfg = parse_config(doc, secrets=False)
    assert cfg.pool_members("nat") == ("nat-a", "nat-b")
    assert cfg.services["nat-b"].backup.instance_id == cfg.services["nat-a"].backup.instance_id
