"""The value every probe returns, the reasons it may give, and the timing helper.

A probe never raises on anything a peer sends or fails to send: it returns a
``ProbeResult`` with ``ok=False`` and one of the ``Reason`` values below. The
``entrypoint`` decorator turns the exceptions that network code naturally
raises (refused, reset, timeout, TLS failure, a ``ProbeFailure`` raised by the
protocol code) into such results, so each protocol module stays short. Only
programming errors escape.

A failure caused on the monitor's own side (out of descriptors, buffers or
memory, no route or local address on this host, this host's resolver down,
the event loop stalled) says nothing about the target: its reason is
``monitor_error`` and ``ProbeResult.cause`` names which (``MonitorCause``).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
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
    MONITOR_ERROR = "monitor_error"  # failed on the monitor's side: no verdict on the target


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
        Reason.MONITOR_ERROR: "the probe failed on this host, not at the target",
    }
)


class MonitorCause(StrEnum):
    """What went wrong on the monitor's side; a small set (a metric label)."""

    DESCRIPTORS = "descriptors"  # EMFILE/ENFILE: out of file descriptors
    BUFFERS = "buffers"  # ENOBUFS: out of socket buffers
    MEMORY = "memory"  # ENOMEM, MemoryError
    THREADS = "threads"  # no thread could be started (the resolver runs in one)
    LOCAL_ADDRESS = "local_address"  # EADDRNOTAVAIL: no free local port or source address
    NO_ROUTE = "no_route"  # ENETUNREACH/ENETDOWN from this host's own routing table
    RESOLVER = "resolver"  # this host's resolver failed (not: the name does not exist)
    LOOP_STALL = "loop_stall"  # the event loop stalled for much of the probe's budget
    DEFECT = "defect"  # the probe code raised: a bug in jupiterd, reported with its type

    @property
    def host_wide(self) -> bool:
        """Whether every probe of this process is affected, not one target's."""
        return self not in (MonitorCause.NO_ROUTE, MonitorCause.RESOLVER, MonitorCause.DEFECT)


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
    cause: MonitorCause | None = None  # set with reason MONITOR_ERROR, and only then

    @property
    def monitor_error(self) -> bool:
        """The probe failed on the monitor's side: no evidence about the target."""
        return self.cause is not None

    def as_monitor_error(self, cause: MonitorCause, detail: str) -> ProbeResult:
        """This failure, blamed on the monitor instead of the target."""
        return replace(self, ok=False, reason=Reason.MONITOR_ERROR, detail=detail, cause=cause)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "ok": self.ok,
            "kind": self.kind,
            "target": self.target,
            "duration_seconds": round(self.duration_seconds, 6),
            "reason": str(self.reason),
            "detail": self.detail,
            "phases": {k: round(v, 6) for k, v in self.phases.items()},
            "facts": dict(self.facts),
        }
        if self.cause is not None:
            out["cause"] = str(self.cause)
        return out

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


class MonitorFailure(ProbeFailure):
    """A probe that failed on the monitor's side, with its cause."""

    def __init__(self, cause: MonitorCause, detail: str, **facts: Any) -> None:
        super().__init__(Reason.MONITOR_ERROR, detail, **facts)
        self.cause = cause


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


# Errors a call on this host returns without the target having a say. A
# missing route counts only when the kernel's own routing table says so (the
# connect or send call fails at once); the same errno reported back for a
# sent packet is a router's ICMP answer: see ``network_error``. EHOSTUNREACH
# stays the target's: on Linux it means the neighbour (the target itself, or
# the next hop) does not answer ARP/ND, or a router says the host is gone.
_MONITOR_ERRNOS: Mapping[int, tuple[MonitorCause, str]] = MappingProxyType(
    {
        errno.EMFILE: (MonitorCause.DESCRIPTORS, "jupiterd is out of file descriptors"),
        errno.ENFILE: (MonitorCause.DESCRIPTORS, "this host is out of file descriptors"),
        errno.ENOBUFS: (MonitorCause.BUFFERS, "this host is out of socket buffers"),
        errno.ENOMEM: (MonitorCause.MEMORY, "this host is out of memory"),
        errno.EADDRNOTAVAIL: (
            MonitorCause.LOCAL_ADDRESS,
            "this host has no free local port or source address",
        ),
        errno.ENETUNREACH: (MonitorCause.NO_ROUTE, "this host has no route to the target"),
        errno.ENETDOWN: (MonitorCause.NO_ROUTE, "this host's network interface is down"),
    }
)
# getaddrinfo failures of this host's resolver, as opposed to an answer that
# the name does not exist (EAI_NONAME, EAI_NODATA: the target's dns_error).
_RESOLVER_ERRORS = frozenset(
    {socket.EAI_AGAIN, socket.EAI_FAIL, socket.EAI_SYSTEM, socket.EAI_MEMORY}
)
_UNREACHABLE_ERRNOS = frozenset({errno.EHOSTUNREACH, errno.EHOSTDOWN})
_RESET_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})
_NOT_THE_TARGETS = "not the target's fault"


def monitor_failure(exc: BaseException, where: str | None) -> MonitorFailure | None:
    """The monitor-side failure ``exc`` stands for, or None when it may be
    the target's (or the network's) doing."""
    during = f" during {where}" if where else ""
    if isinstance(exc, MonitorFailure):
        return exc
    if isinstance(exc, socket.gaierror):
        if exc.errno not in _RESOLVER_ERRORS:
            return None
        text = exc.strerror or str(exc)
        return MonitorFailure(
            MonitorCause.RESOLVER,
            f"this host's resolver failed ({text}): {_NOT_THE_TARGETS}",
        )
    if isinstance(exc, MemoryError):
        return MonitorFailure(
            MonitorCause.MEMORY, f"jupiterd is out of memory{during}: {_NOT_THE_TARGETS}"
        )
    if isinstance(exc, RuntimeError) and "can't start new thread" in str(exc):
        return MonitorFailure(
            MonitorCause.THREADS,
            f"jupiterd could not start a thread{during}: {_NOT_THE_TARGETS}",
        )
    code = exc.errno if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) else None
    if code is not None and code in _MONITOR_ERRNOS:
        cause, what = _MONITOR_ERRNOS[code]
        text = getattr(exc, "strerror", None) or os.strerror(code)
        return MonitorFailure(cause, f"{what} ({text}){during}: {_NOT_THE_TARGETS}")
    return None


def network_error(exc: OSError, where: str | None) -> BaseException:
    """An error the network reported back for a packet we sent (a TCP
    connect's SO_ERROR, an ICMP error on a UDP socket). Such an error is
    never the monitor's: "network unreachable" here is a router's answer."""
    if exc.errno == errno.ENETUNREACH:  # ICMP never maps to ENETDOWN: that one is ours
        during = f" during {where}" if where else ""
        text = exc.strerror or os.strerror(exc.errno)
        return ProbeFailure(Reason.UNREACHABLE, f"a router answered: {text}{during}")
    return exc


def classify_exception(exc: BaseException, where: str | None) -> tuple[Reason, str]:
    """Map what network code raises to a reason and a human sentence.
    ``entrypoint`` handles ``ProbeFailure`` and ``TimeoutError`` itself."""
    during = f" during {where}" if where else ""
    monitor = monitor_failure(exc, where)
    if monitor is not None:
        return monitor.reason, monitor.detail
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
                failed = trace.fail(exc.reason, exc.detail, **exc.facts)
                if isinstance(exc, MonitorFailure):
                    return failed.as_monitor_error(exc.cause, exc.detail)
                return failed
            except Exception as exc:
                monitor = monitor_failure(exc, trace.where)
                if monitor is not None:
                    return trace.fail(monitor.reason, monitor.detail).as_monitor_error(
                        monitor.cause, monitor.detail
                    )
                reason, detail = classify_exception(exc, trace.where)
                return trace.fail(reason, detail)

        return probe

    return decorate
