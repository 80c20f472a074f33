"""Files between paired devices: the offer message, name sanitising, and the native blob store.

The bytes of a file never pass through Python: the sender hashes the file where it is (n0's
``iroh-blobs``, BLAKE3-verified streaming; its blob store references the file, no copy) and
offers its hash to one device over the
encrypted messaging (a message of kind :data:`FILE_KIND`); the receiver's handler picks a
directory (or declines), and the receiver's native code fetches the blob from the sender,
verifying every chunk group against the hash before it is written, then writes it to the
destination under a temporary name and links it into place. The sender's blob provider serves
the hash only to the device it was offered to, and only while the offer lives.

A directory is offered as one message listing its tree (relative paths, sizes, hashes; every
file its own blob); the receiver sanitises every path component, fetches the files into a
temporary directory beside the destination and renames it into place once all are verified.

Used through :meth:`iroh_pair.Node.send_file` (or :meth:`iroh_pair.Node.start_file` for
progress as an async iterator) and :meth:`iroh_pair.Node.on_file_offer`::

    node.on_file_offer(lambda offer: Path("~/Downloads").expanduser())   # receiver
    receipt = await node.send_file(device, "report.pdf")                 # sender
    receipt = await node.send_file(device, "holiday-photos/")            # a directory
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from iroh_pair import _native
from iroh_pair.errors import FileChanged, FileTransferError, IrohPairError, OfferTooLarge
from iroh_pair.runtime._bridge import call, get_bridge
from iroh_pair.store import PairedDevice
from iroh_pair.transport import Endpoint, EndpointAddr, EndpointId

__all__ = [
    "FILE_KIND",
    "ProgressCallback",
    "FileOffer",
    "FileProgress",
    "FileReceipt",
    "FileTransfer",
    "FileOfferHandler",
    "OfferEntry",
    "Offer",
    "MAX_DIR_ENTRIES",
    "MAX_OFFER_BYTES",
    "BlobStore",
    "Fetched",
    "sanitize_file_name",
    "sanitize_relative_path",
    "unique_destination",
    "walk_tree",
    "walk_tree_stat",
    "same_file",
    "encode_offer",
    "encode_dir_offer",
    "decode_offer",
    "parse_offer",
]

#: The message kind of file offers (the reply says stored, declined or failed).
FILE_KIND = "iroh-pair.file"
#: The longest file name kept, in UTF-8 bytes (most file systems' limit).
MAX_NAME_BYTES = 255
#: Names Windows reserves for devices, with or without an extension.
_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"COM{i}" for i in [*range(1, 10), "\u00b9", "\u00b2", "\u00b3"]]
    + [f"LPT{i}" for i in [*range(1, 10), "\u00b9", "\u00b2", "\u00b3"]]
)
_FORBIDDEN = set('/\\:*?"<>|')
#: The most entries (files and empty directories) one directory offer lists.
MAX_DIR_ENTRIES = 10_000
#: The largest offer message in bytes (the messaging frame limit is 16 MiB).
MAX_OFFER_BYTES = 4 * 1024 * 1024
#: Seconds between two garbage collections of the blob store: what no offer, running fetch or
#: unfinished fetch holds is dropped (a received file costs its size once; a sent file is only
#: referenced, never copied or deleted).
GC_INTERVAL = 1.0
#: The most components of one path in a directory offer.
MAX_DEPTH = 64


@dataclass(frozen=True, slots=True)
class FileOffer:
    """A file or directory a paired device offers: ``name`` already sanitised (safe as one path
    component), ``size`` in bytes (a directory: of all its files), ``hash`` (BLAKE3, 64 hex
    digits; ``""`` for a directory, whose files each have their own), the ``sender``;
    ``is_directory``, ``files`` (how many files: 1 for a file) and ``paths`` (a directory's
    file and empty-directory paths relative to it, each component sanitised, ``/``-separated;
    empty for a file). Example handler::

        def offered(offer: FileOffer) -> Path | None:
            if offer.is_directory and offer.files > 1000:
                return None                      # decline
            return downloads
    """

    name: str
    size: int
    hash: str
    sender: PairedDevice
    is_directory: bool = False
    files: int = 1
    paths: tuple[str, ...] = ()


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
    transfer, less when it resumed from data it had already verified, 0 when it had it all).
    For a directory: ``is_directory`` is True, ``hash`` is ``""``, ``size`` and ``transferred``
    are totals over its ``files``, ``name`` the directory's name on the receiver."""

    hash: str
    size: int
    name: str
    transferred: int = 0
    #: True when a directory was sent (``hash`` is then ``""``); ``files``: how many files
    is_directory: bool = False
    files: int = 1


#: The receiver's decision on a :class:`FileOffer`: a directory to store the file in, or None
#: to decline (plain or awaitable).
FileOfferHandler = Callable[[FileOffer], Union[str, "os.PathLike[str]", None,
                                               Awaitable[Union[str, "os.PathLike[str]", None]]]]
ProgressCallback = Callable[[FileProgress], object]


def sanitize_file_name(name: str) -> str:
    """``name`` from a peer made safe as one file name in a directory of ours: only its last
    path component (no directory part, so no traversal and nothing absolute), without control,
    bidi or separator characters and characters Windows forbids, every Unicode space (NBSP,
    em space, ...) made an ASCII space, without leading and trailing dots and spaces, not a
    reserved device name (its part before the first dot, trailing spaces ignored, as Windows
    reads it: ``CON .txt`` is ``CON``), at most 255 UTF-8 bytes (the extension kept). Never
    empty: ``"file"`` when nothing is left::

        >>> sanitize_file_name("../../etc/passwd")
        'passwd'
        >>> sanitize_file_name("C:\\\\Windows\\\\..\\\\evil.exe")
        'evil.exe'
        >>> sanitize_file_name("CON.txt")
        '_CON.txt'
        >>> sanitize_file_name("..")
        'file'
        >>> sanitize_file_name("\\u00a0report.pdf\\u00a0")
        'report.pdf'
        >>> sanitize_file_name("con .txt")
        '_con .txt'
    """
    name = unicodedata.normalize("NFC", name)
    # the last component under either separator
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    out = []
    for c in name:
        cat = unicodedata.category(c)
        if cat in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") or c in _FORBIDDEN:
            out.append("_" if c in _FORBIDDEN else "")
        elif cat == "Zs":  # NBSP and the like look like a space: they are one
            out.append(" ")
        else:
            out.append(c)
    name = "".join(out).strip(". ")
    if not name:
        return "file"
    stem = name.split(".", 1)[0].rstrip(" ").upper()
    if stem in _RESERVED:
        name = "_" + name
    if len(name.encode()) > MAX_NAME_BYTES:
        base, dot, ext = name.rpartition(".")
        if not dot or len(ext.encode()) > 32 or not base:
            base, ext = name, ""
        keep = MAX_NAME_BYTES - (len(ext.encode()) + 1 if ext else 0)
        base = base.encode()[:keep].decode(errors="ignore")
        name = f"{base}.{ext}" if ext else base.rstrip(". ") or "file"
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
        base = stem.encode()[: MAX_NAME_BYTES - len(suffix) - (len(ext.encode()) + 1 if ext else 0)]
        n = base.decode(errors="ignore") + suffix + (f".{ext}" if ext else "")
        candidate = directory / n
        if not os.path.lexists(candidate):
            return candidate
    raise FileTransferError(f"no free name for {name!r} in {directory}")


def sanitize_relative_path(raw: str) -> str:
    """A relative path from a peer's directory offer made safe under a directory of ours:
    split at ``/`` and ``\\``, empty, ``.`` and ``..`` components dropped (so nothing climbs
    out and nothing is absolute), every other component through :func:`sanitize_file_name`,
    joined with ``/``. ValueError when no component is left or it is deeper than 64::

        >>> sanitize_relative_path("../../etc/passwd")
        'etc/passwd'
        >>> sanitize_relative_path("a\\\\..\\\\..\\\\x")
        'a/x'
        >>> sanitize_relative_path("/abs/CON/f.txt")
        'abs/_CON/f.txt'
    """
    parts = [p for p in raw.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    if not parts:
        raise ValueError(f"a path in a directory offer has no name: {raw[:100]!r}")
    if len(parts) > MAX_DEPTH:
        raise ValueError(f"a path in a directory offer is deeper than {MAX_DEPTH}")
    return "/".join(sanitize_file_name(p) for p in parts)


@dataclass(frozen=True, slots=True)
class OfferEntry:
    """One entry of a directory offer: ``path`` relative to the directory (``/``-separated),
    ``size`` and ``hash`` of a file, or ``hash is None`` for an empty directory."""

    path: str
    size: int = 0
    hash: str | None = None


@dataclass(frozen=True, slots=True)
class Offer:
    """A decoded offer message: the raw ``name`` (not sanitised yet), ``size`` (a directory's
    total), ``hash`` (``""`` for a directory), ``entries`` (None for a single file) and
    ``offer_id`` (32 hex digits, the same on every attempt of one send; None from senders that
    do not send one)."""

    name: str
    size: int
    hash: str
    entries: tuple[OfferEntry, ...] | None = None
    offer_id: str | None = None


def walk_tree(root: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """The regular files under directory ``root`` as ``(relative path, path)`` and its empty
    directories (relative paths), sorted. Symbolic links (to files or directories) and special
    files (devices, FIFOs, sockets) are skipped, never followed; a directory left with nothing
    after that counts as empty. Raises :class:`~iroh_pair.errors.OfferTooLarge` beyond
    :data:`MAX_DIR_ENTRIES` entries::

        files, empty = walk_tree(Path("photos"))   # [("2024/a.jpg", Path(...)), ...], ["tmp"]
    """
    files, empty = walk_tree_stat(root)
    return [(rel, p) for rel, p, _ in files], empty


def walk_tree_stat(root: Path) -> tuple[list[tuple[str, Path, os.stat_result]], list[str]]:
    """:func:`walk_tree` with each file's ``lstat`` as the walk saw it (a regular file), for
    :func:`same_file` after the import::

        files, empty = walk_tree_stat(Path("photos"))   # [("a.jpg", Path(...), stat), ...]
    """
    files: list[tuple[str, Path, os.stat_result]] = []
    empty: list[str] = []

    def rel(p: str) -> str:
        return Path(os.path.relpath(p, root)).as_posix()

    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not os.path.islink(os.path.join(dirpath, d)))
        kept = 0
        for f in sorted(filenames):
            p = os.path.join(dirpath, f)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                files.append((rel(p), Path(p), st))
                kept += 1
        if not kept and not dirnames and os.path.abspath(dirpath) != os.path.abspath(root):
            empty.append(rel(dirpath))
        if len(files) + len(empty) > MAX_DIR_ENTRIES:
            raise OfferTooLarge(
                f"{root} has more than {MAX_DIR_ENTRIES} entries, the most one offer lists")
    return files, empty


def same_file(path: Path, walked: os.stat_result, imported_size: int) -> None:
    """Raises :class:`~iroh_pair.errors.FileChanged` unless ``path`` is still, by ``lstat``
    (links not followed), the regular file ``walked`` was (device, inode, size, modification
    time) and ``imported_size`` is its size: an import opens by path and follows links, so a
    file swapped for a link (to a secret, say) between the walk and the import is caught here
    and nothing is offered::

        same_file(p, st, n)   # after: h, n = await blobs.import_file(p)
    """
    try:
        now = os.lstat(path)
    except OSError as e:
        raise FileChanged(f"{path} is gone since it was listed for sending: {e}",
                          str(path)) from None

    def sig(st: os.stat_result) -> tuple[int, int, int, int]:
        return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns

    if not stat.S_ISREG(now.st_mode) or sig(now) != sig(walked) or imported_size != walked.st_size:
        what = "a symbolic link" if stat.S_ISLNK(now.st_mode) else "changed"
        raise FileChanged(f"{path} is {what} since it was listed for sending: nothing offered",
                          str(path))


def encode_offer(name: str, size: int, hash: str, *, offer_id: str | None = None) -> bytes:
    """The offer message of one file (JSON, sealed by the messaging layer)."""
    m: dict[str, Any] = {"v": 1, "name": name, "size": size, "hash": hash}
    if offer_id is not None:
        m["id"] = offer_id
    return json.dumps(m).encode()


def encode_dir_offer(name: str, entries: list[OfferEntry], *, offer_id: str | None = None) -> bytes:
    """The offer message of a directory: ``{"v": 1, "name", "size": total, "dir": [{"path",
    "size", "hash"} or {"path", "dir": true}, ...]}``. Raises
    :class:`~iroh_pair.errors.OfferTooLarge` over :data:`MAX_DIR_ENTRIES` entries or
    :data:`MAX_OFFER_BYTES` bytes."""
    if len(entries) > MAX_DIR_ENTRIES:
        raise OfferTooLarge(f"{len(entries)} entries in {name!r}: one offer lists at most "
                            f"{MAX_DIR_ENTRIES}")
    listing: list[dict[str, Any]] = [
        {"path": e.path, "dir": True} if e.hash is None
        else {"path": e.path, "size": e.size, "hash": e.hash}
        for e in entries
    ]
    m: dict[str, Any] = {"v": 1, "name": name, "size": sum(e.size for e in entries if e.hash),
                         "dir": listing}
    if offer_id is not None:
        m["id"] = offer_id
    data = json.dumps(m, separators=(",", ":")).encode()
    if len(data) > MAX_OFFER_BYTES:
        raise OfferTooLarge(f"the offer of {name!r} is {len(data)} bytes: at most "
                            f"{MAX_OFFER_BYTES}")
    return data


def _is_hash(h: object) -> bool:
    return isinstance(h, str) and len(h) == 64 and all(c in "0123456789abcdef" for c in h)


def _is_size(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 1 << 62


def parse_offer(data: bytes) -> Offer:
    """An offer message (a file or a directory) decoded and checked for form (names and paths
    are not sanitised here); ValueError when malformed."""
    if len(data) > MAX_OFFER_BYTES:
        raise ValueError("a file offer over its size limit")
    try:
        m = json.loads(data)
    except ValueError as e:
        raise ValueError(f"a file offer is not JSON: {e}") from None
    if not isinstance(m, dict) or m.get("v") != 1:
        raise ValueError("not a version 1 file offer")
    name, size, oid = m.get("name"), m.get("size"), m.get("id")
    if not isinstance(name, str) or len(name) > 4096:
        raise ValueError("a file offer's name must be a string of at most 4096 characters")
    if not _is_size(size):
        raise ValueError("a file offer's size must be a non-negative integer")
    assert isinstance(size, int)
    if oid is not None and not (isinstance(oid, str) and len(oid) == 32
                                and all(c in "0123456789abcdef" for c in oid)):
        raise ValueError("a file offer's id must be 32 lowercase hex digits")
    listing = m.get("dir")
    if listing is None:
        h = m.get("hash")
        if not _is_hash(h):
            raise ValueError("a file offer's hash must be 64 lowercase hex digits")
        assert isinstance(h, str)
        return Offer(name, size, h, None, oid)
    if not isinstance(listing, list) or len(listing) > MAX_DIR_ENTRIES:
        raise ValueError(f"a directory offer lists at most {MAX_DIR_ENTRIES} entries")
    entries: list[OfferEntry] = []
    for item in listing:
        path = item.get("path") if isinstance(item, dict) else None
        if not isinstance(path, str) or len(path) > 4096:
            raise ValueError("a directory offer's entry needs a path of at most 4096 characters")
        if item.get("dir") is True:
            entries.append(OfferEntry(path))
            continue
        n, h = item.get("size"), item.get("hash")
        if not _is_size(n) or not _is_hash(h):
            raise ValueError("a directory offer's file needs a size and a hash")
        assert isinstance(n, int) and isinstance(h, str)
        entries.append(OfferEntry(path, n, h))
    if sum(e.size for e in entries) != size:
        raise ValueError("a directory offer's size is not the sum of its files")
    return Offer(name, size, "", tuple(entries), oid)


def decode_offer(data: bytes) -> tuple[str, int, str]:
    """``(raw name, size, hash)`` of a single-file offer message; ValueError when malformed
    or a directory offer (:func:`parse_offer` decodes both)."""
    o = parse_offer(data)
    if o.entries is not None:
        raise ValueError("a directory offer, not a file offer")
    return o.name, o.size, o.hash


def sanitize_entries(entries: tuple[OfferEntry, ...]) -> tuple[list[OfferEntry], list[str]]:
    """A directory offer's entries with sanitised paths: ``(files, empty directories)``.
    ValueError when two entries end up at the same path, also on a file system that ignores
    case (compared case-folded), or one file's path is another's directory (after
    sanitising)."""
    files: list[OfferEntry] = []
    dirs: list[str] = []
    taken: set[str] = set()
    folded: set[str] = set()
    parents: set[str] = set()
    for e in entries:
        path = sanitize_relative_path(e.path)
        if path in taken or path.casefold() in folded:
            raise ValueError(f"two entries of the directory offer are both {path!r}")
        taken.add(path)
        folded.add(path.casefold())
        parts = path.split("/")
        parents.update("/".join(parts[:i]) for i in range(1, len(parts)))
        if e.hash is None:
            dirs.append(path)
        else:
            files.append(OfferEntry(path, e.size, e.hash))
    empty = set(dirs)
    clash = sorted(p for p in taken if p in parents and p not in empty)
    if clash:
        raise ValueError(f"{clash[0]!r} is both a file and a directory in the offer")
    return files, dirs


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
    async def open(cls, directory: Path, *, gc_interval: float | None = None) -> BlobStore:
        """Opens (creates) the store in ``directory``; it collects garbage every
        ``gc_interval`` seconds (default :data:`GC_INTERVAL`)."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        interval = GC_INTERVAL if gc_interval is None else gc_interval
        native: _native.BlobStore = await call(_native.BlobStore.open, str(directory.resolve()),
                                               interval)
        return cls(native)

    async def add_path(self, path: Path) -> tuple[str, int]:
        """Imports the file at ``path`` (hashed in place; the store references it, and keeps the
        reference while the hash is offered): ``(hash, size)``."""
        r: tuple[str, int] = await call(self._n.add_path, str(path.resolve()))
        return r

    async def import_file(self, path: Path) -> tuple[str, int]:
        """:meth:`add_path`, checked: the file's size, modification time and inode are the same
        before and after the import (and the size is what was imported), else
        :class:`~iroh_pair.errors.FileChanged` (the file was being written meanwhile)."""

        def sig(st: os.stat_result) -> tuple[int, int, int, int]:
            return st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev

        before = os.stat(path)
        h, size = await self.add_path(path)
        after = os.stat(path)
        if sig(before) != sig(after) or size != after.st_size:
            raise FileChanged(f"{path} changed while it was being read for sending "
                              f"({before.st_size} -> {after.st_size} bytes)", str(path))
        return h, size

    def grant(self, peer: EndpointId, hash: str) -> None:
        """Offers ``hash`` to ``peer`` (counted: each grant is ended by one :meth:`ungrant`)."""
        key = (peer, hash)
        self._grants[key] = self._grants.get(key, 0) + 1
        self._n.allow(peer, hash)

    def ungrant(self, peer: EndpointId, hash: str) -> None:
        """Ends one grant; the offer is withdrawn when none is left."""
        key = (peer, hash)
        if key not in self._grants:  # withdrawn meanwhile
            return
        left = self._grants[key] - 1
        if left > 0:
            self._grants[key] = left
            return
        del self._grants[key]
        self._n.revoke(peer, hash)

    def withdraw(self, peer: EndpointId) -> list[str]:
        """Ends every offer to ``peer`` at once, however many grants each has (the device was
        unpaired): the hashes withdrawn. Later :meth:`ungrant` calls for them do nothing."""
        hashes = set(self._n.offered(peer)) | {h for (p, h) in self._grants if p == peer}
        for h in hashes:
            self._grants.pop((peer, h), None)
            self._n.revoke(peer, h)
        return sorted(hashes)

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

    async def status(self, hash: str) -> str:
        """What the store holds of ``hash``: ``"complete"``, ``"partial"`` (verified data of a
        fetch that did not finish, kept for a resume) or ``"absent"``."""
        r: str = await call(self._n.status, hash)
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


class FileTransfer:
    """A file (or directory) on its way to a paired device, as :meth:`iroh_pair.Node.start_file`
    returns it: await it for the :class:`FileReceipt` (its errors are raised there), and
    iterate over it (``async for``) for :class:`FileProgress` while it runs; the iteration
    ends when the transfer does (successfully or not). Progress items are the latest state,
    not a queue: a slow consumer skips intermediate ones, never the last. Example::

        transfer = node.start_file(device, "holiday.mp4")
        async for p in transfer:
            print(f"{p.done}/{p.total} bytes, {p.rate / 1e6:.1f} MB/s")
        receipt = await transfer
    """

    __slots__ = ("_task", "_latest", "_changed", "_callback")

    def __init__(self, callback: ProgressCallback | None = None) -> None:
        self._latest: FileProgress | None = None
        self._changed = asyncio.Event()
        self._callback = callback
        self._task: asyncio.Future[FileReceipt] | None = None

    def _start(self, work: Awaitable[FileReceipt]) -> FileTransfer:
        self._task = asyncio.ensure_future(work)
        self._task.add_done_callback(lambda _t: self._changed.set())
        return self

    def _report(self, p: FileProgress) -> None:
        self._latest = p
        self._changed.set()
        if self._callback is not None:
            try:
                self._callback(p)
            except Exception:  # a progress callback's failure does not stop the transfer
                pass

    @property
    def progress(self) -> FileProgress | None:
        """The latest progress (None before the first)."""
        return self._latest

    def done(self) -> bool:
        """Whether the transfer has ended (stored, failed or cancelled)."""
        assert self._task is not None
        return self._task.done()

    def cancel(self) -> bool:
        """Stops the transfer (the offer is withdrawn; awaiting raises CancelledError)."""
        assert self._task is not None
        return self._task.cancel()

    def __await__(self) -> Generator[Any, None, FileReceipt]:
        assert self._task is not None
        return self._task.__await__()

    def __aiter__(self) -> AsyncIterator[FileProgress]:
        return self._updates()

    async def _updates(self) -> AsyncIterator[FileProgress]:
        assert self._task is not None
        seen: FileProgress | None = None
        while True:
            latest = self._latest
            if latest is not None and latest is not seen:
                seen = latest
                yield latest
                continue
            if self._task.done():
                return
            self._changed.clear()
            await self._changed.wait()
