"""The shared plan journal of replicated deciders, in the HA table, and the
plan lock that is the leader lease.

``TableJournal`` has the methods and the record semantics of the file
journal (``state.journal.Journal``), so the executor uses it unchanged; its
items are described in ``ha_items``. A new leader's ``resume_pending`` finds
the plans an old leader left unfinished and finishes or rolls them back.

Fencing. Every write is one TransactWriteItems: a ConditionCheck on the
lease item (``owner = me AND token = the token``) and the update of the
plan's item (with the open-plan index on ``start_plan`` and ``done``). The
token is pinned per plan: the lease's token when this process started or
resumed writing the plan. A refused check raises ``Fenced``: another replica
took the lease, the plan is its own now, and the executor stops at once (no
further AWS call, no rollback, no ``done``).

Before each mutating AWS call the executor calls ``before_change``: it
refuses when the lease is not held by our own clock (``Lease.is_leader``),
and writes a fence again when more than ``fence_within`` (default half the
lease margin) of monotonic time passed since the last write of the plan
was sent.

What remains open: a pause (SIGSTOP, GC, a stalled thread) after the last
fence was sent and before the AWS call leaves the wire, or a retry of that
call by the SDK after such a pause, is not fenced: no AWS API the steps
call can be made conditional on the lease. It is bounded on the healthy
side (a leader that never pauses sends within ``fence_within`` of a
successful fence, and at least ``margin`` before another can take over),
not against an arbitrary pause. Every step checks AWS before acting, so
the new leader's run of the same step changes nothing twice; only a call
in that window can race the new leader's.

The journal's methods are synchronous (the executor calls them in a
thread, as it does the file journal's): each AWS call runs on a private
event loop of the calling thread. DynamoDB unreachable: ``JournalError``
with a sentence. Concurrent writes of one plan (the steps of one stage)
conflict in DynamoDB's transactions: a ``TransactionConflict`` is retried.

Test-only: ``JUPITERD_TEST_KILL_AFTER_RECORD=N``, as for the file journal.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import threading
import time
import uuid
from typing import Any

import structlog

from jupiterd.aws.client import Aws, AwsError
from jupiterd.aws.ha_items import FINISHED_TTL, OPEN_KEY, PLAN_PREFIX, plan_key
from jupiterd.aws.ha_lock import LeaseLock, NotLeader
from jupiterd.aws.ha_reader import TableReader, _sync
from jupiterd.aws.lease import Lease
from jupiterd.state.journal import KILL_ENV
from jupiterd.state.planlock import Fenced, JournalError
from jupiterd.state.records import (
    PlanRecord,
    begin_record,
    done_record,
    end_record,
    new_plan,
    result_record,
    rollback_record,
)

__all__ = ["Fenced", "LeaseLock", "NotLeader", "TableJournal"]

log = structlog.get_logger("jupiterd.journal")

CONFLICT_TRIES = 10
_LEASE_COND = "#lo = :me AND #lt = :token"


class TableJournal(TableReader):
    def __init__(
        self,
        aws: Aws,
        table: str,
        lease: Lease,
        *,
        fence_within: float | None = None,
        finished_ttl: float = FINISHED_TTL,
    ) -> None:
        super().__init__(aws, table, lease)
        # Fence again before a mutating call when the last write of the plan
        # was sent longer ago than this (seconds of the lease's monotonic clock).
        self.fence_within = lease.margin / 2 if fence_within is None else fence_within
        self.finished_ttl = finished_ttl
        self.leader_seen: str | None = None  # the lease's owner as last seen refusing us
        self._tokens: dict[str, int] = {}  # plan id -> the token its writes are under
        self._sent: dict[str, float] = {}  # plan id -> when its last good write was sent
        self._mutex = threading.Lock()
        self._records = 0
        kill = os.environ.get(KILL_ENV, "")
        self._kill_after = int(kill) if kill.isdigit() else None

    # ------------------------------------------------------------------ writing
    def start_plan(
        self,
        service: str,
        from_role: str,
        to_role: str,
        reason: str,
        requested_by: str,
        standby_state: str,
        kind: str = "failover",
    ) -> PlanRecord:
        rec, first = new_plan(
            service, from_role, to_role, reason, requested_by, standby_state, kind
        )
        token = self._pin(rec.id)
        plan = {
            "Update": {
                "TableName": self.table,
                "Key": plan_key(rec.id),
                "UpdateExpression": "SET #r = :recs, #s = :svc, #o = :me, #t = :token, "
                "started_at = :now, updated_at = :now",
                "ConditionExpression": "attribute_not_exists(pk)",
                "ExpressionAttributeNames": {"#r": "records", "#s": "service", "#o": "owner"}
                | {"#t": "token"},
                "ExpressionAttributeValues": {
                    ":recs": {"L": [{"S": _line(first)}]},
                    ":svc": {"S": service},
                    ":me": {"S": self.lease.owner},
                    ":token": {"N": str(token)},
                    ":now": {"N": repr(rec.started_at)},
                },
            }
        }
        self._write(rec.id, token, [plan, self._index("ADD", rec.id)], record=True)
        return rec

    def begin(self, plan_id: str, step: str) -> None:
        self._append(plan_id, begin_record(plan_id, step))

    def end(
        self,
        plan_id: str,
        step: str,
        ok: bool,
        seconds: float,
        detail: str,
        data: dict[str, Any] | None = None,
    ) -> None:
        self._append(plan_id, end_record(plan_id, step, ok, seconds, detail, data))

    def rollback(self, plan_id: str, reason: str) -> None:
        self._append(plan_id, rollback_record(plan_id, reason))

    def result(self, plan_id: str, result: str, detail: str) -> None:
        self._append(plan_id, result_record(plan_id, result, detail))

    def done(self, plan_id: str) -> None:
        last = done_record(plan_id)
        self._append(plan_id, last, finished_at=last["at"], also=[self._index("DELETE", plan_id)])
        with self._mutex:
            self._tokens.pop(plan_id, None)
            self._sent.pop(plan_id, None)

    def _index(self, op: str, *plan_ids: str) -> dict[str, Any]:
        """The open-plans index's update in a transaction: ``op`` ADD (a
        plan starts) or DELETE (it is done, or its item is gone)."""
        return {
            "Update": {
                "TableName": self.table,
                "Key": {"pk": {"S": OPEN_KEY}},
                "UpdateExpression": f"{op} #p :ids",
                "ExpressionAttributeNames": {"#p": "plans"},
                "ExpressionAttributeValues": {":ids": {"SS": list(plan_ids)}},
            }
        }

    def before_change(self, plan_id: str | None) -> None:
        """Called before each mutating AWS call of a plan: ``Fenced`` when
        the lease is not held by our own clock, and a fence written again
        when the plan's last write was sent over ``fence_within`` ago."""
        if plan_id is None:
            return
        with self._mutex:
            token, sent = self._tokens.get(plan_id), self._sent.get(plan_id)
        if token is None or self.lease.token != token or not self.lease.is_leader():
            self._unpin(plan_id)
            raise Fenced(
                f"this replica ({self.lease.owner}) no longer holds the lease "
                f"(token {token}) the plan runs under"
            )
        if sent is not None and self.lease.clock.monotonic() - sent <= self.fence_within:
            return
        fence = {
            "Update": {
                "TableName": self.table,
                "Key": plan_key(plan_id),
                "UpdateExpression": "SET fenced_at = :now",
                "ConditionExpression": "attribute_exists(pk)",
                "ExpressionAttributeValues": {":now": {"N": repr(time.time())}},
            }
        }
        self._write(plan_id, token, [fence], record=False)

    def _append(
        self,
        plan_id: str,
        rec: dict[str, Any],
        *,
        finished_at: float | None = None,
        also: list[dict[str, Any]] | None = None,
    ) -> None:
        token = self._pin(plan_id)
        update = "SET #r = list_append(#r, :rec), #o = :me, #t = :token, updated_at = :now"
        values: dict[str, Any] = {
            ":rec": {"L": [{"S": _line(rec)}]},
            ":me": {"S": self.lease.owner},
            ":token": {"N": str(token)},
            ":now": {"N": repr(rec["at"])},
        }
        names = {"#r": "records", "#o": "owner", "#t": "token"}
        if finished_at is not None:
            update += ", #d = :yes, #ttl = :ttl"
            names |= {"#d": "done", "#ttl": "ttl"}
            values |= {
                ":yes": {"BOOL": True},
                ":ttl": {"N": str(int(finished_at + self.finished_ttl))},
            }
        item = {
            "Update": {
                "TableName": self.table,
                "Key": plan_key(plan_id),
                "UpdateExpression": update,
                "ConditionExpression": "attribute_exists(pk)",
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": values,
            }
        }
        self._write(plan_id, token, [item, *(also or [])], record=True)

    def _pin(self, plan_id: str) -> int:
        with self._mutex:
            token = self._tokens.get(plan_id)
            if token is None:
                token = self.lease.token
                if token is None:
                    raise Fenced(f"this replica ({self.lease.owner}) does not hold the lease")
                self._tokens[plan_id] = token
            return token

    def _unpin(self, plan_id: str) -> None:
        """The run writing this plan stops: a later resumption pins anew."""
        with self._mutex:
            self._tokens.pop(plan_id, None)
            self._sent.pop(plan_id, None)

    def _write(
        self, plan_id: str, token: int, items: list[dict[str, Any]], *, record: bool
    ) -> None:
        check = {
            "ConditionCheck": {
                "TableName": self.table,
                "Key": {"pk": {"S": self.lease.key}},
                "ConditionExpression": _LEASE_COND,
                "ExpressionAttributeNames": {"#lo": "owner", "#lt": "token"},
                "ExpressionAttributeValues": {
                    ":me": {"S": self.lease.owner},
                    ":token": {"N": str(token)},
                },
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }
        try:
            for attempt in range(CONFLICT_TRIES):
                # The SDK's own retries resend the same token: DynamoDB applies
                # it once. A conflict applied nothing: the next try is new.
                request = uuid.uuid4().hex
                sent = self.lease.clock.monotonic()
                try:
                    _sync(
                        self.aws.call(
                            "dynamodb",
                            "TransactWriteItems",
                            resource=self.table,
                            TransactItems=[check, *items],
                            ClientRequestToken=request,
                        )
                    )
                except AwsError as exc:
                    reasons = _reasons(exc)
                    if "TransactionConflict" in reasons and attempt + 1 < CONFLICT_TRIES:
                        time.sleep(min(0.5, 0.01 * 2**attempt) * (0.5 + random.random()))
                        continue
                    raise self._refusal(plan_id, token, exc, reasons) from None
                break
        except JournalError:
            self._unpin(plan_id)
            raise
        with self._mutex:
            if plan_id in self._tokens:
                self._sent[plan_id] = sent
        if record:
            self._count()

    def _refusal(self, plan_id: str, token: int, exc: AwsError, reasons: list[str]) -> JournalError:
        if reasons and reasons[0] == "ConditionalCheckFailed":
            holder = _lease_holder(exc)
            self.leader_seen = holder[0]
            if holder[0]:
                who = f"it is held by {holder[0]} (token {holder[1]})"
            elif holder[1]:
                who = f"it was released (token {holder[1]})"
            else:
                who = "it is no longer ours"
            log.warning("journal_fenced", plan=plan_id, owner=self.lease.owner, token=token)
            return Fenced(
                f"the lease was taken over: {who}; this replica "
                f"({self.lease.owner}) wrote plan {plan_id} under token {token}"
            )
        if "ConditionalCheckFailed" in reasons:
            return JournalError(
                f"the shared journal's item {PLAN_PREFIX}{plan_id} is missing from the "
                f"DynamoDB table {self.table} (removed by hand, or expired)"
            )
        return JournalError(
            f"cannot write the shared journal (DynamoDB table {self.table}): {exc.sentence()}"
        )

    def _count(self) -> None:
        with self._mutex:
            self._records += 1
            n = self._records
        if self._kill_after is not None and n == self._kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    # ------------------------------------------------------------------ reading
    def _forget(self, ids: list[str]) -> None:
        """Forget index entries whose item is gone (best effort, fenced)."""
        token = self.lease.token
        if token is None:
            return
        for pid in ids:
            log.warning("journal_entry_without_item", plan=pid, table=self.table)
        with contextlib.suppress(JournalError):
            self._write(ids[0], token, [self._index("DELETE", *ids)], record=False)

    def maybe_rotate(self) -> None:
        """Nothing to rotate: finished plans leave the index and expire."""

    def close(self) -> None:
        """The Aws client is the caller's."""


def _line(rec: dict[str, Any]) -> str:
    return json.dumps(rec, separators=(",", ":"), sort_keys=True)


def _reasons(exc: AwsError) -> list[str]:
    """The cancellation reasons of a refused transaction, one per item."""
    if exc.code != "TransactionCanceledException":
        return []
    response = getattr(exc.__context__, "response", None)
    if isinstance(response, dict) and isinstance(response.get("CancellationReasons"), list):
        return [
            str(r.get("Code", "None")) if isinstance(r, dict) else "None"
            for r in response["CancellationReasons"]
        ]
    text = exc.message
    if "[" in text and text.endswith("]"):
        return [r.strip() for r in text[text.rindex("[") + 1 : -1].split(",")]
    return []


def _lease_holder(exc: AwsError) -> tuple[str | None, str | None]:
    """Who holds the lease, from the refused check's old item."""
    response = getattr(exc.__context__, "response", None)
    try:
        item = response["CancellationReasons"][0]["Item"]  # type: ignore[index]
        return item.get("owner", {}).get("S"), item.get("token", {}).get("N")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None, None
