"""Reading the shared journal (``ha_journal``): the open plans of the HA
table, each item validated (``ha_items``); damage is reported with the
services it concerns, never raised."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterable
from typing import Any

from jupiterd.aws.client import Aws, AwsError
from jupiterd.aws.ha_items import OPEN_KEY, PLAN_PREFIX, PlanItem, parse_open, parse_plan_item
from jupiterd.aws.lease import Lease
from jupiterd.state.journal import JournalView
from jupiterd.state.planlock import JournalError
from jupiterd.state.records import PlanRecord


class TableReader:
    """The reading half of ``TableJournal``."""

    def __init__(self, aws: Aws, table: str, lease: Lease) -> None:
        self.aws = aws
        self.table = table
        self.lease = lease

    def _forget(self, ids: list[str]) -> None:
        """Index entries whose item is gone (the journal drops them)."""

    def read(self) -> list[PlanRecord]:
        """The open plans (a finished plan leaves the index; its item is
        kept ``finished_ttl`` for people), the damaged ones left out."""
        return self.check(repair=True).plans

    def unfinished(self) -> list[PlanRecord]:
        """The plans not done, except those whose last writer still holds
        the lease under the same token and is another replica (running)."""
        return [p for p in self.read() if not p.done]

    def held(self, services: Iterable[str]) -> dict[str, str]:
        """The services a damaged plan item holds, each with the sentence."""
        view = self.check(repair=False)
        if view.damage is None:
            return {}
        why = (
            f"{view.damage}: no failover of this service until an operator has checked where "
            f"its traffic is (`jupiterd status`) and removed the item from the table"
        )
        return {s: why for s in services if view.affected is None or s in view.affected}

    def check(self, *, repair: bool) -> JournalView:
        """Read and validate the open plans. Damage (a sentence, and the
        services it concerns; None: all) is reported, never raised; the
        damaged item stays in the table for an operator. ``repair``: ids the
        index lists without an item are dropped from it."""
        index = self._get(OPEN_KEY)
        ids = parse_open(index)
        if ids is None:
            return JournalView([], f"the shared journal's index item {OPEN_KEY} is damaged", None)
        found = self._batch([PLAN_PREFIX + i for i in ids] + [self.lease.key])
        lease = found.get(self.lease.key, {})
        holder = (lease.get("owner", {}).get("S"), lease.get("token", {}).get("N"))
        plans: list[PlanRecord] = []
        problems: list[str] = []
        affected: set[str] | None = set()
        gone: list[str] = []
        for pid in ids:
            item = found.get(PLAN_PREFIX + pid)
            if item is None:
                gone.append(pid)
                continue
            parsed = parse_plan_item(pid, item)
            if parsed.plan is None:
                problems.append(parsed.problem or f"item {PLAN_PREFIX}{pid} is damaged")
                if parsed.service is None or affected is None:
                    affected = None
                else:
                    affected.add(parsed.service)
                continue
            if _running_elsewhere(parsed, holder, self.lease.owner):
                continue
            plans.append(parsed.plan)
        if gone and repair:
            self._forget(gone)
        plans.sort(key=lambda p: p.started_at)
        if not problems:
            return JournalView(plans, None, set())
        keep = [p for p in plans if affected is not None and p.service not in affected]
        what = "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
        services = "all services" if affected is None else ", ".join(sorted(affected))
        sentence = (
            f"the shared journal in the DynamoDB table {self.table} is damaged ({what}); "
            f"it concerns {services}"
        )
        return JournalView(keep, sentence, affected)

    def _get(self, key: str) -> dict[str, Any] | None:
        try:
            r = _sync(
                self.aws.call(
                    "dynamodb",
                    "GetItem",
                    resource=self.table,
                    TableName=self.table,
                    Key={"pk": {"S": key}},
                    ConsistentRead=True,
                )
            )
        except AwsError as exc:
            raise self._unreadable(exc) from None
        item = r.get("Item")
        return item if isinstance(item, dict) else None

    def _batch(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(keys), 100):
            want: list[dict[str, Any]] = [{"pk": {"S": k}} for k in keys[i : i + 100]]
            for attempt in range(8):
                try:
                    r = _sync(
                        self.aws.call(
                            "dynamodb",
                            "BatchGetItem",
                            resource=self.table,
                            RequestItems={self.table: {"Keys": want, "ConsistentRead": True}},
                        )
                    )
                except AwsError as exc:
                    raise self._unreadable(exc) from None
                for item in r.get("Responses", {}).get(self.table, []):
                    pk = item.get("pk", {}).get("S") if isinstance(item, dict) else None
                    if isinstance(pk, str):
                        out[pk] = item
                want = r.get("UnprocessedKeys", {}).get(self.table, {}).get("Keys", [])
                if not want:
                    break
                time.sleep(min(0.5, 0.02 * 2**attempt))
            else:
                raise JournalError(
                    f"cannot read the shared journal (DynamoDB table {self.table}): "
                    "BatchGetItem left keys unprocessed after 8 tries"
                )
        return out

    def _unreadable(self, exc: AwsError) -> JournalError:
        return JournalError(
            f"cannot read the shared journal (DynamoDB table {self.table}): {exc.sentence()}"
        )


def _sync(coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """Run one AWS call to its end on a private loop of this thread (the
    journal's methods run in the executor's worker threads)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass  # (run outside this handler: it would become the error's context)
    else:
        coro.close()
        raise RuntimeError("the shared journal's methods block: call them in a thread")
    return asyncio.run(coro)


def _running_elsewhere(item: PlanItem, holder: tuple[str | None, str | None], me: str) -> bool:
    """Its last writer is another replica that still holds the lease under
    the same token: the plan is running there, not interrupted."""
    owner, token = holder
    return (
        item.owner is not None
        and item.owner != me
        and item.owner == owner
        and token is not None
        and str(item.token) == token
    )
