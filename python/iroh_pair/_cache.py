"""A cache of iroh connections: one live connection per (peer, ALPN).

:class:`ConnectionCache` is modelled on the connection pool of encode/httpcore: all bookkeeping is
synchronous (no ``await`` between reading and updating the cache's state, so there are no locks),
every cached connection has exactly one owner record, and the way connections are made is
injected (a *dialer* coroutine function), which is what the unit tests replace with a fake.

What it does:

* **Reuse.** :meth:`ConnectionCache.get` returns the live connection for ``(peer, alpn)`` and dials
  only when there is none. It never returns a connection whose ``is_closed`` is true.
* **Single flight.** Concurrent callers for the same key share one dial (an :class:`asyncio.Task`).
  A caller that is cancelled stops waiting but does not abort the dial for the others (the dial is
  awaited through :func:`asyncio.shield`). A failed dial is not cached: every waiting caller gets
  the error and the next :meth:`~ConnectionCache.get` dials again.
* **Eviction.** A watcher task awaits ``conn.closed()`` for every cached connection and evicts it
  as soon as it closes, whoever closed it.
* **Dead peers.** :meth:`ConnectionCache.request` and :meth:`ConnectionCache.send` evict (and
  close, with ``CloseCode.UNRESPONSIVE``) a connection on which a request timed out or failed with
  a transport-level :class:`~iroh_pair.errors.ConnectionLost`, then, for idempotent requests, dial
  again once and retry once. A handler's :class:`~iroh_pair.errors.RemoteError` (and a
  :class:`~iroh_pair.errors.StreamReset` or :class:`~iroh_pair.errors.FrameTooLarge`) says nothing
  about the connection: it propagates unchanged and nothing is evicted.
* **Adoption.** :meth:`ConnectionCache.adopt` puts a connection the endpoint accepted into the
  cache, so our own requests to that peer on that ALPN reuse it instead of dialing.
* **Simultaneous dials.** When two live connections to the same ``(peer, alpn)`` meet in the cache
  (an inbound connection is adopted while we hold, or are dialing, our own; or our dial completes
  while we hold an adopted one), both ends must keep the *same* one, and they decide without
  talking: the connection dialed by the lower :class:`EndpointId` wins. If our ``local_id`` is the
  lower one we keep the connection whose ``side`` is ``"client"`` (we dialed it), otherwise the
  one whose ``side`` is ``"server"``. A connection that is already closed never wins. If both have
  the same side (the peer dialed us twice, e.g. after a restart) the newer one wins, because that
  is the one the peer holds. The loser leaves the cache at once (new requests go to the winner); it
  is *drained* (the requests the cache has in flight on it finish, up to ``drain_timeout``), held
  open for a further ``duplicate_grace`` seconds so that the peer's own in-flight requests on it
  can complete, and then closed gracefully with ``CloseCode.DUPLICATE``.

Only requests made through the cache (:meth:`~ConnectionCache.request`,
:meth:`~ConnectionCache.send`, :meth:`~ConnectionCache.lease`) are counted as in flight for
draining; a caller that opens its own streams on a connection from :meth:`~ConnectionCache.get`
should hold it with :meth:`~ConnectionCache.lease` instead.

The connection type is structural (:class:`CacheableConnection`); the real
:class:`iroh_pair.Connection` satisfies it, and so do the fakes in the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from iroh_pair.errors import CacheClosedError, ConnectionLost
from iroh_pair.protocol.constants import CloseCode

__all__ = [
    "DEFAULT",
    "CacheStats",
    "CacheableConnection",
    "ConnectionCache",
    "PeerId",
]

log = logging.getLogger("iroh_pair.cache")

class _DefaultType(enum.Enum):
    """Type of the :data:`DEFAULT` sentinel (distinct from ``None``, which means "no timeout")."""

    DEFAULT = "DEFAULT"

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT = _DefaultType.DEFAULT
"""Sentinel for "use the cache's configured default" (``timeout=DEFAULT``)."""


class PeerId(Protocol):
    """What the cache needs from a peer id (:class:`iroh_pair.transport.EndpointId`).

    Hashable (it is part of a dict key) and totally ordered by ``<`` (the tie break compares it).
    """

    def __hash__(self) -> int: ...

    def __eq__(self, other: object, /) -> bool: ...

    def __lt__(self, other: Any, /) -> bool: ...


P = TypeVar("P", bound=PeerId)
P_co = TypeVar("P_co", bound=PeerId, covariant=True)


class CacheableConnection(Protocol[P_co]):
    """What the cache needs from a connection; :class:`iroh_pair.transport.Connection` has it.

    The number of request streams in flight is tracked by the cache itself (see
    :meth:`ConnectionCache.lease`), so connections need not report it.
    """

    @property
    def remote_id(self) -> P_co:
        """The peer's endpoint id."""
        ...

    @property
    def alpn(self) -> bytes:
        """The ALPN the connection was negotiated for."""
        ...

    @property
    def side(self) -> str:
        """``"client"`` if we dialed the connection, ``"server"`` if we accepted it."""
        ...

    @property
    def is_closed(self) -> bool:
        """Whether the connection is closed (for any reason, by either side)."""
        ...

    def closed(self) -> Awaitable[object]:
        """Wait until the connection is closed; the result (a ``CloseInfo``) is not used."""
        ...

    def close(self, code: int = 0, reason: bytes = b"") -> None:
        """Close the connection with an application ``code`` and ``reason`` (idempotent)."""
        ...

    def request(
        self, payload: bytes, *, max_response: int, timeout: float | None
    ) -> Awaitable[bytes]:
        """Open a bidirectional stream, send ``payload``, finish, and read the whole reply."""
        ...


C = TypeVar("C", bound=CacheableConnection[Any])

@dataclass(frozen=True)
class CacheStats:
    """A snapshot of a :class:`ConnectionCache`'s counters and state.

    Counters (monotonic since the cache was created):

    * ``dials``: dials started (one per single-flight dial, however many callers shared it);
    * ``dial_failures``: dials that raised;
    * ``reuses``: :meth:`~ConnectionCache.get` calls answered by an already cached connection;
    * ``adoptions``: inbound connections put in the cache by :meth:`~ConnectionCache.adopt`;
    * ``evictions``: cached connections removed because they closed or a request on them timed
      out or lost the connection;
    * ``retries``: requests retried on a fresh connection after such an eviction;
    * ``duplicates``: connections that lost a simultaneous-dial tie break (drained, then closed
      with ``CloseCode.DUPLICATE``).

    Gauges (current state):

    * ``live``: cached connections (one per key at most);
    * ``dialing``: dials in flight;
    * ``draining``: tie-break losers not yet closed;
    * ``in_flight``: requests and leases the cache has in flight, on all its connections.
    """

    dials: int
    dial_failures: int
    reuses: int
    adoptions: int
    evictions: int
    retries: int
    duplicates: int
    live: int
    dialing: int
    draining: int
    in_flight: int


class _Record(Generic[C]):
    """The cache's bookkeeping for one connection it has seen (live or draining)."""

    __slots__ = ("conn", "key", "origin", "in_flight", "idle", "watcher", "drainer")

    def __init__(self, conn: C, key: tuple[Any, bytes], origin: str) -> None:
        self.conn = conn
        self.key = key
        self.origin = origin  # "dialed" or "adopted"
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.watcher: asyncio.Task[None] | None = None
        self.drainer: asyncio.Task[None] | None = None

    def acquire(self) -> None:
        """Count one more request or lease in flight on the connection."""
        self.in_flight += 1
        self.idle.clear()

    def release(self) -> None:
        """Count one request or lease fewer; wake the drainer when none are left."""
        self.in_flight -= 1
        if self.in_flight <= 0:
            self.in_flight = 0
            self.idle.set()


def _short(peer: object) -> str:
    """A short printable form of a peer id for logs and ``repr``."""
    text = str(peer)
    return text if len(text) <= 12 else text[:10] + ".."


def _fmt_key(key: tuple[Any, bytes]) -> str:
    peer, alpn = key
    try:
        alpn_text = alpn.decode("ascii")
    except UnicodeDecodeError:
        alpn_text = alpn.hex()
    return f"{_short(peer)}/{alpn_text}"


def _consume_result(task: asyncio.Task[Any]) -> None:
    """Retrieve a finished task's exception so asyncio does not warn when nobody awaited it."""
    if not task.cancelled():
        task.exception()


class ConnectionCache(Generic[P, C]):
    """One live connection per ``(peer id, ALPN)``, with single-flight dialing and eviction.

    :param local_id: our own endpoint id, compared with peers' ids in the simultaneous-dial tie
        break.
    :param dialer: ``async def dial(peer_id, alpn) -> connection``; e.g.
        ``lambda peer, alpn: endpoint.connect(peer, alpn, timeout=10.0)``. It should apply its own
        connect timeout.
    :param default_timeout: the per-request timeout (seconds, ``None`` for none) used by
        :meth:`request` and :meth:`send` when they are not given one. It applies to each attempt
        on a connection, not to dialing.
    :param default_max_response: the largest reply :meth:`request` accepts when not told.
    :param drain_timeout: how long a tie-break loser may take to finish the cache's in-flight
        requests on it before it is closed anyway (``None``: wait for ever).
    :param duplicate_grace: how long a drained tie-break loser is then held open before it is
        closed, so that requests the *peer* started on it before it saw the duplicate can finish.

    Use it as ``async with ConnectionCache(...) as cache:`` or call :meth:`aclose` when done.
    All methods must be called from the event loop the cache is used on.
    """

    def __init__(
        self,
        local_id: P,
        dialer: Callable[[P, bytes], Awaitable[C]],
        *,
        default_timeout: float | None = 30.0,
        default_max_response: int = 1 << 20,
        drain_timeout: float | None = 30.0,
        duplicate_grace: float = 0.25,
    ) -> None:
        self._local_id = local_id
        self._dialer = dialer
        self._default_timeout = default_timeout
        self._default_max_response = default_max_response
        self._drain_timeout = drain_timeout
        self._duplicate_grace = duplicate_grace

        self._live: dict[tuple[P, bytes], _Record[C]] = {}
        self._dialing: dict[tuple[P, bytes], asyncio.Task[C]] = {}
        # Every connection the cache owns (live or draining), by identity.
        self._records: dict[int, _Record[C]] = {}
        self._closed = False

        self._dials = 0
        self._dial_failures = 0
        self._reuses = 0
        self._adoptions = 0
        self._evictions = 0
        self._retries = 0
        self._duplicates = 0

    # -----------------------------------------------------------------------------------------
    # Public API
    # -----------------------------------------------------------------------------------------

    @property
    def local_id(self) -> P:
        """Our own endpoint id."""
        return self._local_id

    @property
    def is_closed(self) -> bool:
        """Whether :meth:`aclose` has been called."""
        return self._closed

    async def get(self, peer_id: P, alpn: bytes) -> C:
        """Return the live connection to ``peer_id`` on ``alpn``, dialing only if there is none.

        Concurrent callers for the same key share one dial. Cancelling this call does not cancel
        the dial (other callers may be waiting on it; its connection is cached when it arrives).

        :raises CacheClosedError: the cache is closed (also if it is closed during the dial).
        :raises Exception: whatever the dialer raised (e.g. :class:`~iroh_pair.errors.ConnectError`);
            the failure is not cached.
        """
        key = (peer_id, alpn)
        conn = self._reuse(key)
        if conn is not None:
            return conn
        task = self._dialing.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(
                self._dial(key), name=f"iroh_pair.cache.dial({_fmt_key(key)})"
            )
            task.add_done_callback(_consume_result)
            self._dialing[key] = task
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            we_were_cancelled = current is not None and current.cancelling() > 0
            if task.cancelled() and self._closed and not we_were_cancelled:
                raise CacheClosedError("the connection cache was closed during the dial") from None
            raise

    def peek(self, peer_id: P, alpn: bytes) -> C | None:
        """The cached live connection for ``(peer_id, alpn)`` if there is one; never dials."""
        rec = self._live_record((peer_id, alpn))
        return None if rec is None else rec.conn

    @contextlib.asynccontextmanager
    async def lease(self, peer_id: P, alpn: bytes) -> AsyncIterator[C]:
        """``async with cache.lease(peer, alpn) as conn:`` -- :meth:`get`, counted as in flight.

        While the block runs, the connection counts as busy: if it loses a simultaneous-dial tie
        break it is not closed before the block exits (or ``drain_timeout`` passes). Use this to
        open your own streams on a cached connection.
        """
        conn = await self.get(peer_id, alpn)
        rec = self._records.get(id(conn))
        if rec is not None:
            rec.acquire()
        try:
            yield conn
        finally:
            if rec is not None:
                rec.release()

    async def request(
        self,
        peer_id: P,
        alpn: bytes,
        payload: bytes | Callable[[C], bytes],
        *,
        timeout: float | None | _DefaultType = DEFAULT,
        max_response: int | None = None,
        idempotent: bool = True,
    ) -> bytes:
        """Send ``payload`` to ``peer_id`` on ``alpn`` over a new stream and return the reply.

        ``payload`` may be a function of the connection, called for each attempt: messages
        sealed with per-connection keys are sealed again for the connection of a retry.

        Uses :meth:`get`, then ``conn.request(payload, max_response=..., timeout=...)``.

        If the request times out (:class:`~iroh_pair.errors.Timeout` / :class:`TimeoutError`) or
        the connection is lost (:class:`~iroh_pair.errors.ConnectionLost`), the connection is
        evicted and closed with ``CloseCode.UNRESPONSIVE``; then, if ``idempotent``, the cache
        dials again (once) and retries (once), counting a retry. A non-idempotent request is not
        retried (the peer may have processed it) and the error propagates.

        A :class:`~iroh_pair.errors.RemoteError` (the peer's handler failed),
        :class:`~iroh_pair.errors.StreamReset` or :class:`~iroh_pair.errors.FrameTooLarge`
        propagates unchanged and leaves the connection cached.

        :param timeout: per attempt, in seconds; ``None`` for none; default: the cache's
            ``default_timeout``. The dial is bounded by the dialer, not by this.
        :param max_response: the largest reply accepted; default: ``default_max_response``.
        :param idempotent: whether the request may safely be delivered twice.
        """
        to = self._default_timeout if isinstance(timeout, _DefaultType) else timeout
        limit = self._default_max_response if max_response is None else max_response
        key = (peer_id, alpn)
        # One coroutine for the whole request, with no await on the way when the connection is
        # cached: this is the hot path of every message.
        for attempt in (1, 2):
            conn = self._reuse(key)
            if conn is None:
                conn = await self.get(peer_id, alpn)
            rec = self._records.get(id(conn))  # counted as in flight, for draining
            try:
                if rec is not None:
                    rec.acquire()
                try:
                    data = payload(conn) if callable(payload) else payload
                    return await conn.request(data, max_response=limit, timeout=to)
                finally:
                    if rec is not None:
                        rec.release()
            except (TimeoutError, ConnectionLost) as exc:
                self._evict_failed(conn, exc)
                if attempt == 2 or not idempotent or self._closed:
                    raise
                self._retries += 1
                log.debug("retrying request to %s after %s", _fmt_key(key), type(exc).__name__)
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def send(
        self,
        peer_id: P,
        alpn: bytes,
        payload: bytes,
        *,
        timeout: float | None | _DefaultType = DEFAULT,
        idempotent: bool = True,
    ) -> None:
        """Send a one-way message to ``peer_id`` on ``alpn``.

        It is a :meth:`request` that expects an empty reply (``max_response=0``), so it completes
        when the peer has read the whole message and finished its side of the stream, and it
        raises the same errors, with the same eviction and retry. With ``idempotent=True`` (the
        default) a message may be delivered twice if the first attempt timed out after the peer
        read it; the receiver must tolerate that (iroh-pair's messaging has a replay window).
        """
        await self.request(
            peer_id, alpn, payload, timeout=timeout, max_response=0, idempotent=idempotent
        )

    def adopt(self, conn: C) -> bool:
        """Put a connection the endpoint accepted (or otherwise obtained) into the cache.

        Later :meth:`get` / :meth:`request` calls for ``(conn.remote_id, conn.alpn)`` reuse it.
        If a live connection for that key is already cached, the simultaneous-dial tie break
        decides which one stays; the loser is drained and closed with ``CloseCode.DUPLICATE``.
        If one of our dials to that key is in flight, the tie break happens when it completes.

        :returns: whether ``conn`` is now the cached connection for its key (``False`` if it was
            already closed or lost the tie break).
        :raises CacheClosedError: the cache is closed (``conn`` is then closed with
            ``CloseCode.CACHE_SHUTDOWN``).
        """
        if self._closed:
            conn.close(CloseCode.CACHE_SHUTDOWN, b"connection cache closed")
            raise CacheClosedError("the connection cache is closed")
        key: tuple[P, bytes] = (conn.remote_id, conn.alpn)
        existing = self._records.get(id(conn))
        if existing is not None:
            return self._live.get(key) is existing
        if conn.is_closed:
            log.debug("not adopting %s: already closed", _fmt_key(key))
            return False
        self._adoptions += 1
        log.debug("adopting %s connection %s", conn.side, _fmt_key(key))
        winner = self._install(key, conn, origin="adopted")
        return winner.conn is conn

    def stats(self) -> CacheStats:
        """A snapshot of the counters and gauges (see :class:`CacheStats`)."""
        draining = sum(1 for r in self._records.values() if r.drainer is not None)
        return CacheStats(
            dials=self._dials,
            dial_failures=self._dial_failures,
            reuses=self._reuses,
            adoptions=self._adoptions,
            evictions=self._evictions,
            retries=self._retries,
            duplicates=self._duplicates,
            live=len(self._live),
            dialing=len(self._dialing),
            draining=draining,
            in_flight=sum(r.in_flight for r in self._records.values()),
        )

    async def aclose(self) -> None:
        """Close the cache: close every connection it holds with ``CloseCode.CACHE_SHUTDOWN``.

        In-flight dials are cancelled (their waiters get :class:`CacheClosedError`), draining is
        cut short, watchers are stopped, and later :meth:`get`, :meth:`request`, :meth:`send` and
        :meth:`adopt` raise :class:`CacheClosedError`. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        log.debug("closing connection cache: %r", self)
        tasks: list[asyncio.Task[Any]] = []
        for task in self._dialing.values():
            task.cancel()
            tasks.append(task)
        self._dialing.clear()
        records = list(self._records.values())
        self._records.clear()
        self._live.clear()
        for rec in records:
            rec.conn.close(CloseCode.CACHE_SHUTDOWN, b"connection cache closed")
            for t in (rec.watcher, rec.drainer):
                if t is not None:
                    t.cancel()
                    tasks.append(t)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> ConnectionCache[P, C]:
        """Enter ``async with``: returns the cache itself."""
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Leave ``async with``: :meth:`aclose`."""
        await self.aclose()

    def __repr__(self) -> str:
        s = self.stats()
        head = "closed " if self._closed else ""
        parts = [
            f"<ConnectionCache {head}live={s.live} dialing={s.dialing} draining={s.draining}",
            f"dials={s.dials} reuses={s.reuses} adoptions={s.adoptions}",
            f"evictions={s.evictions} retries={s.retries} duplicates={s.duplicates}",
        ]
        states: list[str] = []
        for key, rec in self._live.items():
            states.append(
                f"{_fmt_key(key)}: live({rec.conn.side}, {rec.origin}, in_flight={rec.in_flight})"
            )
        for key in self._dialing:
            states.append(f"{_fmt_key(key)}: dialing")
        for rec in self._records.values():
            if rec.drainer is not None:
                states.append(f"{_fmt_key(rec.key)}: draining(in_flight={rec.in_flight})")
        text = " ".join(parts)
        if states:
            text += " [" + ", ".join(states) + "]"
        return text + ">"

    # -----------------------------------------------------------------------------------------
    # Internals (all state changes are synchronous)
    # -----------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise CacheClosedError("the connection cache is closed")

    def _reuse(self, key: tuple[P, bytes]) -> C | None:
        """The cached live connection for ``key``, counted as a reuse; ``None`` on a miss."""
        self._check_open()
        rec = self._live_record(key)
        if rec is None:
            return None
        self._reuses += 1
        return rec.conn

    def _live_record(self, key: tuple[P, bytes]) -> _Record[C] | None:
        """The live record for ``key``, evicting it first if its connection has closed."""
        rec = self._live.get(key)
        if rec is not None and rec.conn.is_closed:
            self._evict(rec, "closed")
            rec = None
        return rec

    async def _dial(self, key: tuple[P, bytes]) -> C:
        """The body of a single-flight dial task: dial, then install the result."""
        peer_id, alpn = key
        self._dials += 1
        log.debug("dialing %s", _fmt_key(key))
        try:
            conn = await self._dialer(peer_id, alpn)
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                self._dial_failures += 1
                log.debug("dial to %s failed: %r", _fmt_key(key), exc)
            raise
        finally:
            if self._dialing.get(key) is asyncio.current_task():
                del self._dialing[key]
        if self._closed:
            conn.close(CloseCode.CACHE_SHUTDOWN, b"connection cache closed")
            raise CacheClosedError("the connection cache was closed during the dial")
        if conn.is_closed:
            self._dial_failures += 1
            log.debug("dial to %s returned a closed connection", _fmt_key(key))
            raise ConnectionLost("the dialed connection closed before it could be used")
        log.debug("dialed %s", _fmt_key(key))
        return self._install(key, conn, origin="dialed").conn

    def _install(self, key: tuple[P, bytes], conn: C, origin: str) -> _Record[C]:
        """Make ``conn`` (open) a cached connection for ``key``, applying the tie break.

        Returns the record that is live for ``key`` afterwards (the new one or the existing one).
        """
        new = _Record(conn, key, origin)
        existing = self._live_record(key)
        if existing is None:
            self._add(new)
            self._live[key] = new
            return new
        winner = self._tie_break(existing, new)
        loser = new if winner is existing else existing
        if winner is new:
            self._add(new)
            self._live[key] = new
        else:
            self._add(new)  # owned (and watched) while it drains
        self._duplicates += 1
        log.debug(
            "duplicate connection to %s: keeping %s (%s), draining %s (%s)",
            _fmt_key(key),
            winner.conn.side,
            winner.origin,
            loser.conn.side,
            loser.origin,
        )
        self._retire(loser)
        return winner

    def _tie_break(self, existing: _Record[C], new: _Record[C]) -> _Record[C]:
        """Pick the connection both ends keep: the one dialed by the lower endpoint id.

        Both records are open here. If they have the same side, the newer one wins.
        """
        peer_id = existing.key[0]
        preferred = "client" if self._local_id < peer_id else "server"
        existing_ok = existing.conn.side == preferred
        new_ok = new.conn.side == preferred
        if existing_ok and not new_ok:
            return existing
        return new

    def _add(self, rec: _Record[C]) -> None:
        """Own ``rec``: register it and start its close watcher."""
        self._records[id(rec.conn)] = rec
        rec.watcher = asyncio.get_running_loop().create_task(
            self._watch(rec), name=f"iroh_pair.cache.watch({_fmt_key(rec.key)})"
        )

    async def _watch(self, rec: _Record[C]) -> None:
        """Wait for ``rec``'s connection to close, then forget it (evicting it if live)."""
        try:
            await rec.conn.closed()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failing closed() still means the connection is gone
            log.debug("closed() of %s raised %r", _fmt_key(rec.key), exc)
        if self._live.get(rec.key) is rec:
            self._evict(rec, "closed")
        self._forget(rec)

    def _forget(self, rec: _Record[C]) -> None:
        if self._records.get(id(rec.conn)) is rec:
            del self._records[id(rec.conn)]
        if rec.drainer is not None and not rec.drainer.done():
            rec.drainer.cancel()

    def _evict(self, rec: _Record[C], why: str) -> None:
        """Remove ``rec`` from the live map (if it is live there); count an eviction."""
        if self._live.get(rec.key) is rec:
            del self._live[rec.key]
            self._evictions += 1
            log.debug("evicted %s connection %s: %s", rec.conn.side, _fmt_key(rec.key), why)

    def _evict_failed(self, conn: C, exc: BaseException) -> None:
        """After a timeout or lost connection: evict ``conn`` and close it."""
        rec = self._records.get(id(conn))
        if rec is not None:
            self._evict(rec, f"request failed: {type(exc).__name__}")
        conn.close(CloseCode.UNRESPONSIVE, b"request timed out or connection lost")

    def _retire(self, rec: _Record[C]) -> None:
        """Drain a tie-break loser and close it with ``CloseCode.DUPLICATE`` (in a task)."""
        if rec.drainer is None:
            rec.drainer = asyncio.get_running_loop().create_task(
                self._drain(rec), name=f"iroh_pair.cache.drain({_fmt_key(rec.key)})"
            )

    async def _drain(self, rec: _Record[C]) -> None:
        try:
            if rec.in_flight:
                await asyncio.wait_for(rec.idle.wait(), self._drain_timeout)
        except TimeoutError:
            log.debug(
                "draining %s timed out with %d in flight", _fmt_key(rec.key), rec.in_flight
            )
        if self._duplicate_grace > 0 and not rec.conn.is_closed:
            await asyncio.sleep(self._duplicate_grace)
        log.debug("closing duplicate %s connection %s", rec.conn.side, _fmt_key(rec.key))
        rec.conn.close(CloseCode.DUPLICATE, b"duplicate connection")

