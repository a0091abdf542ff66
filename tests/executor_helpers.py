"""Helpers for the executor's tests."""

from __future__ import annotations

from collections.abc import Iterable

from jupiterd.aws.inventory import AwsInventory
from jupiterd.config import Config
from jupiterd.core.plan import STOPPED_STATES, attachment_states


async def check_invariant(
    inventory: AwsInventory, config: Config, services: Iterable[str] | None = None
) -> list[str]:
    """What breaks jupiterd's promise, one sentence each (empty: it holds):
    every attachment has at least one running, healthy instance behind it,
    and the two instances of a service are not both stopped."""
    problems: list[str] = []
    facts = await inventory.facts(services)
    for name, f in facts.items():
        if f.primary.state in STOPPED_STATES and f.backup.state in STOPPED_STATES:
            problems.append(f"{name}: both instances are stopped")
        for a in attachment_states(config, name, f):
            if not a.healthy:
                problems.append(
                    f"{name}: {a.kind} {a.name} has no healthy instance behind it ({a.detail})"
                )
    return problems
