"""Drives the pairing state machines (:mod:`iroh_pair.protocol.pairing`) over iroh streams.

I/O only: every decision is the state machines'. This module reads and writes frames, passes
in the authenticated remote id, the channel binding and the clock, asks the application to
confirm the SAS, performs the returned events in order, and bounds every wait with a timeout
(docs/PROTOCOL.md §8, §11).

SAS confirmation: both :func:`run_joiner` and :func:`run_host` take ``confirm``, a callback
that gets a :class:`SasCheck` once the SAS is known and returns (or resolves to) ``True`` to
approve or ``False`` to decline. ``None`` approves at once (no user check: a man in the middle
who knows the code is then not detected, §8.3). For example::

    async def ask_user(check: SasCheck) -> bool:
        answer = await asyncio.to_thread(input, f"Do both screens show {check.formatted}? [y/N] ")
        return answer.strip().lower() in ("y", "yes")

    result = await run_joiner(conn, code, local_id=me, info=info, on_paired=store,
                              on_unpaired=forget, confirm=ask_user)
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Union

from iroh_pair.errors import PairingFailed, ProtocolError, StreamReset, TransportError
from iroh_pair.protocol import wire
from iroh_pair.protocol.code import PairingCode
from iroh_pair.protocol.constants import (
    CHANNEL_BINDING_CONTEXT,
    CHANNEL_BINDING_LEN,
    MAX_MESSAGE,
    PAIR_KIND,
    PAIRING_BINDING_LABEL,
    RejectCode,
    StreamErrorCode,
)
from iroh_pair.protocol.device import DeviceInfo
from iroh_pair.protocol.envelope import encode_header
from iroh_pair.protocol.kdf import Role
from iroh_pair.protocol.offer import CONFIRM_TIMEOUT, OfferBook, PairingOffer
from iroh_pair.protocol.pairing import (
    Entropy,
    Event,
    Failed,
    HostHandshake,
    JoinerHandshake,
    Paired,
    PairingResult,
    SasReady,
    SendMessage,
)
from iroh_pair.transport import Connection, RecvStream, SendStream

__all__ = [
    "SasCheck",
    "ConfirmSas",
    "OnPaired",
    "OnUnpaired",
    "run_joiner",
    "run_host",
    "refuse_version_1",
    "refuse",
    "channel_binding",
    "JOINER_REPLY_TIMEOUT",
    "JOINER_FIN_TIMEOUT",
    "HOST_FIRST_FRAME_TIMEOUT",
    "HOST_FIN_TIMEOUT",
    "VERSION_1_REJECT_TEXT",
]

log = logging.getLogger("iroh_pair.pairing")

#: How long the joiner waits for the host's Reply (M2).
JOINER_REPLY_TIMEOUT = 30.0
#: How long the joiner waits, after its Accept, for the host to finish its send side.
JOINER_FIN_TIMEOUT = 5.0
#: How long the host's serve loop waits for a stream's first frame (header + M1).
HOST_FIRST_FRAME_TIMEOUT = 10.0
#: How long the host, once paired, waits for the joiner to have its FIN before it reports it.
HOST_FIN_TIMEOUT = 5.0
#: How long writing one pairing message may take (a peer that grants no flow-control credit
#: cannot hold a handshake, nor an unknown-connection slot, longer than this).
WRITE_TIMEOUT = 10.0


async def _write(send: SendStream, body: bytes) -> None:
    """Writes one frame within :data:`WRITE_TIMEOUT`; a write that cannot complete resets the
    stream (the peer is not reading) and raises TransportError."""
    try:
        await asyncio.wait_for(send.write_frame(body), WRITE_TIMEOUT)
    except TimeoutError:
        raise TransportError(
            f"the peer did not read a pairing message within {WRITE_TIMEOUT:g} s"
        ) from None
#: The Reject text a version-2 host sends on a version-1 (``pair``) stream (§2.1).
VERSION_1_REJECT_TEXT = "pairing version 1 is not supported: this device speaks version 2"
_NO_V2 = "the host does not speak pairing version 2"


@dataclass(frozen=True)
class SasCheck:
    """What the application shows its user to confirm a pairing.

    ``role`` is this side's role, ``peer_id`` the peer's EndpointId (32 bytes), ``sas`` the six
    digits, ``peer_info`` the joiner's device info on the host (``None`` on the joiner: the
    host's info arrives after the host's own approval). ``formatted`` is ``"123 456"``::

        >>> SasCheck(Role.HOST, bytes(32), "123456", None).formatted
        '123 456'
    """

    role: Role
    peer_id: bytes
    sas: str
    peer_info: DeviceInfo | None

    @property
    def formatted(self) -> str:
        """The SAS in two groups of three digits, as users compare it."""
        return f"{self.sas[:3]} {self.sas[3:]}"


#: The SAS confirmation callback: ``True`` (or an awaitable of it) approves, ``False`` declines.
ConfirmSas = Callable[[SasCheck], Union[bool, Awaitable[bool]]]
#: Stores a pairing (runs before the joiner's Accept / before the host finishes).
OnPaired = Callable[[PairingResult], Awaitable[None]]
#: Undoes :data:`OnPaired` (the joiner's host refused after the Accept, e.g. ``INTERNAL``).
OnUnpaired = Callable[[PairingResult], Awaitable[None]]


def channel_binding(conn: Connection) -> bytes:
    """The pairing's channel binding: TLS keying material of this connection (§7.2)."""
    return conn.export_keying_material(
        PAIRING_BINDING_LABEL, CHANNEL_BINDING_CONTEXT, CHANNEL_BINDING_LEN
    )


async def _ask(confirm: ConfirmSas, check: SasCheck) -> bool:
    answer = confirm(check)
    if inspect.isawaitable(answer):
        answer = await answer
    return answer is True


async def _perform(
    events: list[Event],
    send: SendStream,
    on_paired: OnPaired,
    on_sas: Callable[[SasReady], list[Event]],
) -> PairingResult | Failed | None:
    """Performs events in order; returns the terminal one, if any. SasReady goes to ``on_sas``,
    whose events are performed next. When storing the pairing fails, a Reject(``INTERNAL``) is
    sent instead of what followed (the joiner's Accept; the host's FIN), so the peer never
    reports a pairing this side did not keep."""
    outcome: PairingResult | Failed | None = None
    pending = list(events)
    while pending:
        ev = pending.pop(0)
        if isinstance(ev, SendMessage):
            try:
                await _write(send, ev.body)
            except TransportError as e:
                log.debug("could not send a pairing message: %s", e)
        elif isinstance(ev, SasReady):
            pending[:0] = on_sas(ev)
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


class _Waits:
    """The driver's two concurrent waits: the next frame and the user's SAS answer."""

    def __init__(self, recv: RecvStream) -> None:
        self._recv = recv
        self.read: asyncio.Future[bytes | None] | None = None
        self.ask: asyncio.Task[bool] | None = None

    async def next(self, timeout: float) -> tuple[str, object]:
        """("frame", bytes | None | exception), ("answer", bool | exception) or ("timeout", None)."""
        if self.read is None:
            self.read = asyncio.ensure_future(self._recv.read_frame(MAX_MESSAGE))
        waits: set[asyncio.Future[Any]] = {self.read}
        if self.ask is not None:
            waits.add(self.ask)
        done, _ = await asyncio.wait(waits, timeout=max(0.0, timeout),
                                     return_when=asyncio.FIRST_COMPLETED)
        if self.ask is not None and self.ask in done:
            task, self.ask = self.ask, None
            exc = task.exception()
            return "answer", exc if exc is not None else task.result()
        if self.read in done:
            fut, self.read = self.read, None
            exc = fut.exception()
            return "frame", exc if exc is not None else fut.result()
        return "timeout", None

    def cancel(self) -> None:
        for f in (self.read, self.ask):
            if f is not None and not f.done():
                f.cancel()
        self.read = self.ask = None


def _answer(hs: JoinerHandshake | HostHandshake, value: object, now: float) -> list[Event]:
    """The machine's events for the confirm callback's result (or exception)."""
    if hs.is_finished:
        return []
    if isinstance(value, BaseException):
        log.error("the SAS confirmation callback failed: %r", value)
        return hs.abort(RejectCode.INTERNAL, "the SAS confirmation failed")
    if value is True:
        return hs.approve(now) if isinstance(hs, HostHandshake) else hs.approve()
    return hs.decline()


async def run_joiner(
    conn: Connection,
    code: PairingCode,
    *,
    local_id: bytes,
    info: DeviceInfo,
    on_paired: OnPaired,
    on_unpaired: OnUnpaired | None = None,
    confirm: ConfirmSas | None = None,
    reply_timeout: float = JOINER_REPLY_TIMEOUT,
    confirm_timeout: float = CONFIRM_TIMEOUT,
    entropy: Entropy | None = None,
) -> PairingResult:
    """Pairs as the joiner over ``conn`` (dialed to the host named by ``code``).

    Waits ``reply_timeout`` for the host's Reply, then ``confirm_timeout`` for both the host's
    Complete and this side's approval (``confirm``, see the module docstring). ``on_paired``
    stores the pairing before the Accept is sent; then the host's FIN is awaited for
    :data:`JOINER_FIN_TIMEOUT` seconds: if the host sends a Reject instead (it could not store),
    ``on_unpaired`` undoes the storing and :class:`PairingFailed` is raised. A lost connection
    after the Accept keeps the pairing (§5). Raises :class:`PairingFailed` on any failure; a
    host that resets the stream with ``UNKNOWN_KIND``/``NOT_ADMITTED`` before any reply (a
    version-1 host) gives ``UNSUPPORTED_VERSION``.
    """
    hs = JoinerHandshake(
        code,
        joiner_id=local_id,
        host_id=conn.remote_id.to_bytes(),
        channel_binding=channel_binding(conn),
        joiner_info=info,
        entropy=entropy,
    )
    loop = asyncio.get_running_loop()
    try:  # a host that grants no stream (all its streams for strangers in use) is not waited on
        send, recv = await asyncio.wait_for(conn.open_bi(), reply_timeout)
    except TimeoutError:
        raise PairingFailed(RejectCode.TIMEOUT, "the host granted no stream in time") from None
    waits = _Waits(recv)
    deadline = loop.time() + reply_timeout
    replied = False

    def on_sas(ev: SasReady) -> list[Event]:
        nonlocal deadline
        deadline = loop.time() + confirm_timeout
        if confirm is None:
            return hs.approve()
        check = SasCheck(Role.JOINER, conn.remote_id.to_bytes(), ev.sas, ev.peer_info)
        waits.ask = asyncio.ensure_future(_ask(confirm, check))
        return []

    def no_v2(e: StreamReset) -> Failed | None:
        if not replied and e.code in (StreamErrorCode.UNKNOWN_KIND, StreamErrorCode.NOT_ADMITTED):
            hs.connection_lost()
            return Failed(RejectCode.UNSUPPORTED_VERSION, _NO_V2, by_peer=True)
        return None

    try:
        outcome: PairingResult | Failed | None = None
        try:
            await _write(send, encode_header(PAIR_KIND) + hs.start())
        except StreamReset as e:
            outcome = no_v2(e)
            if outcome is None:
                raise
        while outcome is None and not hs.is_finished:
            what, value = await waits.next(deadline - loop.time())
            if what == "answer":
                events = _answer(hs, value, 0.0)
            elif what == "frame":
                if isinstance(value, StreamReset) and (v := no_v2(value)) is not None:
                    outcome = v
                    break
                if isinstance(value, BaseException):
                    log.debug("pairing stream failed: %r", value)
                    events = hs.connection_lost()
                elif value is None:
                    events = hs.connection_lost()
                else:
                    assert isinstance(value, bytes)
                    replied = True
                    events = hs.receive(value)
            else:
                what_for = ("the host's reply" if not replied else
                            "the SAS confirmation" if hs.sas is not None and not hs.approved
                            else "the host's approval")
                events = hs.abort(RejectCode.TIMEOUT, f"timed out waiting for {what_for}")
            outcome = await _perform(events, send, on_paired, on_sas)
        if outcome is None:
            outcome = hs.failure or hs.result
        assert outcome is not None
        if isinstance(outcome, Failed):
            raise PairingFailed(outcome.code, outcome.reason, outcome.by_peer)
        waits.ask = None
        await _await_fin(waits, outcome, on_unpaired, JOINER_FIN_TIMEOUT)
        return outcome
    finally:
        waits.cancel()
        _finish(send)


async def _await_fin(
    waits: _Waits, result: PairingResult, on_unpaired: OnUnpaired | None, timeout: float
) -> None:
    """After the Accept: the host's FIN confirms; a Reject undoes the pairing (§5)."""
    what, value = await waits.next(timeout)
    if what != "frame" or value is None or isinstance(value, BaseException):
        if what == "timeout":
            log.debug("the host did not finish its side in time; keeping the pairing")
        return
    assert isinstance(value, bytes)
    try:
        msg = wire.decode(value)
    except ProtocolError:
        log.warning("unexpected data from the host after the Accept; keeping the pairing")
        return
    if not isinstance(msg, wire.Reject):
        log.warning("unexpected %s from the host after the Accept; keeping the pairing",
                    type(msg).__name__)
        return
    code = RejectCode.from_wire(msg.code)
    if on_unpaired is not None:
        try:
            await on_unpaired(result)
        except Exception:
            log.exception("removing the pairing the host refused failed")
    raise PairingFailed(code, msg.text, by_peer=True)


async def run_host(
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
    first_message: bytes,
    *,
    offers: OfferBook | PairingOffer,
    local_id: bytes,
    info: DeviceInfo,
    on_paired: OnPaired,
    confirm: ConfirmSas | None = None,
    confirm_for: Callable[[PairingOffer], ConfirmSas | None] | None = None,
    counts: Callable[[], None] | None = None,
    entropy: Entropy | None = None,
) -> PairingResult | Failed:
    """Answers one joiner on a ``pair2`` stream whose first message (M1) was already read.

    The SAS is confirmed with ``confirm`` (or, per offer, ``confirm_for(offer)``) within the
    offer's ``confirm_timeout``; the Complete goes out only after the approval. ``on_paired``
    stores the pairing when the joiner's Accept arrives; then the host finishes its send side
    (a Reject(``INTERNAL``) instead when storing fails). Returns the result or the failure (a
    host serves many attempts, so failures are values, not exceptions). ``counts`` is called
    once per pairing message received. On success it returns once the joiner has the FIN (or
    after :data:`HOST_FIN_TIMEOUT`).
    """
    hs = HostHandshake(
        offers,
        host_id=local_id,
        remote_id=conn.remote_id.to_bytes(),
        channel_binding=channel_binding(conn),
        host_info=info,
        entropy=entropy,
    )
    waits = _Waits(recv)

    def on_sas(ev: SasReady) -> list[Event]:
        ask = confirm
        if confirm_for is not None and hs.offer is not None:
            ask = confirm_for(hs.offer)
        if ask is None:
            return hs.approve(time.monotonic())
        check = SasCheck(Role.HOST, conn.remote_id.to_bytes(), ev.sas, ev.peer_info)
        waits.ask = asyncio.ensure_future(_ask(ask, check))
        return []

    try:
        if counts:
            counts()
        outcome = await _perform(hs.receive(first_message, time.monotonic()), send, on_paired, on_sas)
        while outcome is None and not hs.is_finished:
            deadline = hs.deadline
            assert deadline is not None  # set with the Reply
            what, value = await waits.next(deadline - time.monotonic())
            if what == "answer":
                events = _answer(hs, value, time.monotonic())
            elif what == "frame":
                if isinstance(value, BaseException):
                    log.debug("pairing stream failed: %r", value)
                    events = hs.connection_lost()
                elif value is None:
                    events = hs.connection_lost()
                else:
                    assert isinstance(value, bytes)
                    if counts:
                        counts()
                    events = hs.receive(value, time.monotonic())
            else:
                events = hs.check_deadline(time.monotonic()) or hs.abort(RejectCode.TIMEOUT)
            outcome = await _perform(events, send, on_paired, on_sas)
        if outcome is None:
            outcome = hs.failure or hs.result
        assert outcome is not None
        if isinstance(outcome, PairingResult):
            # Stored: the FIN tells the joiner so. Report "paired" only once it arrived: a host
            # that closes right after would otherwise discard it unsent.
            _finish(send)
            try:
                await asyncio.wait_for(send.stopped(), HOST_FIN_TIMEOUT)
            except (TimeoutError, TransportError) as e:
                log.debug("the FIN was not acknowledged: %r", e)
        return outcome
    except BaseException:
        hs.abort(RejectCode.CANCELLED)
        raise
    finally:
        waits.cancel()
        _finish(send)


async def refuse_version_1(send: SendStream) -> None:
    """Answers a version-1 (``pair``) stream: one ``Reject(UNSUPPORTED_VERSION)`` frame, then
    the end of the stream (§2.1). No PAKE work, no attempt counted."""
    reject = wire.Reject.make(RejectCode.UNSUPPORTED_VERSION, VERSION_1_REJECT_TEXT)
    try:
        await _write(send, wire.encode(reject))
    except TransportError as e:
        log.debug("could not refuse a version-1 pairing: %s", e)
    _finish(send)


async def refuse(send: SendStream, code: RejectCode, text: str) -> None:
    """Answers a ``pair2`` stream this node will not serve with one Reject, then finishes."""
    try:
        await _write(send, wire.encode(wire.Reject.make(code, text)))
    except TransportError as e:
        log.debug("could not send a Reject: %s", e)
    _finish(send)


def _finish(send: SendStream) -> None:
    try:
        send.finish()
    except TransportError:
        pass
