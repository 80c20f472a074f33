"""Native SPAKE2 (RustCrypto ``spake2`` in the extension) behind ``protocol.spake.Spake2``:
the vectors, a cross-check against the pure-Python ``spake2`` package (the oracle), the points
it must refuse, and what it costs (printed, never asserted)."""

from __future__ import annotations

import json
import os
import timeit
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spake2 import SPAKE2_A, SPAKE2_B

from iroh_pair.errors import ProtocolError
from iroh_pair.protocol.constants import RejectCode
from iroh_pair.protocol.spake import Spake2

VECTORS = json.loads((Path(__file__).parent / "vectors" / "pairing.json").read_text())["spake2"]
h = bytes.fromhex

# ---------------------------------------------------------------- an independent Ed25519 oracle
# Just enough of Ed25519 (RFC 8032 §5.1.3 decoding, extended-coordinate addition) to say of any
# 32 bytes whether they encode a point canonically, and whether that point has prime order.

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
Point = tuple[int, int, int, int]
IDENTITY: Point = (0, 1, 1, 0)


def decode(raw: bytes) -> Point | None:
    """The point ``raw`` encodes canonically (RFC 8032), or None."""
    y = int.from_bytes(raw, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    if y >= P:
        return None
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if v * x * x % P == (-u) % P:
        x = x * SQRT_M1 % P
    elif v * x * x % P != u:
        return None
    if x == 0 and sign:
        return None  # "-0": not canonical
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


def encode(p: Point) -> bytes:
    x, y, z, _ = p
    zi = pow(z, P - 2, P)
    x, y = x * zi % P, y * zi % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def add(p: Point, q: Point) -> Point:
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a, b = (y1 - x1) * (y2 - x2) % P, (y1 + x1) * (y2 + x2) % P
    c, dd = t1 * 2 * D * t2 % P, z1 * 2 * z2 % P
    e, f, g, hh = b - a, dd - c, dd + c, b + a
    return (e * f % P, g * hh % P, f * g % P, e * hh % P)


def mul(k: int, p: Point) -> Point:
    r = IDENTITY
    while k:
        if k & 1:
            r = add(r, p)
        p, k = add(p, p), k >> 1
    return r


def is_identity(p: Point) -> bool:
    return p[0] % P == 0 and (p[1] - p[2]) % P == 0


def acceptable(raw: bytes) -> bool:
    """Whether a peer point must be accepted: canonical, not the identity, prime order."""
    p = decode(raw)
    return p is not None and not is_identity(p) and is_identity(mul(L, p))


# The 8 points of small order (the torsion subgroup), found by the oracle: x = 0 (y = 1, -1),
# y = 0 (order 4) and the 4 points of order 8.
def _decoded(raw: bytes) -> Point:
    p = decode(raw)
    assert p is not None
    return p


ORDER_2 = _decoded((P - 1).to_bytes(32, "little"))


def torsion_points() -> list[bytes]:
    found = {encode(IDENTITY), encode(ORDER_2)}
    for raw in (bytes(32), bytes(31) + b"\x80"):  # y = 0, both signs: order 4
        p = decode(raw)
        assert p is not None
        found.add(raw)
    # order 8: y^2 solving the 8-torsion equation; get them as 8-torsion of random points
    seed = 0
    while len(found) < 8:
        seed += 1
        p = decode(seed.to_bytes(32, "little"))
        if p is None:
            continue
        t = mul(L, p)  # the torsion component (times L, invertible mod 8)
        found.add(encode(t))
        found.add(encode(add(t, ORDER_2)))
    assert all(is_identity(mul(8, decode(t))) for t in found)  # type: ignore[arg-type]
    return sorted(found)


TORSION = torsion_points()

# ---------------------------------------------------------------- the oracle's SPAKE2


def oracle(side: str, pw: bytes, id_a: bytes, id_b: bytes, entropy: bytes) -> SPAKE2_A | SPAKE2_B:
    kind = SPAKE2_A if side == "A" else SPAKE2_B
    return kind(pw, idA=id_a, idB=id_b, entropy_f=lambda n: entropy)


def test_vectors() -> None:
    v = VECTORS
    pw, id_a, id_b = h(v["password"]), h(v["idA"]), h(v["idB"])
    a, msg_a = Spake2.start("A", pw, id_a=id_a, id_b=id_b, entropy=h(v["joiner_entropy"]))
    b, msg_b = Spake2.start("B", pw, id_a=id_a, id_b=id_b, entropy=h(v["host_entropy"]))
    assert msg_a.hex() == v["joiner_msg"] and msg_b.hex() == v["host_msg"]
    assert a.finish(msg_b).hex() == v["key"]
    assert b.finish(msg_a).hex() == v["key"]
    # the scalar, little-endian followed by 32 zero bytes, reversed, is the same entropy mod L
    le = h(v["joiner_scalar_le"]) + bytes(32)
    _, again = Spake2.start("A", pw, id_a=id_a, id_b=id_b, entropy=le[::-1])
    assert again == msg_a
    w = v["wrong_password"]
    b2, msg_b2 = Spake2.start("B", h(w["password"]), id_a=id_a, id_b=id_b,
                              entropy=h(v["host_entropy"]))
    assert msg_b2.hex() == w["host_msg"]
    assert b2.finish(msg_a).hex() == w["host_key"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pw=st.binary(max_size=40),
    id_a=st.binary(max_size=40),
    id_b=st.binary(max_size=40),
    ent_a=st.binary(min_size=64, max_size=64),
    ent_b=st.binary(min_size=64, max_size=64),
    same_pw=st.booleans(),
    pw_b=st.binary(max_size=40),
)
def test_native_matches_python_spake2(
    pw: bytes, id_a: bytes, id_b: bytes, ent_a: bytes, ent_b: bytes, same_pw: bool, pw_b: bytes
) -> None:
    pw_b = pw if same_pw else pw_b
    a, msg_a = Spake2.start("A", pw, id_a=id_a, id_b=id_b, entropy=ent_a)
    b, msg_b = Spake2.start("B", pw_b, id_a=id_a, id_b=id_b, entropy=ent_b)
    oa, ob = oracle("A", pw, id_a, id_b, ent_a), oracle("B", pw_b, id_a, id_b, ent_b)
    assert msg_a == oa.start() and msg_b == ob.start()
    key_a, key_b = a.finish(msg_b), b.finish(msg_a)
    assert key_a == oa.finish(msg_b) and key_b == ob.finish(msg_a)
    assert len(key_a) == 32
    assert (key_a == key_b) == (pw == pw_b)


def started(side: str = "A") -> tuple[Spake2, bytes]:
    return Spake2.start(side, b"pw", id_a=b"a" * 32, id_b=b"b" * 32, entropy=os.urandom(64))  # type: ignore[arg-type]


def refused(msg: bytes, side: str = "A") -> str:
    s, _ = started(side)
    with pytest.raises(ProtocolError) as e:
        s.finish(msg)
    assert e.value.code == RejectCode.MALFORMED
    return str(e.value)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(min_size=32, max_size=32))
def test_random_points_accepted_exactly_when_the_oracle_says(raw: bytes) -> None:
    s, msg_a = started("A")
    peer = b"B" + raw
    if acceptable(raw):
        assert len(s.finish(peer)) == 32
    else:
        with pytest.raises(ProtocolError) as e:
            s.finish(peer)
        assert e.value.code == RejectCode.MALFORMED


def test_random_undecodable_points_refused() -> None:
    n = 0
    while n < 50:
        raw = os.urandom(32)
        if decode(raw) is None:
            assert "invalid SPAKE2 message" in refused(b"B" + raw)
            n += 1


@pytest.mark.parametrize("raw", TORSION, ids=lambda r: r.hex()[:8])
def test_small_order_points_refused(raw: bytes) -> None:
    refused(b"B" + raw, "A")
    refused(b"A" + raw, "B")


def test_points_with_a_torsion_component_refused() -> None:
    # A valid message plus a small-order point: decodes, canonical, not the identity, but not
    # in the prime-order subgroup.
    _, good = started("B")
    p = decode(good[1:])
    assert p is not None and acceptable(good[1:])
    for t in TORSION:
        if t == encode(IDENTITY):
            continue
        q = decode(t)
        assert q is not None
        mixed = encode(add(p, q))
        assert decode(mixed) is not None and not acceptable(mixed)
        assert "prime-order" in refused(b"B" + mixed)


def test_identity_and_non_canonical_encodings_refused() -> None:
    assert "identity" in refused(b"B" + encode(IDENTITY))
    y_is_p = P.to_bytes(32, "little")  # y = p: 0 written non-canonically
    y_is_p_plus_1 = (P + 1).to_bytes(32, "little")  # the identity written non-canonically
    minus_zero = (1 | (1 << 255)).to_bytes(32, "little")  # identity with the sign bit set
    for raw in (y_is_p, y_is_p_plus_1, minus_zero):
        assert decode(raw) is None
        refused(b"B" + raw)
    # a valid point with y + p in place of y (possible for y < 19)
    for y in range(19):
        raw = y.to_bytes(32, "little")
        if decode(raw) is not None:
            refused(b"B" + (y + P).to_bytes(32, "little"))


def test_reflection_length_and_side_refused() -> None:
    s, own = started("A")
    with pytest.raises(ProtocolError) as e:
        s.finish(b"B" + own[1:])  # our own point, with the peer's side byte
    assert e.value.code == RejectCode.MALFORMED and "reflected" in str(e.value)
    _, good_b = started("B")
    assert "reflected" not in refused(b"A" + good_b[1:], "A")  # wrong side byte
    assert "side" in refused(b"A" + good_b[1:], "A")
    assert "33 bytes" in refused(good_b[:-1])
    assert "33 bytes" in refused(good_b + b"\x00")
    assert "33 bytes" in refused(b"")


def test_check_refuses_what_finish_refuses_without_a_secret() -> None:
    # Spake2.check (the host's check of a Hello before any SPAKE2 work) refuses the same points
    # as finish, except a reflection, which needs our own message.
    _, good_a = started("A")
    Spake2.check(good_a, "A")
    bad = [encode(IDENTITY), P.to_bytes(32, "little"), *TORSION,
           encode(add(_decoded(good_a[1:]), ORDER_2))]
    bad += [r for r in (os.urandom(32) for _ in range(40)) if decode(r) is None][:10]
    for raw in bad:
        with pytest.raises(ProtocolError) as e:
            Spake2.check(b"A" + raw, "A")
        assert e.value.code == RejectCode.MALFORMED
    for msg in (b"B" + good_a[1:], good_a[:-1], good_a + b"\x00"):
        with pytest.raises(ProtocolError):
            Spake2.check(msg, "A")
    with pytest.raises(ValueError):
        Spake2.check(good_a, "C")  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(min_size=32, max_size=32))
def test_check_agrees_with_the_oracle(raw: bytes) -> None:
    if acceptable(raw):
        Spake2.check(b"B" + raw, "B")
    else:
        with pytest.raises(ProtocolError):
            Spake2.check(b"B" + raw, "B")


def test_finish_once_and_bad_arguments() -> None:
    s, _ = started("A")
    _, msg_b = started("B")
    s.finish(msg_b)
    with pytest.raises(ValueError):
        s.finish(msg_b)
    with pytest.raises(ValueError):
        Spake2.start("A", b"pw", id_a=b"", id_b=b"", entropy=bytes(63))
    with pytest.raises(ValueError):
        Spake2.start("C", b"pw", id_a=b"", id_b=b"", entropy=bytes(64))  # type: ignore[arg-type]
    # A message refused leaves the state spent (no retry with another message on one secret).
    s2, _ = started("A")
    with pytest.raises(ProtocolError):
        s2.finish(b"B" + bytes(32))
    with pytest.raises(ValueError):
        s2.finish(msg_b)


def test_cost_printed() -> None:
    """What a start + finish costs, natively and in pure Python, and what refusing a bad point
    costs (printed with ``-s``; never asserted)."""
    pw, id_a, id_b = b"legal-winner-thank", b"a" * 32, b"b" * 32
    ent = os.urandom(64)
    _, msg_b = Spake2.start("B", pw, id_a=id_a, id_b=id_b, entropy=os.urandom(64))

    def native() -> None:
        s, _ = Spake2.start("A", pw, id_a=id_a, id_b=id_b, entropy=ent)
        s.finish(msg_b)

    def python() -> None:
        s = oracle("A", pw, id_a, id_b, ent)
        s.start()
        s.finish(msg_b)

    def reject(raw: bytes) -> None:
        s, _ = Spake2.start("A", pw, id_a=id_a, id_b=id_b, entropy=ent)
        try:
            s.finish(b"B" + raw)
        except ProtocolError:
            return
        raise AssertionError("accepted")

    def check_refused(raw: bytes) -> None:
        try:
            Spake2.check(b"B" + raw, "B")
        except ProtocolError:
            return
        raise AssertionError("accepted")

    def start_only() -> None:
        Spake2.start("A", pw, id_a=id_a, id_b=id_b, entropy=ent)

    undecodable = next(r for r in iter(lambda: os.urandom(32), b"") if decode(r) is None)
    mixed = encode(add(decode(msg_b[1:]), ORDER_2))  # type: ignore[arg-type]

    def per_call(f: object, n: int) -> float:
        return min(timeit.repeat(f, number=n, repeat=5)) / n * 1e6  # type: ignore[arg-type]

    t_native, t_python = per_call(native, 200), per_call(python, 20)
    t_start = per_call(start_only, 200)
    lines = [
        f"SPAKE2 start+finish: native {t_native:.0f} us, python-spake2 {t_python:.0f} us "
        f"({t_python / t_native:.0f}x)",
        f"  native start alone {t_start:.0f} us; refusing (start included): "
        f"undecodable {per_call(lambda: reject(undecodable), 200):.0f} us, "
        f"identity {per_call(lambda: reject(encode(IDENTITY)), 200):.0f} us, "
        f"order-8 point {per_call(lambda: reject(TORSION[-1]), 200):.0f} us, "
        f"valid + order-2 {per_call(lambda: reject(mixed), 200):.0f} us",
        f"  Spake2.check alone (the host's Hello check, no start): valid "
        f"{per_call(lambda: Spake2.check(msg_b, 'B'), 500):.0f} us, undecodable "
        f"{per_call(lambda: check_refused(undecodable), 500):.0f} us, identity "
        f"{per_call(lambda: check_refused(encode(IDENTITY)), 500):.0f} us, valid + order-2 "
        f"{per_call(lambda: check_refused(mixed), 500):.0f} us",
    ]
    print("\n" + "\n".join(lines))
