"""A ``Discovery`` written as a commented jupiterd configuration (pure).

Every decision carries a comment saying where it came from; what was not
decided is listed at the top and again at its place, with ``TODO``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from jupiterd.core.discover import (
    SECRETS,
    TB_USER,
    Attached,
    Discovery,
    Instance,
    Note,
    Pool,
    Probe,
    Service,
)

_PLAIN = re.compile(r"^[A-Za-z0-9/][A-Za-z0-9._/@:+-]*$")
_WORDS = frozenset({"true", "false", "null", "yes", "no", "on", "off", "y", "n", "~"})


def scalar(value: object) -> str:
    """A YAML scalar: plain where that reads back as the same string."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _WORDS and not _numeric(text):
        return text
    return json.dumps(text)


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _comment(text: str, indent: str) -> list[str]:
    return [f"{indent}# {line}".rstrip() for line in text.splitlines()]


def _notes_for(d: Discovery, where: Iterable[str]) -> list[Note]:
    keys = set(where)
    return [n for n in d.notes if n.where in keys]


def render(d: Discovery, command: str) -> str:
    out: list[str] = [
        f"# jupiterd configuration discovered by `{command}`",
        f"# (instances tagged Project={d.project} in {d.region}).",
        "# Review it, set the environment variables named below, then validate it:",
        "#   jupiterd check-config FILE",
    ]
    if d.notes:
        out.append("#")
        out.append("# Not decided or still to do (also at its place below):")
        for n in d.notes:
            out += _comment(f"- {n.where}: {n.text}", "")
    out += ["", "aws:", f"  region: {scalar(d.region)}"]
    if d.endpoint_url:
        out.append("  # The endpoint discover read from; remove it to use AWS's own.")
        out.append(f"  endpoint_url: {scalar(d.endpoint_url)}")
    out += [
        "",
        "# Instances without an instance_id are found by this tag.",
        f"project_tag: {scalar(d.project)}",
        "",
    ]
    if d.topic:
        out.append("# The topic whose name contains the project.")
        out.append(f"sns_topic_arn: {scalar(d.topic)}")
    else:
        out += _comment("TODO: " + "; ".join(n.text for n in _notes_for(d, ["sns_topic_arn"])), "")
        out.append("sns_topic_arn: null")
    if d.services:
        out += ["", "services:"]
        for s in d.services:
            out += _service(d, s)
    if d.pools:
        out += ["", "# Several active instances sharing one standby.", "pools:"]
        for p in d.pools:
            out += _pool(d, p)
    left = [
        n
        for n in d.notes
        if n.where
        not in {s.name for s in d.services}
        | {p.name for p in d.pools}
        | {m.name for p in d.pools for m in p.members}
        | {"sns_topic_arn"}
    ]
    if left:
        out += ["", "# Left out:"]
        for n in left:
            out += _comment(f"{n.where}: {n.text}", "")
    return "\n".join(out) + "\n"


def _service(d: Discovery, s: Service) -> list[str]:
    out = [f"  {s.name}:"]
    for n in _notes_for(d, [s.name]):
        out += _comment(("" if n.text.startswith("TODO") else "TODO: ") + n.text, "    ")
    out += _probe(s.probe, "    ")
    out += _instance("primary", s.primary, "    ")
    out += _instance("backup", s.backup, "    ")
    out += _attachments(s.attachments, "    ")
    return out


def _pool(d: Discovery, p: Pool) -> list[str]:
    out = [f"  {p.name}:"]
    for n in _notes_for(d, [p.name, *(m.name for m in p.members)]):
        out += _comment(
            f"{n.where}: " + ("" if n.text.startswith("TODO") else "TODO: ") + n.text, "    "
        )
    out += _probe(p.probe, "    ")
    out.append("    members:")
    for m in p.members:
        out.append(f"      {m.name}:")
        out += _comment(_where(m.instance), "        ")
        out.append(f"        instance_id: {m.instance.instance_id}")
        if m.instance.private_ip:
            out.append(f"        address: {scalar(m.instance.private_ip)}")
        out += _attachments(m.attachments, "        ")
    out += _comment(f"The shared standby: {_where(p.standby)}.", "    ")
    out.append("    standby:")
    out.append(f"      instance_id: {p.standby.instance_id}")
    if p.standby.private_ip:
        out.append(f"      address: {scalar(p.standby.private_ip)}")
    return out


def _probe(p: Probe, ind: str) -> list[str]:
    head = f"kind from {p.why}" if p.decided else f"TODO: kind not decided ({p.why})"
    out = [f"{ind}probe:  # {head}", f"{ind}  kind: {p.kind}"]
    if p.port is not None:
        out.append(f"{ind}  port: {p.port}")
    opts: list[str] = []
    if p.kind == "thingsboard":
        opts.append(f"{ind}    username: {scalar(TB_USER)}  # TODO: the probe user's name")
    for option, env, what in SECRETS.get(p.kind, ()):
        opts.append(f"{ind}    {option}: {{env: {env}}}  # TODO: {what}, from the environment")
    if p.kind == "frp":
        opts.append(f"{ind}    # tls: true  # TODO: if frps requires TLS")
    if opts:
        out.append(f"{ind}  options:")
        out += opts
    return out


def _where(i: Instance) -> str:
    name = f"{i.name}, " if i.name else ""
    return f"{name}{i.az}, {i.state}"


def _instance(role: str, i: Instance, ind: str) -> list[str]:
    out = [f"{ind}{role}:  # {_where(i)}", f"{ind}  instance_id: {i.instance_id}"]
    if i.private_ip:
        out.append(f"{ind}  address: {scalar(i.private_ip)}")
    return out


def _attachments(a: Attached, ind: str) -> list[str]:
    if not a:
        return [f"{ind}attachments: {{}}  # TODO: none found"]
    out = [f"{ind}attachments:"]
    if a.target_groups:
        out.append(f"{ind}  target_groups:")
        for arn, port in a.target_groups:
            if port is None:
                out.append(f"{ind}    - {scalar(arn)}")
            else:
                out.append(f"{ind}    - {{arn: {scalar(arn)}, port: {port}}}")
    if a.elastic_ip:
        out.append(f"{ind}  elastic_ip: {scalar(a.elastic_ip)}")
    if a.route53:
        out.append(f"{ind}  route53:")
        for zone, name, rtype, address in a.route53:
            out.append(f"{ind}    - zone_id: {scalar(zone)}")
            out.append(f"{ind}      name: {scalar(name)}")
            out.append(f"{ind}      type: {rtype}")
            out.append(f"{ind}      address: {address}")
    if a.route_tables:
        out.append(f"{ind}  route_tables:  # their 0.0.0.0/0 route goes through it")
        out += [f"{ind}    - {scalar(rt)}" for rt in a.route_tables]
    return out
