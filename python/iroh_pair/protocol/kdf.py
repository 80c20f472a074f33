"""Pure key derivation for pairing version 2: commitment, transcript, HKDF key schedule, MACs, SAS.

Nothing here does I/O or keeps state; ``docs/PROTOCOL.md`` §7 is the normative description and
``tests/vectors/pairing.json`` pins every output.

* commitment: ``SHA-256(lp(COMMITMENT_LABEL) || lp(joiner_nonce))`` (:func:`commitment`);
* transcript: SHA-256 over 13 items each encoded as ``lp(x) = u32 BE length || x``
  (:class:`Transcript`);
* keys: ``HKDF-SHA256(IKM = SPAKE2 key, salt = transcript hash, info = label, L = 32)`` for each
  label in :data:`~iroh_pair.protocol.constants.LABELS`;
* confirmation and accept MACs: ``HMAC-SHA256(key, transcript hash)``;
* SAS: ``sas_value = HMAC-SHA256(sas key, host_nonce || joiner_nonce)``, shown as
  ``int_be(sas_value[0:8]) mod 10**6`` in 6 decimal digits (:func:`compute_sas`)::

      >>> sas_digits(bytes(32))
      '000000'
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from iroh_pair.protocol.constants import (
    ALPN,
    COMMITMENT_LABEL,
    LABELS,
    PROTOCOL_VERSION,
    SAS_DIGITS,
    TRANSCRIPT_LABEL,
)

__all__ = [
    "Role",
    "Transcript",
    "SessionKeys",
    "PairingKeys",
    "hkdf_sha256",
    "derive_pairing_keys",
    "confirmation_mac",
    "verify_confirmation_mac",
    "sas_digits",
    "sas_value",
    "compute_sas",
    "commitment",
    "verify_commitment",
]


class Role(enum.Enum):
    """The two pairing roles. The joiner is SPAKE2 side A, the host side B."""

    HOST = "host"
    JOINER = "joiner"

    @property
    def peer(self) -> Role:
        """The other role."""
        return Role.JOINER if self is Role.HOST else Role.HOST


def _item(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


@dataclass(frozen=True)
class Transcript:
    """The public inputs bound into the keys; :meth:`encode` is the canonical byte string.

    ``joiner_msg`` and ``host_msg`` are the SPAKE2 messages exactly as on the wire (33 bytes,
    including the side byte ``A``/``B``); ``channel_binding`` is the QUIC connection's
    ``export_keying_material(PAIRING_BINDING_LABEL, b"", 32)``; ``commitment`` is the joiner's
    (M1) and ``host_nonce`` the host's (M2). ``joiner_nonce`` is not an item (§7.3).
    """

    joiner_id: bytes
    host_id: bytes
    session_tag: bytes
    joiner_msg: bytes
    host_msg: bytes
    channel_binding: bytes
    commitment: bytes
    host_nonce: bytes

    def encode(self) -> bytes:
        """``u32 BE length || bytes`` of the 13 items: label, version, ALPN, roles, ids, tag,
        SPAKE2 messages, channel binding, commitment, host nonce."""
        items = (
            TRANSCRIPT_LABEL,
            bytes([PROTOCOL_VERSION]),
            ALPN,
            Role.JOINER.value.encode("ascii"),  # SPAKE2 side A
            Role.HOST.value.encode("ascii"),  # SPAKE2 side B
            self.joiner_id,
            self.host_id,
            self.session_tag,
            self.joiner_msg,
            self.host_msg,
            self.channel_binding,
            self.commitment,
            self.host_nonce,
        )
        return b"".join(_item(i) for i in items)

    def hash(self) -> bytes:
        """SHA-256 of :meth:`encode`."""
        return hashlib.sha256(self.encode()).digest()


@dataclass(frozen=True)
class SessionKeys:
    """Directional session keys of one side: ``send`` encrypts, ``receive`` decrypts.

    The two sides' values are mirrored: host ``send`` == joiner ``receive`` and vice versa.
    """

    send: bytes
    receive: bytes

    def __repr__(self) -> str:
        return "SessionKeys(<redacted>)"


@dataclass(frozen=True)
class PairingKeys:
    """Every key derived from one SPAKE2 key and transcript hash (32 bytes each)."""

    host_to_joiner: bytes
    joiner_to_host: bytes
    host_confirm: bytes
    joiner_confirm: bytes
    joiner_accept: bytes
    sas: bytes
    host_seal: bytes
    joiner_seal: bytes

    def session_keys(self, role: Role) -> SessionKeys:
        """The :class:`SessionKeys` of ``role``."""
        if role is Role.HOST:
            return SessionKeys(send=self.host_to_joiner, receive=self.joiner_to_host)
        return SessionKeys(send=self.joiner_to_host, receive=self.host_to_joiner)

    def confirm_key(self, role: Role) -> bytes:
        """The key ``role`` uses for its own confirmation MAC."""
        return self.host_confirm if role is Role.HOST else self.joiner_confirm

    def seal_key(self, role: Role) -> bytes:
        """The key ``role`` seals its device info with (used for exactly one message)."""
        return self.host_seal if role is Role.HOST else self.joiner_seal

    def __repr__(self) -> str:
        return "PairingKeys(<redacted>)"


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869 HKDF with SHA-256."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def derive_pairing_keys(spake_key: bytes, transcript_hash: bytes) -> PairingKeys:
    """Derive all pairing keys: IKM = SPAKE2 key, salt = transcript hash, info = label."""
    return PairingKeys(
        **{name: hkdf_sha256(spake_key, transcript_hash, label) for name, label in LABELS.items()}
    )


def confirmation_mac(confirm_key: bytes, transcript_hash: bytes) -> bytes:
    """HMAC-SHA256(confirm key, transcript hash), 32 bytes."""
    return hmac.new(confirm_key, transcript_hash, hashlib.sha256).digest()


def verify_confirmation_mac(confirm_key: bytes, transcript_hash: bytes, mac: bytes) -> bool:
    """Constant-time check of a peer's confirmation MAC."""
    return hmac.compare_digest(confirmation_mac(confirm_key, transcript_hash), mac)


def commitment(joiner_nonce: bytes) -> bytes:
    """The joiner's commitment to its nonce: ``SHA-256(lp(COMMITMENT_LABEL) || lp(nonce))``."""
    return hashlib.sha256(_item(COMMITMENT_LABEL) + _item(joiner_nonce)).digest()


def verify_commitment(commitment_value: bytes, joiner_nonce: bytes) -> bool:
    """Constant-time check that ``joiner_nonce`` opens ``commitment_value``."""
    return hmac.compare_digest(commitment(joiner_nonce), commitment_value)


def sas_value(sas_key: bytes, host_nonce: bytes, joiner_nonce: bytes) -> bytes:
    """``HMAC-SHA256(sas key, host_nonce || joiner_nonce)`` (§7.6), 32 bytes."""
    return hmac.new(sas_key, host_nonce + joiner_nonce, hashlib.sha256).digest()


def sas_digits(value: bytes, digits: int = SAS_DIGITS) -> str:
    """``int_be(value[0:8]) mod 10**digits``, zero-padded to ``digits`` decimal digits.

    The protocol uses 6 digits; other counts exist for tests only (the 2-digit SAS of the
    grinding test is the last 2 digits of the 6-digit one, since 100 divides 10**6)::

        >>> sas_digits((1_000_123).to_bytes(8, "big"))
        '000123'
    """
    if not 1 <= digits <= 18:
        raise ValueError("digits must be 1..18")
    return f"{int.from_bytes(value[:8], 'big') % 10**digits:0{digits}d}"


def compute_sas(
    sas_key: bytes, host_nonce: bytes, joiner_nonce: bytes, digits: int = SAS_DIGITS
) -> str:
    """The SAS both users compare: :func:`sas_digits` of :func:`sas_value`."""
    return sas_digits(sas_value(sas_key, host_nonce, joiner_nonce), digits)
