"""The notification step: publish the plan's summary to the SNS topic."""

from __future__ import annotations

import json
import socket
from typing import Any

from jupiterd.aws.executor.changes import StepAws
from jupiterd.aws.executor.context import StepContext
from jupiterd.aws.executor.run import _Run, _Verdict
from jupiterd.core.plan import Step


def summary(run: _Run, verdict: _Verdict) -> tuple[str, str]:
    """The notification's subject and JSON body."""
    req = run.request
    total = run.elapsed()
    subject = f"jupiterd: {req.service} {req.direction} {verdict.result} in {total:.1f}s"
    body = {
        "service": req.service,
        "direction": req.direction,
        "from": str(req.from_role),
        "to": str(req.to_role),
        "result": verdict.result,
        "detail": verdict.detail,
        "notes": list(dict.fromkeys(run.notes)),
        "reason": req.reason,
        "requested_by": run.record.requested_by if run.record else req.requested_by,
        "resumed": run.resumed,
        "plan_id": run.plan_id,
        "host": socket.gethostname(),
        "total_seconds": round(total, 3),
        "steps": [
            {"name": r.name, "ok": r.ok, "seconds": round(r.seconds, 3), "detail": r.detail}
            for r in run.reports
        ],
        "timeline": timeline(run),
    }
    return subject[:100], json.dumps(body, indent=2)


def timeline(run: _Run) -> list[str]:
    """One line per step, when it began and ended in the plan: ``+0.4s
    reroute_peer:rtb-1 ok at +0.5s (pointed ...)``. A NAT pool's plan
    shows there when outbound traffic came back, before the standby ran."""
    out = []
    for r in run.reports:
        at = run.began.get(r.name)
        start = f"+{at:.1f}s" if at is not None else "-"
        end = f"+{at + r.seconds:.1f}s" if at is not None else f"{r.seconds:.1f}s"
        out.append(f"{start} {r.name} {'ok' if r.ok else 'FAILED'} at {end}: {r.detail}")
    return out


async def publish(
    aws: StepAws, run: _Run, topic: str, verdict: _Verdict, *, would: str | None = None
) -> None:
    subject, message = summary(run, verdict)
    await aws._mutate(
        run,
        "sns",
        "Publish",
        topic,
        would=would,
        TopicArn=topic,
        Subject=subject,
        Message=message,
    )


async def notify(ctx: StepContext, run: _Run, step: Step) -> tuple[str, dict[str, Any]]:
    """Publishes ``run.verdict``, which the runner sets before this step."""
    topic = step.params["topic_arn"]
    verdict = run.verdict or _Verdict("success", "")
    await publish(ctx.aws, run, topic, verdict, would=f"would publish the summary to {topic}")
    return f"published the summary to {topic}", {}
