"""Sans-I/O pairing protocol (pairing version 2, stream kind ``pair2``, ALPN ``iroh-pair/1``):
envelope, wire codecs, state machines.

No sockets, no asyncio, no clocks: the driver (``iroh_pair.pairing``) passes the authenticated
remote id, the channel binding and the current time in, and performs the returned events.
"""

from iroh_pair.protocol.device import DeviceInfo
from iroh_pair.protocol.envelope import (
    ALPN,
    MAX_MESSAGE,
    PAIR_KIND,
    PAIR_KIND_V1,
    FrameBuffer,
    decode_header,
    encode_frame,
    encode_header,
)
from iroh_pair.protocol.errors import CloseCode, ProtocolError, RejectCode, StreamErrorCode
from iroh_pair.protocol.offer import (
    CONFIRM_TIMEOUT,
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
    SasReady,
    SendMessage,
)

__all__ = [
    "ALPN",
    "MAX_MESSAGE",
    "PAIR_KIND",
    "PAIR_KIND_V1",
    "CONFIRM_TIMEOUT",
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
    "SasReady",
    "SendMessage",
    "StreamErrorCode",
    "decode_header",
    "encode_frame",
    "encode_header",
]
