"""The local control socket: how ``iroh-pair`` commands talk to the node that runs in their
data directory (``iroh-pair listen``, ``daemon``, ``chat``) instead of failing with
:class:`~iroh_pair.errors.DataDirLocked`.

Transport: a Unix domain socket ``DATA_DIR/control.sock`` (:data:`SOCKET_FILE`), created
owner-only (mode 0600, bound under a ``0o177`` umask so it is never more open, inside the 0700
data directory) and removed when the node stops; nothing listens on the network. Each accepted
connection's peer credentials (``SO_PEERCRED``) are checked: a process of another uid gets one
``forbidden`` error line and the connection is closed, before anything else is read.

Protocol (version :data:`PROTOCOL_VERSION`): line-delimited JSON, one object per line, at most
:data:`MAX_LINE` bytes a line (``json.dumps`` escapes every control character, so a line break
only ends a frame). A request is ``{"v": 1, "id": N, "op": "...", ...params}``; its answer is
``{"v": 1, "id": N, "ok": true, "result": ...}`` or ``{"v": 1, "id": N, "ok": false, "error":
{"type": "...", "message": "..."}}``; a streaming request (``subscribe``, ``host``) first gets
``{"v": 1, "id": N, "event": {...}}`` lines. Error types: ``unknown_device``,
``ambiguous_device``, ``timeout``, ``pairing_failed`` (with ``code``, ``reason``, ``by_peer``),
``bad_request``, ``unsupported_version``, ``line_too_long``, ``forbidden``, ``error`` (another
:class:`~iroh_pair.errors.IrohPairError`, with its ``class``), ``internal``. Every request runs
under a timeout (its ``timeout`` parameter plus a margin, else :data:`DEFAULT_REQUEST_TIMEOUT`).

Operations: ``ping``, ``devices``, ``device`` (``device``), ``send`` (``device``, ``text``,
``timeout``), ``unpair`` (``device``), ``stats``, ``subscribe`` (messages as they arrive, until
the client closes), ``host`` (``ttl``, ``words``, ``lan``, ``confirm_timeout``, ``ask``: the
events ``code`` and, with ``ask``, ``sas``, answered by the client with ``{"v": 1, "id": N,
"answer": true|false}``; the result is the paired device and its ``sas``), ``join`` (``code``,
``timeout``, ``confirm_timeout``, ``ask``: the event ``sas`` as for ``host``), ``send_file``
(``device``, ``path`` (absolute, as the client resolved it), ``timeout``, ``connect_timeout``:
the events ``progress`` with ``done``, ``total``, ``rate``, at most every
:data:`PROGRESS_INTERVAL` seconds; the result ``name``, ``size``, ``hash``, ``stored_as``,
``to``; the transfer is cancelled when the client closes the connection). A failed transfer's
error type is ``file_transfer`` with its ``class`` (``OfferDeclined`` with ``reason``,
``TransferRefused``, ``FileTransferError``); a local file problem is ``os_error``.

This module is private; the CLI (:mod:`iroh_pair.cli`) is its user. Example::

    async with await ControlClient.connect(data_dir) as client:   # None: no node runs there
        for dev in await client.devices():
            print(dev.name)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from iroh_pair.errors import (
    AmbiguousDevice,
    FileTransferError,
    IrohPairError,
    OfferDeclined,
    PairingFailed,
    TransferRefused,
    UnknownDevice,
)
from iroh_pair.protocol.constants import RejectCode

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_REQUEST_TIMEOUT",
    "MAX_LINE",
    "PROTOCOL_VERSION",
    "SOCKET_FILE",
    "ControlClient",
    "ControlServer",
    "DeviceSummary",
    "decode",
    "encode",
    "peer_uid",
    "socket_path",
]

#: Version of the control protocol (the ``v`` of every line).
PROTOCOL_VERSION = 1
#: File name of the socket in the data directory.
SOCKET_FILE = "control.sock"
#: Longest line (bytes, the newline included) either side accepts.
MAX_LINE = 1 << 20
#: Seconds a request without its own ``timeout`` may take.
DEFAULT_REQUEST_TIMEOUT = 60.0
#: Added to a request's own ``timeout`` (the node's operation times out first, with its error).
TIMEOUT_MARGIN = 10.0
#: Longest text (characters) of a message in a ``subscribe`` event (keeps a line < MAX_LINE).
MAX_EVENT_TEXT = 100_000
#: Events a slow subscriber may fall behind before it is dropped.
SUBSCRIBER_QUEUE = 1000
#: Seconds between two ``progress`` events of a ``send_file`` request (at most).
PROGRESS_INTERVAL = 0.1


class _ControlError(IrohPairError):  # private, as the module: only the CLI sees it
    """An error answered by the node behind the control socket (``kind`` is the protocol's
    error type), or a broken exchange with it. Its message is the node's, unchanged."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class _ControlTimeout(_ControlError, TimeoutError):
    """The node answered ``timeout`` (or did not answer in time)."""


# ------------------------------------------------------------------ framing


def encode(obj: dict[str, Any]) -> bytes:
    """One frame: ``obj`` as compact ASCII JSON and a newline. Raises :class:`_ControlError`
    (``line_too_long``) beyond :data:`MAX_LINE`.

    >>> encode({"v": 1, "id": 1, "op": "ping"})
    b'{"v":1,"id":1,"op":"ping"}\\n'
    >>> encode({"text": "a\\nb"})   # a line break inside a value is escaped
    b'{"text":"a\\\\nb"}\\n'
    """
    data = json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\n"
    if len(data) > MAX_LINE:
        raise _ControlError("line_too_long", f"a control line of {len(data)} bytes exceeds {MAX_LINE}")
    return data


def decode(line: bytes) -> dict[str, Any]:
    """The object of one frame; raises :class:`_ControlError` (``line_too_long``,
    ``bad_request``, ``unsupported_version``) if it is not a JSON object of this version.

    >>> decode(b'{"v":1,"id":1,"op":"ping"}\\n')
    {'v': 1, 'id': 1, 'op': 'ping'}
    """
    if len(line) > MAX_LINE:
        raise _ControlError("line_too_long", f"a control line of {len(line)} bytes exceeds {MAX_LINE}")
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError) as e:
        raise _ControlError("bad_request", f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise _ControlError("bad_request", "a control line is a JSON object")
    if obj.get("v") != PROTOCOL_VERSION:
        raise _ControlError("unsupported_version",
                           f"control protocol version {obj.get('v')!r} (this side speaks {PROTOCOL_VERSION})")
    return obj


def error_of(e: BaseException) -> dict[str, Any]:
    """The ``error`` object that carries ``e`` to the client."""
    if isinstance(e, _ControlError):
        return {"type": e.kind, "message": str(e)}
    if isinstance(e, UnknownDevice):
        return {"type": "unknown_device", "message": str(e)}
    if isinstance(e, AmbiguousDevice):
        return {"type": "ambiguous_device", "message": str(e)}
    if isinstance(e, PairingFailed):
        return {"type": "pairing_failed", "message": str(e), "code": int(e.code),
                "reason": e.reason, "by_peer": e.by_peer}
    if isinstance(e, TimeoutError):
        return {"type": "timeout", "message": str(e)}
    if isinstance(e, FileTransferError):
        return {"type": "file_transfer", "class": type(e).__name__, "message": str(e),
                "reason": e.reason if isinstance(e, OfferDeclined) else ""}
    if isinstance(e, IrohPairError):
        return {"type": "error", "class": type(e).__name__, "message": str(e)}
    if isinstance(e, ValueError):
        return {"type": "bad_request", "message": str(e)}
    if isinstance(e, OSError):
        return {"type": "os_error", "message": str(e)}
    return {"type": "internal", "message": f"{type(e).__name__}: {e}"}


def raise_error(err: object) -> None:
    """Raises the exception an ``error`` object stands for (the client side of
    :func:`error_of`): ``pairing_failed`` as :class:`PairingFailed`, ``timeout`` as
    :class:`_ControlTimeout`, the rest as :class:`_ControlError`."""
    if not isinstance(err, dict):
        raise _ControlError("bad_request", "malformed error from the node")
    kind = str(err.get("type", "internal"))
    message = str(err.get("message", ""))
    if kind == "pairing_failed":
        try:
            code = RejectCode(int(err.get("code", RejectCode.CONNECTION_LOST)))
        except ValueError:
            code = RejectCode.CONNECTION_LOST
        raise PairingFailed(code, str(err.get("reason", "")), bool(err.get("by_peer", False)))
    if kind == "timeout":
        raise _ControlTimeout(kind, message)
    if kind == "file_transfer":
        cls = err.get("class")
        if cls == "OfferDeclined":
            raise OfferDeclined(message, str(err.get("reason", "")))
        raise (TransferRefused if cls == "TransferRefused" else FileTransferError)(message)
    raise _ControlError(kind, message)


# ------------------------------------------------------------------ the socket file


def socket_path(data_dir: str | os.PathLike[str]) -> Path:
    """``DATA_DIR/control.sock``."""
    return Path(data_dir).expanduser() / SOCKET_FILE


@contextlib.contextmanager
def _short_path(path: Path) -> Any:
    """``path`` as a string short enough for ``sun_path`` (108 bytes): itself, or, for a long
    path, the socket's name under ``/proc/self/fd/N`` of its directory (Linux)."""
    if len(os.fsencode(str(path))) < 100:
        yield str(path)
        return
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{dfd}/{path.name}"
    finally:
        os.close(dfd)


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket (``SO_PEERCRED``:
    the credentials it had when it connected)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


# ------------------------------------------------------------------ devices on the wire


@dataclass(frozen=True)
class DeviceSummary:
    """A paired device as the control socket describes it (no keys)."""

    endpoint_id: str
    name: str
    device_type: str
    paired_at: float
    last_seen: float | None

    @classmethod
    def of(cls, dev: Any) -> DeviceSummary:
        return cls(str(dev.endpoint_id), dev.name, dev.device_type, dev.paired_at, dev.last_seen)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.endpoint_id, "name": self.name, "type": self.device_type,
                "paired_at": self.paired_at, "last_seen": self.last_seen}

    @classmethod
    def from_json(cls, obj: object) -> DeviceSummary:
        if not isinstance(obj, dict):
            raise _ControlError("bad_request", "malformed device from the node")
        last = obj.get("last_seen")
        return cls(str(obj["id"]), str(obj["name"]), str(obj["type"]), float(obj["paired_at"]),
                   None if last is None else float(last))


# ------------------------------------------------------------------ server


class ControlledNode(Protocol):
    """What the server needs of a :class:`~iroh_pair.Node` (a fake one in unit tests)."""

    def devices(self) -> list[Any]: ...

    def device(self, ref: str) -> Any: ...

    async def send(self, device: Any, data: bytes, *, timeout: float | None = ...) -> None: ...

    async def unpair(self, ref: str) -> Any: ...


#: A pairing hook: ``(op, params, emit, ask) -> result`` for ``op`` ``host`` or ``join`` (the
#: result: the paired device's JSON and its ``sas``); the CLI's running node provides it.
PairFn = Callable[[str, dict[str, Any], Callable[[dict[str, Any]], Awaitable[None]],
                   Callable[[dict[str, Any]], Awaitable[bool]]], Awaitable[Any]]
#: A file sending hook: ``(params, progress) -> result`` for ``send_file``; ``progress(done,
#: total, rate)`` reports the transfer (the server relays it as events); the result is the JSON
#: of what was sent. The CLI's running node provides it.
SendFileFn = Callable[[dict[str, Any], Callable[[int, int, float], None]], Awaitable[Any]]


class ControlServer:
    """Serves the control protocol for ``node`` on ``DATA_DIR/control.sock``.

    The owner of the node calls :meth:`publish` for every message it receives (``subscribe``
    streams them). ``uid`` is the only uid admitted (default: this process's effective uid).
    Example::

        server = ControlServer(node, node.data_dir)
        await server.start()
        node.on_message(lambda dev, data: server.publish(dev, data))
        ...
        await server.close()
    """

    def __init__(self, node: ControlledNode, data_dir: str | os.PathLike[str], *,
                 uid: int | None = None, pair: PairFn | None = None,
                 stats: Callable[[], dict[str, Any]] | None = None,
                 send_file: SendFileFn | None = None) -> None:
        self.node = node
        self.path = socket_path(data_dir)
        self.uid = os.geteuid() if uid is None else uid
        self.pair = pair
        self.stats = stats
        self.send_file = send_file
        self._server: asyncio.AbstractServer | None = None
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._conns: set[asyncio.Task[None]] = set()
        #: connections refused by the peer-credential check
        self.refused = 0

    async def start(self) -> None:
        """Creates the socket (replacing a stale one: the caller holds the data directory's
        lock, so no other node serves there) and starts accepting."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old = os.umask(0o177)
            try:
                with _short_path(self.path) as p:
                    sock.bind(p)
            finally:
                os.umask(old)
            os.chmod(self.path, 0o600)
            sock.listen(16)
            sock.setblocking(False)
            self._server = await asyncio.start_unix_server(self._accept, sock=sock, limit=MAX_LINE)
        except BaseException:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            raise
        log.info("control socket at %s", self.path)

    async def close(self) -> None:
        """Stops accepting, ends the connections and removes the socket file."""
        if self._server is not None:
            self._server.close()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        for q in self._subscribers:
            q.put_nowait(None)
        for t in list(self._conns):
            t.cancel()
        if self._conns:
            await asyncio.wait(self._conns, timeout=2)

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def publish(self, dev: Any, data: bytes) -> None:
        """Streams a received message to the ``subscribe`` connections."""
        text = data.decode("utf-8", errors="replace")[:MAX_EVENT_TEXT]
        ev = {"event": "message", "from": str(dev.endpoint_id), "name": dev.name, "text": text}
        for q in list(self._subscribers):
            try:
                q.put_nowait(ev)
            except asyncio.QueueFull:  # too slow: drop it (its stream ends)
                self._subscribers.discard(q)
                with contextlib.suppress(asyncio.QueueFull):
                    q.get_nowait()
                q.put_nowait(None)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:  # pragma: no cover - a bug; keep the node running
            log.exception("control connection failed")
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)

    async def _write(self, writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
        writer.write(encode({"v": PROTOCOL_VERSION, **obj}))
        await asyncio.wait_for(writer.drain(), DEFAULT_REQUEST_TIMEOUT)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:
            uid: int | None = peer_uid(sock)
        except (OSError, AttributeError):
            uid = None
        if uid != self.uid:
            self.refused += 1
            log.warning("control socket: refused a connection from uid %s", uid)
            await self._write(writer, {"id": None, "ok": False, "error": {
                "type": "forbidden", "message": "the control socket serves only its owner"}})
            return
        while True:
            try:
                line = await reader.readline()
            except (ValueError, asyncio.LimitOverrunError):
                await self._write(writer, {"id": None, "ok": False, "error": {
                    "type": "line_too_long", "message": f"a control line exceeds {MAX_LINE} bytes"}})
                return
            if not line.endswith(b"\n"):
                return  # end of input (a partial last line is dropped)
            try:
                req = decode(line)
            except _ControlError as e:
                await self._write(writer, {"id": None, "ok": False, "error": error_of(e)})
                continue
            rid = req.get("id")
            op = req.get("op")
            if op == "subscribe":
                await self._subscribe(rid, reader, writer)
                return
            try:
                if op in ("host", "join"):
                    result = await self._pair(op, rid, req, reader, writer)
                elif op == "send_file":
                    sent = await self._send_file(rid, req, reader, writer)
                    if sent is None:
                        return  # the client went away: the transfer was cancelled
                    result = sent[0]
                else:
                    result = await asyncio.wait_for(self._call(op, req), _timeout_of(req))
            except asyncio.CancelledError:
                raise
            except TimeoutError as e:
                err = error_of(e)
                if not err["message"]:
                    err["message"] = f"the node did not answer {op} within {_timeout_of(req):g} s"
                await self._write(writer, {"id": rid, "ok": False, "error": err})
            except Exception as e:
                await self._write(writer, {"id": rid, "ok": False, "error": error_of(e)})
            else:
                await self._write(writer, {"id": rid, "ok": True, "result": result})

    async def _call(self, op: object, req: dict[str, Any]) -> Any:
        node = self.node
        if op == "ping":
            return {"pid": os.getpid()}
        if op == "devices":
            return [DeviceSummary.of(d).to_json() for d in node.devices()]
        if op == "device":
            return DeviceSummary.of(node.device(_str(req, "device"))).to_json()
        if op == "send":
            dev = node.device(_str(req, "device"))
            timeout = req.get("timeout")
            await node.send(dev, _str(req, "text").encode(),
                            timeout=None if timeout is None else float(timeout))
            return DeviceSummary.of(dev).to_json()
        if op == "unpair":
            return DeviceSummary.of(await node.unpair(_str(req, "device"))).to_json()
        if op == "stats":
            return self.stats() if self.stats is not None else {}
        raise _ControlError("bad_request", f"unknown operation {op!r}")

    async def _subscribe(self, rid: object, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self._subscribers.add(q)
        try:
            await self._write(writer, {"id": rid, "ok": True, "result": {"subscribed": True}})
            gone = asyncio.ensure_future(reader.read(1))  # the client closes (or writes): end
            try:
                while True:
                    get = asyncio.ensure_future(q.get())
                    done, _ = await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
                    if get not in done:
                        get.cancel()
                        return
                    ev = get.result()
                    if ev is None:
                        return
                    await self._write(writer, {"id": rid, "event": ev})
            finally:
                gone.cancel()
        finally:
            self._subscribers.discard(q)

    async def _pair(self, op: str, rid: object, req: dict[str, Any], reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> Any:
        if self.pair is None:
            raise _ControlError("bad_request", "this node does not pair through its control socket")

        async def emit(ev: dict[str, Any]) -> None:
            await self._write(writer, {"id": rid, "event": ev})

        async def ask(ev: dict[str, Any]) -> bool:
            await emit(ev)
            line = await reader.readline()
            if not line.endswith(b"\n"):
                return False  # the client went away: decline
            try:
                answer = decode(line)
            except _ControlError:
                return False
            return answer.get("id") == rid and answer.get("answer") is True

        return await self.pair(op, req, emit, ask)


    async def _send_file(self, rid: object, req: dict[str, Any], reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> tuple[Any] | None:
        """Runs a ``send_file`` request, relaying its progress as events (at most every
        :data:`PROGRESS_INTERVAL` s); ``None`` when the client closed the connection meanwhile
        (the transfer is then cancelled)."""
        if self.send_file is None:
            raise _ControlError("bad_request", "this node does not send files through its control socket")
        latest: list[tuple[int, int, float]] = []

        def progress(done: int, total: int, rate: float) -> None:
            latest[:] = [(done, total, rate)]

        async def relay() -> None:
            shown: tuple[int, int] | None = None
            while True:
                await asyncio.sleep(PROGRESS_INTERVAL)
                if latest and latest[0][:2] != shown:
                    done, total, rate = latest[0]
                    shown = (done, total)
                    await self._write(writer, {"id": rid, "event": {
                        "event": "progress", "done": done, "total": total, "rate": rate}})

        work = asyncio.ensure_future(self.send_file(req, progress))
        ticker = asyncio.ensure_future(relay())
        gone = asyncio.ensure_future(reader.read(1))  # the client closes (or writes): cancel
        try:
            done, _ = await asyncio.wait({work, gone, ticker}, return_when=asyncio.FIRST_COMPLETED)
            if work in done:
                return (work.result(),)
            if ticker in done:
                ticker.result()  # writing to the client failed: raises
            return None
        finally:
            for t in (work, ticker, gone):
                t.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait({work, ticker, gone}, timeout=5)


def _str(req: dict[str, Any], key: str) -> str:
    value = req.get(key)
    if not isinstance(value, str):
        raise _ControlError("bad_request", f"{key!r} must be a string")
    return value


def _timeout_of(req: dict[str, Any]) -> float:
    t = req.get("timeout")
    if isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t < 86400:
        return float(t) + TIMEOUT_MARGIN
    return DEFAULT_REQUEST_TIMEOUT


# ------------------------------------------------------------------ client


class ControlClient:
    """A connection to the node serving ``DATA_DIR/control.sock``; :meth:`connect` returns
    ``None`` when no node serves there (no socket, or a stale one)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 path: Path) -> None:
        self._reader = reader
        self._writer = writer
        self.path = path
        self._next = 0

    @classmethod
    async def connect(cls, data_dir: str | os.PathLike[str]) -> ControlClient | None:
        path = socket_path(data_dir)
        try:
            with _short_path(path) as p:
                reader, writer = await asyncio.open_unix_connection(p, limit=MAX_LINE)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR):
                return None
            raise
        return cls(reader, writer, path)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer.wait_closed(), 1)

    async def __aenter__(self) -> ControlClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _send(self, obj: dict[str, Any]) -> None:
        self._writer.write(encode({"v": PROTOCOL_VERSION, **obj}))
        await self._writer.drain()

    async def _read(self, timeout: float | None) -> dict[str, Any]:
        try:
            line = await asyncio.wait_for(self._reader.readline(), timeout)
        except TimeoutError:
            raise _ControlTimeout("timeout", f"the node at {self.path} did not answer within "
                                            f"{timeout:g} s") from None
        except (ValueError, asyncio.LimitOverrunError):
            raise _ControlError("line_too_long", f"a control line exceeds {MAX_LINE} bytes") from None
        if not line.endswith(b"\n"):
            raise _ControlError("closed", f"the node at {self.path} closed the control connection")
        msg = decode(line)
        if msg.get("ok") is False and msg.get("id") is None:
            raise_error(msg.get("error"))  # refused (forbidden), or a broken line of ours
        return msg

    async def request(self, op: str, *, timeout: float | None = None, **params: Any) -> Any:
        """Sends one request and returns its result (raises its typed error)."""
        self._next += 1
        rid = self._next
        req: dict[str, Any] = {"id": rid, "op": op, **params}
        if timeout is not None:
            req["timeout"] = timeout
        await self._send(req)
        wait = (timeout if timeout is not None else DEFAULT_REQUEST_TIMEOUT) + 2 * TIMEOUT_MARGIN
        while True:
            msg = await self._read(wait)
            if msg.get("id") != rid or "event" in msg:
                continue
            if msg.get("ok") is True:
                return msg.get("result")
            raise_error(msg.get("error"))

    async def devices(self) -> list[DeviceSummary]:
        return [DeviceSummary.from_json(d) for d in await self.request("devices")]

    async def device(self, ref: str) -> DeviceSummary:
        return DeviceSummary.from_json(await self.request("device", device=ref))

    async def send(self, ref: str, text: str, *, timeout: float | None = None) -> DeviceSummary:
        return DeviceSummary.from_json(await self.request("send", device=ref, text=text, timeout=timeout))

    async def unpair(self, ref: str) -> DeviceSummary:
        return DeviceSummary.from_json(await self.request("unpair", device=ref))

    async def send_file(self, params: dict[str, Any],
                        on_progress: Callable[[int, int, float], None]) -> dict[str, Any]:
        """Sends a file through the node (``op="send_file"``: ``device``, ``path``, ``timeout``,
        ``connect_timeout``); ``on_progress(done, total, rate)`` gets each progress event.
        Returns the JSON of what was sent (``name``, ``size``, ``hash``, ``stored_as``,
        ``to``); raises the transfer's typed error."""
        self._next += 1
        rid = self._next
        await self._send({"id": rid, "op": "send_file", **params})
        while True:
            msg = await self._read(None)
            if msg.get("id") != rid:
                continue
            ev = msg.get("event")
            if isinstance(ev, dict):
                if ev.get("event") == "progress":
                    with contextlib.suppress(TypeError, ValueError):
                        on_progress(int(ev["done"]), int(ev["total"]), float(ev["rate"]))
                continue
            result = msg.get("result")
            if msg.get("ok") is True and isinstance(result, dict):
                return result
            raise_error(msg.get("error"))

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        """Messages received by the node from now on (``{"event": "message", "from", "name",
        "text"}``), until the node stops; this connection serves nothing else afterwards."""
        self._next += 1
        rid = self._next
        await self._send({"id": rid, "op": "subscribe"})
        first = await self._read(DEFAULT_REQUEST_TIMEOUT)
        if first.get("ok") is not True:
            raise_error(first.get("error"))
        while True:
            try:
                msg = await self._read(None)
            except _ControlError as e:
                if e.kind == "closed":
                    return
                raise
            ev = msg.get("event")
            if isinstance(ev, dict):
                yield ev

    async def pair(self, op: str, params: dict[str, Any],
                   on_event: Callable[[dict[str, Any]], Awaitable[bool | None]]) -> dict[str, Any]:
        """Hosts (``op="host"``) or joins (``op="join"``) a pairing on the node: ``on_event``
        gets each event (``code``, ``sas``); for a ``sas`` event its return value is the answer
        sent back. Returns the paired device's JSON (:meth:`DeviceSummary.from_json`) with its
        ``sas``."""
        self._next += 1
        rid = self._next
        await self._send({"id": rid, "op": op, **params})
        while True:
            msg = await self._read(None)
            if msg.get("id") != rid:
                continue
            ev = msg.get("event")
            if isinstance(ev, dict):
                answer = await on_event(ev)
                if ev.get("event") == "sas":
                    await self._send({"id": rid, "answer": bool(answer)})
                continue
            result = msg.get("result")
            if msg.get("ok") is True and isinstance(result, dict):
                return result
            raise_error(msg.get("error"))
