"""Sans-I/O pairing state machines: :class:`HostHandshake` and :class:`JoinerHandshake`.

The driver feeds frame bodies in and performs the returned events in order::

    joiner: body = hs.start()  -> send;  for each body received: events = hs.receive(body)
    host:   for each body received: events = hs.receive(body, now)

Events: :class:`SendMessage` (write the body as one frame), :class:`Paired` (the handshake
succeeded; the host must commit its registry entry *before* performing the following
``SendMessage(Complete)``), :class:`Failed` (terminal; after a local failure it is preceded by a
``SendMessage`` carrying the Reject). After Paired or Failed the machine is finished and drops
its secrets; feeding it more raises ``ProtocolError(UNEXPECTED)``.

Bad peer input never raises out of ``receive``: it becomes ``[SendMessage(Reject), Failed]``.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from spake2 import SPAKE2_A, SPAKE2_B

from iroh_pair.code import PairingCode
from iroh_pair.kdf import (
    CHANNEL_BINDING_LEN,
    PairingKeys,
    Role,
    SessionKeys,
    Transcript,
    confirmation_mac,
    derive_pairing_keys,
    sas_digits,
    verify_confirmation_mac,
)
from iroh_pair.protocol import wire
from iroh_pair.protocol.device import DeviceInfo
from iroh_pair.protocol.envelope import MAX_MESSAGE
from iroh_pair.protocol.errors import ProtocolError, RejectCode
from iroh_pair.protocol.offer import OfferBook, PairingOffer
from iroh_pair.protocol.seal import open_sealed, seal

__all__ = [
    "Entropy",
    "SendMessage",
    "PairingResult",
    "Paired",
    "Failed",
    "Event",
    "HostHandshake",
    "JoinerHandshake",
]

#: ``entropy(n) -> n random bytes``; SPAKE2 draws 64 bytes once per handshake.
Entropy = Callable[[int], bytes]


@dataclass(frozen=True)
class SendMessage:
    """Send ``body`` to the peer as one frame."""

    body: bytes


@dataclass(frozen=True)
class PairingResult:
    """The outcome of a successful pairing, as seen by ``role``."""

    role: Role
    peer_id: bytes
    keys: SessionKeys
    sas: str
    peer_info: DeviceInfo
    transcript_hash: bytes = field(repr=False)


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


Event = SendMessage | Paired | Failed


class _State(enum.Enum):
    START = "start"
    AWAIT_HELLO = "await_hello"
    AWAIT_REPLY = "await_reply"
    AWAIT_CONFIRM = "await_confirm"
    AWAIT_COMPLETE = "await_complete"
    DONE = "done"
    FAILED = "failed"


def _check_len(name: str, value: bytes, n: int) -> None:
    if not isinstance(value, bytes) or len(value) != n:
        raise ValueError(f"{name} must be {n} bytes")


def _spake_finish(spake: SPAKE2_A | SPAKE2_B, msg: bytes) -> bytes:
    try:
        return spake.finish(msg)
    except Exception:  # the library raises ValueError/SPAKEError/... for bad elements
        raise ProtocolError(RejectCode.MALFORMED, "invalid SPAKE2 message") from None


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
        """The 6-digit SAS, available as soon as the keys exist (host after M1, joiner after M2)."""
        return sas_digits(self._keys.sas) if self._keys is not None else None

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

    # -- internals --------------------------------------------------------------------
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

    def _transcript(self, joiner_msg: bytes, host_msg: bytes, tag: bytes) -> bytes:
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
        ).hash()

    def _succeed(self, keys: PairingKeys, peer_info: DeviceInfo) -> Paired:
        self._result = PairingResult(
            role=self.role,
            peer_id=self._remote_id,
            keys=keys.session_keys(self.role),
            sas=sas_digits(keys.sas),
            peer_info=peer_info,
            transcript_hash=self._th,
        )
        self._state = _State.DONE
        self._drop_secrets()
        return Paired(self._result)


class HostHandshake(_Handshake):
    """The host's side of one pairing stream (SPAKE2 side B).

    ``offers`` is the offer for the code (or an :class:`OfferBook` to look the Hello's session
    tag up in); ``host_id`` is our EndpointId, ``remote_id`` the QUIC-authenticated id of the
    peer, ``channel_binding`` the connection's exported keying material (32 bytes).
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
        self._state = _State.AWAIT_HELLO

    @property
    def offer(self) -> PairingOffer | None:
        """The offer this handshake runs against (after a Hello with a known tag)."""
        return self._offer

    @property
    def deadline(self) -> float | None:
        """When the host gives up waiting for M3 (set when M2 is sent)."""
        return self._deadline

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
            raise ProtocolError(RejectCode.UNEXPECTED, f"{type(msg).__name__} in {self.state}")
        except ProtocolError as e:
            return self._fail(e)

    def check_deadline(self, now: float) -> list[Event]:
        """Fail with TIMEOUT if the joiner's M3 is overdue at ``now``."""
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
        spake = SPAKE2_B(offer.code.password(), idA=msg.joiner_id, idB=self._local_id,
                         entropy_f=self._entropy)
        host_msg = spake.start()
        spake_key = _spake_finish(spake, msg.spake_msg)
        # The attempt counts from here: M2 is about to be sent.
        self._deadline = offer.claim(self, now)
        self._offer = offer
        self._th = self._transcript(msg.spake_msg, host_msg, msg.session_tag)
        self._keys = derive_pairing_keys(spake_key, self._th)
        mac = confirmation_mac(self._keys.host_confirm, self._th)
        self._state = _State.AWAIT_CONFIRM
        return [SendMessage(wire.encode(wire.Reply(self._local_id, host_msg, mac)))]

    def _on_confirm(self, msg: wire.Confirm, now: float) -> list[Event]:
        assert self._keys is not None and self._offer is not None and self._deadline is not None
        if now >= self._deadline or not self._offer.holds(self):
            raise ProtocolError(RejectCode.TIMEOUT, "handshake timed out")
        if not verify_confirmation_mac(self._keys.joiner_confirm, self._th, msg.joiner_mac):
            raise ProtocolError(RejectCode.WRONG_CODE, "confirmation failed: wrong code")
        info = DeviceInfo.decode(open_sealed(self._keys.joiner_seal, msg.sealed_info, self._th))
        sealed = seal(self._keys.host_seal, self._info.encode(), self._th)
        keys = self._keys
        self._offer.complete(self)
        paired = self._succeed(keys, info)
        return [paired, SendMessage(wire.encode(wire.Complete(sealed)))]

    def _terminate(self, failed: Failed) -> None:
        if self._offer is not None:
            self._offer.release(self)
        super()._terminate(failed)


class JoinerHandshake(_Handshake):
    """The joiner's side of one pairing stream (SPAKE2 side A).

    ``code`` is the parsed pairing code; ``joiner_id`` our EndpointId, ``host_id`` the
    QUIC-authenticated id of the host we dialed, ``channel_binding`` the connection's exported
    keying material (32 bytes). Call :meth:`start` once for M1.
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
        self._spake: SPAKE2_A | None = None
        self._joiner_msg = b""

    def start(self) -> bytes:
        """The body of M1 (Hello). May be called once."""
        if self._state is not _State.START:
            raise ProtocolError(RejectCode.UNEXPECTED, "start() may be called once")
        self._spake = SPAKE2_A(self._code.password(), idA=self._local_id, idB=self._remote_id,
                               entropy_f=self._entropy)
        self._joiner_msg = self._spake.start()
        self._state = _State.AWAIT_REPLY
        return wire.encode(wire.Hello(self._code.tag, self._local_id, self._joiner_msg))

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

    def _on_reply(self, msg: wire.Reply) -> list[Event]:
        assert self._spake is not None
        if msg.host_id != self._remote_id:
            raise ProtocolError(RejectCode.ID_MISMATCH, "claimed id is not the connection's id")
        spake_key = _spake_finish(self._spake, msg.spake_msg)
        self._spake = None
        self._th = self._transcript(self._joiner_msg, msg.spake_msg, self._code.tag)
        self._keys = derive_pairing_keys(spake_key, self._th)
        if not verify_confirmation_mac(self._keys.host_confirm, self._th, msg.host_mac):
            raise ProtocolError(RejectCode.WRONG_CODE, "confirmation failed: wrong code")
        mac = confirmation_mac(self._keys.joiner_confirm, self._th)
        sealed = seal(self._keys.joiner_seal, self._info.encode(), self._th)
        self._state = _State.AWAIT_COMPLETE
        return [SendMessage(wire.encode(wire.Confirm(mac, sealed)))]

    def _on_complete(self, msg: wire.Complete) -> list[Event]:
        assert self._keys is not None
        info = DeviceInfo.decode(open_sealed(self._keys.host_seal, msg.sealed_info, self._th))
        return [self._succeed(self._keys, info)]

    def _drop_secrets(self) -> None:
        self._spake = None
        super()._drop_secrets()
