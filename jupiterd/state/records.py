"""The journal's records as read back: each plan (``PlanRecord``) and its
steps, and the validation of every line (``parse_journal``): a bad line is
listed as a problem with the services it may concern, never raised."""

from __future__ import annotations

import os
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from jupiterd.state import statefile
from jupiterd.state.statefile import Invalid


@dataclass(slots=True)
class StepRecord:
    name: str
    begun: bool = False
    ended: bool = False
    ok: bool = False
    seconds: float = 0.0
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class PlanRecord:
    """One plan as the journal tells it."""

    id: str
    service: str
    from_role: str
    to_role: str
    reason: str
    requested_by: str
    started_at: float  # Unix time
    standby_state: str | None = None
    # What the record is for: a failover plan, or the warm-up of a standby
    # that moves no traffic (a readiness drill, a pre-warm): resumed by
    # stopping the standby again. Records without it are failover plans.
    kind: str = "failover"
    steps: dict[str, StepRecord] = field(default_factory=dict)
    rollback: str | None = None  # why the plan turned to undoing itself
    result: tuple[str, str] | None = None  # (result, detail) once known
    done: bool = False

    def step(self, name: str) -> StepRecord:
        return self.steps.setdefault(name, StepRecord(name))

    def ended_ok(self, name: str) -> bool:
        s = self.steps.get(name)
        return s is not None and s.ended and s.ok


# --------------------------------------------------------------------------- validation

ROLES = ("primary", "backup")
RESULTS = ("success", "aborted", "failed", "dry_run")
TYPES = ("plan", "begin", "end", "rollback", "result", "done")
PLAN_KINDS = ("failover", "readiness", "prewarm")
TEXT_MAX = 1 << 16
_ID = re.compile(rb'"id"\s*:\s*"([^"\\]{1,64})"')


@dataclass(slots=True)
class ParsedJournal:
    plans: dict[str, PlanRecord]
    lines: dict[str, list[bytes]]  # each plan's raw lines, to carry it over
    problems: list[str]  # "line N: why", one per damaged line
    affected: set[str] | None  # the services the damage may concern; None: all


def parse_journal(data: bytes) -> ParsedJournal:
    """Validate every record (``Invalid`` is never raised: a bad line is
    listed in ``problems`` with the service it may concern)."""
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with its newline
    out = ParsedJournal({}, {}, [], set())
    bad: list[bytes] = []
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            rec = statefile.loads(raw)
            _apply_checked(out.plans, rec)
        except Invalid as exc:
            out.problems.append(f"line {n}: {exc}")
            bad.append(raw)
            continue
        out.lines.setdefault(rec["id"], []).append(raw)
    # A bad line concerns the service of the plan it names, if that plan's
    # own record is sound; anything else may concern any service.
    for raw in bad:
        i = _ID.search(raw)
        plan = out.plans.get(i.group(1).decode("utf-8", "replace")) if i else None
        if plan is None or out.affected is None:
            out.affected = None
            break
        out.affected.add(plan.service)
    if torn.strip():
        try:
            rec = statefile.loads(torn)
            _apply_checked(out.plans, rec)
        except Invalid:
            pass  # a torn last line: the crash came mid-write
        else:
            out.lines.setdefault(rec["id"], []).append(torn)
    return out


def _apply_checked(plans: dict[str, PlanRecord], rec: Any, *, fresh: bool = False) -> None:
    """Validate one record against the schema and apply it; ``Invalid`` says
    what is wrong. ``fresh``: check the record alone (no plan to refer to)."""
    if not isinstance(rec, dict):
        raise Invalid("not a JSON object")
    t = rec.get("t")
    if t not in TYPES:
        raise Invalid("not a known record type")
    pid = statefile.text_field(rec, "id", 64)
    assert pid is not None
    if not pid:
        raise Invalid("'id' is empty")
    at = statefile.number_field(rec, "at")
    text = statefile.text_field
    if t == "plan":
        service = text(rec, "service", 200)
        from_role, to_role = text(rec, "from", 16), text(rec, "to", 16)
        if from_role not in ROLES or to_role not in ROLES or from_role == to_role:
            raise Invalid("'from' and 'to' are not primary and backup")
        standby = text(rec, "standby_state", 64, required=False)
        kind = text(rec, "kind", 16, required=False) or "failover"
        if kind not in PLAN_KINDS:
            raise Invalid("'kind' is not failover, readiness or prewarm")
        if "pid" in rec and not (isinstance(rec["pid"], int) and not isinstance(rec["pid"], bool)):
            raise Invalid("'pid' is not an integer")
        record = PlanRecord(
            id=pid,
            service=service or "",
            from_role=from_role or "",
            to_role=to_role or "",
            reason=text(rec, "reason", TEXT_MAX, required=False) or "",
            requested_by=text(rec, "by", 1000, required=False) or "daemon",
            started_at=at,
            standby_state=standby,
            kind=kind,
        )
        if not record.service:
            raise Invalid("'service' is empty")
        if pid in plans:
            raise Invalid(f"plan {pid} begins twice")
        plans[pid] = record
        return
    plan = plans.get(pid)
    if plan is None and not fresh:
        raise Invalid(f"a record of plan {pid}, which the journal does not hold")
    if t in ("begin", "end"):
        name = text(rec, "step", 100)
        assert name is not None
        if t == "end":
            ok: bool = rec.get("ok")  # type: ignore[assignment]
            if not isinstance(ok, bool):
                raise Invalid("'ok' is not true or false")
            seconds = statefile.number_field(rec, "seconds")
            detail = text(rec, "detail", TEXT_MAX, required=False) or ""
            data = rec.get("data", {})
            if not isinstance(data, dict):
                raise Invalid("'data' is not an object")
        if plan is None:
            return
        s = plan.step(name)
        s.begun = True
        s.ended = t == "end"
        if t == "end":
            s.ok, s.seconds, s.detail, s.data = ok, seconds, detail, data
    elif t == "rollback":
        reason = text(rec, "reason", TEXT_MAX, required=False) or ""
        if plan is not None:
            plan.rollback = reason
    elif t == "result":
        result = text(rec, "result", 16)
        if result not in RESULTS:
            raise Invalid("'result' is not a known outcome")
        detail = text(rec, "detail", TEXT_MAX, required=False) or ""
        if plan is not None:
            plan.result = (result, detail)
    elif plan is not None:  # done
        plan.done = True


# --------------------------------------------------------------------------- writing
# One shape for every journal's records, the file's and the replicas' table's.


def new_plan(
    service: str,
    from_role: str,
    to_role: str,
    reason: str,
    requested_by: str,
    standby_state: str,
    kind: str = "failover",
) -> tuple[PlanRecord, dict[str, Any]]:
    """A plan that begins, and its ``plan`` record (``kind`` written only
    when not a failover, so that older readers read failovers unchanged)."""
    rec = PlanRecord(
        id=uuid.uuid4().hex,
        service=service,
        from_role=from_role,
        to_role=to_role,
        reason=reason,
        requested_by=requested_by,
        started_at=time.time(),
        standby_state=standby_state,
        kind=kind,
    )
    first = {
        **({} if kind == "failover" else {"kind": kind}),
        "t": "plan",
        "id": rec.id,
        "service": service,
        "from": from_role,
        "to": to_role,
        "reason": reason,
        "by": requested_by,
        "standby_state": standby_state,
        "at": rec.started_at,
        "pid": os.getpid(),
    }
    return rec, first


def begin_record(plan_id: str, step: str) -> dict[str, Any]:
    return {"t": "begin", "id": plan_id, "step": step, "at": time.time()}


def end_record(
    plan_id: str,
    step: str,
    ok: bool,
    seconds: float,
    detail: str,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "t": "end",
        "id": plan_id,
        "step": step,
        "ok": ok,
        "seconds": round(seconds, 6),
        "detail": detail,
        "at": time.time(),
    }
    if data:
        rec["data"] = data
    return rec


def rollback_record(plan_id: str, reason: str) -> dict[str, Any]:
    return {"t": "rollback", "id": plan_id, "reason": reason, "at": time.time()}


def result_record(plan_id: str, result: str, detail: str) -> dict[str, Any]:
    return {"t": "result", "id": plan_id, "result": result, "detail": detail, "at": time.time()}


def done_record(plan_id: str) -> dict[str, Any]:
    return {"t": "done", "id": plan_id, "at": time.time()}
