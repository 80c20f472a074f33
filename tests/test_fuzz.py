"""Fuzzing of every decoder that reads a peer's bytes (issue 31), with hypothesis and
structured mutation: each case starts from valid encodings and applies up to six mutations
(truncate, extend, flip a bit, set an interesting byte, insert, delete, duplicate a segment,
splice in a piece of another valid encoding, set a length or type field to a boundary value).

Properties, per decoder:

* only the protocol's own typed errors come out (``ProtocolError``, ``MessageRejected``,
  ``InvalidCode`` subclasses, ``InvalidTicket``), never another exception (a native panic
  included);
* valid encodings round-trip, and whatever decodes re-encodes to exactly the input (the
  encodings are canonical) or parses back to the same value (codes, tickets);
* nothing is buffered past its limit (:class:`FrameBuffer`), and a sealed message opens only if
  it is byte for byte one the peer sealed.

Cases per decoder: ``HYPOTHESIS_PROFILE`` selects ``ci`` (500, the default, what CI runs),
``dev`` (100) or ``long`` (20,000, what ``scripts/fuzz`` runs); ``IROH_PAIR_FUZZ_CASES``
overrides the number. The explicit ``@example``s are regression cases.
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from iroh_pair import EndpointAddr, EndpointId, SecretKey
from iroh_pair.protocol.code import PairingCode, decode_tag, encode_tag
from iroh_pair.errors import InvalidCode, InvalidTicket, MessageRejected, ProtocolError
from iroh_pair.protocol.kdf import SessionKeys
from iroh_pair.protocol.lan import LanCode, looks_spoken
from iroh_pair.protocol.messaging import MessageChannel
from iroh_pair.protocol import wire
from iroh_pair.protocol.device import DeviceInfo
from iroh_pair.protocol.constants import MAX_MESSAGE
from iroh_pair.protocol.envelope import FrameBuffer, decode_header, encode_frame, encode_header
from iroh_pair.protocol.offer import PairingOffer
from iroh_pair.protocol.pairing import Event, Failed, HostHandshake, JoinerHandshake
from iroh_pair.protocol.words import wordlist

from pairing_helpers import HOST_INFO, JOINER_INFO, sas_ready, sends

# ------------------------------------------------------------------------------------------
# how many cases

PROFILES = {"dev": 100, "ci": 500, "long": 20_000}
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
CASES = int(os.environ.get("IROH_PAIR_FUZZ_CASES", 0)) or PROFILES.get(PROFILE, PROFILES["ci"])

FUZZ = settings(
    max_examples=CASES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)

T = TypeVar("T")


def only(allowed: tuple[type[BaseException], ...], fn: Callable[..., T], *args: Any) -> T | None:
    """``fn(*args)``, or ``None`` when it raised one of the ``allowed`` typed errors; any other
    exception (BaseException too: a native panic is one) fails the property."""
    try:
        return fn(*args)
    except allowed:
        return None
    except BaseException as e:  # noqa: BLE001 - that is the point
        raise AssertionError(f"{fn.__qualname__} raised {type(e).__name__}: {e!r}") from e


# ------------------------------------------------------------------------------------------
# structured mutation of bytes

INTERESTING_BYTES = [0x00, 0x01, 0x02, 0x05, 0x1F, 0x20, 0x41, 0x42, 0x7E, 0x7F, 0x80, 0xFE, 0xFF]
INTERESTING_INTS = [0, 1, 2, 15, 16, 17, 31, 32, 33, 64, 127, 128, 196, 211, 212, 213, 255, 256,
                    0x7FFF, 0xFFFF, 0x10000, MAX_MESSAGE - 1, MAX_MESSAGE, MAX_MESSAGE + 1,
                    2**31 - 1, 2**32 - 1]

#: A function from a (mutated) encoding to its length/type fields: (offset, width in bytes) or
#: (offset, width, how): how = "rest" (a length of everything after it) or "next" (a length of
#: the bytes right after it). Setting such a length also resizes what it counts, so that the
#: decoder gets past its length checks with the out-of-range value.
Field = tuple[int, int] | tuple[int, int, str]
Fields = Callable[[bytes], list[Field]]


def no_fields(_: bytes) -> list[Field]:
    return []


def _resize(draw: st.DrawFn, content: bytes, size: int) -> bytes:
    if size <= len(content):
        return content[:size]
    pattern = draw(st.binary(min_size=1, max_size=8))
    return content + (pattern * (size // len(pattern) + 1))[: size - len(content)]


@st.composite
def mutated(draw: st.DrawFn, seeds: st.SearchStrategy[bytes], fields: Fields = no_fields,
            max_ops: int = 6) -> bytes:
    """A valid encoding from ``seeds`` with 0..``max_ops`` structured mutations."""
    data = bytearray(draw(seeds))
    for _ in range(draw(st.integers(0, max_ops))):
        op = draw(st.sampled_from(["truncate", "extend", "flip", "byte", "insert", "delete",
                                   "duplicate", "splice", "field", "field", "int"]))
        n = len(data)
        pos = draw(st.integers(0, n))
        if op == "truncate":
            del data[pos:]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=64))
        elif op == "flip" and n:
            data[min(pos, n - 1)] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and n:
            data[min(pos, n - 1)] = draw(st.sampled_from(INTERESTING_BYTES) | st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        elif op == "duplicate":
            data[pos:pos] = data[pos:pos + draw(st.integers(1, 40))]
        elif op == "splice":
            other = draw(seeds)
            a = draw(st.integers(0, len(other)))
            b = draw(st.integers(a, len(other)))
            data[pos:pos + draw(st.integers(0, 40))] = other[a:b]
        elif op == "field":
            fs = [f for f in fields(bytes(data)) if f[0] + f[1] <= len(data)]
            if fs:
                field = draw(st.sampled_from(fs))
                off, width = field[0], field[1]
                how = field[2] if len(field) == 3 else "raw"
                value = draw(st.sampled_from(INTERESTING_INTS) | st.integers(0, 2 ** (8 * width) - 1))
                value %= 2 ** (8 * width)
                if how != "raw" and draw(st.booleans()):
                    value = min(value, MAX_MESSAGE + 64)
                    end = off + width
                    old = int.from_bytes(data[off:end], "big")
                    stop = len(data) if how == "rest" else min(len(data), end + old)
                    data[end:stop] = _resize(draw, bytes(data[end:stop]), value)
                data[off:off + width] = value.to_bytes(width, "big")
        elif op == "int" and n:
            width = draw(st.sampled_from([1, 2, 4, 8]))
            value = draw(st.sampled_from(INTERESTING_INTS)) % 2 ** (8 * width)
            data[pos:pos + width] = value.to_bytes(width, "big")
    return bytes(data)


# ------------------------------------------------------------------------------------------
# envelope header and framing (protocol/envelope.py)

kinds = st.from_regex(r"[a-z0-9._-]{1,32}", fullmatch=True)
headers = kinds.map(encode_header)


@FUZZ
@given(mutated(st.tuples(headers, st.binary(max_size=40)).map(lambda t: t[0] + t[1]),
               lambda d: [(0, 1), (1, 1)]))
@example(b"")
@example(b"\x01")
@example(b"\x01\x00")
@example(b"\x01\x21" + b"a" * 33)
@example(b"\x01\x05pair\xff")
@example(b"\x01\x04PAIR")
@example(b"\x02\x04pair")
def test_fuzz_envelope_header(data: bytes) -> None:
    out = only((ProtocolError,), decode_header, data)
    if out is not None:
        kind, used = out
        assert data[:used] == encode_header(kind)  # canonical: the bytes are exactly a header


@FUZZ
@given(mutated(st.lists(st.binary(max_size=300), min_size=1, max_size=4).map(
               lambda bodies: b"".join(encode_frame(b) for b in bodies)),
               lambda d: [(0, 4, "next")]),
       st.lists(st.integers(0, 2000), max_size=6), st.sampled_from([64, 300, MAX_MESSAGE]))
@example(b"\xff\xff\xff\xff", [], MAX_MESSAGE)
@example(b"\x00\x00\x01\x2d" + b"x" * 301, [2], 300)
def test_fuzz_frame_buffer(data: bytes, cuts: list[int], limit: int) -> None:
    """Frames come out the same however the bytes are split; a length over the limit is
    ProtocolError(TOO_LARGE); what stays buffered never exceeds one frame at the limit."""

    def feed_all(chunks: list[bytes]) -> tuple[list[bytes], int] | None:
        fb = FrameBuffer(limit)
        frames: list[bytes] = []
        for c in chunks:
            frames += fb.feed(c)
            assert fb.pending < 4 + limit
        return frames, fb.pending

    whole = only((ProtocolError,), feed_all, [data])
    points = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    split = only((ProtocolError,), feed_all, pieces)
    assert whole == split
    if whole is not None:
        frames, pending = whole
        assert all(len(f) <= limit for f in frames)
        assert b"".join(encode_frame(f) for f in frames) == data[: len(data) - pending]


# ------------------------------------------------------------------------------------------
# device info (protocol/device.py)

_text_chars = st.characters(blacklist_categories=("Cc", "Cs"))


def _fits(lo: int, hi: int) -> Callable[[str], bool]:
    return lambda s: lo <= len(s.encode()) <= hi


infos = st.builds(
    DeviceInfo,
    name=st.text(_text_chars, min_size=1, max_size=64).filter(_fits(1, 64)),
    device_type=st.from_regex(r"[a-z0-9._-]{1,32}", fullmatch=True),
    os=st.text(_text_chars, max_size=64).filter(_fits(0, 64)),
    app_version=st.text(_text_chars, max_size=32).filter(_fits(0, 32)),
)


def info_fields(d: bytes) -> list[Field]:
    out: list[Field] = []
    pos = 0
    for _ in range(4):
        if pos >= len(d):
            break
        out.append((pos, 1, "next"))
        pos += 1 + d[pos]
    return out


@FUZZ
@given(mutated(infos.map(DeviceInfo.encode), info_fields))
@example(b"\x01a\x01a\x00\x00")
@example(b"\x01\x1b\x05other\x00\x00")  # ESC in the name: MALFORMED
@example(b"\x02\xc3\x28\x05other\x00\x00")  # invalid UTF-8
@example(b"\x01a\x05OTHER\x00\x00")
def test_fuzz_device_info(data: bytes) -> None:
    info = only((ProtocolError,), DeviceInfo.decode, data)
    if info is not None:
        assert info.encode() == data


@FUZZ
@given(infos)
def test_device_info_round_trip(info: DeviceInfo) -> None:
    assert DeviceInfo.decode(info.encode()) == info


# ------------------------------------------------------------------------------------------
# pairing messages, version 2 (protocol/wire.py)

b16, b32 = st.binary(min_size=16, max_size=16), st.binary(min_size=32, max_size=32)
sealed = st.binary(min_size=wire.MIN_SEALED, max_size=wire.MAX_SEALED)
spake_a = b32.map(lambda b: bytes([wire.SIDE_A]) + b)
spake_b = b32.map(lambda b: bytes([wire.SIDE_B]) + b)
reject_text = st.text(max_size=80).map(lambda t: t.encode()[:255].decode("utf-8", "ignore"))

messages: st.SearchStrategy[wire.Message] = st.one_of(
    st.builds(wire.Hello, b16, b32, spake_a, b32),
    st.builds(wire.Reply, b32, spake_b, b32, b32),
    st.builds(wire.Confirm, b32, b32, sealed),
    st.builds(wire.Complete, sealed),
    st.builds(wire.Accept, b32),
    st.builds(wire.Reject, st.integers(0, 0xFFFF), reject_text),
)
encodings = messages.map(wire.encode)


def wire_fields(d: bytes) -> list[Field]:
    """The type byte, and the length field of the message type the bytes claim to be."""
    out: list[Field] = [(0, 1)]
    t = d[0] if d else -1
    if t == wire.MsgType.CONFIRM:
        out.append((1 + 32 + 32, 2, "rest"))
    elif t == wire.MsgType.COMPLETE:
        out.append((1, 2, "rest"))
    elif t == wire.MsgType.REJECT:
        out += [(1, 2), (3, 1, "rest")]
    elif t == wire.MsgType.HELLO:
        out.append((1 + 16 + 32, 1))  # side byte
    elif t == wire.MsgType.REPLY:
        out.append((1 + 32, 1))
    return out


@FUZZ
@given(mutated(encodings, wire_fields))
@example(b"")
@example(b"\x05")
@example(b"\x05" + bytes(33))
@example(b"\x7f\x00\x0a\x05\xff\xfe\xfd\xfc\xfb")  # invalid UTF-8 in a Reject
@example(b"\x7f\x00\x0a\x01\x1b")  # ESC is valid UTF-8: decoded, shown sanitised by the CLI
@example(b"\x04\x00\x0f" + bytes(15))
@example(b"\x04\xff\xff" + bytes(16))
@example(b"\x06" + bytes(32))
@example(bytes([1]) * (MAX_MESSAGE + 1))
def test_fuzz_pairing_messages(data: bytes) -> None:
    msg = only((ProtocolError,), wire.decode, data)
    if msg is not None:
        assert wire.encode(msg) == data  # canonical


@FUZZ
@given(messages)
def test_pairing_messages_round_trip(msg: wire.Message) -> None:
    assert wire.decode(wire.encode(msg)) == msg


# ---- the same bytes through the state machines (what the node feeds them)

_FUZZ_CODE = PairingCode(("legal", "winner", "thank"), bytes(range(16)), "endpointfuzzticket")
_J_ID, _H_ID, _CB_PAIR = bytes([1]) * 32, bytes([2]) * 32, bytes([3]) * 32
Machine = JoinerHandshake | HostHandshake


def _seeded(seed: int) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return rng.randbytes


def _at(stop: str) -> tuple[Machine, bytes]:
    """A real in-memory handshake (fixed ids, channel binding and entropy, so every call gives
    the same messages), stopped where ``stop`` reads a peer message: the machine in that state
    and the valid message it expects there. Built afresh for every case (the native SPAKE2
    state cannot be copied)."""
    j = JoinerHandshake(_FUZZ_CODE, joiner_id=_J_ID, host_id=_H_ID, channel_binding=_CB_PAIR,
                        joiner_info=JOINER_INFO, entropy=_seeded(1))
    h = HostHandshake(PairingOffer.create(_FUZZ_CODE, now=0.0), host_id=_H_ID, remote_id=_J_ID,
                      channel_binding=_CB_PAIR, host_info=HOST_INFO, entropy=_seeded(2))
    hello = j.start()
    if stop == "host:hello":
        return h, hello
    reply = sends(h.receive(hello, 0.0))[0]
    if stop == "joiner:reply":
        return j, reply
    ev = j.receive(reply)
    assert sas_ready(ev) is not None
    confirm = sends(ev)[0]
    if stop == "host:confirm":
        return h, confirm
    assert sas_ready(h.receive(confirm, 0.0)) is not None
    complete = sends(h.approve(0.0))[0]
    if stop == "joiner:complete":
        return j, complete
    accept = sends(j.approve() + j.receive(complete))[0]
    assert stop == "host:accept"
    return h, accept


STATE_NAMES = ["host:hello", "joiner:reply", "host:confirm", "joiner:complete", "host:accept"]
EXPECTED = {name: _at(name)[1] for name in STATE_NAMES}
assert EXPECTED == {name: _at(name)[1] for name in STATE_NAMES}  # deterministic
state_names = st.sampled_from(STATE_NAMES)


@st.composite
def state_and_message(draw: st.DrawFn) -> tuple[str, bytes]:
    name = draw(state_names)
    valid = EXPECTED[name]
    seeds = st.sampled_from([valid]) | encodings  # the expected message, or any other valid one
    return name, draw(mutated(seeds, wire_fields))


@FUZZ
@given(state_and_message())
def test_fuzz_state_machines(case: tuple[str, bytes]) -> None:
    """Whatever arrives, a machine answers with events (a Reject and Failed for bad input),
    never an exception."""
    name, body = case
    machine, _ = _at(name)
    if isinstance(machine, HostHandshake):
        events: list[Event] = only((), machine.receive, body, 0.0) or []
    else:
        events = only((), machine.receive, body) or []
    if body == EXPECTED[name]:
        assert not any(isinstance(e, Failed) for e in events)
    elif name != "host:hello":  # (a changed SPAKE2 point in a Hello is found out at Confirm)
        # past the Hello every message is authenticated: a changed one never advances
        assert any(isinstance(e, Failed) for e in events), (name, events)


# ------------------------------------------------------------------------------------------
# messaging: sealed messages (messaging.py, MessageChannel.open)

A_ID, B_ID = os.urandom(32), os.urandom(32)
_K1, _K2, _CB = os.urandom(32), os.urandom(32), os.urandom(32)
REQUEST_ID = os.urandom(16)


def channels() -> tuple[MessageChannel, MessageChannel]:
    a = MessageChannel(A_ID, B_ID, SessionKeys(send=_K1, receive=_K2), _CB, max_plaintext=1024)
    b = MessageChannel(B_ID, A_ID, SessionKeys(send=_K2, receive=_K1), _CB, max_plaintext=1024)
    return a, b


@st.composite
def sealed_case(draw: st.DrawFn) -> tuple[list[bytes], list[bytes], bytes, bool]:
    """Messages the peer sealed (in order), and a mutation of one of them."""
    reply = draw(st.booleans())
    plaintexts = draw(st.lists(st.binary(max_size=120), min_size=1, max_size=4))
    a, _ = channels()
    kw = {"reply_to": REQUEST_ID} if reply else {}
    originals = [a.seal("msg", p, **kw) for p in plaintexts]
    data = draw(mutated(st.sampled_from(originals), lambda d: [(0, 1), (1, 8)]))
    return plaintexts, originals, data, reply


@FUZZ
@given(sealed_case(), st.sampled_from(["msg", "other"]))
def test_fuzz_sealed_messages(case: tuple[list[bytes], list[bytes], bytes, bool], kind: str) -> None:
    plaintexts, originals, data, reply = case
    _, b = channels()
    opened = only((MessageRejected,), lambda: b.open(kind, data, reply_to=REQUEST_ID if reply else None))
    if opened is not None:
        # authentic means unchanged: the exact bytes the peer sealed, on the right kind
        assert kind == "msg" and data in originals
        assert opened.plaintext == plaintexts[originals.index(data)]


# ------------------------------------------------------------------------------------------
# pairing codes (code.py), LAN codes (lan.py)

WORDS = wordlist()
tickets = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=80)
codes = st.builds(
    lambda words, tag, ticket: str(PairingCode(tuple(words), tag, ticket)),
    st.lists(st.sampled_from(WORDS), min_size=3, max_size=6), b16, tickets,
)
lan_codes = st.builds(lambda n, words: str(LanCode(n, tuple(words))),
                      st.integers(1, 99), st.lists(st.sampled_from(WORDS), min_size=3, max_size=6))

#: Characters a code's text is mutated with: separators, look-alikes, NFKC-changing
#: characters, digits of other scripts, controls, bidi, astral.
CODE_ALPHABET = list(".-_ \t\n\r\x00\x1b\u00a0\u2010\u2011\u2024\u3002\uff0e\uff0d\ufb01\u2026"
                     "\u0660\u0967\uff17\u00b2\u202e\u200b\u00c5\u0130\u017f\U0001d41a"
                     "aZz27=") + [chr(c) for c in range(0x30, 0x3A)]


@st.composite
def mutated_text(draw: st.DrawFn, seeds: st.SearchStrategy[str], max_ops: int = 5) -> str:
    s = list(draw(seeds))
    chars = st.sampled_from(CODE_ALPHABET) | st.characters()
    for _ in range(draw(st.integers(0, max_ops))):
        op = draw(st.sampled_from(["truncate", "insert", "replace", "delete", "splice", "case",
                                   "swap", "dup"]))
        n = len(s)
        pos = draw(st.integers(0, n))
        if op == "truncate":
            del s[pos:]
        elif op == "insert":
            s[pos:pos] = draw(st.lists(chars, min_size=1, max_size=4))
        elif op == "replace" and n:
            s[min(pos, n - 1)] = draw(chars)
        elif op == "delete":
            del s[pos:pos + draw(st.integers(1, 8))]
        elif op == "splice":
            other = draw(seeds)
            a = draw(st.integers(0, len(other)))
            s[pos:pos] = list(other[a:a + draw(st.integers(1, 30))])
        elif op == "case":
            s = list("".join(s).upper() if draw(st.booleans()) else "".join(s).title())
        elif op == "swap":
            text = "".join(s)
            parts = text.split(".")
            if len(parts) > 1:
                i, k = draw(st.integers(0, len(parts) - 1)), draw(st.integers(0, len(parts) - 1))
                parts[i], parts[k] = parts[k], parts[i]
            s = list(".".join(parts))
        elif op == "dup":
            s[pos:pos] = s[pos:pos + draw(st.integers(1, 20))]
    return "".join(s)


@FUZZ
@given(mutated_text(codes | lan_codes))
@example("")
@example("abandon-ability-able..x")
@example("abandon-ability-able.\u0660" * 3)
@example("abandon abandon abandon.aaaaaaaaaaaaaaaaaaaaaaaaaa.x")
@example("abandon-ability-able.AAAAAAAAAAAAAAAAAAAAAAAAAA.endpoint")
@example("abandon-ability-able.aaaaaaaaaaaaaaaaaaaaaaaaab.endpoint")  # non-canonical tag
@example("\ufb01sh-ability-able.aaaaaaaaaaaaaaaaaaaaaaaaaa.x")
@example("abandon-ability-able.aaaaaaaaaaaaaaaaaaaaaaaaaa." + "x" * 5000)
def test_fuzz_pairing_code(text: str) -> None:
    pc = only((InvalidCode,), PairingCode.parse, text)
    if pc is not None:
        assert PairingCode.parse(str(pc)) == pc
        assert len(pc.tag) == 16 and pc.ticket.isascii()
    looks_spoken(text)  # never raises


@FUZZ
@given(mutated_text(lan_codes | codes))
@example("0-abandon-ability-able")
@example("100-abandon-ability-able")
@example("\u0667-abandon-ability-able")  # an Arabic-Indic seven
@example("\uff17 abandon ability able")  # a full-width seven
@example("7-")
@example("7")
def test_fuzz_lan_code(text: str) -> None:
    code = only((InvalidCode,), LanCode.parse, text)
    if code is not None:
        assert LanCode.parse(str(code)) == code and 1 <= code.nameplate <= 99


@FUZZ
@given(mutated_text(st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz234567"), min_size=26,
                            max_size=26)))
def test_fuzz_session_tag(text: str) -> None:
    tag = only((InvalidCode,), decode_tag, text)
    if tag is not None:
        assert encode_tag(tag) == text.lower()


# ------------------------------------------------------------------------------------------
# iroh tickets (EndpointAddr.from_ticket, native)

_ids = st.builds(lambda b: SecretKey.from_bytes(b).public(), b32)
_ip = st.one_of(
    st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255), st.integers(0, 255),
              st.integers(1, 65535)).map(lambda t: "{}.{}.{}.{}:{}".format(*t)),
    st.tuples(st.binary(min_size=16, max_size=16), st.integers(1, 65535)).map(
        lambda t: "[{}]:{}".format(":".join(t[0][i:i + 2].hex() for i in range(0, 16, 2)), t[1])),
)
_relay = st.sampled_from(["https://relay.example.com/", "https://127.0.0.1:4443/",
                          "http://[::1]:3340/", "https://euw1-1.relay.iroh.network./"])
addrs = st.builds(lambda i, r, ips: EndpointAddr(i, r, ips), _ids,
                  st.lists(_relay, max_size=2, unique=True), st.lists(_ip, max_size=3, unique=True))
ticket_texts = addrs.map(lambda a: a.to_ticket())


@FUZZ
@given(addrs)
def test_ticket_round_trip(addr: EndpointAddr) -> None:
    assert EndpointAddr.from_ticket(addr.to_ticket()) == addr


@FUZZ
@given(mutated_text(ticket_texts, max_ops=4))
@example("")
@example("endpoint")
@example("endpointa")
@example("ENDPOINTAAAA")
@example("endpoint" + "a" * 10_000)
def test_fuzz_ticket_text(text: str) -> None:
    addr = only((InvalidTicket,), EndpointAddr.from_ticket, text)
    if addr is not None:
        assert EndpointAddr.from_ticket(addr.to_ticket()) == addr


def _b32(data: bytes) -> str:
    import base64

    return base64.b32encode(data).decode().rstrip("=").lower()


def _unb32(text: str) -> bytes:
    import base64

    return base64.b32decode(text.upper() + "=" * (-len(text) % 8))


@FUZZ
@given(mutated(ticket_texts.map(lambda t: _unb32(t[len("endpoint"):])),
               lambda d: [(0, 1), (32, 1), (33, 1), (34, 1)]))
@example(b"")
@example(b"\x00" * 33)
@example(b"\xff" * 40)
def test_fuzz_ticket_bytes(payload: bytes) -> None:
    """The ticket's binary payload (postcard) mutated, then re-armoured: only InvalidTicket."""
    text = "endpoint" + _b32(payload)
    addr = only((InvalidTicket,), EndpointAddr.from_ticket, text)
    if addr is not None:
        assert EndpointAddr.from_ticket(addr.to_ticket()) == addr


def test_stated_case_count() -> None:
    """The number of cases each fuzz test runs (printed with -s; scripts/fuzz reports it)."""
    assert CASES >= 100 or os.environ.get("IROH_PAIR_FUZZ_CASES")
    print(f"fuzz profile {PROFILE!r}: {CASES} cases per decoder")


# keep the unused-import checker quiet about names used only in strategies
_ = (struct, EndpointId, pytest)
