"""Reason codes, QUIC close codes and the one exception type of the pairing protocol."""

from __future__ import annotations

import enum

from iroh_pair.errors import IrohPairError

__all__ = ["RejectCode", "CloseCode", "StreamErrorCode", "ProtocolError"]


class RejectCode(enum.IntEnum):
    """Why a pairing failed: the u16 ``code`` of a Reject message and of :class:`ProtocolError`.

    Codes 1..0x3FF go on the wire; codes from 0x400 are local only (never sent, they describe
    why *this* side gave up). A received code this version does not know maps to
    :attr:`UNSPECIFIED`.
    """

    UNSPECIFIED = 0
    MALFORMED = 1  # undecodable message, bad field, bad SPAKE2 element, bad sealed info
    UNEXPECTED = 2  # valid message in the wrong state / wrong direction
    TOO_LARGE = 3  # message body over MAX_MESSAGE
    BAD_TAG = 4  # no offer with this session tag (not counted as an attempt)
    EXPIRED = 5  # the code's lifetime is over
    BURNED = 6  # the code used up its attempts
    USED = 7  # the code already paired a device (single use)
    BUSY = 8  # another handshake is in progress on this code
    ID_MISMATCH = 9  # claimed EndpointId != QUIC-authenticated remote id
    WRONG_CODE = 10  # key confirmation failed: different secret words (or a MITM)
    TIMEOUT = 11  # handshake deadline passed
    CANCELLED = 12  # the application gave up (user cancel, shutdown)
    INTERNAL = 13  # the application failed (e.g. could not store the registry entry)
    UNSUPPORTED_VERSION = 14  # the peer speaks another pairing version (docs/PROTOCOL.md §2.1)
    BAD_COMMITMENT = 15  # the joiner's nonce does not open its commitment (§7.3)
    SAS_DECLINED = 16  # the user did not confirm the SAS (§8.3)
    # local only
    CONNECTION_LOST = 0x400  # stream/connection ended before the handshake finished

    @classmethod
    def from_wire(cls, value: int) -> RejectCode:
        """The code for a received u16 (unknown or local-only values -> UNSPECIFIED)."""
        try:
            code = cls(value)
        except ValueError:
            return cls.UNSPECIFIED
        return code if code < 0x400 else cls.UNSPECIFIED


class CloseCode(enum.IntEnum):
    """QUIC application close codes (CONNECTION_CLOSE) used on ALPN ``iroh-pair/1``."""

    OK = 0  # normal close (pairing complete, or idle)
    PROTOCOL_ERROR = 1  # the peer violated the envelope or framing
    PAIRING_FAILED = 2  # a pairing handshake failed (the Reject carries the reason)
    SHUTDOWN = 3  # the endpoint is shutting down
    NOT_PAIRED = 4  # admission refused: the peer is not in the registry


class StreamErrorCode(enum.IntEnum):
    """Application error codes on RESET_STREAM / STOP_SENDING (docs/PROTOCOL.md §10.3).

    One table for the transport and the protocol: the native layer uses 1-4 and 7 itself."""

    CANCELLED = 1  # a write or request was cancelled midway by the local application
    DROPPED = 2  # a send stream was dropped without being finished
    HANDLER_ERROR = 3  # the serving side's handler failed
    FRAME_TOO_LARGE = 4  # a frame length prefix above the limit, or a truncated first frame
    UNKNOWN_KIND = 5  # the stream-kind name is not served here
    BAD_ENVELOPE = 6  # unsupported envelope version or malformed header
    TIMEOUT = 7  # the peer was too slow (e.g. the first frame did not arrive in time)
    NOT_ADMITTED = 8  # this stream kind is not allowed from an unpaired peer
    TAMPERED = 16  # a sealed message failed authentication
    REPLAYED = 17  # a sealed message's counter was already seen
    DUPLICATE = 18  # a message id was already delivered (a retry): treat as delivered
    MALFORMED_MESSAGE = 19  # a sealed message could not be parsed
    TOO_OLD = 20  # a counter below the replay window: retry with the same message id
    IN_PROGRESS = 21  # this message id is being handled right now: retry after a short delay


class ProtocolError(IrohPairError):
    """A pairing message or envelope was malformed, oversized, out of order or refused.

    ``code`` is the :class:`RejectCode`; this is the only exception the decoders and state
    machines raise for bad input.
    """

    def __init__(self, code: RejectCode, message: str = "") -> None:
        super().__init__(f"{code.name}: {message}" if message else code.name)
        self.code = code
        self.reason = message or code.name.lower()
