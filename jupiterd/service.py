"""`jupiterd run`: the daemon's lifecycle around the supervisor.

Load and validate the configuration (exit 78 on error), resume a plan a
crash interrupted, start the HTTP listener and the probes, tell systemd
READY=1, then serve until SIGTERM/SIGINT. SIGHUP reloads: the new file is
validated first; on error the running configuration stays, the error is
logged and exported. Signal handlers only set flags.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

from . import logs
from .api import start_server
from .config import Config, ConfigError, load_config
from .daemon import Supervisor
from .executor_api import Executor
from .inventory import Inventory
from .metrics import Metrics
from .sdnotify import Notifier

ExecutorFactory = Callable[[Config, bool, Metrics], Executor]
InventoryFactory = Callable[[Config, Metrics], Inventory]


async def serve(
    config_path: str,
    *,
    dry_run: bool,
    make_executor: ExecutorFactory,
    make_inventory: InventoryFactory,
    notifier: Notifier | None = None,
    config: Config | None = None,
) -> int:
    config = config or load_config(config_path)
    logs.configure(config.log.level, config.log.format)
    log = logs.get("jupiterd")
    notifier = notifier or Notifier()
    metrics = Metrics()
    executor = make_executor(config, dry_run, metrics)
    inventory = make_inventory(config, metrics)
    sup = Supervisor(
        config,
        executor=executor,
        inventory=inventory,
        metrics=metrics,
        notifier=notifier,
        config_path=config_path,
    )
    resume = getattr(executor, "resume_pending", None)
    if resume is not None and not dry_run:
        # A plan a crash interrupted is finished (or rolled back) before any
        # new decision is taken.
        outcomes: Any = await resume()
        for outcome in outcomes or ():
            log.warning(
                "resumed an interrupted plan",
                service=outcome.service,
                result=outcome.result,
                detail=outcome.detail,
            )
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
    mode = "dry run" if dry_run else "live"
    notifier.ready(f"watching {len(config.services)} services ({mode})")
    log.info("listening", listen=config.http.listen, dry_run=dry_run)

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
                    new = load_config(config_path)
                except ConfigError as exc:
                    sup.reload_failed(str(exc))
                else:
                    await sup.reload(new)
                notifier.ready(f"watching {len(sup.config.services)} services ({mode})")
    finally:
        log.info("stopping")
        notifier.stopping()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await sup.stop()
        await runner.cleanup()
        notifier.close()
    return 0
