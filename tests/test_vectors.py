"""Recompute every output of tests/vectors/pairing.json (pairing version 2) with the package."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from iroh_pair.protocol.code import PairingCode, decode_tag, encode_tag
from iroh_pair.protocol.constants import (
    ALPN,
    COMMITMENT_LABEL,
    LABELS,
    PAIRING_BINDING_LABEL as CHANNEL_BINDING_LABEL,
    PROTOCOL_VERSION,
)
from iroh_pair.protocol.kdf import (
    Role,
    Transcript,
    commitment,
    compute_sas,
    confirmation_mac,
    derive_pairing_keys,
    hkdf_sha256,
    sas_digits,
    sas_value,
    verify_commitment,
)
from iroh_pair.protocol import wire
from iroh_pair.protocol.device import DeviceInfo
from iroh_pair.protocol.constants import PAIR_KIND
from iroh_pair.protocol.envelope import FrameBuffer, decode_header, encode_frame, encode_header
from iroh_pair.protocol.offer import PairingOffer
from iroh_pair.protocol.pairing import (
    HostHandshake,
    JoinerHandshake,
    Paired,
    SasReady,
    SendMessage,
)
from iroh_pair.protocol.spake import Spake2
from iroh_pair.protocol.seal import open_sealed, seal
from iroh_pair.errors import BadWordCount, UnknownWord
from iroh_pair.protocol.words import normalize_words, secret_bytes

V: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "pairing.json").read_text(encoding="utf-8")
)


def x(s: str) -> bytes:
    return bytes.fromhex(s)


def by_size(*chunks: bytes) -> Callable[[int], bytes]:
    """Entropy that hands out each chunk once, chosen by the size asked for (the nonce is 32
    bytes, SPAKE2's entropy 64), so the draw order does not matter."""
    left = {len(c): c for c in chunks}

    def f(n: int) -> bytes:
        return left.pop(n)

    return f


JOINER_ID = x(V["identities"]["joiner_id"])
HOST_ID = x(V["identities"]["host_id"])
CB = x(V["channel_binding"]["value"])
TAG = x(V["code"]["session_tag"])
JOINER_NONCE = x(V["commitment"]["joiner_nonce"])
HOST_NONCE = x(V["commitment"]["host_nonce"])


def _info(d: dict[str, Any]) -> DeviceInfo:
    return DeviceInfo(d["name"], d["device_type"], d["os"], d["app_version"])


def test_vectors_file_is_current() -> None:
    import subprocess
    import sys

    tool = Path(__file__).parent.parent / "tools" / "gen_vectors.py"
    assert subprocess.run([sys.executable, str(tool), "--check"]).returncode == 0


def test_identities_are_ed25519_public_keys() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    for who in ("joiner", "host"):
        sk = Ed25519PrivateKey.from_private_bytes(x(V["identities"][f"{who}_secret_key"]))
        pk = sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        assert pk.hex() == V["identities"][f"{who}_id"]


def test_constants() -> None:
    assert V["version"] == PROTOCOL_VERSION == 2
    assert V["alpn"].encode() == ALPN
    assert V["envelope"]["kind"] == PAIR_KIND == "pair2"
    assert x(V["channel_binding"]["label"]) == CHANNEL_BINDING_LABEL
    assert x(V["commitment"]["label"]) == COMMITMENT_LABEL


def test_envelope() -> None:
    assert encode_header(PAIR_KIND) == x(V["envelope"]["header"])
    assert decode_header(x(V["envelope"]["header"])) == ("pair2", 7)
    body = x(V["envelope"]["frame_body"])
    assert encode_frame(body) == x(V["envelope"]["frame"])
    assert FrameBuffer().feed(x(V["envelope"]["frame"])) == [body]
    # the first frame of a pair2 stream: the header, then M1, in one frame (§2)
    first = encode_frame(encode_header(PAIR_KIND) + body)
    assert first == x(V["envelope"]["first_frame"])
    assert decode_header(FrameBuffer().feed(first)[0]) == ("pair2", 7)


def test_commitment() -> None:
    c = V["commitment"]
    assert commitment(JOINER_NONCE) == x(c["value"])
    assert verify_commitment(x(c["value"]), JOINER_NONCE)
    assert not verify_commitment(x(c["value"]), HOST_NONCE)


def test_code() -> None:
    c = V["code"]
    code = PairingCode.parse(c["full"])
    assert code.words == tuple(c["words"])
    assert code.tag == TAG
    assert code.ticket == c["ticket"]
    assert str(code) == c["full"]
    assert encode_tag(TAG) == c["session_tag_base32"]
    assert decode_tag(c["session_tag_base32"]) == TAG
    assert code.password() == x(c["password"]) == secret_bytes(c["words"])


@pytest.mark.parametrize("case", V["normalization"]["valid"])
def test_normalization_valid(case: dict[str, Any]) -> None:
    assert normalize_words(case["input"]) == tuple(case["words"])


@pytest.mark.parametrize("case", V["normalization"]["invalid"])
def test_normalization_invalid(case: dict[str, Any]) -> None:
    exc = {"unknown_word": UnknownWord, "word_count": BadWordCount}[case["error"]]
    with pytest.raises(exc):
        normalize_words(case["input"])


def test_transcript() -> None:
    s = V["spake2"]
    t = Transcript(
        joiner_id=JOINER_ID,
        host_id=HOST_ID,
        session_tag=TAG,
        joiner_msg=x(s["joiner_msg"]),
        host_msg=x(s["host_msg"]),
        channel_binding=CB,
        commitment=x(V["commitment"]["value"]),
        host_nonce=HOST_NONCE,
    )
    items = [x(i) for i in V["transcript"]["items"]]
    assert len(items) == 13
    assert b"".join(len(i).to_bytes(4, "big") + i for i in items) == t.encode()
    assert t.encode() == x(V["transcript"]["encoding"])
    assert t.hash() == x(V["transcript"]["hash"])


def test_kdf_confirm_sas() -> None:
    k = V["kdf"]
    keys = derive_pairing_keys(x(k["ikm"]), x(k["salt"]))
    for name, out in k["outputs"].items():
        assert LABELS[name] == x(out["info"])
        assert getattr(keys, name) == x(out["okm"])
        assert hkdf_sha256(x(k["ikm"]), x(k["salt"]), x(out["info"])) == x(out["okm"])
    th = x(V["transcript"]["hash"])
    assert confirmation_mac(keys.confirm_key(Role.HOST), th) == x(V["confirm"]["host_mac"])
    assert confirmation_mac(keys.confirm_key(Role.JOINER), th) == x(V["confirm"]["joiner_mac"])
    assert confirmation_mac(keys.joiner_accept, th) == x(V["confirm"]["accept_mac"])
    sas = V["sas"]
    assert keys.sas == x(sas["sas_key"])
    assert HOST_NONCE + JOINER_NONCE == x(sas["message"])
    assert sas_value(keys.sas, HOST_NONCE, JOINER_NONCE) == x(sas["value"])
    assert sas_digits(x(sas["value"])) == sas["digits"]
    assert compute_sas(keys.sas, HOST_NONCE, JOINER_NONCE) == sas["digits"]


@pytest.mark.parametrize("who", ["joiner", "host"])
def test_device_info_and_seal(who: str) -> None:
    d = V["device_info"][who]
    info = _info(d)
    assert info.encode() == x(d["encoded"])
    assert DeviceInfo.decode(x(d["encoded"])) == info
    assert x(d["nonce"]) == bytes(12)
    assert seal(x(d["key"]), x(d["encoded"]), x(d["aad"])) == x(d["sealed"])
    assert open_sealed(x(d["key"]), x(d["sealed"]), x(d["aad"])) == x(d["encoded"])


def test_messages_roundtrip() -> None:
    m = V["messages"]
    sizes = {"hello": 114, "reply": 130, "accept": 33}
    types = {"hello": wire.Hello, "reply": wire.Reply, "confirm": wire.Confirm,
             "complete": wire.Complete, "accept": wire.Accept}
    for name, cls in types.items():
        body = x(m[name])
        msg = wire.decode(body)
        assert isinstance(msg, cls)
        assert wire.encode(msg) == body
        if name in sizes:
            assert len(body) == sizes[name]
    hello = wire.decode(x(m["hello"]))
    assert isinstance(hello, wire.Hello) and hello.commitment == x(V["commitment"]["value"])
    reply = wire.decode(x(m["reply"]))
    assert isinstance(reply, wire.Reply) and reply.host_nonce == HOST_NONCE
    assert reply.host_mac == x(V["confirm"]["host_mac"])
    confirm = wire.decode(x(m["confirm"]))
    assert isinstance(confirm, wire.Confirm) and confirm.joiner_nonce == JOINER_NONCE
    assert confirm.sealed_info == x(V["device_info"]["joiner"]["sealed"])
    accept = wire.decode(x(m["accept"]))
    assert isinstance(accept, wire.Accept) and accept.accept_mac == x(V["confirm"]["accept_mac"])
    rej = wire.decode(x(m["reject"]["encoded"]))
    assert rej == wire.Reject(m["reject"]["code"], m["reject"]["text"])
    assert wire.encode(rej) == x(m["reject"]["encoded"])


def test_full_run_reproduces_every_message() -> None:
    s, m = V["spake2"], V["messages"]
    code = PairingCode.parse(V["code"]["full"])
    offer = PairingOffer.create(code, now=0.0)
    joiner = JoinerHandshake(
        code,
        joiner_id=JOINER_ID,
        host_id=HOST_ID,
        channel_binding=CB,
        joiner_info=_info(V["device_info"]["joiner"]),
        entropy=by_size(x(s["joiner_entropy"]), JOINER_NONCE),
    )
    host = HostHandshake(
        offer,
        host_id=HOST_ID,
        remote_id=JOINER_ID,
        channel_binding=CB,
        host_info=_info(V["device_info"]["host"]),
        entropy=by_size(x(s["host_entropy"]), HOST_NONCE),
    )
    digits = V["sas"]["digits"]
    m1 = joiner.start()
    assert m1 == x(m["hello"])
    ev = host.receive(m1, 1.0)
    assert ev == [SendMessage(x(m["reply"]))]
    ev = joiner.receive(x(m["reply"]))
    assert ev == [SendMessage(x(m["confirm"])), SasReady(digits, None)]
    ev = host.receive(x(m["confirm"]), 2.0)
    assert ev == [SasReady(digits, _info(V["device_info"]["joiner"]))]
    assert host.approve(3.0) == [SendMessage(x(m["complete"]))]
    assert joiner.approve() == []  # remembered until the Complete arrives
    jev, accept = joiner.receive(x(m["complete"]))
    assert isinstance(jev, Paired) and accept == SendMessage(x(m["accept"]))
    (hev,) = host.receive(x(m["accept"]), 4.0)
    assert isinstance(hev, Paired)
    host_result = hev.result
    k = V["kdf"]["outputs"]
    assert host_result.keys.send == x(k["host_to_joiner"]["okm"])
    assert host_result.keys.receive == x(k["joiner_to_host"]["okm"])
    assert jev.result.keys.send == x(k["joiner_to_host"]["okm"])
    assert host_result.sas == jev.result.sas == V["sas"]["digits"]
    assert host_result.transcript_hash == x(V["transcript"]["hash"])
    assert host_result.peer_info == _info(V["device_info"]["joiner"])
    assert jev.result.peer_info == _info(V["device_info"]["host"])


def test_spake2_vector() -> None:
    s = V["spake2"]
    a, msg_a = Spake2.start("A", x(s["password"]), id_a=JOINER_ID, id_b=HOST_ID,
                            entropy=x(s["joiner_entropy"]))
    b, msg_b = Spake2.start("B", x(s["password"]), id_a=JOINER_ID, id_b=HOST_ID,
                            entropy=x(s["host_entropy"]))
    assert (msg_a, msg_b) == (x(s["joiner_msg"]), x(s["host_msg"]))
    assert a.finish(msg_b) == b.finish(msg_a) == x(s["key"])


def test_wrong_password_vector() -> None:
    s = V["spake2"]
    w = s["wrong_password"]
    b, msg = Spake2.start("B", x(w["password"]), id_a=JOINER_ID, id_b=HOST_ID,
                          entropy=x(s["host_entropy"]))
    assert msg == x(w["host_msg"])
    assert b.finish(x(s["joiner_msg"])) == x(w["host_key"]) != x(s["key"])
