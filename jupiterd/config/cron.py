"""Drill schedules: crontab expressions in UTC, weekday names and numbers as
crontab means them."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from apscheduler.triggers.cron import CronTrigger


# --------------------------------------------------------------------------- drill schedules
# crontab's weekday numbers (0 and 7 = Sunday), UTC.

_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _day(text: str) -> int:
    t = text.strip().lower()
    if t[:3] in _DAYS and not t.isdigit():
        return _DAYS.index(t[:3])
    n = int(t)
    if not 0 <= n <= 7:
        raise ValueError(f"day of week {text} is not 0-7")
    return n


def _crontab_days(field: str) -> str:
    """A crontab day-of-week field (0 or 7 = Sunday) as day names.
    APScheduler 3's ``from_crontab`` reads numbers with 0 = Monday (its
    issue 286), so ``1`` would fire on Tuesdays; names mean the same to both."""
    if field == "*":
        return "*"
    days: set[int] = set()
    for part in field.split(","):
        rng, _, step = part.partition("/")
        every = int(step) if step else 1
        if rng == "*":
            lo, hi = 0, 6
        elif "-" in rng:
            a, b = rng.split("-", 1)
            lo, hi = _day(a), _day(b)
            if hi < lo:
                raise ValueError(f"day-of-week range {rng} runs backwards")
        else:
            lo = _day(rng)
            hi = 6 if step else lo
        days.update(d % 7 for d in range(lo, hi + 1, every))
    return ",".join(_DAYS[d] for d in sorted(days))


def cron_trigger(expr: str) -> CronTrigger:
    """A crontab expression (five fields, UTC) with crontab's weekday numbers."""
    from datetime import UTC

    from apscheduler.triggers.cron import CronTrigger

    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"'{expr}' has {len(fields)} fields, a crontab line has 5")
    fields[4] = _crontab_days(fields[4])
    return CronTrigger.from_crontab(" ".join(fields), timezone=UTC)
