#!/usr/bin/env python3
"""Generate ``tests/vectors/pairing.json``: test vectors of pairing version 2 (stream kind
``pair2``, ALPN ``iroh-pair/1``).

Written from ``docs/PROTOCOL.md`` with hashlib / hmac / cryptography / spake2 directly; it does
NOT import the iroh_pair package, so the package's tests (and the Rust implementation) check an
independent computation. All byte strings are lowercase hex.

    python tools/gen_vectors.py            # rewrite tests/vectors/pairing.json
    python tools/gen_vectors.py --check    # exit 1 if the file is out of date
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from spake2 import SPAKE2_A, SPAKE2_B

OUT = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "pairing.json"
ED25519_L = 2**252 + 27742317777372353535851937790883648493

ALPN = b"iroh-pair/1"
VERSION = 2
PAIR_KIND = b"pair2"
TRANSCRIPT_LABEL = b"iroh-pair/2 pairing transcript"
CHANNEL_BINDING_LABEL = b"iroh-pair/2 pairing channel binding"
COMMITMENT_LABEL = b"iroh-pair/2 sas commitment"
LABELS = {
    "host_to_joiner": b"iroh-pair/2 key host->joiner",
    "joiner_to_host": b"iroh-pair/2 key joiner->host",
    "host_confirm": b"iroh-pair/2 confirm host",
    "joiner_confirm": b"iroh-pair/2 confirm joiner",
    "joiner_accept": b"iroh-pair/2 accept joiner",
    "sas": b"iroh-pair/2 sas",
    "host_seal": b"iroh-pair/2 seal host->joiner",
    "joiner_seal": b"iroh-pair/2 seal joiner->host",
}


def lp(b: bytes) -> bytes:
    """``u32 BE length || bytes``, the encoding of transcript and commitment items."""
    return len(b).to_bytes(4, "big") + b


def h(b: bytes) -> str:
    return b.hex()


def fixed(label: str, n: int = 32) -> bytes:
    """Deterministic test bytes: SHA-512 of a label, truncated."""
    return hashlib.sha512(b"iroh-pair/1 test vector " + label.encode()).digest()[:n]


def ed25519_public(secret: bytes) -> bytes:
    key = Ed25519PrivateKey.from_private_bytes(secret)
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def u8_str(s: str) -> bytes:
    raw = s.encode("utf-8")
    return bytes([len(raw)]) + raw


def device_info(name: str, device_type: str, os_: str, app_version: str) -> dict[str, Any]:
    enc = u8_str(name) + u8_str(device_type) + u8_str(os_) + u8_str(app_version)
    return {"name": name, "device_type": device_type, "os": os_, "app_version": app_version,
            "encoded": h(enc)}


def generate() -> dict[str, Any]:
    # -- identities, code, channel binding --------------------------------------------
    joiner_sk, host_sk = fixed("joiner secret key"), fixed("host secret key")
    joiner_id, host_id = ed25519_public(joiner_sk), ed25519_public(host_sk)
    words = ["legal", "winner", "thank"]
    password = "-".join(words).encode("utf-8")
    tag = fixed("session tag", 16)
    tag_b32 = base64.b32encode(tag).decode("ascii").rstrip("=").lower()
    ticket = "endpoint" + base64.b32encode(host_id).decode("ascii").rstrip("=").lower()
    channel_binding = fixed("channel binding")

    # -- SPAKE2: joiner = side A, host = side B, idA = joiner id, idB = host id -----------
    joiner_entropy, host_entropy = fixed("joiner entropy", 64), fixed("host entropy", 64)

    def once(data: bytes) -> Any:
        def f(n: int) -> bytes:
            assert n == 64, n
            return data
        return f

    a = SPAKE2_A(password, idA=joiner_id, idB=host_id, entropy_f=once(joiner_entropy))
    b = SPAKE2_B(password, idA=joiner_id, idB=host_id, entropy_f=once(host_entropy))
    joiner_msg, host_msg = a.start(), b.start()
    key_a, key_b = a.finish(host_msg), b.finish(joiner_msg)
    assert key_a == key_b
    spake_key = key_a

    def scalar(entropy: bytes) -> bytes:
        return (int.from_bytes(entropy, "big") % ED25519_L).to_bytes(32, "little")

    # wrong password: the host's side with other words gives a different key
    b_wrong = SPAKE2_B(b"legal-winner-theme", idA=joiner_id, idB=host_id,
                       entropy_f=once(host_entropy))
    host_msg_wrong = b_wrong.start()
    key_wrong = b_wrong.finish(joiner_msg)

    # -- nonces and commitment --------------------------------------------------------------
    joiner_nonce, host_nonce = fixed("joiner nonce"), fixed("host nonce")
    commitment = hashlib.sha256(lp(COMMITMENT_LABEL) + lp(joiner_nonce)).digest()

    # -- transcript ------------------------------------------------------------------------
    items = [TRANSCRIPT_LABEL, bytes([VERSION]), ALPN, b"joiner", b"host", joiner_id, host_id,
             tag, joiner_msg, host_msg, channel_binding, commitment, host_nonce]
    encoding = b"".join(lp(i) for i in items)
    th = hashlib.sha256(encoding).digest()

    # -- key schedule --------------------------------------------------------------------
    okm = {name: HKDF(algorithm=hashes.SHA256(), length=32, salt=th, info=info).derive(spake_key)
           for name, info in LABELS.items()}
    host_mac = hmac.new(okm["host_confirm"], th, hashlib.sha256).digest()
    joiner_mac = hmac.new(okm["joiner_confirm"], th, hashlib.sha256).digest()
    accept_mac = hmac.new(okm["joiner_accept"], th, hashlib.sha256).digest()
    sas_value = hmac.new(okm["sas"], host_nonce + joiner_nonce, hashlib.sha256).digest()
    sas = f"{int.from_bytes(sas_value[:8], 'big') % 1_000_000:06d}"

    # -- device info + sealing ---------------------------------------------------------------
    nonce = bytes(12)
    joiner_info = device_info("Ada's phone", "phone", "Android 15", "1.2.3")
    host_info = device_info("büro-desktop", "desktop", "Linux 6.8", "1.2.3")
    joiner_sealed = ChaCha20Poly1305(okm["joiner_seal"]).encrypt(
        nonce, bytes.fromhex(joiner_info["encoded"]), th)
    host_sealed = ChaCha20Poly1305(okm["host_seal"]).encrypt(
        nonce, bytes.fromhex(host_info["encoded"]), th)
    joiner_info.update(key=h(okm["joiner_seal"]), nonce=h(nonce), aad=h(th),
                       sealed=h(joiner_sealed))
    host_info.update(key=h(okm["host_seal"]), nonce=h(nonce), aad=h(th), sealed=h(host_sealed))

    # -- messages --------------------------------------------------------------------------
    hello = b"\x01" + tag + joiner_id + joiner_msg + commitment
    reply = b"\x02" + host_id + host_msg + host_nonce + host_mac
    confirm = (b"\x03" + joiner_mac + joiner_nonce + len(joiner_sealed).to_bytes(2, "big")
               + joiner_sealed)
    complete = b"\x04" + len(host_sealed).to_bytes(2, "big") + host_sealed
    accept = b"\x05" + accept_mac
    assert (len(hello), len(reply), len(accept)) == (114, 130, 33)
    reject_text = "confirmation failed: wrong code"
    reject = b"\x7f" + (10).to_bytes(2, "big") + u8_str(reject_text)
    header = bytes([1, len(PAIR_KIND)]) + PAIR_KIND

    return {
        "description": "iroh-pair pairing version 2 test vectors (stream kind pair2); see "
                       "docs/PROTOCOL.md. Hex unless noted.",
        "alpn": ALPN.decode(),
        "version": VERSION,
        "envelope": {"kind": PAIR_KIND.decode(), "header": h(header),
                     "frame_body": h(hello), "frame": h(len(hello).to_bytes(4, "big") + hello),
                     "first_frame": h((len(header) + len(hello)).to_bytes(4, "big") + header + hello)},
        "code": {
            "words": words,
            "password": h(password),
            "session_tag": h(tag),
            "session_tag_base32": tag_b32,
            "ticket": ticket,
            "full": f"{'-'.join(words)}.{tag_b32}.{ticket}",
        },
        "normalization": {
            "valid": [
                {"input": "legal winner thank", "words": words},
                {"input": "  Legal--WINNER   thank ", "words": words},
                {"input": "legal-\t-winner\r\nthank", "words": words},
                {"input": "ｌｅｇａｌ\u3000winner\u00a0thank", "words": words},
                {"input": "abandon zoo", "words": ["abandon", "zoo"]},
            ],
            "invalid": [
                {"input": "legal winner thankz", "error": "unknown_word"},
                {"input": "legal_winner_thank", "error": "unknown_word"},
                {"input": "legal", "error": "word_count"},
                {"input": "", "error": "word_count"},
                {"input": "legal\u2010winner\u2010thank", "error": "unknown_word"},
            ],
        },
        "identities": {"joiner_secret_key": h(joiner_sk), "joiner_id": h(joiner_id),
                       "host_secret_key": h(host_sk), "host_id": h(host_id)},
        "channel_binding": {"label": h(CHANNEL_BINDING_LABEL), "value": h(channel_binding)},
        "commitment": {"label": h(COMMITMENT_LABEL), "joiner_nonce": h(joiner_nonce),
                       "value": h(commitment), "host_nonce": h(host_nonce)},
        "spake2": {
            "group": "Ed25519 (python-spake2 0.9 / RustCrypto spake2 compatible)",
            "password": h(password),
            "idA": h(joiner_id),
            "idB": h(host_id),
            "joiner_side": "A",
            "joiner_entropy": h(joiner_entropy),
            "joiner_scalar_le": h(scalar(joiner_entropy)),
            "joiner_msg": h(joiner_msg),
            "host_side": "B",
            "host_entropy": h(host_entropy),
            "host_scalar_le": h(scalar(host_entropy)),
            "host_msg": h(host_msg),
            "key": h(spake_key),
            "wrong_password": {"password": h(b"legal-winner-theme"), "host_msg": h(host_msg_wrong),
                               "host_key": h(key_wrong)},
        },
        "transcript": {"items": [h(i) for i in items], "encoding": h(encoding), "hash": h(th)},
        "kdf": {
            "ikm": h(spake_key),
            "salt": h(th),
            "outputs": {name: {"info": h(LABELS[name]), "okm": h(v)} for name, v in okm.items()},
        },
        "confirm": {"host_mac": h(host_mac), "joiner_mac": h(joiner_mac),
                    "accept_mac": h(accept_mac)},
        "sas": {"sas_key": h(okm["sas"]), "message": h(host_nonce + joiner_nonce),
                "value": h(sas_value), "digits": sas},
        "device_info": {"joiner": joiner_info, "host": host_info},
        "messages": {
            "hello": h(hello),
            "reply": h(reply),
            "confirm": h(confirm),
            "complete": h(complete),
            "accept": h(accept),
            "reject": {"code": 10, "text": reject_text, "encoded": h(reject)},
        },
    }


def main() -> int:
    text = json.dumps(generate(), indent=2, ensure_ascii=False) + "\n"
    if "--check" in sys.argv[1:]:
        if OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is out of date", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
