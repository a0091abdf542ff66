"""What a plan's preflight says about the standby's recovery time without
stopping the plan: hibernation the configuration asks for and the instance
cannot do, and the time the load balancer's health checks add."""

from __future__ import annotations

from jupiterd.config import Config
from jupiterd.core.plan.facts import GONE_STATES, ServiceFacts, _unique_tgs

# What an instance needs to hibernate (EC2 User Guide, hibernation
# prerequisites), said wherever jupiterd finds it cannot.
HIBERNATE_HOWTO = (
    "enable hibernation at launch (it cannot be turned on for an existing instance: "
    "launch a replacement with HibernationOptions Configured=true); the root volume "
    "must be an encrypted EBS volume large enough for the instance's RAM"
)


def preflight_warnings(config: Config, service: str, facts: ServiceFacts) -> list[str]:
    """Sentences on what will not work as configured, though the plan may
    run: the backup (the standby ``standby_stop`` applies to) not launched
    with hibernation configured, or fallback types it cannot use."""
    svc = config.services[service]
    backup = facts.backup
    out: list[str] = []
    if (
        svc.standby_stop != "hibernate"
        or not backup.instance_id
        or backup.state in GONE_STATES
        or backup.problem
    ):
        return out
    if backup.hibernation_configured is False:
        out.append(
            f"standby_stop is hibernate, but {backup.describe()} was not launched with "
            f"hibernation configured: it is stopped without it; {HIBERNATE_HOWTO}"
        )
    elif backup.hibernation_configured and svc.fallback_instance_types:
        out.append(
            f"fallback_instance_types do not apply while {backup.describe()} is hibernated: "
            "a hibernated instance's type cannot change"
        )
    return out


def health_check_note(config: Config, service: str, facts: ServiceFacts) -> str | None:
    """How long each target group's health checks keep a new target from
    traffic once it serves (interval x healthy threshold), and whether they
    overlap the standby's start (``register_early``); None without target
    groups that check health."""
    svc = config.services[service]
    parts = []
    for name, arn, _port in _unique_tgs(svc.attachments.target_groups):
        tg = facts.target_group(arn)
        secs = tg.health_check_seconds if tg is not None else None
        if tg is not None and secs is not None:
            parts.append(
                f"{name} {tg.health_check_interval}s x {tg.healthy_threshold} = up to {secs}s"
            )
    if not parts:
        return None
    when = (
        "registered as soon as the standby runs, they overlap its application's start"
        if svc.register_early
        else "register_early is off: they begin after jupiterd's own probes pass"
    )
    checks = ", ".join(parts)
    return f"load balancer health checks before a new target takes traffic: {checks} ({when})"
