"""The one table of the protocol's constants: ALPN, versions, stream kinds, sizes, labels, and
the three code tables (Reject reasons, connection close codes, stream error codes).

Every other module of the package takes these values from here; ``docs/PROTOCOL.md`` is the
normative description (§ numbers below) and ``tests/vectors/*.json`` pin the labels. Example::

    >>> from iroh_pair.protocol.constants import ALPN, StreamErrorCode
    >>> ALPN, int(StreamErrorCode.NOT_ADMITTED)
    (b'iroh-pair/1', 8)
"""

from __future__ import annotations

import enum

from iroh_pair.errors import _install_stream_error_codes

__all__ = [
    # connection and envelope (§1, §2, §3)
    "ALPN",
    "ENVELOPE_VERSION",
    "MAX_KIND_LEN",
    "MAX_MESSAGE",
    "PAIR_KIND",
    "PAIR_KIND_V1",
    # pairing (§4, §7)
    "PROTOCOL_VERSION",
    "SESSION_TAG_LEN",
    "NONCE_LEN",
    "SAS_DIGITS",
    "TRANSCRIPT_LABEL",
    "PAIRING_BINDING_LABEL",
    "CHANNEL_BINDING_CONTEXT",
    "CHANNEL_BINDING_LEN",
    "COMMITMENT_LABEL",
    "LABELS",
    "LAN_TAG_LABEL",
    "LAN_SERVICE_PREFIX",
    # messaging (§13)
    "MESSAGING_VERSION",
    "MESSAGING_BINDING_LABEL",
    "MESSAGE_KEY_LABEL",
    # code tables (§10)
    "RejectCode",
    "CloseCode",
    "StreamErrorCode",
]

# -- connection and envelope -------------------------------------------------------------------

#: The one ALPN of the package (§1).
ALPN = b"iroh-pair/1"
#: First byte of every stream's envelope header (§2).
ENVELOPE_VERSION = 1
#: Longest stream-kind name in an envelope header.
MAX_KIND_LEN = 32
#: Largest frame body of a pairing stream (64 KiB, §3).
MAX_MESSAGE = 64 * 1024
#: Stream kind of pairing version 2 (this implementation).
PAIR_KIND = "pair2"
#: Stream kind of pairing version 1 (refused with ``UNSUPPORTED_VERSION``, §2.1).
PAIR_KIND_V1 = "pair"

# -- pairing -------------------------------------------------------------------------------------

#: Pairing protocol version (transcript item 2; the stream kind ``pair2`` carries it).
PROTOCOL_VERSION = 2
#: Length in bytes of the non-secret session tag of a pairing code (§4.1).
SESSION_TAG_LEN = 16
#: Length of ``joiner_nonce`` and ``host_nonce`` (§7.3).
NONCE_LEN = 32
#: Digits of the SAS shown to users (§7.6).
SAS_DIGITS = 6
#: First transcript item: domain separation of the transcript hash (§7.3).
TRANSCRIPT_LABEL = b"iroh-pair/2 pairing transcript"
#: ``export_keying_material`` label of the pairing's channel binding (§7.2).
PAIRING_BINDING_LABEL = b"iroh-pair/2 pairing channel binding"
#: Context and length of both channel bindings (pairing and messaging).
CHANNEL_BINDING_CONTEXT = b""
CHANNEL_BINDING_LEN = 32
#: Domain separation of the joiner's nonce commitment (§7.3).
COMMITMENT_LABEL = b"iroh-pair/2 sas commitment"
#: HKDF ``info`` labels, one per derived pairing key (§7.4).
LABELS: dict[str, bytes] = {
    "host_to_joiner": b"iroh-pair/2 key host->joiner",
    "joiner_to_host": b"iroh-pair/2 key joiner->host",
    "host_confirm": b"iroh-pair/2 confirm host",
    "joiner_confirm": b"iroh-pair/2 confirm joiner",
    "joiner_accept": b"iroh-pair/2 accept joiner",
    "sas": b"iroh-pair/2 sas",
    "host_seal": b"iroh-pair/2 seal host->joiner",
    "joiner_seal": b"iroh-pair/2 seal joiner->host",
}
#: Hashed with the host's id and the nameplate into a LAN code's session tag (§4.4).
LAN_TAG_LABEL = b"iroh-pair/v1 lan session tag"
#: The DNS-SD service of a nameplate is this prefix plus the number (§4.4).
LAN_SERVICE_PREFIX = "iroh-pair-"

# -- messaging -----------------------------------------------------------------------------------

#: Version byte of a sealed message (and first AAD byte, §13.5).
MESSAGING_VERSION = 1
#: ``export_keying_material`` label of the messaging channel binding (§13.3).
MESSAGING_BINDING_LABEL = b"iroh-pair/1 messaging channel binding"
#: HKDF ``info`` prefix of a per-connection, per-direction message key (§13.3).
MESSAGE_KEY_LABEL = b"iroh-pair/1 message key"


# -- code tables ---------------------------------------------------------------------------------


class RejectCode(enum.IntEnum):
    """Why a pairing failed: the u16 ``code`` of a Reject message and of
    :class:`~iroh_pair.errors.ProtocolError` (§10.1).

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
        """The code for a received u16 (unknown or local-only values -> UNSPECIFIED).

        >>> RejectCode.from_wire(10), RejectCode.from_wire(999)
        (<RejectCode.WRONG_CODE: 10>, <RejectCode.UNSPECIFIED: 0>)
        """
        try:
            code = cls(value)
        except ValueError:
            return cls.UNSPECIFIED
        return code if code < 0x400 else cls.UNSPECIFIED


class CloseCode(enum.IntEnum):
    """QUIC application close codes (CONNECTION_CLOSE), §10.2.

    0..4 are the codes of ALPN ``iroh-pair/1``. 0x10..0x12 are sent by the connection cache
    (:class:`~iroh_pair.ConnectionCache`) on whatever ALPN it manages: the cache of a
    :class:`~iroh_pair.Node` closes its connections with them too.

    Two codes mean "shutting down" on the wire, and both stay as they are (a peer treats any
    close the same way, so neither is a wire error): :attr:`SHUTDOWN` (3) is what a node sends
    to a connection it accepts while it closes; :attr:`CACHE_SHUTDOWN` (0x12) is what a
    closing cache sends to every connection it still holds, which is how a closing node ends
    its connections. A :class:`~iroh_pair.RequestPeer` that stops accepting closes with
    :attr:`OK` and the reason ``b"shutting down"``.
    """

    OK = 0  # normal close (pairing complete, or idle)
    PROTOCOL_ERROR = 1  # the peer violated the envelope or framing
    PAIRING_FAILED = 2  # a pairing handshake failed (the Reject carries the reason)
    SHUTDOWN = 3  # the endpoint is shutting down
    NOT_PAIRED = 4  # admission refused: the peer is not in the registry
    DUPLICATE = 0x10  # lost the simultaneous-dial tie break; closed once drained
    UNRESPONSIVE = 0x11  # a request on it timed out or the connection failed: evicted
    CACHE_SHUTDOWN = 0x12  # the connection cache was closed (a node closing)


class StreamErrorCode(enum.IntEnum):
    """Application error codes on RESET_STREAM / STOP_SENDING (§10.3).

    One table for the transport, the protocol and messaging: the native layer uses 1-4 and 7
    itself, a refused sealed message is reset with 4 or 16-21 (:class:`~iroh_pair.errors.
    MessageRejected` carries the code), the node's admission uses 5, 6 and 8."""

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


def _stream_error_code(code: int) -> StreamErrorCode | int:
    """``code`` as a :class:`StreamErrorCode` member, or the plain ``int`` when it is unknown
    (what :attr:`RemoteError.code <iroh_pair.errors.RemoteError>` holds)."""
    try:
        return StreamErrorCode(code)
    except ValueError:
        return int(code)


_install_stream_error_codes(_stream_error_code)
