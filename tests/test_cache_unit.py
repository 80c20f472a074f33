"""Unit tests of :mod:`iroh_pair._cache` with a fake dialer and fake connections (no Rust, no network).

Peer ids are plain ``int`` (hashable and ordered, like ``EndpointId``). Timing is controlled with
asyncio events: a dial waits on ``FakeDialer.gate`` when it is set, and a fake connection's request
runs an injected handler coroutine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iroh_pair.errors import (
    CacheClosedError,
    ConnectError,
    ConnectionLost,
    FrameTooLarge,
    RemoteError,
    StreamReset,
    Timeout,
)
from iroh_pair import CacheStats, ConnectionCache
from iroh_pair.protocol.constants import CloseCode

ALPN = b"test/1"
Handler = Callable[[bytes], Awaitable[bytes]]


async def echo(payload: bytes) -> bytes:
    """Default request handler: reply ``ok:`` + payload."""
    return b"ok:" + payload


async def hang(payload: bytes) -> bytes:
    """A handler that never answers (a dead peer)."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def empty(payload: bytes) -> bytes:
    """A one-way message handler: read it all, reply nothing."""
    return b""


def gated(gate: asyncio.Event, reply: bytes = b"done") -> Handler:
    """A handler that answers ``reply`` once ``gate`` is set."""

    async def handler(payload: bytes) -> bytes:
        await gate.wait()
        return reply

    return handler


def raising(exc: BaseException) -> Handler:
    """A handler whose request fails with ``exc``."""

    async def handler(payload: bytes) -> bytes:
        raise exc

    return handler


class FakeConn:
    """Satisfies :class:`iroh_pair._cache.CacheableConnection` structurally."""

    def __init__(self, remote_id: int, alpn: bytes, side: str, handler: Handler = echo) -> None:
        self.remote_id = remote_id
        self.alpn = alpn
        self.side = side
        self.handler = handler
        self.close_code: int | None = None
        self.close_reason = b""
        self.requests: list[tuple[bytes, int, float | None]] = []
        self.completed = 0
        self._closed = asyncio.Event()

    @property
    def is_closed(self) -> bool:
        return self._closed.is_set()

    async def closed(self) -> object:
        await self._closed.wait()
        return (self.close_code, self.close_reason)

    def close(self, code: int = 0, reason: bytes = b"") -> None:
        if not self._closed.is_set():
            self.close_code = code
            self.close_reason = reason
            self._closed.set()

    async def request(self, payload: bytes, *, max_response: int, timeout: float | None) -> bytes:
        if self.is_closed:
            raise ConnectionLost("connection closed", code=self.close_code)
        self.requests.append((payload, max_response, timeout))
        work = asyncio.ensure_future(self.handler(payload))
        lost = asyncio.ensure_future(self._closed.wait())
        try:
            done, _ = await asyncio.wait({work, lost}, timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            lost.cancel()
            if not work.done():
                work.cancel()
        if work in done:
            reply = work.result()
            if len(reply) > max_response:
                raise FrameTooLarge("reply too large", len(reply), max_response)
            self.completed += 1
            return reply
        if lost in done:
            raise ConnectionLost("connection closed", code=self.close_code)
        raise Timeout("request timed out")

    def __repr__(self) -> str:
        return f"FakeConn({self.remote_id}, {self.side}, closed={self.is_closed})"


class FakeDialer:
    """An injected dialer: records calls, can be gated, can fail, hands out ``FakeConn``s."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bytes]] = []
        self.gate: asyncio.Event | None = None
        self.failures: list[BaseException] = []
        self.handlers: list[Handler] = []  # handler of the n-th connection; then echo
        self.conns: list[FakeConn] = []
        self.cancelled = 0

    async def __call__(self, peer_id: int, alpn: bytes) -> FakeConn:
        self.calls.append((peer_id, alpn))
        try:
            if self.gate is not None:
                await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.failures:
            raise self.failures.pop(0)
        handler = self.handlers.pop(0) if self.handlers else echo
        conn = FakeConn(peer_id, alpn, "client", handler)
        self.conns.append(conn)
        return conn


async def eventually(pred: Callable[[], bool], timeout: float = 2.0) -> None:
    """Yield to the loop until ``pred()`` is true."""
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.001)


async def settle(n: int = 10) -> None:
    """Let ready tasks run."""
    for _ in range(n):
        await asyncio.sleep(0)


def make_cache(
    local_id: int = 5,
    dialer: FakeDialer | None = None,
    *,
    default_timeout: float | None = 30.0,
    default_max_response: int = 1 << 20,
    drain_timeout: float | None = 30.0,
    duplicate_grace: float = 0.0,
) -> tuple[ConnectionCache[int, FakeConn], FakeDialer]:
    """A cache on a fake dialer; no grace before closing duplicates unless asked."""
    d = dialer if dialer is not None else FakeDialer()
    cache = ConnectionCache(
        local_id,
        d,
        default_timeout=default_timeout,
        default_max_response=default_max_response,
        drain_timeout=drain_timeout,
        duplicate_grace=duplicate_grace,
    )
    return cache, d


# ---------------------------------------------------------------------------------------------
# get: reuse and single flight
# ---------------------------------------------------------------------------------------------


async def test_reuse_many_gets_one_dial() -> None:
    cache, dialer = make_cache()
    async with cache:
        conns = [await cache.get(10, ALPN) for _ in range(5)]
        assert all(c is conns[0] for c in conns)
        assert dialer.calls == [(10, ALPN)]
        s = cache.stats()
        assert (s.dials, s.reuses, s.live) == (1, 4, 1)
        # A different ALPN or peer is a different key.
        other = await cache.get(10, b"other/1")
        assert other is not conns[0]
        assert cache.stats().dials == 2
        assert cache.peek(10, ALPN) is conns[0]
        assert cache.peek(11, ALPN) is None


async def test_hundred_concurrent_gets_share_one_dial() -> None:
    cache, dialer = make_cache()
    dialer.gate = asyncio.Event()
    async with cache:
        tasks = [asyncio.create_task(cache.get(10, ALPN)) for _ in range(100)]
        await settle()
        assert cache.stats().dialing == 1
        dialer.gate.set()
        conns = await asyncio.gather(*tasks)
        assert len(dialer.calls) == 1
        assert all(c is conns[0] for c in conns)
        s = cache.stats()
        assert (s.dials, s.dialing, s.live, s.reuses) == (1, 0, 1, 0)


async def test_cancelled_waiter_does_not_abort_shared_dial() -> None:
    cache, dialer = make_cache()
    dialer.gate = asyncio.Event()
    async with cache:
        tasks = [asyncio.create_task(cache.get(10, ALPN)) for _ in range(3)]
        await settle()
        tasks[0].cancel()
        await settle()
        assert tasks[0].cancelled()
        assert cache.stats().dialing == 1
        dialer.gate.set()
        a, b = await asyncio.gather(tasks[1], tasks[2])
        assert a is b
        assert dialer.cancelled == 0
        assert len(dialer.calls) == 1
        assert cache.peek(10, ALPN) is a


async def test_all_waiters_cancelled_dial_still_cached() -> None:
    cache, dialer = make_cache()
    dialer.gate = asyncio.Event()
    async with cache:
        task = asyncio.create_task(cache.get(10, ALPN))
        await settle()
        task.cancel()
        await settle()
        dialer.gate.set()
        await eventually(lambda: cache.stats().live == 1)
        assert dialer.cancelled == 0
        assert await cache.get(10, ALPN) is dialer.conns[0]
        assert cache.stats().dials == 1


async def test_failed_dial_not_cached_all_waiters_get_error() -> None:
    cache, dialer = make_cache()
    dialer.gate = asyncio.Event()
    boom = ConnectError("no route to peer")
    dialer.failures.append(boom)
    async with cache:
        tasks = [asyncio.create_task(cache.get(10, ALPN)) for _ in range(5)]
        await settle()
        dialer.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(r is boom for r in results)
        s = cache.stats()
        assert (s.dials, s.dial_failures, s.live, s.dialing) == (1, 1, 0, 0)
        conn = await cache.get(10, ALPN)  # redials
        assert len(dialer.calls) == 2
        assert conn is dialer.conns[0]
        assert cache.stats().dials == 2


async def test_request_propagates_dial_error() -> None:
    cache, dialer = make_cache()
    dialer.failures.append(ConnectError("nope"))
    async with cache:
        with pytest.raises(ConnectError):
            await cache.request(10, ALPN, b"x")
        assert cache.stats().retries == 0


# ---------------------------------------------------------------------------------------------
# eviction
# ---------------------------------------------------------------------------------------------


async def test_watcher_evicts_closed_connection_and_next_get_redials() -> None:
    cache, dialer = make_cache()
    async with cache:
        first = await cache.get(10, ALPN)
        first.close(0, b"peer went away")
        await eventually(lambda: cache.stats().live == 0)
        assert cache.stats().evictions == 1
        assert cache.peek(10, ALPN) is None
        second = await cache.get(10, ALPN)
        assert second is not first and not second.is_closed
        s = cache.stats()
        assert (s.dials, s.evictions, s.live) == (2, 1, 1)


async def test_get_never_returns_closed_connection() -> None:
    cache, dialer = make_cache()
    async with cache:
        first = await cache.get(10, ALPN)
        first.close()
        # No yield to the loop in between: the watcher has not run yet.
        second = await cache.get(10, ALPN)
        assert second is not first
        assert not second.is_closed
        await settle()
        # The watcher of the first connection does not count a second eviction.
        s = cache.stats()
        assert (s.dials, s.evictions, s.live) == (2, 1, 1)


async def test_dialer_returning_closed_connection_is_an_error() -> None:
    cache, dialer = make_cache()

    async def closed_dialer(peer: int, alpn: bytes) -> FakeConn:
        conn = FakeConn(peer, alpn, "client")
        conn.close()
        return conn

    cache2 = ConnectionCache(5, closed_dialer, duplicate_grace=0.0)
    async with cache, cache2:
        with pytest.raises(ConnectionLost):
            await cache2.get(10, ALPN)
        assert cache2.stats().live == 0


# ---------------------------------------------------------------------------------------------
# request / send: dead peers, retry, errors that do not evict
# ---------------------------------------------------------------------------------------------


async def test_request_reuses_connection() -> None:
    cache, dialer = make_cache()
    async with cache:
        assert await cache.request(10, ALPN, b"a") == b"ok:a"
        assert await cache.request(10, ALPN, b"b") == b"ok:b"
        s = cache.stats()
        assert (s.dials, s.reuses, s.retries, s.in_flight) == (1, 1, 0, 0)


async def test_stale_connection_timeout_evicts_redials_and_retries() -> None:
    cache, dialer = make_cache()
    dialer.handlers = [hang, echo]
    async with cache:
        reply = await cache.request(10, ALPN, b"ping", timeout=0.05)
        assert reply == b"ok:ping"
        stale, fresh = dialer.conns
        assert stale.close_code == CloseCode.UNRESPONSIVE
        assert cache.peek(10, ALPN) is fresh
        s = cache.stats()
        assert (s.dials, s.retries, s.evictions, s.live) == (2, 1, 1, 1)
        assert [r[0] for r in stale.requests] == [b"ping"]
        assert [r[0] for r in fresh.requests] == [b"ping"]


async def test_asyncio_timeout_error_also_counts_as_timeout() -> None:
    cache, dialer = make_cache()
    dialer.handlers = [raising(asyncio.TimeoutError()), echo]
    async with cache:
        assert await cache.request(10, ALPN, b"x") == b"ok:x"
        assert cache.stats().retries == 1


async def test_connection_lost_evicts_and_retries() -> None:
    cache, dialer = make_cache()
    dialer.handlers = [raising(ConnectionLost("reset", kind="reset")), echo]
    async with cache:
        assert await cache.request(10, ALPN, b"x") == b"ok:x"
        assert dialer.conns[0].close_code == CloseCode.UNRESPONSIVE
        s = cache.stats()
        assert (s.dials, s.retries, s.evictions) == (2, 1, 1)


async def test_retry_fails_too_raises_and_evicts_again() -> None:
    cache, dialer = make_cache()
    dialer.handlers = [hang, hang]
    async with cache:
        with pytest.raises(Timeout):
            await cache.request(10, ALPN, b"x", timeout=0.02)
        s = cache.stats()
        assert (s.dials, s.retries, s.evictions, s.live) == (2, 1, 2, 0)
        assert all(c.close_code == CloseCode.UNRESPONSIVE for c in dialer.conns)


async def test_non_idempotent_request_is_not_retried() -> None:
    cache, dialer = make_cache()
    dialer.handlers = [hang]
    async with cache:
        with pytest.raises(Timeout):
            await cache.request(10, ALPN, b"pay", timeout=0.02, idempotent=False)
        s = cache.stats()
        assert (s.dials, s.retries, s.evictions, s.live) == (1, 0, 1, 0)
        assert dialer.conns[0].close_code == CloseCode.UNRESPONSIVE
        # The next request dials a fresh connection.
        assert await cache.request(10, ALPN, b"again") == b"ok:again"
        assert cache.stats().dials == 2


@pytest.mark.parametrize(
    "exc",
    [
        RemoteError("handler failed", code=7),
        StreamReset("stream reset", code=3),
        FrameTooLarge("too big", 10, 5),
    ],
)
async def test_handler_errors_propagate_and_do_not_evict(exc: Exception) -> None:
    cache, dialer = make_cache()
    dialer.handlers = [raising(exc)]
    async with cache:
        with pytest.raises(type(exc)) as info:
            await cache.request(10, ALPN, b"x")
        assert info.value is exc
        conn = dialer.conns[0]
        assert not conn.is_closed
        assert cache.peek(10, ALPN) is conn
        s = cache.stats()
        assert (s.dials, s.retries, s.evictions, s.live) == (1, 0, 0, 1)


async def test_request_timeout_and_max_response_defaults_and_overrides() -> None:
    cache, dialer = make_cache(default_timeout=1.5, default_max_response=1000)
    async with cache:
        await cache.request(10, ALPN, b"a")
        await cache.request(10, ALPN, b"b", timeout=None, max_response=7)
        await cache.request(10, ALPN, b"c", timeout=0.5)
        assert dialer.conns[0].requests == [(b"a", 1000, 1.5), (b"b", 7, None), (b"c", 1000, 0.5)]


async def test_default_timeout_applies() -> None:
    cache, dialer = make_cache(default_timeout=0.02)
    dialer.handlers = [hang]
    async with cache:
        with pytest.raises(TimeoutError):
            await cache.request(10, ALPN, b"x", idempotent=False)


async def test_send_expects_empty_reply() -> None:
    cache, dialer = make_cache()
    dialer.handlers = [empty]
    async with cache:
        assert await cache.send(10, ALPN, b"hello", timeout=1.0) is None  # type: ignore[func-returns-value]
        assert dialer.conns[0].requests == [(b"hello", 0, 1.0)]
        # A peer that answers something is a protocol error, not a dead connection.
        dialer.conns[0].handler = echo
        with pytest.raises(FrameTooLarge):
            await cache.send(10, ALPN, b"x")
        assert cache.stats().evictions == 0


async def test_send_retries_on_dead_connection() -> None:
    cache, dialer = make_cache()
    dialer.handlers = [hang, empty]
    async with cache:
        await cache.send(10, ALPN, b"m", timeout=0.02)
        s = cache.stats()
        assert (s.dials, s.retries) == (2, 1)


# ---------------------------------------------------------------------------------------------
# adoption and the simultaneous-dial tie break
# ---------------------------------------------------------------------------------------------


async def test_adopted_inbound_is_reused_without_dialing() -> None:
    cache, dialer = make_cache()
    async with cache:
        inbound = FakeConn(10, ALPN, "server")
        assert cache.adopt(inbound) is True
        assert await cache.get(10, ALPN) is inbound
        assert await cache.request(10, ALPN, b"q") == b"ok:q"
        assert dialer.calls == []
        s = cache.stats()
        assert (s.dials, s.adoptions, s.reuses, s.live) == (0, 1, 2, 1)
        # Adopting the same connection again is a no-op.
        assert cache.adopt(inbound) is True
        assert cache.stats().adoptions == 1
        # An adopted connection is evicted when it closes, like a dialed one.
        inbound.close()
        await eventually(lambda: cache.stats().live == 0)
        assert await cache.get(10, ALPN) is dialer.conns[0]


async def test_adopting_closed_connection_is_ignored() -> None:
    cache, dialer = make_cache()
    async with cache:
        inbound = FakeConn(10, ALPN, "server")
        inbound.close()
        assert cache.adopt(inbound) is False
        assert cache.stats().live == 0


async def test_tie_break_local_lower_keeps_our_dial_and_drains_inbound() -> None:
    """local 5 < peer 10: the connection we dialed (side "client") wins."""
    cache, dialer = make_cache(local_id=5)
    dialer.gate = asyncio.Event()
    async with cache:
        getter = asyncio.create_task(cache.get(10, ALPN))
        await settle()
        assert cache.stats().dialing == 1
        # The peer's connection arrives while our dial is in flight; it is used meanwhile.
        release = asyncio.Event()
        inbound = FakeConn(10, ALPN, "server", gated(release, b"answer"))
        assert cache.adopt(inbound) is True
        in_flight = asyncio.create_task(cache.request(10, ALPN, b"q"))
        await eventually(lambda: len(inbound.requests) == 1)
        # Our dial completes: the tie break keeps it; the inbound loses and is drained.
        dialer.gate.set()
        ours = await getter
        assert ours is dialer.conns[0] and ours.side == "client"
        assert cache.peek(10, ALPN) is ours
        await settle()
        assert not inbound.is_closed  # still draining: a request is in flight on it
        assert cache.stats().draining == 1
        assert "draining" in repr(cache)
        release.set()
        assert await in_flight == b"answer"
        await eventually(lambda: inbound.is_closed)
        assert inbound.close_code == CloseCode.DUPLICATE
        assert not ours.is_closed
        s = cache.stats()
        assert (s.duplicates, s.live, s.dials, s.adoptions, s.evictions) == (1, 1, 1, 1, 0)
        await eventually(lambda: cache.stats().draining == 0)
        # Later requests use the winner.
        assert await cache.request(10, ALPN, b"z") == b"ok:z"
        assert ours.completed == 1


async def test_tie_break_local_lower_rejects_inbound_when_outbound_cached() -> None:
    cache, dialer = make_cache(local_id=5)
    async with cache:
        ours = await cache.get(10, ALPN)
        inbound = FakeConn(10, ALPN, "server")
        assert cache.adopt(inbound) is False
        assert cache.peek(10, ALPN) is ours
        await eventually(lambda: inbound.is_closed)
        assert inbound.close_code == CloseCode.DUPLICATE
        assert not ours.is_closed
        assert cache.stats().duplicates == 1


async def test_tie_break_local_higher_adopts_inbound_and_drains_our_dial() -> None:
    """local 20 > peer 10: the connection the peer dialed (side "server" here) wins."""
    cache, dialer = make_cache(local_id=20)
    release = asyncio.Event()
    dialer.handlers = [gated(release, b"answer")]
    async with cache:
        ours = await cache.get(10, ALPN)
        in_flight = asyncio.create_task(cache.request(10, ALPN, b"q"))
        await eventually(lambda: len(ours.requests) == 1)
        inbound = FakeConn(10, ALPN, "server")
        assert cache.adopt(inbound) is True
        assert await cache.get(10, ALPN) is inbound
        await settle()
        assert not ours.is_closed  # drained first
        release.set()
        assert await in_flight == b"answer"
        await eventually(lambda: ours.is_closed)
        assert ours.close_code == CloseCode.DUPLICATE
        assert not inbound.is_closed
        s = cache.stats()
        assert (s.duplicates, s.live, s.dials, s.adoptions) == (1, 1, 1, 1)


async def test_tie_break_local_higher_dial_completing_after_adoption_loses() -> None:
    cache, dialer = make_cache(local_id=20)
    dialer.gate = asyncio.Event()
    async with cache:
        getter = asyncio.create_task(cache.get(10, ALPN))
        await settle()
        inbound = FakeConn(10, ALPN, "server")
        assert cache.adopt(inbound) is True
        dialer.gate.set()
        # The waiter of our dial gets the winner, the inbound connection.
        assert await getter is inbound
        ours = dialer.conns[0]
        await eventually(lambda: ours.is_closed)
        assert ours.close_code == CloseCode.DUPLICATE
        assert cache.peek(10, ALPN) is inbound
        assert cache.stats().duplicates == 1


async def test_both_perspectives_agree_on_the_winner() -> None:
    """Simulate both ends: each holds its half of the same two connections."""
    a_id, b_id = 3, 9
    a_cache, a_dialer = make_cache(local_id=a_id)
    b_cache, b_dialer = make_cache(local_id=b_id)
    async with a_cache, b_cache:
        # Connection X: a dialed b.  Connection Y: b dialed a.
        a_x = await a_cache.get(b_id, ALPN)  # a's client half of X
        b_y = await b_cache.get(a_id, ALPN)  # b's client half of Y
        b_x = FakeConn(a_id, ALPN, "server")  # b's server half of X
        a_y = FakeConn(b_id, ALPN, "server")  # a's server half of Y
        a_cache.adopt(a_y)
        b_cache.adopt(b_x)
        # Both keep X, the one dialed by the lower id (a).
        assert a_cache.peek(b_id, ALPN) is a_x
        assert b_cache.peek(a_id, ALPN) is b_x
        await eventually(lambda: a_y.is_closed and b_y.is_closed)
        assert a_y.close_code == b_y.close_code == CloseCode.DUPLICATE


async def test_closed_connection_never_wins_tie_break() -> None:
    # local lower prefers our "client" connection, but it is closed: the inbound is kept.
    cache, dialer = make_cache(local_id=5)
    async with cache:
        ours = await cache.get(10, ALPN)
        ours.close()  # the watcher has not run yet
        inbound = FakeConn(10, ALPN, "server")
        assert cache.adopt(inbound) is True
        assert cache.peek(10, ALPN) is inbound
        assert await cache.get(10, ALPN) is inbound
        s = cache.stats()
        assert (s.duplicates, s.evictions, s.dials) == (0, 1, 1)

    # local higher prefers the "server" connection, but the adopted one is closed: ours stays.
    cache, dialer = make_cache(local_id=20)
    async with cache:
        ours = await cache.get(10, ALPN)
        inbound = FakeConn(10, ALPN, "server")
        inbound.close()
        assert cache.adopt(inbound) is False
        assert cache.peek(10, ALPN) is ours
        assert not ours.is_closed
        assert cache.stats().duplicates == 0


async def test_second_inbound_from_same_peer_replaces_first() -> None:
    cache, dialer = make_cache(local_id=20)
    async with cache:
        first = FakeConn(10, ALPN, "server")
        second = FakeConn(10, ALPN, "server")
        assert cache.adopt(first) is True
        assert cache.adopt(second) is True
        assert cache.peek(10, ALPN) is second
        await eventually(lambda: first.is_closed)
        assert first.close_code == CloseCode.DUPLICATE


async def test_lease_holds_loser_open_until_released() -> None:
    cache, dialer = make_cache(local_id=20)
    async with cache:
        async with cache.lease(10, ALPN) as ours:
            assert cache.stats().in_flight == 1
            assert cache.adopt(FakeConn(10, ALPN, "server")) is True
            await settle()
            assert not ours.is_closed
        await eventually(lambda: ours.is_closed)
        assert ours.close_code == CloseCode.DUPLICATE
        assert cache.stats().in_flight == 0


async def test_drain_timeout_closes_anyway() -> None:
    cache, dialer = make_cache(local_id=20, drain_timeout=0.02)
    dialer.handlers = [hang]
    async with cache:
        ours = await cache.get(10, ALPN)
        stuck = asyncio.create_task(cache.request(10, ALPN, b"q", idempotent=False))
        await eventually(lambda: len(ours.requests) == 1)
        cache.adopt(FakeConn(10, ALPN, "server"))
        await eventually(lambda: ours.is_closed)
        assert ours.close_code == CloseCode.DUPLICATE
        with pytest.raises(ConnectionLost):
            await stuck


async def test_duplicate_grace_delays_close() -> None:
    cache, dialer = make_cache(local_id=20, duplicate_grace=0.05)
    async with cache:
        ours = await cache.get(10, ALPN)
        cache.adopt(FakeConn(10, ALPN, "server"))
        await asyncio.sleep(0.01)
        assert not ours.is_closed
        await eventually(lambda: ours.is_closed)
        assert ours.close_code == CloseCode.DUPLICATE


# ---------------------------------------------------------------------------------------------
# aclose, repr, counters, logging
# ---------------------------------------------------------------------------------------------


async def test_aclose_closes_everything_and_later_get_raises() -> None:
    cache, dialer = make_cache(local_id=20)
    a = await cache.get(10, ALPN)
    b = await cache.get(11, ALPN)
    draining_release = asyncio.Event()
    a.handler = gated(draining_release)
    pending = asyncio.create_task(cache.request(10, ALPN, b"q", idempotent=False))
    await eventually(lambda: len(a.requests) == 1)
    inbound = FakeConn(10, ALPN, "server")
    cache.adopt(inbound)  # a is now draining
    dialer.gate = asyncio.Event()
    waiter = asyncio.create_task(cache.get(12, ALPN))
    await settle()
    assert cache.stats().dialing == 1

    await cache.aclose()
    assert cache.is_closed
    for conn in (a, b, inbound):
        assert conn.close_code == CloseCode.CACHE_SHUTDOWN
    assert dialer.cancelled == 1
    with pytest.raises(CacheClosedError):
        await waiter
    with pytest.raises(ConnectionLost):
        await pending
    with pytest.raises(CacheClosedError):
        await cache.get(10, ALPN)
    with pytest.raises(CacheClosedError):
        await cache.request(10, ALPN, b"x")
    late = FakeConn(13, ALPN, "server")
    with pytest.raises(CacheClosedError):
        cache.adopt(late)
    assert late.close_code == CloseCode.CACHE_SHUTDOWN
    s = cache.stats()
    assert (s.live, s.dialing, s.draining) == (0, 0, 0)
    assert repr(cache).startswith("<ConnectionCache closed ")
    await cache.aclose()  # idempotent


async def test_async_with_closes() -> None:
    cache, dialer = make_cache()
    async with cache as c:
        assert c is cache
        conn = await cache.get(10, ALPN)
    assert conn.close_code == CloseCode.CACHE_SHUTDOWN
    with pytest.raises(CacheClosedError):
        await cache.get(10, ALPN)


async def test_repr_shows_counters_and_per_key_state() -> None:
    cache, dialer = make_cache()
    async with cache:
        assert repr(cache) == (
            "<ConnectionCache live=0 dialing=0 draining=0 dials=0 reuses=0 adoptions=0 "
            "evictions=0 retries=0 duplicates=0>"
        )
        await cache.get(10, ALPN)
        await cache.get(10, ALPN)
        cache.adopt(FakeConn(11, ALPN, "server"))
        dialer.gate = asyncio.Event()
        task = asyncio.create_task(cache.get(12, ALPN))
        await settle()
        text = repr(cache)
        assert text.startswith("<ConnectionCache live=2 dialing=1 draining=0 dials=2 reuses=1 ")
        assert "adoptions=1" in text
        assert "10/test/1: live(client, dialed, in_flight=0)" in text
        assert "11/test/1: live(server, adopted, in_flight=0)" in text
        assert "12/test/1: dialing" in text
        dialer.gate.set()
        await task


async def test_counters() -> None:
    cache, dialer = make_cache(local_id=5)
    dialer.handlers = [echo, hang]
    async with cache:
        await cache.request(10, ALPN, b"1")  # dial
        await cache.request(10, ALPN, b"2")  # reuse
        cache.adopt(FakeConn(11, ALPN, "server"))  # adoption
        await cache.request(11, ALPN, b"3")  # reuse of the adopted one
        await cache.request(12, ALPN, b"4", timeout=0.02)  # dial, timeout, evict, dial, retry
        dialer.conns[0].close()  # eviction by the watcher
        await eventually(lambda: cache.stats().live == 2)
        cache.adopt(FakeConn(11, ALPN, "server"))  # same side as the cached one: newer wins
        assert cache.stats() == CacheStats(
            dials=3,
            dial_failures=0,
            reuses=2,
            adoptions=2,
            evictions=2,
            retries=1,
            duplicates=1,
            live=2,
            dialing=0,
            draining=1,
            in_flight=0,
        )


async def test_debug_logging(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="iroh_pair.cache")
    cache, dialer = make_cache()
    async with cache:
        conn = await cache.get(10, ALPN)
        cache.adopt(FakeConn(11, ALPN, "server"))
        conn.close()
        await eventually(lambda: cache.stats().live == 1)
    messages = [r.getMessage() for r in caplog.records if r.name == "iroh_pair.cache"]
    assert any(m.startswith("dialing 10/test/1") for m in messages)
    assert any(m.startswith("adopting server connection 11/test/1") for m in messages)
    assert any(m.startswith("evicted client connection 10/test/1") for m in messages)


# ---------------------------------------------------------------------------------------------
# property: random interleavings keep the invariants
# ---------------------------------------------------------------------------------------------

OPS = st.lists(
    st.sampled_from(["get", "request", "adopt_server", "adopt_client", "close_live", "settle"]),
    max_size=25,
)


@settings(max_examples=150, deadline=None, database=None)
@given(local_id=st.sampled_from([5, 20]), ops=OPS)
def test_random_operations_keep_invariants(local_id: int, ops: list[str]) -> None:
    """At most one live connection per key, never a closed one; every loser is closed."""

    async def scenario() -> None:
        cache, dialer = make_cache(local_id=local_id)
        adopted: list[FakeConn] = []
        closed_by_test: list[FakeConn] = []
        async with cache:
            for op in ops:
                if op == "get":
                    conn = await cache.get(10, ALPN)
                    assert not conn.is_closed
                elif op == "request":
                    assert await cache.request(10, ALPN, b"r") == b"ok:r"
                elif op.startswith("adopt_"):
                    inbound = FakeConn(10, ALPN, op.removeprefix("adopt_"))
                    adopted.append(inbound)
                    cache.adopt(inbound)
                elif op == "close_live":
                    live = cache.peek(10, ALPN)
                    if live is not None:
                        live.close()
                        closed_by_test.append(live)
                else:
                    await settle()
                assert cache.stats().live <= 1
                live = cache.peek(10, ALPN)
                assert live is None or not live.is_closed
            await settle(20)
            live = cache.peek(10, ALPN)
            s = cache.stats()
            assert s.dials == len(dialer.conns) == len(dialer.calls)
            assert s.draining == 0
            for conn in [*dialer.conns, *adopted]:
                if conn is live or conn in closed_by_test:
                    continue
                assert conn.is_closed
                assert conn.close_code == CloseCode.DUPLICATE
            assert s.duplicates == sum(
                1 for c in [*dialer.conns, *adopted] if c.close_code == CloseCode.DUPLICATE
            )

    asyncio.run(scenario())
