"""The shared plan journal (``jupiterd.aws.ha_journal``) and the fencing of
plans by the leader lease, against moto in server mode on loopback.

Two fault proxies stand in front of moto: one for EC2, ELB, Route 53 and SNS
(the executor's calls; its counts prove each side effect happened once), one
for DynamoDB (the lease and the journal; it can be cut off). Each replica
has its own lease and ``FakeClock``: a takeover is the taker's clock passing
a full lease without the holder renewing; a pause is the holder's task (or
thread) blocked while that happens.
"""

# ruff: noqa: F811  (tests take the imported fixtures by their names)
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jupiterd.aws.client import Aws
from jupiterd.aws.executor import AwsExecutor
from jupiterd.aws.ha_items import OPEN_KEY, parse_plan_item
from jupiterd.aws.ha_journal import Fenced, LeaseLock, NotLeader, TableJournal
from jupiterd.aws.ha_table import create_table
from jupiterd.aws.lease import Lease
from jupiterd.config import AwsConfig
from jupiterd.core.execution import FailoverRequest, StepReport
from jupiterd.core.types import Role
from jupiterd.sandbox.peers.moto_server import MotoServer, client_env
from jupiterd.sandbox.seed import read_notifications
from jupiterd.state.journal import KILL_ENV, Journal, JournalError
from tests.clock import FakeClock
from tests.peers.fault_proxy import FaultProxy
from tests.peers.jupiter_aws import Listeners

# The same moto, fault proxy and service listeners (fixtures: F401) as the
# file journal's tests.
from tests.test_executor_crash import (  # noqa: F401
    ONCE,
    SERVICE,
    TOTAL_RECORDS,
    Edge,
    _edge,
    cli,
    listeners,
    moto,
    mutations,
    proxy,
    where,
)

ROOT = Path(__file__).resolve().parent.parent
TABLE = "jupiterd-ha"
DURATION = 15.0
MARGIN = 3.0
TAKEOVER = 1_000.0  # more than any lease here: the taker's wait is over
REQ = FailoverRequest(SERVICE, Role.PRIMARY, Role.BACKUP, "test", "daemon")


@pytest.fixture(scope="module")
def dproxy(moto: MotoServer) -> Iterator[FaultProxy]:
    """DynamoDB's own proxy: cutting it off leaves EC2 and the rest alone."""
    with FaultProxy(moto.url) as p:
        yield p


def _ddb(url: str, region: str) -> Aws:
    return Aws(
        AwsConfig(
            region=region, endpoint_url=url, max_attempts=1, connect_timeout=1, read_timeout=2
        )
    )


@pytest.fixture
def ddb(moto: MotoServer, dproxy: FaultProxy) -> Iterator[Aws]:
    """An empty HA table, reached through the DynamoDB proxy."""
    moto.reset()
    aws = _ddb(dproxy.url, "ap-southeast-2")
    asyncio.run(create_table(aws, TABLE))
    dproxy.unreachable = False
    dproxy.reset_counts()
    yield aws
    aws.close()


@dataclass
class Ha:
    edge: Edge
    ddb: Aws
    replicas: list[Replica] = field(default_factory=list)


@pytest.fixture
def ha(
    moto: MotoServer,
    proxy: FaultProxy,
    dproxy: FaultProxy,
    listeners: Listeners,
    tmp_path: Path,
) -> Iterator[Ha]:
    listeners.start()
    edge = _edge(moto, proxy, listeners, tmp_path)
    aws = _ddb(dproxy.url, edge.config.aws.region)
    asyncio.run(create_table(aws, TABLE))
    dproxy.unreachable = False
    dproxy.reset_counts()
    h = Ha(edge, aws)
    yield h
    for r in h.replicas:
        r.ex.close()
    aws.close()


@dataclass
class Replica:
    clock: FakeClock  # the lease's
    lease: Lease
    journal: TableJournal
    ex: AwsExecutor


def replica(ha: Ha, owner: str) -> Replica:
    clock = FakeClock()
    lease = Lease(ha.ddb, TABLE, owner, clock, duration=DURATION, margin=MARGIN)
    journal = TableJournal(ha.ddb, TABLE, lease)
    ex = AwsExecutor(
        ha.edge.config,
        journal=journal,
        lock=LeaseLock(lease, journal=journal),
        poll_interval=0.05,
        progress_interval=0.5,
        clock=FakeClock(),
    )
    r = Replica(clock, lease, journal, ex)
    ha.replicas.append(r)
    return r


def lease(aws: Aws, owner: str) -> tuple[Lease, FakeClock]:
    clock = FakeClock()
    return Lease(aws, TABLE, owner, clock, duration=DURATION, margin=MARGIN), clock


async def take_over(lease: Lease, clock: FakeClock) -> None:
    """The holder stopped renewing: the taker waits a full lease, then takes it."""
    assert not await lease.acquire()
    clock.mono += TAKEOVER
    assert await lease.acquire()


def item(aws: Aws, key: str) -> dict[str, Any]:
    r = asyncio.run(
        aws.call(
            "dynamodb", "GetItem", TableName=TABLE, Key={"pk": {"S": key}}, ConsistentRead=True
        )
    )
    return r.get("Item", {})  # type: ignore[no-any-return]


def update(aws: Aws, key: str, expr: str, values: dict[str, Any]) -> None:
    asyncio.run(
        aws.call(
            "dynamodb",
            "UpdateItem",
            TableName=TABLE,
            Key={"pk": {"S": key}},
            UpdateExpression=expr,
            ExpressionAttributeValues=values,
        )
    )


def write_plan(j: TableJournal | Journal, service: str = SERVICE) -> str:
    """The same records on either journal."""
    rec = j.start_plan(service, "primary", "backup", "down", "daemon", "stopped")
    j.begin(rec.id, "start_standby")
    j.end(rec.id, "start_standby", True, 1.25, "started", {"started": True})
    j.begin(rec.id, "register_target")
    j.end(rec.id, "register_target", False, 0.5, "denied")
    j.rollback(rec.id, "register_target: denied")
    j.result(rec.id, "aborted", "rolled back")
    return rec.id


# --------------------------------------------------------------------------- records


def test_records_read_back_as_the_file_journal_reads_them(ddb: Aws, tmp_path: Path) -> None:
    a, _ = lease(ddb, "a")
    assert asyncio.run(a.acquire())
    table, file = TableJournal(ddb, TABLE, a), Journal(tmp_path)
    pid, fid = write_plan(table), write_plan(file)
    [got], [want] = table.unfinished(), file.unfinished()
    assert got.id == pid and want.id == fid
    got.id = want.id = ""
    got.started_at = want.started_at = 0.0
    assert got == want
    assert got.steps["start_standby"].data == {"started": True}
    assert got.rollback == "register_target: denied" and got.result == ("aborted", "rolled back")
    table.done(pid)
    assert table.unfinished() == [] and table.check(repair=True).damage is None
    done = item(ddb, "plan#" + pid)
    assert done["done"] == {"BOOL": True}
    assert float(done["ttl"]["N"]) > float(done["updated_at"]["N"]) + 6 * 86400
    assert "plans" not in item(ddb, OPEN_KEY)  # the index is empty again


@pytest.mark.parametrize(
    ("damage", "expr", "values"),
    [
        ("not JSON", "SET records = list_append(records, :r)", {":r": {"L": [{"S": "{oops"}]}}),
        ("not a list", "SET records = :r", {":r": {"N": "1"}}),
        (
            "another plan",
            "SET records = list_append(records, :r)",
            {":r": {"L": [{"S": '{"t":"begin","id":"x","step":"s","at":1}'}]}},
        ),
        (
            "true or false",
            "SET records = list_append(records, :r)",
            {
                ":r": {
                    "L": [{"S": '{"t":"end","id":"ID","step":"s","ok":"yes","seconds":1,"at":1}'}]
                }
            },
        ),
    ],
)
def test_a_damaged_plan_item_holds_its_service_only(
    ddb: Aws, damage: str, expr: str, values: dict[str, Any]
) -> None:
    a, _ = lease(ddb, "a")
    assert asyncio.run(a.acquire())
    j = TableJournal(ddb, TABLE, a)
    bad, good = write_plan(j, SERVICE), write_plan(j, "other")
    values = json.loads(json.dumps(values).replace("ID", bad))
    update(ddb, "plan#" + bad, expr, values)
    view = j.check(repair=True)
    assert view.damage is not None and damage in view.damage and f"plan#{bad}" in view.damage
    held = j.held([SERVICE, "other"])
    if damage == "not a list":  # its plan's record is gone: it may concern any service
        assert view.affected is None and view.plans == [] and set(held) == {SERVICE, "other"}
        return
    assert view.affected == {SERVICE}
    assert [p.id for p in view.plans] == [good]
    assert [p.id for p in j.unfinished()] == [good]
    assert list(held) == [SERVICE] and "removed the item" in held[SERVICE]


def test_a_damaged_index_holds_every_service(ddb: Aws) -> None:
    a, _ = lease(ddb, "a")
    assert asyncio.run(a.acquire())
    j = TableJournal(ddb, TABLE, a)
    write_plan(j)
    update(ddb, OPEN_KEY, "SET plans = :p", {":p": {"S": "garbage"}})
    view = j.check(repair=True)
    assert view.affected is None and view.plans == [] and "index" in (view.damage or "")
    assert set(j.held([SERVICE, "other"])) == {SERVICE, "other"}


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["pk", "records", "service", "owner", "token", "x"]), _json))
def test_parsing_any_item_never_raises(raw: dict[str, Any]) -> None:
    out = parse_plan_item("p1", raw)
    assert (out.plan is None) == (out.problem is not None)


# --------------------------------------------------------------------------- fencing


def test_a_fenced_write_raises_and_leaves_the_item_unchanged(ddb: Aws) -> None:
    a, _ = lease(ddb, "a")
    b, cb = lease(ddb, "b")
    assert asyncio.run(a.acquire())
    ja = TableJournal(ddb, TABLE, a)
    rec = ja.start_plan(SERVICE, "primary", "backup", "down", "daemon", "stopped")
    ja.begin(rec.id, "start_standby")
    before, index = item(ddb, "plan#" + rec.id), item(ddb, OPEN_KEY)
    asyncio.run(take_over(b, cb))
    for write in (
        lambda: ja.end(rec.id, "start_standby", True, 1.0, "started"),
        lambda: ja.result(rec.id, "success", "done"),
        lambda: ja.done(rec.id),
        lambda: ja.start_plan("other", "primary", "backup", "x", "daemon", "stopped"),
    ):
        with pytest.raises(Fenced, match=r"held by b \(token 2\)"):
            write()
    assert item(ddb, "plan#" + rec.id) == before
    assert item(ddb, OPEN_KEY) == index
    assert isinstance(Fenced("x"), JournalError)
    # the new leader writes it on
    jb = TableJournal(ddb, TABLE, b)
    [plan] = jb.unfinished()
    jb.end(plan.id, "start_standby", True, 1.0, "started")
    assert item(ddb, "plan#" + rec.id)["owner"] == {"S": "b"}


def test_before_change_fences_again_past_the_bound(ddb: Aws, dproxy: FaultProxy) -> None:
    a, ca = lease(ddb, "a")
    assert asyncio.run(a.acquire())
    j = TableJournal(ddb, TABLE, a, fence_within=1.0)
    rec = j.start_plan(SERVICE, "primary", "backup", "down", "daemon", "stopped")
    dproxy.reset_counts()
    writes = "dynamodb:TransactWriteItems"
    j.before_change(rec.id)  # just written: no fence needed
    assert dproxy.count(writes) == 0
    ca.mono += 1.5
    j.before_change(rec.id)  # past the bound: one fence
    assert dproxy.count(writes) == 1 and "fenced_at" in item(ddb, "plan#" + rec.id)
    j.before_change(rec.id)
    assert dproxy.count(writes) == 1
    ca.mono += DURATION - MARGIN  # our own clock says the lease may be gone
    with pytest.raises(Fenced, match="no longer holds the lease"):
        j.before_change(rec.id)
    assert dproxy.count(writes) == 1  # refused without asking


def test_before_change_is_refused_by_the_table_after_a_takeover(ddb: Aws) -> None:
    a, ca = lease(ddb, "a")
    b, cb = lease(ddb, "b")
    assert asyncio.run(a.acquire())
    j = TableJournal(ddb, TABLE, a, fence_within=1.0)
    rec = j.start_plan(SERVICE, "primary", "backup", "down", "daemon", "stopped")
    asyncio.run(take_over(b, cb))
    ca.mono += 1.5  # paused: a still believes it leads, its last write is old
    assert a.is_leader()
    with pytest.raises(Fenced, match="taken over"):
        j.before_change(rec.id)


def test_the_lease_lock_is_held_by_the_leader_only(ddb: Aws) -> None:
    a, _ = lease(ddb, "a")
    b, _ = lease(ddb, "b")
    assert asyncio.run(a.acquire())
    mine = LeaseLock(a)
    mine.acquire()
    mine.acquire()  # re-entrant, as the plan lock
    assert mine.held
    mine.release()
    mine.release()
    assert not mine.held
    with pytest.raises(NotLeader, match=r"^not the leader \(leader is a\)$"):
        LeaseLock(b, leader=lambda: "a").acquire()
    with pytest.raises(NotLeader, match=r"leader is unknown"):
        LeaseLock(b).acquire()


def test_a_plan_its_running_leader_writes_is_not_unfinished_elsewhere(ddb: Aws) -> None:
    a, _ = lease(ddb, "a")
    b, cb = lease(ddb, "b")
    assert asyncio.run(a.acquire())
    write_plan(TableJournal(ddb, TABLE, a))
    jb = TableJournal(ddb, TABLE, b)
    assert jb.unfinished() == []  # a holds the lease and writes it: running
    asyncio.run(take_over(b, cb))
    assert [p.service for p in jb.unfinished()] == [SERVICE]


def test_dynamodb_out_of_reach_is_a_journal_error(ddb: Aws, dproxy: FaultProxy) -> None:
    a, _ = lease(ddb, "a")
    assert asyncio.run(a.acquire())
    j = TableJournal(ddb, TABLE, a)
    rec = j.start_plan(SERVICE, "primary", "backup", "down", "daemon", "stopped")
    dproxy.unreachable = True
    with pytest.raises(JournalError, match="cannot write the shared journal") as e:
        j.begin(rec.id, "start_standby")
    assert not isinstance(e.value, Fenced)
    with pytest.raises(JournalError, match="cannot read the shared journal"):
        j.unfinished()
    dproxy.unreachable = False
    j.begin(rec.id, "start_standby")
    [plan] = j.unfinished()
    assert plan.steps["start_standby"].begun


# --------------------------------------------------------------------------- the executor


async def _settled(ha: Ha, proxy: FaultProxy) -> None:
    """The plan ended once: traffic on the standby, each change made once,
    one notification, nothing left open in the table."""
    active, (facts, problems, st) = await where(ha.edge)
    assert active is Role.BACKUP, st.notes
    assert problems == []
    assert facts.primary.state in ("stopped", "stopping")
    assert mutations(proxy) == ONCE, "a side effect was repeated or lost"
    notes = read_notifications(ha.edge.topology)
    assert len(notes) == 1 and notes[0]["message"]["result"] == "success"
    probe = replica(ha, "probe")
    assert await asyncio.to_thread(probe.journal.unfinished) == []
    assert "plans" not in await asyncio.to_thread(item, ha.ddb, OPEN_KEY)


async def test_a_full_run_through_the_shared_journal(ha: Ha, proxy: FaultProxy) -> None:
    a = replica(ha, "a")
    assert await a.lease.acquire()
    out = await a.ex.run(REQ)
    assert out.result == "success", out.detail
    await _settled(ha, proxy)


@pytest.mark.parametrize("clock", ["frozen", "expired"])
async def test_a_leader_paused_between_steps_is_fenced(
    ha: Ha, proxy: FaultProxy, clock: str
) -> None:
    a, b = replica(ha, "a"), replica(ha, "b")
    assert await a.lease.acquire()
    paused, wake = asyncio.Event(), asyncio.Event()

    async def pause(service: str, report: StepReport) -> None:
        if report.name == "standby_healthy":
            paused.set()
            await wake.wait()

    a.ex.on_step = pause
    run_a = asyncio.create_task(a.ex.run(REQ))
    await paused.wait()
    await take_over(b.lease, b.clock)
    [out_b] = await b.ex.resume_pending()
    assert out_b.result == "success", out_b.detail
    if clock == "expired":
        a.clock.mono += TAKEOVER  # its own clock tells it too
    seen = dict(proxy.forwarded)
    wake.set()
    out_a = await run_a
    assert out_a.result == "aborted" and out_a.detail.startswith("fenced: "), out_a.detail
    assert dict(proxy.forwarded) == seen, "the fenced leader made an AWS call after waking"
    await _settled(ha, proxy)


@pytest.mark.parametrize("clock", ["refence", "expired"])
async def test_a_leader_paused_before_a_change_does_not_send_it(
    ha: Ha, proxy: FaultProxy, clock: str
) -> None:
    # The SIGSTOP window: the step's begin record is written, the leader
    # stops before its AWS call and wakes after a takeover.
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=32))
    a, b = replica(ha, "a"), replica(ha, "b")
    assert await a.lease.acquire()
    step_aws = a.ex._ctx.aws
    guard = step_aws.guard
    assert guard is not None
    gate, blocked = threading.Event(), threading.Event()
    calls: list[str | None] = []
    lock = threading.Lock()

    def paused_guard(plan_id: str | None) -> None:
        with lock:
            calls.append(plan_id)
            n = len(calls)
        if n >= 2:  # the first is start_standby's; then the attachments'
            blocked.set()
            gate.wait(60)
        guard(plan_id)

    step_aws.guard = paused_guard
    run_a = asyncio.create_task(a.ex.run(REQ))
    assert await asyncio.to_thread(blocked.wait, 60)
    await take_over(b.lease, b.clock)
    [out_b] = await b.ex.resume_pending()
    assert out_b.result == "success", out_b.detail
    if clock == "refence":
        # a still believes it leads; its last write is older than the bound
        a.clock.mono += a.journal.fence_within + 0.5
        assert a.lease.is_leader()
    else:
        a.clock.mono += TAKEOVER
    seen = dict(proxy.forwarded)
    gate.set()
    out_a = await run_a
    assert out_a.result == "aborted" and out_a.detail.startswith("fenced: "), out_a.detail
    assert dict(proxy.forwarded) == seen, "the fenced leader sent a change after waking"
    await _settled(ha, proxy)


async def test_dynamodb_out_of_reach_mid_plan_stops_it_and_loses_nothing(
    ha: Ha, proxy: FaultProxy, dproxy: FaultProxy
) -> None:
    a = replica(ha, "a")
    assert await a.lease.acquire()

    async def cut(service: str, report: StepReport) -> None:
        if report.name == "standby_healthy":
            dproxy.unreachable = True

    a.ex.on_step = cut
    out = await a.ex.run(REQ)
    assert out.result == "failed", out.detail
    assert out.detail.startswith("the plan stopped: cannot write the shared journal")
    assert proxy.count("ec2:StartInstances") == 1
    # The standby's early registration runs beside its health check: the
    # only other change, journaled as its own step.
    early = proxy.count("elasticloadbalancing:RegisterTargets")
    assert early <= 1
    assert sum(mutations(proxy).values()) == 1 + early, "a change was made without its record"
    dproxy.unreachable = False
    a.ex.on_step = None
    [again] = await a.ex.resume_pending()
    assert again.result == "success", again.detail
    await _settled(ha, proxy)


async def test_a_follower_resumes_nothing(ha: Ha, proxy: FaultProxy) -> None:
    a, b = replica(ha, "a"), replica(ha, "b")
    assert await a.lease.acquire()
    await asyncio.to_thread(write_plan, a.journal)
    assert await b.ex.resume_pending() == []
    out = await b.ex.run(REQ)
    assert out.result == "aborted" and out.detail == "not the leader (leader is unknown)"
    assert sum(proxy.forwarded.values()) == 0


# --------------------------------------------------------------------------- kill -9


async def leader_process(ha: Ha, dproxy: FaultProxy, kill_after: int | None) -> Any:
    env = client_env()
    if kill_after is not None:
        env[KILL_ENV] = str(kill_after)

    def go() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tests.ha_leader", str(ha.edge.path), TABLE, dproxy.url, "a"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return await asyncio.to_thread(go)


async def _kill_then_take_over(ha: Ha, proxy: FaultProxy, dproxy: FaultProxy, n: int) -> None:
    p = await leader_process(ha, dproxy, n)
    assert p.returncode == -9, f"kill point {n}: {p.returncode}\n{p.stdout}{p.stderr}"
    _, (_, problems, _) = await where(ha.edge)
    assert problems == [], f"invariant broken after a kill at record {n}: {problems}"
    b = replica(ha, "b")
    await take_over(b.lease, b.clock)
    outs = await b.ex.resume_pending()
    if n == TOTAL_RECORDS:  # killed after `done`: nothing left
        assert outs == []
    else:
        [out] = outs
        assert out.result == "success", out.detail
        names = [s.name for s in out.steps]
        assert len(names) == len(set(names)), names
    await _settled(ha, proxy)


async def test_the_leader_process_writes_every_record(
    ha: Ha, proxy: FaultProxy, dproxy: FaultProxy
) -> None:
    p = await leader_process(ha, dproxy, None)
    assert p.returncode == 0, p.stdout + p.stderr
    await _settled(ha, proxy)


async def test_kill_mid_attach_then_another_replica_finishes(
    ha: Ha, proxy: FaultProxy, dproxy: FaultProxy
) -> None:
    await _kill_then_take_over(ha, proxy, dproxy, 14)


# Every journal point is swept with the file journal (test_executor_crash:
# the executor's resumption is the same); here a spread of them, from the
# plan record to the last, keeps the suite short.
SPREAD = sorted({1, 2, *range(4, TOTAL_RECORDS, 4), TOTAL_RECORDS - 1, TOTAL_RECORDS})


@pytest.mark.slow
@pytest.mark.parametrize("n", SPREAD)
async def test_kill_at_journal_points_then_another_replica_finishes(
    ha: Ha, proxy: FaultProxy, dproxy: FaultProxy, n: int
) -> None:
    await _kill_then_take_over(ha, proxy, dproxy, n)


def _with_ha(ha: Ha) -> Path:
    """The edge's configuration file with an `ha:` section on the table."""
    import yaml

    doc = yaml.safe_load(ha.edge.path.read_text())
    doc["ha"] = {"table": TABLE, "replica_id": "az-a", "lease_seconds": 4, "lease_margin": 1}
    doc["ha"] |= {"publish_interval": 0.5, "stale_after": 2}
    ha.edge.path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return ha.edge.path


async def test_the_cli_acts_only_while_no_replica_holds_the_lease(
    ha: Ha, proxy: FaultProxy
) -> None:
    """With ha:, `jupiterd failover` takes the lease for as long as it acts
    (plans journaled in the table, fenced like a leader's) and refuses with
    exit 75, naming the holder, while a replica holds it."""
    _with_ha(ha)
    holder, _ = lease(ha.ddb, "az-b")
    assert await holder.acquire()
    p = await cli(ha.edge, "failover", SERVICE)
    assert p.returncode == 75, p.stdout + p.stderr
    assert "is held by az-b" in p.stderr and "only its holder runs plans" in p.stderr
    assert proxy.count("ec2:StartInstances") == 0

    await holder.release()
    p = await cli(ha.edge, "failover", SERVICE)
    assert p.returncode == 0, p.stdout + p.stderr
    assert mutations(proxy) == ONCE
    index = await asyncio.to_thread(item, ha.ddb, OPEN_KEY)
    assert index.get("plans", {}).get("SS", []) == []  # journaled in the table, and done
    assert not (ha.edge.path.parent / "state" / "journal.jsonl").exists()
    rec = await holder.read()
    assert rec is not None and rec.owner is None and rec.token == 2  # taken, then released
