"""Types every part of jupiterd shares: an instance's role in its service
and a target's health status."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    PRIMARY = "primary"
    BACKUP = "backup"

    @property
    def other(self) -> Role:
        return Role.BACKUP if self is Role.PRIMARY else Role.PRIMARY


class Status(StrEnum):
    UNKNOWN = "unknown"  # not yet enough probes to say
    UP = "up"
    SUSPECT = "suspect"  # failing, not yet `fall` times / `min_down` long
    DOWN = "down"
    RECOVERING = "recovering"  # down, passing probes, not yet `rise` of them
    STOPPED = "stopped"  # the instance is not running: not probed

    @property
    def failing(self) -> bool:
        return self in (Status.SUSPECT, Status.DOWN, Status.RECOVERING)
