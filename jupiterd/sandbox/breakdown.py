"""A drill's recovery time split into the parts of its critical path, from
the phase's marks (seconds since the primary was broken):

- detect: the failure until jupiterd decides to fail over;
- boot: the decision until the standby is ``running`` (the end of the
  plan's ``start_standby`` step): all of EC2's boot for a stopped standby,
  what is left of it for one started earlier (pre-warm), none for one
  already running;
- app healthy: ``running`` until the standby passed ``rise`` probes of its
  own service (the end of ``standby_healthy``): the OS boot and the
  application's start, or a resume's RAM restore;
- attach: the traffic steps (target groups healthy, Elastic IP, Route 53
  INSYNC, the old targets deregistered) until the front door serves from
  the standby;
- total: the failure until traffic is restored; the sum of the four.

A part whose marks are missing (a plan that failed, a phase without a
standby start) is None, and so is the total then.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PARTS = ("detect", "boot", "app_healthy", "attach")
LABELS = {"detect": "detect", "boot": "boot", "app_healthy": "app healthy", "attach": "attach"}


def breakdown(marks: Mapping[str, float]) -> dict[str, float | None]:
    points = [
        0.0,
        marks.get("decision"),
        marks.get("step:start_standby"),
        marks.get("step:standby_healthy"),
        marks.get("restored"),
    ]
    out: dict[str, float | None] = {}
    for i, part in enumerate(PARTS):
        a, b = points[i], points[i + 1]
        out[part] = round(max(0.0, b - a), 3) if a is not None and b is not None else None
    parts = [out[p] for p in PARTS]
    out["total"] = round(sum(p for p in parts if p is not None), 3) if None not in parts else None
    return out


def at_aws_pace(
    b: Mapping[str, float | None], waits: Mapping[str, tuple[float, float]]
) -> dict[str, float | None]:
    """The breakdown as it would be on AWS: in each part, the time the
    timing model made the drill wait (``waits[part][0]``, scaled) is
    replaced by what it would have been on AWS (``waits[part][1]``: the real
    delay less what had already passed, in real seconds, before the part
    began); the rest of the part (jupiterd's detection and polling, the
    sandbox's own process starts) is kept as measured."""
    out: dict[str, float | None] = {}
    for part in PARTS:
        v = b.get(part)
        scaled, real = waits.get(part, (0.0, 0.0))
        scaled = min(max(scaled, 0.0), v or 0.0)
        out[part] = None if v is None else round(v - scaled + max(real, 0.0), 1)
    parts = [out[p] for p in PARTS]
    out["total"] = round(sum(p for p in parts if p is not None), 1) if None not in parts else None
    return out


def render(b: Mapping[str, Any], pace: Mapping[str, Any] | None, scale: float) -> list[str]:
    """Lines for the text report; ``pace``: the breakdown at AWS's pace."""

    def fmt(v: float | None) -> str:
        return "?" if v is None else f"{v:.2f}s"

    line = " + ".join(f"{LABELS[p]} {fmt(b.get(p))}" for p in PARTS)
    lines = [f"  recovery: {line} = total {fmt(b.get('total'))}"]
    if pace and scale != 1.0:
        line = " + ".join(f"{LABELS[p]} {fmt(pace.get(p))}" for p in PARTS)
        lines.append(
            f"  at AWS's pace (the modelled waits / scale {scale:g}): {line} = total "
            f"{fmt(pace.get('total'))}"
        )
    return lines
