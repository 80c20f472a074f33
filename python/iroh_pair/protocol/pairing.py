"""Sans-I/O state machines of pairing version 2: :class:`HostHandshake`, :class:`JoinerHandshake`.

The driver feeds frame bodies and the user's SAS answer in, and performs the returned events in
order (docs/PROTOCOL.md §5, §8)::

    joiner: body = hs.start() -> send;  events = hs.receive(body);  hs.approve() / hs.decline()
    host:   events = hs.receive(body, now);  hs.approve(now) / hs.decline();  hs.check_deadline(now)

Events:

* :class:`SendMessage` — write the body as one frame;
* :class:`SasReady` — the SAS is known: show it (or approve at once) and answer with
  ``approve()`` / ``decline()``;
* :class:`Paired` — the handshake succeeded: store the registry entry *before* performing the
  following events (the joiner's Accept; the host then finishes its send side);
* :class:`Failed` — terminal; after a local failure it is preceded by ``SendMessage(Reject)``.

After Paired or Failed the machine is finished and drops its secrets; feeding it more raises
``ProtocolError(UNEXPECTED)``. Bad peer input never raises out of ``receive``: it becomes
``[SendMessage(Reject), Failed]``.

Example (both machines in memory, no user confirmation)::

    j = JoinerHandshake(code, joiner_id=jid, host_id=hid, channel_binding=cb, joiner_info=ji)
    h = HostHandshake(offer, host_id=hid, remote_id=jid, channel_binding=cb, host_info=hi)
    m2 = h.receive(j.start(), now)[0].body           # Reply
    m3, sas_j = j.receive(m2)                        # SendMessage(Confirm), SasReady
    (sas_h,) = h.receive(m3.body, now)               # SasReady (the host's user compares)
    (m4,) = h.approve(now)                           # SendMessage(Complete)
    j.approve(); paired_j, m5 = j.receive(m4.body)   # Paired, SendMessage(Accept)
    (paired_h,) = h.receive(m5.body, now)            # Paired
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from iroh_pair.errors import ProtocolError
from iroh_pair.protocol import wire
from iroh_pair.protocol.code import PairingCode
from iroh_pair.protocol.constants import CHANNEL_BINDING_LEN, MAX_MESSAGE, NONCE_LEN, RejectCode
from iroh_pair.protocol.device import DeviceInfo
from iroh_pair.protocol.kdf import (
    PairingKeys,
    Role,
    SessionKeys,
    Transcript,
    commitment,
    compute_sas,
    confirmation_mac,
    derive_pairing_keys,
    verify_commitment,
    verify_confirmation_mac,
)
from iroh_pair.protocol.offer import OfferBook, PairingOffer
from iroh_pair.protocol.seal import open_sealed, seal
from iroh_pair.protocol.spake import ENTROPY_LEN, Spake2

__all__ = [
    "Entropy",
    "SendMessage",
    "SasReady",
    "PairingResult",
    "Paired",
    "Failed",
    "Event",
    "HostHandshake",
    "JoinerHandshake",
]

#: ``entropy(n) -> n random bytes``. The joiner draws its 32-byte nonce, then 64 bytes for
#: SPAKE2; the host draws 64 bytes for SPAKE2, then its 32-byte nonce (fresh per handshake).
Entropy = Callable[[int], bytes]


@dataclass(frozen=True)
class SendMessage:
    """Send ``body`` to the peer as one frame."""

    body: bytes


@dataclass(frozen=True)
class SasReady:
    """The SAS is known: the application compares it and calls ``approve()`` or ``decline()``.

    ``peer_info`` is the joiner's device info on the host; ``None`` on the joiner (the host's
    info arrives sealed in M4, which the host sends only after its own approval)."""

    sas: str
    peer_info: DeviceInfo | None


@dataclass(frozen=True)
class PairingResult:
    """The outcome of a successful pairing, as seen by ``role``."""

    role: Role
    peer_id: bytes
    keys: SessionKeys
    sas: str
    peer_info: DeviceInfo
    transcript_hash: bytes = field(repr=False)
    #: The session tag of the code this pairing used (the host's offer it completed).
    session_tag: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class Paired:
    """The handshake succeeded."""

    result: PairingResult


@dataclass(frozen=True)
class Failed:
    """The handshake failed; ``by_peer`` is True when the peer sent the Reject."""

    code: RejectCode
    reason: str
    by_peer: bool = False


Event = SendMessage | SasReady | Paired | Failed


class _State(enum.Enum):
    START = "start"
    AWAIT_HELLO = "await_hello"
    AWAIT_REPLY = "await_reply"
    AWAIT_CONFIRM = "await_confirm"
    AWAIT_COMPLETE = "await_complete"
    AWAIT_APPROVAL = "await_approval"
    AWAIT_ACCEPT = "await_accept"
    DONE = "done"
    FAILED = "failed"


def _check_len(name: str, value: bytes, n: int) -> None:
    if not isinstance(value, bytes) or len(value) != n:
        raise ValueError(f"{name} must be {n} bytes")


class _Handshake:
    """Shared plumbing: terminal states, failure handling, Reject from the peer."""

    role: Role

    def __init__(self, *, local_id: bytes, remote_id: bytes, channel_binding: bytes,
                 info: DeviceInfo, entropy: Entropy | None) -> None:
        _check_len("local id", local_id, 32)
        _check_len("remote id", remote_id, 32)
        _check_len("channel_binding", channel_binding, CHANNEL_BINDING_LEN)
        if not isinstance(info, DeviceInfo):
            raise TypeError("info must be a DeviceInfo")
        self._local_id = local_id
        self._remote_id = remote_id
        self._cb = channel_binding
        self._info = info
        self._entropy: Entropy = entropy or os.urandom
        self._state = _State.START
        self._keys: PairingKeys | None = None
        self._th = b""
        self._session_tag = b""
        self._sas: str | None = None
        self._peer_info: DeviceInfo | None = None
        self._failure: Failed | None = None
        self._result: PairingResult | None = None

    # -- public -----------------------------------------------------------------------
    @property
    def is_finished(self) -> bool:
        """True once Paired or Failed was emitted."""
        return self._state in (_State.DONE, _State.FAILED)

    @property
    def state(self) -> str:
        """The current state's name (for logs and tests)."""
        return self._state.value

    @property
    def result(self) -> PairingResult | None:
        """The pairing result once Paired was emitted."""
        return self._result

    @property
    def failure(self) -> Failed | None:
        """The Failed event once the handshake failed."""
        return self._failure

    @property
    def sas(self) -> str | None:
        """The 6-digit SAS once SasReady was emitted (joiner after M2, host after M3)."""
        return self._sas

    def abort(self, code: RejectCode = RejectCode.CANCELLED, reason: str = "") -> list[Event]:
        """Give up locally: ``[SendMessage(Reject), Failed]`` (``[]`` if already finished)."""
        if self.is_finished:
            return []
        return self._fail(ProtocolError(code, reason))

    def connection_lost(self) -> list[Event]:
        """The stream or connection ended: ``[Failed(CONNECTION_LOST)]`` unless finished."""
        if self.is_finished:
            return []
        failed = Failed(RejectCode.CONNECTION_LOST, "connection lost")
        self._terminate(failed)
        return [failed]

    def decline(self) -> list[Event]:
        """The user did not confirm the SAS: ``[SendMessage(Reject(SAS_DECLINED)), Failed]``.

        Valid after SasReady and before Paired; raises ``ProtocolError(UNEXPECTED)`` otherwise.
        """
        self._check_sas_answer("decline")
        return self._fail(ProtocolError(RejectCode.SAS_DECLINED, "the SAS was not confirmed"))

    # -- internals --------------------------------------------------------------------
    def _check_sas_answer(self, what: str) -> None:
        if self._state not in (_State.AWAIT_COMPLETE, _State.AWAIT_APPROVAL):
            raise ProtocolError(RejectCode.UNEXPECTED, f"{what}() in {self.state}")

    def _terminate(self, failed: Failed) -> None:
        self._state = _State.FAILED
        self._failure = failed
        self._drop_secrets()

    def _drop_secrets(self) -> None:
        self._keys = None

    def _fail(self, err: ProtocolError) -> list[Event]:
        failed = Failed(err.code, err.reason)
        self._terminate(failed)
        if err.code >= 0x400:
            return [failed]
        return [SendMessage(wire.encode(wire.Reject.make(err.code, err.reason))), failed]

    def _decode(self, body: bytes) -> wire.Message:
        if self.is_finished:
            raise ProtocolError(RejectCode.UNEXPECTED, "handshake is finished")
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise TypeError("body must be bytes")
        if len(body) > MAX_MESSAGE:
            raise ProtocolError(RejectCode.TOO_LARGE, f"{len(body)} > {MAX_MESSAGE} bytes")
        return wire.decode(bytes(body))

    def _peer_rejected(self, msg: wire.Reject) -> list[Event]:
        failed = Failed(RejectCode.from_wire(msg.code), msg.text, by_peer=True)
        self._terminate(failed)
        return [failed]

    def _transcript(self, joiner_msg: bytes, host_msg: bytes, tag: bytes, commit: bytes,
                    host_nonce: bytes) -> bytes:
        host_id, joiner_id = (
            (self._local_id, self._remote_id) if self.role is Role.HOST
            else (self._remote_id, self._local_id)
        )
        return Transcript(
            joiner_id=joiner_id,
            host_id=host_id,
            session_tag=tag,
            joiner_msg=joiner_msg,
            host_msg=host_msg,
            channel_binding=self._cb,
            commitment=commit,
            host_nonce=host_nonce,
        ).hash()

    def _draw(self, n: int) -> bytes:
        data = self._entropy(n)
        if not isinstance(data, bytes) or len(data) != n:
            raise ValueError(f"entropy({n}) must return {n} bytes")
        return data

    def _succeed(self) -> Paired:
        assert self._keys is not None and self._sas is not None and self._peer_info is not None
        self._result = PairingResult(
            role=self.role,
            peer_id=self._remote_id,
            keys=self._keys.session_keys(self.role),
            sas=self._sas,
            peer_info=self._peer_info,
            transcript_hash=self._th,
            session_tag=self._session_tag,
        )
        self._state = _State.DONE
        self._drop_secrets()
        return Paired(self._result)


class HostHandshake(_Handshake):
    """The host's side of one pairing stream (SPAKE2 side B).

    ``offers`` is the offer for the code (or an :class:`OfferBook` to look the Hello's session
    tag up in); ``host_id`` is our EndpointId, ``remote_id`` the QUIC-authenticated id of the
    peer, ``channel_binding`` the connection's exported keying material (32 bytes). The
    deadlines (M3 within the offer's ``handshake_timeout`` of M2, then approval and Accept
    within its ``confirm_timeout``) are judged with the ``now`` the driver passes in.
    """

    role = Role.HOST

    def __init__(
        self,
        offers: PairingOffer | OfferBook,
        *,
        host_id: bytes,
        remote_id: bytes,
        channel_binding: bytes,
        host_info: DeviceInfo,
        entropy: Entropy | None = None,
    ) -> None:
        super().__init__(local_id=host_id, remote_id=remote_id, channel_binding=channel_binding,
                         info=host_info, entropy=entropy)
        self._offers = offers
        self._offer: PairingOffer | None = None
        self._deadline: float | None = None
        self._commitment = b""
        self._host_nonce = b""
        self._state = _State.AWAIT_HELLO

    @property
    def offer(self) -> PairingOffer | None:
        """The offer this handshake runs against (after a Hello with a known tag)."""
        return self._offer

    @property
    def deadline(self) -> float | None:
        """When the host gives up: M3 (set when M2 is sent), then approval and M5 (set on M3)."""
        return self._deadline

    @property
    def awaiting_approval(self) -> bool:
        """True between SasReady and the application's answer."""
        return self._state is _State.AWAIT_APPROVAL

    def receive(self, body: bytes, now: float) -> list[Event]:
        """Process one message body received at time ``now``; returns the events to perform."""
        try:
            msg = self._decode(body)
        except ProtocolError as e:
            if self.is_finished:
                raise
            return self._fail(e)
        try:
            if isinstance(msg, wire.Reject):
                return self._peer_rejected(msg)
            if self._state is _State.AWAIT_HELLO and isinstance(msg, wire.Hello):
                return self._on_hello(msg, now)
            if self._state is _State.AWAIT_CONFIRM and isinstance(msg, wire.Confirm):
                return self._on_confirm(msg, now)
            if self._state is _State.AWAIT_ACCEPT and isinstance(msg, wire.Accept):
                return self._on_accept(msg, now)
            raise ProtocolError(RejectCode.UNEXPECTED, f"{type(msg).__name__} in {self.state}")
        except ProtocolError as e:
            return self._fail(e)

    def approve(self, now: float) -> list[Event]:
        """The host's user confirmed the SAS at ``now``: ``[SendMessage(Complete)]``, or
        ``[SendMessage(Reject(TIMEOUT)), Failed]`` past the deadline. Valid only after SasReady."""
        if self._state is not _State.AWAIT_APPROVAL:
            raise ProtocolError(RejectCode.UNEXPECTED, f"approve() in {self.state}")
        assert self._keys is not None and self._offer is not None and self._deadline is not None
        if now >= self._deadline or not self._offer.holds(self):
            return self._fail(ProtocolError(RejectCode.TIMEOUT, "the SAS was not approved in time"))
        sealed = seal(self._keys.host_seal, self._info.encode(), self._th)
        self._state = _State.AWAIT_ACCEPT
        return [SendMessage(wire.encode(wire.Complete(sealed)))]

    def decline(self) -> list[Event]:
        """The host's user did not confirm the SAS: Reject(SAS_DECLINED), Failed."""
        if self._state is not _State.AWAIT_APPROVAL:
            raise ProtocolError(RejectCode.UNEXPECTED, f"decline() in {self.state}")
        return self._fail(ProtocolError(RejectCode.SAS_DECLINED, "the SAS was not confirmed"))

    def check_deadline(self, now: float) -> list[Event]:
        """Fail with TIMEOUT (sending Reject(TIMEOUT)) if the current deadline passed at ``now``."""
        if self._deadline is not None and not self.is_finished and now >= self._deadline:
            return self._fail(ProtocolError(RejectCode.TIMEOUT, "handshake timed out"))
        return []

    def _lookup(self, tag: bytes) -> PairingOffer | None:
        if isinstance(self._offers, PairingOffer):
            return self._offers if self._offers.tag == tag else None
        return self._offers.lookup(tag)

    def _on_hello(self, msg: wire.Hello, now: float) -> list[Event]:
        offer = self._lookup(msg.session_tag)
        if offer is None:
            raise ProtocolError(RejectCode.BAD_TAG, "unknown session tag")
        if msg.joiner_id != self._remote_id:
            raise ProtocolError(RejectCode.ID_MISMATCH, "claimed id is not the connection's id")
        offer.check(now)
        # An invalid point is refused before any SPAKE2 work and before it can take one of the
        # offer's Hello tokens (else strangers could starve the real joiner with BUSY).
        Spake2.check(msg.spake_msg, "A")
        if not offer.take_hello_token(now):
            raise ProtocolError(RejectCode.BUSY, "too many pairing attempts, try again")
        spake, host_msg = Spake2.start("B", offer.code.password(), id_a=msg.joiner_id,
                                       id_b=self._local_id, entropy=self._draw(ENTROPY_LEN))
        spake_key = spake.finish(msg.spake_msg)  # MALFORMED for a bad point: not counted
        # The attempt counts from here: M2 is about to be sent.
        self._deadline = offer.claim(self, now)
        self._offer = offer
        self._session_tag = offer.tag
        host_nonce = self._draw(NONCE_LEN)
        self._commitment = msg.commitment
        self._host_nonce = host_nonce
        self._th = self._transcript(msg.spake_msg, host_msg, msg.session_tag, msg.commitment,
                                    host_nonce)
        self._keys = derive_pairing_keys(spake_key, self._th)
        mac = confirmation_mac(self._keys.host_confirm, self._th)
        self._state = _State.AWAIT_CONFIRM
        return [SendMessage(wire.encode(wire.Reply(self._local_id, host_msg, host_nonce, mac)))]

    def _on_confirm(self, msg: wire.Confirm, now: float) -> list[Event]:
        assert self._keys is not None and self._offer is not None and self._deadline is not None
        if now >= self._deadline or not self._offer.holds(self):
            raise ProtocolError(RejectCode.TIMEOUT, "handshake timed out")
        if not verify_confirmation_mac(self._keys.joiner_confirm, self._th, msg.joiner_mac):
            raise ProtocolError(RejectCode.WRONG_CODE, "confirmation failed: wrong code")
        if not verify_commitment(self._commitment, msg.joiner_nonce):
            raise ProtocolError(RejectCode.BAD_COMMITMENT,
                                "the joiner's nonce does not open its commitment")
        info = DeviceInfo.decode(open_sealed(self._keys.joiner_seal, msg.sealed_info, self._th))
        self._peer_info = info
        self._sas = compute_sas(self._keys.sas, self._host_nonce, msg.joiner_nonce)
        self._deadline = self._offer.extend(self, now)
        self._state = _State.AWAIT_APPROVAL
        return [SasReady(self._sas, info)]

    def _on_accept(self, msg: wire.Accept, now: float) -> list[Event]:
        assert self._keys is not None and self._offer is not None and self._deadline is not None
        if now >= self._deadline or not self._offer.holds(self):
            raise ProtocolError(RejectCode.TIMEOUT, "handshake timed out")
        if not verify_confirmation_mac(self._keys.joiner_accept, self._th, msg.accept_mac):
            raise ProtocolError(RejectCode.MALFORMED, "bad accept MAC")
        self._offer.complete(self)
        return [self._succeed()]

    def _terminate(self, failed: Failed) -> None:
        if self._offer is not None:
            self._offer.release(self)
        super()._terminate(failed)


class JoinerHandshake(_Handshake):
    """The joiner's side of one pairing stream (SPAKE2 side A).

    ``code`` is the parsed pairing code; ``joiner_id`` our EndpointId, ``host_id`` the
    QUIC-authenticated id of the host we dialed, ``channel_binding`` the connection's exported
    keying material (32 bytes). Call :meth:`start` once for M1. The joiner's own timeouts (M2,
    M4 and approval, the host's FIN) are the driver's.
    """

    role = Role.JOINER

    def __init__(
        self,
        code: PairingCode,
        *,
        joiner_id: bytes,
        host_id: bytes,
        channel_binding: bytes,
        joiner_info: DeviceInfo,
        entropy: Entropy | None = None,
    ) -> None:
        super().__init__(local_id=joiner_id, remote_id=host_id, channel_binding=channel_binding,
                         info=joiner_info, entropy=entropy)
        self._code = code
        self._session_tag = code.tag
        self._spake: Spake2 | None = None
        self._joiner_msg = b""
        self._nonce = b""
        self._commitment = b""
        self._approved = False

    @property
    def approved(self) -> bool:
        """True once :meth:`approve` was called."""
        return self._approved

    def start(self) -> bytes:
        """The body of M1 (Hello). May be called once."""
        if self._state is not _State.START:
            raise ProtocolError(RejectCode.UNEXPECTED, "start() may be called once")
        self._nonce = self._draw(NONCE_LEN)
        self._commitment = commitment(self._nonce)
        self._spake, self._joiner_msg = Spake2.start(
            "A", self._code.password(), id_a=self._local_id, id_b=self._remote_id,
            entropy=self._draw(ENTROPY_LEN),
        )
        self._state = _State.AWAIT_REPLY
        return wire.encode(
            wire.Hello(self._code.tag, self._local_id, self._joiner_msg, self._commitment)
        )

    def receive(self, body: bytes) -> list[Event]:
        """Process one message body from the host; returns the events to perform."""
        if self._state is _State.START:
            raise ProtocolError(RejectCode.UNEXPECTED, "call start() first")
        try:
            msg = self._decode(body)
        except ProtocolError as e:
            if self.is_finished:
                raise
            return self._fail(e)
        try:
            if isinstance(msg, wire.Reject):
                return self._peer_rejected(msg)
            if self._state is _State.AWAIT_REPLY and isinstance(msg, wire.Reply):
                return self._on_reply(msg)
            if self._state is _State.AWAIT_COMPLETE and isinstance(msg, wire.Complete):
                return self._on_complete(msg)
            raise ProtocolError(RejectCode.UNEXPECTED, f"{type(msg).__name__} in {self.state}")
        except ProtocolError as e:
            return self._fail(e)

    def approve(self) -> list[Event]:
        """The joiner's user confirmed the SAS. Before M4 it is remembered (``[]``); after M4
        it gives ``[Paired, SendMessage(Accept)]`` (store the pairing before sending Accept).
        Valid only after SasReady."""
        self._check_sas_answer("approve")
        self._approved = True
        if self._state is _State.AWAIT_APPROVAL:
            return self._accept()
        return []

    def _on_reply(self, msg: wire.Reply) -> list[Event]:
        assert self._spake is not None
        if msg.host_id != self._remote_id:
            raise ProtocolError(RejectCode.ID_MISMATCH, "claimed id is not the connection's id")
        spake_key = self._spake.finish(msg.spake_msg)
        self._spake = None
        self._th = self._transcript(self._joiner_msg, msg.spake_msg, self._code.tag,
                                    self._commitment, msg.host_nonce)
        self._keys = derive_pairing_keys(spake_key, self._th)
        if not verify_confirmation_mac(self._keys.host_confirm, self._th, msg.host_mac):
            raise ProtocolError(RejectCode.WRONG_CODE, "confirmation failed: wrong code")
        mac = confirmation_mac(self._keys.joiner_confirm, self._th)
        sealed = seal(self._keys.joiner_seal, self._info.encode(), self._th)
        self._sas = compute_sas(self._keys.sas, msg.host_nonce, self._nonce)
        self._state = _State.AWAIT_COMPLETE
        return [SendMessage(wire.encode(wire.Confirm(mac, self._nonce, sealed))),
                SasReady(self._sas, None)]

    def _on_complete(self, msg: wire.Complete) -> list[Event]:
        assert self._keys is not None
        self._peer_info = DeviceInfo.decode(
            open_sealed(self._keys.host_seal, msg.sealed_info, self._th)
        )
        if self._approved:
            return self._accept()
        self._state = _State.AWAIT_APPROVAL
        return []

    def _accept(self) -> list[Event]:
        assert self._keys is not None
        mac = confirmation_mac(self._keys.joiner_accept, self._th)
        paired = self._succeed()
        return [paired, SendMessage(wire.encode(wire.Accept(mac)))]

    def _drop_secrets(self) -> None:
        self._spake = None
        self._nonce = b""
        super()._drop_secrets()
