"""The STUN codec: RFC 5769 test vectors, aioice as an independent
implementation in both directions, malformed input, and fuzzing."""

import contextlib
import struct
import time
import zlib

import pytest
from aioice import stun as aio
from aioice.turn import make_integrity_key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probes import stunmsg
from probes.stunmsg import Class, Method, StunError


def unhex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# RFC 5769 section 2 (test vectors; short-term password below for 2.1-2.3).
SAMPLE_REQUEST = unhex("""
    00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
    00 24 00 04 6e 00 01 ff
    80 29 00 08 93 2f f9 b1 51 26 3b 36
    00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
    00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
    80 28 00 04 e5 7a 3b cf""")
SAMPLE_IPV4_RESPONSE = unhex("""
    01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 08 00 01 a1 47 e1 12 a6 43
    00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
    80 28 00 04 c0 7d 4c 96""")
SAMPLE_IPV6_RESPONSE = unhex("""
    01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
    00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
    80 28 00 04 c8 fb 0b 4c""")
SAMPLE_LONG_TERM_REQUEST = unhex("""
    00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
    00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
    00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73 41
    00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
    00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66""")
SHORT_TERM_KEY = b"VOkJxbRl1RmTxUk/WvJxBt"
MATRIX_USER = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
TXID = bytes(range(12))


# --- RFC 5769 vectors --------------------------------------------------------


def test_rfc5769_sample_request():
    msg = stunmsg.decode(SAMPLE_REQUEST)  # FINGERPRINT is checked while decoding
    assert (msg.method, msg.cls) == (Method.BINDING, Class.REQUEST)
    assert msg.txid == bytes.fromhex("b7e7a701bc34d686fa87dfae")
    assert msg.get(stunmsg.USERNAME) == "evtj:h6vY"
    assert msg.get(stunmsg.SOFTWARE) == "STUN test client"
    assert msg.check_integrity(SHORT_TERM_KEY)
    assert not msg.check_integrity(b"not the password")


@pytest.mark.parametrize(
    "vector,mapped",
    [
        (SAMPLE_IPV4_RESPONSE, ("192.0.2.1", 32853)),
        (SAMPLE_IPV6_RESPONSE, ("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
    ],
)
def test_rfc5769_sample_responses_decode_and_reencode(vector, mapped):
    msg = stunmsg.decode(vector)
    assert msg.name == "Binding success response"
    assert msg.get(stunmsg.XOR_MAPPED_ADDRESS) == mapped
    assert msg.get(stunmsg.SOFTWARE) == "test vector"
    assert msg.check_integrity(SHORT_TERM_KEY)
    # The RFC pads SOFTWARE with a space; padding is free, so put it in by hand.
    software = b"\x80\x22\x00\x0btest vector "
    rebuilt = stunmsg.encode(
        0x0101,
        msg.txid,
        [software, stunmsg.XOR_MAPPED_ADDRESS.tlv(mapped, msg.txid)],
        key=SHORT_TERM_KEY,
        fingerprint=True,
    )
    assert rebuilt == vector


def test_rfc5769_long_term_request():
    msg = stunmsg.decode(SAMPLE_LONG_TERM_REQUEST)
    assert msg.get(stunmsg.USERNAME) == MATRIX_USER
    assert msg.get(stunmsg.REALM) == "example.org"
    assert msg.get(stunmsg.NONCE) == b"f//499k954d6OL34oL9FSTvy64sA"
    # "The<U+00AD>M<U+00AA>tr<U+2168>" after SASLprep
    assert msg.check_integrity(stunmsg.long_term_key(MATRIX_USER, "example.org", "TheMatrIX"))
    assert not msg.check_integrity(stunmsg.long_term_key(MATRIX_USER, "example.org", "TheMatrix"))


@pytest.mark.parametrize(
    "method,cls,value",
    [
        (Method.BINDING, Class.REQUEST, 0x0001),
        (Method.BINDING, Class.SUCCESS, 0x0101),
        (Method.BINDING, Class.ERROR, 0x0111),
        (Method.ALLOCATE, Class.REQUEST, 0x0003),
        (Method.ALLOCATE, Class.SUCCESS, 0x0103),
        (Method.ALLOCATE, Class.ERROR, 0x0113),
        (Method.REFRESH, Class.REQUEST, 0x0004),
        (Method.REFRESH, Class.SUCCESS, 0x0104),
        (Method.SEND, Class.INDICATION, 0x0016),
        (Method.DATA, Class.INDICATION, 0x0017),
        (0xFFF, Class.ERROR, 0x3FFF),
    ],
)
def test_message_type_interleaves_class_bits(method, cls, value):
    assert stunmsg.message_type(method, cls) == value
    assert stunmsg.split_type(value) == (method, cls)


# --- aioice as an independent implementation ----------------------------------


def test_our_signed_allocate_parses_and_verifies_in_aioice():
    key = stunmsg.long_term_key("alice", "jupiter.test", "s3cret")
    assert key == make_integrity_key("alice", "jupiter.test", "s3cret")
    data = stunmsg.encode(
        stunmsg.message_type(Method.ALLOCATE, Class.REQUEST),
        TXID,
        [
            stunmsg.REQUESTED_TRANSPORT.tlv(stunmsg.UDP),
            stunmsg.USERNAME.tlv("alice"),
            stunmsg.REALM.tlv("jupiter.test"),
            stunmsg.NONCE.tlv(b"abcdef0123456789"),
            stunmsg.LIFETIME.tlv(0),
            stunmsg.SOFTWARE.tlv("jupiterd"),
        ],
        key=key,
        fingerprint=True,
    )
    msg = aio.parse_message(data)  # checks FINGERPRINT
    assert (msg.message_method, msg.message_class) == (aio.Method.ALLOCATE, aio.Class.REQUEST)
    assert msg.transaction_id == TXID
    assert msg.attributes["REQUESTED-TRANSPORT"] == 0x11000000
    assert msg.attributes["USERNAME"] == "alice"
    assert msg.attributes["REALM"] == "jupiter.test"
    assert msg.attributes["NONCE"] == b"abcdef0123456789"
    assert msg.attributes["LIFETIME"] == 0
    assert msg.attributes["SOFTWARE"] == "jupiterd"
    assert msg.check_message_integrity(key)
    assert not msg.check_message_integrity(stunmsg.long_term_key("alice", "jupiter.test", "x"))


@pytest.mark.parametrize("addr", [("203.0.113.7", 51820), ("2001:db8::42", 61000)])
def test_our_addresses_parse_in_aioice(addr):
    data = stunmsg.encode(
        0x0101,
        TXID,
        [
            stunmsg.XOR_MAPPED_ADDRESS.tlv(addr, TXID),
            stunmsg.XOR_RELAYED_ADDRESS.tlv(addr, TXID),
            stunmsg.MAPPED_ADDRESS.tlv(addr, TXID),
            stunmsg.ERROR_CODE.tlv((438, "Stale Nonce")),
        ],
        fingerprint=True,
    )
    msg = aio.parse_message(data)
    assert msg.attributes["XOR-MAPPED-ADDRESS"] == addr
    assert msg.attributes["XOR-RELAYED-ADDRESS"] == addr
    assert msg.attributes["MAPPED-ADDRESS"] == addr
    assert msg.attributes["ERROR-CODE"] == (438, "Stale Nonce")


@pytest.mark.parametrize("addr", [("198.51.100.4", 3478), ("::1", 1)])
def test_aioice_messages_decode_and_verify_here(addr):
    key = make_integrity_key("bob", "realm.example", "pw")
    msg = aio.Message(aio.Method.ALLOCATE, aio.Class.RESPONSE, transaction_id=TXID)
    msg.attributes["XOR-RELAYED-ADDRESS"] = addr
    msg.attributes["XOR-MAPPED-ADDRESS"] = addr
    msg.attributes["MAPPED-ADDRESS"] = addr
    msg.attributes["LIFETIME"] = 600
    msg.attributes["SOFTWARE"] = "aioice"
    msg.attributes["REALM"] = "realm.example"
    msg.attributes["NONCE"] = b"n0nce"
    msg.add_message_integrity(key)  # adds FINGERPRINT too
    ours = stunmsg.decode(bytes(msg))
    assert ours.name == "Allocate success response"
    assert ours.get(stunmsg.XOR_RELAYED_ADDRESS) == addr
    assert ours.get(stunmsg.XOR_MAPPED_ADDRESS) == addr
    assert ours.get(stunmsg.MAPPED_ADDRESS) == addr
    assert ours.get(stunmsg.LIFETIME) == 600
    assert ours.get(stunmsg.SOFTWARE) == "aioice"
    assert ours.get(stunmsg.REALM) == "realm.example"
    assert ours.get(stunmsg.NONCE) == b"n0nce"
    assert ours.check_integrity(key)
    assert not ours.check_integrity(make_integrity_key("bob", "realm.example", "pW"))


def test_aioice_error_response_decodes_here():
    msg = aio.Message(aio.Method.ALLOCATE, aio.Class.ERROR, transaction_id=TXID)
    msg.attributes["ERROR-CODE"] = (401, "Unauthorized")
    msg.attributes["NONCE"] = b"0123456789abcdef"
    msg.attributes["REALM"] = "jupiter.test"
    msg.add_fingerprint()
    ours = stunmsg.decode(bytes(msg))
    assert ours.name == "Allocate error response"
    assert ours.error() == (401, "Unauthorized")
    assert not ours.check_integrity(b"k")  # no MESSAGE-INTEGRITY at all


# --- framing rules --------------------------------------------------------------


def build(attrs: bytes, msg_type: int = 0x0101, length: int | None = None) -> bytes:
    n = len(attrs) if length is None else length
    return struct.pack("!HHI12s", msg_type, n, stunmsg.MAGIC_COOKIE, TXID) + attrs


def with_fingerprint(data: bytes) -> bytes:
    head = data[:2] + struct.pack("!H", len(data) - 20 + 8) + data[4:]
    crc = zlib.crc32(head) ^ 0x5354554E
    return head + struct.pack("!HHI", 0x8028, 4, crc)


@pytest.mark.parametrize(
    "data,needle",
    [
        (b"", "shorter than the 20-byte"),
        (b"\x01\x01\x00\x00" + b"\0" * 15, "shorter than the 20-byte"),
        (build(b"", msg_type=0xC101), "first two bits are not zero"),
        (b"\x01\x01\x00\x00\x21\x12\xa4\x43" + TXID, "magic cookie 0x2112a443"),
        (build(b"\0\0\0\0\0\0", length=6), "not a multiple of 4"),
        (build(b"", length=8), "announces a 8-byte body but 0 follow"),
        (build(b"\x00\x20\x00\x08\x00\x01"), "not a multiple of 4"),
        (build(b"\x00\x20\x00\x09\x00\x01\x00\x00\x00\x00\x00\x00"), "claims 9 bytes, 8 remain"),
        (build(b"\x00\x20\xff\xfc"), "claims 65532 bytes, 0 remain"),
        (build(b"\x80\x28\x00\x04\x00\x00\x00\x00"), "FINGERPRINT does not match"),
        (build(b"\x80\x28\x00\x08" + b"\0" * 8), "FINGERPRINT is not the last"),
        (build(b"\x00\x08\x00\x10" + b"\0" * 16), "MESSAGE-INTEGRITY of 16 bytes"),
    ],
)
def test_malformed_messages_raise_stun_error(data, needle):
    with pytest.raises(StunError, match=needle):
        stunmsg.decode(data)


def test_fingerprint_must_be_last():
    data = with_fingerprint(build(b""))
    stunmsg.decode(data)
    trailing = data + b"\x80\x22\x00\x00"
    trailing = trailing[:2] + struct.pack("!H", len(trailing) - 20) + trailing[4:]
    with pytest.raises(StunError, match="FINGERPRINT"):
        stunmsg.decode(trailing)


def test_wrong_cookie_decodes_only_when_asked():
    data = b"\x01\x01\x00\x00\xde\xad\xbe\xef" + TXID
    with pytest.raises(StunError, match="cookie"):
        stunmsg.decode(data)
    assert stunmsg.decode(data, cookie=False).txid == TXID


def test_first_attribute_wins_and_attributes_after_integrity_are_ignored():
    a = stunmsg.SOFTWARE.tlv("first")
    b = stunmsg.SOFTWARE.tlv("second")
    msg = stunmsg.decode(stunmsg.encode(0x0101, TXID, [a, b]))
    assert msg.get(stunmsg.SOFTWARE) == "first"
    signed = stunmsg.encode(0x0101, TXID, [stunmsg.REALM.tlv("r")], key=b"k")
    late = signed + stunmsg.LIFETIME.tlv(5)
    late = late[:2] + struct.pack("!H", len(late) - 20) + late[4:]
    msg = stunmsg.decode(with_fingerprint(late))
    assert msg.get(stunmsg.LIFETIME) is None
    assert msg.check_integrity(b"k")
    assert not msg.check_integrity(b"K")


@pytest.mark.parametrize(
    "attr,value,needle",
    [
        (stunmsg.XOR_MAPPED_ADDRESS, b"\x00\x07\x00\x01\x00\x00\x00\x00", "unknown family 7"),
        (stunmsg.XOR_MAPPED_ADDRESS, b"\x00\x01\x00\x01\x00\x00", "shorter than 4|instead of 8"),
        (stunmsg.MAPPED_ADDRESS, b"\x00\x02\x00\x01" + b"\0" * 4, "instead of 20"),
        (stunmsg.MAPPED_ADDRESS, b"\x00", "shorter than 4"),
        (stunmsg.ERROR_CODE, b"\x00\x00\x07\x00", "class 7"),
        (stunmsg.ERROR_CODE, b"\x00\x00\x04\x64", "number 100"),
        (stunmsg.ERROR_CODE, b"\x00\x00", "shorter than 4"),
        (stunmsg.REALM, b"\xff\xfe", "not UTF-8"),
        (stunmsg.REALM, b"r" * 764, "longer than 763"),
        (stunmsg.NONCE, b"n" * 800, "longer than 763"),
        (stunmsg.LIFETIME, b"\x00\x00", "instead of 4"),
        (stunmsg.REQUESTED_TRANSPORT, b"\x11", "instead of 4"),
    ],
)
def test_malformed_attribute_values_raise_stun_error(attr, value, needle):
    raw = struct.pack("!HH", attr.code, len(value)) + value + b"\0" * (-len(value) % 4)
    msg = stunmsg.decode(build(raw))
    with pytest.raises(StunError, match=needle):
        msg.get(attr)


def test_lenient_text_and_absent_attributes():
    raw = struct.pack("!HH", stunmsg.SOFTWARE.code, 2) + b"\xff\xfe\0\0"
    msg = stunmsg.decode(build(raw))
    assert msg.get(stunmsg.SOFTWARE) == "\ufffd\ufffd"
    assert msg.get(stunmsg.REALM) is None
    assert msg.error() is None
    assert stunmsg.SOFTWARE in msg and stunmsg.REALM not in msg
    assert "SOFTWARE" in repr(msg)


def test_unknown_method_is_named():
    msg = stunmsg.decode(build(b"", msg_type=stunmsg.message_type(0x0AB, Class.ERROR)))
    assert msg.name == "method 0x0ab error response"


# --- fuzzing: nothing but StunError, whatever the bytes ---------------------------

ATTRS = [
    stunmsg.MAPPED_ADDRESS,
    stunmsg.USERNAME,
    stunmsg.MESSAGE_INTEGRITY,
    stunmsg.ERROR_CODE,
    stunmsg.LIFETIME,
    stunmsg.REALM,
    stunmsg.NONCE,
    stunmsg.XOR_RELAYED_ADDRESS,
    stunmsg.REQUESTED_TRANSPORT,
    stunmsg.XOR_MAPPED_ADDRESS,
    stunmsg.SOFTWARE,
    stunmsg.FINGERPRINT,
]


def exercise(data: bytes) -> None:
    for cookie in (True, False):
        try:
            msg = stunmsg.decode(data, cookie=cookie)
        except StunError:
            continue
        repr(msg)
        msg.check_integrity(b"key")
        for attr in ATTRS:
            with contextlib.suppress(StunError):
                msg.get(attr)
    with contextlib.suppress(StunError):
        stunmsg.check_header(data)


def valid_samples() -> list[bytes]:
    key = stunmsg.long_term_key("u", "r", "p")
    coturn_like = stunmsg.encode(
        0x0113,
        TXID,
        [
            stunmsg.ERROR_CODE.tlv((401, "Unauthorized")),
            stunmsg.NONCE.tlv(b"0123456789abcdef"),
            stunmsg.REALM.tlv("jupiter.test"),
            stunmsg.SOFTWARE.tlv("Coturn-4.6.1 'Gorst'"),
        ],
    )
    allocated = stunmsg.encode(
        0x0103,
        TXID,
        [
            stunmsg.XOR_RELAYED_ADDRESS.tlv(("2001:db8::1", 50000), TXID),
            stunmsg.XOR_MAPPED_ADDRESS.tlv(("192.0.2.1", 4000), TXID),
            stunmsg.MAPPED_ADDRESS.tlv(("192.0.2.1", 4000), TXID),
            stunmsg.LIFETIME.tlv(600),
            stunmsg.USERNAME.tlv("u"),
            stunmsg.REQUESTED_TRANSPORT.tlv(17),
        ],
        key=key,
    )
    return [coturn_like, allocated, SAMPLE_IPV4_RESPONSE, SAMPLE_LONG_TERM_REQUEST]


SAMPLES = valid_samples()


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_stun_error(data):
    exercise(data)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=160))
def test_random_bodies_under_a_valid_header_raise_only_stun_error(body):
    # A consistent header gets the fuzzer past the framing checks into the
    # attribute walk and the value decoders.
    exercise(build(body))
    exercise(build(body[: len(body) // 4 * 4]))


CODES = [a.code for a in ATTRS]
tlvs = st.lists(
    st.tuples(
        st.one_of(st.sampled_from(CODES), st.integers(0, 0xFFFF)),
        st.binary(max_size=40),
        st.integers(-8, 8) | st.just(0),
    ),
    max_size=6,
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tlvs, st.sampled_from([0x0001, 0x0101, 0x0111, 0x0113, 0x0103]))
def test_random_attributes_raise_only_stun_error(attrs, msg_type):
    # Known attribute types with values of any length (and sometimes a lying
    # length field) reach every value decoder.
    body = b""
    for code, value, lie in attrs:
        n = max(0, min(0xFFFF, len(value) + lie))
        body += struct.pack("!HH", code, n) + value + b"\0" * (-len(value) % 4)
    exercise(build(body, msg_type))
    exercise(with_fingerprint(build(body, msg_type)))


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(SAMPLES),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    st.integers(0, 400),
    st.booleans(),
)
def test_mutated_valid_messages_raise_only_stun_error(sample, flips, cut, fix_length):
    data = bytearray(sample)
    for pos, value in flips:
        data[pos % len(data)] = value
    data = data[: max(0, len(data) - cut % 40)] if cut % 3 == 0 else data
    if fix_length and len(data) >= 20:
        data[2:4] = struct.pack("!H", (len(data) - 20) & 0xFFFF)
    exercise(bytes(data))


# --- cost -------------------------------------------------------------------------


def test_binding_round_trip_codec_is_cheap():
    """Generous upper bound on CPU: the probe's codec work per Binding."""
    response = stunmsg.encode(
        0x0101,
        TXID,
        [
            stunmsg.XOR_MAPPED_ADDRESS.tlv(("192.0.2.1", 4000), TXID),
            stunmsg.MAPPED_ADDRESS.tlv(("192.0.2.1", 4000), TXID),
            stunmsg.SOFTWARE.tlv("Coturn-4.6.1 'Gorst'"),
        ],
        fingerprint=True,
    )
    n = 2000
    started = time.process_time()
    for _ in range(n):
        txid = stunmsg.transaction_id()
        stunmsg.encode(0x0001, txid)
        msg = stunmsg.decode(response)
        msg.get(stunmsg.XOR_MAPPED_ADDRESS)
        msg.get(stunmsg.SOFTWARE)
    per_round_trip = (time.process_time() - started) / n
    assert per_round_trip < 100e-6, f"{per_round_trip * 1e6:.1f} us per Binding round trip"
