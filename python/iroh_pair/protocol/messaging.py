"""Application messages sealed with the pairing's session keys (pure: no I/O, no clocks).

``docs/PROTOCOL.md`` §13 is the normative description; ``tests/vectors/messaging.json`` pins
the outputs. In short, per QUIC connection and direction (sender -> receiver):

* subkey = ``HKDF-SHA256(IKM = directional session key, salt = channel binding,
  info = b"iroh-pair/1 message key" || sender_id || receiver_id, L = 32)`` where the channel
  binding is the connection's ``export_keying_material(MESSAGING_BINDING_LABEL, b"", 32)``;
* each direction numbers its messages 0, 1, 2, …; the counter is the nonce
  (``4 zero bytes || u64 BE counter``), so a (subkey, nonce) pair never repeats and nothing is
  persisted: every connection has a new channel binding and thus new subkeys;
* wire format: ``u8 version (1) | u64 BE counter | ChaCha20-Poly1305(message_id[16] || payload)``
  (ciphertext || 16-byte tag), with the AAD of :func:`encode_aad` (version, message type,
  sender id, receiver id, kind, counter, and for replies the request's message id);
* the receiver keeps a sliding replay window per direction (:class:`ReplayWindow`), and
  optionally a per-peer LRU of seen message ids (:class:`SeenIds`) to drop retried duplicates;
* exactly-once delivery across restarts (§13.8): :class:`Deliveries` decides, per (peer,
  message id), whether a message is new, ``IN_PROGRESS`` (its handler is running) or a
  ``DUPLICATE`` (delivered before), in front of a persistent :class:`DeliveryStore` (the
  node's registry).

:class:`MessageChannel` is not thread-safe; use one per connection from one event loop.
"""

from __future__ import annotations

import enum
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from collections.abc import Hashable
from typing import Generic, Protocol, SupportsBytes, TypeVar, Union

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from iroh_pair.errors import FrameTooLarge, MessageRejected
from iroh_pair.protocol.constants import (
    CHANNEL_BINDING_LEN,
    MESSAGE_KEY_LABEL,
    MESSAGING_VERSION,
    StreamErrorCode,
)
from iroh_pair.protocol.kdf import SessionKeys

__all__ = [
    "MESSAGE_ID_LEN",
    "HEADER_LEN",
    "TAG_LEN",
    "OVERHEAD",
    "REPLAY_WINDOW",
    "SEEN_IDS_CAPACITY",
    "DEFAULT_MAX_PLAINTEXT",
    "MAX_COUNTER",
    "IdLike",
    "MessageType",
    "OpenedMessage",
    "ReplayWindow",
    "SeenIds",
    "DeliveryStore",
    "Deliveries",
    "MessageChannel",
    "derive_subkey",
    "encode_aad",
    "nonce",
    "new_message_id",
]

#: Length of a message id.
MESSAGE_ID_LEN = 16
#: ``u8 version | u64 counter``.
HEADER_LEN = 9
#: Poly1305 tag.
TAG_LEN = 16
#: Bytes a sealed message adds to its payload: header, message id, tag (41).
OVERHEAD = HEADER_LEN + MESSAGE_ID_LEN + TAG_LEN
#: Width of the replay window, in messages.
REPLAY_WINDOW = 1024
#: Default capacity of :class:`SeenIds`.
SEEN_IDS_CAPACITY = 4096
#: Default largest payload; a sealed message plus an envelope header (<= 34 bytes) then fits a
#: 16 MiB request frame.
DEFAULT_MAX_PLAINTEXT = 16 * 1024 * 1024 - 128
#: Largest counter (the counter is a u64).
MAX_COUNTER = 2**64 - 1

_KIND = re.compile(r"[a-z0-9._-]{1,32}")
_ZERO_ID = bytes(MESSAGE_ID_LEN)

#: A 32-byte EndpointId: raw bytes or anything with ``__bytes__`` (:class:`iroh_pair.EndpointId`).
IdLike = Union[bytes, SupportsBytes]
_P = TypeVar("_P", bound=Hashable)
_P_contra = TypeVar("_P_contra", bound=Hashable, contravariant=True)


class MessageType(enum.IntEnum):
    """Second AAD byte: a message opening an exchange, or the reply to one."""

    MESSAGE = 0
    REPLY = 1


@dataclass(frozen=True)
class OpenedMessage:
    """An authentic message: its sender-chosen ``message_id`` (stable across retries), the
    ``plaintext``, the ``counter`` it arrived under and its ``kind``."""

    message_id: bytes
    plaintext: bytes
    counter: int
    kind: str


# --------------------------------------------------------------------------------------------
# pure primitives


def _id(value: IdLike, what: str) -> bytes:
    raw = bytes(value)
    if len(raw) != 32:
        raise ValueError(f"{what} must be a 32-byte EndpointId")
    return raw


def _check_kind(kind: str) -> bytes:
    if not isinstance(kind, str) or not _KIND.fullmatch(kind):
        raise ValueError(f"invalid message kind {kind!r}: 1..32 characters of [a-z0-9._-]")
    return kind.encode("ascii")


def derive_subkey(
    session_key: bytes, channel_binding: bytes, sender_id: IdLike, receiver_id: IdLike
) -> bytes:
    """The per-connection key of one direction: ``HKDF-SHA256(IKM = session_key, salt =
    channel_binding, info = MESSAGE_KEY_LABEL || sender_id || receiver_id, L = 32)``."""
    if len(session_key) != 32:
        raise ValueError("session keys are 32 bytes")
    if len(channel_binding) != CHANNEL_BINDING_LEN:
        raise ValueError(f"channel binding must be {CHANNEL_BINDING_LEN} bytes")
    info = MESSAGE_KEY_LABEL + _id(sender_id, "sender_id") + _id(receiver_id, "receiver_id")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=channel_binding, info=info).derive(
        session_key
    )


def encode_aad(
    sender_id: IdLike,
    receiver_id: IdLike,
    kind: str,
    counter: int,
    reply_to: bytes | None = None,
) -> bytes:
    """Associated data of a message::

        u8 version | u8 type (0 message, 1 reply) | sender_id[32] | receiver_id[32]
        | u8 len(kind) | kind | u64 BE counter | reply_to[16] (the request's message id;
        16 zero bytes for type 0)
    """
    k = _check_kind(kind)
    if not 0 <= counter <= MAX_COUNTER:
        raise ValueError("counter out of range")
    if reply_to is not None and len(reply_to) != MESSAGE_ID_LEN:
        raise ValueError(f"reply_to must be a {MESSAGE_ID_LEN}-byte message id")
    mtype = MessageType.MESSAGE if reply_to is None else MessageType.REPLY
    return b"".join(
        (
            bytes([MESSAGING_VERSION, mtype]),
            _id(sender_id, "sender_id"),
            _id(receiver_id, "receiver_id"),
            bytes([len(k)]),
            k,
            counter.to_bytes(8, "big"),
            _ZERO_ID if reply_to is None else reply_to,
        )
    )


def nonce(counter: int) -> bytes:
    """The 96-bit nonce of ``counter``: 4 zero bytes || u64 BE counter."""
    return bytes(4) + counter.to_bytes(8, "big")


def new_message_id() -> bytes:
    """16 random bytes."""
    return os.urandom(MESSAGE_ID_LEN)


# --------------------------------------------------------------------------------------------
# receiver state


class ReplayWindow:
    """Sliding window over received counters: accepts each counter at most once, in any order,
    as long as it is within ``size`` of the highest counter accepted so far."""

    __slots__ = ("size", "_top", "_bits")

    def __init__(self, size: int = REPLAY_WINDOW) -> None:
        if size < 1:
            raise ValueError("window size must be positive")
        self.size = size
        self._top = -1  # highest accepted counter
        self._bits = 0  # bit i set: counter top - i accepted

    @property
    def highest(self) -> int | None:
        """The highest accepted counter, or ``None``."""
        return None if self._top < 0 else self._top

    def check(self, counter: int) -> StreamErrorCode | None:
        """``None`` if ``counter`` would be accepted, else ``TOO_OLD`` or ``REPLAYED``.
        Does not change the window."""
        if counter > self._top:
            return None
        behind = self._top - counter
        if behind >= self.size:
            return StreamErrorCode.TOO_OLD
        if (self._bits >> behind) & 1:
            return StreamErrorCode.REPLAYED
        return None

    def mark(self, counter: int) -> None:
        """Records ``counter`` as accepted (call only after :meth:`check` and authentication)."""
        if counter > self._top:
            shift = counter - self._top
            self._bits = ((self._bits << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            self._top = counter
        else:
            self._bits |= 1 << (self._top - counter)


class SeenIds:
    """A bounded LRU set of message ids already delivered from one peer (keep one per peer,
    across connections: a retry arrives on a new connection with a new counter but the same
    message id)."""

    def __init__(self, capacity: int = SEEN_IDS_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._ids: OrderedDict[bytes, None] = OrderedDict()

    def add(self, message_id: bytes) -> bool:
        """Records ``message_id``; ``True`` if it was new, ``False`` if already seen (it is then
        refreshed as most recent). The oldest id is forgotten beyond ``capacity``."""
        if message_id in self._ids:
            self._ids.move_to_end(message_id)
            return False
        self._ids[message_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return True

    def discard(self, message_id: bytes) -> None:
        """Forgets ``message_id`` (e.g. its handler failed, so a retry must be delivered)."""
        self._ids.pop(message_id, None)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)


class DeliveryStore(Protocol[_P_contra]):
    """Where :class:`Deliveries` persists delivered ids (the node uses its
    :class:`~iroh_pair.store.DeviceRegistry`)."""

    def is_delivered(self, peer: _P_contra, message_id: bytes, /) -> bool:
        """Whether ``message_id`` from ``peer`` was recorded (within the store's window)."""
        ...

    def record_delivered(self, peer: _P_contra, message_id: bytes, /) -> bool:
        """Records ``message_id`` from ``peer`` durably (one transaction); ``False`` if it was
        recorded already."""
        ...


class Deliveries(Generic[_P]):
    """The receiver's exactly-once bookkeeping of PROTOCOL.md §13.8, for every peer.

    For each authentic message (type 0) call :meth:`begin`: ``None`` means "deliver it" (the id
    is now *in flight*), ``IN_PROGRESS`` that a message with this id is being handled right now,
    ``DUPLICATE`` that it was delivered before. When the handler has returned, :meth:`commit`
    records the id in ``store`` (one transaction) *before* the reply is sent; when it failed,
    :meth:`abort` records nothing, so that a retry is delivered. The in-flight set lives in
    memory only (a restart ends every handler); ``cache`` ids per peer (an LRU of
    :class:`SeenIds`) answer repeated duplicates without asking the store. Without a store the
    ids are remembered in memory only (at most ``cache_capacity`` per peer).

    Example::

        d = Deliveries(registry)
        if (verdict := d.begin(peer, mid)) is None:
            try:
                reply = handler(data)
            except Exception:
                d.abort(peer, mid)      # HANDLER_ERROR: a retry is delivered
                raise
            d.commit(peer, mid)         # then send the reply
        else:
            reject(verdict)             # DUPLICATE or IN_PROGRESS
    """

    def __init__(
        self, store: DeliveryStore[_P] | None = None, *, cache_capacity: int = SEEN_IDS_CAPACITY
    ) -> None:
        self.store = store
        self.cache_capacity = cache_capacity
        self._cache: dict[_P, SeenIds] = {}
        self._in_flight: set[tuple[_P, bytes]] = set()

    def begin(self, peer: _P, message_id: bytes) -> StreamErrorCode | None:
        """``None`` (the message is new: it is now in flight), ``IN_PROGRESS`` or ``DUPLICATE``.
        May raise the store's errors (then nothing changed)."""
        mid = bytes(message_id)
        if (peer, mid) in self._in_flight:
            return StreamErrorCode.IN_PROGRESS
        seen = self._cache.get(peer)
        if seen is not None and mid in seen:
            seen.add(mid)  # refresh
            return StreamErrorCode.DUPLICATE
        if self.store is not None and self.store.is_delivered(peer, mid):
            self._seen(peer).add(mid)
            return StreamErrorCode.DUPLICATE
        self._in_flight.add((peer, mid))
        return None

    def commit(self, peer: _P, message_id: bytes) -> None:
        """The handler of ``message_id`` returned: records it (store, then cache) and ends its
        flight. If the store fails, the error propagates, but the id is still remembered in
        memory (the handler did run)."""
        mid = bytes(message_id)
        try:
            if self.store is not None:
                self.store.record_delivered(peer, mid)
        finally:
            self._in_flight.discard((peer, mid))
            self._seen(peer).add(mid)

    def abort(self, peer: _P, message_id: bytes) -> None:
        """The handler of ``message_id`` failed: nothing is recorded, a retry will be delivered."""
        self._in_flight.discard((peer, bytes(message_id)))

    def forget(self, peer: _P) -> None:
        """Forgets ``peer``'s cached and in-flight ids (unpaired or re-paired; the store's ids
        are the store's business)."""
        self._cache.pop(peer, None)
        self._in_flight = {k for k in self._in_flight if k[0] != peer}

    def in_flight(self, peer: _P, message_id: bytes) -> bool:
        """Whether the handler of ``message_id`` from ``peer`` is running."""
        return (peer, bytes(message_id)) in self._in_flight

    def _seen(self, peer: _P) -> SeenIds:
        seen = self._cache.get(peer)
        if seen is None:
            seen = self._cache[peer] = SeenIds(self.cache_capacity)
        return seen


# --------------------------------------------------------------------------------------------
# the channel


class MessageChannel:
    """Sealing and opening of application messages between us (``local_id``) and one paired
    peer (``peer_id``) on one QUIC connection.

    ``keys`` are our :class:`~iroh_pair.protocol.kdf.SessionKeys` with the peer (``keys.send``
    seals, ``keys.receive`` opens; the peer's channel is the mirror image), ``channel_binding``
    the connection's ``export_keying_material(MESSAGING_BINDING_LABEL, b"", 32)``. Create a new
    channel for every connection; never reuse one across connections.

    ``seen`` (optional, one per peer, shared across its connections) makes :meth:`open` reject
    a message id delivered before with ``DUPLICATE`` (replies are not deduplicated).
    """

    def __init__(
        self,
        local_id: IdLike,
        peer_id: IdLike,
        keys: SessionKeys,
        channel_binding: bytes,
        *,
        seen: SeenIds | None = None,
        window: int = REPLAY_WINDOW,
        max_plaintext: int = DEFAULT_MAX_PLAINTEXT,
    ) -> None:
        self.local_id = _id(local_id, "local_id")
        self.peer_id = _id(peer_id, "peer_id")
        self._seal = ChaCha20Poly1305(
            derive_subkey(keys.send, channel_binding, self.local_id, self.peer_id)
        )
        self._open = ChaCha20Poly1305(
            derive_subkey(keys.receive, channel_binding, self.peer_id, self.local_id)
        )
        self._next = 0
        self._window = ReplayWindow(window)
        self.seen = seen
        self.max_plaintext = max_plaintext

    @property
    def next_counter(self) -> int:
        """The counter the next :meth:`seal` will use (= messages sealed so far)."""
        return self._next

    @property
    def window(self) -> ReplayWindow:
        """The receive direction's replay window."""
        return self._window

    def seal(
        self,
        kind: str,
        plaintext: bytes,
        message_id: bytes | None = None,
        *,
        reply_to: bytes | None = None,
    ) -> bytes:
        """Seals ``plaintext`` for the peer under the next counter.

        ``message_id`` (16 bytes) defaults to a fresh random id; pass the same id again to
        retry a message (on a new connection). ``reply_to`` is the request's message id when
        sealing a reply. Raises :class:`~iroh_pair.errors.FrameTooLarge` above
        ``max_plaintext`` and ``ValueError`` for a bad kind or id.
        """
        data = bytes(plaintext)
        if len(data) > self.max_plaintext:
            raise FrameTooLarge(
                f"message of {len(data)} bytes over the limit of {self.max_plaintext}",
                len(data),
                self.max_plaintext,
            )
        mid = new_message_id() if message_id is None else bytes(message_id)
        if len(mid) != MESSAGE_ID_LEN:
            raise ValueError(f"message_id must be {MESSAGE_ID_LEN} bytes")
        counter = self._next
        if counter > MAX_COUNTER:  # pragma: no cover - 2**64 messages on one connection
            raise OverflowError("message counter exhausted: reconnect")
        aad = encode_aad(self.local_id, self.peer_id, kind, counter, reply_to)
        self._next = counter + 1
        header = bytes([MESSAGING_VERSION]) + counter.to_bytes(8, "big")
        return header + self._seal.encrypt(nonce(counter), mid + data, aad)

    def open(self, kind: str, sealed: bytes, *, reply_to: bytes | None = None) -> OpenedMessage:
        """Authenticates and decrypts a message from the peer that arrived on a stream of
        ``kind`` (``reply_to``: the message id of our request, when this is its reply).

        Raises :class:`~iroh_pair.errors.MessageRejected`: ``MALFORMED_MESSAGE`` (too short,
        unknown version), ``FRAME_TOO_LARGE``, ``TOO_OLD`` / ``REPLAYED`` (replay window), ``TAMPERED`` (any
        authentication failure), ``DUPLICATE`` (with ``seen``, an id delivered before).
        Only an authentic message changes the window.
        """
        _check_kind(kind)
        if reply_to is not None and len(reply_to) != MESSAGE_ID_LEN:
            raise ValueError(f"reply_to must be a {MESSAGE_ID_LEN}-byte message id")
        data = bytes(sealed)
        if len(data) < OVERHEAD:
            raise MessageRejected(StreamErrorCode.MALFORMED_MESSAGE, f"{len(data)} bytes is too short")
        if data[0] != MESSAGING_VERSION:
            raise MessageRejected(StreamErrorCode.MALFORMED_MESSAGE, f"unknown version {data[0]}")
        counter = int.from_bytes(data[1:HEADER_LEN], "big")
        if len(data) - OVERHEAD > self.max_plaintext:
            raise MessageRejected(
                StreamErrorCode.FRAME_TOO_LARGE,
                f"{len(data) - OVERHEAD} bytes over the limit of {self.max_plaintext}",
                counter=counter,
            )
        verdict = self._window.check(counter)
        if verdict is not None:
            raise MessageRejected(verdict, f"counter {counter}", counter=counter)
        aad = encode_aad(self.peer_id, self.local_id, kind, counter, reply_to)
        try:
            inner = self._open.decrypt(nonce(counter), data[HEADER_LEN:], aad)
        except InvalidTag:
            raise MessageRejected(
                StreamErrorCode.TAMPERED, "authentication failed", counter=counter
            ) from None
        self._window.mark(counter)
        mid, payload = inner[:MESSAGE_ID_LEN], inner[MESSAGE_ID_LEN:]
        if reply_to is None and self.seen is not None and not self.seen.add(mid):
            raise MessageRejected(
                StreamErrorCode.DUPLICATE,
                f"message {mid.hex()} was already delivered",
                counter=counter,
                message_id=mid,
            )
        return OpenedMessage(message_id=mid, plaintext=payload, counter=counter, kind=kind)

    def __repr__(self) -> str:
        return (
            f"MessageChannel({self.local_id.hex()[:10]} <-> {self.peer_id.hex()[:10]}, "
            f"sent={self._next}, highest_received={self._window.highest})"
        )
