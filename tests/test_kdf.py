"""The pure key schedule: transcript encoding, HKDF labels, MACs, SAS."""

from __future__ import annotations

import hashlib
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from iroh_pair.protocol.constants import LABELS
from iroh_pair.protocol.kdf import (
    PairingKeys,
    Role,
    SessionKeys,
    Transcript,
    commitment,
    compute_sas,
    confirmation_mac,
    derive_pairing_keys,
    sas_digits,
    sas_value,
    verify_commitment,
    verify_confirmation_mac,
)


def _transcript(**over: bytes) -> Transcript:
    base = dict(
        joiner_id=b"j" * 32,
        host_id=b"h" * 32,
        session_tag=b"t" * 16,
        joiner_msg=b"A" + b"x" * 32,
        host_msg=b"B" + b"y" * 32,
        channel_binding=b"c" * 32,
        commitment=b"m" * 32,
        host_nonce=b"n" * 32,
    )
    base.update(over)
    return Transcript(**base)


def test_labels_are_distinct() -> None:
    assert len(set(LABELS.values())) == len(LABELS)


def test_keys_distinct_and_mirrored() -> None:
    keys = derive_pairing_keys(os.urandom(32), os.urandom(32))
    values = [getattr(keys, n) for n in LABELS]
    assert len(set(values)) == len(values)
    host, joiner = keys.session_keys(Role.HOST), keys.session_keys(Role.JOINER)
    assert isinstance(host, SessionKeys)
    assert host.send == joiner.receive and host.receive == joiner.send
    assert host.send != host.receive
    assert keys.confirm_key(Role.HOST) != keys.confirm_key(Role.JOINER)
    assert keys.seal_key(Role.HOST) != keys.seal_key(Role.JOINER)
    assert "redacted" in repr(keys) and "redacted" in repr(host)
    assert Role.HOST.peer is Role.JOINER


def test_keys_depend_on_both_inputs() -> None:
    ikm, salt = os.urandom(32), os.urandom(32)
    a = derive_pairing_keys(ikm, salt)
    assert a == derive_pairing_keys(ikm, salt)
    assert a.host_to_joiner != derive_pairing_keys(os.urandom(32), salt).host_to_joiner
    assert a.host_to_joiner != derive_pairing_keys(ikm, os.urandom(32)).host_to_joiner


def test_transcript_binds_every_field() -> None:
    base = _transcript()
    assert base.hash() == hashlib.sha256(base.encode()).digest()
    seen = {base.hash()}
    names = ("joiner_id", "host_id", "session_tag", "joiner_msg", "host_msg", "channel_binding",
             "commitment", "host_nonce")
    for name in names:
        changed = _transcript(**{name: bytes(len(getattr(base, name)))})
        seen.add(changed.hash())
    assert len(seen) == 9
    # 13 length-prefixed items
    enc, n, at = base.encode(), 0, 0
    while at < len(enc):
        at += 4 + int.from_bytes(enc[at : at + 4], "big")
        n += 1
    assert at == len(enc) and n == 13
    # swapping the roles' ids changes the hash
    assert _transcript(joiner_id=b"h" * 32, host_id=b"j" * 32).hash() != base.hash()


@settings(max_examples=100, deadline=None)
@given(a=st.binary(max_size=40), b=st.binary(max_size=40))
def test_transcript_encoding_is_injective_on_boundaries(a: bytes, b: bytes) -> None:
    # moving bytes between adjacent fields changes the encoding (length prefixes)
    t1 = _transcript(joiner_msg=a, host_msg=b)
    t2 = _transcript(joiner_msg=a + b[:1], host_msg=b[1:])
    assert (t1.encode() == t2.encode()) == (b == b"")


def test_confirmation_mac() -> None:
    key, th = os.urandom(32), os.urandom(32)
    mac = confirmation_mac(key, th)
    assert len(mac) == 32
    assert verify_confirmation_mac(key, th, mac)
    assert not verify_confirmation_mac(key, th, bytes(32))
    assert not verify_confirmation_mac(os.urandom(32), th, mac)
    assert not verify_confirmation_mac(key, th, mac[:31])


def test_commitment() -> None:
    nonce = os.urandom(32)
    c = commitment(nonce)
    assert len(c) == 32 and c != commitment(os.urandom(32))
    assert verify_commitment(c, nonce)
    assert not verify_commitment(c, bytes(32))
    assert not verify_commitment(c, nonce[:31])


def test_sas_depends_on_key_and_both_nonces() -> None:
    key, hn, jn = os.urandom(32), os.urandom(32), os.urandom(32)
    base = compute_sas(key, hn, jn)
    assert len(base) == 6 and base.isdigit()
    assert sas_value(key, hn, jn) != sas_value(key, jn, hn)
    # each input changes the value (and so, almost always, the digits)
    values = {sas_value(key, hn, jn), sas_value(os.urandom(32), hn, jn),
              sas_value(key, os.urandom(32), jn), sas_value(key, hn, os.urandom(32))}
    assert len(values) == 4
    # the 2-digit SAS of the tests is the last two digits of the 6-digit one
    assert compute_sas(key, hn, jn, digits=2) == base[-2:]


def test_sas() -> None:
    assert sas_digits(bytes(32)) == "000000"
    assert sas_digits((1_000_123).to_bytes(8, "big") + bytes(24)) == "000123"
    assert sas_digits(b"\xff" * 8) == f"{(2**64 - 1) % 10**6:06d}"
    for _ in range(20):
        s = sas_digits(os.urandom(32))
        assert len(s) == 6 and s.isdigit()


def test_pairing_keys_type() -> None:
    assert isinstance(derive_pairing_keys(b"k" * 32, b"s" * 32), PairingKeys)
