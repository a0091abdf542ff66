"""Each replica's view of every target, published to the ha table and read
back by all (replicated deciders: the quorum counts these views).

One item per replica, ``pk = "view#<replica_id>"``:

- ``replica``: the id again (checked against the key);
- ``seq``: one more on every publish, kept by DynamoDB itself (``ADD seq
  :one`` in the same UpdateItem that writes the view), so a restarted
  replica goes on from where its item is and never goes backwards;
- ``published_at``: the publisher's wall clock (for people, and for the
  first sight of a view only, below);
- ``isolated`` and ``why``: the replica sees every target down or its
  monitor is degraded: it votes nothing;
- ``services``: a map of service name to a list of seven values, ``[active,
  primary status, since, probed_at, backup status, since, probed_at]``
  (times are wall seconds, NULL when unknown);
- ``ttl``: now + one day, so DynamoDB removes the view of a replica that
  is gone. A replica silent that long starts again from seq 1 when it
  comes back; readers take a lower seq as a new first sight.

Freshness does not trust clocks: a reader counts a view fresh while it saw
the view's ``seq`` change within ``stale_after`` of its OWN monotonic
clock. A view seen for the first time (a reader just started, or the seq
went back) has no change to go by: it is fresh when its ``published_at`` is
within ``stale_after`` of the reader's wall clock, and its age is taken from
that difference; a view whose publisher's clock is far off is stale at
first sight and fresh from the reader's next read that sees its seq move.

Reading: one Scan of the table, filtered to ``begins_with(pk, "view#")``,
strongly consistent. The other way, an index item listing the replica ids
and a BatchGetItem of it and the views, costs more for a table this small.
On-demand reads are billed per 4 KB: a Scan by the total size of every
item it reads (the filter applies after), a BatchGetItem per item, each
rounded up to 4 KB. Three replicas' views of five services are 430 bytes
each, the lease 93 and a journal of three plans of 2 KB some 6 KB: the
Scan reads 7.6 KB, 2 read units; the BatchGetItem reads 4 items, 4 units
(``bench/ha_views.py``). The Scan is no dearer while the whole table stays
under 16 KB, which holds while the journal keeps a few plans (20 services
and ten plans: 25 KB, 7 units against 4), and it needs no index to keep.

Everything a peer wrote is checked (``parse_view``): a malformed item is
left out with one log line, never an exception. An item is at most 400 KB
in DynamoDB; ``publish`` refuses a view over ``MAX_VIEW_BYTES`` (350 KB,
some 4,000 services) with an ``AwsError`` rather than cut it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from jupiterd.aws.client import Aws, AwsError
from jupiterd.aws.view_items import (
    VIEW_PREFIX,
    Published,
    encode_services,
    item_bytes,
    parse_view,
    read_units,
    write_units,
)
from jupiterd.core.clock import Clock
from jupiterd.core.quorum import ReplicaView, ServiceVerdicts, TargetVerdict

__all__ = [
    "MAX_VIEW_BYTES",
    "ReplicaView",
    "ServiceVerdicts",
    "TargetVerdict",
    "ViewTooLarge",
    "Views",
    "item_bytes",
    "read_units",
    "write_units",
]

log = structlog.get_logger("jupiterd.views")

TTL_SECONDS = 86_400
MAX_VIEW_BYTES = 350 * 1024  # DynamoDB's items hold 400 KB
MAX_PAGES = 16  # Scan pages of 1 MB each; the table holds a few KB


class ViewTooLarge(AwsError):
    """A view over ``MAX_VIEW_BYTES``: refused before any call."""


# --------------------------------------------------------------------------- views


@dataclass(slots=True)
class _Seen:
    seq: int
    changed_at: float | None  # the reader's monotonic time of the last change seen


class Views:
    """This replica's publisher and every replica's reader. One task drives
    it (publish and read may interleave: they share nothing but counters)."""

    def __init__(
        self,
        aws: Aws,
        table: str,
        replica_id: str,
        clock: Clock,
        stale_after: float,
        *,
        consistent: bool = True,
    ) -> None:
        self.aws = aws
        self.table = table
        self.replica_id = replica_id
        self.clock = clock
        self.stale_after = stale_after
        self.consistent = consistent
        self.seq: int | None = None  # ours, as the last publish left it
        self._seen: dict[str, _Seen] = {}
        self._bad: dict[str, str] = {}  # key -> the reason last logged
        # For the cost figures: the units AWS said it consumed (when it
        # says), the size of the last view written and of the views last read
        # (a Scan is billed by everything it reads, filtered out or not).
        self.consumed = {"read": 0.0, "write": 0.0}
        self.last_publish_bytes = 0
        self.last_read_bytes = 0

    def _consumed(self, response: Mapping[str, Any], kind: str) -> None:
        cap = response.get("ConsumedCapacity")
        if isinstance(cap, dict) and isinstance(cap.get("CapacityUnits"), int | float):
            self.consumed[kind] += float(cap["CapacityUnits"])

    async def publish(
        self, services: Mapping[str, ServiceVerdicts], *, isolated: bool, why: str
    ) -> None:
        """Write this replica's view (raises AwsError; ``ViewTooLarge``
        before any call when the item would pass ``MAX_VIEW_BYTES``)."""
        now = self.clock.time()
        key = VIEW_PREFIX + self.replica_id
        attrs: dict[str, dict[str, Any]] = {
            "replica": {"S": self.replica_id},
            "published_at": {"N": repr(float(now))},
            "isolated": {"BOOL": bool(isolated)},
            "why": {"S": why},
            "services": encode_services(services),
            "ttl": {"N": str(int(now) + TTL_SECONDS)},
        }
        size = item_bytes({"pk": {"S": key}, "seq": {"N": "9" * 12}, **attrs})
        if size > MAX_VIEW_BYTES:
            raise ViewTooLarge(
                "dynamodb:UpdateItem",
                self.table,
                "ViewTooLarge",
                f"the view of {len(services)} services is {size} bytes; jupiterd publishes "
                f"at most {MAX_VIEW_BYTES} (a DynamoDB item holds 400 KB)",
            )
        # Every name through a placeholder: `ttl` is one of DynamoDB's
        # reserved words.
        r = await self.aws.call(
            "dynamodb",
            "UpdateItem",
            resource=self.table,
            TableName=self.table,
            Key={"pk": {"S": key}},
            UpdateExpression="SET " + ", ".join(f"#{k} = :{k}" for k in attrs) + " ADD #seq :one",
            ExpressionAttributeNames={**{f"#{k}": k for k in attrs}, "#seq": "seq"},
            ExpressionAttributeValues={
                **{f":{k}": v for k, v in attrs.items()},
                ":one": {"N": "1"},
            },
            ReturnValues="UPDATED_NEW",
            ReturnConsumedCapacity="TOTAL",
        )
        self._consumed(r, "write")
        self.last_publish_bytes = size
        try:
            self.seq = int(r["Attributes"]["seq"]["N"])
        except (KeyError, TypeError, ValueError):
            self.seq = None

    async def _scan(self) -> list[Any]:
        items: list[Any] = []
        start: dict[str, Any] | None = None
        total = 0
        for _ in range(MAX_PAGES):
            extra: dict[str, Any] = {"ExclusiveStartKey": start} if start else {}
            r = await self.aws.call(
                "dynamodb",
                "Scan",
                resource=self.table,
                TableName=self.table,
                ConsistentRead=self.consistent,
                FilterExpression="begins_with(pk, :view)",
                ExpressionAttributeValues={":view": {"S": VIEW_PREFIX}},
                ReturnConsumedCapacity="TOTAL",
                **extra,
            )
            self._consumed(r, "read")
            page = r.get("Items") or []
            items.extend(page)
            total += sum(_size(i) for i in page)
            start = r.get("LastEvaluatedKey")
            if not start:
                break
        else:
            log.warning("views_scan_truncated", table=self.table, pages=MAX_PAGES)
        self.last_read_bytes = total
        return items

    async def read(self) -> dict[str, ReplicaView]:
        """Every replica's view, ours included (raises AwsError)."""
        items = await self._scan()
        wall, mono = self.clock.time(), self.clock.monotonic()
        out: dict[str, ReplicaView] = {}
        for item in items:
            try:
                p = parse_view(item)
            except (ValueError, TypeError, AttributeError) as exc:
                self._malformed(item, str(exc))
                continue
            self._bad.pop(VIEW_PREFIX + p.replica, None)
            seen = self._judge(p, wall, mono)
            age = None if seen.changed_at is None else max(0.0, mono - seen.changed_at)
            out[p.replica] = ReplicaView(
                replica=p.replica,
                seq=p.seq,
                published_at=p.published_at,
                isolated=p.isolated,
                why=p.why,
                services=p.services,
                fresh=age is not None and age <= self.stale_after,
                age=age,
            )
        for gone in set(self._seen) - set(out):
            del self._seen[gone]
        return out

    def _judge(self, p: Published, wall: float, mono: float) -> _Seen:
        prev = self._seen.get(p.replica)
        if prev is None or p.seq < prev.seq:
            # First sight (or the item was made anew): the publisher's own
            # time against ours is all there is to go by.
            lag = wall - p.published_at
            changed = mono - max(0.0, lag) if abs(lag) <= self.stale_after else None
            seen = _Seen(p.seq, changed)
        elif p.seq > prev.seq:
            seen = _Seen(p.seq, mono)
        else:
            seen = prev
        self._seen[p.replica] = seen
        return seen

    def _malformed(self, item: Any, reason: str) -> None:
        key = "?"
        if isinstance(item, dict) and isinstance(item.get("pk"), dict):
            key = str(item["pk"].get("S", "?"))[:80]
        if self._bad.get(key) != reason:
            self._bad[key] = reason
            log.warning("view_malformed", table=self.table, key=key, reason=reason)


def _size(item: Any) -> int:
    try:
        return item_bytes(item)
    except (ValueError, TypeError, AttributeError):
        return 0
