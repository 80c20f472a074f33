"""LAN pairing codes: a nameplate plus the secret words, short enough to read aloud.

Spoken form (see ``docs/PROTOCOL.md``, section 4.4)::

    <nameplate>-<word>-<word>-<word>        for example  7-ocean-tiger-river

The nameplate (1..99) is **not secret**: while hosting in LAN mode the host announces its
EndpointId over mDNS under the DNS-SD service ``iroh-pair-<nameplate>``; a joiner on the same
LAN browses that service to find the host. The words are the SPAKE2 password exactly as in the
full code. The session tag, which the full code carries, is derived from the host's id and the
nameplate, so both sides know it without it being spoken.

This module does no I/O: it parses and formats codes and derives names; the node
(:class:`iroh_pair.Node`) does the announcing and browsing.

Example::

    >>> from iroh_pair.protocol.lan import LanCode
    >>> code = LanCode.parse("7 Ocean tiger-river")
    >>> str(code), code.service
    ('7-ocean-tiger-river', 'iroh-pair-7')
"""

from __future__ import annotations

import hashlib
import re
import secrets
import unicodedata
from dataclasses import dataclass

from iroh_pair.errors import MalformedCode
from iroh_pair.protocol.code import PairingCode
from iroh_pair.protocol.constants import LAN_SERVICE_PREFIX, LAN_TAG_LABEL, SESSION_TAG_LEN
from iroh_pair.protocol.words import DEFAULT_WORD_COUNT, generate_words, normalize_words

__all__ = [
    "NAMEPLATE_MAX",
    "LanCode",
    "looks_spoken",
    "service_name",
    "lan_tag",
]

#: Nameplates are 1..NAMEPLATE_MAX (one or two digits to say).
NAMEPLATE_MAX = 99
_SPOKEN = re.compile(r"^\s*(\d{1,3})\s*[-\s]")


def looks_spoken(text: str) -> bool:
    """Whether ``text`` has the spoken form (starts with a number), not the full one."""
    return bool(_SPOKEN.match(unicodedata.normalize("NFKC", text)))


def service_name(nameplate: int) -> str:
    """The mDNS service announced for ``nameplate``: ``iroh-pair-7``."""
    _check_nameplate(nameplate)
    return f"{LAN_SERVICE_PREFIX}{nameplate}"


def lan_tag(host_id: bytes, nameplate: int) -> bytes:
    """The session tag of a LAN code: the first 16 bytes of
    ``SHA-256("iroh-pair/v1 lan session tag" || host_id || ascii(nameplate))``."""
    _check_nameplate(nameplate)
    if len(host_id) != 32:
        raise ValueError("an EndpointId is 32 bytes")
    digest = hashlib.sha256(LAN_TAG_LABEL + host_id + str(nameplate).encode("ascii")).digest()
    return digest[:SESSION_TAG_LEN]


def _check_nameplate(n: int) -> None:
    if not 1 <= n <= NAMEPLATE_MAX:
        raise MalformedCode(f"a nameplate is a number from 1 to {NAMEPLATE_MAX}, got {n}")


@dataclass(frozen=True)
class LanCode:
    """A spoken LAN code: a non-secret ``nameplate`` and the secret ``words``."""

    nameplate: int
    words: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_nameplate(self.nameplate)
        if normalize_words(" ".join(self.words)) != tuple(self.words):
            raise MalformedCode("words must be normalised (lower case BIP39 English words)")

    @classmethod
    def generate(cls, *, word_count: int = DEFAULT_WORD_COUNT) -> LanCode:
        """A random nameplate and ``word_count`` random words."""
        return cls(1 + secrets.randbelow(NAMEPLATE_MAX), generate_words(word_count))

    @classmethod
    def parse(cls, text: str) -> LanCode:
        """Parses ``7-ocean-tiger-river`` (spaces work as separators too; the words follow
        :func:`iroh_pair.protocol.words.normalize_words`). Raises an
        :class:`~iroh_pair.errors.InvalidCode` subclass when it is not a valid LAN code."""
        folded = unicodedata.normalize("NFKC", text).strip()
        m = _SPOKEN.match(folded)
        if not m:
            raise MalformedCode("a LAN code looks like 7-ocean-tiger-river")
        nameplate = int(m.group(1))
        return cls(nameplate, normalize_words(folded[m.end():]))

    @property
    def service(self) -> str:
        """The mDNS service that the host announces for this code."""
        return service_name(self.nameplate)

    def pairing_code(self, host_id: bytes, ticket: str) -> PairingCode:
        """The equivalent full code once the host (its id, and a ticket to dial it) is known."""
        return PairingCode(self.words, lan_tag(host_id, self.nameplate), ticket)

    def __str__(self) -> str:
        return f"{self.nameplate}-{'-'.join(self.words)}"

    def __repr__(self) -> str:
        # Never print the secret words by accident (logs, tracebacks).
        return f"LanCode(nameplate={self.nameplate}, words=<{len(self.words)} words>)"
