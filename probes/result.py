"""The value every probe returns, the reasons it may give, and the timing helper.

A probe never raises on anything a peer sends or fails to send: it returns a
``ProbeResult`` with ``ok=False`` and one of the ``Reason`` values below. The
``entrypoint`` decorator turns the exceptions that network code naturally
raises (refused, reset, timeout, TLS failure, a ``ProbeFailure`` raised by the
protocol code) into such results, so each protocol module stays short. Only
programming errors escape.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, TypeVar


class Reason(StrEnum):
    """Why a probe failed; a small, documented, machine-readable set."""

    OK = "ok"
    REFUSED = "refused"  # the port is closed (TCP RST, ICMP port unreachable)
    TIMEOUT = "timeout"  # no (complete) answer within the timeout
    UNREACHABLE = "unreachable"  # no route to the host or network
    DNS_ERROR = "dns_error"  # the target's name did not resolve
    RESET = "reset"  # the peer closed or reset the connection mid-exchange
    TLS_ERROR = "tls_error"  # the TLS handshake failed
    PROTOCOL_ERROR = "protocol_error"  # the peer's bytes are not this protocol
    UNEXPECTED_RESPONSE = "unexpected_response"  # valid protocol, wrong answer
    REJECTED = "rejected"  # the service refused the session (e.g. CONNECT_ERROR)
    AUTH_FAILED = "auth_failed"  # the credentials were refused
    PERMISSION_DENIED = "permission_denied"  # this host may not send the probe


REASON_DESCRIPTIONS: Mapping[Reason, str] = MappingProxyType(
    {
        Reason.OK: "the service answered as it should",
        Reason.REFUSED: "the port is closed: nothing listens there",
        Reason.TIMEOUT: "no complete answer within the timeout",
        Reason.UNREACHABLE: "no route to the host or its network",
        Reason.DNS_ERROR: "the target's name did not resolve",
        Reason.RESET: "the peer closed or reset the connection mid-exchange",
        Reason.TLS_ERROR: "the TLS handshake failed",
        Reason.PROTOCOL_ERROR: "the peer answered, but not in this protocol",
        Reason.UNEXPECTED_RESPONSE: "a valid answer, but not a healthy one",
        Reason.REJECTED: "the service refused the session",
        Reason.AUTH_FAILED: "the service refused the probe's credentials",
        Reason.PERMISSION_DENIED: "this host is not allowed to send the probe",
    }
)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of one probe. Frozen: it crosses module borders."""

    kind: str
    target: str
    ok: bool
    reason: Reason
    detail: str
    duration_seconds: float
    phases: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    facts: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "kind": self.kind,
            "target": self.target,
            "duration_seconds": round(self.duration_seconds, 6),
            "reason": str(self.reason),
            "detail": self.detail,
            "phases": {k: round(v, 6) for k, v in self.phases.items()},
            "facts": dict(self.facts),
        }

    def summary(self) -> str:
        """One line a person can act on."""
        status = "OK  " if self.ok else "FAIL"
        took = f"{self.duration_seconds * 1000:.1f} ms"
        head = f"{status} {self.kind} {self.target} in {took}"
        if self.ok:
            return f"{head}: {self.detail}"
        return f"{head}: {self.reason}: {self.detail}"


class ProbeFailure(Exception):
    """Raised inside a probe to end it with a failed result.

    Protocol code raises this when a peer's answer is wrong; ``entrypoint``
    turns it into a ``ProbeResult``. Never escapes a probe.
    """

    def __init__(self, reason: Reason, detail: str, **facts: Any) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.facts = facts


class Trace:
    """Times the phases of one probe and collects the facts it learns."""

    __slots__ = ("current", "facts", "failed_in", "kind", "phases", "start", "target")

    def __init__(self, kind: str, target: str) -> None:
        self.kind = kind
        self.target = target
        self.start = time.perf_counter()
        self.phases: dict[str, float] = {}
        self.facts: dict[str, Any] = {}
        self.current: str | None = None
        self.failed_in: str | None = None  # the innermost phase an error left

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a phase; repeated phases add up. The phase stays named while
        it runs so a timeout can say where it happened."""
        previous = self.current
        self.current = name
        started = time.perf_counter()
        try:
            yield
        except BaseException:
            if self.failed_in is None:
                self.failed_in = name
            raise
        finally:
            elapsed = time.perf_counter() - started
            self.phases[name] = self.phases.get(name, 0.0) + elapsed
            self.current = previous

    @property
    def where(self) -> str | None:
        """The phase a failure happened in, for the detail sentence."""
        return self.failed_in or self.current

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def result(self, ok: bool, reason: Reason, detail: str, **facts: Any) -> ProbeResult:
        merged = {**self.facts, **facts}
        return ProbeResult(
            kind=self.kind,
            target=self.target,
            ok=ok,
            reason=reason,
            detail=detail,
            duration_seconds=self.elapsed(),
            phases=MappingProxyType(dict(self.phases)),
            facts=MappingProxyType(merged),
        )

    def ok(self, detail: str, **facts: Any) -> ProbeResult:
        return self.result(True, Reason.OK, detail, **facts)

    def fail(self, reason: Reason, detail: str, **facts: Any) -> ProbeResult:
        return self.result(False, reason, detail, **facts)


_UNREACHABLE_ERRNOS = frozenset(
    {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ENETDOWN, errno.EADDRNOTAVAIL}
)
_RESET_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})


def classify_exception(exc: BaseException, where: str | None) -> tuple[Reason, str]:
    """Map what network code raises to a reason and a human sentence.
    ``entrypoint`` handles ``ProbeFailure`` and ``TimeoutError`` itself."""
    during = f" during {where}" if where else ""
    if isinstance(exc, ssl.SSLError):  # ssl.CertificateError is a subclass
        return Reason.TLS_ERROR, f"TLS failed{during}: {exc}"
    if isinstance(exc, asyncio.IncompleteReadError):
        got = len(exc.partial)
        return (
            Reason.RESET,
            f"the peer closed the connection{during} after {got} of a message's bytes",
        )
    if isinstance(exc, socket.gaierror):
        return Reason.DNS_ERROR, f"name resolution failed: {exc.strerror or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return Reason.REFUSED, f"connection refused{during}: nothing listens on that port"
    if isinstance(exc, OSError):
        code = exc.errno
        text = exc.strerror or str(exc) or type(exc).__name__
        if code in _UNREACHABLE_ERRNOS:
            return Reason.UNREACHABLE, f"{text}{during}"
        if code in (errno.EACCES, errno.EPERM):
            return Reason.PERMISSION_DENIED, f"{text}{during}"
        if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError) or (
            code in _RESET_ERRNOS
        ):
            return Reason.RESET, f"connection reset by the peer{during}"
        return Reason.UNREACHABLE, f"{text}{during}"
    if isinstance(exc, EOFError):
        return Reason.RESET, f"the peer closed the connection{during}"
    raise exc  # a programming error: let it surface


OptT = TypeVar("OptT")
ProbeImpl = Callable[[Trace, str, OptT, float], Awaitable[ProbeResult]]
Probe = Callable[[str, OptT, float], Awaitable[ProbeResult]]


def entrypoint(kind: str) -> Callable[[ProbeImpl[OptT]], Probe[OptT]]:
    """Wrap a protocol implementation into a probe that never raises on peer
    behaviour and always returns within ``timeout`` seconds."""

    def decorate(impl: ProbeImpl[OptT]) -> Probe[OptT]:
        @functools.wraps(impl)
        async def probe(target: str, options: OptT, timeout: float) -> ProbeResult:
            trace = Trace(kind, target)
            try:
                async with asyncio.timeout(timeout):
                    return await impl(trace, target, options, timeout)
            except TimeoutError:
                where = f" during {trace.where}" if trace.where else ""
                return trace.fail(Reason.TIMEOUT, f"no answer within {timeout:g} s{where}")
            except ProbeFailure as exc:
                return trace.fail(exc.reason, exc.detail, **exc.facts)
            except Exception as exc:
                reason, detail = classify_exception(exc, trace.where)
                return trace.fail(reason, detail)

        return probe

    return decorate
