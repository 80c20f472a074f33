"""The registry of paired devices: one SQLite file, one row per paired EndpointId.

* Keyed by EndpointId (32-byte blob); the API takes and returns :class:`iroh_pair.EndpointId`.
* Stores the device info the peer sent while pairing (name, type, OS, app version), when it was
  paired and last seen, and the pairing's directional session keys. **No addresses**: how to
  reach a device is the business of iroh's address lookup, never of the registry.
* Text the peer supplied is capped to the pairing limits and stripped of control characters
  (C0, C1, DEL) and bidi/format controls before it is stored (:func:`sanitize_text`);
  :func:`safe_display` escapes whatever is left for printing.
* Durability: WAL journal, ``synchronous=FULL``; every write is one transaction. Re-pairing an
  EndpointId replaces its row in one transaction.
* Delivered message ids (docs/PROTOCOL.md §13.8): per paired device, the ids of the messages
  whose handler returned, for :data:`DELIVERED_WINDOW` seconds (24 h) and at most
  :data:`DELIVERED_MAX_PER_DEVICE` (10,000) per device, the oldest dropped first
  (:meth:`DeviceRegistry.record_delivered`, :meth:`DeviceRegistry.is_delivered`). Unpairing or
  re-pairing a device forgets its ids. Their commits are not fsynced unless
  :attr:`DeviceRegistry.durable_message_ids` is set (durable across process crashes; see
  :meth:`DeviceRegistry.record_delivered` for power loss).
* The outbox (:meth:`DeviceRegistry.outbox_add` and the ``outbox_*`` methods, schema version 3):
  messages queued for a paired device (:meth:`iroh_pair.Node.enqueue`), in order per device,
  each with its message id, until the device acknowledged them, they expire, or are cancelled.
  Every change is a durable commit. Unpairing a device drops its queued messages.
* Safety: the file carries ``PRAGMA application_id`` = :data:`APPLICATION_ID` and a schema
  version in ``PRAGMA user_version`` (upgraded by :data:`MIGRATIONS`). A file that is not an
  SQLite database, or an SQLite database that is not ours, or a damaged one, raises
  :class:`RegistryCorrupt` and is never written to; a schema newer than this version knows
  raises :class:`RegistrySchemaTooNew`. A new registry is built in a temporary file (mode
  0600) and linked into place, so a crash never leaves a half-initialised registry behind.

All methods are thread-safe (one connection behind a lock); each call is short.
"""

from __future__ import annotations

import builtins
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from iroh_pair._native import EndpointId
from iroh_pair.errors import (
    AmbiguousDevice,
    InvalidDeviceInfo,
    IrohPairError,
    OutboxFull,
    RegistryCorrupt,
    RegistryError,
    RegistrySchemaTooNew,
    UnknownDevice,
    _printable,
    _unsafe,
)
from iroh_pair.protocol.device import FIELD_LIMITS, DeviceInfo
from iroh_pair.protocol.kdf import SessionKeys
from iroh_pair.store._identity import fsync_dir

__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "MIGRATIONS",
    "REGISTRY_FILE",
    "MIN_ID_PREFIX",
    "DELIVERED_WINDOW",
    "DELIVERED_MAX_PER_DEVICE",
    "DELIVERED_PRUNE_INTERVAL",
    "DELIVERED_DURABLE",
    "PairedDevice",
    "PendingMessage",
    "DeviceRegistry",
    "sanitize_text",
    "safe_display",
]

#: ``PRAGMA application_id`` of a registry file (ASCII "iPrg").
APPLICATION_ID = 0x69507267
#: Default file name of the registry inside the data directory.
REGISTRY_FILE = "registry.db"
#: Shortest EndpointId prefix :meth:`DeviceRegistry.find` accepts.
MIN_ID_PREFIX = 4
#: How long a delivered message id is remembered, in seconds (PROTOCOL.md §13.8: 24 hours).
DELIVERED_WINDOW = 24 * 3600.0
#: The most delivered message ids remembered per device (PROTOCOL.md §13.8); beyond it the
#: oldest is dropped on every insert.
DELIVERED_MAX_PER_DEVICE = 10_000
#: Ids older than :data:`DELIVERED_WINDOW` are deleted by an insert at most this often (seconds);
#: until then :meth:`DeviceRegistry.is_delivered` ignores them.
DELIVERED_PRUNE_INTERVAL = 60.0
#: Default of :attr:`DeviceRegistry.durable_message_ids`: ``False`` commits delivered ids with
#: ``synchronous=NORMAL`` (they survive a crash or kill of the process at once, and an OS crash
#: or power loss once the WAL is next synced); ``True`` syncs every one (an fsync per message).
DELIVERED_DURABLE = False

_SQLITE_MAGIC = b"SQLite format 3\x00"
_T = TypeVar("_T")
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


def _v1(db: sqlite3.Connection) -> None:
    db.execute(
        """
        CREATE TABLE devices (
            endpoint_id BLOB PRIMARY KEY NOT NULL CHECK (length(endpoint_id) = 32),
            name        TEXT NOT NULL,
            device_type TEXT NOT NULL,
            os          TEXT NOT NULL,
            app_version TEXT NOT NULL,
            paired_at   REAL NOT NULL,
            last_seen   REAL,
            send_key    BLOB NOT NULL CHECK (length(send_key) = 32),
            receive_key BLOB NOT NULL CHECK (length(receive_key) = 32)
        ) WITHOUT ROWID
        """
    )
    db.execute("CREATE INDEX devices_name ON devices (name)")


def _v2(db: sqlite3.Connection) -> None:
    """Delivered message ids (§13.8). ``seq`` numbers a device's ids 1, 2, 3, … so that the
    per-device cap is one indexed range delete; ``delivered_at`` is a Unix time."""
    db.execute(
        """
        CREATE TABLE delivered (
            endpoint_id  BLOB NOT NULL CHECK (length(endpoint_id) = 32),
            message_id   BLOB NOT NULL CHECK (length(message_id) = 16),
            seq          INTEGER NOT NULL,
            delivered_at REAL NOT NULL,
            PRIMARY KEY (endpoint_id, message_id)
        ) WITHOUT ROWID
        """
    )
    db.execute("CREATE UNIQUE INDEX delivered_seq ON delivered (endpoint_id, seq)")
    db.execute("CREATE INDEX delivered_age ON delivered (delivered_at)")


def _v3(db: sqlite3.Connection) -> None:
    """The outbox: messages queued for a paired device until it acknowledged them. ``seq``
    orders a device's messages (the order they are delivered in); ``created`` and
    ``expires`` are Unix times."""
    db.execute(
        """
        CREATE TABLE outbox (
            seq         INTEGER PRIMARY KEY,
            message_id  BLOB NOT NULL UNIQUE CHECK (length(message_id) = 16),
            endpoint_id BLOB NOT NULL CHECK (length(endpoint_id) = 32),
            kind        TEXT NOT NULL,
            data        BLOB NOT NULL,
            created     REAL NOT NULL,
            expires     REAL NOT NULL,
            attempts    INTEGER NOT NULL DEFAULT 0,
            last_error  TEXT NOT NULL DEFAULT ''
        )
        """
    )
    db.execute("CREATE INDEX outbox_device ON outbox (endpoint_id, seq)")
    db.execute("CREATE INDEX outbox_expires ON outbox (expires)")


#: ``MIGRATIONS[i]`` upgrades schema version ``i`` to ``i + 1``, inside one transaction.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_v1, _v2, _v3)
#: The schema version this code writes (``PRAGMA user_version``).
SCHEMA_VERSION = len(MIGRATIONS)


# --------------------------------------------------------------------------------------------
# text hygiene

# The character test and the escaping live in iroh_pair.errors, whose messages quote such text.


def _cap_utf8(text: str, max_bytes: int) -> str:
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    return raw[:max_bytes].decode("utf-8", "ignore")  # cut at a character boundary


def sanitize_text(text: str, max_bytes: int) -> str:
    """``text`` without control characters (C0, C1, DEL), lone surrogates, line/paragraph
    separators and bidi controls, surrounding white space stripped, cut to at most
    ``max_bytes`` UTF-8 bytes (at a character boundary)."""
    cleaned = "".join(c for c in text if not _unsafe(c)).strip()
    return _cap_utf8(cleaned, max_bytes).strip()


def safe_display(text: str, max_chars: int = 80) -> str:
    """``text`` made safe to print on a terminal: control, bidi and separator characters are
    shown as escapes (``\\x1b``, ``\\u202e``), and the result is cut to ``max_chars`` (with
    ``…``).

    >>> safe_display("evil\\x1b[2Jname")
    'evil\\\\x1b[2Jname'
    """
    return _printable(text, max_chars)


def _clean_type(value: str) -> str:
    token = "".join(c for c in value.lower() if c.isascii() and (c.isalnum() or c in "._-"))
    return token[: FIELD_LIMITS["device_type"][1]] or "other"


# --------------------------------------------------------------------------------------------
# the record


@dataclass(frozen=True)
class PairedDevice:
    """One paired device. ``paired_at`` and ``last_seen`` are Unix times (seconds; ``last_seen``
    is ``None`` until the device was seen after pairing); ``keys`` are *our* directional
    session keys with it (``keys.send`` encrypts towards it)."""

    endpoint_id: EndpointId
    name: str
    device_type: str
    os: str
    app_version: str
    paired_at: float
    last_seen: float | None
    keys: SessionKeys

    @classmethod
    def from_pairing(
        cls, endpoint_id: EndpointId, info: DeviceInfo, keys: SessionKeys, paired_at: float
    ) -> PairedDevice:
        """The record of a fresh pairing with the peer's :class:`DeviceInfo`."""
        return cls(
            endpoint_id=endpoint_id,
            name=info.name,
            device_type=info.device_type,
            os=info.os,
            app_version=info.app_version,
            paired_at=paired_at,
            last_seen=None,
            keys=keys,
        )

    def sanitized(self) -> PairedDevice:
        """This record with its text fields cleaned and capped as the registry stores them."""
        name = sanitize_text(self.name, FIELD_LIMITS["name"][1]) or "unnamed"
        return replace(
            self,
            name=name,
            device_type=_clean_type(self.device_type),
            os=sanitize_text(self.os, FIELD_LIMITS["os"][1]),
            app_version=sanitize_text(self.app_version, FIELD_LIMITS["app_version"][1]),
        )

    def __str__(self) -> str:
        return f"{safe_display(self.name)} ({self.endpoint_id.fmt_short()}, {self.device_type})"


@dataclass(frozen=True)
class PendingMessage:
    """A message in the outbox (:meth:`iroh_pair.Node.enqueue`, :meth:`iroh_pair.Node.outbox`),
    not yet acknowledged by its device.

    ``id``: its 16-byte message id (the one every delivery attempt carries, so that the
    receiver runs its handler once, docs/PROTOCOL.md §13.8); ``device``: the paired device's
    EndpointId; ``kind``: the stream kind; ``size``: the payload's length in bytes;
    ``created``, ``expires``: Unix times; ``attempts``: delivery attempts that failed so far;
    ``last_error``: why the last one failed ("" before any). Example::

        for p in node.outbox():
            print(p.id.hex(), p.device.fmt_short(), p.size, p.attempts, p.last_error)
    """

    id: bytes
    device: EndpointId
    kind: str
    size: int
    created: float
    expires: float
    attempts: int = 0
    last_error: str = ""


_OUTBOX_COLUMNS = "message_id, endpoint_id, kind, length(data), created, expires, attempts, last_error"


def _pending(row: tuple[bytes, bytes, str, int, float, float, int, str]) -> PendingMessage:
    mid, eid, kind, size, created, expires, attempts, err = row
    return PendingMessage(
        id=bytes(mid), device=EndpointId.from_bytes(bytes(eid)), kind=kind, size=int(size),
        created=float(created), expires=float(expires), attempts=int(attempts), last_error=err,
    )


_COLUMNS = (
    "endpoint_id, name, device_type, os, app_version, paired_at, last_seen, send_key, receive_key"
)
_Row = tuple[bytes, str, str, str, str, float, "float | None", bytes, bytes]


def _from_row(row: _Row) -> PairedDevice:
    eid, name, dtype, os_, ver, paired_at, last_seen, send, receive = row
    return PairedDevice(
        endpoint_id=EndpointId.from_bytes(bytes(eid)),
        name=name,
        device_type=dtype,
        os=os_,
        app_version=ver,
        paired_at=float(paired_at),
        last_seen=None if last_seen is None else float(last_seen),
        keys=SessionKeys(send=bytes(send), receive=bytes(receive)),
    )


# --------------------------------------------------------------------------------------------
# the registry


class DeviceRegistry:
    """The paired devices, stored in the SQLite file ``path`` (created, mode 0600, if missing;
    its directory is created with mode 0700).

    Raises :class:`RegistryCorrupt` for a file that is not a registry or is damaged, and
    :class:`RegistrySchemaTooNew` for a registry of a newer version; neither modifies the file.
    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._pruned_at = float("-inf")  # last time expired delivered ids were deleted
        #: Whether :meth:`record_delivered` syncs to disk (``synchronous=FULL``, an fsync per
        #: message) instead of ``NORMAL`` (see :meth:`record_delivered`).
        self.durable_message_ids = DELIVERED_DURABLE
        if not self.path.parent.is_dir():
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not os.path.lexists(self.path):
            self._create()
        self._check_header()
        db = self._connect()
        try:
            self._setup(db)
        except BaseException:
            db.close()
            raise
        self._db: sqlite3.Connection | None = db

    # -- opening ------------------------------------------------------------------------------

    def _corrupt(self, reason: str) -> RegistryCorrupt:
        return RegistryCorrupt(self.path, reason)

    def _wrap(self, e: sqlite3.Error) -> RegistryError:
        """SQLITE_CORRUPT / SQLITE_NOTADB -> RegistryCorrupt; anything else (busy, I/O error,
        disk full, read-only) -> RegistryError."""
        code = getattr(e, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            return self._corrupt(str(e))
        return RegistryError(f"device registry {self.path}: {e}")

    def _check_header(self) -> None:
        """Looks at the raw header before SQLite touches the file (which could write to it)."""
        try:
            with open(self.path, "rb") as f:
                header = f.read(100)
        except IsADirectoryError:
            raise self._corrupt("it is a directory") from None
        except OSError as e:
            raise RegistryError(f"cannot read device registry {self.path}: {e.strerror}") from e
        if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
            raise self._corrupt("not an SQLite database")
        app_id = int.from_bytes(header[68:72], "big")
        if app_id != APPLICATION_ID:
            raise self._corrupt(
                f"an SQLite database of another application (application_id {app_id:#x})"
            )

    def _connect(self, path: Path | None = None) -> sqlite3.Connection:
        uri = (path or self.path).resolve().as_uri() + "?mode=rw"
        try:
            db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise self._wrap(e) from e
        return db

    def _setup(self, db: sqlite3.Connection) -> None:
        try:
            db.execute("PRAGMA busy_timeout = 5000")
            (app_id,) = db.execute("PRAGMA application_id").fetchone()
            if app_id != APPLICATION_ID:
                raise self._corrupt(f"application_id is {app_id:#x}")
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise RegistrySchemaTooNew(self.path, version, SCHEMA_VERSION)
            (check,) = db.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise self._corrupt(f"integrity check failed ({check})")
            (mode,) = db.execute("PRAGMA journal_mode").fetchone()
            if str(mode).lower() != "wal":
                db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            self._migrate(db, version)
        except sqlite3.Error as e:
            raise self._wrap(e) from e

    @staticmethod
    def _migrate(db: sqlite3.Connection, version: int) -> None:
        for target in range(version + 1, SCHEMA_VERSION + 1):
            db.execute("BEGIN IMMEDIATE")
            try:
                MIGRATIONS[target - 1](db)
                db.execute(f"PRAGMA user_version = {target:d}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _create(self) -> None:
        """Builds an empty registry in a temporary file and links it into place (no clobber)."""
        d = self.path.parent
        tmp = d / f".{self.path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.fchmod(fd, 0o600)
        os.close(fd)
        try:
            db = self._connect(tmp)
            try:
                db.execute(f"PRAGMA application_id = {APPLICATION_ID:d}")
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = FULL")
                self._migrate(db, 0)
            finally:
                db.close()  # checkpoints and removes the WAL
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass  # created concurrently: use that one (checked like any existing file)
        finally:
            for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
        fsync_dir(d)

    # -- plumbing -----------------------------------------------------------------------------

    def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            db = self._db
            if db is None:
                raise RegistryError("the device registry is closed")
            try:
                return fn(db)
            except sqlite3.Error as e:
                raise self._wrap(e) from e

    def _write(self, fn: Callable[[sqlite3.Connection], _T], synchronous: str = "FULL") -> _T:
        def tx(db: sqlite3.Connection) -> _T:
            if synchronous != "FULL":
                db.execute(f"PRAGMA synchronous = {synchronous}")
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(db)
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            finally:
                if synchronous != "FULL":
                    db.execute("PRAGMA synchronous = FULL")
            return result

        return self._run(tx)

    # -- API ----------------------------------------------------------------------------------

    def add_or_replace(self, device: PairedDevice) -> PairedDevice:
        """Stores ``device`` (sanitised), replacing any entry with the same EndpointId, in one
        committed, durable transaction. Returns the record as stored."""
        d = device.sanitized()
        if len(d.keys.send) != 32 or len(d.keys.receive) != 32:
            raise ValueError("session keys must be 32 bytes each")
        row = (
            d.endpoint_id.to_bytes(),
            d.name,
            d.device_type,
            d.os,
            d.app_version,
            float(d.paired_at),
            None if d.last_seen is None else float(d.last_seen),
            d.keys.send,
            d.keys.receive,
        )

        def do(db: sqlite3.Connection) -> None:
            # Delivered ids stay (§13.8): ids are random and per device, so a retry sent before
            # a re-pairing is still answered DUPLICATE after it (and an undone re-pairing loses
            # nothing). Only remove() forgets them.
            db.execute("DELETE FROM devices WHERE endpoint_id = ?", (row[0],))
            db.execute(f"INSERT INTO devices ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", row)

        self._write(do)
        return d

    def get(self, endpoint_id: EndpointId) -> PairedDevice | None:
        """The device paired with ``endpoint_id``, or ``None``."""

        def do(db: sqlite3.Connection) -> PairedDevice | None:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM devices WHERE endpoint_id = ?", (endpoint_id.to_bytes(),)
            ).fetchone()
            return None if row is None else _from_row(row)

        return self._run(do)

    def __contains__(self, endpoint_id: object) -> bool:
        return isinstance(endpoint_id, EndpointId) and self.get(endpoint_id) is not None

    def list(self) -> builtins.list[PairedDevice]:
        """Every paired device, sorted by name (case-insensitively), then EndpointId."""

        def do(db: sqlite3.Connection) -> builtins.list[PairedDevice]:
            rows = db.execute(f"SELECT {_COLUMNS} FROM devices").fetchall()
            return [_from_row(r) for r in rows]

        devices = self._run(do)
        devices.sort(key=lambda d: (d.name.casefold(), d.endpoint_id.to_bytes()))
        return devices

    def __len__(self) -> int:
        return int(self._run(lambda db: db.execute("SELECT count(*) FROM devices").fetchone()[0]))

    def __iter__(self) -> Iterator[PairedDevice]:
        return iter(self.list())

    def find(self, query: str) -> PairedDevice:
        """The one device ``query`` names: a full EndpointId, a unique EndpointId prefix (at
        least :data:`MIN_ID_PREFIX` hex characters), or a device name (exact first, then
        case-insensitive). Raises :class:`AmbiguousDevice` when several devices match (names
        need not be unique), :class:`UnknownDevice` when none does."""
        q = query.strip()
        if not q:
            raise UnknownDevice(query)
        try:
            eid = EndpointId.parse(q)
        except (IrohPairError, ValueError):
            pass
        else:
            found = self.get(eid)
            if found is None:
                raise UnknownDevice(query)
            return found
        devices = self.list()
        qlow = q.lower()
        by_prefix = (
            [d for d in devices if str(d.endpoint_id).startswith(qlow)]
            if len(q) >= MIN_ID_PREFIX and all(c in "0123456789abcdef" for c in qlow)
            else []
        )
        matches = {d.endpoint_id: d for d in by_prefix}
        matches.update({d.endpoint_id: d for d in devices if d.name == q})
        if not matches:
            folded = q.casefold()
            matches = {d.endpoint_id: d for d in devices if d.name.casefold() == folded}
        if not matches:
            raise UnknownDevice(query)
        if len(matches) > 1:
            raise AmbiguousDevice(query, tuple(sorted(matches.values(), key=_by_id)))
        return next(iter(matches.values()))

    def rename(self, endpoint_id: EndpointId, name: str) -> PairedDevice:
        """Sets the local display name of a device (sanitised); returns the updated record.
        Raises :class:`UnknownDevice` if it is not paired, :class:`InvalidDeviceInfo` (a
        ValueError) for a name with nothing printable in it."""
        clean = sanitize_text(name, FIELD_LIMITS["name"][1])
        if not clean:
            raise InvalidDeviceInfo("a device name must contain printable characters")

        def do(db: sqlite3.Connection) -> int:
            cur = db.execute(
                "UPDATE devices SET name = ? WHERE endpoint_id = ?", (clean, endpoint_id.to_bytes())
            )
            return cur.rowcount

        if self._write(do) == 0:
            raise UnknownDevice(str(endpoint_id))
        found = self.get(endpoint_id)
        if found is None:  # pragma: no cover - removed concurrently
            raise UnknownDevice(str(endpoint_id))
        return found

    def remove(self, endpoint_id: EndpointId) -> bool:
        """Forgets a device (unpairs it locally), its delivered message ids and the messages
        queued for it in the outbox; ``False`` if it was not paired."""

        def do(db: sqlite3.Connection) -> int:
            eid = endpoint_id.to_bytes()
            db.execute("DELETE FROM delivered WHERE endpoint_id = ?", (eid,))
            db.execute("DELETE FROM outbox WHERE endpoint_id = ?", (eid,))
            cur = db.execute("DELETE FROM devices WHERE endpoint_id = ?", (eid,))
            return cur.rowcount

        return self._write(do) > 0

    def touch(self, endpoint_id: EndpointId, when: float) -> bool:
        """Records that the device was seen at Unix time ``when`` (``last_seen`` never moves
        backwards); ``False`` if it is not paired. Each call is a durable commit: callers should
        rate-limit it (e.g. once per connection)."""

        def do(db: sqlite3.Connection) -> int:
            cur = db.execute(
                "UPDATE devices SET last_seen = max(coalesce(last_seen, ?), ?) "
                "WHERE endpoint_id = ?",
                (float(when), float(when), endpoint_id.to_bytes()),
            )
            return cur.rowcount

        return self._write(do) > 0

    # -- delivered message ids (PROTOCOL.md §13.8) ---------------------------------------------

    def record_delivered(
        self, endpoint_id: EndpointId, message_id: bytes, when: float | None = None
    ) -> bool:
        """Records, in one committed and durable transaction, that the message ``message_id``
        (16 bytes) from the paired device ``endpoint_id`` was delivered (its handler returned)
        at Unix time ``when`` (default: now). Returns ``False`` if it was already recorded.

        The same transaction drops the device's oldest id beyond
        :data:`DELIVERED_MAX_PER_DEVICE` and, at most every :data:`DELIVERED_PRUNE_INTERVAL`
        seconds, every id older than :data:`DELIVERED_WINDOW`. Raises :class:`UnknownDevice` if
        the device is not paired (nothing is recorded).

        Durability: the commit is atomic. With :attr:`durable_message_ids` false (the default)
        it is written to the WAL with ``synchronous=NORMAL``: once this returns, a crash or kill
        of the process loses nothing, but an OS crash or power loss may lose the ids of the last
        moments (since the WAL was last synced: by any other write of the registry, or a
        checkpoint); their retries would then be delivered again (at least once). With it true
        every call is synced (``synchronous=FULL``: an fsync, milliseconds on some disks)::

            reg.record_delivered(device.endpoint_id, msg.message_id)  # True: first time
        """
        mid = bytes(message_id)
        if len(mid) != 16:
            raise ValueError("a message id is 16 bytes")
        now = time.time() if when is None else float(when)
        eid = endpoint_id.to_bytes()

        def do(db: sqlite3.Connection) -> bool:
            if db.execute("SELECT 1 FROM devices WHERE endpoint_id = ?", (eid,)).fetchone() is None:
                raise UnknownDevice(str(endpoint_id))
            found = db.execute(
                "SELECT delivered_at FROM delivered WHERE endpoint_id = ? AND message_id = ?",
                (eid, mid),
            ).fetchone()
            if found is not None and float(found[0]) >= now - DELIVERED_WINDOW:
                return False
            (top,) = db.execute(
                "SELECT max(seq) FROM delivered WHERE endpoint_id = ?", (eid,)
            ).fetchone()
            seq = 1 if top is None else int(top) + 1
            # INSERT OR REPLACE: an expired row not pruned yet is renewed.
            db.execute(
                "INSERT OR REPLACE INTO delivered (endpoint_id, message_id, seq, delivered_at) "
                "VALUES (?, ?, ?, ?)",
                (eid, mid, seq, now),
            )
            db.execute(
                "DELETE FROM delivered WHERE endpoint_id = ? AND seq <= ?",
                (eid, seq - DELIVERED_MAX_PER_DEVICE),
            )
            if now - self._pruned_at >= DELIVERED_PRUNE_INTERVAL:
                db.execute("DELETE FROM delivered WHERE delivered_at < ?", (now - DELIVERED_WINDOW,))
                self._pruned_at = now
            return True

        return self._write(do, synchronous="FULL" if self.durable_message_ids else "NORMAL")

    def is_delivered(
        self, endpoint_id: EndpointId, message_id: bytes, now: float | None = None
    ) -> bool:
        """Whether ``message_id`` from ``endpoint_id`` is recorded as delivered within the last
        :data:`DELIVERED_WINDOW` seconds before ``now`` (default: the current time)."""
        cutoff = (time.time() if now is None else float(now)) - DELIVERED_WINDOW

        def do(db: sqlite3.Connection) -> bool:
            row = db.execute(
                "SELECT 1 FROM delivered WHERE endpoint_id = ? AND message_id = ? "
                "AND delivered_at >= ?",
                (endpoint_id.to_bytes(), bytes(message_id), cutoff),
            ).fetchone()
            return row is not None

        return self._run(do)

    def delivered_count(self, endpoint_id: EndpointId) -> int:
        """How many delivered message ids are stored for ``endpoint_id`` (expired ones not yet
        pruned included)."""
        return int(
            self._run(
                lambda db: db.execute(
                    "SELECT count(*) FROM delivered WHERE endpoint_id = ?",
                    (endpoint_id.to_bytes(),),
                ).fetchone()[0]
            )
        )

    def forget_delivered(self, endpoint_id: EndpointId) -> int:
        """Forgets every delivered message id of ``endpoint_id``; returns how many there were."""

        def do(db: sqlite3.Connection) -> int:
            cur = db.execute("DELETE FROM delivered WHERE endpoint_id = ?", (endpoint_id.to_bytes(),))
            return cur.rowcount

        return self._write(do)

    # -- the outbox -----------------------------------------------------------------------------

    def outbox_add(
        self,
        endpoint_id: EndpointId,
        message_id: bytes,
        kind: str,
        data: bytes,
        *,
        expires: float,
        max_messages: int,
        max_bytes: int,
        now: float | None = None,
    ) -> PendingMessage:
        """Queues ``data`` (stream kind ``kind``, id ``message_id``) for the paired device
        ``endpoint_id`` behind its other queued messages, in one durable commit, until Unix time
        ``expires``. Raises :class:`OutboxFull` (nothing is stored) when the device already has
        ``max_messages`` messages queued, or they and ``data`` would exceed ``max_bytes``;
        :class:`UnknownDevice` if the device is not paired. Example::

            p = reg.outbox_add(eid, new_message_id(), "msg", b"hi", expires=time.time() + 3600,
                               max_messages=1000, max_bytes=1 << 26)
        """
        mid = bytes(message_id)
        if len(mid) != 16:
            raise ValueError("a message id is 16 bytes")
        created = time.time() if now is None else float(now)
        eid = endpoint_id.to_bytes()
        payload = bytes(data)

        def do(db: sqlite3.Connection) -> PendingMessage:
            if db.execute("SELECT 1 FROM devices WHERE endpoint_id = ?", (eid,)).fetchone() is None:
                raise UnknownDevice(str(endpoint_id))
            count, used = db.execute(
                "SELECT count(*), coalesce(sum(length(data)), 0) FROM outbox WHERE endpoint_id = ?",
                (eid,),
            ).fetchone()
            if int(count) + 1 > max_messages or int(used) + len(payload) > max_bytes:
                raise OutboxFull(str(endpoint_id), int(count), int(used), len(payload),
                                 max_messages, max_bytes)
            db.execute(
                "INSERT INTO outbox (message_id, endpoint_id, kind, data, created, expires) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (mid, eid, kind, payload, created, float(expires)),
            )
            return PendingMessage(mid, endpoint_id, kind, len(payload), created, float(expires))

        return self._write(do)

    def outbox_list(self, endpoint_id: EndpointId | None = None) -> builtins.list[PendingMessage]:
        """The queued messages (of one device, or of all), oldest first: in delivery order."""

        def do(db: sqlite3.Connection) -> builtins.list[PendingMessage]:
            if endpoint_id is None:
                rows = db.execute(f"SELECT {_OUTBOX_COLUMNS} FROM outbox ORDER BY seq").fetchall()
            else:
                rows = db.execute(
                    f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE endpoint_id = ? ORDER BY seq",
                    (endpoint_id.to_bytes(),),
                ).fetchall()
            return [_pending(r) for r in rows]

        return self._run(do)

    def outbox_devices(self) -> builtins.list[EndpointId]:
        """The devices that have messages queued."""
        rows = self._run(lambda db: db.execute("SELECT DISTINCT endpoint_id FROM outbox").fetchall())
        return [EndpointId.from_bytes(bytes(r[0])) for r in rows]

    def outbox_head(self, endpoint_id: EndpointId) -> tuple[PendingMessage, bytes] | None:
        """The device's oldest queued message and its payload (the next to deliver), or
        ``None`` when nothing is queued for it."""

        def do(db: sqlite3.Connection) -> tuple[PendingMessage, bytes] | None:
            row = db.execute(
                f"SELECT {_OUTBOX_COLUMNS}, data FROM outbox WHERE endpoint_id = ? "
                "ORDER BY seq LIMIT 1",
                (endpoint_id.to_bytes(),),
            ).fetchone()
            return None if row is None else (_pending(row[:8]), bytes(row[8]))

        return self._run(do)

    def outbox_remove(self, message_id: bytes) -> bool:
        """Deletes a queued message (acknowledged, or cancelled); ``False`` if it was not
        queued."""

        def do(db: sqlite3.Connection) -> int:
            return db.execute("DELETE FROM outbox WHERE message_id = ?", (bytes(message_id),)).rowcount

        return self._write(do) > 0

    def outbox_failed(self, message_id: bytes, error: str) -> None:
        """Counts a failed delivery attempt of a queued message and keeps its ``error``."""

        def do(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE message_id = ?",
                (error[:500], bytes(message_id)),
            )

        self._write(do)

    def outbox_next_expiry(self, endpoint_id: EndpointId) -> float | None:
        """When the device's first queued message expires (a Unix time), or ``None``."""
        (t,) = self._run(
            lambda db: db.execute(
                "SELECT min(expires) FROM outbox WHERE endpoint_id = ?", (endpoint_id.to_bytes(),)
            ).fetchone()
        )
        return None if t is None else float(t)

    def outbox_expire(
        self, endpoint_id: EndpointId, now: float | None = None
    ) -> builtins.list[PendingMessage]:
        """Deletes the device's queued messages whose time ran out (``expires <= now``) and
        returns them."""
        at = time.time() if now is None else float(now)
        eid = endpoint_id.to_bytes()

        def do(db: sqlite3.Connection) -> builtins.list[PendingMessage]:
            rows = db.execute(
                f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE endpoint_id = ? AND expires <= ? "
                "ORDER BY seq",
                (eid, at),
            ).fetchall()
            if rows:
                db.execute("DELETE FROM outbox WHERE endpoint_id = ? AND expires <= ?", (eid, at))
            return [_pending(r) for r in rows]

        return self._write(do)

    def close(self) -> None:
        """Closes the database (idempotent); later calls raise :class:`RegistryError`."""
        with self._lock:
            db, self._db = self._db, None
            if db is not None:
                db.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._db is None

    def __enter__(self) -> DeviceRegistry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DeviceRegistry({str(self.path)!r})"


def _by_id(d: PairedDevice) -> bytes:
    return d.endpoint_id.to_bytes()

