"""The exceptions of iroh-pair.

Python defines the hierarchy; the native extension maps its single Rust error enum onto these
classes in one place (``impl From<Error> for PyErr`` in ``rust/iroh-pair-native/src/error.rs``).
Every error the package raises is an :class:`IrohPairError`, so ``except IrohPairError`` catches
all of them; the ones caused by bad arguments are also :class:`ValueError`, and timeouts are
also the builtin :class:`TimeoutError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: this module imports nothing of the package at run time
    from iroh_pair.protocol.constants import RejectCode

__all__ = [
    "IrohPairError",
    "TransportError",
    "BindError",
    "ConnectError",
    "ConnectionLost",
    "StreamReset",
    "StreamClosed",
    "FrameTooLarge",
    "TruncatedFrame",
    "Timeout",
    "InvalidKey",
    "InvalidTicket",
    "RemoteError",
    "ProtocolError",
]


class IrohPairError(Exception):
    """Base class of every error raised by iroh-pair."""


class TransportError(IrohPairError):
    """Something went wrong in the iroh transport."""


class BindError(TransportError):
    """The endpoint could not be bound (address in use, bad option)."""


class ConnectError(TransportError):
    """A dial failed: no address known for the peer, handshake refused, wrong ALPN."""


class ConnectionLost(TransportError):
    """The connection is closed.

    ``code`` and ``reason`` are the application close code and reason when the connection was
    closed by an application (ours or the peer's), ``by_peer`` says which side closed it, and
    ``kind`` names the cause ("application", "timed_out", "reset", "locally_closed", ...).
    """

    def __init__(
        self,
        message: str,
        code: int | None = None,
        reason: bytes = b"",
        by_peer: bool = False,
        kind: str = "application",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.by_peer = by_peer
        self.kind = kind


class StreamReset(TransportError):
    """The peer reset the stream (or stopped reading it) with an application error ``code``."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class StreamClosed(TransportError):
    """The stream was already finished, reset or stopped locally."""


class FrameTooLarge(TransportError):
    """A frame's length prefix, or a message, is larger than the allowed maximum."""

    def __init__(self, message: str, length: int, limit: int) -> None:
        super().__init__(message)
        self.length = length
        self.limit = limit


class TruncatedFrame(TransportError):
    """The stream ended in the middle of a frame or exact read."""


class Timeout(TransportError, TimeoutError):
    """An operation did not complete within its timeout."""


class InvalidKey(IrohPairError, ValueError):
    """A secret key or EndpointId could not be parsed."""


class InvalidTicket(IrohPairError, ValueError):
    """An iroh ticket or address string could not be parsed."""


class RemoteError(IrohPairError):
    """The peer's handler failed; it reset the stream with application ``code``."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class ProtocolError(IrohPairError):
    """A pairing message or envelope was malformed, oversized, out of order or refused.

    ``code`` is the :class:`~iroh_pair.protocol.constants.RejectCode`; this is the only
    exception the decoders and state machines of :mod:`iroh_pair.protocol` raise for bad input.
    """

    def __init__(self, code: RejectCode, message: str = "") -> None:
        super().__init__(f"{code.name}: {message}" if message else code.name)
        self.code = code
        self.reason = message or code.name.lower()
