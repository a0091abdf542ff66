"""What the daemon knows of the EC2 side: instances, addresses, running
state, maintenance tags, and which instance carries the traffic.

``Inventory.snapshot()`` is read at start and refreshed periodically; its
answers become machine events. ``StaticInventory`` serves configurations
that give every address (and tests); the AWS inventory reads EC2, ELB,
Route 53 and the route tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from jupiterd.config import Config
from jupiterd.core.types import InstanceState, Role

InstanceStateName = str  # EC2's state name: an InstanceState, as AWS answers it


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    instance_id: str | None
    address: str | None  # what the probes target (the private IP unless configured)
    state: InstanceStateName = InstanceState.RUNNING
    maintenance: bool = False

    @property
    def running(self) -> bool:
        return self.state == InstanceState.RUNNING


@dataclass(frozen=True, slots=True)
class ServiceView:
    primary: InstanceInfo
    backup: InstanceInfo
    active: Role | None = None  # None: AWS does not say (no attachments) or it is split
    notes: tuple[str, ...] = field(default=())  # e.g. "target group X has both instances"

    def instance(self, role: Role) -> InstanceInfo:
        return self.primary if role is Role.PRIMARY else self.backup


class Inventory(Protocol):
    async def snapshot(self) -> Mapping[str, ServiceView]: ...


class StaticInventory:
    """Addresses from the configuration; states as given (default: primary
    running, backup stopped, as in a pilot-light layout)."""

    def __init__(
        self, config: Config, states: Mapping[tuple[str, Role], str] | None = None
    ) -> None:
        self.config = config
        self.states: dict[tuple[str, Role], str] = dict(states or {})

    def set_state(self, service: str, role: Role, state: str) -> None:
        self.states[(service, role)] = state

    async def snapshot(self) -> Mapping[str, ServiceView]:
        out = {}
        for name, svc in self.config.services.items():
            infos = {}
            for role, ref in ((Role.PRIMARY, svc.primary), (Role.BACKUP, svc.backup)):
                default = InstanceState.RUNNING if role is Role.PRIMARY else InstanceState.STOPPED
                state = self.states.get((name, role), default)
                infos[role] = InstanceInfo(ref.instance_id, ref.address, state)
            out[name] = ServiceView(infos[Role.PRIMARY], infos[Role.BACKUP])
        return out
