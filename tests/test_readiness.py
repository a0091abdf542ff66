"""Readiness drills against moto in server mode: the standby is started,
probed for real (tcp, at the loopback listener that stands for its
service) until ``rise`` passes, and stopped again; attachments untouched,
the journal records a ``readiness`` operation, a crash mid-drill is
resumed by stopping the standby."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jupiterd.aws.executor import AwsExecutor
from jupiterd.aws.executor.warm import StandbyWarmer
from jupiterd.core.execution import FailoverRequest
from jupiterd.core.types import Role
from jupiterd.sandbox.peers.moto_server import MotoServer, client_env, moto_server
from jupiterd.sandbox.seed import read_notifications
from jupiterd.state.journal import KILL_ENV, Journal
from tests.clock import FakeClock
from tests.executor_helpers import check_invariant
from tests.peers.jupiter_aws import Stack, jupiter_stack

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "signaling"


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with moto_server(patch_env=True) as server:
        yield server


@pytest.fixture
def stack(moto: MotoServer, tmp_path: Path) -> Iterator[Stack]:
    moto.reset()
    with jupiter_stack(moto.url, tmp_path, services=[SERVICE]) as s:
        yield s


def make_executor(stack: Stack, **kw: Any) -> AwsExecutor:
    kw.setdefault("poll_interval", 0.05)
    kw.setdefault("progress_interval", 0.2)
    kw.setdefault("clock", FakeClock())
    return AwsExecutor(stack.config, **kw)


async def states(ex: AwsExecutor) -> tuple[str, str]:
    f = (await ex.inventory.facts([SERVICE]))[SERVICE]
    return f.primary.state, f.backup.state


def attachments(stack: Stack) -> Any:
    from tests.test_executor import aws_state

    st = aws_state(stack.topology)
    return {k: v for k, v in st.items() if k != "instances"}


async def test_a_drill_passes_records_its_times_and_stops_the_standby(stack: Stack) -> None:
    before = attachments(stack)
    ex = make_executor(stack)
    try:
        assert await states(ex) == ("running", "stopped")
        res = await StandbyWarmer(ex).drill(SERVICE)
        assert res.result == "passed", res.detail
        assert res.boot_seconds is not None and res.healthy_seconds is not None
        assert res.rto_budget == res.boot_seconds + res.healthy_seconds
        assert res.stopped and "stopped again" in res.detail
        assert [s.name for s in res.steps] == ["start_standby", "standby_healthy", "stop_standby"]
        assert (await states(ex))[1] in ("stopped", "stopping")
        assert await check_invariant(ex.inventory, stack.config) == []
    finally:
        ex.close()
    assert attachments(stack) == before  # traffic untouched
    [rec] = Journal(stack.config.state_dir).read()
    assert rec.kind == "readiness" and rec.done
    [note] = read_notifications(stack.topology)
    assert note["subject"].startswith(f"jupiterd: {SERVICE} standby readiness passed")
    assert note["message"]["result"] == "passed"
    assert note["message"]["rto_budget_seconds"] == res.rto_budget


async def test_a_standby_never_healthy_fails_and_is_stopped_again(stack: Stack) -> None:
    stack.listeners.stop(SERVICE, "backup")
    ex = make_executor(stack)
    try:
        res = await StandbyWarmer(ex).drill(SERVICE)
        assert res.result == "failed", res.detail
        assert res.detail.startswith("standby_healthy: ") and "stopped again" in res.detail
        assert res.boot_seconds is not None and res.healthy_seconds is None
        assert res.stopped
        assert (await states(ex))[1] in ("stopped", "stopping")
    finally:
        ex.close()
    [note] = read_notifications(stack.topology)
    assert note["message"]["result"] == "failed"


async def test_refused_while_the_active_is_unhealthy(stack: Stack) -> None:
    stack.listeners.stop(SERVICE, "primary")
    ex = make_executor(stack)
    try:
        res = await StandbyWarmer(ex).drill(SERVICE)
        assert res.result == "refused" and "the active is not healthy" in res.detail
        assert await states(ex) == ("running", "stopped")  # nothing started
    finally:
        ex.close()
    assert Journal(stack.config.state_dir).read() == []
    assert read_notifications(stack.topology) == []


async def test_refused_while_a_plan_of_the_service_is_unfinished(stack: Stack) -> None:
    j = Journal(stack.config.state_dir)
    j.start_plan(SERVICE, "primary", "backup", "interrupted", "cli", "stopped")
    j.close()
    ex = make_executor(stack)
    try:
        res = await StandbyWarmer(ex).drill(SERVICE)
    finally:
        ex.close()
    assert res.result == "refused" and "unfinished" in res.detail


async def test_the_active_failing_mid_drill_hands_the_standby_over(stack: Stack) -> None:
    ex = make_executor(stack)
    answers = iter([None])  # healthy at the start, failing from then on

    async def watch() -> str | None:
        return next(answers, "the primary went down")

    try:
        res = await StandbyWarmer(ex).drill(SERVICE, watch=watch)
        assert res.result == "handed_over", res.detail
        assert not res.stopped and "left running for the failover" in res.detail
        assert (await states(ex))[1] == "running"
        # The failover then finds the standby running and moves the traffic.
        out = await ex.run(FailoverRequest(SERVICE, Role.PRIMARY, Role.BACKUP, "down", "cli"))
        assert out.result == "success", out.detail
        start = next(s for s in out.steps if s.name == "start_standby")
        assert "already running" in start.detail
    finally:
        ex.close()


async def test_a_failover_starting_mid_drill_takes_the_standby(stack: Stack) -> None:
    ex = make_executor(stack)
    warmer = StandbyWarmer(ex)
    failover: list[Any] = []

    async def watch() -> str | None:
        if not failover and "standby_healthy" in str(warmer.ex.journal.read()):
            # The daemon decides a failover while the drill waits.
            failover.append(
                asyncio.ensure_future(
                    ex.run(FailoverRequest(SERVICE, Role.PRIMARY, Role.BACKUP, "down", "daemon"))
                )
            )
            await asyncio.sleep(0)
        return None

    try:
        res = await warmer.drill(SERVICE, watch=watch)
        assert res.result == "handed_over", res.detail
        out = await failover[0]
        assert out.result == "success", out.detail
        assert (await states(ex))[1] == "running"
    finally:
        ex.close()


@pytest.mark.slow
async def test_a_crash_mid_drill_is_resumed_by_stopping_the_standby(stack: Stack) -> None:
    # Records: plan, begin/end start_standby, begin/end standby_healthy, ...
    env = client_env()
    env[KILL_ENV] = "5"  # after standby_healthy ended, before the stop

    cfg = stack.config_path

    def go() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "jupiterd", "drill-standby", SERVICE, "--config", str(cfg)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    p = await asyncio.to_thread(go)
    assert p.returncode == -9, p.stdout + p.stderr
    [pending] = Journal(stack.config.state_dir).unfinished()
    assert pending.kind == "readiness"
    ex = make_executor(stack)
    try:
        assert (await states(ex))[1] == "running"  # left running by the crash
        assert await ex.resume_pending() == []  # not a failover: nothing for the machine
        assert (await states(ex))[1] in ("stopped", "stopping")
    finally:
        ex.close()
    assert Journal(stack.config.state_dir).unfinished() == []


@pytest.mark.slow
async def test_the_command_drills_and_status_shows_the_rto_budget(stack: Stack) -> None:
    import json

    cfg = str(stack.config_path)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "jupiterd", *args, "--config", cfg],
            cwd=ROOT,
            env=client_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    p = await asyncio.to_thread(cli, "drill-standby", SERVICE, "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads(p.stdout)
    assert res["result"] == "passed" and res["rto_budget_seconds"] is not None
    p = await asyncio.to_thread(cli, "status")
    assert "standby verified " in p.stdout and "RTO budget" in p.stdout, p.stdout
    stack.listeners.stop(SERVICE, "backup")
    p = await asyncio.to_thread(cli, "drill-standby", SERVICE)
    assert p.returncode == 1 and "standby readiness failed" in p.stdout, p.stdout + p.stderr
    p = await asyncio.to_thread(cli, "status", "--json")
    shown = json.loads(p.stdout)["services"][SERVICE]["standby"]
    assert shown["last_result"] == "failed" and shown["verified_at"] == res["at"]


def test_journal_kind_is_validated_and_old_records_are_failovers() -> None:
    from jupiterd.state.records import parse_journal

    head = b'{"t":"plan","service":"s","from":"primary","to":"backup","at":1,'
    old = head + b'"id":"a"}\n'
    warm = head + b'"id":"b","kind":"prewarm"}\n'
    bad = head + b'"id":"c","kind":"nap"}\n'
    parsed = parse_journal(old + warm + bad)
    assert parsed.plans["a"].kind == "failover" and parsed.plans["b"].kind == "prewarm"
    assert "c" not in parsed.plans
    assert parsed.problems == ["line 3: 'kind' is not failover, readiness or prewarm"]


async def test_a_drill_hibernates_only_a_standby_that_can_hibernate(
    stack: Stack, moto: MotoServer
) -> None:
    """standby_stop: hibernate stops the drilled standby plainly, with a note
    saying what to change, when it was not launched with hibernation; one
    launched with it is hibernated."""
    from tests.test_executor_recovery import configured, hibernating_backup

    cfg = configured(stack.config, SERVICE, standby_stop="hibernate")
    ex = AwsExecutor(cfg, poll_interval=0.05, progress_interval=0.2, clock=FakeClock())
    try:
        res = await StandbyWarmer(ex).drill(SERVICE)
    finally:
        ex.close()
    assert res.result == "passed", res.detail
    stop = next(s for s in res.steps if s.name == "stop_standby")
    assert stop.detail.startswith("stop requested"), stop.detail
    assert "stopped without hibernation (standby_stop: hibernate)" in stop.detail

    iid = hibernating_backup(stack, SERVICE, moto.url)
    cfg = configured(stack.config, SERVICE, backup=iid, standby_stop="hibernate")
    ex = AwsExecutor(cfg, poll_interval=0.05, progress_interval=0.2, clock=FakeClock())
    try:
        res = await StandbyWarmer(ex).drill(SERVICE)
    finally:
        ex.close()
    stop = next(s for s in res.steps if s.name == "stop_standby")
    assert stop.detail.startswith("hibernation requested"), (res.detail, stop.detail)


async def test_a_failover_decided_while_a_prewarm_runs_takes_the_standby(stack: Stack) -> None:
    """The pre-warm's record is still open (it ends when the failover takes
    the standby over): the failover's preflight must not mistake it for an
    interrupted plan and abort."""
    ex = make_executor(stack)
    try:
        warmer = StandbyWarmer(ex)
        started = await warmer.start_prewarm(SERVICE, Role.PRIMARY, "the primary is suspect")
        assert started.result == "started", started.detail
        [open_rec] = [p for p in Journal(stack.config.state_dir).read() if not p.done]
        assert open_rec.kind == "prewarm"
        out = await ex.run(FailoverRequest(SERVICE, Role.PRIMARY, Role.BACKUP, "down", "daemon"))
        assert out.result == "success", out.detail
        handed = await warmer.end_prewarm(SERVICE, "a failover started")
        assert handed is not None and handed.result == "handed_over"
    finally:
        ex.close()
    assert (await states(make_executor(stack)))[1] == "running"
