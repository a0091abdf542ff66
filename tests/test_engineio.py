import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probes import engineio as eio
from probes.engineio import EngineIOError
from probes.result import ProbeFailure, Reason

OPEN_V4 = (
    '0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],'
    '"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}'
)
# What engine.io 3.6 / Socket.IO 2.5 answers to a polling handshake (captured).
HANDSHAKE_V3 = (
    '97:0{"sid":"J1sRoPNOSqfGiuuPAAAA","upgrades":["websocket"],'
    '"pingInterval":25000,"pingTimeout":20000}2:40'
)


def test_detect_version():
    assert eio.detect_version(OPEN_V4) == 4
    assert eio.detect_version(HANDSHAKE_V3) == 3
    assert eio.detect_version("<!DOCTYPE html>") is None
    assert eio.detect_version('{"code":5}') is None
    assert eio.detect_version("1:1") is None


def test_v4_payload_round_trip():
    packets = ["4hello", "2", "4world", "bAQIDBA=="]
    body = eio.encode_payload(packets, 4)
    assert body == "4hello\x1e2\x1e4world\x1ebAQIDBA=="
    assert eio.decode_payload(body, 4) == packets


def test_v3_payload_matches_engine_io_parser_2():
    assert eio.decode_payload_v3(HANDSHAKE_V3)[1] == "40"
    # JavaScript counts UTF-16 code units: the euro sign is 1, an emoji 2.
    assert eio.encode_payload(["4€", "6"], 3) == "2:4€1:6"
    assert eio.encode_payload(["4😀"], 3) == "3:4😀"
    assert eio.decode_payload_v3("3:4😀1:6") == ["4😀", "6"]
    assert eio.decode_payload_v3("0:1:6") == ["6"]  # empty packets are skipped


@pytest.mark.parametrize(
    "body,needle",
    [
        ("97:0{", "claims 97 characters but only 2 follow"),
        ("1000000000000:4x", "absurd length prefix"),
        ("x:4", "expected '<length>:'"),
        ("3:4ab2", "expected '<length>:'"),
        ("2:9x", "unknown Engine.IO packet type"),
    ],
)
def test_v3_payload_errors(body, needle):
    with pytest.raises(EngineIOError) as err:
        eio.decode_payload_v3(body)
    assert needle in err.value.detail
    assert err.value.reason == Reason.PROTOCOL_ERROR


def test_truncated_bodies_drop_the_partial_packet():
    assert eio.decode_payload_v3("2:4012:0{", truncated=True) == ["40"]
    assert eio.decode_payload_v3("2:4012", truncated=True) == ["40"]
    assert eio.decode_payload_v4('40\x1e42["ev', truncated=True) == ["40"]


def test_v4_payload_errors():
    with pytest.raises(EngineIOError, match="empty"):
        eio.decode_payload_v4("40\x1e\x1e2")
    with pytest.raises(EngineIOError, match="more than"):
        eio.decode_payload_v4("\x1e".join(["6"] * 1000))


def test_parse_open():
    hs = eio.parse_open(OPEN_V4)
    assert hs.sid == "lv_VI97HAXpY6yYWAAAC"
    assert hs.upgrades == ("websocket",)
    assert (hs.ping_interval, hs.ping_timeout, hs.max_payload) == (25000, 20000, 1000000)
    old = eio.parse_open('0{"sid":"a","upgrades":[],"pingTimeout":60000}')
    assert old.max_payload is None and old.ping_interval is None and old.upgrades == ()


@pytest.mark.parametrize(
    "packet,needle",
    [
        ("0{", "not JSON"),
        ("0[]", "not a JSON object"),
        ('0{"sid":""}', "no 'sid'"),
        ('0{"sid":7}', "no 'sid'"),
        ('4{"sid":"x"}', "expected an Engine.IO open packet"),
    ],
)
def test_parse_open_errors(packet, needle):
    with pytest.raises(EngineIOError, match=needle):
        eio.parse_open(packet)


def test_socketio_packets():
    p = eio.parse_sio('0{"sid":"abc"}')
    assert (p.type, p.nsp, p.data) == (eio.SIO_CONNECT, "/", '{"sid":"abc"}')
    assert eio.connect_sid(p) == "abc"
    p = eio.parse_sio('0/admin,{"sid":"abc","pid":"x"}')
    assert p.nsp == "/admin" and eio.connect_sid(p) == "abc"
    assert eio.parse_sio("0/admin").nsp == "/admin"  # socket.io-parser 2 omitted the comma
    assert eio.connect_sid(eio.parse_sio("0")) is None  # protocol v4's bare CONNECT
    p = eio.parse_sio('2/chat,12["msg",1]')
    assert (p.type, p.nsp, p.data) == (eio.SIO_EVENT, "/chat", '["msg",1]')
    p = eio.parse_sio('51-/chat,["bin",{"_placeholder":true,"num":0}]')
    assert p.type == eio.SIO_BINARY_EVENT and p.nsp == "/chat"
    assert eio.namespace_name("/admin?token=x") == "/admin"


@pytest.mark.parametrize(
    "packet,message",
    [
        ('4{"message":"Not authorized"}', "Not authorized"),  # protocol v5
        ('4"Not authorized"', "Not authorized"),  # protocol v4 (Socket.IO 2)
        ('4/admin,"Unable to connect"', "Unable to connect"),  # python-socketio
        ('4{"message":"Invalid namespace","data":{"x":1}}', 'Invalid namespace (data: {"x": 1})'),
        ("4oops", "oops"),
        ("4", "(no message)"),
    ],
)
def test_connect_error_messages(packet, message):
    assert eio.error_message(eio.parse_sio(packet)) == message


def test_connect_packets():
    assert eio.connect_packet("/", 4, None, "") == "40"
    assert eio.connect_packet("/", 4, '{"token":"t"}', "") == '40{"token":"t"}'
    assert eio.connect_packet("/admin", 4, '{"token":"t"}', "") == '40/admin,{"token":"t"}'
    assert eio.connect_packet("/admin", 3, None, "token=t") == "40/admin?token=t,"
    assert eio.connect_packet("/admin", 3, None, "") == "40/admin,"
    assert eio.disconnect_packet("/") == "41"
    assert eio.disconnect_packet("/admin") == "41/admin,"


@pytest.mark.parametrize("bad", ["", "7", "x", "5-", "5x-"])
def test_parse_sio_errors(bad):
    with pytest.raises(EngineIOError):
        eio.parse_sio(bad)


def test_connect_sid_errors():
    with pytest.raises(EngineIOError, match="not JSON"):
        eio.connect_sid(eio.parse_sio("0{nope"))
    with pytest.raises(EngineIOError, match="without a 'sid'"):
        eio.connect_sid(eio.parse_sio('0{"id":1}'))


def test_engineio_error_is_a_probe_failure():
    assert issubclass(EngineIOError, ProbeFailure)


# --- Properties: decoders raise nothing but EngineIOError --------------------------------

texts = st.text(alphabet=st.sampled_from('0123456789:{}"b,/-\x1e€😀x'), max_size=80) | st.text(
    max_size=80
)


@settings(max_examples=400, deadline=None)
@given(texts, st.booleans())
def test_payload_decoders_only_raise_their_error(body, truncated):
    for decode in (eio.decode_payload_v3, eio.decode_payload_v4):
        try:
            packets = decode(body, truncated=truncated)
        except EngineIOError:
            continue
        assert all(p and p[0] in "0123456b" for p in packets)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=20).map(lambda s: "4" + s), max_size=8))
def test_v3_encode_decode_round_trip(packets):
    assert eio.decode_payload_v3(eio.encode_payload(packets, 3)) == packets


@settings(max_examples=300, deadline=None)
@given(texts)
def test_packet_parsers_only_raise_their_error(text):
    parsers = (
        eio.parse_open,
        eio.parse_sio,
        lambda t: eio.connect_sid(eio.parse_sio(t)),
        lambda t: eio.error_message(eio.parse_sio(t)),
    )
    for parse in parsers:
        with contextlib.suppress(EngineIOError):
            parse(text)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=4))
def test_open_packet_from_any_object(doc):
    doc = {"sid": "s", **doc}
    if not isinstance(doc.get("sid"), str) or not doc["sid"]:
        return
    hs = eio.parse_open("0" + json.dumps(doc))
    assert hs.sid == doc["sid"]
