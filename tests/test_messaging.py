"""Sealed application messages: keys, nonces, AAD, replay window, dedup, vectors."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from iroh_pair import _native
from iroh_pair.errors import FrameTooLarge, IrohPairError, MessageRejected
from iroh_pair.protocol.constants import MESSAGING_BINDING_LABEL as CHANNEL_BINDING_LABEL
from iroh_pair.protocol.constants import StreamErrorCode
from iroh_pair.protocol.kdf import SessionKeys
from iroh_pair.protocol.messaging import (
    MESSAGE_ID_LEN,
    OVERHEAD,
    REPLAY_WINDOW,
    Deliveries,
    MessageChannel,
    ReplayWindow,
    SeenIds,
    derive_subkey,
    encode_aad,
    nonce,
)

VECTORS = Path(__file__).resolve().parent / "vectors" / "messaging.json"
H_ID, J_ID = b"h" * 32, b"j" * 32


def _keys() -> tuple[SessionKeys, SessionKeys]:
    h2j, j2h = os.urandom(32), os.urandom(32)
    return SessionKeys(send=h2j, receive=j2h), SessionKeys(send=j2h, receive=h2j)


def _pair(
    cb: bytes | None = None, **kw: Any
) -> tuple[MessageChannel, MessageChannel]:
    """(host channel, joiner channel) on one simulated connection."""
    hk, jk = _keys()
    cb = os.urandom(32) if cb is None else cb
    return MessageChannel(H_ID, J_ID, hk, cb, **kw), MessageChannel(J_ID, H_ID, jk, cb, **kw)


def _code(exc: pytest.ExceptionInfo[MessageRejected]) -> StreamErrorCode:
    return exc.value.code


def test_round_trip_both_directions() -> None:
    h, j = _pair()
    for i in range(5):
        s = h.seal("chat", b"to joiner %d" % i)
        m = j.open("chat", s)
        assert (m.plaintext, m.counter, m.kind) == (b"to joiner %d" % i, i, "chat")
        assert len(m.message_id) == MESSAGE_ID_LEN
        back = j.seal("chat", b"to host %d" % i)
        assert h.open("chat", back).plaintext == b"to host %d" % i
    assert h.next_counter == j.next_counter == 5
    empty = h.seal("x", b"")
    assert len(empty) == OVERHEAD and j.open("x", empty).plaintext == b""


def test_keys_are_mirrored() -> None:
    hk, jk = _keys()
    cb = os.urandom(32)
    assert derive_subkey(hk.send, cb, H_ID, J_ID) == derive_subkey(jk.receive, cb, H_ID, J_ID)
    assert derive_subkey(hk.receive, cb, J_ID, H_ID) == derive_subkey(jk.send, cb, J_ID, H_ID)
    assert derive_subkey(hk.send, cb, H_ID, J_ID) != derive_subkey(jk.send, cb, J_ID, H_ID)
    # a channel cannot open its own messages (the directions have different keys)
    h = MessageChannel(H_ID, J_ID, hk, cb)
    with pytest.raises(MessageRejected) as e:
        h.open("chat", h.seal("chat", b"self"))
    assert _code(e) is StreamErrorCode.TAMPERED
    # swapped keys on one side: nothing opens
    bad = MessageChannel(J_ID, H_ID, hk, cb)
    with pytest.raises(MessageRejected):
        bad.open("chat", MessageChannel(H_ID, J_ID, hk, cb).seal("chat", b"x"))


def test_tamper_any_byte() -> None:
    h, j = _pair()
    sealed = h.seal("chat", b"attack at dawn", b"m" * 16)
    for i in range(len(sealed)):
        for bit in (0x01, 0x80):
            bad = bytearray(sealed)
            bad[i] ^= bit
            with pytest.raises(MessageRejected) as e:
                j.open("chat", bytes(bad))
            # the version byte is checked before authentication
            want = StreamErrorCode.MALFORMED_MESSAGE if i == 0 else StreamErrorCode.TAMPERED
            assert _code(e) is want, i
    # truncated or extended
    for bad2 in (sealed[:-1], sealed + b"\x00", sealed[: OVERHEAD - 1]):
        with pytest.raises(MessageRejected) as e:
            j.open("chat", bad2)
        assert _code(e) in (StreamErrorCode.TAMPERED, StreamErrorCode.MALFORMED_MESSAGE)
    # nothing above consumed the counter: the genuine message still opens
    assert j.open("chat", sealed).plaintext == b"attack at dawn"


def test_replay_rejected() -> None:
    h, j = _pair()
    s = h.seal("chat", b"once")
    j.open("chat", s)
    with pytest.raises(MessageRejected) as e:
        j.open("chat", s)
    assert _code(e) is StreamErrorCode.REPLAYED and e.value.counter == 0


def test_out_of_order_within_window() -> None:
    h, j = _pair()
    msgs = [h.seal("chat", b"%d" % i) for i in range(300)]
    order = list(range(300))
    random.Random(7).shuffle(order)
    for i in order:
        assert j.open("chat", msgs[i]).plaintext == b"%d" % i
    for i in (0, 150, 299):
        with pytest.raises(MessageRejected) as e:
            j.open("chat", msgs[i])
        assert _code(e) is StreamErrorCode.REPLAYED


def test_too_old() -> None:
    h, j = _pair()
    msgs = [h.seal("chat", b"") for _ in range(REPLAY_WINDOW + 2)]
    j.open("chat", msgs[-1])  # counter WINDOW + 1
    with pytest.raises(MessageRejected) as e:
        j.open("chat", msgs[0])
    assert _code(e) is StreamErrorCode.TOO_OLD
    with pytest.raises(MessageRejected) as e:
        j.open("chat", msgs[1])  # exactly WINDOW behind
    assert _code(e) is StreamErrorCode.TOO_OLD
    assert j.open("chat", msgs[2]).counter == 2  # WINDOW - 1 behind: still inside


def test_replay_window_unit() -> None:
    w = ReplayWindow(8)
    assert w.highest is None and w.check(0) is None
    for c in (5, 3, 9):
        assert w.check(c) is None
        w.mark(c)
    assert w.highest == 9
    assert w.check(5) is StreamErrorCode.REPLAYED
    assert w.check(1) is StreamErrorCode.TOO_OLD
    assert w.check(2) is None
    w.mark(100)  # jump beyond the width clears the bitmap
    assert w.check(99) is None and w.check(100) is StreamErrorCode.REPLAYED
    assert w.check(92) is StreamErrorCode.TOO_OLD
    with pytest.raises(ValueError):
        ReplayWindow(0)


@pytest.mark.parametrize(
    "what", ["kind", "sender", "receiver", "reply_to", "not_reply", "binding", "session"]
)
def test_aad_and_key_binding(what: str) -> None:
    hk, jk = _keys()
    cb = os.urandom(32)
    other = b"o" * 32
    h = MessageChannel(H_ID, J_ID, hk, cb)
    rid = os.urandom(16)
    sealed = h.seal("chat", b"bound", reply_to=rid if what == "not_reply" else None)
    open_kw: dict[str, Any] = {}
    kind = "chat"
    if what == "kind":
        j = MessageChannel(J_ID, H_ID, jk, cb)
        kind = "chat2"
    elif what == "sender":  # the receiver believes the message comes from someone else
        j = MessageChannel(J_ID, other, jk, cb)
    elif what == "receiver":  # delivered to a different local id
        j = MessageChannel(other, H_ID, jk, cb)
    elif what == "reply_to":  # presented as a reply although it is a plain message
        j = MessageChannel(J_ID, H_ID, jk, cb)
        open_kw["reply_to"] = rid
    elif what == "not_reply":  # a reply presented as a plain message
        j = MessageChannel(J_ID, H_ID, jk, cb)
    elif what == "binding":  # recorded on one connection, played into another
        j = MessageChannel(J_ID, H_ID, jk, os.urandom(32))
    else:  # another pairing's keys
        j = MessageChannel(J_ID, H_ID, _keys()[1], cb)
    with pytest.raises(MessageRejected) as e:
        j.open(kind, sealed, **open_kw)
    assert _code(e) is StreamErrorCode.TAMPERED


def test_reply_bound_to_request() -> None:
    h, j = _pair()
    req = j.open("rpc", h.seal("rpc", b"question"))
    reply = j.seal("rpc", b"answer", reply_to=req.message_id)
    with pytest.raises(MessageRejected) as e:
        h.open("rpc", reply, reply_to=os.urandom(16))
    assert _code(e) is StreamErrorCode.TAMPERED
    assert h.open("rpc", reply, reply_to=req.message_id).plaintext == b"answer"


def test_duplicate_message_id_across_reconnects() -> None:
    seen = SeenIds()
    hk, jk = _keys()
    mid = os.urandom(16)
    # first connection: delivered (but the sender never learnt it)
    cb1 = os.urandom(32)
    j1 = MessageChannel(J_ID, H_ID, jk, cb1, seen=seen)
    first = j1.open("chat", MessageChannel(H_ID, J_ID, hk, cb1).seal("chat", b"hello", mid))
    assert first.message_id == mid
    # retry on a new connection: new key, counter 0 again, same message id
    cb2 = os.urandom(32)
    h2 = MessageChannel(H_ID, J_ID, hk, cb2)
    j2 = MessageChannel(J_ID, H_ID, jk, cb2, seen=seen)
    retry = h2.seal("chat", b"hello", mid)
    with pytest.raises(MessageRejected) as e:
        j2.open("chat", retry)
    assert _code(e) is StreamErrorCode.DUPLICATE and e.value.message_id == mid
    # the counter was consumed by the authentic duplicate
    with pytest.raises(MessageRejected) as e:
        j2.open("chat", retry)
    assert _code(e) is StreamErrorCode.REPLAYED
    # a handler failure can un-see the id so that the next retry is delivered
    seen.discard(mid)
    assert j2.open("chat", h2.seal("chat", b"hello", mid)).message_id == mid


def test_seen_ids_lru() -> None:
    s = SeenIds(3)
    assert s.add(b"a") and s.add(b"b") and s.add(b"c")
    assert not s.add(b"a")  # refreshes a
    assert s.add(b"d")  # evicts b, the least recent
    assert b"b" not in s and b"a" in s and len(s) == 3
    s.discard(b"a")
    assert b"a" not in s
    with pytest.raises(ValueError):
        SeenIds(0)


class _Store:
    """A DeliveryStore in a dict (what a registry file holds across restarts)."""

    def __init__(self) -> None:
        self.ids: dict[str, set[bytes]] = {}
        self.lookups = 0
        self.fail = False

    def is_delivered(self, peer: str, message_id: bytes) -> bool:
        self.lookups += 1
        return message_id in self.ids.get(peer, set())

    def record_delivered(self, peer: str, message_id: bytes) -> bool:
        if self.fail:
            raise IrohPairError("disk full")
        ids = self.ids.setdefault(peer, set())
        new = message_id not in ids
        ids.add(message_id)
        return new


def test_deliveries_new_in_progress_duplicate_and_restart() -> None:
    store = _Store()
    d: Deliveries[str] = Deliveries(store)
    m = os.urandom(16)
    assert d.begin("a", m) is None and d.in_flight("a", m)
    assert d.begin("a", m) is StreamErrorCode.IN_PROGRESS  # while the handler runs
    assert d.begin("b", m) is None  # ids are per peer
    assert store.ids == {}  # nothing recorded before the handler returned
    d.commit("a", m)
    assert store.ids == {"a": {m}} and not d.in_flight("a", m)
    assert d.begin("a", m) is StreamErrorCode.DUPLICATE
    lookups = store.lookups
    assert d.begin("a", m) is StreamErrorCode.DUPLICATE
    assert store.lookups == lookups  # answered by the in-memory cache
    # a restart: empty memory, the same store
    d2: Deliveries[str] = Deliveries(store)
    assert d2.begin("a", m) is StreamErrorCode.DUPLICATE
    # without persistence the restarted receiver would deliver it again (what §13.8 fixes)
    assert Deliveries[str]().begin("a", m) is None


def test_deliveries_failed_handler_records_nothing() -> None:
    store = _Store()
    d: Deliveries[str] = Deliveries(store)
    m = os.urandom(16)
    assert d.begin("a", m) is None
    d.abort("a", m)
    assert store.ids == {} and not d.in_flight("a", m)
    assert d.begin("a", m) is None  # the retry is delivered
    d.commit("a", m)
    assert d.begin("a", m) is StreamErrorCode.DUPLICATE


def test_deliveries_store_failure_and_forget() -> None:
    store = _Store()
    d: Deliveries[str] = Deliveries(store, cache_capacity=2)
    m1, m2, m3 = (os.urandom(16) for _ in range(3))
    assert d.begin("a", m1) is None
    store.fail = True
    with pytest.raises(IrohPairError):
        d.commit("a", m1)
    # the handler did run: this process still refuses the id, and it is no longer in flight
    assert not d.in_flight("a", m1) and d.begin("a", m1) is StreamErrorCode.DUPLICATE
    store.fail = False
    for m in (m2, m3):
        assert d.begin("a", m) is None
        d.commit("a", m)
    # m1 fell out of the 2-entry cache and was never stored: delivered again (documented gap)
    assert d.begin("a", m1) is None
    d.abort("a", m1)
    assert d.begin("a", m2) is StreamErrorCode.DUPLICATE  # from the cache or the store
    assert d.begin("b", m1) is None
    d.forget("b")
    assert not d.in_flight("b", m1)
    d.forget("a")  # the store's ids are the store's business
    assert d.begin("a", m2) is StreamErrorCode.DUPLICATE


def test_deliveries_without_a_store_are_in_memory() -> None:
    d: Deliveries[str] = Deliveries(cache_capacity=1)
    m1, m2 = os.urandom(16), os.urandom(16)
    for m in (m1, m2):
        assert d.begin("a", m) is None
        d.commit("a", m)
    assert d.begin("a", m2) is StreamErrorCode.DUPLICATE
    assert d.begin("a", m1) is None  # evicted from the LRU: nothing behind it


def test_nonce_uniqueness_over_reconnects() -> None:
    hk, jk = _keys()
    pairs: set[tuple[bytes, bytes]] = set()
    total = 0
    for _ in range(20):
        cb = os.urandom(32)
        h = MessageChannel(H_ID, J_ID, hk, cb)
        j = MessageChannel(J_ID, H_ID, jk, cb)
        k_hj = derive_subkey(hk.send, cb, H_ID, J_ID)
        k_jh = derive_subkey(jk.send, cb, J_ID, H_ID)
        for ch, key in ((h, k_hj), (j, k_jh)):
            for _ in range(25):
                s = ch.seal("chat", b"x")
                pairs.add((key, s[1:9]))
                total += 1
                assert s[1:9] == nonce(int.from_bytes(s[1:9], "big"))[4:]
    assert len(pairs) == total == 20 * 2 * 25


def test_limits_and_arguments() -> None:
    h, j = _pair(max_plaintext=100)
    h.seal("k", b"x" * 100)
    with pytest.raises(FrameTooLarge):
        h.seal("k", b"x" * 101)
    big = MessageChannel(H_ID, J_ID, _keys()[0], os.urandom(32)).seal("k", b"x" * 101)
    with pytest.raises(MessageRejected) as e:
        j.open("k", big)
    assert _code(e) is StreamErrorCode.FRAME_TOO_LARGE and e.value.code == 4
    for bad_kind in ("", "Upper", "a" * 33, "sp ace"):
        with pytest.raises(ValueError):
            h.seal(bad_kind, b"")
    with pytest.raises(ValueError):
        h.seal("k", b"", b"short")
    with pytest.raises(ValueError):
        MessageChannel(b"x" * 31, J_ID, _keys()[0], os.urandom(32))
    with pytest.raises(ValueError):
        MessageChannel(H_ID, J_ID, _keys()[0], os.urandom(16))
    assert "redacted" not in repr(h) and h.local_id.hex()[:10] in repr(h)


def test_codes_fit_stream_error_table() -> None:
    # One table (§10.3) for the transport, the protocol and messaging; a refused sealed message
    # is reset with FRAME_TOO_LARGE (4) or one of messaging's own codes (16..21).
    assert {c.name: int(c) for c in StreamErrorCode} == {
        "CANCELLED": 1,
        "DROPPED": 2,
        "HANDLER_ERROR": 3,
        "FRAME_TOO_LARGE": 4,
        "UNKNOWN_KIND": 5,
        "BAD_ENVELOPE": 6,
        "TIMEOUT": 7,
        "NOT_ADMITTED": 8,
        "TAMPERED": 16,
        "REPLAYED": 17,
        "DUPLICATE": 18,
        "MALFORMED_MESSAGE": 19,
        "TOO_OLD": 20,
        "IN_PROGRESS": 21,
    }
    # The native transport resets and stops streams with the same numbers.
    native = {
        "CANCELLED": _native.STREAM_CANCELLED,
        "DROPPED": _native.STREAM_DROPPED,
        "HANDLER_ERROR": _native.HANDLER_ERROR,
        "FRAME_TOO_LARGE": _native.FRAME_TOO_LARGE,
        "UNKNOWN_KIND": _native.UNKNOWN_KIND,
        "BAD_ENVELOPE": _native.BAD_ENVELOPE,
        "TIMEOUT": _native.STREAM_TIMEOUT,
        "NOT_ADMITTED": _native.NOT_ADMITTED,
    }
    assert all(int(StreamErrorCode[name]) == value for name, value in native.items()), native
    assert isinstance(MessageRejected(StreamErrorCode.TAMPERED), IrohPairError)
    assert CHANNEL_BINDING_LABEL == b"iroh-pair/1 messaging channel binding"


_FUZZ_H, _FUZZ_J = _pair()
_FUZZ_VALID = _FUZZ_H.seal("chat", b"valid")


@settings(max_examples=200, deadline=None, database=None)
@given(
    st.one_of(
        st.binary(max_size=120),
        st.builds(
            lambda i, b: _FUZZ_VALID[:i] + bytes([b]) + _FUZZ_VALID[i + 1 :],
            st.integers(0, len(_FUZZ_VALID) - 1),
            st.integers(0, 255),
        ),
    )
)
def test_open_arbitrary_bytes_only_raises_rejected(data: bytes) -> None:
    j = MessageChannel(J_ID, H_ID, SessionKeys(os.urandom(32), os.urandom(32)), os.urandom(32))
    for ch in (j, _FUZZ_J):
        try:
            ch.open("chat", data)
        except MessageRejected:
            pass


# --------------------------------------------------------------------------------------------
# vectors (tools/gen_messaging_vectors.py computes them from the primitives)


def _h(v: Any) -> bytes:
    return bytes.fromhex(str(v))


def test_vectors() -> None:
    v = json.loads(VECTORS.read_text())
    host_id, joiner_id, cb = _h(v["host_id"]), _h(v["joiner_id"]), _h(v["channel_binding"])
    h2j, j2h = _h(v["session_keys"]["host_to_joiner"]), _h(v["session_keys"]["joiner_to_host"])
    assert v["channel_binding_label"] == CHANNEL_BINDING_LABEL.decode()
    host = MessageChannel(host_id, joiner_id, SessionKeys(h2j, j2h), cb)
    joiner = MessageChannel(joiner_id, host_id, SessionKeys(j2h, h2j), cb)
    assert derive_subkey(h2j, cb, host_id, joiner_id) == _h(v["subkeys"]["host_to_joiner"])
    assert derive_subkey(j2h, cb, joiner_id, host_id) == _h(v["subkeys"]["joiner_to_host"])
    for m in v["messages"]:
        sender, receiver = (host, joiner) if m["from"] == "host" else (joiner, host)
        reply_to = _h(m["reply_to"]) if m["reply_to"] is not None else None
        aad = encode_aad(sender.local_id, receiver.local_id, m["kind"], m["counter"], reply_to)
        assert aad == _h(m["aad"])
        assert nonce(m["counter"]) == _h(m["nonce"])
        while sender.next_counter < m["counter"]:
            sender.seal(m["kind"], b"")
        sealed = sender.seal(m["kind"], _h(m["plaintext"]), _h(m["message_id"]), reply_to=reply_to)
        assert sealed == _h(m["sealed"])
        opened = receiver.open(m["kind"], sealed, reply_to=reply_to)
        assert (opened.message_id, opened.plaintext, opened.counter) == (
            _h(m["message_id"]),
            _h(m["plaintext"]),
            m["counter"],
        )
        # and independently of the package: the documented layout
        key = _h(v["subkeys"]["host_to_joiner" if m["from"] == "host" else "joiner_to_host"])
        inner = ChaCha20Poly1305(key).decrypt(_h(m["nonce"]), sealed[9:], _h(m["aad"]))
        assert inner == _h(m["message_id"]) + _h(m["plaintext"])


def test_vectors_file_is_current() -> None:
    tool = Path(__file__).resolve().parent.parent / "tools" / "gen_messaging_vectors.py"
    r = subprocess.run([sys.executable, str(tool), "--check"], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
