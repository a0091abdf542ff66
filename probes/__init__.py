"""The probe library: one module per protocol, one signature for all.

    result = await probes.run("socketio", "10.0.1.10:3000", {"transport": "websocket"}, 2.0)

Each kind's module has ``Options`` (a ``ProbeOptions`` model) and
``probe(target, options, timeout) -> ProbeResult``. This module knows nothing
of the daemon. Adding a protocol is one module and one line in ``KINDS``.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .options import OptionError, ProbeOptions, parse_host, parse_hostport, parse_url, quote
from .result import (
    REASON_DESCRIPTIONS,
    MonitorCause,
    ProbeFailure,
    ProbeResult,
    Reason,
    Trace,
)

__all__ = [
    "KINDS",
    "REASON_DESCRIPTIONS",
    "Kind",
    "MonitorCause",
    "OptionError",
    "ProbeFailure",
    "ProbeOptions",
    "ProbeResult",
    "Reason",
    "Trace",
    "get_kind",
    "run",
]

TargetStyle = Literal["hostport", "url", "host"]


@functools.cache
def _module(name: str) -> Any:
    """A kind's module, imported on first use. The module is cached, not its
    functions: a patched ``probes.<kind>.probe`` is still the one called."""
    return importlib.import_module(f"{__name__}.{name}")


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    module: str
    default_port: int | None
    target_style: TargetStyle
    summary: str

    def _mod(self) -> Any:
        return _module(self.module)

    @property
    def options(self) -> type[ProbeOptions]:
        return self._mod().Options  # type: ignore[no-any-return]

    def parse_options(self, raw: Mapping[str, Any] | ProbeOptions | None) -> ProbeOptions:
        if isinstance(raw, ProbeOptions):
            return raw
        return self.options.parse(raw)

    def check_target(self, target: str) -> str:
        """Raise ``OptionError`` if the target cannot be probed by this kind."""
        if self.target_style == "host":
            parse_host(target)
        elif self.target_style == "url":
            parse_url(target, self.default_port or 80)
        else:
            parse_hostport(target, self.default_port)
        return target

    async def probe(self, target: str, options: ProbeOptions, timeout: float) -> ProbeResult:
        return await self._mod().probe(target, options, timeout)  # type: ignore[no-any-return]


KINDS: Mapping[str, Kind] = {
    k.name: k
    for k in (
        Kind("tcp", "tcp", None, "hostport", "TCP connect (optionally TLS)"),
        Kind("http", "http", 80, "url", "HTTP request with status and body assertions"),
        Kind(
            "socketio",
            "socketio",
            3000,
            "url",
            "Socket.IO session (Engine.IO v3/v4, polling/WebSocket)",
        ),
        Kind("stun", "stun", 3478, "hostport", "STUN Binding (RFC 5389) over UDP or TCP"),
        Kind(
            "turn", "turn", 3478, "hostport", "TURN Allocate: 401 challenge, or a real allocation"
        ),
        Kind("frp", "frp", 7000, "hostport", "frp client login (TLS, yamux, Login/LoginResp)"),
        Kind("thingsboard", "thingsboard", 8080, "url", "ThingsBoard web app, login and API"),
        Kind("icmp", "icmp", None, "host", "ICMP echo (ping)"),
    )
}


def get_kind(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise OptionError(f"unknown probe kind {quote(name)} (known: {', '.join(KINDS)})") from None


async def run(
    kind: str, target: str, options: Mapping[str, Any] | ProbeOptions | None, timeout: float
) -> ProbeResult:
    """Validate, then probe. ``OptionError`` for bad input; never raises on peers."""
    k = get_kind(kind)
    opts = k.parse_options(options)
    k.check_target(target)
    if not timeout > 0:
        raise OptionError("timeout must be a positive number of seconds", "timeout")
    return await k.probe(target, opts, timeout)
