"""Host-side bookkeeping of pairing codes: lifetime, attempts, single use, one session at a time.

A :class:`PairingOffer` is created by the host for one :class:`~iroh_pair.protocol.code.PairingCode`.
Rules (``docs/PROTOCOL.md`` §9):

* an attempt is counted when the host answers a Hello with its SPAKE2 message (M2); a wrong
  session tag, a claimed-id mismatch, an invalid SPAKE2 point or a refusal
  (expired/burned/used/busy) is not counted;
* after ``max_attempts`` counted attempts the code is burned, even for the right words;
* one handshake at a time: a Hello while another is in progress is refused with BUSY, unless
  the other one passed its deadline (M3 within ``handshake_timeout``, then the SAS approval
  and the Accept within ``confirm_timeout``; then the new one takes over);
* Hello rate: a token bucket of :data:`HELLO_BURST` refilled at :data:`HELLO_RATE` per second;
  a Hello that would need SPAKE2 work without a token is refused with BUSY;
* single use: after one successful pairing every later Hello is refused with USED;
* expiry is judged with the ``now`` the caller passes in (no clock is read here).

Example::

    offer = PairingOffer.create(code, now=time.monotonic(), ttl=300.0)
    offer.check(time.monotonic())      # raises ProtocolError(EXPIRED/BURNED/USED/BUSY)
"""

from __future__ import annotations

from collections.abc import Iterator

from iroh_pair.errors import ProtocolError
from iroh_pair.protocol.code import PairingCode
from iroh_pair.protocol.constants import RejectCode

__all__ = [
    "DEFAULT_TTL",
    "DEFAULT_MAX_ATTEMPTS",
    "HANDSHAKE_TIMEOUT",
    "CONFIRM_TIMEOUT",
    "HELLO_BURST",
    "HELLO_RATE",
    "PairingOffer",
    "OfferBook",
]

#: Default lifetime of a code, seconds.
DEFAULT_TTL = 300.0
#: Default number of counted attempts before a code is burned.
DEFAULT_MAX_ATTEMPTS = 3
#: Time from the host's M2 to the joiner's M3 before the host gives up, seconds.
HANDSHAKE_TIMEOUT = 30.0
#: Time from the joiner's M3 to the SAS approval and the joiner's M5, seconds.
CONFIRM_TIMEOUT = 120.0
#: Hello rate limit per offer: bucket size and refill per second (§9).
HELLO_BURST = 10.0
HELLO_RATE = 10.0


class PairingOffer:
    """The host's state for one pairing code (see module docstring for the rules)."""

    def __init__(
        self,
        code: PairingCode,
        *,
        expires_at: float,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        confirm_timeout: float = CONFIRM_TIMEOUT,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if not (handshake_timeout > 0 and confirm_timeout > 0):
            raise ValueError("timeouts must be > 0")
        self.code = code
        self.expires_at = expires_at
        self.max_attempts = max_attempts
        self.handshake_timeout = handshake_timeout
        self.confirm_timeout = confirm_timeout
        self.attempts_used = 0
        self.used = False
        self._active: object | None = None
        self._active_until = 0.0
        self._tokens = HELLO_BURST
        self._tokens_at: float | None = None

    @classmethod
    def create(
        cls,
        code: PairingCode,
        *,
        now: float,
        ttl: float = DEFAULT_TTL,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        confirm_timeout: float = CONFIRM_TIMEOUT,
    ) -> PairingOffer:
        """An offer for ``code`` valid from ``now`` for ``ttl`` seconds."""
        return cls(
            code,
            expires_at=now + ttl,
            max_attempts=max_attempts,
            handshake_timeout=handshake_timeout,
            confirm_timeout=confirm_timeout,
        )

    @property
    def tag(self) -> bytes:
        """The code's session tag (the key of an :class:`OfferBook`)."""
        return self.code.tag

    @property
    def attempts_left(self) -> int:
        """Attempts that may still be counted."""
        return max(0, self.max_attempts - self.attempts_used)

    @property
    def exhausted(self) -> bool:
        """True once every attempt has been counted (the last one may still be running)."""
        return self.attempts_used >= self.max_attempts

    @property
    def burned(self) -> bool:
        """True once all attempts are used up, none of them is still running, and the code did
        not pair. While the last counted attempt holds the code it is not burned yet: it may
        still pair (a stranger's failure elsewhere must not end it)."""
        return not self.used and self.exhausted and self._active is None

    def is_expired(self, now: float) -> bool:
        """True when ``now`` is at or past the expiry time."""
        return now >= self.expires_at

    def is_live(self, now: float) -> bool:
        """True while the code can still start a handshake (ignoring BUSY)."""
        return not (self.used or self.burned or self.is_expired(now))

    def busy(self, now: float) -> bool:
        """True while a handshake holds this code and is within its deadline."""
        return self._active is not None and now < self._active_until

    def check(self, now: float) -> None:
        """Raise ProtocolError(USED/BURNED/EXPIRED/BUSY) if a new Hello must be refused."""
        if self.used:
            raise ProtocolError(RejectCode.USED, "this code has already been used")
        if self.exhausted:
            if self.busy(now):  # the last attempt is still running
                raise ProtocolError(RejectCode.BUSY, "another device is pairing with this code")
            raise ProtocolError(RejectCode.BURNED, "too many attempts for this code")
        if self.is_expired(now):
            raise ProtocolError(RejectCode.EXPIRED, "this code has expired")
        if self.busy(now):
            raise ProtocolError(RejectCode.BUSY, "another device is pairing with this code")

    def take_hello_token(self, now: float) -> bool:
        """Take one Hello token (bucket of :data:`HELLO_BURST`, refilled at :data:`HELLO_RATE`
        per second of ``now``); False when the bucket is empty (the Hello gets BUSY)."""
        if self._tokens_at is not None and now > self._tokens_at:
            self._tokens = min(HELLO_BURST, self._tokens + (now - self._tokens_at) * HELLO_RATE)
        if self._tokens_at is None or now > self._tokens_at:
            self._tokens_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    # -- used by HostHandshake ------------------------------------------------------------
    def claim(self, session: object, now: float) -> float:
        """Count an attempt and make ``session`` the active one; returns its deadline."""
        self.check(now)
        self.attempts_used += 1
        self._active = session
        self._active_until = now + self.handshake_timeout
        return self._active_until

    def extend(self, session: object, now: float) -> float:
        """``session`` received a valid M3: it holds the code until ``now + confirm_timeout``
        (the SAS approval and the Accept); returns that deadline."""
        if self._active is not session:
            raise ProtocolError(RejectCode.TIMEOUT, "handshake was superseded")
        self._active_until = now + self.confirm_timeout
        return self._active_until

    @property
    def holds_any(self) -> bool:
        """True while some handshake holds the code (past its deadline or not)."""
        return self._active is not None

    def holds(self, session: object) -> bool:
        """True if ``session`` is the active handshake."""
        return self._active is session

    def release(self, session: object) -> None:
        """``session`` ended without pairing; the code is free again (if it is the active one)."""
        if self._active is session:
            self._active = None

    def complete(self, session: object) -> None:
        """``session`` paired: the code is used up."""
        if self._active is not session:
            raise ProtocolError(RejectCode.TIMEOUT, "handshake was superseded")
        self._active = None
        self.used = True

    def __repr__(self) -> str:
        return (
            f"PairingOffer(tag={self.code.tag.hex()}, attempts_used={self.attempts_used}/"
            f"{self.max_attempts}, used={self.used}, expires_at={self.expires_at})"
        )


class OfferBook:
    """The host's live offers, looked up by session tag."""

    def __init__(self) -> None:
        self._offers: dict[bytes, PairingOffer] = {}

    def add(self, offer: PairingOffer) -> None:
        """Register ``offer`` (replacing any offer with the same tag)."""
        self._offers[offer.tag] = offer

    def remove(self, tag: bytes) -> PairingOffer | None:
        """Forget the offer with ``tag``; returns it if present."""
        return self._offers.pop(tag, None)

    def lookup(self, tag: bytes) -> PairingOffer | None:
        """The offer with session tag ``tag``, if any."""
        return self._offers.get(tag)

    def purge(self, now: float) -> list[PairingOffer]:
        """Drop offers that can no longer pair (used, burned or expired and idle)."""
        dead = [o for o in self._offers.values() if not o.is_live(now) and not o.busy(now)]
        for o in dead:
            del self._offers[o.tag]
        return dead

    def __len__(self) -> int:
        return len(self._offers)

    def __iter__(self) -> Iterator[PairingOffer]:
        return iter(list(self._offers.values()))
