"""Types every part of jupiterd shares: an instance's role in its service,
a target's health status and EC2's instance states."""

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


class InstanceState(StrEnum):
    """EC2's instance state names (``State.Name``), the one spelling of them.
    AWS answers plain strings, which compare equal to these."""

    PENDING = "pending"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    SHUTTING_DOWN = "shutting-down"
    TERMINATED = "terminated"


# Not running, and not on its way to it.
STOPPED_STATES = frozenset({InstanceState.STOPPED, InstanceState.STOPPING})
# Gone for good: the instance never runs again.
TERMINATED_STATES = frozenset({InstanceState.SHUTTING_DOWN, InstanceState.TERMINATED})
