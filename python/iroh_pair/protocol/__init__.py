"""The sans-I/O protocol of ALPN ``iroh-pair/1`` (pairing version 2, messaging version 1).

Every codec and state machine of ``docs/PROTOCOL.md``, and nothing else: no sockets, no
asyncio, no clocks, no native code. These modules import only each other, the standard
library, ``cryptography`` and :mod:`iroh_pair.errors` (which imports nothing of the package);
``tests/test_exports.py`` checks it. The I/O layers above (the pairing driver, the node) pass
the authenticated remote id, the channel binding and the current time in, and perform the
returned events.

- :mod:`~iroh_pair.protocol.constants`: the one table of ALPN, labels and code tables;
- :mod:`~iroh_pair.protocol.words`, :mod:`~iroh_pair.protocol.code`,
  :mod:`~iroh_pair.protocol.lan`: the secret words, the full pairing code, the spoken LAN code;
- :mod:`~iroh_pair.protocol.envelope`, :mod:`~iroh_pair.protocol.wire`,
  :mod:`~iroh_pair.protocol.device`: stream header and framing, pairing messages, device info;
- :mod:`~iroh_pair.protocol.kdf`, :mod:`~iroh_pair.protocol.spake`,
  :mod:`~iroh_pair.protocol.seal`: key schedule and SAS, SPAKE2, sealing the device info;
- :mod:`~iroh_pair.protocol.offer`, :mod:`~iroh_pair.protocol.pairing`: the host's offers and
  the two handshake state machines;
- :mod:`~iroh_pair.protocol.messaging`: sealed application messages, replay window,
  exactly-once bookkeeping.

Example (a code, parsed back)::

    >>> from iroh_pair.protocol import PairingCode
    >>> code = PairingCode.generate("endpointaaaa")
    >>> PairingCode.parse(str(code)) == code
    True
"""

from iroh_pair.protocol.code import PairingCode
from iroh_pair.protocol.constants import (
    ALPN,
    MAX_MESSAGE,
    PAIR_KIND,
    PAIR_KIND_V1,
    CloseCode,
    RejectCode,
    StreamErrorCode,
)
from iroh_pair.protocol.device import DeviceInfo
from iroh_pair.protocol.envelope import FrameBuffer, decode_header, encode_frame, encode_header
from iroh_pair.protocol.lan import LanCode
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
    "LanCode",
    "OfferBook",
    "Paired",
    "PairingCode",
    "PairingOffer",
    "PairingResult",
    "RejectCode",
    "SasReady",
    "SendMessage",
    "StreamErrorCode",
    "decode_header",
    "encode_frame",
    "encode_header",
]
