"""Configuration of a service's standby: readiness drills, pre-warm,
hibernation, capacity fallback (flat keys of a service or a pool)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from jupiterd.config.cron import cron_trigger
from jupiterd.config.values import Model, PositiveSeconds
from probes.options import quote

_INSTANCE_TYPE = re.compile(r"[a-z][a-z0-9-]*\d[a-z0-9-]*\.[a-z0-9-]+")


class ReadinessConfig(Model):
    """A live readiness drill: start the stopped standby, probe it until it
    passes ``rise`` probes, record how long that took, stop it again.
    Traffic and attachments are never touched."""

    schedule: str | None = None  # crontab, five fields, UTC; None: only on demand
    # Alert when the standby was not verified within this long.
    max_age: PositiveSeconds = 8 * 86400.0

    @field_validator("schedule")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            cron_trigger(v)
        except ValueError as exc:
            why = quote(str(exc), 60)[1:-1]
            raise ValueError(f"{quote(v)} is not a crontab expression: {why}") from None
        return v


class StandbyFields(Model):
    """A service's (or pool's) standby settings, flat in its section."""

    # Live readiness drills of the standby; None: never scheduled (still
    # `jupiterd drill-standby SERVICE` on demand, with the default max_age).
    readiness: ReadinessConfig | None = None
    # Start the standby as soon as the active first fails (SUSPECT), so its
    # boot overlaps the confirmation; stopped again `prewarm_hold` after the
    # active recovers. At most `prewarm_max_per_hour` pre-warms an hour.
    prewarm: bool = False
    prewarm_hold: PositiveSeconds = 300.0
    prewarm_max_per_hour: int = Field(default=4, ge=0, le=60)
    # How jupiterd stops the standby after a readiness drill, a pre-warm or
    # a failback: stop, or hibernate (where the instance supports it).
    standby_stop: Literal["stop", "hibernate"] = "stop"
    # When StartInstances fails with InsufficientInstanceCapacity past
    # retries, change the stopped standby to each of these types in turn.
    fallback_instance_types: list[str] = []
    # Register the standby in its target groups as soon as it is starting,
    # so the load balancer's health checks run during its boot.
    register_early: bool = True

    @field_validator("fallback_instance_types")
    @classmethod
    def _types(cls, v: list[str]) -> list[str]:
        for t in v:
            if not _INSTANCE_TYPE.fullmatch(t):
                raise ValueError(f"{quote(t)} is not an EC2 instance type (like m6i.large)")
        if len(set(v)) != len(v):
            raise ValueError("an instance type is listed twice")
        return v
