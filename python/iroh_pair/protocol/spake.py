"""SPAKE2 over Ed25519 for pairing (docs/PROTOCOL.md §7.1): one side of one exchange.

The state machines use only this interface::

    side, msg = Spake2.start("A", password, id_a=joiner_id, id_b=host_id, entropy=64 bytes)
    key = side.finish(peer_msg)        # 32 bytes; ProtocolError(MALFORMED) for a bad message

``msg`` and ``peer_msg`` are the 33-byte wire messages (side byte ``A``/``B`` + point). The
64 ``entropy`` bytes are reduced to the secret scalar exactly as python-spake2 does (big-endian,
mod L), so fixed entropy reproduces the test vectors.

(Implementation note: this seam currently uses the pure-Python ``spake2`` package; it is being
moved to the native extension, RustCrypto ``spake2``, with the same interface.)
"""

from __future__ import annotations

from typing import Literal

from spake2 import SPAKE2_A, SPAKE2_B

from iroh_pair.protocol.errors import ProtocolError, RejectCode

__all__ = ["Spake2", "ENTROPY_LEN", "MSG_LEN", "KEY_LEN"]

ENTROPY_LEN = 64
MSG_LEN = 33
KEY_LEN = 32


class Spake2:
    """One side of a SPAKE2 exchange; :meth:`finish` may be called once."""

    __slots__ = ("_inner", "_done")

    def __init__(self, inner: SPAKE2_A | SPAKE2_B) -> None:
        self._inner = inner
        self._done = False

    @classmethod
    def start(
        cls,
        side: Literal["A", "B"],
        password: bytes,
        *,
        id_a: bytes,
        id_b: bytes,
        entropy: bytes,
    ) -> tuple[Spake2, bytes]:
        """Starts side ``side``; returns the state and our 33-byte message."""
        if len(entropy) != ENTROPY_LEN:
            raise ValueError(f"entropy must be {ENTROPY_LEN} bytes")
        given = [bytes(entropy)]

        def entropy_f(n: int) -> bytes:
            if n != ENTROPY_LEN or not given:
                raise ValueError("SPAKE2 asked for unexpected entropy")
            return given.pop()

        kind = SPAKE2_A if side == "A" else SPAKE2_B if side == "B" else None
        if kind is None:
            raise ValueError("side is 'A' or 'B'")
        inner = kind(password, idA=id_a, idB=id_b, entropy_f=entropy_f)
        return cls(inner), inner.start()

    def finish(self, peer_msg: bytes) -> bytes:
        """The shared 32-byte key; a bad peer message is ``ProtocolError(MALFORMED)``."""
        if self._done:
            raise ValueError("finish() may be called once")
        self._done = True
        try:
            return bytes(self._inner.finish(bytes(peer_msg)))
        except Exception:  # the library raises ValueError/SPAKEError/... for bad elements
            raise ProtocolError(RejectCode.MALFORMED, "invalid SPAKE2 message") from None
