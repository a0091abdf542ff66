"""The shared journal's items in the HA table, and their validation as read
back (``parse_plan_item``): a damaged item is a problem listed with the
service it may concern, never an exception.

- ``plan#<id>``: one plan. ``records``: a list of strings, each one record
  of the file journal's schema (``state.records``: ``plan``, ``begin``,
  ``end``, ``rollback``, ``result``, ``done``), in the order written;
  ``service``; ``owner`` and ``token``: the replica and the lease token of
  the last write; ``updated_at``; ``fenced_at`` (the last fence); on
  ``done``, ``done`` and ``ttl`` (DynamoDB deletes the item a week later).
- ``journal#open``: ``plans``, the string set of the ids of every plan not
  yet done: finding the unfinished plans is one GetItem and one
  BatchGetItem, whatever the history.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jupiterd.state import statefile
from jupiterd.state.records import PlanRecord, _apply_checked
from jupiterd.state.statefile import Invalid

PLAN_PREFIX = "plan#"
OPEN_KEY = "journal#open"
FINISHED_TTL = 7 * 86400.0  # seconds a finished plan's item is kept
MAX_RECORDS = 2000  # a plan writes a few dozen


def plan_key(plan_id: str) -> dict[str, Any]:
    return {"pk": {"S": PLAN_PREFIX + plan_id}}


@dataclass(slots=True)
class PlanItem:
    """One plan item as read: the plan (None when damaged), who wrote it
    last, and the problem (a sentence) with the service it concerns."""

    plan_id: str
    plan: PlanRecord | None
    owner: str | None
    token: int | None
    problem: str | None = None
    service: str | None = None  # the damaged plan's service, when it can tell


def _text(item: dict[str, Any], key: str) -> str | None:
    v = item.get(key)
    if isinstance(v, dict) and isinstance(v.get("S"), str):
        return str(v["S"])
    return None


def _int(item: dict[str, Any], key: str) -> int | None:
    v = item.get(key)
    if isinstance(v, dict) and isinstance(v.get("N"), str):
        try:
            return int(v["N"])
        except ValueError:
            return None
    return None


def parse_plan_item(plan_id: str, item: dict[str, Any]) -> PlanItem:
    """Validate one plan item against the file journal's record schema."""
    service = _text(item, "service")
    out = PlanItem(plan_id, None, _text(item, "owner"), _int(item, "token"), service=service)
    try:
        plan = _parse(plan_id, item)
    except Invalid as exc:
        out.problem = f"item {PLAN_PREFIX}{plan_id}: {exc}"
        out.service = _first_service(plan_id, item)
        return out
    out.plan, out.service = plan, plan.service
    return out


def _first_service(plan_id: str, item: dict[str, Any]) -> str | None:
    """The damaged plan's service, when its first record is sound and the
    item agrees with it; None (it may concern any service) otherwise."""
    try:
        rows = item["records"]["L"]
        plans: dict[str, PlanRecord] = {}
        _apply_checked(plans, statefile.loads(rows[0]["S"].encode("utf-8", "surrogatepass")))
        service = plans[plan_id].service
    except (Invalid, KeyError, IndexError, TypeError, AttributeError):
        return None
    return service if _text(item, "service") == service else None


def _parse(plan_id: str, item: dict[str, Any]) -> PlanRecord:
    if _text(item, "pk") != PLAN_PREFIX + plan_id:
        raise Invalid("its key is not its plan's")
    records = item.get("records")
    if not isinstance(records, dict) or not isinstance(records.get("L"), list):
        raise Invalid("'records' is not a list")
    rows = records["L"]
    if not rows or len(rows) > MAX_RECORDS:
        raise Invalid(f"'records' holds {len(rows)} records")
    plans: dict[str, PlanRecord] = {}
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not isinstance(row.get("S"), str):
            raise Invalid(f"record {n} is not a string")
        try:
            rec = statefile.loads(row["S"].encode("utf-8", "surrogatepass"))
            if isinstance(rec, dict) and rec.get("id") != plan_id:
                raise Invalid("a record of another plan")
            if n == 1 and isinstance(rec, dict) and rec.get("t") != "plan":
                raise Invalid("the first record is not the plan's")
            _apply_checked(plans, rec)
        except Invalid as exc:
            raise Invalid(f"record {n}: {exc}") from None
    plan = plans[plan_id]
    service = _text(item, "service")
    if service is not None and service != plan.service:
        raise Invalid("'service' is not its plan's")
    return plan


def parse_open(item: dict[str, Any] | None) -> list[str] | None:
    """The ids the index lists; None when the index item is damaged."""
    if item is None:
        return []
    v = item.get("plans")
    if v is None:
        return []
    if not isinstance(v, dict) or not isinstance(v.get("SS"), list):
        return None
    ids = v["SS"]
    if not all(isinstance(i, str) and 0 < len(i) <= 64 and "#" not in i for i in ids):
        return None
    return sorted(set(ids))
