"""The BIP39 English word list and the normalisation of the secret words of a pairing code.

The secret part of a pairing code is a short sequence of words from the BIP39 English list
(2048 words, 11 bits each).  Python and Rust apply exactly one normalisation rule to what a
person typed (see ``docs/PROTOCOL.md``, "Pairing code"):

1. Unicode NFKC normalisation;
2. lower case (``str.lower``; the list is plain ASCII so this is unambiguous for valid input);
3. the separators are U+0020 SPACE, U+0009 TAB, U+000A LF, U+000D CR and U+002D HYPHEN-MINUS
   (NFKC already maps the other space characters, e.g. U+00A0 or U+3000, to U+0020): leading and
   trailing separators are dropped and any run of separators separates two words;
4. every word must be in the list, otherwise :class:`~iroh_pair.errors.UnknownWord` is raised.

The SPAKE2 password is :func:`secret_bytes`: the normalised words joined with one ``-``, encoded
as UTF-8.

Example::

    >>> from iroh_pair.protocol.words import normalize_words, secret_bytes
    >>> normalize_words("  Legal-WINNER thank ")
    ('legal', 'winner', 'thank')
    >>> secret_bytes(("legal", "winner", "thank"))
    b'legal-winner-thank'
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

from iroh_pair.errors import BadWordCount, UnknownWord

__all__ = [
    "WORDLIST_SHA256",
    "DEFAULT_WORD_COUNT",
    "MIN_WORDS",
    "MAX_WORDS",
    "wordlist",
    "word_index",
    "normalize_words",
    "secret_bytes",
    "generate_words",
]

#: SHA-256 of ``bip39_english.txt`` as published in the BIP39 repository (LF line endings).
WORDLIST_SHA256 = "2f5eed53a4727b4bf8880d8f3f199efc90e58503646d9ff8eff3a2ed3b24dbda"
#: Default number of secret words in a new code (33 bits).
DEFAULT_WORD_COUNT = 3
#: Fewest secret words a code may have.
MIN_WORDS = 2
#: Most secret words a code may have.
MAX_WORDS = 24

_SEPARATORS = re.compile(r"[ \t\r\n\-]+")


@lru_cache(maxsize=1)
def wordlist() -> tuple[str, ...]:
    """The 2048 BIP39 English words, in list order."""
    # The list sits at the package root, where the Rust node embeds it (include_str!).
    text = (Path(__file__).resolve().parent.parent / "bip39_english.txt").read_text(encoding="ascii")
    return tuple(text.split("\n")[:-1])


@lru_cache(maxsize=1)
def _index() -> dict[str, int]:
    return {w: i for i, w in enumerate(wordlist())}


def word_index(word: str) -> int:
    """The position (0..2047) of an already normalised ``word``; :class:`~iroh_pair.errors.UnknownWord`
    if absent."""
    try:
        return _index()[word]
    except KeyError:
        raise UnknownWord(word) from None


def normalize_words(text: str) -> tuple[str, ...]:
    """Normalise typed secret words (NFKC, lower case, spaces/hyphens separate) and check them.

    Raises :class:`~iroh_pair.errors.UnknownWord` for the first word not in the list, else
    :class:`~iroh_pair.errors.BadWordCount` when the number of words is outside
    ``MIN_WORDS..MAX_WORDS``.
    """
    folded = unicodedata.normalize("NFKC", text).lower()
    words = tuple(w for w in _SEPARATORS.split(folded) if w)
    for w in words:
        word_index(w)
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        raise BadWordCount(len(words), MIN_WORDS, MAX_WORDS)
    return words


def secret_bytes(words: Sequence[str]) -> bytes:
    """The SPAKE2 password: normalised ``words`` joined with a single ``-``, UTF-8 encoded."""
    return "-".join(words).encode("utf-8")


def generate_words(
    count: int = DEFAULT_WORD_COUNT, randbelow: Callable[[int], int] = secrets.randbelow
) -> tuple[str, ...]:
    """Draw ``count`` words uniformly and independently from the list (CSPRNG by default)."""
    if not MIN_WORDS <= count <= MAX_WORDS:
        raise BadWordCount(count, MIN_WORDS, MAX_WORDS)
    words = wordlist()
    return tuple(words[randbelow(len(words))] for _ in range(count))
