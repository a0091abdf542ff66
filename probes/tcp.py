"""``tcp``: the port accepts a TCP connection (optionally completes TLS)."""

from __future__ import annotations

from .net import close_stream, insecure_tls_context, open_stream, tcp_connect
from .options import ProbeOptions, parse_hostport
from .result import ProbeResult, Trace, entrypoint


class Options(ProbeOptions):
    tls: bool = False  # also complete a TLS handshake (certificate not checked)
    server_name: str | None = None  # SNI for the TLS handshake


@entrypoint("tcp")
async def probe(trace: Trace, target: str, options: Options, timeout: float) -> ProbeResult:
    hp = parse_hostport(target, None)
    if not options.tls:
        sock = await tcp_connect(trace, hp)
        sock.close()
        return trace.ok(f"{hp} accepted a TCP connection")
    _, writer = await open_stream(
        trace, hp, tls=insecure_tls_context(), server_hostname=options.server_name
    )
    cipher = writer.get_extra_info("cipher")
    version = writer.get_extra_info("ssl_object").version()
    close_stream(writer)
    return trace.ok(
        f"{hp} completed a {version} handshake",
        tls_version=version,
        tls_cipher=cipher[0] if cipher else None,
    )
