"""kill -9 at every journal point, then resume.

The CLI runs the failover of a service that has every kind of attachment
(target group, Elastic IP, Route 53 record, NAT route tables) and SIGKILLs
itself right after writing the N-th journal record (the test-only hook
JUPITERD_TEST_KILL_AFTER_RECORD). The invariant must hold at that point;
then the resume (the CLI again, or the daemon's ``resume_pending``) must
finish the plan, with every side effect made exactly once: the fault proxy
in front of moto counts the mutating calls that reached it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from jupiterd.aws.executor import AwsExecutor
from jupiterd.config import Config, parse_config
from jupiterd.core.execution import FailoverOutcome
from jupiterd.core.plan import service_status
from jupiterd.core.types import Role
from jupiterd.sandbox.peers.moto_server import MotoServer, client_env, moto_server
from jupiterd.sandbox.seed import Topology, read_notifications, seed
from jupiterd.state.journal import KILL_ENV, Journal
from tests.clock import FakeClock
from tests.executor_helpers import check_invariant
from tests.peers.fault_proxy import FaultProxy
from tests.peers.jupiter_aws import EDGE, Listeners, edge_service

ROOT = Path(__file__).resolve().parent.parent
SERVICE = EDGE

# Records a full failover of `edge` writes: plan, begin/end of start_standby,
# standby_healthy, register_early, source_dest_check, register_target,
# associate_eip, upsert_record, 2 x replace_route, deregister_target,
# stop_old, then result, begin/end notify, done.
TOTAL_RECORDS = 1 + 2 * 11 + 1 + 2 + 1

# Each mutating call a failover of `edge` makes, and how many times.
ONCE = {
    "ec2:StartInstances": 1,
    "ec2:ModifyInstanceAttribute": 1,
    "elasticloadbalancing:RegisterTargets": 1,
    "ec2:AssociateAddress": 1,
    "route53:ChangeResourceRecordSets": 1,
    "ec2:ReplaceRoute": 2,
    "elasticloadbalancing:DeregisterTargets": 1,
    "ec2:StopInstances": 1,
    "sns:Publish": 1,
}


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with moto_server(patch_env=True) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(moto: MotoServer) -> Iterator[FaultProxy]:
    with FaultProxy(moto.url) as p:
        yield p


@pytest.fixture(scope="module")
def listeners() -> Iterator[Listeners]:
    ls = Listeners([SERVICE])
    ls.start()
    yield ls
    ls.stop()


@dataclass
class Edge:
    topology: Topology
    config: Config
    path: Path


def _edge(moto: MotoServer, proxy: FaultProxy, ls: Listeners, tmp: Path) -> Edge:
    moto.reset()
    topo = seed(moto.url)
    doc = edge_service(topo, ls, state_dir=str(tmp / "state"), client_endpoint=proxy.url)
    path = tmp / "jupiterd.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    proxy.reset_counts()
    return Edge(topo, parse_config(doc), path)


@pytest.fixture
def edge(moto: MotoServer, proxy: FaultProxy, listeners: Listeners, tmp_path: Path) -> Edge:
    listeners.start()
    return _edge(moto, proxy, listeners, tmp_path)


async def cli(
    edge: Edge, *args: str, kill_after: int | None = None
) -> subprocess.CompletedProcess[str]:
    env = client_env()
    if kill_after is not None:
        env[KILL_ENV] = str(kill_after)

    def go() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "jupiterd", *args, "--config", str(edge.path)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    return await asyncio.to_thread(go)


def executor(edge: Edge) -> AwsExecutor:
    return AwsExecutor(edge.config, poll_interval=0.05, progress_interval=0.5, clock=FakeClock())


async def resume(edge: Edge) -> list[FailoverOutcome]:
    """What a fresh executor's resume_pending() finishes."""
    ex = executor(edge)
    try:
        return await ex.resume_pending()
    finally:
        ex.close()


async def where(edge: Edge) -> tuple[Role | None, Any]:
    ex = executor(edge)
    try:
        facts = (await ex.inventory.facts([SERVICE]))[SERVICE]
        problems = await check_invariant(ex.inventory, edge.config)
    finally:
        ex.close()
    st = service_status(edge.config, SERVICE, facts)
    return (st.active if st.agree else None), (facts, problems, st)


def mutations(proxy: FaultProxy) -> dict[str, int]:
    return {k: proxy.count(k) for k in ONCE}


async def test_a_full_run_writes_the_expected_records(edge: Edge, proxy: FaultProxy):
    p = await cli(edge, "failover", SERVICE)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = (Path(edge.config.state_dir) / "journal.jsonl").read_text().splitlines()
    assert len(lines) == TOTAL_RECORDS
    assert mutations(proxy) == ONCE
    active, (_, problems, _) = await where(edge)
    assert active is Role.BACKUP and problems == []


async def _kill_then_resume(edge: Edge, proxy: FaultProxy, n: int, via_cli: bool) -> None:
    p = await cli(edge, "failover", SERVICE, kill_after=n)
    assert p.returncode == -9, f"kill point {n}: {p.returncode}\n{p.stdout}{p.stderr}"
    # A call in flight at the kill is still answered upstream before anyone
    # looks: the restart reads AWS after the dead process's last change.
    assert await asyncio.to_thread(proxy.wait_idle)
    pending = Journal(edge.config.state_dir).unfinished()
    # Killed after the last record, `done`: nothing is left to resume.
    assert [x.service for x in pending] == ([] if n == TOTAL_RECORDS else [SERVICE])
    _, (_, problems, _) = await where(edge)
    assert problems == [], f"invariant broken after a kill at record {n}: {problems}"

    if via_cli:
        p = await cli(edge, "failover", SERVICE)
        assert p.returncode == 0, p.stdout + p.stderr
        if pending:
            assert f"{SERVICE}: resumed interrupted failover success" in p.stdout
        else:
            assert "nothing to do" in p.stdout
    elif pending:
        [out] = await resume(edge)
        assert out.result == "success", out.detail
        # the outcome (and its notification) tells the whole plan
        names = {s.name for s in out.steps}
        assert {"start_standby", "standby_healthy", "stop_old", "notify"} <= names
        assert any("before the restart" in s.detail for s in out.steps) or n < 4
    assert Journal(edge.config.state_dir).unfinished() == []
    active, (facts, problems, st) = await where(edge)
    assert active is Role.BACKUP, st.notes
    assert problems == []
    assert facts.primary.state in ("stopped", "stopping")
    assert mutations(proxy) == ONCE, f"kill point {n}: a side effect was repeated or lost"
    notes = read_notifications(edge.topology)
    assert len(notes) == 1 and notes[0]["message"]["result"] == "success"


async def test_kill_mid_attach_then_the_cli_resumes(edge: Edge, proxy: FaultProxy):
    await _kill_then_resume(edge, proxy, 8, via_cli=True)


@pytest.mark.slow
@pytest.mark.parametrize("n", range(1, TOTAL_RECORDS + 1))
async def test_kill_at_every_journal_point(
    moto: MotoServer, proxy: FaultProxy, listeners: Listeners, tmp_path: Path, n: int
):
    listeners.start()
    edge = _edge(moto, proxy, listeners, tmp_path)
    # Half of the resumptions through the CLI, half through the daemon's path.
    await _kill_then_resume(edge, proxy, n, via_cli=n % 2 == 0)


@pytest.mark.parametrize(
    ("n", "via_cli"),
    [(14, False), (14, True), (TOTAL_RECORDS - 1, False)],
    ids=["mid_attach-resume_pending", "mid_attach-cli", "after_notify-resume_pending"],
)
async def test_a_resumed_plan_reports_each_step_once(
    edge: Edge, proxy: FaultProxy, n: int, via_cli: bool
):
    # 14: mid-attach (records 6-17), start_standby and some of the attachment
    # steps, run concurrently, ended. TOTAL_RECORDS - 1: after notify ended,
    # before the plan's `done`.
    p = await cli(edge, "failover", SERVICE, kill_after=n)
    assert p.returncode == -9, p.stdout + p.stderr
    if via_cli:
        p = await cli(edge, "failover", SERVICE)
        assert p.returncode == 0, p.stdout + p.stderr
        assert f"{SERVICE}: resumed interrupted failover success" in p.stdout
        names = [ln.split()[0] for ln in p.stdout.splitlines() if ln.startswith("  ")]
        done = [ln.split()[0] for ln in p.stdout.splitlines() if "done before the restart" in ln]
    else:
        [out] = await resume(edge)
        assert out.result == "success", out.detail
        names = [s.name for s in out.steps]
        done = [s.name for s in out.steps if "done before the restart" in s.detail]
    assert len(names) == len(set(names)), names
    assert names[-1] == "notify", names
    if n == 14:
        assert "start_standby" in done and len(done) >= 2, done
    else:
        assert done == ["notify"], done
    [note] = read_notifications(edge.topology)
    sent = [s["name"] for s in note["message"]["steps"]]
    assert sent == names[:-1]  # published by notify itself
    assert mutations(proxy) == ONCE


async def test_resume_rolls_back_when_the_standby_died(
    edge: Edge, proxy: FaultProxy, listeners: Listeners
):
    # Killed once the attachments began to move (records 6-9 are their begins).
    p = await cli(edge, "failover", SERVICE, kill_after=9)
    assert p.returncode == -9
    listeners.stop(SERVICE, "backup")  # the standby's service dies meanwhile
    try:
        [out] = await resume(edge)
    finally:
        listeners.start()
    assert out.result == "aborted", out.detail
    assert "standby_healthy" in out.detail
    assert "the traffic was moved back to the primary" in out.detail
    assert "the backup was stopped again" in out.detail
    names = [s.name for s in out.steps]
    assert "rollback:standby_healthy" in names  # the old instance was proved healthy first
    assert "rollback:stop_standby" in names
    active, (facts, problems, st) = await where(edge)
    assert active is Role.PRIMARY, st.notes
    assert problems == []
    assert facts.backup.state in ("stopped", "stopping")
    assert proxy.count("ec2:StartInstances") == 1
    assert proxy.count("ec2:StopInstances") == 1
    [note] = read_notifications(edge.topology)
    assert note["message"]["result"] == "aborted" and note["message"]["resumed"] is True


async def test_resume_is_a_no_op_without_a_journal(edge: Edge, proxy: FaultProxy):
    assert await resume(edge) == []
    assert sum(proxy.forwarded.values()) == 0


async def test_resume_drops_a_plan_of_a_service_no_longer_configured(edge: Edge, proxy: FaultProxy):
    j = Journal(edge.config.state_dir)
    j.start_plan("retired", "primary", "backup", "old", "daemon", "stopped")
    j.close()
    assert await resume(edge) == []
    assert Journal(edge.config.state_dir).unfinished() == []
    assert sum(proxy.forwarded.values()) == 0
