"""The :class:`Node` facade: identity, registry, admission, pairing, encrypted messaging, events.

One node per data directory (a lock enforces it). Its endpoint serves the package's one ALPN,
``iroh-pair/1``. Every connection is kept in the :class:`~iroh_pair.ConnectionCache`:
one per paired device, dialed by EndpointId (iroh finds the path), reused for every message,
each message on a new stream. The pairing connection becomes the messaging connection.

Typical use::

    async with await Node.open("~/.local/share/myapp", name="laptop") as node:
        hosted = await node.host_pairing()
        print(hosted.code)                 # show it, or its QR code
        device = await hosted.wait()       # the joiner paired
        reply = await node.request(device, b"hello")
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union, get_args

from iroh_pair import _qr, store
from iroh_pair._cache import CacheStats, ConnectionCache
from iroh_pair._dispatch import MessageHandler, Messages, code_name
from iroh_pair._files import (
    FILE_KIND,
    BlobStore,
    FileOffer,
    FileOfferHandler,
    FileReceipt,
    FileTransfer,
    Fetched,
    ProgressCallback,
    FileProgress,
    Offer,
    OfferEntry,
    decode_reply,
    encode_dir_offer,
    encode_offer,
    encode_reply,
    parse_offer,
    sanitize_entries,
    sanitize_file_name,
    same_file,
    unique_destination,
    walk_tree_stat,
)
from iroh_pair._dispatch import reject as _reject
from iroh_pair._hosting import Hosted
from iroh_pair._receiving import TempTree, remove_leftover, temp_name
from iroh_pair._peer import Links
from iroh_pair._pairing import (
    HOST_FIRST_FRAME_TIMEOUT,
    JOINER_REPLY_TIMEOUT,
    ConfirmSas,
    refuse,
    refuse_version_1,
    run_host,
    run_joiner,
)
from iroh_pair.config import load_options
from iroh_pair.errors import (
    AmbiguousNameplate,
    ConnectError,
    DestinationChanged,
    DiskFull,
    FileChanged,
    FileTransferError,
    TooManyTransfers,
    TransferStalled,
    VerificationFailed,
    OfferDeclined,
    InvalidCode,
    IrohPairError,
    NameplateNotFound,
    PairingFailed,
    ProtocolError,
    RemoteError,
    Timeout,
    TransportError,
)
from iroh_pair.protocol.code import PairingCode
from iroh_pair.protocol.constants import (
    ALPN,
    CHANNEL_BINDING_CONTEXT,
    CHANNEL_BINDING_LEN,
    MAX_MESSAGE,
    MESSAGING_BINDING_LABEL,
    PAIR_KIND,
    PAIR_KIND_V1,
    CloseCode,
    RejectCode,
    StreamErrorCode,
)
from iroh_pair.protocol.device import FIELD_LIMITS, DeviceInfo
from iroh_pair.protocol.envelope import decode_header, encode_header
from iroh_pair.protocol.lan import LanCode, looks_spoken
from iroh_pair.protocol.messaging import (
    MESSAGE_ID_LEN,
    Deliveries,
    MessageChannel,
    new_message_id,
)
from iroh_pair.protocol.offer import CONFIRM_TIMEOUT, OfferBook, PairingOffer
from iroh_pair.protocol.pairing import Failed, PairingResult
from iroh_pair.store import (
    REGISTRY_FILE,
    DeviceRegistry,
    PairedDevice,
    PendingMessage,
    sanitize_text,
)
from iroh_pair.transport import (
    DEFAULT_MAX_MESSAGE,
    Connection,
    Endpoint,
    EndpointAddr,
    EndpointId,
    IncomingStream,
    KindLimits,
    NetworkOptions,
)

__all__ = [
    "Node",
    "NodeEvent",
    "NodeEventKind",
    "PathKind",
    "NodeStats",
    "NodeCounters",
    "AdmissionStats",
    "HostedPairing",
    "MessageHandler",
    "DEFAULT_KIND",
    "OUTBOX_TTL",
    "OUTBOX_MAX_MESSAGES",
    "OUTBOX_MAX_BYTES",
    "OUTBOX_RETRY_MIN",
    "OUTBOX_RETRY_MAX",
    "OUTBOX_ATTEMPT_TIMEOUT",
]

log = logging.getLogger("iroh_pair.node")

#: The stream kind of :meth:`Node.request` and :meth:`Node.send` unless another is given.
DEFAULT_KIND = "msg"

# Admission of unknown peers (docs/PROTOCOL.md §9.1, §11).
#: An unknown connection must deliver its ``pair2`` first frame (header and Hello) this soon
#: after being accepted, or it is closed (``NOT_PAIRED``, "pairing did not start").
UNKNOWN_START_TIMEOUT = 5.0
#: After a failed attempt, an unknown peer's connection is closed this long after (the Reject
#: gets there first).
FAILURE_GRACE = 1.0
#: Concurrent bidirectional streams an unknown peer may have open (the endpoint's initial
#: limit: QUIC cannot take back stream credit, so paired peers are raised, never the reverse).
UNKNOWN_MAX_BI_STREAMS = 2
#: Concurrent bidirectional streams of a paired peer (iroh's default).
PAIRED_MAX_BI_STREAMS = 100
#: Largest first frame of a ``pair``/``pair2`` stream: a 64 KiB message and its envelope header.
PAIR_FRAME_LIMIT = MAX_MESSAGE + 64
#: Largest first frame of a paired peer's other streams: a 16 MiB message and its overhead.
PAIRED_FRAME_LIMIT = DEFAULT_MAX_MESSAGE + 1024
#: A paired peer's stream must deliver its first frame this soon (an unknown peer's:
#: :data:`~iroh_pair._pairing.HOST_FIRST_FRAME_TIMEOUT`, 10 s).
PAIRED_FIRST_FRAME_TIMEOUT = 30.0
#: First delay before retrying a message the receiver answered ``IN_PROGRESS`` (doubles each
#: time up to :data:`IN_PROGRESS_MAX_BACKOFF`, within the request's timeout).
IN_PROGRESS_BACKOFF = 0.05
IN_PROGRESS_MAX_BACKOFF = 1.0

# The outbox (Node.enqueue)
#: How long a queued message waits for its device by default, and at most (seconds): the
#: receiver's delivered-id window (24 h). Every retry of a message then comes within 24 h of
#: any attempt that reached the receiver's handler, so a retry is recognised as a duplicate
#: (docs/PROTOCOL.md §13.8); a longer wait could deliver it twice.
OUTBOX_TTL = store.DELIVERED_WINDOW
#: The most messages queued per device by default (:meth:`Node.open`'s ``outbox_max_messages``).
OUTBOX_MAX_MESSAGES = 1000
#: The most payload bytes queued per device by default (``outbox_max_bytes``: 64 MiB).
OUTBOX_MAX_BYTES = 64 * 1024 * 1024
#: The first wait after a failed delivery attempt (seconds); it doubles after each failure up
#: to ``outbox_retry_max`` (:data:`OUTBOX_RETRY_MAX`), each wait drawn from its upper half.
OUTBOX_RETRY_MIN = 1.0
#: The longest wait between delivery attempts by default (seconds).
OUTBOX_RETRY_MAX = 60.0
#: One delivery attempt (dial, send, the receiver's handler, its acknowledgement) ends after this.
OUTBOX_ATTEMPT_TIMEOUT = 30.0
#: How long :meth:`Node.send_file` waits for a device that went away mid-transfer to be
#: reachable again before it gives up (seconds; its ``reconnect_timeout``).
FILE_RECONNECT_TIMEOUT = 600.0
#: The longest pause between two attempts to reach such a device again (seconds).
FILE_RETRY_MAX = 5.0
#: How many answered file offers a node remembers (per offer id: a retried offer gets the
#: same answer and nothing is fetched twice).
FILE_OFFERS_REMEMBERED = 256
#: How many of those answers one sending device can hold (its own oldest go first, so one
#: device's many offers do not push out another's answers).
FILE_OFFERS_PER_DEVICE = 64
#: The most offers from one paired device a node receives at once (from the offer to the
#: reply: the handler's decision and the fetch); one more is answered "failed" with the type
#: ``TooManyTransfers`` (:class:`~iroh_pair.errors.TooManyTransfers` at the sender), nothing
#: fetched. A retry of an offer being received joins it and does not count again.
FILE_RECEIVES_PER_DEVICE = 4
#: The most offers a node receives at once from all devices together.
FILE_RECEIVES_TOTAL = 16
#: A fetch that makes no progress for this long (seconds) is cancelled and the offer answered
#: "failed" with the type ``TransferStalled`` (:meth:`Node.on_file_offer`'s ``stall_timeout``).
FILE_STALL_TIMEOUT = 60.0

#: A message handler: ``(device, data)`` in; a reply (``bytes``), or ``None`` for none.
DeviceRef = Union[str, EndpointId, PairedDevice]


#: What a :class:`NodeEvent` says happened (``ev.kind``); compare it with the strings.
NodeEventKind = Literal[
    "paired", "unpaired", "connected", "path_changed", "disconnected", "lan_appeared", "lan_left",
    "outbox_expired",
]
#: The path a connection uses (``NodeEvent.path``): through a relay, or direct (UDP).
PathKind = Literal["direct", "relay"]


@dataclass(frozen=True)
class NodeEvent:
    """Something that happened to a device (:meth:`Node.events`).

    ``kind`` (a :data:`NodeEventKind`) is one of:

    - "paired", "unpaired": the device was stored (``detail`` is the SAS) or forgotten;
    - "connected": the node now holds a connection to the device (it had none), dialed or
      accepted; ``path`` is the path it uses then;
    - "path_changed": the selected path of a connection changed (``path``: "relay" or
      "direct"), e.g. from the relay to a direct path once hole punching succeeded;
    - "disconnected": the device's last connection closed (``detail`` says how: "application",
      "timed_out", ...);
    - "lan_appeared", "lan_left", for a node opened with mDNS on (``NetworkOptions.lan()``, or
      ``mdns=True``): a paired device's mDNS announcements were seen, or expired;
    - "outbox_expired": a message queued for the device (:meth:`Node.enqueue`) was not
      delivered before its time ran out and was removed; ``detail`` is its message id in hex.

    ``path`` (a :data:`PathKind`) is "direct" or "relay" for connected and path_changed when
    known, else ``None``. Example::

        async for ev in node.events():
            if ev.kind == "connected":
                print(ev.name, "is online over the", ev.path)
    """

    kind: NodeEventKind
    device_id: EndpointId
    name: str = ""
    path: PathKind | None = None
    detail: str = ""


@dataclass(frozen=True)
class NodeCounters:
    """The node's own counters (:attr:`NodeStats.node`), since it opened.

    ``pairing_messages_received``: pairing messages a hosted code received;
    ``messages_delivered``/``messages_rejected``: messages handled, or refused (by reason in
    :attr:`NodeStats.rejections`); ``not_admitted``: every refused connection and stream. The
    admission of unknown peers (docs/PROTOCOL.md §9.1): ``unknown_admitted``,
    ``unknown_evicted`` (closed to make room, "evicted"), ``unknown_refused`` (every slot was
    pairing), ``unknown_start_timeouts`` (no pairing within ``unknown_start_timeout``),
    ``unknown_closed_offer_end``, ``unknown_promoted`` (paired: no longer unknown) and
    ``unknown_protocol_errors`` (closed for a malformed Hello). Example::

        >>> NodeCounters().unknown_evicted
        0
    """

    pairing_messages_received: int = 0
    messages_delivered: int = 0
    messages_rejected: int = 0
    not_admitted: int = 0
    unknown_admitted: int = 0
    unknown_evicted: int = 0
    unknown_refused: int = 0
    unknown_start_timeouts: int = 0
    unknown_closed_offer_end: int = 0
    unknown_promoted: int = 0
    unknown_protocol_errors: int = 0


@dataclass(frozen=True)
class AdmissionStats:
    """Unknown-peer slots (§9.1) now: ``unknown_connections`` in use of
    ``max_unknown_connections`` (a :meth:`Node.open` parameter). Example::

        >>> AdmissionStats(unknown_connections=1, max_unknown_connections=4).unknown_connections
        1
    """

    unknown_connections: int
    max_unknown_connections: int


@dataclass(frozen=True)
class NodeStats:
    """A snapshot of a node's counters (:meth:`Node.stats`).

    ``endpoint``: the native endpoint's counters (:meth:`Endpoint.stats
    <iroh_pair.transport.Endpoint.stats>`: connections accepted and dialed, streams, bytes on
    the wire ``wire_bytes_sent`` / ``wire_bytes_recv``, ...);
    ``cache``: the connection cache's (:class:`~iroh_pair.CacheStats`); ``node``: the node's
    own (:class:`NodeCounters`); ``rejections``: refused messages by reason (e.g.
    ``{"DUPLICATE": 1}``); ``admission``: the unknown-peer slots in use now
    (:class:`AdmissionStats`). Example::

        s = node.stats()
        print(s.admission.unknown_connections, s.node.unknown_evicted, s.cache.live)
    """

    endpoint: dict[str, int]
    cache: CacheStats
    node: NodeCounters
    rejections: dict[str, int]
    admission: AdmissionStats


@dataclass
class _ConnState:
    conn: Connection
    channel: MessageChannel | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    #: the first-frame limits its serve loop applies (raised when the peer is promoted)
    limits: KindLimits | None = None
    #: channels of keys this connection no longer uses, by (send, receive) key: never rebuilt
    retired: dict[tuple[bytes, bytes], MessageChannel] = field(default_factory=dict)
    #: the (send, receive) session keys ``channel`` was built with
    channel_keys: tuple[bytes, bytes] = (b"", b"")
    #: a task turns its path events into path_changed events (once there is a subscriber)
    paths_watched: bool = False
    #: the selected path as last reported (connected, path_changed), or as it was at setup
    path: PathKind | None = None

    def retire_channel(self) -> None:
        """The peer's keys changed (re-paired, or a re-pairing undone): the next message
        builds or restores the channel of the current keys."""
        if self.channel is not None:
            self.retired[self.channel_keys] = self.channel
            self.channel = None


@dataclass(eq=False)
class _Unknown:
    """An accepted connection from an EndpointId not in the registry (§9.1): it holds one of
    the ``max_unknown_connections`` slots (a :meth:`Node.open` parameter) until it is promoted
    (paired) or closed."""

    conn: Connection
    #: its ``pair2`` first frame (header and Hello) arrived
    started: bool = False
    #: pairing handshakes running on it (a Hello being answered, or past it)
    handshakes: int = 0
    #: a close is scheduled (after a failed attempt's grace)
    closing: bool = False
    timer: asyncio.TimerHandle | None = None

    @property
    def idle(self) -> bool:
        """No handshake in progress: the first to go when the slots are full."""
        return self.handshakes == 0


class HostedPairing:
    """A pairing code this node is hosting. ``await wait()`` gives the paired device; it fails
    with :class:`PairingFailed` when the code expires, burns or is cancelled.

    ``code`` is the full code (``str()`` to share it, :attr:`qr_text` / :meth:`qr_svg` /
    :meth:`qr_png` to show it as a QR code); in LAN mode ``spoken`` is the short code to read
    aloud (``str(hosted.spoken)``, e.g. ``7-ocean-tiger-river``). ``confirm`` is the SAS
    confirmation callback the code was hosted with (``None``: approved at once)."""

    def __init__(
        self,
        code: PairingCode,
        offer: PairingOffer,
        fut: asyncio.Future[PairedDevice],
        spoken: LanCode | None = None,
        confirm: ConfirmSas | None = None,
        cancel: Callable[[], None] | None = None,
    ):
        self.code = code
        self.offer = offer
        self.spoken = spoken
        self.confirm = confirm
        self._fut = fut
        self._cancel = cancel

    def cancel(self) -> None:
        """Ends the code: no new handshake may start with it, and :meth:`wait` raises
        :class:`~iroh_pair.errors.PairingFailed` (``CANCELLED``). A handshake already under way
        is let finish, as at expiry (the joiner may already hold its keys): if it pairs,
        :meth:`wait` returns that device instead. Nothing happens to a code that has ended.
        Example::

            hosted = await node.host_pairing()
            ...
            hosted.cancel()          # the user closed the dialog
        """
        if not self._fut.done() and self._cancel is not None:
            self._cancel()

    async def wait(self, timeout: float | None = None) -> PairedDevice:
        """Waits for a device to pair with this code: :class:`~iroh_pair.errors.PairingFailed`
        when the code ends without one, :class:`~iroh_pair.errors.Timeout` (a TimeoutError)
        when ``timeout`` seconds pass first (the code stays live)."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._fut), timeout)
        except TimeoutError:
            if self._fut.done():
                raise
            raise Timeout(f"no device paired with this code within {timeout:g} s") from None

    @property
    def done(self) -> bool:
        """Whether the code has ended: a device paired, or it expired, burned or was cancelled."""
        return self._fut.done()

    @property
    def qr_text(self) -> str:
        """The exact text to put in a QR code: the full code (``str(hosted.code)``), which
        :meth:`Node.join` takes as it is. Any QR library can encode it; :meth:`qr_svg` and
        :meth:`qr_png` make the image. Example::

            hosted = await node.host_pairing()
            my_qr_widget.set_text(hosted.qr_text)
        """
        return str(self.code)

    def qr_svg(self, *, scale: int = 4, border: int = 4) -> bytes:
        """:attr:`qr_text` as a QR code in an SVG document (UTF-8 bytes): ``scale`` units per
        module, a quiet zone of ``border`` modules, error correction L (the smallest symbol for
        a long code). Example::

            Path("pair.svg").write_bytes(hosted.qr_svg(scale=8))
        """
        return _qr.svg(self.qr_text, scale=scale, border=border)

    def qr_png(self, *, scale: int = 4, border: int = 4) -> bytes:
        """:attr:`qr_text` as a QR code in a PNG image (black on white): ``scale`` pixels per
        module, a quiet zone of ``border`` modules. Example::

            response.body = hosted.qr_png(scale=6)   # image/png
        """
        return _qr.png(self.qr_text, scale=scale, border=border)

    def __repr__(self) -> str:
        return f"<HostedPairing {self.offer!r} done={self.done}>"


class Node:
    """A device: its identity, its paired devices, and its connections to them."""

    def __init__(self) -> None:  # use Node.open
        self.endpoint: Endpoint
        self.cache: ConnectionCache[EndpointId, Connection]
        self._links: Links  # the dial/accept/admission loop, shared with RequestPeer
        self.registry: DeviceRegistry
        self.info: DeviceInfo
        self.data_dir: Path
        self._lock: store.DataDirLock
        self._devices: dict[EndpointId, PairedDevice] = {}
        self._offers = OfferBook()
        self._hosted: dict[bytes, Hosted] = {}  # by the offer's tag
        self._on_lan: set[EndpointId] = set()
        #: paired devices with a live connection, as last reported ("connected" events)
        self._present: set[EndpointId] = set()
        self._lan_reported: set[EndpointId] = set()
        # tuning (see open())
        self._lan_lookup_timeout = 10.0
        self._online_timeout = 10.0
        self._max_unknown_connections = 4
        self._unknown_start_timeout = UNKNOWN_START_TIMEOUT
        self._dial_timeout = 10.0
        self._uses_relay = False
        self._uses_lookup = False
        self._hints: dict[EndpointId, EndpointAddr] = {}
        self._conns: dict[int, _ConnState] = {}
        #: exactly-once bookkeeping (§13.8): in-flight ids, an LRU, the registry behind them
        self._deliveries: Deliveries[EndpointId] = Deliveries()
        self._sas: dict[EndpointId, str] = {}
        # the outbox (enqueue): its limits, and one delivery task per device with messages
        self._outbox_ttl = OUTBOX_TTL
        self._outbox_max_messages = OUTBOX_MAX_MESSAGES
        self._outbox_max_bytes = OUTBOX_MAX_BYTES
        self._outbox_retry_max = OUTBOX_RETRY_MAX
        #: a wake-up per device whose delivery task runs (set: try again now)
        self._outbox_wake: dict[EndpointId, asyncio.Event] = {}
        self._subscribers: set[asyncio.Queue[NodeEvent | None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        #: unknown connections by stable id, oldest first (§9.1)
        self._unknown: dict[int, _Unknown] = {}
        self._closed = False
        self.counters: dict[str, int] = {
            "pairing_messages_received": 0,
            "messages_delivered": 0,
            "messages_rejected": 0,
            "not_admitted": 0,
            # admission of unknown peers (§9.1)
            "unknown_admitted": 0,
            "unknown_evicted": 0,
            "unknown_refused": 0,
            "unknown_start_timeouts": 0,
            "unknown_closed_offer_end": 0,
            "unknown_promoted": 0,
            "unknown_protocol_errors": 0,
        }
        self.rejections: dict[str, int] = {}
        self._messages = Messages(self._deliveries, self.counters, self.rejections, self._spawn)
        # files (iroh-blobs): the store opens on first use; offers arrive as FILE_KIND messages
        self._blobs: BlobStore | None = None
        self._blobs_lock = asyncio.Lock()
        self._file_handler: FileOfferHandler | None = None
        self._file_progress: Callable[[FileOffer, FileProgress], object] | None = None
        self._messages.handlers[FILE_KIND] = self._file_offer
        #: file offers being received or answered, per (sender, offer id): a retry of the
        #: same offer joins the running job or gets its answer
        self._file_jobs: dict[tuple[EndpointId, str], asyncio.Future[bytes]] = {}
        #: every offer being received, per sender (with or without an offer id): the caps
        #: FILE_RECEIVES_PER_DEVICE and FILE_RECEIVES_TOTAL count these
        self._file_active: dict[EndpointId, set[asyncio.Future[bytes]]] = {}
        self._file_stall_timeout = FILE_STALL_TIMEOUT
        #: the temporary trees of directory offers being received, as recorded (before each
        #: is made) in DATA_DIR/file-partials.json: what a killed process left is removed
        #: when the node opens again
        self._partials: set[str] = set()
        #: the answers (stored/declined) of the last offers, per (sender hex, offer id), as
        #: kept in DATA_DIR/file-offers.json: a retry after a restart of this node gets them
        self._file_answers: dict[tuple[str, str], bytes] | None = None

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(
        cls,
        data_dir: str | os.PathLike[str],
        *,
        name: str | None = None,
        device_type: str = "other",
        os_name: str = "",
        app_version: str = "",
        options: NetworkOptions | None = None,
        dial_timeout: float = 10.0,
        online_timeout: float = 10.0,
        lan_lookup_timeout: float = 10.0,
        max_unknown_connections: int = 4,
        unknown_start_timeout: float = UNKNOWN_START_TIMEOUT,
        outbox_ttl: float = OUTBOX_TTL,
        outbox_max_messages: int = OUTBOX_MAX_MESSAGES,
        outbox_max_bytes: int = OUTBOX_MAX_BYTES,
        outbox_retry_max: float = OUTBOX_RETRY_MAX,
    ) -> Node:
        """Opens the node in ``data_dir`` (created 0700): takes the directory's lock (a second
        process gets :class:`~iroh_pair.errors.DataDirLocked`), loads or creates the secret
        key, opens the registry and binds the endpoint.

        ``options`` (:class:`~iroh_pair.transport.NetworkOptions`) defaults to the data
        directory's configuration: its ``config.toml`` under the ``IROH_PAIR_*`` environment
        variables, over :meth:`NetworkOptions.n0() <iroh_pair.transport.NetworkOptions.n0>`
        (n0's public relays and address lookup) when neither sets anything
        (:func:`iroh_pair.config.load_options`; a bad setting raises
        :class:`~iroh_pair.errors.ConfigError`). Use ``NetworkOptions.self_hosted(...)`` for your own servers (see
        docs/SELF_HOSTING.md), ``NetworkOptions.loopback()`` for a loopback-only node, or
        ``NetworkOptions.lan()`` for LAN discovery with no server (paired devices on the same
        LAN are found by id, and ``host_pairing(lan=True)`` codes work). The node sets
        ``max_bi_streams`` itself (an unknown peer's limit; paired ones are raised). Example::

            node = await Node.open("~/.local/share/my-app", options=NetworkOptions.loopback())

        Tuning: ``dial_timeout`` bounds each dial; ``online_timeout`` how long
        :meth:`host_pairing` and :meth:`wait_reachable` wait for the home relay and the lookup
        record; ``lan_lookup_timeout`` how long :meth:`join` looks for a spoken code's
        nameplate on the LAN; ``max_unknown_connections`` how many connections from unpaired
        ids are admitted at once while a code is hosted (§9.1; when full, the oldest idle one
        goes); ``unknown_start_timeout`` how long such a connection may wait before starting
        to pair (:data:`UNKNOWN_START_TIMEOUT`).

        The outbox (:meth:`enqueue`): ``outbox_ttl`` is how long a queued message waits for
        its device unless ``enqueue`` says otherwise (:data:`OUTBOX_TTL`, 24 hours, also the
        most it may be);
        ``outbox_max_messages`` and ``outbox_max_bytes`` bound each device's queue (beyond
        them ``enqueue`` raises :class:`~iroh_pair.errors.OutboxFull`); ``outbox_retry_max``
        is the longest wait between delivery attempts (:data:`OUTBOX_RETRY_MAX`). Messages
        left queued by an earlier run are delivered from the start.
        """
        if outbox_ttl <= 0 or outbox_max_messages < 1 or outbox_max_bytes < 1:
            raise ValueError("outbox_ttl, outbox_max_messages and outbox_max_bytes must be positive")
        _check_outbox_ttl(outbox_ttl)
        if outbox_retry_max < OUTBOX_RETRY_MIN:
            raise ValueError(f"outbox_retry_max must be at least {OUTBOX_RETRY_MIN:g} s")
        if options is None:
            options = load_options(data_dir)
        self = cls()
        self._dial_timeout = dial_timeout
        self._online_timeout = online_timeout
        self._lan_lookup_timeout = lan_lookup_timeout
        self._max_unknown_connections = max_unknown_connections
        self._unknown_start_timeout = unknown_start_timeout
        self._outbox_ttl = outbox_ttl
        self._outbox_max_messages = outbox_max_messages
        self._outbox_max_bytes = outbox_max_bytes
        self._outbox_retry_max = outbox_retry_max
        self.data_dir = store.ensure_data_dir(Path(data_dir).expanduser())
        self._lock = store.DataDirLock(self.data_dir).acquire()
        try:
            key = store.load_or_create_secret_key(self.data_dir)
            self.registry = DeviceRegistry(self.data_dir / REGISTRY_FILE)
            self._deliveries.store = self.registry
            self._devices = {d.endpoint_id: d for d in self.registry.list()}
            self.info = DeviceInfo(
                name=sanitize_text(name or os.uname().nodename, FIELD_LIMITS["name"][1]) or "device",
                device_type=device_type,
                os=sanitize_text(os_name, FIELD_LIMITS["os"][1]),
                app_version=sanitize_text(app_version, FIELD_LIMITS["app_version"][1]),
            )
            self.endpoint = await Endpoint.bind(
                # every peer starts with an unknown peer's 2 streams; paired ones are raised
                # (stream credit once given cannot be taken back, §9.1)
                options.replace(max_bi_streams=UNKNOWN_MAX_BI_STREAMS),
                secret_key=key,
                alpns=[ALPN],
            )
        except BaseException:
            if hasattr(self, "registry"):
                self.registry.close()
            self._lock.release()
            raise
        self._uses_relay = options.uses_relay
        self._uses_lookup = options.uses_lookup
        await asyncio.to_thread(self._sweep_partials)
        self._links = Links(
            self.endpoint, admit=self._admit, setup=self._setup,
            refuse_on_shutdown=self._refuse_on_shutdown, dial_timeout=self._dial_timeout,
        )
        self._links.hints = self._hints
        self.cache = self._links.cache
        self._spawn(self._links.accept_loop())
        if options.mdns:
            self._spawn(self._watch_lan())
        for eid in self.registry.outbox_devices():  # queued by an earlier run
            self._outbox_start(eid)
        log.info("node %s opened in %s", self.id.fmt_short(), self.data_dir)
        return self

    async def close(self) -> None:
        """Closes every connection gracefully, the endpoint, the registry and the lock."""
        if self._closed:
            return
        self._closed = True
        for hosted in self._hosted.values():
            hosted.end(PairingFailed(RejectCode.CANCELLED, "the node closed"))
        for t in list(self._tasks):
            t.cancel()
        for j in list(self._file_jobs.values()):
            j.cancel()
        for jobs in list(self._file_active.values()):
            for j in list(jobs):
                j.cancel()
        await self.cache.aclose()
        await self.endpoint.close()
        if self._blobs is not None:
            await self._blobs.close()
        for q in self._subscribers:
            q.put_nowait(None)
        self.registry.close()
        self._lock.release()

    async def __aenter__(self) -> Node:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def id(self) -> EndpointId:
        """This node's EndpointId (stable: its key lives in the data directory)."""
        return self.endpoint.id

    def ticket(self) -> str:
        """iroh's ticket for this node (first contact only; paired devices dial by id)."""
        return self.endpoint.ticket()

    # ------------------------------------------------------------------ devices

    def devices(self) -> list[PairedDevice]:
        """The paired devices."""
        return sorted(self._devices.values(), key=lambda d: (d.name, d.endpoint_id.to_bytes()))

    def device(self, ref: DeviceRef) -> PairedDevice:
        """A paired device by name, EndpointId, or id prefix; raises
        :class:`~iroh_pair.errors.UnknownDevice` or :class:`~iroh_pair.errors.AmbiguousDevice`."""
        if isinstance(ref, PairedDevice):
            ref = ref.endpoint_id
        if isinstance(ref, EndpointId):
            dev = self._devices.get(ref)
            if dev is None:
                return self.registry.find(str(ref))  # raises UnknownDevice
            return dev
        return self.registry.find(ref)

    async def unpair(self, ref: DeviceRef) -> PairedDevice:
        """Forgets a device and closes its connection; withdraws every file offered to it (its
        blob requests are refused from now on) and cancels the offers being received from
        it."""
        dev = self.device(ref)
        self.registry.remove(dev.endpoint_id)
        self._devices.pop(dev.endpoint_id, None)
        if self._blobs is not None:
            self._blobs.withdraw(dev.endpoint_id)
        for job in list(self._file_active.get(dev.endpoint_id, ())):
            job.cancel()
        self._deliveries.forget(dev.endpoint_id)  # the registry forgot its ids with it
        conn = self.cache.peek(dev.endpoint_id, ALPN)
        if conn is not None:
            conn.close(int(CloseCode.NOT_PAIRED), b"unpaired")
        self._present.discard(dev.endpoint_id)
        wake = self._outbox_wake.get(dev.endpoint_id)  # its queue went with it: the task ends
        if wake is not None:
            wake.set()
        self._emit(NodeEvent("unpaired", dev.endpoint_id, dev.name))
        return dev

    def last_sas(self, device: EndpointId) -> str:
        """The short authentication string of this session's pairing with ``device`` (compare
        it on both screens); empty if it was not paired in this session."""
        return self._sas.get(device, "")

    def rename(self, ref: DeviceRef, name: str) -> PairedDevice:
        """Gives a paired device a new local name."""
        dev = self.registry.rename(self.device(ref).endpoint_id, name)
        self._devices[dev.endpoint_id] = dev
        return dev

    @property
    def uses_servers(self) -> bool:
        """Whether this node uses relays or address lookup (False for loopback-only and LAN
        nodes without servers): then :meth:`wait_reachable` has something to wait for."""
        return self._uses_relay or self._uses_lookup

    async def wait_reachable(self) -> bool:
        """Waits (at most ``online_timeout``, 10 s, in all) until paired devices can find this
        node by id alone: with relays on, until it has a home relay; with address lookup on,
        until the lookup service returns this node's record (with that relay). A listener
        reports itself ready after this, so that a sender started at once does not find a
        missing record. Returns False (and logs a warning) when the time runs out; True at
        once with relays and lookup both off."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._online_timeout
        try:
            async with asyncio.timeout_at(deadline):
                if self._uses_relay:
                    await self.endpoint.online()
                if self._uses_lookup:
                    await self._wait_published()
        except TimeoutError:
            log.warning("not reachable by id after %g s: %s", self._online_timeout,
                        "no home relay" if self._uses_relay and not self.endpoint.addr().relay_urls
                        else "this node's record is not on the lookup service yet")
            return False
        return True

    async def _wait_published(self) -> None:
        home = set(self.endpoint.addr().relay_urls)
        delay = 0.05
        while True:
            try:
                found = await self.endpoint.lookup(self.id, fresh=True)
                if home <= set(found.relay_urls):
                    log.debug("lookup returns this node's record: %s", found.relay_urls)
                    return
            except ConnectError as e:
                log.debug("own record not found yet: %s", e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    # ------------------------------------------------------------------ pairing

    async def host_pairing(
        self,
        *,
        ttl: float = 300.0,
        words: int = 3,
        lan: bool = False,
        confirm: ConfirmSas | None = None,
        confirm_timeout: float = CONFIRM_TIMEOUT,
    ) -> HostedPairing:
        """Starts hosting a one-time pairing code (single use, expires after ``ttl`` seconds,
        burned after 3 wrong attempts). Share ``hosted.code`` (``str()`` is its full form).
        With relays on, it first waits (``online_timeout``, 10 s) for the home relay, so that
        the code's ticket can reach this node from behind a NAT.

        ``confirm`` asks the user to compare the SAS before anything is stored: it gets a
        :class:`~iroh_pair.SasCheck` and returns (or resolves to) ``True`` to approve, ``False`` to decline
        (then nothing is stored on either side and both fail with ``SAS_DECLINED``); no answer
        within ``confirm_timeout`` seconds is ``TIMEOUT``. ``confirm=None`` approves at once:
        the flow stays automatic, but a man in the middle who knows the code is not detected
        (docs/PROTOCOL.md §8.3). Example::

            async def ask(check: SasCheck) -> bool:
                line = await asyncio.to_thread(input, f"Do both screens show {check.formatted}? [y/N] ")
                return line.strip().lower() in ("y", "yes")

            hosted = await node.host_pairing(confirm=ask)
            print(hosted.code)
            device = await hosted.wait()

        ``lan=True`` also gives a short code to read aloud, ``hosted.spoken`` (nameplate and
        words, e.g. ``7-ocean-tiger-river``), for a joiner on the same LAN: the nameplate is
        announced over mDNS with this node's id until the code is used, burned or expires."""
        if self._uses_relay:
            # Behind a NAT the ticket is only useful with the relay in it: wait for it.
            try:
                await asyncio.wait_for(self.endpoint.online(), self._online_timeout)
            except TimeoutError:
                log.warning("no home relay after %g s: the code holds direct addresses only",
                            self._online_timeout)
        spoken: LanCode | None = None
        if lan:
            taken = {o.tag for o in self._offers}
            while True:
                spoken = LanCode.generate(word_count=words)
                code = spoken.pairing_code(self.id.to_bytes(), self.ticket())
                if code.tag not in taken:
                    break
        else:
            code = PairingCode.generate(self.ticket(), word_count=words)
        offer = PairingOffer.create(code, now=time.monotonic(), ttl=ttl,
                                    confirm_timeout=confirm_timeout)
        hosted = Hosted(offer, asyncio.get_running_loop().create_future(), confirm)
        if spoken is not None:
            hosted.announcement = self.endpoint.mdns_announce(spoken.service)
            log.info("announcing nameplate %d on the LAN", spoken.nameplate)
        self._offers.add(offer)
        self._hosted[offer.tag] = hosted
        fut = hosted.waiter

        async def expire() -> None:
            await asyncio.sleep(ttl)
            # a handshake that started before expiry may finish within its own deadlines (§9)
            while offer.busy(time.monotonic()) and not fut.done():
                await asyncio.sleep(0.25)
            self._end_offer(offer, PairingFailed(RejectCode.EXPIRED, "the code expired"))

        self._spawn(expire())
        def cancel() -> None:
            offer.expires_at = min(offer.expires_at, time.monotonic())  # no new Hello (EXPIRED)

            async def end() -> None:
                # a handshake under way, or one that paired and is delivering its last message
                while (offer.busy(time.monotonic()) or offer.used) and not fut.done():
                    await asyncio.sleep(0.05)
                if not fut.done():
                    self._end_offer(offer, PairingFailed(RejectCode.CANCELLED, "the code was cancelled"))

            self._spawn(end())

        return HostedPairing(code, offer, fut, spoken, confirm, cancel=cancel)

    @property
    def hosting(self) -> bool:
        """Whether a pairing code is live (unknown devices are admitted only then)."""
        return any(h.live for h in self._hosted.values())

    def _end_offer(self, offer: PairingOffer, outcome: PairedDevice | Exception) -> None:
        # once the future is settled: the last offer's end closes unknown connections (§9.1)
        asyncio.get_running_loop().call_soon(self._check_hosting)
        self._offers.remove(offer.tag)
        hosted = self._hosted.pop(offer.tag, None)
        if hosted is not None:
            hosted.end(outcome)

    async def join(
        self,
        code: str | PairingCode | LanCode,
        *,
        timeout: float = 60.0,
        confirm: ConfirmSas | None = None,
        confirm_timeout: float = CONFIRM_TIMEOUT,
    ) -> PairedDevice:
        """Pairs with the host that created ``code``: a full code, or a spoken LAN code
        (``7-ocean-tiger-river``), whose host is found on this LAN over mDNS first. Raises
        :class:`PairingFailed` (``code.code`` says why: ``WRONG_CODE`` for wrong words,
        ``BURNED``, ``EXPIRED``, ``SAS_DECLINED``, ``UNSUPPORTED_VERSION`` for a host of
        another pairing version, ...), :class:`NameplateNotFound` or
        :class:`AmbiguousNameplate` for a LAN code, :class:`InvalidCode` for a code that does not
        parse or that this node created, or a transport error when the host cannot be reached
        (:class:`~iroh_pair.errors.Timeout` when not within ``timeout``).

        ``timeout`` bounds reaching the SAS (dialing, the host's reply); then both users
        compare it: ``confirm`` (as in :meth:`host_pairing`) answers for this side, and the
        host's approval and this side's must both come within ``confirm_timeout`` seconds.
        The device is stored only after both approvals. Example::

            async def ask(check: SasCheck) -> bool:
                line = await asyncio.to_thread(input, f"Do both screens show {check.formatted}? [y/N] ")
                return line.strip().lower() in ("y", "yes")

            device = await node.join(code_text, confirm=ask)
        """
        if isinstance(code, str) and looks_spoken(code):
            code = LanCode.parse(code)
        if isinstance(code, LanCode):
            pc = await self._resolve_nameplate(code)
        else:
            pc = code if isinstance(code, PairingCode) else PairingCode.parse(code)
        addr = EndpointAddr.from_ticket(pc.ticket)
        if addr.id == self.id:
            raise InvalidCode("this code was created by this node")
        self._hints[addr.id] = addr  # memory only: never stored
        result: list[PairedDevice] = []
        previous = self._devices.get(addr.id)

        async def stored(r: PairingResult) -> None:
            result.append(self._store(r))

        async def undo(r: PairingResult) -> None:
            self._unstore(EndpointId.from_bytes(r.peer_id), previous)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            conn = await asyncio.wait_for(self.cache.get(addr.id, ALPN), timeout)
        except TimeoutError as e:
            if isinstance(e, Timeout):  # the dial's own
                raise
            raise Timeout(f"could not reach the host within {timeout:g} s") from None
        await run_joiner(
            conn, pc, local_id=self.id.to_bytes(), info=self.info, on_paired=stored,
            on_unpaired=undo, confirm=confirm, confirm_timeout=confirm_timeout,
            reply_timeout=max(0.0, min(JOINER_REPLY_TIMEOUT, deadline - loop.time())),
        )
        return result[0]

    async def _resolve_nameplate(self, code: LanCode) -> PairingCode:
        """Finds the host announcing ``code``'s nameplate on the LAN (exactly one)."""
        found = await self.endpoint.mdns_browse(code.service, timeout=self._lan_lookup_timeout)
        if not found:
            raise NameplateNotFound(
                f"no device on this LAN announces nameplate {code.nameplate} "
                f"(looked for {self._lan_lookup_timeout:g} s)"
            )
        if len(found) > 1:
            raise AmbiguousNameplate(
                f"{len(found)} devices announce nameplate {code.nameplate}; ask the host for a new code"
            )
        host = found[0]
        log.info("nameplate %d is %s", code.nameplate, host.id.fmt_short())
        return code.pairing_code(host.id.to_bytes(), host.to_ticket())

    def _store(self, r: PairingResult) -> PairedDevice:
        peer = EndpointId.from_bytes(r.peer_id)
        dev = self.registry.add_or_replace(
            PairedDevice.from_pairing(peer, r.peer_info, r.keys, time.time())
        )
        self._devices[peer] = dev
        self._sas[peer] = r.sas
        # Channels of an existing connection were built with the old keys.
        for st in self._conns.values():
            if st.conn.remote_id == peer:
                st.retire_channel()
                self._promote(st.conn)  # no longer an unknown connection (§9.1)
        self._emit(NodeEvent("paired", peer, dev.name, detail=r.sas))
        for st in list(self._conns.values()):  # paired on this connection: it is connected
            if st.conn.remote_id == peer:
                st.path = _selected(st.conn)
                self._mark_connected(st)
        self._report_lan(peer)
        log.info("paired with %s (%s)", dev.name, peer.fmt_short())
        return dev

    def _unstore(self, peer: EndpointId, previous: PairedDevice | None) -> None:
        """Undoes :meth:`_store` on a joiner whose host refused after the Accept (§5): the
        previous entry (a re-pairing) comes back, or the device is forgotten."""
        if previous is not None:
            self._devices[peer] = self.registry.add_or_replace(previous)
        else:
            self.registry.remove(peer)
            self._devices.pop(peer, None)
        self._sas.pop(peer, None)
        if previous is None:
            self._present.discard(peer)
        for st in self._conns.values():
            if st.conn.remote_id == peer:
                st.retire_channel()
                if previous is None:  # a stranger again: not on a paired peer's limits
                    st.conn.close(int(CloseCode.NOT_PAIRED), b"pairing undone")
        self._emit(NodeEvent("unpaired", peer, previous.name if previous else "",
                             detail="the host did not keep the pairing"))
        log.warning("the host %s refused the pairing after the Accept", peer.fmt_short())

    async def _refuse_pairing(self, conn: Connection, incoming: IncomingStream,
                              code: RejectCode | None, text: str = "") -> None:
        """Answers a pairing stream this node will not serve with one Reject (§2.1): a
        version-1 stream (``code=None``), or ``pair2`` without a live offer; then an unpaired
        peer's connection is closed after the grace period."""
        send, _ = incoming.take_streams()
        if code is None:
            await refuse_version_1(send)
        else:
            await refuse(send, code, text)
        if conn.remote_id not in self._devices:
            await asyncio.sleep(1.0)
            if conn.remote_id not in self._devices:
                conn.close(int(CloseCode.PAIRING_FAILED), b"pairing failed")

    async def _host(self, conn: Connection, incoming: IncomingStream, m1: bytes) -> None:
        send, recv = incoming.take_streams()

        done: list[tuple[PairingOffer | None, PairedDevice]] = []

        async def stored(r: PairingResult) -> None:
            done.append((self._offer_of(r), self._store(r)))

        def count() -> None:
            self.counters["pairing_messages_received"] += 1

        compared: list[PairingOffer] = []  # the offer whose SAS the users were asked about

        def confirm_for(offer: PairingOffer) -> ConfirmSas | None:
            compared.append(offer)
            hosted = self._hosted.get(offer.tag)
            return hosted.confirm if hosted is not None else None

        with self._handshake(conn):  # its unknown slot is not idle meanwhile (§9.1)
            out = await run_host(
                conn, send, recv, m1, offers=self._offers, local_id=self.id.to_bytes(),
                info=self.info, on_paired=stored, counts=count, confirm_for=confirm_for,
            )
        # hosted.wait() returns only now that the joiner has the host's FIN.
        for offer, dev in done:
            if offer is not None:
                self._end_offer(offer, dev)
        if isinstance(out, Failed):
            log.info("pairing attempt from %s failed: %s", conn.remote_id.fmt_short(), out.code.name)
            for offer in [h.offer for h in self._hosted.values()]:
                if offer.burned:
                    self._end_offer(offer, PairingFailed(RejectCode.BURNED, "too many wrong attempts"))
            if out.code is RejectCode.SAS_DECLINED:
                # Different SAS on the two screens means someone else knows the code (§8.3):
                # it gets no more attempts.
                for offer in compared:
                    declined = PairingFailed(
                        RejectCode.SAS_DECLINED,
                        "the SAS was not confirmed: someone else may know this code; make a new one",
                        out.by_peer)
                    if out.by_peer:
                        self._end_offer(offer, declined)
                    else:
                        # Declined here: no more Hellos at once, but hosted.wait() fails only
                        # after the grace, so that an app which then exits lets our Reject out.
                        self._offers.remove(offer.tag)
                        asyncio.get_running_loop().call_later(
                            FAILURE_GRACE, self._end_offer, offer, declined)
            # an unknown peer's connection is closed after the grace period: PROTOCOL_ERROR
            # for an invalid Hello (e.g. a bad SPAKE2 point, §9), else PAIRING_FAILED
            self._after_failed_attempt(conn, out)

    def _offer_of(self, r: PairingResult) -> PairingOffer | None:
        """The hosted offer this pairing completed (by its session tag)."""
        hosted = self._hosted.get(r.session_tag)
        return hosted.offer if hosted is not None else None

    # ------------------------------------------------------------------ messaging

    def on_message(self, handler: MessageHandler, *, kind: str = DEFAULT_KIND) -> None:
        """Registers the handler of stream kind ``kind`` (applications add their own kinds,
        e.g. "sync"). It gets the sending device and the decrypted bytes; what it returns is
        sealed and sent back as the reply (``None``: an empty reply)."""
        encode_header(kind)  # validates the name
        if kind in (PAIR_KIND, PAIR_KIND_V1, FILE_KIND):
            raise ValueError(f"the {kind!r} kind is reserved")
        self._messages.handlers[kind] = handler

    async def request(
        self,
        device: DeviceRef,
        data: bytes,
        *,
        kind: str = DEFAULT_KIND,
        timeout: float | None = 30.0,
        message_id: bytes | None = None,
    ) -> bytes:
        """Sends ``data`` to a paired device and returns its handler's reply (decrypted).

        Dials by EndpointId only when no connection is live. Every message carries a 16-byte
        message id (``message_id``, default a fresh random one,
        :func:`iroh_pair.new_message_id`): a request that fails on a dead connection
        is retried once on a new one under the same id, and a message whose handler is running
        right now on the receiver (``IN_PROGRESS``) is retried after a short backoff, all within
        ``timeout`` seconds in total.

        **Exactly once** (docs/PROTOCOL.md §13.8): the receiver records each id in its registry
        (persisted, per device) when its handler has returned, before it replies. So if the
        application retries an unanswered message with the same ``message_id`` until it gets a
        reply or ``DUPLICATE``, the receiver's handler runs exactly once per id, across
        connections and restarts of either side, provided the retry arrives within 24 hours and
        within 10,000 later messages from this device. A handler that failed recorded nothing,
        so its retry is delivered. One gap remains: if the receiver stops between its handler
        returning and the id's commit (one SQLite transaction), a retry is delivered again (at
        least once, never lost); beyond the window too. The commit survives a crash or kill of
        the receiving process at once; to survive an OS crash or power loss as well, the
        receiver sets ``node.registry.durable_message_ids = True`` (an fsync per message).

        A retry of a message already handled raises :class:`~iroh_pair.errors.RemoteError`
        with ``code == StreamErrorCode.DUPLICATE`` (its reply is not kept: a receiver that must
        answer retried requests caches its replies by message id). Other refusals also raise
        ``RemoteError`` (``HANDLER_ERROR``, ``IN_PROGRESS`` when ``timeout`` ran out, ...), its
        message naming the code. Example::

            mid = new_message_id()
            try:
                reply = await node.request(dev, b"charge 10 EUR", message_id=mid)
            except RemoteError as e:
                if e.code != StreamErrorCode.DUPLICATE:
                    raise       # else: handled before, by an earlier attempt
        """
        dev = self.device(device)
        if message_id is not None and len(message_id) != MESSAGE_ID_LEN:
            raise ValueError(f"a message id is {MESSAGE_ID_LEN} bytes")
        mid = new_message_id() if message_id is None else bytes(message_id)
        channels: list[MessageChannel] = []

        def seal(conn: Connection) -> bytes:
            ch = self._channel(conn, dev)
            channels.append(ch)
            return encode_header(kind) + ch.seal(kind, data, message_id=mid)

        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        backoff = IN_PROGRESS_BACKOFF
        while True:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                reply = await self.cache.request(
                    dev.endpoint_id, ALPN, seal, timeout=left, max_response=DEFAULT_MAX_MESSAGE
                )
                break
            except RemoteError as e:
                if e.code == StreamErrorCode.IN_PROGRESS and (
                    deadline is None or loop.time() + backoff < deadline
                ):
                    log.debug("message %s is in progress on %s: retrying", mid.hex(), dev)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, IN_PROGRESS_MAX_BACKOFF)
                    continue
                raise _named_remote_error(e, dev, mid) from e
        if not reply:
            return b""
        return channels[-1].open(kind, reply, reply_to=mid).plaintext

    async def send(
        self,
        device: DeviceRef,
        data: bytes,
        *,
        kind: str = DEFAULT_KIND,
        timeout: float | None = 30.0,
        message_id: bytes | None = None,
    ) -> None:
        """Sends ``data`` one way; returns once the peer's node has received it and its handler
        has returned (and the message id is recorded there).

        The guarantee is :meth:`request`'s (docs/PROTOCOL.md §13.8): retrying with the same
        ``message_id`` after an error, or after a restart of either side, runs the receiver's
        handler exactly once, within 24 hours and 10,000 later messages. ``DUPLICATE`` counts
        as delivered: a retry of a message already handled returns normally. Example::

            mid = new_message_id()              # keep it (e.g. in your outbox) until sent
            await node.send(dev, b"note", message_id=mid)
        """
        try:
            await self.request(device, data, kind=kind, timeout=timeout, message_id=message_id)
        except RemoteError as e:
            if e.code != StreamErrorCode.DUPLICATE:
                raise  # a duplicate was delivered before: done

    # ------------------------------------------------------------------ the outbox

    def enqueue(
        self,
        device: DeviceRef,
        data: bytes,
        *,
        kind: str = DEFAULT_KIND,
        ttl: float | None = None,
        message_id: bytes | None = None,
    ) -> PendingMessage:
        """Queues ``data`` for a paired device and returns at once: the message is stored in
        the registry (one durable commit) and the node delivers it when the device is
        reachable, as :meth:`send` would, in the order it was queued (per device). Returns
        its record (:class:`~iroh_pair.PendingMessage`; ``.id`` is its message id).

        Delivery: the node tries when it opens (messages queued by an earlier run included),
        when a message is queued for a device with nothing queued before, and when the device
        connects (a "connected" event); after a failed attempt it waits (1 s, doubling up to
        ``outbox_retry_max``, a :meth:`open` parameter; queueing more does not cut the wait
        short) and tries again, dialing by EndpointId. A device's messages
        go one at a time: the next is sent once the receiver has acknowledged the one before
        (its handler returned), so a message the receiver's handler keeps refusing holds the
        ones behind it until it expires or is cancelled (``attempts`` and ``last_error`` of
        :meth:`outbox` show why).

        Every attempt carries the message's stored id, and a message leaves the outbox only
        once the receiver acknowledged it (or answered ``DUPLICATE``): an attempt interrupted
        at any point, by a restart of either side, is retried and the receiver's handler
        runs once (docs/PROTOCOL.md §13.8; it holds while the retry comes within the
        receiver's delivered-id window: 24 hours and 10,000 messages).

        ``ttl`` (seconds; default ``outbox_ttl``; at most :data:`OUTBOX_TTL`, 24 hours, the
        receiver's delivered-id window, so that exactly once holds) bounds the wait: a message not
        delivered by then is removed with an "outbox_expired" event (:meth:`events`).
        :meth:`cancel` removes one earlier. Raises :class:`~iroh_pair.errors.OutboxFull`
        when the device's queue is at ``outbox_max_messages`` or ``outbox_max_bytes``,
        :class:`~iroh_pair.errors.UnknownDevice` for a device that is not paired. Example::

            p = node.enqueue("phone", b"note 42", kind="sync")   # returns at once
            print(p.id.hex(), "waits for", p.device.fmt_short())

        Why a method of its own rather than ``send(..., deliver="eventually")``: :meth:`send`
        returns once the receiver acknowledged and raises when it cannot deliver; this
        returns before any delivery and never raises a network error, and what it returns
        (the queued record) is what :meth:`outbox` lists and :meth:`cancel` takes.
        """
        dev = self.device(device)
        encode_header(kind)  # validates the name
        if kind in (PAIR_KIND, PAIR_KIND_V1):
            raise ValueError(f"the {kind!r} kind is reserved")
        payload = bytes(data)
        if len(payload) > DEFAULT_MAX_MESSAGE:
            raise ValueError(f"a message is at most {DEFAULT_MAX_MESSAGE} bytes")
        if message_id is not None and len(message_id) != MESSAGE_ID_LEN:
            raise ValueError(f"a message id is {MESSAGE_ID_LEN} bytes")
        life = self._outbox_ttl if ttl is None else float(ttl)
        if life <= 0:
            raise ValueError("ttl must be positive")
        _check_outbox_ttl(life)
        now = time.time()
        pending = self.registry.outbox_add(
            dev.endpoint_id, new_message_id() if message_id is None else bytes(message_id),
            kind, payload, expires=now + life, max_messages=self._outbox_max_messages,
            max_bytes=self._outbox_max_bytes, now=now,
        )
        self._outbox_start(dev.endpoint_id)
        return pending

    def outbox(self, device: DeviceRef | None = None) -> list[PendingMessage]:
        """The messages queued by :meth:`enqueue` and not yet acknowledged (of ``device``, or
        of every device), oldest first, as stored (they survive restarts). Example::

            for p in node.outbox("phone"):
                print(p.id.hex(), p.size, "bytes, tried", p.attempts, "times:", p.last_error)
        """
        eid = None if device is None else self.device(device).endpoint_id
        return self.registry.outbox_list(eid)

    def cancel(self, message_id: bytes) -> bool:
        """Removes a queued message from the outbox; ``False`` when it is not queued (already
        acknowledged, expired, or unknown). An attempt already on its way is not recalled: the
        receiver may still get that message. Example::

            p = node.enqueue("phone", b"draft")
            node.cancel(p.id)
        """
        return self.registry.outbox_remove(bytes(message_id))

    def _outbox_start(self, eid: EndpointId) -> None:
        """Starts ``eid``'s delivery task unless it runs (a "connected" event wakes it)."""
        if eid in self._outbox_wake or self._closed:
            return
        wake = asyncio.Event()
        self._outbox_wake[eid] = wake
        self._spawn(self._deliver_outbox(eid, wake))

    def _expire_outbox(self, eid: EndpointId) -> None:
        for p in self.registry.outbox_expire(eid):
            dev = self._devices.get(eid)
            log.info("outbox: message %s to %s expired after %d attempts", p.id.hex(),
                     eid.fmt_short(), p.attempts)
            self._emit(NodeEvent("outbox_expired", eid, dev.name if dev else "", detail=p.id.hex()))

    async def _deliver_outbox(self, eid: EndpointId, wake: asyncio.Event) -> None:
        """Delivers ``eid``'s queued messages one at a time, oldest first; ends when none is
        left (or the device was unpaired)."""
        delay = OUTBOX_RETRY_MIN
        try:
            while not self._closed:
                self._expire_outbox(eid)
                head = self.registry.outbox_head(eid)
                dev = self._devices.get(eid)
                if head is None or dev is None:
                    return
                pending, data = head
                try:
                    await self.send(dev, data, kind=pending.kind, message_id=pending.id,
                                    timeout=OUTBOX_ATTEMPT_TIMEOUT)
                except Exception as e:  # any failure (network, refusal): retry later
                    if self._closed:
                        return
                    error = f"{type(e).__name__}: {e}"
                    log.debug("outbox: message %s to %s not delivered: %s", pending.id.hex(),
                              dev, error)
                    self.registry.outbox_failed(pending.id, error)
                    wait = delay * random.uniform(0.5, 1.0)
                    first = self.registry.outbox_next_expiry(eid)
                    if first is not None:
                        wait = min(wait, max(0.0, first - time.time()))
                    wake.clear()  # a "connected" event (or unpairing) from now on ends the wait
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), wait)
                    delay = min(delay * 2, self._outbox_retry_max)
                    continue
                self.registry.outbox_remove(pending.id)  # acknowledged
                delay = OUTBOX_RETRY_MIN
        finally:
            if self._outbox_wake.get(eid) is wake:
                del self._outbox_wake[eid]

    def _channel(self, conn: Connection, dev: PairedDevice) -> MessageChannel:
        st = self._conns.get(conn.stable_id)
        if st is None or st.conn is not conn:
            st = self._setup(conn)
        if st.channel is None:
            keys = (dev.keys.send, dev.keys.receive)
            # Keys this connection used before (an undone re-pairing) get their old channel
            # back: a new one would restart the counter under the same subkey (§13.4).
            st.channel = st.retired.pop(keys, None)
            if st.channel is None:
                binding = conn.export_keying_material(
                    MESSAGING_BINDING_LABEL, CHANNEL_BINDING_CONTEXT, CHANNEL_BINDING_LEN
                )
                # deduplication is the node's (self._deliveries), across connections/restarts
                st.channel = MessageChannel(self.id, dev.endpoint_id, dev.keys, binding)
            st.channel_keys = keys
        return st.channel

    # ------------------------------------------------------------------ files

    async def blob_store(self) -> BlobStore:
        """The node's blob store (``DATA_DIR/blobs``), opened and served on the node's endpoint
        on first use (internal to :meth:`send_file` and received offers)."""
        async with self._blobs_lock:
            if self._blobs is None:
                blobs = await BlobStore.open(self.data_dir / "blobs")
                blobs.serve_on(self.endpoint)
                self._blobs = blobs
            return self._blobs

    def on_file_offer(
        self,
        handler: FileOfferHandler,
        *,
        progress: Callable[[FileOffer, FileProgress], object] | None = None,
        stall_timeout: float = FILE_STALL_TIMEOUT,
    ) -> None:
        """Registers the handler of files paired devices offer. It gets a
        :class:`~iroh_pair.FileOffer` (``name`` already sanitised, ``size``, ``hash``,
        ``sender``) and returns the directory to store the file in, or ``None`` to decline
        (plain or awaitable). The file is fetched natively, every chunk verified against the
        hash, written under a temporary name and moved to ``directory / name`` only once
        complete; an existing file is never replaced (``name (2).ext`` and so on instead).
        ``progress`` gets ``(offer, FileProgress)`` while it arrives. Without a handler every
        offer is declined. A fetch that makes no progress for ``stall_timeout`` seconds (the
        sender's traffic stopped) is cancelled and answered as failed
        (:class:`~iroh_pair.errors.TransferStalled`). At most
        :data:`FILE_RECEIVES_PER_DEVICE` offers from one device and
        :data:`FILE_RECEIVES_TOTAL` in all are received at once; one more is answered as
        failed (:class:`~iroh_pair.errors.TooManyTransfers`) without fetching. Example::

            def offered(offer: FileOffer) -> Path | None:
                return downloads if offer.size < 1 << 30 else None

            node.on_file_offer(offered)
        """
        if not stall_timeout > 0:
            raise ValueError("stall_timeout must be positive")
        self._file_handler = handler
        self._file_progress = progress
        self._file_stall_timeout = float(stall_timeout)

    def start_file(
        self,
        device: DeviceRef,
        path: str | os.PathLike[str],
        *,
        progress: ProgressCallback | None = None,
        timeout: float | None = None,
        reconnect_timeout: float | None = FILE_RECONNECT_TIMEOUT,
    ) -> FileTransfer:
        """Starts sending the file or directory at ``path`` to a paired device (as
        :meth:`send_file` does) and returns at once a :class:`~iroh_pair.FileTransfer`: iterate
        over it for :class:`~iroh_pair.FileProgress` while it runs, await it for the
        :class:`~iroh_pair.FileReceipt` (errors are raised there). Must be called with a
        running event loop; raises :class:`~iroh_pair.errors.UnknownDevice` at once for a
        device that is not paired. Example::

            transfer = node.start_file("phone", "holiday.mp4")
            async for p in transfer:
                print(f"{100 * p.done // max(p.total, 1)}%")
            receipt = await transfer
        """
        dev = self.device(device)
        transfer = FileTransfer(progress)
        return transfer._start(
            self._send_file(dev, Path(path), transfer._report, timeout, reconnect_timeout))

    async def send_file(
        self,
        device: DeviceRef,
        path: str | os.PathLike[str],
        *,
        progress: ProgressCallback | None = None,
        timeout: float | None = None,
        reconnect_timeout: float | None = FILE_RECONNECT_TIMEOUT,
    ) -> FileReceipt:
        """Sends the file or directory at ``path`` to a paired device; returns once the
        receiver has it verified and stored (a :class:`~iroh_pair.FileReceipt` with the name it
        chose).

        The file's BLAKE3 hash is computed where it is (this node's blob store references the
        file, it does not copy it; its size, modification time and inode must not change
        meanwhile, else :class:`~iroh_pair.errors.FileChanged` and nothing is offered), the
        hash is offered to the device over the encrypted messaging (name, size, hash), and the
        file is served natively to that device alone while the offer lives; its bytes never
        pass through Python. Every chunk group read is checked against the hash: a file
        changed after the offer is not sent, and the transfer fails with
        :class:`~iroh_pair.errors.FileChanged`.

        A **directory** is sent as its tree: every regular file imported as its own blob,
        empty directories kept, symbolic links and special files skipped (never followed); one
        offer lists it (at most :data:`~iroh_pair._files.MAX_DIR_ENTRIES` entries, else
        :class:`~iroh_pair.errors.OfferTooLarge`). The receiver builds it under a temporary
        name and renames it into place once every file is verified.

        **Resume**: when the connection is lost or the receiver's process restarts during the
        transfer, this waits for the device to be reachable again (a "connected" event, or a
        new attempt after 0.5 s doubling up to 5 s) and offers the same content again under the
        same offer id; the receiver fetches only what its store has not verified yet, and a
        retry of an offer the receiver already answered gets that answer (nothing is fetched
        or stored twice). ``reconnect_timeout`` (seconds, default 600; None: no bound) bounds
        each such wait; ``timeout`` bounds the whole transfer from the offer on (None, the
        default: no bound).

        ``progress`` gets :class:`~iroh_pair.FileProgress` as the receiver fetches (for a
        directory: over all its files); :meth:`start_file` gives it as an async iterator.
        Raises :class:`~iroh_pair.errors.OfferDeclined` when the receiver declines,
        :class:`~iroh_pair.errors.DiskFull` when the receiver's disk is full,
        :class:`~iroh_pair.errors.VerificationFailed` when the receiver got data that does not
        match the hash, and :class:`~iroh_pair.errors.FileTransferError` when the transfer fails
        otherwise. Example::

            receipt = await node.send_file(dev, "holiday.mp4")
            print("stored as", receipt.name)
        """
        return await self.start_file(device, path, progress=progress, timeout=timeout,
                                     reconnect_timeout=reconnect_timeout)

    async def _send_file(
        self,
        dev: PairedDevice,
        src: Path,
        report: Callable[[FileProgress], None],
        timeout: float | None,
        reconnect_timeout: float | None,
    ) -> FileReceipt:
        blobs = await self.blob_store()
        offer_id = secrets.token_hex(16)
        contents: dict[str, int] = {}  # hash -> size (a directory may hold one content twice)
        #: each file as it was hashed: the store reads it from there when it is fetched
        imported: list[tuple[Path, tuple[int, int, int, int] | None]] = []

        def hold(h: str, n: int, p: Path) -> None:
            # granted at once: the offer keeps the file in the store from its import on (the
            # files of a large directory are hashed one after another before the offer goes)
            if h not in contents:
                blobs.grant(dev.endpoint_id, h)
            contents[h] = n
            imported.append((p, _file_sig(p)))

        try:
            if src.is_dir():
                name = src.resolve().name or "directory"
                files, empty = await asyncio.to_thread(walk_tree_stat, src)
                placeholder = [OfferEntry(rel, 0, "0" * 64) for rel, _, _ in files]
                encode_dir_offer(name, placeholder + [OfferEntry(d) for d in empty])  # limits
                entries: list[OfferEntry] = []
                for rel, p, walked in files:
                    h, n = await blobs.import_file(p)
                    same_file(p, walked, n)  # not swapped for a link since the walk (lstat)
                    hold(h, n, p)
                    entries.append(OfferEntry(rel, n, h))
                entries += [OfferEntry(d) for d in empty]
                payload = encode_dir_offer(name, entries, offer_id=offer_id)
                size, h, count = sum(e.size for e in entries), "", len(files)
            elif src.is_file():
                name = src.name
                h, size = await blobs.import_file(src)
                hold(h, size, src)
                payload = encode_offer(name, size, h, offer_id=offer_id)
                count = 1
            else:
                raise FileNotFoundError(f"{src} is not a file or directory")
            loop = asyncio.get_running_loop()
            started = loop.time()
            deadline = None if timeout is None else started + timeout

            def rate(done: int) -> float:
                return done / max(loop.time() - started, 1e-9)

            async def watch() -> None:
                while True:
                    await asyncio.sleep(0.1)
                    done = min(sum(min(blobs.sent(dev.endpoint_id, c), n)
                                   for c, n in contents.items()), size)
                    report(FileProgress(done, size, rate(done)))

            reporter = asyncio.ensure_future(watch())
            try:
                reply = await self._offer_file(dev, payload, deadline, reconnect_timeout)
            finally:
                reporter.cancel()
        finally:
            for c in contents:
                blobs.ungrant(dev.endpoint_id, c)
        status = reply["status"]
        if status == "declined":
            reason = str(reply.get("reason", ""))
            raise OfferDeclined(f"{dev.name} declined {name!r}: {reason}", reason)
        if status != "stored":
            # the file is read where it is when the receiver fetches it: changed since it was
            # hashed, it cannot be served (the store checks what it reads against the hash)
            kind = str(reply.get("type", ""))
            for p, was in imported if kind in ("", "FileTransferError") else ():
                if _file_sig(p) != was:
                    raise FileChanged(f"{p} changed after it was offered to {dev.name}, who "
                                      f"could not receive it: {reply.get('error', status)}",
                                      str(p))
            # the receiver's error class, when it is one the sender can act on
            cls = {"DiskFull": DiskFull, "VerificationFailed": VerificationFailed,
                   "TooManyTransfers": TooManyTransfers, "TransferStalled": TransferStalled,
                   "DestinationChanged": DestinationChanged}.get(str(reply.get("type")), FileTransferError)
            raise cls(f"{dev.name} could not receive {name!r}: {reply.get('error', status)}")
        if reply.get("hash") != h or reply.get("size") != size:
            raise FileTransferError(f"{dev.name} stored other content than {name!r} was")
        report(FileProgress(size, size, rate(size)))
        read = reply.get("read", 0)
        return FileReceipt(h, size, str(reply.get("name", "")), read if isinstance(read, int) else 0,
                           is_directory=not h, files=count)

    async def _offer_file(
        self,
        dev: PairedDevice,
        payload: bytes,
        deadline: float | None,
        reconnect_timeout: float | None,
    ) -> dict[str, object]:
        """Sends the offer until the receiver answers it: after a lost connection (or the
        receiver's restart) it waits for the device and offers again, each attempt under a
        fresh message id (the offer id in ``payload`` stays: the receiver joins or answers the
        job it has for it). ``DUPLICATE`` (an attempt of ours was handled but its answer lost)
        is asked again the same way."""
        loop = asyncio.get_running_loop()
        lost_since: float | None = None
        delay = 0.5
        duplicates = 0
        while True:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise Timeout(f"sending a file to {dev.name} took longer than its timeout")
            try:
                return decode_reply(await self.request(dev, payload, kind=FILE_KIND, timeout=left))
            except RemoteError as e:
                if e.code != StreamErrorCode.DUPLICATE or duplicates >= 3:
                    raise
                duplicates += 1
                log.info("file offer to %s: answered before, asking for the answer again", dev)
                continue
            except TransportError as e:
                now = loop.time()
                if deadline is not None and now >= deadline:
                    raise
                lost_since = now if lost_since is None else lost_since
                if reconnect_timeout is not None and now - lost_since >= reconnect_timeout:
                    raise
                log.info("file offer to %s interrupted (%s: %s): offering again when it is back",
                         dev, type(e).__name__, e)
            # wait: until a connection to the device appears that was not there, or `delay`
            was_connected = self.is_connected(dev)
            end = loop.time() + delay
            if deadline is not None:
                end = min(end, deadline)
            if reconnect_timeout is not None:
                end = min(end, lost_since + reconnect_timeout)
            while loop.time() < end:
                if not was_connected and self.is_connected(dev):
                    lost_since = None  # it is back: the next loss gets a fresh window
                    break
                was_connected = was_connected and self.is_connected(dev)
                await asyncio.sleep(0.05)
            delay = min(delay * 2, FILE_RETRY_MAX)

    async def _file_offer(
        self, dev: PairedDevice, data: bytes, conn: Connection | None = None
    ) -> bytes:
        """The FILE_KIND message handler: decide, fetch, verify, store, reply. ``conn``: the
        connection the offer came over (the sender is fetched from at its addresses). An offer
        with an id runs once per (sender, id): a retry joins the running job, or gets its
        answer when it ended stored or declined (a failed one runs again); the answers are
        kept in DATA_DIR/file-offers.json too, for retries after a restart of this node. A new
        offer beyond FILE_RECEIVES_PER_DEVICE (from its sender) or FILE_RECEIVES_TOTAL jobs
        running is answered "failed" (type TooManyTransfers) at once."""
        try:
            offer = parse_offer(data)
        except ValueError as e:
            return encode_reply("failed", error=str(e))
        key = None if offer.offer_id is None else (dev.endpoint_id, offer.offer_id)
        job = None if key is None else self._file_jobs.get(key)
        if job is None:
            if key is not None:
                answered = self._answered_offers().get((str(key[0]), key[1]))
                if answered is not None:  # answered before this node restarted
                    return answered
            mine = self._file_active.get(dev.endpoint_id, set())
            running = sum(len(jobs) for jobs in self._file_active.values())
            if len(mine) >= FILE_RECEIVES_PER_DEVICE or running >= FILE_RECEIVES_TOTAL:
                log.warning("file offer from %s refused: %d of its offers and %d in all are "
                            "being received", dev.name, len(mine), running)
                return encode_reply(
                    "failed", type=TooManyTransfers.__name__,
                    error=f"the receiver takes at most {FILE_RECEIVES_PER_DEVICE} offers from "
                          f"one device and {FILE_RECEIVES_TOTAL} in all at once: try again later")
            job = asyncio.ensure_future(self._receive_offer(dev, offer, conn))
            self._file_active.setdefault(dev.endpoint_id, mine).add(job)
            job.add_done_callback(lambda j: self._file_active_done(dev.endpoint_id, j))
            if key is not None:
                self._file_jobs[key] = job
                job.add_done_callback(lambda j: self._file_job_done(key, j))
        try:
            # a job with an id outlives a lost request (a retry joins it); one without ends
            # with its request
            return await (asyncio.shield(job) if key is not None else job)
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if job.cancelled() and (me is None or not me.cancelling()):
                # the job was stopped here (the device unpaired, the node closing), not us
                return encode_reply("failed", error="the receiver stopped this transfer")
            raise

    def _file_active_done(self, peer: EndpointId, job: asyncio.Future[bytes]) -> None:
        jobs = self._file_active.get(peer)
        if jobs is not None:
            jobs.discard(job)
            if not jobs:
                del self._file_active[peer]

    def _file_job_done(self, key: tuple[EndpointId, str], job: asyncio.Future[bytes]) -> None:
        failed = job.cancelled() or job.exception() is not None
        if not failed:
            with contextlib.suppress(FileTransferError):
                failed = decode_reply(job.result())["status"] not in ("stored", "declined")
        if failed:
            if self._file_jobs.get(key) is job:
                del self._file_jobs[key]
            return
        if self._file_jobs.get(key) is job:  # its answer is kept below
            del self._file_jobs[key]
        answers = self._answered_offers()
        k = (str(key[0]), key[1])
        answers.pop(k, None)
        answers[k] = job.result()  # the newest last
        _trim_answers(answers)
        path = self.data_dir / "file-offers.json"
        try:  # before the reply goes out (this callback runs before the handler resumes)
            _write_durably(path, json.dumps(
                [[p, i, r.decode()] for (p, i), r in answers.items()]).encode())
        except OSError:
            log.warning("could not record answered file offers in %s", path, exc_info=True)

    def _answered_offers(self) -> dict[tuple[str, str], bytes]:
        if self._file_answers is None:
            self._file_answers = {}
            path = self.data_dir / "file-offers.json"
            try:
                for p, i, r in json.loads(path.read_text()):
                    self._file_answers[(str(p), str(i))] = str(r).encode()
            except FileNotFoundError:
                pass
            except (OSError, ValueError, TypeError):
                log.warning("ignoring a damaged %s", path, exc_info=True)
            _trim_answers(self._file_answers)
        return self._file_answers

    async def _receive_offer(
        self, dev: PairedDevice, o: Offer, conn: Connection | None
    ) -> bytes:
        try:
            if o.entries is None:
                offer = FileOffer(sanitize_file_name(o.name), o.size, o.hash, dev)
                files: list[OfferEntry] = []
                empty: list[str] = []
            else:
                files, empty = sanitize_entries(o.entries)
                offer = FileOffer(sanitize_file_name(o.name), o.size, "", dev, is_directory=True,
                                  files=len(files),
                                  paths=tuple(sorted([e.path for e in files] + empty)))
        except ValueError as e:
            return encode_reply("failed", error=str(e))
        handler = self._file_handler
        if handler is None:
            return encode_reply("declined", reason="this device takes no files")
        chosen = handler(offer)
        if inspect.isawaitable(chosen):
            chosen = await chosen
        if chosen is None:
            return encode_reply("declined", reason="declined by the receiver")
        directory = Path(chosen)
        if not directory.is_dir():
            return encode_reply("failed", error="the receiver's destination is not a directory")
        directory = directory.resolve()
        blobs = await self.blob_store()
        cb = self._file_progress
        target = self._fetch_target(dev, conn)
        if o.entries is None:
            dest = unique_destination(directory, offer.name)
            try:
                fetched = await self._fetch(
                    blobs, target, o.hash, dest, o.size,
                    None if cb is None else (lambda p: cb(offer, p)),
                )
            except IrohPairError as e:
                log.warning("file %r from %s failed: %s", offer.name, dev.name, e)
                return encode_reply("failed", error=str(e), type=type(e).__name__)
            if fetched.hash != o.hash or fetched.size != o.size:  # verified, not the size offered
                dest.unlink(missing_ok=True)  # the offer lied: nothing stays under its name
                return encode_reply("failed",
                                    error=f"received {fetched.size} bytes, {o.size} offered")
            log.info("received %r (%d bytes, %d read in %.2f s) from %s", dest.name, o.size,
                     fetched.bytes_read, fetched.seconds, dev.name)
            return encode_reply("stored", hash=o.hash, size=o.size, name=dest.name,
                                read=fetched.bytes_read)
        try:
            name, read = await self._receive_tree(offer, files, empty, directory, target)
        except (IrohPairError, OSError) as e:
            log.warning("directory %r from %s failed: %s", offer.name, dev.name, e)
            return encode_reply("failed", error=str(e), type=type(e).__name__)
        log.info("received directory %r (%d files, %d bytes, %d read) from %s", name,
                 len(files), o.size, read, dev.name)
        return encode_reply("stored", hash="", size=o.size, name=name, read=read)

    async def _receive_tree(
        self,
        offer: FileOffer,
        files: list[OfferEntry],
        empty: list[str],
        directory: Path,
        target: EndpointAddr | EndpointId,
    ) -> tuple[str, int]:
        """Fetches a directory offer's files (paths sanitised) into a temporary directory in
        ``directory``, then renames it to a free name: ``(that name, bytes read)``. On failure
        the temporary tree is removed and nothing appears under the offer's name."""
        blobs = await self.blob_store()
        cb = self._file_progress
        # made 0700, held open, re-checked (lstat) before each fetch and the rename: a swap of
        # it or a directory in it for a link stops the transfer, and nothing lands elsewhere;
        # recorded before it is made, for the sweep after a crash
        name = temp_name()
        self._note_partial(directory / name, True)
        try:
            tree = TempTree.create(directory, name)
        except BaseException:
            self._note_partial(directory / name, False)
            raise
        final: Path | None = None
        try:
            for d in empty:
                tree.makedirs(d)
            started = time.monotonic()
            done = read = 0
            for e in files:
                assert e.hash is not None
                parent, _, leaf = e.path.rpartition("/")
                parent_fd = tree.open_dir(parent)
                base = done

                def progress(p: FileProgress, base: int = base) -> None:
                    if cb is not None:
                        now = base + p.done
                        cb(offer, FileProgress(now, offer.size,
                                               now / max(time.monotonic() - started, 1e-9)))

                try:
                    tree.check(parent)
                    fetched = await self._fetch(blobs, target, e.hash,
                                                tree.path(parent_fd, leaf), e.size, progress)
                finally:
                    tree.close_dir(parent_fd)
                if fetched.hash != e.hash or fetched.size != e.size:
                    raise FileTransferError(
                        f"{e.path}: received {fetched.size} bytes, {e.size} offered")
                done += e.size
                read += fetched.bytes_read
            # reserve a free name (mkdir fails if it exists), then move the tree onto it
            while final is None:
                candidate = unique_destination(directory, offer.name)
                with contextlib.suppress(FileExistsError):
                    candidate.mkdir()
                    final = candidate
            tree.finish(final)
            return final.name, read
        except BaseException:
            tree.remove()
            if final is not None and tree.root != final:
                with contextlib.suppress(OSError):
                    final.rmdir()  # the empty reservation, never a tree
            raise
        finally:
            tree.close()
            self._note_partial(directory / name, False)

    def _note_partial(self, path: Path, present: bool) -> None:
        """Records (or forgets) a temporary tree in DATA_DIR/file-partials.json, durably."""
        if present:
            self._partials.add(str(path))
        else:
            self._partials.discard(str(path))
        record = self.data_dir / "file-partials.json"
        try:
            _write_durably(record, json.dumps(sorted(self._partials)).encode())
        except OSError:
            log.warning("could not record temporary trees in %s", record, exc_info=True)

    def _sweep_partials(self) -> None:
        """Removes the temporary trees an earlier run recorded and left (killed mid-transfer):
        only those recorded, only if each is still a directory with such a name."""
        record = self.data_dir / "file-partials.json"
        try:
            left = json.loads(record.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            log.warning("ignoring a damaged %s", record, exc_info=True)
            left = []
        for p in left if isinstance(left, list) else []:
            if isinstance(p, str) and remove_leftover(Path(p)):
                log.info("removed %s, left by an interrupted transfer", p)
        try:
            _write_durably(record, b"[]")
        except OSError:
            log.warning("could not reset %s", record, exc_info=True)

    async def _fetch(
        self,
        blobs: BlobStore,
        target: EndpointAddr | EndpointId,
        hash: str,
        dest: Path,
        size: int,
        progress: Callable[[FileProgress], object] | None,
    ) -> Fetched:
        """``blobs.fetch``, cancelled when it makes no progress for the stall timeout (from its
        start, or from the last byte that arrived): then TransferStalled. Once every byte
        arrived the rest (writing the verified file out) is local work and is not timed."""
        loop = asyncio.get_running_loop()
        stall = self._file_stall_timeout
        last = loop.time()
        seen = -1

        def on_progress(p: FileProgress) -> None:
            nonlocal last, seen
            if p.done != seen:
                seen, last = p.done, loop.time()
            if progress is not None:
                progress(p)

        task = asyncio.ensure_future(
            blobs.fetch(self.endpoint, target, hash, dest, size=size, progress=on_progress))
        try:
            while not task.done():
                left: float | None = last + stall - loop.time()
                if seen >= size:  # all arrived: no more network waits
                    left = None
                elif left is not None and left <= 0:
                    task.cancel()
                    await asyncio.wait({task})  # its end (our own cancellation still raises)
                    raise TransferStalled(
                        f"the fetch of {dest.name!r} made no progress for {stall:g} s "
                        f"({max(seen, 0)} of {size} bytes): cancelled")
                await asyncio.wait({task}, timeout=left)
            return task.result()
        finally:
            if not task.done():
                task.cancel()

    def _fetch_target(
        self, dev: PairedDevice, conn: Connection | None
    ) -> EndpointAddr | EndpointId:
        """Where to fetch an offer's content from: the addresses of the connection the offer
        came over (a hint may be stale: the sender may have restarted on another port since),
        else the hint, else the id alone."""
        peer = dev.endpoint_id
        if conn is not None and not conn.is_closed:
            paths = conn.paths()
            relays = [p.addr for p in paths if p.kind == "relay"]
            direct = [p.addr for p in paths if p.kind == "direct"]
            if relays or direct:
                return EndpointAddr(peer, relays, direct)
        return self._hints.get(peer, peer)

    # ------------------------------------------------------------------ connections

    def _admit(self, conn: Connection) -> bool:
        """The accept loop's admission hook: paired ids always, unknown ones per §9.1."""
        return conn.remote_id in self._devices or self._admit_unknown(conn)

    def _refuse_on_shutdown(self, conn: Connection) -> None:
        self._forget_unknown(conn)
        conn.close(int(CloseCode.SHUTDOWN), b"shutting down")

    def _setup(self, conn: Connection) -> _ConnState:
        st = self._conns.get(conn.stable_id)
        if st is not None and st.conn is conn:
            return st
        # §9.1: the envelope header is read first and each kind has its limit, an unknown
        # peer's only pair/pair2 (64 KiB + 64, within 10 s, 2 streams at a time)
        paired = conn.remote_id in self._devices
        st = _ConnState(conn, limits=_kind_limits(paired))
        self._conns[conn.stable_id] = st
        if paired:
            _raise_stream_limit(conn)
        serving = conn.serve_streams(
            lambda inc: self._dispatch(st, inc), max_first_frame=PAIRED_FRAME_LIMIT,
            kind_limits=st.limits,
        )

        # before any of its streams is dispatched (they come from later callbacks)
        st.path = _selected(conn)
        self._mark_connected(st)

        async def watch() -> None:
            try:
                info = await serving
                detail = info.kind if info.code is None else _close_code_text(info.code, info.by_peer)
            except IrohPairError as e:
                detail = str(e)
            finally:
                if self._conns.get(conn.stable_id) is st:
                    del self._conns[conn.stable_id]
                self._forget_unknown(conn)
            dev = self._devices.get(conn.remote_id)
            if dev is not None:
                self.registry.touch(dev.endpoint_id, time.time())
            self._mark_disconnected(conn.remote_id, detail)

        self._spawn(watch())
        if self._subscribers:
            self._watch_paths_of(st)
        return st

    # presence: "connected" when a paired device gets its first live connection (a second
    # one, e.g. both sides dialing at once, is no news), "disconnected" when its last one ends

    def _has_live_connection(self, peer: EndpointId) -> bool:
        return any(s.conn.remote_id == peer and not s.conn.is_closed for s in self._conns.values())

    def _mark_connected(self, st: _ConnState) -> None:
        dev = self._devices.get(st.conn.remote_id)
        if dev is None or st.conn.is_closed or dev.endpoint_id in self._present:
            return
        self._present.add(dev.endpoint_id)
        self._emit(NodeEvent("connected", dev.endpoint_id, dev.name, st.path))
        wake = self._outbox_wake.get(dev.endpoint_id)  # the outbox tries again at once
        if wake is not None:
            wake.set()

    def _mark_disconnected(self, peer: EndpointId, detail: str) -> None:
        if peer not in self._present or self._has_live_connection(peer):
            return
        self._present.discard(peer)
        dev = self._devices.get(peer)
        if dev is not None:
            self._emit(NodeEvent("disconnected", dev.endpoint_id, dev.name, detail=detail))

    def is_connected(self, device: DeviceRef) -> bool:
        """Whether this node holds a live connection to a paired ``device`` (name, EndpointId,
        id prefix or :class:`PairedDevice`) now, dialed or accepted: read from the node's own
        connections (nothing is sent). It turns True with the "connected" event of
        :meth:`events` and False with "disconnected": at once when the peer closes, or when
        the connection's QUIC idle timeout (``NetworkOptions.idle_timeout``, iroh's default
        30 s) passes after the peer vanished without closing (killed, network gone). Raises
        :class:`~iroh_pair.errors.UnknownDevice` for a device that is not paired. Example::

            if not node.is_connected("laptop"):
                print("laptop is offline; the message waits")
        """
        return self._has_live_connection(self.device(device).endpoint_id)

    # ------------------------------------------------------------------ admission (§9.1)

    def _admit_unknown(self, conn: Connection) -> bool:
        """Admits a connection from an EndpointId not in the registry, or closes it
        (``NOT_PAIRED``): only while a code is hosted, in one of ``max_unknown_connections``
        slots. When they are full the oldest idle one (no handshake in progress) is evicted;
        only when every slot holds a handshake is the newcomer refused."""
        if not self.hosting:
            self.counters["not_admitted"] += 1
            conn.close(int(CloseCode.NOT_PAIRED), b"not paired")
            return False
        while len(self._unknown) >= self._max_unknown_connections:
            oldest_idle = next((u for u in self._unknown.values() if u.idle), None)
            if oldest_idle is None:
                self.counters["not_admitted"] += 1
                self.counters["unknown_refused"] += 1
                log.info("refused %s: every unknown slot is pairing", conn.remote_id.fmt_short())
                conn.close(int(CloseCode.NOT_PAIRED), b"busy: try again")
                return False
            self.counters["unknown_evicted"] += 1
            log.info("evicted idle unknown connection %s", oldest_idle.conn.remote_id.fmt_short())
            self._close_unknown(oldest_idle, CloseCode.NOT_PAIRED, b"evicted")
        u = _Unknown(conn)
        u.timer = asyncio.get_running_loop().call_later(
            self._unknown_start_timeout, self._start_timed_out, u
        )
        self._unknown[conn.stable_id] = u
        self.counters["unknown_admitted"] += 1
        return True

    def _unknown_of(self, conn: Connection) -> _Unknown | None:
        u = self._unknown.get(conn.stable_id)
        return u if u is not None and u.conn is conn else None

    def _forget_unknown(self, conn: Connection) -> _Unknown | None:
        """Frees ``conn``'s unknown slot (closed or promoted); returns its entry, if any."""
        u = self._unknown_of(conn)
        if u is None:
            return None
        del self._unknown[conn.stable_id]
        if u.timer is not None:
            u.timer.cancel()
            u.timer = None
        return u

    def _close_unknown(self, u: _Unknown, code: CloseCode, reason: bytes) -> None:
        self._forget_unknown(u.conn)
        u.conn.close(int(code), reason)

    def _start_timed_out(self, u: _Unknown) -> None:
        """``unknown_start_timeout`` after admission: a connection without a handshake in
        progress is closed (one whose attempt failed is already closing, after its grace)."""
        u.timer = None
        if self._closed or self._unknown_of(u.conn) is not u or not u.idle or u.closing:
            return
        self.counters["unknown_start_timeouts"] += 1
        log.info("closing %s: pairing did not start in time", u.conn.remote_id.fmt_short())
        self._close_unknown(u, CloseCode.NOT_PAIRED, b"pairing did not start")

    def _pair_stream_arrived(self, conn: Connection) -> None:
        """A ``pair2`` stream's first frame (header and Hello) arrived on ``conn``."""
        u = self._unknown_of(conn)
        if u is not None:
            u.started = True

    @contextlib.contextmanager
    def _handshake(self, conn: Connection) -> Iterator[None]:
        """Marks a pairing handshake in progress on ``conn``: its unknown slot is not idle
        (not evicted, not closed by the start timer) meanwhile."""
        u = self._unknown_of(conn)
        if u is not None:
            u.handshakes += 1
        try:
            yield
        finally:
            if u is not None:
                u.handshakes -= 1

    def _after_failed_attempt(self, conn: Connection, failure: Failed) -> None:
        """An unknown peer's pairing attempt failed: its connection is closed after the grace
        period (the Reject arrives first), with ``PROTOCOL_ERROR`` when it sent malformed
        input (an invalid SPAKE2 point, an undecodable message), else ``PAIRING_FAILED``."""
        if conn.remote_id in self._devices:
            return  # a paired device that tried again: its connection stays
        malformed = not failure.by_peer and failure.code in (
            RejectCode.MALFORMED, RejectCode.TOO_LARGE, RejectCode.UNEXPECTED
        )
        code, reason = (
            (CloseCode.PROTOCOL_ERROR, b"malformed pairing message") if malformed
            else (CloseCode.PAIRING_FAILED, b"pairing failed")
        )
        u = self._unknown_of(conn)
        if u is not None:
            if u.closing:
                return
            u.closing = True
        if malformed:
            self.counters["unknown_protocol_errors"] += 1

        def close() -> None:
            if self._closed or conn.remote_id in self._devices:
                return
            self._forget_unknown(conn)
            conn.close(int(code), reason)

        asyncio.get_running_loop().call_later(FAILURE_GRACE, close)

    def _promote(self, conn: Connection) -> None:
        """``conn``'s peer is now paired (stored in the registry): its connection stops being
        unknown (the slot is freed, its timers end) and gets a paired peer's limits."""
        if self._forget_unknown(conn) is not None:
            self.counters["unknown_promoted"] += 1
        st = self._conns.get(conn.stable_id)
        if st is not None and st.conn is conn and st.limits is not None:
            st.limits.set_default(PAIRED_FRAME_LIMIT)
            st.limits.set_frame_timeout(PAIRED_FIRST_FRAME_TIMEOUT)
        _raise_stream_limit(conn)

    def _check_hosting(self) -> None:
        """When the last offer has ended, every unknown connection is closed (``NOT_PAIRED``)."""
        if self._closed or self.hosting:
            return
        for u in list(self._unknown.values()):
            if u.closing:  # a failed attempt's: closed after its grace (its Reject first)
                continue
            self.counters["unknown_closed_offer_end"] += 1
            self._close_unknown(u, CloseCode.NOT_PAIRED, b"no pairing code is hosted")

    def _watch_paths_of(self, st: _ConnState) -> None:
        """Starts turning ``st``'s path events into path_changed events (once per connection)."""
        if not st.paths_watched:
            st.paths_watched = True
            self._spawn(self._watch_paths(st))

    async def _watch_paths(self, st: _ConnState) -> None:
        """path_changed whenever the selected path differs from the one last reported (its
        first event, a snapshot, catches a change made before the watch started)."""
        conn = st.conn
        with contextlib.suppress(IrohPairError):  # the connection is gone
            async for ev in conn.path_events():
                now = _selected(conn)
                dev = self._devices.get(conn.remote_id)
                if ev.event in ("selected", "snapshot") and now is not None and now != st.path \
                        and dev is not None:
                    st.path = now
                    self._emit(NodeEvent("path_changed", dev.endpoint_id, dev.name, now))

    def _dispatch(self, st: _ConnState, incoming: IncomingStream) -> None:
        conn = st.conn
        first = incoming.first_frame
        try:
            kind, used = decode_header(first)
        except ProtocolError:
            _reject(incoming, StreamErrorCode.BAD_ENVELOPE)
            return
        body = first[used:]
        if kind == PAIR_KIND:
            self._pair_stream_arrived(conn)  # admission bookkeeping (§9.1)
        if kind == PAIR_KIND_V1:  # pairing version 1: refused with its version named (§2.1)
            self._spawn(self._refuse_pairing(conn, incoming, None))
            return
        if kind == PAIR_KIND:
            if len(body) > MAX_MESSAGE:
                self._spawn(self._refuse_pairing(conn, incoming, RejectCode.TOO_LARGE,
                                                 "pairing message over 64 KiB"))
            elif not self.hosting:
                self._spawn(self._refuse_pairing(conn, incoming, RejectCode.EXPIRED,
                                                 "no pairing code is hosted"))
            else:
                self._spawn(self._host(conn, incoming, body))
            return
        dev = self._devices.get(conn.remote_id)
        if dev is None:
            self.counters["not_admitted"] += 1
            _reject(incoming, StreamErrorCode.NOT_ADMITTED)
            return
        handler: MessageHandler | None = None
        if kind == FILE_KIND:  # the offer's handler fetches from where the offer came from

            def handler(d: PairedDevice, data: bytes) -> Awaitable[bytes]:
                return self._file_offer(d, data, conn)

        self._messages.deliver(incoming, dev, kind, body, lambda: self._channel(conn, dev),
                               handler)

    async def wait_disconnected(self, timeout: float | None = None) -> bool:
        """Waits until every connection has been closed (by the peers: the side that reads
        last closes); returns False if some were still open after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._conns:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    # ------------------------------------------------------------------ events

    async def events(self) -> AsyncIterator[NodeEvent]:
        """Device events as they happen (:class:`NodeEvent`): paired, unpaired, connected
        (with the path), path_changed and disconnected (and lan_appeared, lan_left with mDNS
        on), and outbox_expired (:meth:`enqueue`). Ends when the node closes. Built on the
        node's connections and iroh's path events, not on polling:

        - "connected" is emitted as soon as the device's first live connection is set up
          (dialed by this node, or accepted), before any message on it is handled: within
          1 s of the connection (tests/test_presence.py);
        - "disconnected" when its last connection ends: within 1 s when the peer closes it;
          when the peer vanishes without closing (its process killed, its network gone),
          once the QUIC idle timeout passes (``NetworkOptions.idle_timeout``, iroh's 30 s by
          default; the keep-alive, ``keep_alive``, 5 s, keeps an idle but live connection
          open): within ``idle_timeout`` + 1.5 s of the peer vanishing;
        - "path_changed" when a connection's selected path changes, e.g. relay to direct
          after hole punching; only while someone iterates this (each connection is
          watched once, however many iterate).

        :meth:`is_connected` says the same at any moment. Events that happen while nobody
        iterates are not kept. Example::

            async for ev in node.events():
                if ev.kind == "disconnected":
                    print(ev.name, "went away:", ev.detail)
        """
        q: asyncio.Queue[NodeEvent | None] = asyncio.Queue()
        self._subscribers.add(q)
        for st in list(self._conns.values()):
            self._watch_paths_of(st)
        try:
            while (ev := await q.get()) is not None:
                yield ev
        finally:
            self._subscribers.discard(q)

    async def _watch_lan(self) -> None:
        """Turns mDNS discoveries of paired devices into lan_appeared / lan_left events."""
        async for ev in self.endpoint.lan_events():
            if ev.event == "discovered":
                self._on_lan.add(ev.id)
                self._report_lan(ev.id)
            else:
                self._on_lan.discard(ev.id)
                dev = self._devices.get(ev.id)
                if ev.id in self._lan_reported and dev is not None:
                    self._emit(NodeEvent("lan_left", dev.endpoint_id, dev.name))
                self._lan_reported.discard(ev.id)

    def _report_lan(self, peer: EndpointId) -> None:
        """lan_appeared, once per stay, for a paired device seen on the LAN (also when a device
        already seen becomes paired)."""
        dev = self._devices.get(peer)
        if dev is not None and peer in self._on_lan and peer not in self._lan_reported:
            self._lan_reported.add(peer)
            self._emit(NodeEvent("lan_appeared", dev.endpoint_id, dev.name))

    def on_lan(self, ref: DeviceRef) -> bool:
        """Whether a paired device's mDNS announcements are currently seen (``mdns=True``)."""
        return self.device(ref).endpoint_id in self._on_lan

    def _emit(self, ev: NodeEvent) -> None:
        for q in self._subscribers:
            q.put_nowait(ev)

    def stats(self) -> NodeStats:
        """A snapshot of the counters (:class:`NodeStats`): the endpoint's (native), the
        cache's, the node's own (:class:`NodeCounters`, including the admission of unknown
        peers, docs/PROTOCOL.md §9.1), the refused messages by reason, and the unknown-peer
        slots in use now. Example::

            s = node.stats()
            print(s.admission.unknown_connections, s.node.unknown_evicted)
        """
        return NodeStats(
            endpoint=self.endpoint.stats(),
            cache=self.cache.stats(),
            node=NodeCounters(**self.counters),
            rejections=dict(self.rejections),
            admission=AdmissionStats(
                unknown_connections=len(self._unknown),
                max_unknown_connections=self._max_unknown_connections,
            ),
        )

    def _spawn(self, coro: Awaitable[None]) -> None:
        t: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._task_done)

    def _task_done(self, t: asyncio.Task[None]) -> None:
        self._tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("node task failed", exc_info=t.exception())

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<Node {self.id.fmt_short()} {state} devices={len(self._devices)} "
            f"connections={len(self._conns)} hosting={self.hosting}>"
        )


def _named_remote_error(e: RemoteError, dev: PairedDevice, mid: bytes) -> RemoteError:
    """``e`` again, its message naming the code (``DUPLICATE (18)``, not a bare number)."""
    name = code_name(e.code)
    what = {
        "DUPLICATE": "was already delivered (handled by an earlier attempt)",
        "IN_PROGRESS": "is still being handled (the timeout ran out)",
        "HANDLER_ERROR": "made the handler fail",
    }.get(name, "was refused")
    return RemoteError(f"{name} ({int(e.code)}): message {mid.hex()} to {dev} {what}", e.code)


def _check_outbox_ttl(ttl: float) -> None:
    if ttl > OUTBOX_TTL:
        raise ValueError(
            f"an outbox ttl is at most {OUTBOX_TTL:g} s (24 h), the receiver's delivered-id "
            f"window: a retry after it could be delivered twice (got {ttl:g})")


def _close_code_text(code: int, by_peer: bool) -> str:
    """A close code as a ``disconnected`` event's detail: its name and number, and who closed.

    >>> _close_code_text(0x12, True)
    'closed by the peer: CACHE_SHUTDOWN (18)'
    """
    try:
        name = CloseCode(code).name
    except ValueError:
        name = "unknown code"
    return f"closed by {'the peer' if by_peer else 'this node'}: {name} ({code})"


def _kind_limits(paired: bool) -> KindLimits:
    """A connection's first-frame limits (§9.1): pairing kinds 64 KiB + 64 for everyone;
    other kinds 16 MiB + 1 KiB within 30 s from a paired peer, refused (``NOT_ADMITTED``,
    body unread) within 10 s from an unknown one."""
    pairing = {PAIR_KIND: PAIR_FRAME_LIMIT, PAIR_KIND_V1: PAIR_FRAME_LIMIT}
    if paired:
        return KindLimits(PAIRED_FRAME_LIMIT, pairing, frame_timeout=PAIRED_FIRST_FRAME_TIMEOUT)
    return KindLimits(0, pairing, frame_timeout=HOST_FIRST_FRAME_TIMEOUT)


def _trim_answers(answers: dict[tuple[str, str], bytes]) -> None:
    """Keeps at most FILE_OFFERS_PER_DEVICE answers per sender and FILE_OFFERS_REMEMBERED in
    all (``answers`` is oldest first): a sender's own oldest go first; over the total, the
    oldest of the sender holding the most."""
    per: dict[str, list[tuple[str, str]]] = {}
    for k in answers:
        per.setdefault(k[0], []).append(k)
    for keys in per.values():
        extra = max(0, len(keys) - FILE_OFFERS_PER_DEVICE)
        for old in keys[:extra]:
            del answers[old]
        del keys[:extra]
    while len(answers) > FILE_OFFERS_REMEMBERED:
        del answers[max(per.values(), key=len).pop(0)]


def _write_durably(path: Path, data: bytes) -> None:
    """Replaces ``path`` by ``data`` atomically and durably: a temporary file written and
    fsynced, renamed over ``path``, then the directory fsynced."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _raise_stream_limit(conn: Connection) -> None:
    """A paired peer's concurrent streams (the endpoint starts every peer at 2)."""
    try:
        conn.set_max_concurrent_bi_streams(PAIRED_MAX_BI_STREAMS)
    except IrohPairError as e:  # the connection is gone
        log.debug("could not raise the stream limit of %s: %s", conn.remote_id.fmt_short(), e)


_PATH_KINDS: tuple[PathKind, ...] = get_args(PathKind)


def _selected(conn: Connection) -> PathKind | None:
    """The kind of ``conn``'s selected path ("direct" or "relay"), if one is selected."""
    try:
        paths = conn.paths()
    except IrohPairError:  # the connection is gone
        return None
    for p in paths:
        if p.selected:
            for kind in _PATH_KINDS:
                if p.kind == kind:
                    return kind
    return None



def _file_sig(path: Path) -> tuple[int, int, int, int] | None:
    """A file's identity and version as a sender sees it (size, modification time, inode,
    device; links followed, as the import does), or None when it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev
