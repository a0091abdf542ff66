"""``jupiterd drill-standby SERVICE``: a live readiness drill of the
standby from the command line (see ``aws/executor/warm.py``).

It first finishes what an earlier process left unfinished (the journal),
then starts the standby, probes it until ``rise`` passes and stops it
again, with a progress line on stderr while it waits. The result is kept
in the state directory (``jupiterd status`` and the daemon show it).
Exit 0 when the standby passed, 1 when it failed or the drill was refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any

from jupiterd.cli.common import EXIT_FAIL, EXIT_OK, UsageError


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "drill-standby",
        help="start SERVICE's standby, prove it healthy, stop it again (traffic untouched)",
        description="A live readiness drill: start the stopped standby, wait for running, "
        "probe it with the service's probe until `rise` passes, stop it again. Attachments "
        "are never touched. Refused while the active is unhealthy or a plan runs. Each "
        "start bills the standby for at least one minute.",
    )
    p.add_argument("service", metavar="SERVICE")
    p.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="default: $JUPITERD_CONFIG or /etc/jupiterd/jupiterd.yaml",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_drill_standby)


def _cmd_drill_standby(args: argparse.Namespace) -> int:
    from jupiterd.cli.ops import _setup

    cfg = _setup(args)
    if args.service not in cfg.services:
        known = ", ".join(cfg.services)
        raise UsageError(f"no service named '{args.service}' (configured: {known})")
    who = os.environ.get("SUDO_USER") or os.environ.get("USER") or "unknown user"
    res = asyncio.run(_drill(cfg, args.service, f"readiness drill from the command line by {who}"))
    if args.json:
        print(json.dumps(res.to_dict(), indent=2, sort_keys=True))
    else:
        print(format_result(res))
    return EXIT_OK if res.result == "passed" else EXIT_FAIL


async def _drill(cfg: Any, service: str, reason: str) -> Any:
    from jupiterd.aws.executor.warm import StandbyWarmer
    from jupiterd.cli.executor import executor_for
    from jupiterd.state import readiness

    async with executor_for(cfg, progress_interval=5.0) as ex:
        await ex.resume_pending()
        res = await StandbyWarmer(ex).drill(service, reason=reason, by="cli")
    if res.result != "refused":
        try:
            readiness.save(cfg.state_dir, service, res.to_dict())
        except OSError as exc:
            print(f"jupiterd: cannot record the drill in {cfg.state_dir}: {exc.strerror}")
    return res


def format_result(res: Any) -> str:
    lines = [f"{res.service}: standby readiness {res.result} in {res.seconds:.1f}s: {res.detail}"]
    if res.boot_seconds is not None:
        lines.append(f"  boot (StartInstances to running)  {res.boot_seconds:7.1f}s")
    if res.healthy_seconds is not None:
        lines.append(f"  app healthy (running to rise)     {res.healthy_seconds:7.1f}s")
    if res.rto_budget is not None:
        lines.append(f"  RTO budget                        {res.rto_budget:7.1f}s")
    for s in res.steps:
        lines.append(f"  {s.name:<16} {'ok  ' if s.ok else 'FAIL'} {s.seconds:7.2f}s  {s.detail}")
    return "\n".join(lines)
