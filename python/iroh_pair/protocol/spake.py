"""SPAKE2 over Ed25519 for pairing (docs/PROTOCOL.md §7.1): one side of one exchange.

The state machines use only this interface::

    side, msg = Spake2.start("A", password, id_a=joiner_id, id_b=host_id, entropy=64 bytes)
    key = side.finish(peer_msg)        # 32 bytes; ProtocolError(MALFORMED) for a bad message

``msg`` and ``peer_msg`` are the 33-byte wire messages (side byte ``A``/``B`` + point). The
64 ``entropy`` bytes are reduced to the secret scalar exactly as python-spake2 does (big-endian,
mod L), so fixed entropy reproduces the test vectors.

The group arithmetic is a *backend* (:class:`Spake2Backend`), so that this module stays
sans-I/O and imports nothing outside :mod:`iroh_pair.protocol`: importing :mod:`iroh_pair`
installs the native one, the RustCrypto ``spake2`` crate (the one the Rust node uses) in the
extension, where a start or a finish is short pure computation, run inline with no thread hop.
Before any scalar multiplication with our secret, its ``finish`` refuses a message of the wrong
length or side byte, a point that does not decode or is not canonically encoded, the identity,
a point outside the prime-order subgroup and a reflection of our own message (ValueError here,
raised as ``ProtocolError(MALFORMED)``). (The pure-Python ``spake2`` package is only the tests'
oracle.)
"""

from __future__ import annotations

from typing import Literal, Protocol

from iroh_pair.errors import ProtocolError
from iroh_pair.protocol.constants import RejectCode

__all__ = ["Spake2", "Spake2Backend", "Spake2State", "use_backend", "ENTROPY_LEN"]

#: Bytes of entropy a side draws (reduced to its secret scalar).
ENTROPY_LEN = 64


class Spake2State(Protocol):
    """One side of an exchange, as the backend keeps it."""

    def finish(self, peer_msg: bytes, /) -> bytes:
        """The shared key; ValueError for a message refused before any use of the secret."""
        ...


class Spake2Backend(Protocol):
    """The SPAKE2 arithmetic: ``iroh_pair._native.Spake2`` (installed by ``import iroh_pair``)."""

    def start(
        self, side: str, password: bytes, id_a: bytes, id_b: bytes, entropy: bytes, /
    ) -> tuple[Spake2State, bytes]:
        """Starts ``side``: its state and its 33-byte message."""
        ...

    def check(self, peer_msg: bytes, side: str, /) -> None:
        """ValueError when ``peer_msg`` (from ``side``) is not a valid message."""
        ...


_backend: Spake2Backend | None = None


def use_backend(backend: Spake2Backend) -> None:
    """Makes :class:`Spake2` compute with ``backend``. ``import iroh_pair`` calls it with the
    native implementation; nothing else needs to."""
    global _backend
    _backend = backend


def _use() -> Spake2Backend:
    if _backend is None:  # pragma: no cover - importing any part of iroh_pair installs it
        raise RuntimeError("no SPAKE2 backend: import iroh_pair first")
    return _backend


class Spake2:
    """One side of a SPAKE2 exchange; :meth:`finish` may be called once.

    Example::

        a, msg_a = Spake2.start("A", pw, id_a=joiner_id, id_b=host_id, entropy=os.urandom(64))
        b, msg_b = Spake2.start("B", pw, id_a=joiner_id, id_b=host_id, entropy=os.urandom(64))
        assert a.finish(msg_b) == b.finish(msg_a)
    """

    __slots__ = ("_inner", "_done")

    def __init__(self, inner: Spake2State) -> None:
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
        if side not in ("A", "B"):
            raise ValueError("side is 'A' or 'B'")
        inner, msg = _use().start(side, bytes(password), bytes(id_a), bytes(id_b), bytes(entropy))
        return cls(inner), msg

    @staticmethod
    def check(peer_msg: bytes, side: Literal["A", "B"]) -> None:
        """Checks a message from side ``side`` before any SPAKE2 work of ours (no secret is
        involved): ``ProtocolError(MALFORMED)`` for a wrong length or side byte, a point that
        does not decode or is not canonical, the identity or a point outside the prime-order
        subgroup. A host calls it on a Hello before spending a scalar multiplication on it."""
        if side not in ("A", "B"):
            raise ValueError("side is 'A' or 'B'")
        try:
            _use().check(bytes(peer_msg), side)
        except ValueError as e:
            raise ProtocolError(RejectCode.MALFORMED, str(e)) from None

    def finish(self, peer_msg: bytes) -> bytes:
        """The shared 32-byte key; a bad peer message is ``ProtocolError(MALFORMED)``."""
        if self._done:
            raise ValueError("finish() may be called once")
        self._done = True
        try:
            return self._inner.finish(bytes(peer_msg))
        except ValueError as e:  # refused before any use of our secret (see the module doc)
            raise ProtocolError(RejectCode.MALFORMED, str(e)) from None
