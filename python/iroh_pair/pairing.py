"""Drives the pairing state machines (:mod:`iroh_pair.protocol`) over iroh streams.

I/O only: every decision is the state machines'. This module reads and writes frames, passes
in the authenticated remote id, the channel binding and the clock, performs the returned events
in order, and bounds every wait with a timeout (docs/PROTOCOL.md §11).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from .code import PairingCode
from .errors import IrohPairError, TransportError
from .kdf import CHANNEL_BINDING_LABEL
from .protocol import (
    MAX_MESSAGE,
    PAIR_KIND,
    DeviceInfo,
    Event,
    Failed,
    HostHandshake,
    JoinerHandshake,
    OfferBook,
    Paired,
    PairingResult,
    RejectCode,
    SendMessage,
    encode_header,
)
from .protocol import wire
from .transport import Connection, RecvStream, SendStream

__all__ = [
    "PairingFailed",
    "run_joiner",
    "run_host",
    "channel_binding",
    "JOINER_REPLY_TIMEOUT",
    "HOST_FIRST_FRAME_TIMEOUT",
]

log = logging.getLogger("iroh_pair.pairing")

#: How long the joiner waits for each of the host's replies (M2, M4).
JOINER_REPLY_TIMEOUT = 30.0
#: How long the host's serve loop waits for a stream's first frame (header + M1).
HOST_FIRST_FRAME_TIMEOUT = 10.0


class PairingFailed(IrohPairError):
    """Pairing did not complete. ``code`` is the :class:`~iroh_pair.protocol.RejectCode`
    (``WRONG_CODE`` for wrong words), ``by_peer`` whether the other side reported it."""

    def __init__(self, code: RejectCode, reason: str, by_peer: bool = False) -> None:
        who = "the peer" if by_peer else "this side"
        super().__init__(f"pairing failed ({code.name}, reported by {who}): {reason}")
        self.code = code
        self.reason = reason
        self.by_peer = by_peer


def channel_binding(conn: Connection) -> bytes:
    """The pairing's channel binding: TLS keying material of this connection."""
    return conn.export_keying_material(CHANNEL_BINDING_LABEL, b"", 32)


OnPaired = Callable[[PairingResult], Awaitable[None]]


async def _perform(
    events: list[Event], send: SendStream, on_paired: OnPaired
) -> PairingResult | Failed | None:
    """Performs events in order; returns the terminal one, if any. When storing the pairing
    fails, a Reject(``INTERNAL``) is sent instead of what followed (the host's Complete), so
    the joiner never reports a pairing this side did not keep."""
    outcome: PairingResult | Failed | None = None
    pending = list(events)
    while pending:
        ev = pending.pop(0)
        if isinstance(ev, SendMessage):
            try:
                await send.write_frame(ev.body)
            except TransportError as e:
                log.debug("could not send a pairing message: %s", e)
        elif isinstance(ev, Paired):
            try:
                await on_paired(ev.result)
            except Exception:
                log.exception("storing the pairing failed")
                reason = "could not store the pairing"
                reject = wire.encode(wire.Reject(RejectCode.INTERNAL, reason))
                pending = [SendMessage(reject), Failed(RejectCode.INTERNAL, reason)]
                continue
            outcome = ev.result
        elif isinstance(ev, Failed):
            outcome = ev
    return outcome


async def run_joiner(
    conn: Connection,
    code: PairingCode,
    *,
    local_id: bytes,
    info: DeviceInfo,
    on_paired: OnPaired,
    reply_timeout: float = JOINER_REPLY_TIMEOUT,
) -> PairingResult:
    """Pairs as the joiner over ``conn`` (dialed to the host named by ``code``).

    ``on_paired`` runs before the result is returned (store the registry entry there). Raises
    :class:`PairingFailed` on any failure, including a host that does not answer in time.
    """
    hs = JoinerHandshake(
        code,
        joiner_id=local_id,
        host_id=conn.remote_id.to_bytes(),
        channel_binding=channel_binding(conn),
        joiner_info=info,
    )
    send, recv = await conn.open_bi()
    try:
        await send.write_frame(encode_header(PAIR_KIND) + hs.start())
        outcome: PairingResult | Failed | None = None
        while outcome is None:
            try:
                body = await asyncio.wait_for(recv.read_frame(MAX_MESSAGE), reply_timeout)
            except TimeoutError:
                events = hs.abort(RejectCode.TIMEOUT, "no reply from the host in time")
            except TransportError as e:
                log.debug("pairing stream failed: %s", e)
                events = hs.connection_lost()
            else:
                events = hs.connection_lost() if body is None else hs.receive(body)
            outcome = await _perform(events, send, on_paired)
            if outcome is None and hs.is_finished:
                outcome = hs.failure or hs.result
        if isinstance(outcome, Failed):
            raise PairingFailed(outcome.code, outcome.reason, outcome.by_peer)
        return outcome
    finally:
        _finish(send)


async def run_host(
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
    first_message: bytes,
    *,
    offers: OfferBook,
    local_id: bytes,
    info: DeviceInfo,
    on_paired: OnPaired,
    clock: Callable[[], float] = time.monotonic,
    counts: Callable[[], None] | None = None,
    delivery_timeout: float = 5.0,
) -> PairingResult | Failed:
    """Answers one joiner on a ``pair`` stream whose first message (M1) was already read.

    Returns the result or the failure (a host serves many attempts, so failures are values,
    not exceptions). ``counts`` is called once per pairing message received. On success it
    returns once the joiner acknowledged the last message (or after ``delivery_timeout``).
    """
    hs = HostHandshake(
        offers,
        host_id=local_id,
        remote_id=conn.remote_id.to_bytes(),
        channel_binding=channel_binding(conn),
        host_info=info,
    )
    try:
        if counts:
            counts()
        outcome = await _perform(hs.receive(first_message, clock()), send, on_paired)
        while outcome is None and not hs.is_finished:
            deadline = hs.deadline
            wait = None if deadline is None else max(0.0, deadline - clock())
            try:
                body = await asyncio.wait_for(recv.read_frame(MAX_MESSAGE), wait)
            except TimeoutError:
                events = hs.check_deadline(clock()) or hs.abort(RejectCode.TIMEOUT)
            except TransportError as e:
                log.debug("pairing stream failed: %s", e)
                events = hs.connection_lost()
            else:
                if body is not None and counts:
                    counts()
                events = hs.connection_lost() if body is None else hs.receive(body, clock())
            outcome = await _perform(events, send, on_paired)
        if outcome is None:
            outcome = hs.failure or hs.result
        assert outcome is not None
        if isinstance(outcome, PairingResult):
            # Report "paired" only once the joiner has the Complete: a host that closes right
            # after would otherwise discard it unsent, and the joiner would fail.
            _finish(send)
            try:
                await asyncio.wait_for(send.stopped(), delivery_timeout)
            except (TimeoutError, TransportError) as e:
                log.debug("the Complete was not acknowledged: %r", e)
        return outcome
    except BaseException:
        hs.abort(RejectCode.CANCELLED)
        raise
    finally:
        _finish(send)


def _finish(send: SendStream) -> None:
    try:
        send.finish()
    except TransportError:
        pass
