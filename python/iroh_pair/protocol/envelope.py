"""The stream envelope and framing of ALPN ``iroh-pair/1`` (sans-I/O).

Every bidirectional stream starts, in the opener's direction, with a header::

    u8 envelope version (= 1) | u8 L (1..32) | L bytes stream-kind name ([a-z0-9._-])

after which both directions carry frames ``u32 BE length || body`` with ``length <=
MAX_MESSAGE``. The pairing stream of pairing version 2 has kind ``"pair2"``; ``"pair"`` (version
1) is refused with ``Reject(UNSUPPORTED_VERSION)`` (docs/PROTOCOL.md §2.1).

Example::

    >>> from iroh_pair.protocol.envelope import FrameBuffer, decode_header, encode_frame, encode_header
    >>> encode_header("pair2"), decode_header(b"\\x01\\x05pair2")
    (b'\\x01\\x05pair2', ('pair2', 7))
    >>> frames = FrameBuffer()
    >>> frames.feed(encode_frame(b"hi")[:3]), frames.feed(encode_frame(b"hi")[3:])
    ([], [b'hi'])
"""

from __future__ import annotations

import re

from iroh_pair.errors import ProtocolError
from iroh_pair.protocol.constants import ENVELOPE_VERSION, MAX_KIND_LEN, MAX_MESSAGE, RejectCode

__all__ = [
    "encode_header",
    "header_kind_length",
    "decode_kind",
    "decode_header",
    "encode_frame",
    "FrameBuffer",
]

_KIND = re.compile(r"[a-z0-9._-]{1,32}")


def encode_header(kind: str) -> bytes:
    """The envelope header opening a stream of ``kind`` (ValueError for an invalid name)."""
    if not _KIND.fullmatch(kind):
        raise ValueError(f"invalid stream kind {kind!r}: 1..32 of [a-z0-9._-]")
    return bytes([ENVELOPE_VERSION, len(kind)]) + kind.encode("ascii")


def header_kind_length(prefix: bytes) -> int:
    """From the header's first 2 bytes, the number of kind-name bytes that follow."""
    if len(prefix) != 2:
        raise ProtocolError(RejectCode.MALFORMED, "envelope prefix is 2 bytes")
    if prefix[0] != ENVELOPE_VERSION:
        raise ProtocolError(RejectCode.MALFORMED, f"unsupported envelope version {prefix[0]}")
    if not 1 <= prefix[1] <= MAX_KIND_LEN:
        raise ProtocolError(RejectCode.MALFORMED, "stream kind length out of range")
    return prefix[1]


def decode_kind(raw: bytes) -> str:
    """Validate the kind-name bytes of a header."""
    try:
        kind = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(RejectCode.MALFORMED, "stream kind is not ASCII") from None
    if not _KIND.fullmatch(kind):
        raise ProtocolError(RejectCode.MALFORMED, "invalid stream kind name")
    return kind


def decode_header(data: bytes) -> tuple[str, int]:
    """Decode a header at the start of ``data``: ``(kind, bytes consumed)``."""
    n = header_kind_length(data[:2])
    if len(data) < 2 + n:
        raise ProtocolError(RejectCode.MALFORMED, "truncated envelope header")
    return decode_kind(data[2 : 2 + n]), 2 + n


def encode_frame(body: bytes) -> bytes:
    """``u32 BE length || body``; ProtocolError(TOO_LARGE) above :data:`~iroh_pair.protocol.constants.MAX_MESSAGE`."""
    if len(body) > MAX_MESSAGE:
        raise ProtocolError(RejectCode.TOO_LARGE, f"{len(body)} > {MAX_MESSAGE} bytes")
    return len(body).to_bytes(4, "big") + body


class FrameBuffer:
    """Incremental frame decoder for byte-stream drivers: ``feed`` bytes, get whole bodies."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._buf = bytearray()
        self._max = max_message

    def feed(self, data: bytes) -> list[bytes]:
        """Append ``data``; return every complete frame body now available."""
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= 4:
            n = int.from_bytes(self._buf[:4], "big")
            if n > self._max:
                raise ProtocolError(RejectCode.TOO_LARGE, f"frame of {n} bytes")
            if len(self._buf) < 4 + n:
                break
            out.append(bytes(self._buf[4 : 4 + n]))
            del self._buf[: 4 + n]
        return out

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet form a whole frame (non-zero at EOF = truncated)."""
        return len(self._buf)
