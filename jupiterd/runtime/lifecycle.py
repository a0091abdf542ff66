"""`jupiterd run`: the daemon's lifecycle around the supervisor.

Load and validate the configuration (exit 78 on error), take the state
directory's daemon lock (exit 75 while another daemon holds it), resume a
plan a crash interrupted, start the HTTP listener and the probes, tell systemd
READY=1, then serve until SIGTERM/SIGINT. SIGHUP reloads: the new file is
validated first; on any error reading or validating it the running
configuration stays, the error is logged (one line) and exported. Signal
handlers only set flags. Scheduled dry-run drills run alongside when the
configuration has some.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import Callable
from pathlib import Path

from jupiterd.config import Config, ConfigError, load_config
from jupiterd.core.execution import Executor, FailoverOutcome
from jupiterd.core.inventory import Inventory
from jupiterd.runtime.api import exposed_note, start_server
from jupiterd.runtime.sd_notify import Notifier
from jupiterd.runtime.supervisor import Supervisor
from jupiterd.state import statefile
from jupiterd.telemetry import logs
from jupiterd.telemetry.metrics import Metrics

ExecutorFactory = Callable[[Config, bool, Metrics], Executor]
# The executor is passed so an AWS inventory can share its clients.
InventoryFactory = Callable[[Config, Metrics, Executor], Inventory]
# A dry-run executor for the scheduled drills; None: no drills.
DrillExecutorFactory = Callable[[Config, Metrics], Executor] | None

DAEMON_LOCK = "daemon.lock"
# Another daemon holds the state directory. Not worth restarting for: the
# unit lists it in RestartPreventExitStatus (with 78, a bad configuration).
EXIT_STATE_DIR_BUSY = 75


def lock_state_dir(state_dir: str) -> int | str | None:
    """Take the daemon lock of ``state_dir`` for the process's lifetime:
    only one daemon decides per state directory. Returns the descriptor;
    the sentence why not when another process holds it; None when the lock
    file cannot be opened (an unwritable state directory: no plan can be
    journaled there either, so monitoring goes on)."""
    path = Path(state_dir) / DAEMON_LOCK
    try:
        Path(state_dir).mkdir(mode=0o750, parents=True, exist_ok=True)
        fd = statefile.lock_file(path, statefile.DAEMON_LOCK)
    except OSError as exc:
        logs.get("jupiterd").error(
            "cannot take the daemon lock; running without it",
            path=str(path),
            error=exc.strerror or str(exc),
        )
        return None
    if fd is None:
        pid = statefile.holder_pid(path, statefile.DAEMON_LOCK)
        who = f"pid {pid}" if pid else "pid unknown"
        return (
            f"another jupiterd ({who}) already runs on the state directory {state_dir} "
            f"(lock {path}); refusing to start a second one"
        )
    return fd


async def serve(
    config_path: str,
    *,
    dry_run: bool,
    make_executor: ExecutorFactory,
    make_inventory: InventoryFactory,
    make_drill_executor: DrillExecutorFactory = None,
    notifier: Notifier | None = None,
    config: Config | None = None,
) -> int:
    config = config or load_config(config_path)
    logs.configure(config.log.level, config.log.format)
    lock = lock_state_dir(config.state_dir)
    if isinstance(lock, str):
        logs.get("jupiterd").error(lock, state_dir=config.state_dir)
        return EXIT_STATE_DIR_BUSY
    notifier = notifier or Notifier()
    metrics = Metrics()
    executor = make_executor(config, dry_run, metrics)
    inventory = make_inventory(config, metrics, executor)
    parts = getattr(executor, "parts", None)  # a replica's lease, views, witness
    sup = Supervisor(
        config,
        executor=executor,
        inventory=inventory,
        metrics=metrics,
        notifier=notifier,
        config_path=config_path,
        ha=parts() if config.ha is not None and parts is not None else None,
    )
    try:
        return await _serve(sup, config_path, dry_run, notifier, make_drill_executor)
    finally:
        close = getattr(executor, "close", None)
        if close is not None:
            close()  # its thread pool and the journal's file
        if lock is not None:
            os.close(lock)  # the daemon lock goes with it


class _Drills:
    """The scheduled drills' task, rebuilt when the configuration changes."""

    def __init__(self, sup: Supervisor, make: DrillExecutorFactory) -> None:
        self.sup, self.make = sup, make
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        sup, make = self.sup, self.make
        sup.drills = None
        if make is None or not sup.config.drills:
            return
        from jupiterd.runtime.drills import DrillRunner

        runner = DrillRunner(sup.config, lambda c: make(c, sup.metrics), sup.metrics, sup.clock)
        sup.drills = runner
        self.task = asyncio.create_task(runner.run(), name="drills")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None


async def _serve(
    sup: Supervisor,
    config_path: str,
    dry_run: bool,
    notifier: Notifier,
    make_drill_executor: DrillExecutorFactory,
) -> int:
    log = logs.get("jupiterd")
    config = sup.config
    resumed: list[FailoverOutcome] = []
    # A dry run leaves no plan unfinished; with replicated deciders the
    # leader resumes them when it takes the lease (runtime.ha).
    if not dry_run and not sup.executor.dry_run and config.ha is None:
        # A plan a crash interrupted is finished (or rolled back) before any
        # new decision is taken. That can take as long as a plan's bounded
        # waits: tell systemd, so the start timeout does not kill it midway.
        longest = max(
            (th.start_timeout + th.healthy_timeout + th.target_healthy_timeout + th.drain_timeout)
            for th in sup.policy.thresholds.values()
        )
        notifier.notify(
            f"EXTEND_TIMEOUT_USEC={int((longest + 60) * 1e6)}",
            "STATUS=finishing any plan a previous run left unfinished",
        )
        resumed = await sup.executor.resume_pending()
    try:
        runner = await start_server(sup, config.http.listen)
    except OSError as exc:
        log.error(
            "cannot listen",
            listen=config.http.listen,
            error=exc.strerror or str(exc),
            hint="another jupiterd running? change http.listen",
        )
        return 1
    await sup.start()
    # What exists now (configuration, probe loops, metric children) lives as
    # long as the process: out of the collector's full passes, which would
    # otherwise stall the loop for 100-250 ms at a few thousand targets.
    gc.freeze()
    for outcome in resumed:
        sup.resumed(outcome)
    drills = _Drills(sup, make_drill_executor)
    drills.start()
    mode = "dry run" if dry_run else "live"
    notifier.ready(f"watching {len(config.services)} services ({mode})")
    log.info("listening", listen=config.http.listen, dry_run=dry_run)
    if not config.http.loopback:
        log.warning("api exposed", note=exposed_note(config.http))

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reload = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    try:
        while not stop.is_set():
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(reload.wait())]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
            if reload.is_set() and not stop.is_set():
                reload.clear()
                notifier.reloading()
                try:
                    # Off the loop: a file at the size bound takes a while to parse.
                    new = await asyncio.to_thread(load_config, config_path)
                except Exception as exc:  # any failure keeps the running configuration
                    if isinstance(exc, ConfigError):
                        sup.reload_failed(str(exc))
                    else:  # load_config raises only ConfigError; a defect must not kill us
                        sup.reload_failed(f"{config_path}: cannot be loaded ({type(exc).__name__})")
                else:
                    await sup.reload(new)
                    await drills.stop()
                    drills.start()
                notifier.ready(f"watching {len(sup.config.services)} services ({mode})")
    finally:
        log.info("stopping")
        notifier.stopping()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await drills.stop()
        await sup.stop()
        await runner.cleanup()
        notifier.close()
    return 0
