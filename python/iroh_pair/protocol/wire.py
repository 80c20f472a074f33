"""Canonical binary codecs of pairing version 2 (frame bodies on a ``pair2`` stream, §6).

Every body starts with a u8 message type; all integers are big-endian; every field has a fixed
size or an explicit length, and a body must be consumed exactly::

    0x01 Hello    J->H  session_tag[16] joiner_id[32] spake_msg[33] commitment[32]   (114)
    0x02 Reply    H->J  host_id[32] spake_msg[33] host_nonce[32] host_mac[32]      (130)
    0x03 Confirm  J->H  joiner_mac[32] joiner_nonce[32] u16 n, sealed_info[n]      (67+n)
    0x04 Complete H->J  u16 n, sealed_info[n]                                      (3+n)
    0x05 Accept   J->H  accept_mac[32]                                             (33)
    0x7F Reject   both  u16 code, u8 n, text[n] (UTF-8)                            (4+n)

``spake_msg`` is the SPAKE2 message including its side byte (``0x41`` from the joiner, side A;
``0x42`` from the host, side B) followed by the 32-byte Ed25519 element.

Example::

    >>> from iroh_pair.protocol import wire
    >>> body = wire.encode(wire.Reject(5, "busy"))
    >>> body, wire.decode(body)
    (b'\\x7f\\x00\\x05\\x04busy', Reject(code=5, text='busy'))
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from iroh_pair.errors import ProtocolError
from iroh_pair.protocol.constants import MAX_MESSAGE, NONCE_LEN, SESSION_TAG_LEN, RejectCode
from iroh_pair.protocol.device import MAX_DEVICE_INFO
from iroh_pair.protocol.seal import TAG_LEN

__all__ = [
    "MsgType",
    "ID_LEN",
    "SPAKE_MSG_LEN",
    "MAC_LEN",
    "COMMITMENT_LEN",
    "MAX_SEALED",
    "MAX_REJECT_TEXT",
    "HELLO_LEN",
    "REPLY_LEN",
    "ACCEPT_LEN",
    "Hello",
    "Reply",
    "Confirm",
    "Complete",
    "Accept",
    "Reject",
    "Message",
    "encode",
    "decode",
]

ID_LEN = 32
SPAKE_MSG_LEN = 33
MAC_LEN = 32
COMMITMENT_LEN = 32
MIN_SEALED = TAG_LEN
MAX_SEALED = MAX_DEVICE_INFO + TAG_LEN
MAX_REJECT_TEXT = 255
SIDE_A = 0x41
SIDE_B = 0x42
#: Encoded sizes of the fixed-size messages (type byte included).
HELLO_LEN = 1 + SESSION_TAG_LEN + ID_LEN + SPAKE_MSG_LEN + COMMITMENT_LEN
REPLY_LEN = 1 + ID_LEN + SPAKE_MSG_LEN + NONCE_LEN + MAC_LEN
ACCEPT_LEN = 1 + MAC_LEN


class MsgType(enum.IntEnum):
    """The u8 message type opening every pairing message body."""

    HELLO = 0x01
    REPLY = 0x02
    CONFIRM = 0x03
    COMPLETE = 0x04
    ACCEPT = 0x05
    REJECT = 0x7F


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise ValueError(what)


@dataclass(frozen=True)
class Hello:
    """M1, joiner -> host: session tag, the joiner's EndpointId claim, SPAKE2 message (side A)
    and the commitment to the joiner's nonce."""

    session_tag: bytes
    joiner_id: bytes
    spake_msg: bytes
    commitment: bytes

    def __post_init__(self) -> None:
        _need(len(self.session_tag) == SESSION_TAG_LEN, "session_tag is 16 bytes")
        _need(len(self.joiner_id) == ID_LEN, "joiner_id is 32 bytes")
        _need(len(self.spake_msg) == SPAKE_MSG_LEN and self.spake_msg[0] == SIDE_A,
              "spake_msg is 33 bytes starting with 'A'")
        _need(len(self.commitment) == COMMITMENT_LEN, "commitment is 32 bytes")


@dataclass(frozen=True)
class Reply:
    """M2, host -> joiner: the host's EndpointId claim, SPAKE2 message (side B), the host's
    nonce and the host MAC."""

    host_id: bytes
    spake_msg: bytes
    host_nonce: bytes
    host_mac: bytes

    def __post_init__(self) -> None:
        _need(len(self.host_id) == ID_LEN, "host_id is 32 bytes")
        _need(len(self.spake_msg) == SPAKE_MSG_LEN and self.spake_msg[0] == SIDE_B,
              "spake_msg is 33 bytes starting with 'B'")
        _need(len(self.host_nonce) == NONCE_LEN, "host_nonce is 32 bytes")
        _need(len(self.host_mac) == MAC_LEN, "host_mac is 32 bytes")


@dataclass(frozen=True)
class Confirm:
    """M3, joiner -> host: the joiner's confirmation MAC, its nonce (opening the commitment of
    M1) and its sealed device info."""

    joiner_mac: bytes
    joiner_nonce: bytes
    sealed_info: bytes

    def __post_init__(self) -> None:
        _need(len(self.joiner_mac) == MAC_LEN, "joiner_mac is 32 bytes")
        _need(len(self.joiner_nonce) == NONCE_LEN, "joiner_nonce is 32 bytes")
        _need(MIN_SEALED <= len(self.sealed_info) <= MAX_SEALED, "sealed_info length")


@dataclass(frozen=True)
class Complete:
    """M4, host -> joiner: the host approved the SAS; the host's sealed device info."""

    sealed_info: bytes

    def __post_init__(self) -> None:
        _need(MIN_SEALED <= len(self.sealed_info) <= MAX_SEALED, "sealed_info length")


@dataclass(frozen=True)
class Accept:
    """M5, joiner -> host: the joiner approved the SAS and stored the pairing."""

    accept_mac: bytes

    def __post_init__(self) -> None:
        _need(len(self.accept_mac) == MAC_LEN, "accept_mac is 32 bytes")


@dataclass(frozen=True)
class Reject:
    """Either direction: the handshake is over; ``code`` (u16) says why, ``text`` is for logs."""

    code: int
    text: str = ""

    def __post_init__(self) -> None:
        _need(0 <= self.code <= 0xFFFF, "code is a u16")
        _need(len(self.text.encode("utf-8")) <= MAX_REJECT_TEXT, "text is at most 255 bytes")

    @classmethod
    def make(cls, code: int, text: str) -> Reject:
        """A Reject with ``text`` truncated (at a character boundary) to fit."""
        raw = text.encode("utf-8")[:MAX_REJECT_TEXT]
        return cls(code, raw.decode("utf-8", "ignore"))


Message = Hello | Reply | Confirm | Complete | Accept | Reject


def encode(msg: Message) -> bytes:
    """The canonical body of ``msg``."""
    if isinstance(msg, Hello):
        return (bytes([MsgType.HELLO]) + msg.session_tag + msg.joiner_id + msg.spake_msg
                + msg.commitment)
    if isinstance(msg, Reply):
        return (bytes([MsgType.REPLY]) + msg.host_id + msg.spake_msg + msg.host_nonce
                + msg.host_mac)
    if isinstance(msg, Confirm):
        n = len(msg.sealed_info).to_bytes(2, "big")
        return bytes([MsgType.CONFIRM]) + msg.joiner_mac + msg.joiner_nonce + n + msg.sealed_info
    if isinstance(msg, Complete):
        return bytes([MsgType.COMPLETE]) + len(msg.sealed_info).to_bytes(2, "big") + msg.sealed_info
    if isinstance(msg, Accept):
        return bytes([MsgType.ACCEPT]) + msg.accept_mac
    text = msg.text.encode("utf-8")
    return bytes([MsgType.REJECT]) + msg.code.to_bytes(2, "big") + bytes([len(text)]) + text


def _malformed(what: str) -> ProtocolError:
    return ProtocolError(RejectCode.MALFORMED, what)


def _sealed(body: bytes, at: int, name: str) -> bytes:
    if len(body) < at + 2:
        raise _malformed(f"truncated {name}")
    n = int.from_bytes(body[at : at + 2], "big")
    if not MIN_SEALED <= n <= MAX_SEALED:
        raise _malformed(f"{name}: sealed info length {n} out of range")
    if len(body) != at + 2 + n:
        raise _malformed(f"{name}: wrong length")
    return body[at + 2 :]


def decode(body: bytes) -> Message:
    """Decode one message body; raises only :class:`ProtocolError` (TOO_LARGE or MALFORMED)."""
    if len(body) > MAX_MESSAGE:
        raise ProtocolError(RejectCode.TOO_LARGE, f"{len(body)} > {MAX_MESSAGE} bytes")
    if not body:
        raise _malformed("empty message")
    t = body[0]
    if t == MsgType.HELLO:
        if len(body) != HELLO_LEN:
            raise _malformed("Hello: wrong length")
        if body[49] != SIDE_A:
            raise _malformed("Hello: SPAKE2 message is not from side A")
        return Hello(body[1:17], body[17:49], body[49:82], body[82:114])
    if t == MsgType.REPLY:
        if len(body) != REPLY_LEN:
            raise _malformed("Reply: wrong length")
        if body[33] != SIDE_B:
            raise _malformed("Reply: SPAKE2 message is not from side B")
        return Reply(body[1:33], body[33:66], body[66:98], body[98:130])
    if t == MsgType.CONFIRM:
        if len(body) < 1 + MAC_LEN + NONCE_LEN:
            raise _malformed("truncated Confirm")
        return Confirm(body[1:33], body[33:65], _sealed(body, 65, "Confirm"))
    if t == MsgType.COMPLETE:
        return Complete(_sealed(body, 1, "Complete"))
    if t == MsgType.ACCEPT:
        if len(body) != ACCEPT_LEN:
            raise _malformed("Accept: wrong length")
        return Accept(body[1:33])
    if t == MsgType.REJECT:
        if len(body) < 4 or len(body) != 4 + body[3]:
            raise _malformed("Reject: wrong length")
        try:
            text = body[4:].decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed("Reject: text is not UTF-8") from None
        return Reject(int.from_bytes(body[1:3], "big"), text)
    raise _malformed(f"unknown message type 0x{t:02x}")
