"""Pairing codes: the secret words, the session tag and the host's ticket in one string.

Full form (see ``docs/PROTOCOL.md``, "Pairing code")::

    <word>-<word>-<word>.<session tag: 26 chars lowercase base32, no padding>.<host ticket>

for example ``legal-winner-thank.mfrggzdfmztwq2lknnwg23tpoa.endpointaaa...``.  The words are
the secret; the session tag (16 random bytes) is not secret, it only lets the host find the
offer and refuse strangers before doing any PAKE work; the ticket is how the joiner dials the
host and is treated as an opaque ASCII string.
"""

from __future__ import annotations

import base64
import secrets
import unicodedata
from dataclasses import dataclass

from iroh_pair.errors import BadSessionTag, BadTicket, InvalidCode, MalformedCode
from iroh_pair.protocol.constants import SESSION_TAG_LEN
from iroh_pair.protocol.words import DEFAULT_WORD_COUNT, generate_words, normalize_words, secret_bytes

__all__ = [
    "PairingCode",
    "encode_tag",
    "decode_tag",
]

_TAG_CHARS = 26  # base32 of 16 bytes without padding
_MAX_TICKET = 4096


def encode_tag(tag: bytes) -> str:
    """Lowercase RFC 4648 base32 of a 16-byte session tag, without ``=`` padding."""
    if len(tag) != SESSION_TAG_LEN:
        raise BadSessionTag(f"a session tag is {SESSION_TAG_LEN} bytes, got {len(tag)}")
    return base64.b32encode(tag).decode("ascii").rstrip("=").lower()


def decode_tag(text: str) -> bytes:
    """Inverse of :func:`encode_tag` (case-insensitive); only the canonical form is accepted."""
    if len(text) != _TAG_CHARS or not text.isascii():
        raise BadSessionTag(f"a session tag is {_TAG_CHARS} base32 characters")
    try:
        tag = base64.b32decode(text.upper() + "======", casefold=False)
    except ValueError:
        raise BadSessionTag("a session tag is base32 (a-z, 2-7)") from None
    if encode_tag(tag) != text.lower():
        raise BadSessionTag("non-canonical session tag")
    return tag


def _check_ticket(ticket: str) -> str:
    if not ticket or len(ticket) > _MAX_TICKET:
        raise BadTicket(f"a ticket is 1..{_MAX_TICKET} characters")
    if not all("!" <= c <= "~" for c in ticket):
        raise BadTicket("a ticket is printable ASCII without spaces")
    return ticket


@dataclass(frozen=True)
class PairingCode:
    """A pairing code: normalised secret ``words``, 16-byte session ``tag``, host ``ticket``.

    Construct with :meth:`generate` (host) or :meth:`parse` (joiner); ``str(code)`` is the
    full copy-pasteable form, and ``PairingCode.parse(str(code)) == code``.
    """

    words: tuple[str, ...]
    tag: bytes
    ticket: str

    def __post_init__(self) -> None:
        if normalize_words(" ".join(self.words)) != tuple(self.words):
            raise InvalidCode("words must be normalised (lower case BIP39 English words)")
        encode_tag(self.tag)
        _check_ticket(self.ticket)

    @classmethod
    def generate(
        cls, ticket: str, *, word_count: int = DEFAULT_WORD_COUNT, tag: bytes | None = None
    ) -> PairingCode:
        """A fresh code for ``ticket`` with ``word_count`` random words and a random tag."""
        return cls(
            words=generate_words(word_count),
            tag=secrets.token_bytes(SESSION_TAG_LEN) if tag is None else tag,
            ticket=ticket,
        )

    @classmethod
    def parse(cls, text: str) -> PairingCode:
        """Parse the full form; raises an :class:`~iroh_pair.errors.InvalidCode` subclass when it
        is not valid.

        The whole string is NFKC-normalised and stripped; the words follow
        :func:`iroh_pair.protocol.words.normalize_words`, the tag is case-insensitive, the ticket is kept
        verbatim.
        """
        folded = unicodedata.normalize("NFKC", text).strip()
        parts = folded.split(".", 2)
        if len(parts) != 3:
            raise MalformedCode("a pairing code looks like words.tag.ticket")
        words_part, tag_part, ticket_part = parts
        return cls(
            words=normalize_words(words_part),
            tag=decode_tag(tag_part),
            ticket=_check_ticket(ticket_part),
        )

    @property
    def secret(self) -> str:
        """The secret words joined with ``-`` (what a person reads out or types)."""
        return "-".join(self.words)

    def password(self) -> bytes:
        """The SPAKE2 password (:func:`iroh_pair.protocol.words.secret_bytes` of the words)."""
        return secret_bytes(self.words)

    def __str__(self) -> str:
        return f"{self.secret}.{encode_tag(self.tag)}.{self.ticket}"

    def __repr__(self) -> str:
        # Never print the secret words by accident (logs, tracebacks).
        return (
            f"PairingCode(words=<{len(self.words)} words>, tag={encode_tag(self.tag)!r}, "
            f"ticket={self.ticket!r})"
        )
