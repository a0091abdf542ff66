"""An HTTP proxy in front of an AWS endpoint (moto) that injects faults.

The AWS SDK talks to the proxy as its endpoint (``endpoint_url``); the proxy
forwards each request to moto, except that it can, deterministically from a
seed, answer a share of the calls itself with

- throttling, shaped as each protocol's real error: EC2 (query API, XML
  ``<Response><Errors><Error>``) ``RequestLimitExceeded`` with HTTP 503;
  ELBv2 and SNS (query API, ``<ErrorResponse>``) ``Throttling`` with 400;
  Route 53 (REST XML) ``Throttling`` or ``PriorRequestNotComplete`` with 400;
- server errors: HTTP 500 ``InternalError`` / 503 ``ServiceUnavailable``;
- access denied for chosen IAM actions (EC2 ``UnauthorizedOperation`` 403,
  the others ``AccessDenied`` 403, SNS ``AuthorizationError`` 403);
- no answer at all while ``unreachable`` is set: each call's connection is
  closed unanswered (an AWS outage, as the SDK sees it); or only for the
  services in ``unreachable_services`` (e.g. ``{"dynamodb"}``: DynamoDB
  down, EC2 and the rest answering). A call's service is its SigV4
  credential scope's (``.../dynamodb/aws4_request``), its action the
  ``X-Amz-Target`` header's (``DynamoDB_20120810.PutItem``) or the query's.

The error shapes follow botocore's parsers for the ``ec2``, ``query`` and
``rest-xml`` protocols (botocore/parsers.py: EC2QueryParser,
QueryParser, RestXMLParser) and the codes botocore's standard retry mode
treats as throttling or transient (botocore/retries/standard.py). A fault
is answered without forwarding, so the faulted call had no effect.

A test can also script the answer to chosen calls: ``proxy.fail(action,
code, status, message, times=N)`` answers the next N calls of ``action``
(``"ec2:StartInstances"``) with that error, and ``proxy.hooks[action]`` is a
function of the call's form fields returning such an error (or None to
forward the call), for answers that depend on what was asked or changed
before (EC2's InsufficientInstanceCapacity, a 500, for one instance type
only). The form fields of every forwarded query-protocol call are kept in
``proxy.calls`` (action, fields), which is how a test proves what a call
carried when moto ignores a parameter.

It can also add a fixed latency to every forwarded call (the executor
benchmark), or to chosen actions only (``action_latency``: slow one step
down), and counts forwarded calls per ``service:Action``, which is how
the tests prove a step's side effect was not repeated. ``repeated()``
lists the mutating calls forwarded more than once with the very same
request (the same action on the same resources with the same arguments):
a side effect done twice.

It is the sandbox's AWS front too (``jupiterd sandbox --replicas N``: one
proxy per replica, in the sandbox's process).

As a script: ``python -m jupiterd.sandbox.peers.fault_proxy --upstream URL [--port N]
[--throttle 0.2] [--errors 0.1] [--latency 0.05] [--seed 1]`` prints
``ready HOST:PORT``; ``GET /__proxy__/stats`` returns the counts and the
log of forwarded calls (monotonic start, action, seconds) as JSON,
``POST /__proxy__/reset`` clears them, and ``POST
/__proxy__/unreachable/SERVICE/on`` (or ``off``; ``all`` for every
service) cuts a service off or back.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from .http_proxy import ThreadedProxy, reply

_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([^/]+)/aws4_request")
# A scripted error: (code, HTTP status, message).
Fault = tuple[str, int, str]
Hook = Callable[[dict[str, str]], Fault | None]

# Calls never faulted: what the tests themselves use to read results.
DEFAULT_SPARED = frozenset({"sqs", "sts"})
# Actions that change nothing (the rest are side effects).
_READ_PREFIXES = ("Describe", "Get", "List", "Query", "Scan", "BatchGet")


def mutating(action: str) -> bool:
    """Whether an API action has a side effect (by AWS's naming)."""
    return not action.startswith(_READ_PREFIXES)


def _route53_action(method: str, path: str) -> str:
    p = path.split("?", 1)[0].rstrip("/")
    if re.search(r"/hostedzone/[^/]+/rrset$", p):
        return "ChangeResourceRecordSets" if method == "POST" else "ListResourceRecordSets"
    if "/change/" in p:
        return "GetChange"
    if p.endswith("/hostedzone"):
        return "CreateHostedZone" if method == "POST" else "ListHostedZones"
    if re.search(r"/hostedzone/[^/]+$", p):
        return {"DELETE": "DeleteHostedZone"}.get(method, "GetHostedZone")
    return f"{method} {p}"


def classify(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[str, str]:
    """(IAM service prefix, API action) of a signed AWS request."""
    m = _SCOPE.search(headers.get("authorization", ""))
    service = m.group(1) if m else "unknown"
    target = headers.get("x-amz-target")
    if target:
        return service, target.rsplit(".", 1)[-1]
    if service == "route53":
        return service, _route53_action(method, path)
    action = form_fields(path, headers, body).get("Action", "?")
    return service, action


def form_fields(path: str, headers: dict[str, str], body: bytes) -> dict[str, str]:
    """A query-protocol call's parameters (``InstanceIds.1``, ``Hibernate``...)."""
    fields = parse_qs(urlsplit(path).query)
    if "x-www-form-urlencoded" in headers.get("content-type", ""):
        fields.update(parse_qs(body.decode("utf-8", "replace")))
    return {k: v[0] for k, v in fields.items()}


def _request_id() -> str:
    return str(uuid.uuid4())


def error_response(service: str, code: str, status: int, message: str) -> tuple[int, bytes, str]:
    """An error body the SDK parses as ``code`` for this service's protocol."""
    rid = _request_id()
    if service == "ec2":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message>"
            f"</Error></Errors><RequestID>{rid}</RequestID></Response>"
        )
        return status, body.encode(), "text/xml;charset=UTF-8"
    ns = {
        "route53": "https://route53.amazonaws.com/doc/2013-04-01/",
        "sns": "http://sns.amazonaws.com/doc/2010-03-31/",
        "elasticloadbalancing": "http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/",
    }.get(service, "")
    kind = "Receiver" if status >= 500 else "Sender"
    body = (
        f'<?xml version="1.0"?>\n<ErrorResponse xmlns="{ns}"><Error><Type>{kind}</Type>'
        f"<Code>{code}</Code><Message>{message}</Message></Error>"
        f"<RequestId>{rid}</RequestId></ErrorResponse>"
    )
    return status, body.encode(), "text/xml"


def throttle_response(service: str, n: int) -> tuple[int, bytes, str]:
    if service == "ec2":
        return error_response(service, "RequestLimitExceeded", 503, "Request limit exceeded.")
    if service == "route53" and n % 2:
        return error_response(
            service,
            "PriorRequestNotComplete",
            400,
            "The request was rejected because Route 53 was still processing a prior request.",
        )
    return error_response(service, "Throttling", 400, "Rate exceeded")


def server_error_response(service: str, n: int) -> tuple[int, bytes, str]:
    if n % 2:
        return error_response(service, "ServiceUnavailable", 503, "Service is unavailable.")
    return error_response(service, "InternalError", 500, "An internal error has occurred.")


def denied_response(service: str, action: str) -> tuple[int, bytes, str]:
    if service == "ec2":
        return error_response(
            service,
            "UnauthorizedOperation",
            403,
            "You are not authorized to perform this operation. "
            "Encoded authorization failure message: c2VjcmV0LWlzaC1ibG9i",
        )
    code = "AuthorizationError" if service == "sns" else "AccessDenied"
    return error_response(
        service,
        code,
        403,
        f"User: arn:aws:iam::123456789012:user/jupiterd is not authorized to perform: "
        f"{service}:{action}",
    )


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        """A client gone mid-answer (a replica SIGKILLed) is no error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class FaultProxy(ThreadedProxy):
    def __init__(
        self,
        upstream: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        throttle: float = 0.0,
        errors: float = 0.0,
        latency: float = 0.0,
        seed: int = 0,
        spared: Iterable[str] = DEFAULT_SPARED,
        deny: Iterable[str] = (),
    ) -> None:
        u = urlsplit(upstream)
        self.upstream = (u.hostname or "127.0.0.1", u.port or 80)
        self.throttle = throttle
        self.errors = errors
        self.latency = latency
        self.spared = set(spared)
        self.deny = set(deny)  # "ec2:AssociateAddress"
        self.unreachable = False  # close every (unspared) call unanswered
        self.unreachable_services: set[str] = set()  # "dynamodb": only its calls
        self.action_latency: dict[str, float] = {}  # "ec2:StartInstances" -> seconds
        # Told of every forwarded call: (service:Action, request body, response body).
        self.on_forward: Callable[[str, bytes, bytes], None] | None = None
        self.forwarded: Counter[str] = Counter()
        self._in_flight = 0  # calls being forwarded upstream right now
        # Mutating calls by (service:Action, digest of the request): a count
        # over 1 is the same side effect asked for twice.
        self.requests: Counter[tuple[str, str]] = Counter()
        self.faults: Counter[str] = Counter()
        self.log: list[tuple[float, str, float]] = []  # (start, action, seconds) forwarded
        self.calls: list[tuple[str, dict[str, str]]] = []  # (action, form fields) forwarded
        self.hooks: dict[str, Hook] = {}  # "ec2:StartInstances" -> answer or None
        self._scripted: dict[str, list[Fault]] = {}
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._n = 0
        self._server = _Server((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    def count(self, action: str) -> int:
        return self.forwarded[action]

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Until no call is being forwarded: a client killed mid-call has
        had its last call answered upstream, as a restart seconds later
        would find it. False if calls were still in flight at ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._in_flight == 0:
                    return True
            time.sleep(0.01)
        return False

    def reset_counts(self) -> None:
        with self._lock:
            self.forwarded.clear()
            self.faults.clear()
            self.log.clear()
            self.requests.clear()
            self.calls.clear()

    def fail(self, action: str, code: str, status: int, message: str, *, times: int = 1) -> None:
        """Answer the next ``times`` calls of ``action`` with this error."""
        with self._lock:
            self._scripted.setdefault(action, []).extend([(code, status, message)] * times)

    def fields_of(self, action: str) -> list[dict[str, str]]:
        """The form fields of each forwarded call of ``action``, in order."""
        with self._lock:
            return [f for a, f in self.calls if a == action]

    def cut_off(self, service: str, down: bool = True) -> None:
        """Make one service (an IAM prefix: ``dynamodb``) unreachable, or
        reachable again; ``all``: every unspared service."""
        with self._lock:
            if service == "all":
                self.unreachable = down
            elif down:
                self.unreachable_services.add(service)
            else:
                self.unreachable_services.discard(service)

    def is_unreachable(self, service: str) -> bool:
        if service in self.spared:
            return False
        return self.unreachable or service in self.unreachable_services

    def repeated(self, exclude: Iterable[str] = ()) -> list[str]:
        """The mutating calls forwarded more than once with the same request
        (``exclude``: services whose writes carry their own versions, e.g.
        ``dynamodb``)."""
        skip = set(exclude)
        with self._lock:
            return sorted(
                f"{key} x{n}"
                for (key, _), n in self.requests.items()
                if n > 1 and key.split(":", 1)[0] not in skip
            )

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.forwarded)

    def _decide(
        self, service: str, action: str, fields: dict[str, str]
    ) -> tuple[int, bytes, str] | None:
        key = f"{service}:{action}"
        hook = self.hooks.get(key)
        with self._lock:
            if key in self.deny:
                self.faults[f"denied {key}"] += 1
                return denied_response(service, action)
            queued = self._scripted.get(key)
            scripted = queued.pop(0) if queued else (hook(fields) if hook else None)
            if scripted is not None:
                code, status, message = scripted
                self.faults[f"{code} {key}"] += 1
                return error_response(service, code, status, message)
            if service in self.spared:
                return None
            self._n += 1
            draw = self._rng.random()
            if draw < self.throttle:
                self.faults[f"throttled {key}"] += 1
                return throttle_response(service, self._n)
            if draw < self.throttle + self.errors:
                self.faults[f"error {key}"] += 1
                return server_error_response(service, self._n)
        return None

    def _forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes, key: str = ""
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        delay = self.latency + self.action_latency.get(key, 0.0)
        if delay:
            time.sleep(delay)
        return self.forward(method, path, headers, body)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes: without this,
            # Nagle's algorithm and the SDK's delayed ACKs stall each reply.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _reply(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.path.startswith("/__proxy__/stats"):
                    with proxy._lock:
                        stats = {
                            "forwarded": dict(proxy.forwarded),
                            "faults": dict(proxy.faults),
                            "log": list(proxy.log),
                        }
                    self._reply(200, json.dumps(stats).encode(), "application/json")
                    return
                if self.path.startswith("/__proxy__/reset"):
                    proxy.reset_counts()
                    self._reply(200, b"{}", "application/json")
                    return
                cut = re.fullmatch(r"/__proxy__/unreachable/([\w-]+)/(on|off)", self.path)
                if cut is not None:
                    proxy.cut_off(cut.group(1), cut.group(2) == "on")
                    self._reply(200, b"{}", "application/json")
                    return
                headers = {k.lower(): v for k, v in self.headers.items()}
                service, action = classify(self.command, self.path, headers, body)
                if proxy.is_unreachable(service):
                    with proxy._lock:
                        proxy.faults[f"unanswered {service}:{action}"] += 1
                    self.close_connection = True
                    return
                fields = form_fields(self.path, headers, body)
                fault = proxy._decide(service, action, fields)
                if fault is not None:
                    self._reply(*fault)
                    return
                started = time.monotonic()
                with proxy._lock:
                    proxy._in_flight += 1
                try:
                    status, resp_headers, data = proxy._forward(
                        self.command,
                        self.path,
                        dict(self.headers.items()),
                        body,
                        f"{service}:{action}",
                    )
                except OSError as exc:
                    with proxy._lock:
                        proxy._in_flight -= 1
                    self._reply(*error_response(service, "InternalError", 502, str(exc)))
                    return
                with proxy._lock:
                    proxy._in_flight -= 1
                    proxy.forwarded[f"{service}:{action}"] += 1
                    if proxy.on_forward is not None:
                        proxy.on_forward(f"{service}:{action}", body, data)
                    if mutating(action) and service not in proxy.spared:
                        digest = hashlib.sha256(self.path.encode() + b"\0" + body).hexdigest()
                        proxy.requests[(f"{service}:{action}", digest[:16])] += 1
                    proxy.log.append((started, f"{service}:{action}", time.monotonic() - started))
                    proxy.calls.append((f"{service}:{action}", fields))
                reply(self, status, resp_headers, data)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

        return Handler


def main() -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--upstream", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--throttle", type=float, default=0.0)
    p.add_argument("--errors", type=float, default=0.0)
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deny", action="append", default=[], metavar="SERVICE:ACTION")
    args = p.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    proxy = FaultProxy(
        args.upstream,
        host=args.host,
        port=args.port,
        throttle=args.throttle,
        errors=args.errors,
        latency=args.latency,
        seed=args.seed,
        deny=args.deny,
    )
    with proxy:
        print(f"ready {proxy.url.removeprefix('http://')}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    sys.exit(main())
