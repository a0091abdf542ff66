"""The executor a command acts through. Alone (no ``ha:``), the local one
with the file journal. With replicated deciders, the replicas' table: the
command acts only while no replica holds the leader lease, taking the lease
itself (as ``<replica_id>.cli``) for as long as it acts, so that it and a
leader never run plans at once; a dry run needs no lease."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

EXIT_LEADER_BUSY = 75  # another process (a replica) holds the lease: try again later


class LeaderBusy(Exception):
    """The replicas' leader lease is held by another: the sentence says by whom."""


@contextlib.asynccontextmanager
async def executor_for(cfg: Any, *, dry_run: bool = False, **kw: Any) -> AsyncIterator[Any]:
    if cfg.ha is None:
        from jupiterd.aws.executor import AwsExecutor

        ex = AwsExecutor(cfg, dry_run=dry_run, **kw)
        try:
            yield ex
        finally:
            ex.close()
        return
    from jupiterd.aws.client import AwsError
    from jupiterd.runtime.ha_build import HaExecutor

    cli = cfg.model_copy(update={"ha": cfg.ha.model_copy(update={"replica_id": _cli_id(cfg)})})
    hx = HaExecutor(cli, dry_run=dry_run, metrics=None, **kw)
    try:
        if not dry_run and not await hx.lease.acquire():
            try:
                rec = await hx.lease.read()
                who = rec.owner if rec is not None and rec.owner else "another process"
            except AwsError as exc:
                who = f"unknown ({exc.sentence()})"
            raise LeaderBusy(
                f"replicated deciders: the lease in table {cfg.ha.table} is held by {who}, "
                "and only its holder runs plans; act through the leader (or stop the replicas "
                "first), then run this again"
            )
        yield hx
    finally:
        if hx.lease.token is not None and not dry_run:
            with contextlib.suppress(Exception):
                await hx.lease.release()
        hx.close()


def _cli_id(cfg: Any) -> str:
    return f"{cfg.ha.replica_id[:59]}.cli"
