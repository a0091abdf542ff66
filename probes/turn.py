"""``turn``: a TURN Allocate (RFC 5766): the 401 challenge, or a real allocation.

Without credentials the probe proves the allocator is alive: an Allocate
request is answered by a 401 error carrying REALM and NONCE. With a username
and password, or coturn's REST API shared secret, it answers the challenge
(long-term credentials, RFC 5389 section 10.2), checks the relayed address and
the response's MESSAGE-INTEGRITY, and releases the allocation with a Refresh
of lifetime 0. A TURN allocation belongs to its 5-tuple, so every request of
one probe goes over one UDP socket or one TCP connection.

A successful Allocate already proves the server alive, so the release is
judged by what it can still tell under packet loss: it is retransmitted for
at most ``RELEASE_RTOS`` initial RTOs (within the budget), and an unanswered
release, or one answered with an error (coturn answers a retransmitted
release whose first send was processed, its answer lost, with 437 Allocation
Mismatch, or 438 Wrong Nonce), is recorded in the facts (``released``) and
the detail, not a failure. The allocation then expires by itself after its
lifetime, as coturn does with abandoned ones.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import time
from dataclasses import dataclass, field
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator

from . import stunmsg
from .options import OptionError, ProbeOptions, parse_hostport
from .result import ProbeFailure, ProbeResult, Reason, Trace, entrypoint
from .stun import (
    DEFAULT_PORT,
    Channel,
    clean,
    deadline_for,
    error_of,
    open_channel,
    read,
    show_address,
    software_of,
)
from .stunmsg import Class, Message, Method

_ALLOCATE = stunmsg.message_type(Method.ALLOCATE, Class.REQUEST)
_REFRESH = stunmsg.message_type(Method.REFRESH, Class.REQUEST)
_UDP_RELAY = stunmsg.REQUESTED_TRANSPORT.tlv(stunmsg.UDP)
_RELEASE = stunmsg.LIFETIME.tlv(0)
STALE_RETRIES = 3
RELEASE_RTOS = 4  # the release waits this many initial RTOs at most (sends at 0, 1, 3 RTOs)
_AUTH_ERRORS = frozenset(
    {401, 431, 441}
)  # Unauthorized, Integrity Check Failure, Wrong Credentials
_HINTS = {
    437: "allocation mismatch: this 5-tuple already has an allocation",
    486: "the user's allocation quota is reached",
    508: "the server is out of relay capacity",
}


class Options(ProbeOptions):
    transport: Literal["udp", "tcp"] = "udp"
    username: str | None = Field(default=None, min_length=1)
    password: SecretStr | None = None
    secret: SecretStr | None = None  # coturn's static-auth-secret (TURN REST API)
    user: str = Field(default="jupiterd", min_length=1)  # the user part of a REST username
    ttl: int = Field(default=600, gt=0)  # lifetime of REST credentials (s)
    # Initial UDP retransmission timeout (s). RFC 5389 suggests 0.5 s or more for
    # unknown Internet paths; a probe makes two transactions (challenge, Allocate)
    # and a release in one budget, so at 0.25 s one lost round trip in each
    # exhausted a 1 s budget in 3.5% of probes at 10% loss each way (measured in
    # tests/test_loss_kernel.py's namespace), at 0.1 s (sends at 0, 0.1, 0.3,
    # 0.7 s) in about 0.3%. A longer path needs a longer rto (and timeout).
    rto: float = Field(default=0.1, gt=0, le=60)

    @model_validator(mode="after")
    def _credentials(self) -> Self:
        if self.secret is not None and (self.username is not None or self.password is not None):
            raise OptionError(
                "options 'secret' and 'username'/'password' exclude each other: 'secret' "
                "derives REST credentials for 'user', 'username' and 'password' are static ones",
                "secret",
            )
        if self.password is not None and self.username is None:
            raise OptionError("option 'password' needs option 'username'", "password")
        if self.username is not None and self.password is None:
            raise OptionError(
                "option 'username' needs option 'password' (or set neither to check only "
                "the 401 challenge)",
                "username",
            )
        return self


def rest_credentials(secret: str, user: str, ttl: int, now: float | None = None) -> tuple[str, str]:
    """coturn's TURN REST API: username "<expiry>:<user>", password
    base64(HMAC-SHA1(secret, username)) (coturn README.turnserver)."""
    username = f"{int(time.time() if now is None else now) + ttl}:{user}"
    mac = hmac.digest(secret.encode(), username.encode(), "sha1")
    return username, base64.b64encode(mac).decode()


def credentials(options: Options) -> tuple[str, str] | None:
    if options.secret is not None:
        return rest_credentials(options.secret.get_secret_value(), options.user, options.ttl)
    if options.username is not None and options.password is not None:
        return options.username, options.password.get_secret_value()
    return None


@dataclass(slots=True)
class _Auth:
    """The long-term credential state of one probe; never shown anywhere."""

    username: str
    password: str = field(repr=False)
    realm: str
    nonce: bytes
    key: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        self.key = stunmsg.long_term_key(self.username, self.realm, self.password)

    def attributes(self) -> list[bytes]:
        return [
            stunmsg.USERNAME.tlv(self.username),
            stunmsg.REALM.tlv(self.realm),
            stunmsg.NONCE.tlv(self.nonce),
        ]

    def update(self, msg: Message, peer: str) -> None:
        """Adopt the nonce (and realm) of a 438 Stale Nonce answer."""
        nonce = read(msg, stunmsg.NONCE, peer)
        if not nonce:
            raise ProbeFailure(
                Reason.PROTOCOL_ERROR, f"{peer} sent 438 Stale Nonce without a new NONCE"
            )
        self.nonce = nonce
        realm = read(msg, stunmsg.REALM, peer)
        if realm and realm != self.realm:
            self.realm = realm
            self.key = stunmsg.long_term_key(self.username, realm, self.password)


def _expect(msg: Message, method: Method, what: str, peer: str) -> None:
    if msg.method != method:
        raise ProbeFailure(
            Reason.PROTOCOL_ERROR,
            f"{peer} answered our {what} with a {msg.name} (same transaction ID)",
        )


async def _signed(
    channel: Channel, method: Method, attrs: list[bytes], auth: _Auth, what: str
) -> Message:
    """An authenticated request, retried with the fresh nonce of a 438 answer
    (Stale or Wrong Nonce) up to STALE_RETRIES times: under loss coturn was
    seen answering 438 twice in a row (a retransmission that reached a new
    session on the same 5-tuple)."""
    msg = await _send_signed(channel, method, attrs, auth, what)
    for _ in range(STALE_RETRIES):
        if not (msg.cls == Class.ERROR and error_of(msg, channel.peer)[0] == 438):
            break
        auth.update(msg, channel.peer)
        msg = await _send_signed(channel, method, attrs, auth, what)
    return msg


async def _send_signed(
    channel: Channel, method: Method, attrs: list[bytes], auth: _Auth, what: str
) -> Message:
    txid = stunmsg.transaction_id()
    msg_type = stunmsg.message_type(method, Class.REQUEST)
    request = stunmsg.encode(
        msg_type, txid, attrs + auth.attributes(), key=auth.key, fingerprint=True
    )
    msg = await channel.transact(request, txid, what)
    _expect(msg, method, what, channel.peer)
    return msg


@entrypoint("turn")
async def probe(trace: Trace, target: str, options: Options, timeout: float) -> ProbeResult:
    hp = parse_hostport(target, DEFAULT_PORT)
    creds = credentials(options)
    deadline = deadline_for(timeout)
    channel = await open_channel(trace, hp, options.transport, deadline, options.rto)

    async def another_port() -> Message:
        # coturn keeps a released allocation for a second, and one whose
        # release went unanswered for its lifetime: a new socket that the
        # kernel gave an earlier probe's port finds it there (437, to the
        # challenge or, once authenticated, to the Allocate). Ask again from
        # another port, once (opened before this one closes).
        nonlocal channel
        fresh = await open_channel(trace, hp, options.transport, deadline, options.rto)
        fresh.sent = channel.sent
        channel.close()
        channel = fresh
        trace.facts["stale_port_retried"] = True
        return await _challenge(trace, channel)

    try:
        msg = await _challenge(trace, channel)
        if channel.transport == "udp" and _code(msg) == 437:
            msg = await another_port()
        trace.facts["local_address"] = channel.local
        try:
            detail = await _allocate(trace, channel, creds, msg, _auth_hint(options), options.rto)
        except ProbeFailure as exc:
            stale = exc.facts.get("error_code") == 437 and "relayed_address" not in trace.facts
            if channel.transport != "udp" or not stale or trace.facts.get("stale_port_retried"):
                raise
            msg = await another_port()
            trace.facts["local_address"] = channel.local
            detail = await _allocate(trace, channel, creds, msg, _auth_hint(options), options.rto)
    finally:
        channel.close()
        trace.facts["requests_sent"] = channel.sent
    return trace.ok(detail)


def _code(msg: Message) -> int | None:
    try:
        err = msg.get(stunmsg.ERROR_CODE) if msg.cls == Class.ERROR else None
    except stunmsg.StunError:
        return None
    return err[0] if err else None


async def _challenge(trace: Trace, channel: Channel) -> Message:
    txid = stunmsg.transaction_id()
    request = stunmsg.encode(_ALLOCATE, txid, [_UDP_RELAY], fingerprint=True)
    with trace.phase("challenge"):
        msg = await channel.transact(request, txid, "Allocate request")
    _expect(msg, Method.ALLOCATE, "Allocate request", channel.peer)
    return msg


def _auth_hint(options: Options) -> str:
    if options.secret is not None:
        return (
            "check the shared secret, and that the server's clock is within "
            f"{options.ttl} s of ours (REST usernames carry their expiry time)"
        )
    return "check the username and password"


async def _allocate(
    trace: Trace,
    channel: Channel,
    creds: tuple[str, str] | None,
    msg: Message,
    auth_hint: str,
    rto: float,
) -> str:
    """The success detail, once the challenge (and, with credentials, the
    allocation and its release) passed; the caller writes requests_sent."""
    peer = channel.peer
    software = software_of(msg)
    if software:
        trace.facts["software"] = software
    if msg.cls == Class.SUCCESS:
        with trace.phase("refresh"):
            released = await _release_open(channel)
        try:
            relayed = msg.get(stunmsg.XOR_RELAYED_ADDRESS)
        except stunmsg.StunError:
            relayed = None
        shown = show_address(relayed) if relayed else "(no valid XOR-RELAYED-ADDRESS)"
        raise ProbeFailure(
            Reason.UNEXPECTED_RESPONSE,
            f"{peer} allocated relay {shown} without asking for credentials (expected a 401 "
            f"challenge): it is an open relay; {released}",
        )
    code, reason = error_of(msg, peer)
    if code != 401:
        raise ProbeFailure(
            Reason.UNEXPECTED_RESPONSE,
            f"{peer} answered our Allocate request with error {code} '{reason}' instead of "
            f"the 401 challenge{_hint(code)}",
            error_code=code,
        )
    realm = read(msg, stunmsg.REALM, peer)
    nonce = read(msg, stunmsg.NONCE, peer)
    if not realm or not nonce:
        missing = " and ".join(n for n, v in (("REALM", realm), ("NONCE", nonce)) if not v)
        raise ProbeFailure(
            Reason.PROTOCOL_ERROR, f"{peer} sent the 401 challenge without {missing}"
        )
    trace.facts["realm"] = clean(realm)
    trace.facts["nonce_length"] = len(nonce)
    by = f" ({software})" if software else ""
    if creds is None:
        return (
            f"{peer}{by} challenged our Allocate request with 401 in realm '{clean(realm)}' "
            f"over {channel.transport.upper()}: the allocator is alive"
        )

    auth = _Auth(creds[0], creds[1], realm, nonce)
    who = f"user '{clean(auth.username)}' in realm '{clean(realm)}'"
    with trace.phase("allocate"):
        msg = await _signed(channel, Method.ALLOCATE, [_UDP_RELAY], auth, "authenticated Allocate")
    if msg.cls == Class.ERROR:
        code, reason = error_of(msg, peer)
        if code in _AUTH_ERRORS:
            raise ProbeFailure(
                Reason.AUTH_FAILED,
                f"{peer} refused the credentials of {who}: error {code} '{reason}'; {auth_hint}",
                error_code=code,
            )
        raise ProbeFailure(
            Reason.UNEXPECTED_RESPONSE,
            f"{peer} answered the authenticated Allocate of {who} with error {code} "
            f"'{reason}'{_hint(code)}",
            error_code=code,
        )

    # An allocation exists from here on: release it even if the answer is
    # unacceptable, so a probe never leaks relay ports or user quota.
    problem: ProbeFailure | None = None
    relayed = None
    try:
        if not msg.check_integrity(auth.key):
            raise ProbeFailure(
                Reason.PROTOCOL_ERROR,
                f"the Allocate success response from {peer} has no valid MESSAGE-INTEGRITY "
                "for our credentials",
            )
        relayed = read(msg, stunmsg.XOR_RELAYED_ADDRESS, peer)
        if relayed is None:
            raise ProbeFailure(
                Reason.PROTOCOL_ERROR,
                f"{peer} sent an Allocate success response without XOR-RELAYED-ADDRESS",
            )
        trace.facts["relayed_address"] = show_address(relayed)
        mapped = read(msg, stunmsg.XOR_MAPPED_ADDRESS, peer)
        if mapped is not None:
            trace.facts["mapped_address"] = show_address(mapped)
        lifetime = read(msg, stunmsg.LIFETIME, peer)
        if lifetime is not None:
            trace.facts["lifetime"] = lifetime
    except ProbeFailure as exc:
        problem = exc

    shown = show_address(relayed) if relayed else "a relay"
    try:
        with trace.phase("refresh"):
            released = await _release(trace, channel, auth, rto)
    except ProbeFailure as exc:
        if problem is not None:
            raise problem from None
        raise ProbeFailure(
            exc.reason,
            f"{peer} allocated {shown} for {who}, but releasing it failed: {exc.detail}",
            **exc.facts,
        ) from None
    if problem is not None:
        raise problem
    life = f", lifetime {trace.facts['lifetime']} s" if "lifetime" in trace.facts else ""
    return (
        f"{peer}{by} allocated relay {shown}{life} for {who} over "
        f"{channel.transport.upper()}, and {released}"
    )


async def _release(trace: Trace, channel: Channel, auth: _Auth, rto: float) -> str:
    """Refresh with LIFETIME 0 deletes the allocation (RFC 5766 section 7).
    Returns how it went, for the detail, and records it as the fact
    ``released``: true, "unanswered" or "error CODE". Raises ProbeFailure only
    for an answer no loss explains (not a STUN response to it)."""
    peer = channel.peer
    channel.deadline = min(channel.deadline, asyncio.get_running_loop().time() + RELEASE_RTOS * rto)
    try:
        msg = await _signed(channel, Method.REFRESH, [_RELEASE], auth, "Refresh (lifetime 0)")
    except ProbeFailure as exc:
        if exc.reason != Reason.TIMEOUT:
            raise
        trace.facts["released"] = "unanswered"
        return f"released it (the release went unanswered: {exc.detail}; it expires by itself)"
    if msg.cls == Class.ERROR:
        code, reason = error_of(msg, peer)
        trace.facts["released"] = f"error {code}"
        gone = " (a retransmission: the first send released it)" if code in (437, 438) else ""
        return (
            f"asked to release it: the Refresh (lifetime 0) got error {code} "
            f"'{reason}'{gone}; an allocation left over expires by itself"
        )
    trace.facts["released"] = True
    return "released it"


async def _release_open(channel: Channel) -> str:
    """Best effort release of an allocation made without credentials."""
    txid = stunmsg.transaction_id()
    request = stunmsg.encode(_REFRESH, txid, [_RELEASE], fingerprint=True)
    try:
        msg = await channel.transact(request, txid, "Refresh (lifetime 0)")
    except ProbeFailure as exc:
        return f"releasing it failed: {exc.detail}"
    if msg.method == Method.REFRESH and msg.cls == Class.SUCCESS:
        return "released it"
    return f"releasing it got a {msg.name}"


def _hint(code: int) -> str:
    hint = _HINTS.get(code)
    return f" ({hint})" if hint else ""
