"""The yamux client: exact frames, the session's reactions, and a fuzzed parser."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probes import yamux
from probes.yamux import ACK, DATA, FIN, GO_AWAY, PING, RST, SYN, WINDOW_UPDATE, YamuxError


def frame(ftype: int, flags: int, sid: int, length: int) -> bytes:
    return yamux.encode(ftype, flags, sid, length)


def test_constants_match_upstream():
    # fatedier/yamux const_test.go
    assert (DATA, WINDOW_UPDATE, PING, GO_AWAY) == (0, 1, 2, 3)
    assert (SYN, ACK, FIN, RST) == (1, 2, 4, 8)
    assert yamux.HEADER_SIZE == 12
    assert yamux.FRP_WINDOW_DELTA == 6 * 1024 * 1024 - 256 * 1024 == 6029312


def test_encode_decode_upstream_vector():
    # const_test.go TestEncodeDecode: WindowUpdate, ACK|RST, stream 1234, length 4321
    raw = frame(WINDOW_UPDATE, ACK | RST, 1234, 4321)
    assert raw == bytes.fromhex("00 01 000a 000004d2 000010e1")
    assert yamux.decode(raw) == (0, WINDOW_UPDATE, ACK | RST, 1234, 4321)


@pytest.mark.parametrize(
    "raw,needle",
    [
        (b"\x00\x01\x00", "needs 12 bytes"),
        (bytes.fromhex("01 01 0000 00000001 00000000"), "version byte is 1"),
        (bytes.fromhex("00 04 0000 00000001 00000000"), "frame type 4"),
    ],
)
def test_decode_rejects(raw, needle):
    with pytest.raises(YamuxError, match=needle):
        yamux.decode(raw)


def test_open_is_syn_window_update_then_data():
    s = yamux.ClientSession()
    out = s.open(b"hello")
    # OpenStream: WindowUpdate SYN stream 1 with frp's delta; then one Data frame.
    assert (
        out == bytes.fromhex("00 01 0001 00000001 005c0000 00 00 0000 00000001 00000005") + b"hello"
    )
    assert s.recv_window == 6 * 1024 * 1024


def test_close_sends_fin_then_go_away():
    s = yamux.ClientSession()
    assert s.close() == frame(WINDOW_UPDATE, FIN, 1, 0) + frame(GO_AWAY, 0, 0, 0)
    s.reset = True
    assert s.close() == frame(GO_AWAY, 0, 0, 0)


def frps_reply(payload: bytes) -> bytes:
    """What frps sends: AcceptStream's ACK, then the reply as a Data frame."""
    return (
        frame(WINDOW_UPDATE, ACK, 1, yamux.FRP_WINDOW_DELTA)
        + frame(DATA, 0, 1, len(payload))
        + payload
    )


def test_feed_collects_stream_data_and_ack():
    s = yamux.ClientSession()
    s.open(b"x")
    assert s.feed(frps_reply(b"answer")) == b""
    assert s.acked and bytes(s.inbound) == b"answer"
    assert s.send_window == 256 * 1024 - 1 + yamux.FRP_WINDOW_DELTA


def test_feed_byte_by_byte_gives_the_same_result():
    s = yamux.ClientSession()
    s.open()
    wire = frps_reply(b"split me") + frame(PING, SYN, 0, 7) + frame(WINDOW_UPDATE, FIN, 1, 0)
    replies = b"".join(s.feed(wire[i : i + 1]) for i in range(len(wire)))
    assert bytes(s.inbound) == b"split me"
    assert replies == frame(PING, ACK, 0, 7)
    assert s.remote_fin and s.pings == 1


def test_ping_syn_is_answered_with_ack_and_same_opaque():
    s = yamux.ClientSession()
    assert s.feed(frame(PING, SYN, 0, 0xDEADBEEF)) == frame(PING, ACK, 0, 0xDEADBEEF)
    assert s.feed(frame(PING, ACK, 0, 3)) == b""  # an answer to a Ping we never sent


def test_go_away_rst_and_fin_are_recorded():
    s = yamux.ClientSession()
    s.feed(frame(GO_AWAY, 0, 0, yamux.GO_AWAY_PROTOCOL_ERROR))
    assert s.go_away == 1
    s.feed(frame(WINDOW_UPDATE, RST, 1, 0))
    assert s.reset
    s2 = yamux.ClientSession()
    s2.feed(frame(DATA, FIN, 1, 0))
    assert s2.remote_fin


def test_other_streams_are_drained_without_allocating():
    s = yamux.ClientSession()
    s.open()
    # A 4 GiB Data frame for a stream we do not have: consumed as it comes, never stored.
    s.feed(frame(DATA, 0, 3, 0xFFFFFFFF) + b"z" * 1000)
    assert s.inbound == b"" and s._left == 0xFFFFFFFF - 1000


def test_server_opened_stream_is_an_error():
    s = yamux.ClientSession()
    with pytest.raises(YamuxError, match="opened stream 2"):
        s.feed(frame(WINDOW_UPDATE, SYN, 2, 0))


def test_bad_version_fails_on_the_first_byte():
    s = yamux.ClientSession()
    with pytest.raises(YamuxError, match="version byte is 72"):
        s.feed(b"H")
    with pytest.raises(YamuxError, match="frame type 9"):
        yamux.ClientSession().feed(b"\x00\x09")


def test_data_beyond_the_receive_window_is_an_error():
    s = yamux.ClientSession()  # not opened: the window is the initial 256 KiB
    with pytest.raises(YamuxError, match="exceeds the 262144-byte receive window"):
        s.feed(frame(DATA, 0, 1, 256 * 1024 + 1))


def test_inbound_is_capped():
    s = yamux.ClientSession(max_inbound=16)
    s.open()
    with pytest.raises(YamuxError, match="more than 16 bytes"):
        s.feed(frame(DATA, 0, 1, 17) + b"a" * 17)


def test_frame_count_is_capped():
    s = yamux.ClientSession(max_frames=10)
    with pytest.raises(YamuxError, match="more than 10 yamux frames"):
        s.feed(frame(PING, ACK, 0, 0) * 11)


def test_open_refuses_a_message_beyond_the_send_window():
    with pytest.raises(ValueError):
        yamux.ClientSession().open(b"x" * (256 * 1024 + 1))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=12))
def test_fuzz_random_bytes_only_raise_yamux_error(chunks):
    s = yamux.ClientSession(max_inbound=4096)
    s.open(b"login")
    try:
        for chunk in chunks:
            s.feed(chunk)
    except YamuxError:
        return
    assert len(s.inbound) <= 4096


_frames = st.builds(
    frame,
    st.integers(0, 3),
    st.integers(0, 15),
    st.sampled_from([0, 1, 2, 3, 0xFFFFFFFF]),
    st.one_of(st.integers(0, 64), st.sampled_from([2**31, 0xFFFFFFFF])),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_frames, st.binary(max_size=16)), max_size=16), st.integers(1, 13))
def test_fuzz_plausible_frames_only_raise_yamux_error(parts, step):
    s = yamux.ClientSession(max_inbound=4096)
    s.open()
    wire = b"".join(parts)
    try:
        for i in range(0, len(wire), step):
            reply = s.feed(wire[i : i + step])
            assert len(reply) % 12 == 0
    except YamuxError:
        return
    assert len(s.inbound) <= 4096
