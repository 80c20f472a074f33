"""Every exception of iroh-pair, in one hierarchy.

``except IrohPairError`` catches every failure the package reports. Where the standard library
has the meaning, a class is also the builtin (a bad code is a :class:`ValueError`, a timeout a
:class:`TimeoutError`, an unknown device a :class:`LookupError`), so code that catches the
builtin keeps working. Misuse (a wrong type, an argument out of range, a runtime chosen twice)
raises the plain builtin :class:`TypeError` / :class:`ValueError` / :class:`RuntimeError`, as
the standard library does::

    IrohPairError
    ├── TransportError                  iroh failed: dialing, a connection, a stream
    │   ├── BindError                   the endpoint could not be bound
    │   ├── ConnectError                a dial failed (no address, refused, wrong ALPN)
    │   ├── ConnectionLost              the connection is closed (code, reason, by_peer, kind)
    │   ├── StreamReset                 the peer reset / stopped the stream (code)
    │   ├── StreamClosed                the stream was already finished, reset or stopped
    │   ├── FrameTooLarge               a frame or message over its limit (length, limit)
    │   ├── TruncatedFrame              the stream ended inside a frame or exact read
    │   └── Timeout (TimeoutError)      an operation did not complete within its timeout
    ├── RemoteError                     the peer's handler refused a request (code)
    ├── InvalidKey (ValueError)         a secret key or EndpointId that does not parse
    ├── InvalidTicket (ValueError)      an iroh ticket or address that does not parse
    ├── InvalidCode (ValueError)        a pairing code that does not parse
    │   ├── UnknownWord                 a word not in the BIP39 list (word)
    │   ├── BadWordCount                too few or too many words (count)
    │   ├── MalformedCode               not ``words.tag.ticket`` (or not ``7-words``)
    │   ├── BadSessionTag               the tag is not canonical base32 of 16 bytes
    │   └── BadTicket                   the ticket part is empty, too long or not ASCII
    ├── InvalidDeviceInfo (ValueError)  a device name, type, OS or version out of its limits
    ├── ConfigError (ValueError)        a configuration file or variable that is not valid
    ├── ProtocolError                   a pairing message refused by the protocol (code)
    ├── MessageRejected                 a sealed message refused (code, counter, message_id)
    ├── PairingFailed                   pairing did not complete (code, reason, by_peer)
    ├── NameplateNotFound (LookupError) nobody on this LAN announces the nameplate
    ├── AmbiguousNameplate (LookupError) several devices announce it
    ├── CacheClosedError (RuntimeError) the connection cache is closed
    ├── OutboxFull                      a device's outbox is at its limit (device, limits)
    ├── FileTransferError               a file transfer failed (fetch, store, export)
    │   ├── TransferRefused             the sender refused the content (not offered to us)
    │   ├── DiskFull                    no space left where the file is stored
    │   ├── VerificationFailed          content from the peer did not match its hash
    │   ├── OfferDeclined               the receiver declined a file offer (reason)
    │   ├── OfferTooLarge               a directory offer over its entry or size limit
    │   └── FileChanged                 a file changed while it was being sent (path)
    ├── DataDirLocked                   another node holds the data directory (pid, since)
    ├── KeyFileCorrupt                  the secret key file is not a key (path, reason)
    └── RegistryError                   the device registry failed
        ├── RegistryCorrupt             not a registry, or damaged (path, reason)
        ├── RegistrySchemaTooNew        written by a newer version (version, supported)
        ├── UnknownDevice (LookupError)  no paired device matches (query)
        └── AmbiguousDevice (LookupError) several paired devices match (query, candidates)

(:mod:`iroh_pair.testing` adds ``ServerError`` for its local test servers, also an
``IrohPairError``.) Example::

    try:
        device = await node.join(code)
    except PairingFailed as e:          # e.code: WRONG_CODE, EXPIRED, SAS_DECLINED, ...
        print("not paired:", e.code.name)
    except IrohPairError as e:          # anything else: unreachable host, bad code, ...
        print("failed:", e)

The native extension raises the transport classes (and ``InvalidKey``, ``InvalidTicket``,
``RemoteError``) by name from this module, in one place
(``impl From<Error> for PyErr`` in ``rust/iroh-pair-native/src/error.rs``). This module imports
nothing from the package, so that the sans-I/O :mod:`iroh_pair.protocol` can raise its classes.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for annotations only: nothing of the package is imported at run time
    from iroh_pair.protocol.constants import RejectCode, StreamErrorCode
    from iroh_pair.store import PairedDevice

__all__ = [
    "IrohPairError",
    # transport
    "TransportError",
    "BindError",
    "ConnectError",
    "ConnectionLost",
    "StreamReset",
    "StreamClosed",
    "FrameTooLarge",
    "TruncatedFrame",
    "Timeout",
    "RemoteError",
    "ConfigError",
    # bad input
    "InvalidKey",
    "InvalidTicket",
    "InvalidCode",
    "UnknownWord",
    "BadWordCount",
    "MalformedCode",
    "BadSessionTag",
    "BadTicket",
    "InvalidDeviceInfo",
    # protocol, pairing, messaging
    "ProtocolError",
    "MessageRejected",
    "PairingFailed",
    "NameplateNotFound",
    "AmbiguousNameplate",
    "CacheClosedError",
    "OutboxFull",
    # files
    "FileTransferError",
    "FileChanged",
    "OfferTooLarge",
    "TransferRefused",
    "DiskFull",
    "VerificationFailed",
    "OfferDeclined",
    "TooManyTransfers",
    "TransferStalled",
    "DestinationChanged",
    # storage
    "DataDirLocked",
    "KeyFileCorrupt",
    "RegistryError",
    "RegistryCorrupt",
    "RegistrySchemaTooNew",
    "UnknownDevice",
    "AmbiguousDevice",
]


class IrohPairError(Exception):
    """Base class of every error raised by iroh-pair."""


# -- transport ---------------------------------------------------------------------------------


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
    """The peer reset the stream (or stopped reading it) with an application error ``code``
    (a :class:`~iroh_pair.protocol.constants.StreamErrorCode` value)."""

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
    """An operation did not complete within its timeout (a dial, a request, reaching the
    host of a pairing code, :meth:`HostedPairing.wait <iroh_pair.HostedPairing.wait>`)."""


#: The native layer's text for a refusal (``Error::Remote`` in
#: ``rust/iroh-pair-native/src/error.rs``), which :class:`RemoteError` replaces with the code's name.
_NATIVE_REMOTE_TEXT = "the peer refused the request with code {}"


def _plain_code(code: int) -> int:
    return int(code)


#: Turns a stream error code into its :class:`~iroh_pair.protocol.constants.StreamErrorCode`
#: member (an unknown code stays an ``int``). This module imports nothing of the package, so
#: :mod:`iroh_pair.protocol.constants` installs the lookup when it loads (importing any part
#: of ``iroh_pair`` loads it first).
_stream_error_code: Callable[[int], StreamErrorCode | int] = _plain_code


def _install_stream_error_codes(lookup: Callable[[int], StreamErrorCode | int]) -> None:
    """Called once by :mod:`iroh_pair.protocol.constants`: how :class:`RemoteError` names codes."""
    global _stream_error_code
    _stream_error_code = lookup


class RemoteError(IrohPairError):
    """The peer's handler failed; it reset the stream with application ``code``: a
    :class:`~iroh_pair.protocol.constants.StreamErrorCode` member when the code is known
    (e.g. ``DUPLICATE``), else the plain ``int``. The message names the code::

        try:
            reply = await node.request(dev, b"ping")
        except RemoteError as e:
            if e.code is StreamErrorCode.HANDLER_ERROR:   # str(e): "... HANDLER_ERROR (3) ..."
                ...
    """

    def __init__(self, message: str, code: int) -> None:
        named = _stream_error_code(code)
        if message == _NATIVE_REMOTE_TEXT.format(int(code)):
            name = getattr(named, "name", None)
            label = f"{name} ({int(code)})" if name else f"unknown code {int(code)}"
            message = f"the peer refused the request: {label}"
        super().__init__(message)
        self.code: StreamErrorCode | int = named


# -- files ---------------------------------------------------------------------------------------


class FileTransferError(IrohPairError):
    """A file transfer between paired devices failed (the fetch, the blob store, or writing the
    verified file to its destination). Nothing is left at the destination name::

        try:
            await node.send_file(dev, "report.pdf")
        except FileTransferError as e:
            print("not sent:", e)
    """


class TransferRefused(FileTransferError):
    """The sending side refused the content: it was not offered to this device (or the offer
    was withdrawn), or this device is not admitted at all."""


class DiskFull(FileTransferError):
    """No space left on the device a file transfer writes to: the receiver's blob store or its
    destination directory (raised by :meth:`~iroh_pair.Node.send_file` too, when it is the
    receiver's disk that is full). The data verified so far stays in the blob store, so the
    same content offered again once there is room fetches only the rest::

        try:
            await node.send_file(dev, "backup.tar")
        except DiskFull as e:
            print("the disk is full:", e)
    """


class VerificationFailed(FileTransferError):
    """Content from the peer did not match its hash (a corrupt or tampered chunk group): it was
    refused before it was written; nothing is left at the destination name, and the chunks
    verified before it are all the store keeps::

        try:
            await node.send_file(dev, "report.pdf")
        except VerificationFailed:
            print("the receiver got corrupt data from us: check this disk")
    """


class OfferDeclined(FileTransferError):
    """The receiving device declined a file offer (its handler returned no destination, or
    it has no handler); ``reason`` is the receiver's text."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class OfferTooLarge(FileTransferError):
    """A directory is too large for one offer (more entries than the offer allows, or an
    offer message over its size limit); nothing was offered. Send it in parts::

        try:
            await node.send_file(dev, "photos/")
        except OfferTooLarge as e:
            print("split it:", e)
    """


class FileChanged(FileTransferError):
    """A file changed (size, modification time or inode) while it was being imported for
    sending (nothing was offered), or after it was offered and before the receiver had it
    (the store reads it where it is and refuses bytes that no longer match the hash: the
    receiver got nothing of the changed content). ``path`` is the file. Send it again once it
    is complete::

        try:
            await node.send_file(dev, "growing.log")
        except FileChanged as e:
            print(e.path, "is still being written")
    """

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class TooManyTransfers(FileTransferError):
    """The receiving device is already receiving as many offers as it takes at once (from this
    device, or from all devices together): this offer was answered without fetching anything.
    Send it again once an earlier transfer has ended::

        try:
            await node.send_file(dev, "clip.mp4")
        except TooManyTransfers:
            await asyncio.sleep(5)   # and try again
    """


class TransferStalled(FileTransferError):
    """A fetch made no progress for the receiver's stall timeout (the sender's traffic stopped
    while the connection stayed open): it was cancelled, nothing is left at the destination
    name, and what was verified so far stays in the blob store for a later attempt::

        try:
            await node.send_file(dev, "video.mp4")
        except TransferStalled:
            print("the transfer stopped moving; try again")
    """


class DestinationChanged(FileTransferError):
    """The receiver's temporary directory for a directory offer (or a directory in it) was
    replaced while the tree was being received (by a symbolic link or another entry): the
    receiver stopped, removed what it had written and wrote nothing through the replacement
    (raised at the sender too, from the receiver's reply)."""


# -- bad input -----------------------------------------------------------------------------------


class InvalidKey(IrohPairError, ValueError):
    """A secret key or EndpointId could not be parsed."""


class InvalidTicket(IrohPairError, ValueError):
    """An iroh ticket or address string could not be parsed."""


class InvalidCode(IrohPairError, ValueError):
    """A pairing code (or its secret words) could not be parsed."""


class UnknownWord(InvalidCode):
    """A word of the secret is not in the BIP39 English list; ``word`` is the offending word."""

    def __init__(self, word: str) -> None:
        super().__init__(f"not a pairing code word: {word!r}")
        self.word = word


class BadWordCount(InvalidCode):
    """The secret has ``count`` words, not ``min_words`` to ``max_words``."""

    def __init__(self, count: int, min_words: int, max_words: int) -> None:
        super().__init__(f"a pairing code has {min_words}..{max_words} words, got {count}")
        self.count = count
        self.min_words = min_words
        self.max_words = max_words


class MalformedCode(InvalidCode):
    """The code string does not have the ``words.tag.ticket`` structure (or a LAN code is not
    ``nameplate-words``)."""


class BadSessionTag(InvalidCode):
    """The session tag part is not 26 characters of canonical base32 (16 bytes)."""


class BadTicket(InvalidCode):
    """The ticket part is empty, too long, or not printable ASCII without spaces."""


class InvalidDeviceInfo(IrohPairError, ValueError):
    """A device's name, type, OS or app version is outside its limits (length, characters),
    for example a device name with nothing printable in it."""


# -- protocol, pairing, messaging ----------------------------------------------------------------


class ConfigError(IrohPairError, ValueError):
    """A network setting that is not valid: in ``config.toml``, an ``IROH_PAIR_*`` environment
    variable or a flag (:mod:`iroh_pair.config`). The message names the file or variable and
    the key."""


class ProtocolError(IrohPairError):
    """A pairing message or envelope was malformed, oversized, out of order or refused.

    ``code`` is the :class:`~iroh_pair.protocol.constants.RejectCode`; this is the only
    exception the decoders and state machines of :mod:`iroh_pair.protocol` raise for bad input.
    """

    def __init__(self, code: RejectCode, message: str = "") -> None:
        super().__init__(f"{code.name}: {message}" if message else code.name)
        self.code = code
        self.reason = message or code.name.lower()


class MessageRejected(IrohPairError):
    """A sealed message was refused: ``code`` (a
    :class:`~iroh_pair.protocol.constants.StreamErrorCode`, the code the stream is reset
    with), ``counter`` when it could be read, and for ``DUPLICATE`` the ``message_id`` of the
    duplicate."""

    def __init__(
        self,
        code: StreamErrorCode,
        message: str = "",
        *,
        counter: int | None = None,
        message_id: bytes | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}" if message else code.name)
        self.code = code
        self.counter = counter
        self.message_id = message_id


class PairingFailed(IrohPairError):
    """Pairing did not complete. ``code`` is the
    :class:`~iroh_pair.protocol.constants.RejectCode` (``WRONG_CODE`` for wrong words,
    ``SAS_DECLINED`` when a user declined the SAS, ``UNSUPPORTED_VERSION`` for a peer of
    another pairing version), ``by_peer`` whether the other side reported it. ``reason`` may
    come from the peer: sanitise it before showing it."""

    def __init__(self, code: RejectCode, reason: str, by_peer: bool = False) -> None:
        who = "the peer" if by_peer else "this side"
        super().__init__(f"pairing failed ({code.name}, reported by {who}): {reason}")
        self.code = code
        self.reason = reason
        self.by_peer = by_peer


class NameplateNotFound(IrohPairError, LookupError):
    """No host announces this LAN code's nameplate on this LAN (wrong number, host gone, or not
    on the same LAN)."""


class AmbiguousNameplate(IrohPairError, LookupError):
    """More than one device announces this nameplate: the joiner refuses to guess (trying the
    words on a stranger would give it a guess at them). The host should make a new code."""


class CacheClosedError(IrohPairError, RuntimeError):
    """The :class:`~iroh_pair.ConnectionCache` has been closed; it makes and hands out no more
    connections."""


# -- storage -------------------------------------------------------------------------------------


class OutboxFull(IrohPairError):
    """:meth:`Node.enqueue <iroh_pair.Node.enqueue>` refused a message: the device's outbox
    holds ``count`` messages of ``used`` bytes, and one more of ``size`` bytes would pass
    ``max_messages`` or ``max_bytes`` (:meth:`Node.open <iroh_pair.Node.open>`'s
    ``outbox_max_messages``, ``outbox_max_bytes``). Nothing was queued. Example::

        try:
            node.enqueue("phone", note)
        except OutboxFull as e:
            print("phone has been away too long:", e.count, "messages wait")
    """

    def __init__(
        self, device: str, count: int, used: int, size: int, max_messages: int, max_bytes: int
    ) -> None:
        super().__init__(
            f"the outbox of device {_printable(device)} is full: {count} messages, {used} bytes "
            f"queued; one more of {size} bytes would pass the limit of {max_messages} messages "
            f"or {max_bytes} bytes"
        )
        self.device = device
        self.count = count
        self.used = used
        self.size = size
        self.max_messages = max_messages
        self.max_bytes = max_bytes


class DataDirLocked(IrohPairError):
    """Another node (another process, or another ``DataDirLock`` in this process) holds the
    data directory. ``pid`` is the holder's PID (``None`` if it could not be read) and
    ``since`` the Unix time it took the lock (``None`` if unknown)."""

    def __init__(self, path: Path, pid: int | None, since: float | None) -> None:
        who = f"process {pid}" if pid is not None else "another process"
        if pid is not None and pid == os.getpid():
            who = f"this process ({pid})"
        when = f" since {datetime.fromtimestamp(since):%Y-%m-%d %H:%M:%S}" if since else ""
        super().__init__(f"data directory {path} is in use by {who}{when}")
        self.path = path
        self.pid = pid
        self.since = since


class KeyFileCorrupt(IrohPairError):
    """The secret key file exists but is not a valid key (wrong length or unreadable). It is left
    untouched: move it away to create a new identity (which changes the EndpointId, so paired
    devices would have to pair again)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"secret key file {path} is corrupt: {reason}; it was not modified")
        self.path = path
        self.reason = reason


class RegistryError(IrohPairError):
    """Base class of the registry's errors."""


class RegistryCorrupt(RegistryError):
    """``path`` is not a usable registry: not an SQLite database, an SQLite database of another
    application, or damaged. The file was not modified."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"device registry {path} is unusable: {reason}; it was not modified")
        self.path = path
        self.reason = reason


class RegistrySchemaTooNew(RegistryError):
    """The registry was written by a newer version (schema ``version`` > ``supported``)."""

    def __init__(self, path: Path, version: int, supported: int) -> None:
        super().__init__(
            f"device registry {path} has schema version {version}, this version of iroh-pair "
            f"understands up to {supported}; upgrade iroh-pair (the file was not modified)"
        )
        self.path = path
        self.version = version
        self.supported = supported


class UnknownDevice(RegistryError, LookupError):
    """No paired device matches ``query``."""

    def __init__(self, query: str) -> None:
        super().__init__(f"no paired device matches {_printable(query)}")
        self.query = query


class AmbiguousDevice(RegistryError, LookupError):
    """Several paired devices match ``query``; ``candidates`` lists them (sorted by id)."""

    def __init__(self, query: str, candidates: Sequence[PairedDevice]) -> None:
        names = ", ".join(
            f"{_printable(d.name)} ({d.endpoint_id.fmt_short()})" for d in candidates
        )
        super().__init__(
            f"{_printable(query)} matches {len(candidates)} paired devices: {names}; "
            "use a longer EndpointId prefix"
        )
        self.query = query
        self.candidates = tuple(candidates)


# -- text in messages ----------------------------------------------------------------------------

#: Invisible characters that reorder or hide text (bidi embeddings/overrides/isolates, marks).
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _unsafe(c: str) -> bool:
    # Cc: C0, DEL, C1 (incl. ESC and CSI); Cs: lone surrogates; Zl/Zp: line/paragraph separators
    return c in _BIDI or unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp")


def _printable(text: str, max_chars: int = 80) -> str:
    """``text`` (a device name, a query) made safe to show: control, bidi and separator
    characters as escapes, cut to ``max_chars`` (with ``…``). It is
    :func:`iroh_pair.store.safe_display`; it lives here so that messages of the errors above can
    quote peer-supplied text without importing the store."""
    out: list[str] = []
    for c in text:
        if _unsafe(c):
            o = ord(c)
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")
        else:
            out.append(c)
    s = "".join(out)
    return s if len(s) <= max_chars else s[: max(0, max_chars - 1)] + "…"
