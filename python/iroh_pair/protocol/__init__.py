"""Sans-I/O pairing protocol of ALPN ``iroh-pair/1``: envelope, wire codecs, state machines.

No sockets, no asyncio, no clocks: the driver (``iroh_pair.pairing``) passes the authenticated
remote id, the channel binding and the current time in, and performs the returned events.
"""

from iroh_pair.protocol.device import DeviceInfo
from iroh_pair.protocol.envelope import (
    ALPN,
    MAX_MESSAGE,
    PAIR_KIND,
    FrameBuffer,
    decode_header,
    encode_frame,
    encode_header,
)
from iroh_pair.protocol.errors import CloseCode, ProtocolError, RejectCode, StreamErrorCode
from iroh_pair.protocol.offer import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_TTL,
    HANDSHAKE_TIMEOUT,
    OfferBook,
    PairingOffer,
)
from iroh_pair.protocol.pairing import (
    Entropy,
    Event,
    Failed,
    HostHandshake,
    JoinerHandshake,
    Paired,
    PairingResult,
    SendMessage,
)

__all__ = [
    "ALPN",
    "MAX_MESSAGE",
    "PAIR_KIND",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_TTL",
    "HANDSHAKE_TIMEOUT",
    "CloseCode",
    "DeviceInfo",
    "Entropy",
    "Event",
    "Failed",
    "FrameBuffer",
    "HostHandshake",
    "JoinerHandshake",
    "OfferBook",
    "Paired",
    "PairingOffer",
    "PairingResult",
    "ProtocolError",
    "RejectCode",
    "SendMessage",
    "StreamErrorCode",
    "decode_header",
    "encode_frame",
    "encode_header",
]
