#!/usr/bin/env python3
"""Generate ``tests/vectors/messaging.json``: vectors of iroh-pair/1 sealed messages (§13).

Written from ``docs/PROTOCOL.md`` §13 with hashlib / cryptography directly; it does NOT import
the iroh_pair package, so ``tests/test_messaging.py`` (and the Rust side) check an independent
computation. All byte strings are lowercase hex.

    python tools/gen_messaging_vectors.py            # rewrite tests/vectors/messaging.json
    python tools/gen_messaging_vectors.py --check    # exit 1 if the file is out of date
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

OUT = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "messaging.json"

VERSION = 1
CHANNEL_BINDING_LABEL = b"iroh-pair/1 messaging channel binding"
KEY_LABEL = b"iroh-pair/1 message key"


def fixed(label: str) -> bytes:
    """32 deterministic bytes."""
    return hashlib.sha256(b"iroh-pair messaging vectors: " + label.encode()).digest()


def endpoint_id(seed: bytes) -> bytes:
    pub = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


def subkey(session_key: bytes, cb: bytes, sender: bytes, receiver: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=cb, info=KEY_LABEL + sender + receiver)
    return hkdf.derive(session_key)


def aad(sender: bytes, receiver: bytes, kind: str, counter: int, reply_to: bytes | None) -> bytes:
    k = kind.encode("ascii")
    return (
        bytes([VERSION, 0 if reply_to is None else 1])
        + sender
        + receiver
        + bytes([len(k)])
        + k
        + counter.to_bytes(8, "big")
        + (bytes(16) if reply_to is None else reply_to)
    )


def nonce(counter: int) -> bytes:
    return bytes(4) + counter.to_bytes(8, "big")


def build() -> dict[str, Any]:
    host_seed, joiner_seed = fixed("host secret key"), fixed("joiner secret key")
    host_id, joiner_id = endpoint_id(host_seed), endpoint_id(joiner_seed)
    h2j, j2h = fixed("session key host->joiner"), fixed("session key joiner->host")
    cb = fixed("channel binding")
    keys = {
        "host": subkey(h2j, cb, host_id, joiner_id),
        "joiner": subkey(j2h, cb, joiner_id, host_id),
    }
    ids = {"host": host_id, "joiner": joiner_id}
    peer = {"host": "joiner", "joiner": "host"}

    rpc_id = fixed("message id rpc request")[:16]
    plan: list[tuple[str, str, int, bytes, bytes, bytes | None, str]] = [
        ("host", "chat", 0, fixed("message id chat")[:16], b"hello joiner", None,
         "host -> joiner, one-way message, counter 0"),
        ("joiner", "rpc", 0, rpc_id, b"what time is it?", None,
         "joiner -> host, request, counter 0"),
        ("host", "rpc", 1, fixed("message id rpc reply")[:16], b"tea time", rpc_id,
         "host -> joiner, reply to the request, counter 1"),
    ]
    messages = []
    for frm, kind, counter, mid, pt, reply_to, note in plan:
        a = aad(ids[frm], ids[peer[frm]], kind, counter, reply_to)
        n = nonce(counter)
        sealed = bytes([VERSION]) + counter.to_bytes(8, "big")
        sealed += ChaCha20Poly1305(keys[frm]).encrypt(n, mid + pt, a)
        messages.append(
            {
                "note": note,
                "from": frm,
                "kind": kind,
                "counter": counter,
                "message_id": mid.hex(),
                "plaintext": pt.hex(),
                "reply_to": None if reply_to is None else reply_to.hex(),
                "aad": a.hex(),
                "nonce": n.hex(),
                "sealed": sealed.hex(),
            }
        )
    return {
        "description": "iroh-pair/1 sealed application messages, docs/PROTOCOL.md section 13",
        "channel_binding_label": CHANNEL_BINDING_LABEL.decode(),
        "key_label": KEY_LABEL.decode(),
        "host_secret_key": host_seed.hex(),
        "joiner_secret_key": joiner_seed.hex(),
        "host_id": host_id.hex(),
        "joiner_id": joiner_id.hex(),
        "session_keys": {"host_to_joiner": h2j.hex(), "joiner_to_host": j2h.hex()},
        "channel_binding": cb.hex(),
        "subkeys": {"host_to_joiner": keys["host"].hex(), "joiner_to_host": keys["joiner"].hex()},
        "messages": messages,
    }


def main(argv: list[str]) -> int:
    text = json.dumps(build(), indent=2) + "\n"
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python tools/gen_messaging_vectors.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
