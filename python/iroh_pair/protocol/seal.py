"""Sealing the device info of M3/M4 with ChaCha20-Poly1305.

Each direction has a dedicated seal key (HKDF label ``iroh-pair/1 seal host->joiner`` or
``... joiner->host``) derived from a fresh SPAKE2 key and transcript, and each such key seals
exactly one message in its whole life; so a fixed all-zero 96-bit nonce never repeats under a
key. AAD is the transcript hash.

Example (a key and transcript hash of zeros, for illustration only)::

    >>> from iroh_pair.protocol.seal import open_sealed, seal
    >>> sealed = seal(bytes(32), b"device info", bytes(32))
    >>> len(sealed), open_sealed(bytes(32), sealed, bytes(32))
    (27, b'device info')
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from iroh_pair.errors import ProtocolError
from iroh_pair.protocol.constants import RejectCode

__all__ = ["SEAL_NONCE", "TAG_LEN", "seal", "open_sealed"]

SEAL_NONCE = bytes(12)
TAG_LEN = 16


def seal(key: bytes, plaintext: bytes, transcript_hash: bytes) -> bytes:
    """ChaCha20-Poly1305(key, nonce 0^12, plaintext, aad = transcript hash) -> ciphertext||tag."""
    return ChaCha20Poly1305(key).encrypt(SEAL_NONCE, plaintext, transcript_hash)


def open_sealed(key: bytes, sealed: bytes, transcript_hash: bytes) -> bytes:
    """Inverse of :func:`seal`; ProtocolError(MALFORMED) if authentication fails."""
    try:
        return ChaCha20Poly1305(key).decrypt(SEAL_NONCE, sealed, transcript_hash)
    except InvalidTag:
        raise ProtocolError(RejectCode.MALFORMED, "sealed info does not authenticate") from None
