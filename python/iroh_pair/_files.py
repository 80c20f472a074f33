"""Files between paired devices: the offer message, name sanitising, and the native blob store.

The bytes of a file never pass through Python: the sender imports the file into its blob store
(n0's ``iroh-blobs``, BLAKE3-verified streaming) and offers its hash to one device over the
encrypted messaging (a message of kind :data:`FILE_KIND`); the receiver's handler picks a
directory (or declines), and the receiver's native code fetches the blob from the sender,
verifying every chunk group against the hash before it is written, then writes it to the
destination under a temporary name and links it into place. The sender's blob provider serves
the hash only to the device it was offered to, and only while the offer lives.

Used through :meth:`iroh_pair.Node.send_file` and :meth:`iroh_pair.Node.on_file_offer`::

    node.on_file_offer(lambda offer: Path("~/Downloads").expanduser())   # receiver
    receipt = await node.send_file(device, "report.pdf")                 # sender
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from iroh_pair import _native
from iroh_pair.errors import FileTransferError, IrohPairError
from iroh_pair.runtime._bridge import call, get_bridge
from iroh_pair.store import PairedDevice
from iroh_pair.transport import Endpoint, EndpointAddr, EndpointId

__all__ = [
    "FILE_KIND",
    "ProgressCallback",
    "FileOffer",
    "FileProgress",
    "FileReceipt",
    "FileOfferHandler",
    "BlobStore",
    "Fetched",
    "sanitize_file_name",
    "unique_destination",
    "encode_offer",
    "decode_offer",
]

#: The message kind of file offers (the reply says stored, declined or failed).
FILE_KIND = "iroh-pair.file"
#: The longest file name kept, in UTF-8 bytes (most file systems' limit).
MAX_NAME_BYTES = 255
#: Names Windows reserves for devices, with or without an extension.
_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"COM{i}" for i in range(1, 10)]
    + [f"LPT{i}" for i in range(1, 10)]
)
_FORBIDDEN = set('/\\:*?"<>|')


@dataclass(frozen=True, slots=True)
class FileOffer:
    """A file a paired device offers: ``name`` already sanitised (safe as one path component),
    ``size`` in bytes, ``hash`` (BLAKE3, 64 hex digits), and the ``sender``."""

    name: str
    size: int
    hash: str
    sender: PairedDevice


@dataclass(frozen=True, slots=True)
class FileProgress:
    """Progress of a transfer: ``done`` of ``total`` bytes, at ``rate`` bytes per second (the
    average since the transfer started)."""

    done: int
    total: int
    rate: float


@dataclass(frozen=True, slots=True)
class FileReceipt:
    """What :meth:`iroh_pair.Node.send_file` returns once the receiver has the file verified
    and stored: the content's ``hash``, its ``size``, the ``name`` the receiver stored it under
    (after sanitising and collision renaming), and ``transferred``, the bytes the receiver read
    from the network for it (content and hash tree: a little over ``size`` for a fresh
    transfer, less when it resumed from data it had already verified, 0 when it had it all)."""

    hash: str
    size: int
    name: str
    transferred: int = 0


#: The receiver's decision on a :class:`FileOffer`: a directory to store the file in, or None
#: to decline (plain or awaitable).
FileOfferHandler = Callable[[FileOffer], Union[str, "os.PathLike[str]", None,
                                               Awaitable[Union[str, "os.PathLike[str]", None]]]]
ProgressCallback = Callable[[FileProgress], object]


def sanitize_file_name(name: str) -> str:
    """``name`` from a peer made safe as one file name in a directory of ours: only its last
    path component (no directory part, so no traversal and nothing absolute), without control,
    bidi or separator characters and characters Windows forbids, without leading dots and
    trailing dots or spaces, not a reserved device name, at most 255 UTF-8 bytes (the
    extension kept). Never empty: ``"file"`` when nothing is left::

        >>> sanitize_file_name("../../etc/passwd")
        'passwd'
        >>> sanitize_file_name("C:\\\\Windows\\\\..\\\\evil.exe")
        'evil.exe'
        >>> sanitize_file_name("CON.txt")
        '_CON.txt'
        >>> sanitize_file_name("..")
        'file'
    """
    name = unicodedata.normalize("NFC", name)
    # the last component under either separator
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    out = []
    for c in name:
        cat = unicodedata.category(c)
        if cat in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") or c in _FORBIDDEN:
            out.append("_" if c in _FORBIDDEN else "")
        else:
            out.append(c)
    name = "".join(out).strip(". ")
    if not name:
        return "file"
    stem = name.split(".", 1)[0].upper()
    if stem in _RESERVED:
        name = "_" + name
    if len(name.encode()) > MAX_NAME_BYTES:
        base, dot, ext = name.rpartition(".")
        if not dot or len(ext.encode()) > 32 or not base:
            base, ext = name, ""
        keep = MAX_NAME_BYTES - (len(ext.encode()) + 1 if ext else 0)
        base = base.encode()[:keep].decode(errors="ignore")
        name = f"{base}.{ext}" if ext else base
    return name


def unique_destination(directory: Path, name: str) -> Path:
    """A path in ``directory`` for ``name`` (already sanitised) that does not exist yet:
    ``name`` itself, else ``stem (2).ext``, ``stem (3).ext``, ... (an existing file is never
    replaced; the native export refuses to replace one that appears meanwhile)::

        dest = unique_destination(Path("/tmp/in"), "a.txt")   # /tmp/in/a (2).txt if a.txt exists
    """
    candidate = directory / name
    if not os.path.lexists(candidate):
        return candidate
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    for i in range(2, 10_000):
        suffix = f" ({i})"
        base = stem.encode()[: MAX_NAME_BYTES - len(suffix) - (len(ext) + 1 if ext else 0)]
        n = base.decode(errors="ignore") + suffix + (f".{ext}" if ext else "")
        candidate = directory / n
        if not os.path.lexists(candidate):
            return candidate
    raise FileTransferError(f"no free name for {name!r} in {directory}")


def encode_offer(name: str, size: int, hash: str) -> bytes:
    """The offer message (JSON, sealed by the messaging layer)."""
    return json.dumps({"v": 1, "name": name, "size": size, "hash": hash}).encode()


def _is_hash(h: object) -> bool:
    return isinstance(h, str) and len(h) == 64 and all(c in "0123456789abcdef" for c in h)


def decode_offer(data: bytes) -> tuple[str, int, str]:
    """``(raw name, size, hash)`` of an offer message; ValueError when malformed."""
    try:
        m = json.loads(data)
    except ValueError as e:
        raise ValueError(f"a file offer is not JSON: {e}") from None
    if not isinstance(m, dict) or m.get("v") != 1:
        raise ValueError("not a version 1 file offer")
    name, size, h = m.get("name"), m.get("size"), m.get("hash")
    if not isinstance(name, str) or len(name) > 4096:
        raise ValueError("a file offer's name must be a string of at most 4096 characters")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 1 << 62:
        raise ValueError("a file offer's size must be a non-negative integer")
    if not _is_hash(h):
        raise ValueError("a file offer's hash must be 64 lowercase hex digits")
    assert isinstance(h, str)
    return name, size, h


def encode_reply(status: str, **fields: Any) -> bytes:
    return json.dumps({"status": status, **fields}).encode()


def decode_reply(data: bytes) -> dict[str, Any]:
    try:
        m = json.loads(data)
    except ValueError:
        m = None
    if not isinstance(m, dict) or not isinstance(m.get("status"), str):
        raise FileTransferError("the receiver's reply to a file offer is malformed")
    return m


@dataclass(frozen=True, slots=True)
class Fetched:
    """A finished fetch: the content's ``hash`` and ``size``; ``bytes_read``, what this fetch read
    from the stream (payload and hash tree; 0 when the store already had it all, less than the
    size when it resumed from partial data); ``seconds``, how long the fetch itself took."""

    hash: str
    size: int
    bytes_read: int
    seconds: float


class BlobStore:
    """The node's blob store (iroh-blobs ``FsStore`` in ``DATA_DIR/blobs``) and its offers.

    Internal: :class:`~iroh_pair.Node` opens it on first use and serves it on its endpoint.
    """

    __slots__ = ("_n", "_grants")

    def __init__(self, native: _native.BlobStore) -> None:
        self._n = native
        #: live offers per (peer, hash): one grant per send_file in flight
        self._grants: dict[tuple[EndpointId, str], int] = {}

    @classmethod
    async def open(cls, directory: Path) -> BlobStore:
        """Opens (creates) the store in ``directory``."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        native: _native.BlobStore = await call(_native.BlobStore.open, str(directory.resolve()))
        return cls(native)

    async def add_path(self, path: Path) -> tuple[str, int]:
        """Imports the file at ``path`` (copied into the store): ``(hash, size)``."""
        r: tuple[str, int] = await call(self._n.add_path, str(path.resolve()))
        return r

    def grant(self, peer: EndpointId, hash: str) -> None:
        """Offers ``hash`` to ``peer`` (counted: each grant is ended by one :meth:`ungrant`)."""
        key = (peer, hash)
        self._grants[key] = self._grants.get(key, 0) + 1
        self._n.allow(peer, hash)

    def ungrant(self, peer: EndpointId, hash: str) -> None:
        """Ends one grant; the offer is withdrawn when none is left."""
        key = (peer, hash)
        left = self._grants.get(key, 0) - 1
        if left > 0:
            self._grants[key] = left
            return
        self._grants.pop(key, None)
        self._n.revoke(peer, hash)

    def sent(self, peer: EndpointId, hash: str) -> int:
        """Bytes of ``hash`` sent to ``peer`` under its current offer (as the provider reports)."""
        return self._n.sent(peer, hash)

    def offered(self, peer: EndpointId) -> list[str]:
        """The hashes offered to ``peer`` right now."""
        return self._n.offered(peer)

    async def has(self, hash: str) -> bool:
        """Whether the store holds the complete content ``hash``."""
        r: bool = await call(self._n.has, hash)
        return r

    def serve_on(self, endpoint: Endpoint) -> None:
        """Serves the offers on ``endpoint`` (adds the blobs ALPN to it)."""
        endpoint._n.serve_blobs(self._n)

    async def fetch(
        self,
        endpoint: Endpoint,
        peer: EndpointAddr | EndpointId,
        hash: str,
        dest: Path,
        *,
        size: int,
        progress: ProgressCallback | None = None,
    ) -> Fetched:
        """Fetches ``hash`` (of ``size`` bytes, as offered) from ``peer`` into the store,
        verified, and writes it to ``dest`` (which must not exist). Raises
        :class:`~iroh_pair.errors.TransferRefused` when the peer refuses it, else
        :class:`~iroh_pair.errors.FileTransferError`."""
        b = get_bridge()
        loop = asyncio.get_running_loop()
        result: asyncio.Future[Fetched] = loop.create_future()
        started = time.monotonic()

        def on_item(ok: bool, value: Any) -> None:
            if ok and progress is not None:
                elapsed = max(time.monotonic() - started, 1e-9)
                try:
                    progress(FileProgress(int(value), size, int(value) / elapsed))
                except Exception:  # a progress callback's failure does not stop the transfer
                    pass

        def on_end(ok: bool, value: Any) -> None:
            if result.done():
                return
            if ok:
                h, n, read, secs = value
                result.set_result(Fetched(str(h), int(n), int(read), float(secs)))
            else:
                result.set_exception(value)

        token = b.subscribe(on_item, on_end)
        try:
            endpoint._n.fetch_blob(b.native, token, self._n, peer, hash, str(dest), size)
            r = await result
        except BaseException:
            b.unsubscribe(token)
            raise
        b.unsubscribe(token)
        if progress is not None:
            elapsed = max(time.monotonic() - started, 1e-9)
            progress(FileProgress(r.size, size, r.size / elapsed))
        return r

    def stats(self) -> dict[str, int]:
        """The provider's counters: connections refused, get requests allowed and refused."""
        return self._n.stats()

    async def close(self) -> None:
        """Shuts the store down."""
        try:
            await call(self._n.close)
        except IrohPairError:
            pass
