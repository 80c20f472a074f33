"""Property tests of the pairing codecs: round trips, and garbage raises only ProtocolError."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pairing_helpers import TICKET, make_pair

from iroh_pair.protocol.code import PairingCode
from iroh_pair.protocol import wire
from iroh_pair.protocol.device import FIELD_LIMITS, DeviceInfo
from iroh_pair.protocol.constants import MAX_MESSAGE
from iroh_pair.protocol.envelope import FrameBuffer, decode_header, encode_frame, encode_header
from iroh_pair.errors import ProtocolError
from iroh_pair.protocol.constants import RejectCode
from iroh_pair.protocol.offer import PairingOffer

SETTINGS = settings(max_examples=150, deadline=None)

b16 = st.binary(min_size=16, max_size=16)
b32 = st.binary(min_size=32, max_size=32)
sealed = st.binary(min_size=wire.MIN_SEALED, max_size=wire.MAX_SEALED)


def spake(side: bytes) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=32, max_size=32).map(lambda b: side + b)


def short_text(max_bytes: int) -> st.SearchStrategy[str]:
    return st.text(max_size=max_bytes).filter(lambda s: len(s.encode()) <= max_bytes)


messages: st.SearchStrategy[wire.Message] = st.one_of(
    st.builds(wire.Hello, b16, b32, spake(b"A"), b32),
    st.builds(wire.Reply, b32, spake(b"B"), b32, b32),
    st.builds(wire.Confirm, b32, b32, sealed),
    st.builds(wire.Complete, sealed),
    st.builds(wire.Accept, b32),
    st.builds(wire.Reject, st.integers(0, 0xFFFF), short_text(255)),
)

_cc_free = st.characters(blacklist_categories=("Cc", "Cs"))


def _field(name: str) -> st.SearchStrategy[str]:
    lo, hi = FIELD_LIMITS[name]
    if name == "device_type":
        return st.text("abcxyz019._-", min_size=lo, max_size=hi)
    return st.text(_cc_free, min_size=lo, max_size=hi).filter(
        lambda s: lo <= len(s.encode()) <= hi
    )


infos = st.builds(
    DeviceInfo, _field("name"), _field("device_type"), _field("os"), _field("app_version")
)


@SETTINGS
@given(messages)
def test_message_roundtrip(msg: wire.Message) -> None:
    body = wire.encode(msg)
    assert wire.decode(body) == msg
    assert wire.encode(wire.decode(body)) == body


@SETTINGS
@given(infos)
def test_device_info_roundtrip(info: DeviceInfo) -> None:
    assert DeviceInfo.decode(info.encode()) == info


def test_exact_lengths() -> None:
    z = bytes(32)
    hello = wire.encode(wire.Hello(bytes(16), z, b"A" + z, z))
    reply = wire.encode(wire.Reply(z, b"B" + z, z, z))
    confirm = wire.encode(wire.Confirm(z, z, bytes(16)))
    assert (len(hello), len(reply), len(confirm)) == (114, 130, 67 + 16)
    assert len(wire.encode(wire.Complete(bytes(212)))) == 3 + 212
    assert len(wire.encode(wire.Accept(z))) == 33
    for body in (hello, reply, confirm, wire.encode(wire.Accept(z))):
        for bad in (body[:-1], body + b"\x00"):
            with pytest.raises(ProtocolError) as ei:
                wire.decode(bad)
            assert ei.value.code == RejectCode.MALFORMED
    # side bytes: a Hello must carry 'A', a Reply 'B'
    for bad in (hello[:49] + b"B" + hello[50:], reply[:33] + b"A" + reply[34:]):
        with pytest.raises(ProtocolError):
            wire.decode(bad)
    with pytest.raises(ProtocolError):  # sealed info shorter than its tag
        wire.decode(confirm[:65] + bytes([0, 15]) + bytes(15))
    with pytest.raises(ProtocolError):
        wire.decode(b"\x06" + z)  # no such type in version 2


@SETTINGS
@given(st.binary(max_size=300))
def test_garbage_decodes_raise_only_protocol_error(data: bytes) -> None:
    for decoder in (wire.decode, DeviceInfo.decode, decode_header):
        try:
            decoder(data)
        except ProtocolError as e:
            assert isinstance(e.code, RejectCode)


@SETTINGS
@given(messages, st.integers(0, 120), st.integers(0, 255))
def test_mutated_messages_raise_only_protocol_error(msg: wire.Message, pos: int, b: int) -> None:
    body = bytearray(wire.encode(msg))
    body[pos % len(body)] = b
    for cut in (bytes(body), bytes(body[: pos % len(body)]), bytes(body) + b"\x00"):
        try:
            out = wire.decode(cut)
        except ProtocolError:
            continue
        assert wire.encode(out) == cut  # anything accepted is canonical


def test_device_info_limits() -> None:
    with pytest.raises(ValueError):
        DeviceInfo("")
    with pytest.raises(ValueError):
        DeviceInfo("x" * 65)
    with pytest.raises(ValueError):
        DeviceInfo("ok", "Desktop")
    with pytest.raises(ValueError):
        DeviceInfo("bad\nname")
    assert DeviceInfo("é" * 32).encode()[0] == 64


def test_envelope_and_frames() -> None:
    assert encode_header("pair") == b"\x01\x04pair"
    for bad in ("", "Pair", "x" * 33, "a b"):
        with pytest.raises(ValueError):
            encode_header(bad)
    for bad_hdr in (b"\x02\x04pair", b"\x01\x00", b"\x01\x21" + b"a" * 33, b"\x01\x04pa",
                    b"\x01\x04PAIR", b"\x01\x02\xff\xfe"):
        with pytest.raises(ProtocolError):
            decode_header(bad_hdr)
    with pytest.raises(ProtocolError) as ei:
        encode_frame(bytes(MAX_MESSAGE + 1))
    assert ei.value.code == RejectCode.TOO_LARGE
    fb = FrameBuffer()
    data = encode_frame(b"one") + encode_frame(b"") + encode_frame(b"three")
    out = [body for i in range(len(data)) for body in fb.feed(data[i : i + 1])]
    assert out == [b"one", b"", b"three"] and fb.pending == 0
    with pytest.raises(ProtocolError):
        FrameBuffer().feed((MAX_MESSAGE + 1).to_bytes(4, "big"))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=4), st.booleans())
def test_state_machines_on_garbage(bodies: list[bytes], joiner_side: bool) -> None:
    code = PairingCode(("legal", "winner", "thank"), bytes(16), TICKET)
    offer = PairingOffer.create(code, now=0.0)
    j, h, _ = make_pair(code, offer)
    if joiner_side:
        j.start()
    for body in bodies:
        try:
            ev = j.receive(body) if joiner_side else h.receive(body, 0.0)
        except ProtocolError as e:
            assert e.code == RejectCode.UNEXPECTED  # only once finished
            assert (j if joiner_side else h).is_finished
            continue
        assert all(type(e).__name__ in ("SendMessage", "Failed", "Paired", "SasReady")
                   for e in ev)
    assert not offer.used


def test_random_reply_to_joiner() -> None:
    code = PairingCode.generate(TICKET)
    j, _, conn = make_pair(code, PairingOffer.create(code, now=0.0))
    j.start()
    body = wire.encode(
        wire.Reply(conn.host_id, b"B" + os.urandom(32), os.urandom(32), os.urandom(32))
    )
    (*_, last) = j.receive(body)
    assert type(last).__name__ == "Failed"
