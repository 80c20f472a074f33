"""Pairing codes: the word list, normalisation, the full code string format."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import iroh_pair.protocol.words as words_mod
from iroh_pair.errors import (
    BadSessionTag,
    BadTicket,
    BadWordCount,
    InvalidCode,
    IrohPairError,
    MalformedCode,
    UnknownWord,
)
from iroh_pair.protocol.code import PairingCode, decode_tag, encode_tag
from iroh_pair.protocol.words import (
    WORDLIST_SHA256,
    generate_words,
    normalize_words,
    secret_bytes,
    word_index,
    wordlist,
)

TICKET = "endpointaaqmaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"


def test_wordlist_is_bip39_english() -> None:
    path = Path(words_mod.__file__).parents[1] / "bip39_english.txt"  # the package root (the Rust node embeds it)
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == WORDLIST_SHA256
    assert WORDLIST_SHA256 == "2f5eed53a4727b4bf8880d8f3f199efc90e58503646d9ff8eff3a2ed3b24dbda"
    w = wordlist()
    assert len(w) == 2048 == len(set(w))
    assert w[0] == "abandon" and w[-1] == "zoo"
    assert all(x.isascii() and x.isalpha() and x.islower() for x in w)
    assert word_index("zoo") == 2047


def test_normalisation() -> None:
    assert normalize_words("Legal WINNER thank") == ("legal", "winner", "thank")
    assert normalize_words("--legal -- winner\tthank--") == ("legal", "winner", "thank")
    assert normalize_words("ＬＥＧＡＬ winner thank") == ("legal", "winner", "thank")  # NFKC
    with pytest.raises(UnknownWord) as ei:
        normalize_words("legal winnerr thank")
    assert ei.value.word == "winnerr"
    with pytest.raises(BadWordCount):
        normalize_words("legal")
    with pytest.raises(BadWordCount):
        normalize_words(" - ")
    assert secret_bytes(("legal", "winner", "thank")) == b"legal-winner-thank"


def test_errors_are_valueerrors_and_iroh_pair_errors() -> None:
    for exc in (UnknownWord, BadWordCount, MalformedCode, BadSessionTag, BadTicket):
        assert issubclass(exc, InvalidCode)
        assert issubclass(exc, ValueError)
        assert issubclass(exc, IrohPairError)


def test_generate() -> None:
    code = PairingCode.generate(TICKET)
    assert len(code.words) == 3 and len(code.tag) == 16
    assert len(PairingCode.generate(TICKET, word_count=6).words) == 6
    with pytest.raises(BadWordCount):
        generate_words(1)
    assert generate_words(3, randbelow=lambda n: n - 1) == ("zoo", "zoo", "zoo")


def test_format_and_parse() -> None:
    code = PairingCode(("legal", "winner", "thank"), bytes(range(16)), TICKET)
    s = str(code)
    words_part, tag_part, ticket_part = s.split(".", 2)
    assert words_part == "legal-winner-thank"
    assert len(tag_part) == 26 and tag_part == tag_part.lower()
    assert ticket_part == TICKET
    assert PairingCode.parse(s) == code
    assert PairingCode.parse(f"  Legal Winner  THANK.{tag_part.upper()}.{TICKET}\n") == code
    assert "legal" not in repr(code)  # the secret does not leak into logs


@pytest.mark.parametrize(
    "text, exc",
    [
        ("legal-winner-thank", MalformedCode),
        ("legal-winner-thank.abc", MalformedCode),
        ("legal-winner-thank.aaaa.ticket", BadSessionTag),
        ("legal-winner-thank." + "1" * 26 + ".ticket", BadSessionTag),
        ("legal-winner-thank." + "a" * 25 + "b.ticket", BadSessionTag),  # non-canonical bits
        ("legal-winner-thank." + "a" * 26 + ".", BadTicket),
        ("legal-winner-thank." + "a" * 26 + ".tick et", BadTicket),
        ("legal-winner-thank." + "a" * 26 + ".tické", BadTicket),
        ("legal-winner-thnk." + "a" * 26 + ".ticket", UnknownWord),
        ("legal." + "a" * 26 + ".ticket", BadWordCount),
    ],
)
def test_bad_codes(text: str, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        PairingCode.parse(text)


def test_tag_codec() -> None:
    tag = bytes(range(16))
    assert decode_tag(encode_tag(tag)) == tag
    with pytest.raises(BadSessionTag):
        encode_tag(b"short")


def test_constructor_requires_normalised_words() -> None:
    with pytest.raises(InvalidCode):
        PairingCode(("Legal", "winner", "thank"), bytes(16), TICKET)


@settings(max_examples=60, deadline=None)
@given(
    idx=st.lists(st.integers(0, 2047), min_size=2, max_size=24),
    tag=st.binary(min_size=16, max_size=16),
    ticket=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=80),
)
def test_roundtrip(idx: list[int], tag: bytes, ticket: str) -> None:
    w = tuple(wordlist()[i] for i in idx)
    code = PairingCode(w, tag, ticket)
    assert PairingCode.parse(str(code)) == code


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120))
def test_parse_arbitrary_text_raises_only_invalid_code(text: str) -> None:
    try:
        PairingCode.parse(text)
    except InvalidCode:
        pass
