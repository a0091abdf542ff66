"""The leader lease of replicated deciders: one DynamoDB item, conditional
writes only, and no reliance on synchronized clocks.

The item (partition key ``pk``, default ``"lease"``) holds:

- ``owner``: the holder's replica id (absent once released);
- ``token``: the fencing token, one more on every acquire by a new holder
  (a release keeps it, so it never goes back);
- ``rvn``: the record version, a fresh random value on every write;
- ``duration``: the lease duration in seconds the holder works with;
- ``expires_at``: the holder's wall clock plus ``duration`` (for people and
  /status only: no decision reads it).

Takeover: a replica that finds the item held by another takes it only after
it has seen the same ``rvn`` for a full ``duration`` of its OWN monotonic
clock, and then with a write conditional on that ``rvn``: a holder that
renewed in between changed it, the write fails and the wait starts again. A
released item (no owner) is taken at once.

Leadership: the holder renews well inside the lease (``run`` every
``duration / 3``). It counts itself leader (``is_leader``) only until
``duration - margin`` of its own monotonic clock since it SENT its last
successful renewal. That renewal was written no earlier than it was sent, and
a taker observes the new ``rvn`` no earlier than it was written, then waits a
full ``duration``: the holder stops acting at least ``margin`` before anyone
can take over. ``margin`` covers the two monotonic clocks running at
different rates over one lease (and a scheduling pause between a check of
``is_leader`` and the act); clock offsets play no part.

Fencing: a paused holder may wake after a takeover still believing, for a
moment, that it leads. ``fence(token)`` is the write every mutating step
makes first: it succeeds only while the item's token is still ``token``.

Every failure to reach DynamoDB is "not leader", never an exception.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

import structlog

from jupiterd.aws.client import Aws, AwsError
from jupiterd.core.clock import Clock

log = structlog.get_logger("jupiterd.lease")

LEASE_KEY = "lease"
CONDITION_FAILED = "ConditionalCheckFailedException"


@dataclass(frozen=True, slots=True)
class Record:
    """The lease item as read."""

    owner: str | None
    token: int
    rvn: str
    duration: float
    expires_at: float


def _record(item: dict[str, Any]) -> Record:
    return Record(
        owner=item["owner"]["S"] if "owner" in item else None,
        token=int(item["token"]["N"]),
        rvn=item["rvn"]["S"],
        duration=float(item["duration"]["N"]),
        expires_at=float(item.get("expires_at", {"N": "0"})["N"]),
    )


class Lease:
    """One replica's view of the lease. Not thread-safe; one task drives it."""

    def __init__(
        self,
        aws: Aws,
        table: str,
        owner: str,
        clock: Clock,
        *,
        duration: float = 15.0,
        margin: float = 3.0,
        key: str = LEASE_KEY,
    ) -> None:
        if not 0 < margin < duration:
            raise ValueError("the margin must be positive and shorter than the lease")
        self.aws = aws
        self.table = table
        self.owner = owner
        self.clock = clock
        self.duration = duration
        self.margin = margin
        self.key = key
        self.token: int | None = None  # ours while we hold it
        self._rvn: str | None = None
        self._renewed_at: float | None = None  # monotonic, when the last renew was sent
        self._seen: tuple[str, float] | None = None  # another's rvn, when first seen

    # ------------------------------------------------------------------ state

    def is_leader(self) -> bool:
        """Held, and renewed within ``duration - margin`` of our own clock."""
        if self.token is None or self._renewed_at is None:
            return False
        return self.clock.monotonic() - self._renewed_at < self.duration - self.margin

    def _lost(self, reason: str) -> None:
        if self.token is not None:
            log.warning("lease_lost", owner=self.owner, token=self.token, reason=reason)
        self.token = None
        self._rvn = None
        self._renewed_at = None

    # ------------------------------------------------------------------ calls

    async def read(self) -> Record | None:
        """The item, strongly consistent; None when there is none."""
        r = await self.aws.call(
            "dynamodb",
            "GetItem",
            resource=self.table,
            TableName=self.table,
            Key={"pk": {"S": self.key}},
            ConsistentRead=True,
        )
        item = r.get("Item")
        return _record(item) if item else None

    async def _update(
        self, update: str, condition: str, names: dict[str, str], values: dict[str, Any]
    ) -> None:
        """One conditional write of the lease item (AwsError when refused)."""
        await self.aws.call(
            "dynamodb",
            "UpdateItem",
            resource=self.table,
            TableName=self.table,
            Key={"pk": {"S": self.key}},
            UpdateExpression=update,
            ConditionExpression=condition,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )

    async def _write(self, token: int, condition: str, values: dict[str, Any]) -> bool:
        """Make us the holder with ``token`` if ``condition`` holds."""
        rvn = uuid.uuid4().hex
        sent = self.clock.monotonic()
        try:
            await self._update(
                "SET #o = :me, #t = :token, rvn = :new, #d = :d, expires_at = :exp",
                condition,
                {"#o": "owner", "#t": "token", "#d": "duration"},
                {
                    ":me": {"S": self.owner},
                    ":token": {"N": str(token)},
                    ":new": {"S": rvn},
                    ":d": {"N": repr(self.duration)},
                    ":exp": {"N": repr(self.clock.time() + self.duration)},
                    **values,
                },
            )
        except AwsError as exc:
            if exc.code != CONDITION_FAILED:
                raise
            return False
        self.token, self._rvn, self._renewed_at = token, rvn, sent
        self._seen = None
        return True

    async def acquire(self) -> bool:
        """Take the lease if it is free, released, ours, or its holder has
        not renewed for a full duration as we observed it. True when held."""
        try:
            return await self._acquire()
        except AwsError as exc:
            self._lost(exc.sentence())
            log.warning("lease_unreachable", owner=self.owner, error=exc.sentence())
            return False

    async def _acquire(self) -> bool:
        rec = await self.read()
        if rec is None:
            return await self._write(1, "attribute_not_exists(pk)", {})
        if rec.owner == self.owner and rec.rvn == self._rvn and self.token == rec.token:
            return await self.renew()
        cond = "rvn = :seen"
        seen = {":seen": {"S": rec.rvn}}
        if rec.owner is None or rec.owner == self.owner:
            # Released, or ours from an earlier run of this replica: a new
            # holder all the same, so a new token.
            ok = await self._write(rec.token + 1, cond, seen)
        else:
            now = self.clock.monotonic()
            if self._seen is None or self._seen[0] != rec.rvn:
                self._seen = (rec.rvn, now)
                self._lost("held by " + rec.owner)
                return False
            if now - self._seen[1] < rec.duration:
                return False
            ok = await self._write(rec.token + 1, cond, seen)
        if ok:
            log.info("lease_acquired", owner=self.owner, token=self.token, previous=rec.owner)
        return ok

    async def renew(self) -> bool:
        """Extend our lease; False (and no longer held) when another took it
        or the item changed; False (still held until our clock says
        otherwise) when DynamoDB cannot be reached."""
        if self.token is None or self._rvn is None:
            return False
        try:
            ok = await self._write(
                self.token,
                "#o = :me AND #t = :token AND rvn = :old",
                {":old": {"S": self._rvn}},
            )
        except AwsError as exc:
            log.warning("lease_renew_failed", owner=self.owner, error=exc.sentence())
            return False
        if not ok:
            self._lost("renewal refused: taken over")
        return ok

    async def release(self) -> bool:
        """Give the lease up at once (the token stays for the next holder)."""
        if self.token is None or self._rvn is None:
            return False
        token, rvn = self.token, self._rvn
        self._lost("released")
        try:
            await self._update(
                "REMOVE #o SET rvn = :new",
                "#o = :me AND #t = :token AND rvn = :old",
                {"#o": "owner", "#t": "token"},
                {
                    ":me": {"S": self.owner},
                    ":token": {"N": str(token)},
                    ":old": {"S": rvn},
                    ":new": {"S": uuid.uuid4().hex},
                },
            )
        except AwsError as exc:
            log.warning("lease_release_failed", owner=self.owner, error=exc.sentence())
            return False
        log.info("lease_released", owner=self.owner, token=token)
        return True

    async def fence(self, token: int) -> bool:
        """A write that succeeds only while the lease's token is ``token``:
        the check each mutating step makes before it runs. It leaves the
        record version alone (a fence is not a renewal)."""
        try:
            await self._update(
                "SET fenced_at = :now",
                "#t = :token",
                {"#t": "token"},
                {
                    ":token": {"N": str(token)},
                    ":now": {"N": repr(self.clock.time())},
                },
            )
        except AwsError as exc:
            if exc.code == CONDITION_FAILED:
                log.warning("lease_fenced", owner=self.owner, token=token)
            else:
                log.warning("lease_fence_failed", owner=self.owner, error=exc.sentence())
            return False
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Acquire or renew every ``duration / 3`` until ``stop``, then release."""
        while not stop.is_set():
            if self.token is None:
                await self.acquire()
            else:
                await self.renew()
            await self.clock.sleep(self.duration / 3)
        await self.release()
