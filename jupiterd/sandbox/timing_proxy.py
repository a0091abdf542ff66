"""An HTTP proxy in front of moto that answers with AWS's timing
(``timing.TimingModel``): jupiterd, the sandbox's fleet and its front doors
use it as their AWS endpoint, and it forwards every call to moto, then

- EC2: notes StartInstances (a resume if the instance was hibernated) and
  StopInstances (``Hibernate=true``), and answers DescribeInstances with
  ``pending`` until the modelled boot is over;
- ELBv2: notes RegisterTargets and DeregisterTargets, and answers
  DescribeTargetHealth with ``initial`` (Elb.RegistrationInProgress) until
  the target passed its group's HealthCheckIntervalSeconds x
  HealthyThresholdCount of checks since it was registered and answering;
- Route 53: gives each ChangeResourceRecordSets its own change id, PENDING,
  and answers GetChange for it PENDING, then INSYNC after the modelled
  propagation.

Before ``TimingModel.arm()`` (while the sandbox seeds moto) it only forwards.
It never answers for a call it did not forward, except GetChange of its own
change ids; an error from moto passes through unchanged.
"""

from __future__ import annotations

import contextlib
import re
import threading
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .peers.http_proxy import ThreadedProxy, reply
from .timing import TimingModel

_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/([^/]+)/aws4_request")
_CHANGE = re.compile(r"/change/([A-Za-z0-9]+)$")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _ns(tag: str) -> str:
    return tag[: tag.index("}") + 1] if tag.startswith("{") else ""


def _child(node: ET.Element, name: str) -> ET.Element | None:
    for c in node:
        if _local(c.tag) == name:
            return c
    return None


def _serialize(root: ET.Element) -> bytes:
    ns = _ns(root.tag)[1:-1]
    try:
        text = ET.tostring(root, encoding="unicode", default_namespace=ns or None)
    except ValueError:
        text = ET.tostring(root, encoding="unicode")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + text).encode()


def _fields(path: str, headers: dict[str, str], body: bytes) -> dict[str, list[str]]:
    fields = parse_qs(urlsplit(path).query)
    if "x-www-form-urlencoded" in headers.get("content-type", ""):
        fields.update(parse_qs(body.decode("utf-8", "replace")))
    return fields


def _members(fields: dict[str, list[str]], prefix: str, suffix: str = "") -> list[str]:
    """Values of ``prefix.N`` (``prefix.member.N.suffix``) form fields."""
    pat = re.compile(re.escape(prefix) + r"\.(?:member\.)?\d+" + re.escape(suffix) + "$")
    return [v[0] for k, v in fields.items() if pat.match(k)]


class TimingProxy(ThreadedProxy):
    def __init__(self, upstream: str, model: TimingModel, *, host: str = "127.0.0.1") -> None:
        u = urlsplit(upstream)
        self.upstream_url = upstream
        self.upstream = (u.hostname or "127.0.0.1", u.port or 80)
        self.model = model
        self._health_checks: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, 0), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ upstream

    def _forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        return self.forward(method, path, headers, body)

    def health_check(self, arn: str, region: str) -> tuple[float, int]:
        """The target group's interval and healthy threshold, from moto."""
        with self._lock:
            if arn in self._health_checks:
                return self._health_checks[arn]
        from jupiterd.sandbox.seed import moto_client

        tg = moto_client(self.upstream_url, region, "elbv2").describe_target_groups(
            TargetGroupArns=[arn]
        )["TargetGroups"][0]
        got = (
            float(tg.get("HealthCheckIntervalSeconds", 30)),
            int(tg.get("HealthyThresholdCount", 5)),
        )
        with self._lock:
            self._health_checks[arn] = got
        return got

    # ------------------------------------------------------------ rewriting

    def after(
        self, service: str, region: str, action: str, fields: dict[str, list[str]], data: bytes
    ) -> bytes:
        """Note what a successful call did; the answer AWS would give now."""
        m = self.model
        if service == "ec2":
            if action == "StartInstances":
                root = ET.fromstring(data)
                for item in root.iter():
                    iid, prev = _child(item, "instanceId"), _child(item, "previousState")
                    name = _child(prev, "name") if prev is not None else None
                    if (
                        iid is not None
                        and name is not None
                        and name.text in ("stopped", "stopping")
                    ):
                        m.instance_started(iid.text or "")
            elif action == "StopInstances":
                hibernate = fields.get("Hibernate", ["false"])[0].lower() == "true"
                for stopped in _members(fields, "InstanceId"):
                    m.instance_stopped(stopped, hibernate=hibernate)
            elif action == "DescribeInstances":
                return self._describe_instances(data)
        elif service == "elasticloadbalancing":
            arn = fields.get("TargetGroupArn", [""])[0]
            if action == "RegisterTargets":
                for tid in _members(fields, "Targets", ".Id"):
                    m.target_registered(arn, tid)
            elif action == "DeregisterTargets":
                for tid in _members(fields, "Targets", ".Id"):
                    m.target_deregistered(arn, tid)
            elif action == "ModifyTargetGroup":
                with self._lock:
                    self._health_checks.pop(arn, None)
            elif action == "DescribeTargetHealth" and arn:
                return self._target_health(arn, region, data)
        elif service == "route53" and action == "ChangeResourceRecordSets":
            root = ET.fromstring(data)
            for info in root.iter():
                if _local(info.tag) != "ChangeInfo":
                    continue
                cid, status = _child(info, "Id"), _child(info, "Status")
                if cid is not None and status is not None:
                    cid.text = f"/change/{m.change_submitted()}"
                    status.text = "PENDING"
            return _serialize(root)
        return data

    def _describe_instances(self, data: bytes) -> bytes:
        root = ET.fromstring(data)
        changed = False
        for item in root.iter():
            iid, state = _child(item, "instanceId"), _child(item, "instanceState")
            if iid is None or state is None or not self.model.pending(iid.text or ""):
                continue
            code, name = _child(state, "code"), _child(state, "name")
            if name is not None and name.text == "running":
                name.text = "pending"
                if code is not None:
                    code.text = "0"
                changed = True
        return _serialize(root) if changed else data

    def _target_health(self, arn: str, region: str, data: bytes) -> bytes:
        root = ET.fromstring(data)
        changed = False
        for member in root.iter():
            target, health = _child(member, "Target"), _child(member, "TargetHealth")
            if target is None or health is None:
                continue
            tid = _child(target, "Id")
            state = _child(health, "State")
            if tid is None or state is None or state.text != "healthy":
                continue
            interval, threshold = self.health_check(arn, region)
            if not self.model.target_initial(arn, tid.text or "", interval, threshold):
                continue
            state.text = "initial"
            ns = _ns(health.tag)
            for name, text in (
                ("Reason", "Elb.RegistrationInProgress"),
                ("Description", "Target registration is in progress"),
            ):
                node = _child(health, name)
                if node is None:
                    node = ET.SubElement(health, ns + name)
                node.text = text
            changed = True
        return _serialize(root) if changed else data

    def own_change(self, service: str, method: str, path: str) -> bytes | None:
        """GetChange of a change id this proxy gave out: answered here."""
        if service != "route53" or method != "GET":
            return None
        m = _CHANGE.search(path.split("?", 1)[0].rstrip("/"))
        status = self.model.change_status(m.group(1)) if m else None
        if m is None or status is None:
            return None
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<GetChangeResponse xmlns="https://route53.amazonaws.com/doc/2013-04-01/">'
            f"<ChangeInfo><Id>/change/{m.group(1)}</Id><Status>{status}</Status>"
            "<SubmittedAt>2020-01-01T00:00:00Z</SubmittedAt></ChangeInfo></GetChangeResponse>"
        ).encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in separate writes

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _send(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
                reply(self, status, headers, data)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                scope = _SCOPE.search(headers.get("authorization", ""))
                region, service = scope.groups() if scope else ("us-east-1", "unknown")
                armed = proxy.model.armed
                own = proxy.own_change(service, self.command, self.path) if armed else None
                if own is not None:
                    self._send(200, [("Content-Type", "text/xml")], own)
                    return
                try:
                    status, resp_headers, data = proxy._forward(
                        self.command, self.path, dict(self.headers.items()), body
                    )
                except OSError as exc:
                    self._send(502, [("Content-Type", "text/plain")], str(exc).encode())
                    return
                if armed and status == 200 and data:
                    fields = _fields(self.path, headers, body)
                    action = _action(service, self.command, self.path, fields)
                    with contextlib.suppress(ET.ParseError):  # not XML: as moto gave it
                        data = proxy.after(service, region, action, fields, data)
                self._send(status, resp_headers, data)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

        return Handler


def _action(service: str, method: str, path: str, fields: dict[str, Any]) -> str:
    if service == "route53":
        p = path.split("?", 1)[0].rstrip("/")
        if re.search(r"/hostedzone/[^/]+/rrset$", p) and method == "POST":
            return "ChangeResourceRecordSets"
        return "GetChange" if "/change/" in p else ""
    values = fields.get("Action")
    return str(values[0]) if values else ""
