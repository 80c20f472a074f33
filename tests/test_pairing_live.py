"""Attacks on pairing over real iroh endpoints on loopback: replay, man in the middle, identity
claims, races, expiry; SAS approval and decline on real nodes; version 1 refused both ways.
(The in-memory state machines are covered in test_pairing_protocol.py.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from helpers import open_local_node

from iroh_pair import Node, SasCheck, errors
from iroh_pair.protocol.code import PairingCode
from iroh_pair.protocol.messaging import new_message_id
from iroh_pair.errors import PairingFailed
from iroh_pair._pairing import channel_binding, run_joiner
from iroh_pair.protocol import (
    ALPN,
    MAX_MESSAGE,
    PAIR_KIND,
    PAIR_KIND_V1,
    DeviceInfo,
    JoinerHandshake,
    PairingOffer,
    PairingResult,
    RejectCode,
    SendMessage,
    StreamErrorCode,
    encode_header,
    wire,
)
from iroh_pair.transport import Connection, Endpoint, EndpointAddr, RecvStream, SecretKey, SendStream

INFO = DeviceInfo(name="attacker")


open_node = open_local_node


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[Node]:
    n = await open_node(tmp_path / "host", "host")
    try:
        yield n
    finally:
        await n.close()


async def until_idle(offer: PairingOffer) -> None:
    for _ in range(200):
        if not offer.busy(time.monotonic()):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the host's pairing session did not end")


async def dial(ep: Endpoint, code: PairingCode) -> Connection:
    return await ep.connect(EndpointAddr.from_ticket(code.ticket), ALPN, timeout=5)


async def no_pairing(host: Node) -> None:
    assert host.devices() == []


async def test_claimed_id_must_match_the_connection(host: Node) -> None:
    hosted = await host.host_pairing()
    async with await Endpoint.bind() as ep:
        conn = await dial(ep, hosted.code)
        forged = SecretKey.generate().public().to_bytes()  # claims another device's id

        async def keep(_: object) -> None:
            raise AssertionError("must not pair")

        with pytest.raises(PairingFailed) as e:
            await run_joiner(conn, hosted.code, local_id=forged, info=INFO, on_paired=keep)
        assert e.value.code == RejectCode.ID_MISMATCH and e.value.by_peer
    await no_pairing(host)


async def _half_handshake(ep: Endpoint, code: PairingCode) -> tuple[bytes, bytes]:
    """An honest joiner that sends M1, gets M2, computes M3 but vanishes instead of sending it.
    Returns the recorded (first frame, M3)."""
    conn = await dial(ep, code)
    hs = JoinerHandshake(code, joiner_id=ep.id.to_bytes(), host_id=conn.remote_id.to_bytes(),
                         channel_binding=channel_binding(conn), joiner_info=INFO)
    send, recv = await conn.open_bi()
    first = encode_header(PAIR_KIND) + hs.start()
    await send.write_frame(first)
    m2 = await asyncio.wait_for(recv.read_frame(MAX_MESSAGE), 5)
    assert m2 is not None
    events = hs.receive(m2)
    m3 = next(ev.body for ev in events if isinstance(ev, SendMessage))
    conn.close(0, b"gone")
    return first, m3


async def test_recorded_messages_replayed_on_a_new_connection_do_not_pair(host: Node) -> None:
    hosted = await host.host_pairing()
    key = SecretKey.generate()
    async with await Endpoint.bind(secret_key=key) as ep:
        first, m3 = await _half_handshake(ep, hosted.code)
    await until_idle(hosted.offer)
    assert hosted.offer.attempts_used == 1  # vanishing after the host's reply used an attempt
    async with await Endpoint.bind(secret_key=key) as ep2:  # same EndpointId, new connection
        conn = await dial(ep2, hosted.code)
        send, recv = await conn.open_bi()
        await send.write_frame(first)
        m2 = await asyncio.wait_for(recv.read_frame(MAX_MESSAGE), 5)
        assert m2 is not None and wire.decode(m2).__class__ is wire.Reply
        await send.write_frame(m3)
        reply = await asyncio.wait_for(recv.read_frame(MAX_MESSAGE), 5)
        assert reply is not None
        msg = wire.decode(reply)
        assert isinstance(msg, wire.Reject) and msg.code == RejectCode.WRONG_CODE
    await no_pairing(host)
    assert not hosted.done  # the code is still valid: one attempt left
    await until_idle(hosted.offer)
    async with await Endpoint.bind(secret_key=key) as ep3:  # the right words still pair
        conn = await dial(ep3, hosted.code)
        stored: list[object] = []

        async def keep(r: object) -> None:
            stored.append(r)

        await run_joiner(conn, hosted.code, local_id=ep3.id.to_bytes(), info=INFO, on_paired=keep)
        assert stored
    assert (await hosted.wait(5)).endpoint_id == key.public()


async def _relay_frames(
    src: RecvStream, dst: SendStream, rewrite: object, done: asyncio.Event
) -> None:
    try:
        while (f := await src.read_frame(MAX_MESSAGE)) is not None:
            await dst.write_frame(rewrite(f))  # type: ignore[operator]
    except errors.IrohPairError:
        pass
    finally:
        done.set()


async def test_man_in_the_middle_fails_confirmation(host: Node, tmp_path: Path) -> None:
    """M sits between an honest joiner and the honest host, under its own id, rewriting every
    id claim so neither side sees an id mismatch: confirmation fails on both."""
    hosted = await host.host_pairing()
    joiner = await open_node(tmp_path / "joiner", "joiner")
    mitm = await Endpoint.bind(alpns=[ALPN])
    try:
        mid = mitm.id.to_bytes()
        # The joiner is given a code that points at M (the words and tag are the host's).
        evil_code = PairingCode(hosted.code.words, hosted.code.tag, mitm.ticket())
        to_host = await dial(mitm, hosted.code)
        done = asyncio.Event()

        async def serve_joiner() -> None:
            conn = await mitm.accept()
            assert conn is not None
            js, jr = await conn.accept_bi()
            hs, hr = await to_host.open_bi()

            def up(f: bytes) -> bytes:  # joiner -> host: claim to be M
                if f.startswith(encode_header(PAIR_KIND)):
                    n = len(encode_header(PAIR_KIND))
                    m = wire.decode(f[n:])
                    assert isinstance(m, wire.Hello)
                    return f[:n] + wire.encode(
                        wire.Hello(m.session_tag, mid, m.spake_msg, m.commitment))
                return f

            def down(f: bytes) -> bytes:  # host -> joiner: claim to be M
                m = wire.decode(f)
                if isinstance(m, wire.Reply):
                    return wire.encode(wire.Reply(mid, m.spake_msg, m.host_nonce, m.host_mac))
                return f

            await asyncio.gather(_relay_frames(jr, hs, up, done), _relay_frames(hr, js, down, done))

        relay = asyncio.ensure_future(serve_joiner())
        with pytest.raises(PairingFailed) as e:
            await joiner.join(evil_code, timeout=15)
        assert e.value.code == RejectCode.WRONG_CODE  # confirmation, not an id mismatch
        relay.cancel()
        assert joiner.devices() == []
        await no_pairing(host)
    finally:
        await joiner.close()
        await mitm.close()


async def test_mitm_who_knows_the_code_shows_different_sas(host: Node, tmp_path: Path) -> None:
    """Knowing the code, M can pair with each side on its own: the two SAS strings differ, so
    comparing screens exposes it."""
    hosted = await host.host_pairing()
    joiner = await open_node(tmp_path / "joiner", "joiner")
    mitm = await open_node(tmp_path / "mitm", "mitm")
    try:
        fake = await mitm.host_pairing()
        # M's own offer, but with the host's secret words (it learned the code).
        fake_code = PairingCode(hosted.code.words, fake.code.tag, mitm.ticket())
        offer = PairingOffer.create(fake_code, now=time.monotonic())
        mitm._offers.remove(offer.tag)
        mitm._offers.add(offer)
        mitm._hosted[offer.tag].offer = offer
        await asyncio.gather(joiner.join(fake_code), mitm.join(hosted.code))
        sas_joiner = joiner.last_sas(mitm.id)
        sas_host = host.last_sas(mitm.id)
        assert len(sas_joiner) == len(sas_host) == 6
        assert sas_joiner != sas_host
    finally:
        await joiner.close()
        await mitm.close()


async def test_two_joiners_racing_at_most_one_pairs(host: Node, tmp_path: Path) -> None:
    for round_ in range(5):
        hosted = await host.host_pairing()
        js = [await open_node(tmp_path / f"r{round_}-{i}", f"j{i}") for i in range(2)]
        try:
            results = await asyncio.gather(*(j.join(hosted.code, timeout=15) for j in js), return_exceptions=True)
            ok = [r for r in results if not isinstance(r, BaseException)]
            assert len(ok) <= 1, results
            for r in results:
                if isinstance(r, BaseException):
                    assert isinstance(r, (PairingFailed, errors.IrohPairError)), r
        finally:
            for j in js:
                await j.close()


async def test_expired_code_fails(host: Node, tmp_path: Path) -> None:
    hosted = await host.host_pairing(ttl=0.3)
    await asyncio.sleep(0.5)
    with pytest.raises(PairingFailed):
        await hosted.wait(1)
    joiner = await open_node(tmp_path / "late", "late")
    try:
        with pytest.raises((PairingFailed, errors.ConnectionLost)):
            await joiner.join(hosted.code, timeout=10)
        assert joiner.devices() == []
    finally:
        await joiner.close()
    await no_pairing(host)


async def test_scripted_host_with_bad_mac_is_refused_by_the_joiner(tmp_path: Path) -> None:
    """A host that answers with a corrupted confirmation MAC, and never rejects: the joiner's
    own check refuses it, and it stores nothing."""
    from iroh_pair.protocol import HostHandshake, decode_header

    async with await Endpoint.bind(alpns=[ALPN]) as evil:
        code = PairingCode.generate(evil.ticket())
        offer = PairingOffer.create(code, now=time.monotonic())
        joiner = await open_node(tmp_path / "joiner", "joiner")
        sent_back: list[bytes] = []

        async def scripted_host() -> None:
            conn = await evil.accept()
            assert conn is not None
            send, recv = await conn.accept_bi()
            first = await recv.read_frame(MAX_MESSAGE)
            assert first is not None
            _, n = decode_header(first)
            hs = HostHandshake(offer, host_id=evil.id.to_bytes(), remote_id=conn.remote_id.to_bytes(),
                               channel_binding=channel_binding(conn), host_info=INFO)
            m2 = next(ev.body for ev in hs.receive(first[n:], time.monotonic()) if isinstance(ev, SendMessage))
            reply = wire.decode(m2)
            assert isinstance(reply, wire.Reply)
            bad_mac = bytes([reply.host_mac[0] ^ 1]) + reply.host_mac[1:]
            await send.write_frame(wire.encode(
                wire.Reply(reply.host_id, reply.spake_msg, reply.host_nonce, bad_mac)))
            while (f := await recv.read_frame(MAX_MESSAGE)) is not None:
                sent_back.append(f)

        task = asyncio.ensure_future(scripted_host())
        try:
            with pytest.raises(PairingFailed) as e:
                await joiner.join(code, timeout=10)
            assert e.value.code == RejectCode.WRONG_CODE and not e.value.by_peer
            assert joiner.devices() == []
            await asyncio.wait_for(task, 5)
            # the joiner sent its Reject, never a Confirm carrying its device info
            assert [type(wire.decode(f)) for f in sent_back] == [wire.Reject]
        finally:
            task.cancel()
            await joiner.close()


async def test_wrong_session_tag_is_not_counted(host: Node) -> None:
    hosted = await host.host_pairing()
    other_tag = bytes(b ^ 0xFF for b in hosted.code.tag)
    forged = PairingCode(hosted.code.words, other_tag, hosted.code.ticket)
    async with await Endpoint.bind() as ep:
        conn = await dial(ep, hosted.code)

        async def keep(_: object) -> None:
            raise AssertionError("must not pair")

        with pytest.raises(PairingFailed) as e:
            await run_joiner(conn, forged, local_id=ep.id.to_bytes(), info=INFO, on_paired=keep)
        assert e.value.code == RejectCode.BAD_TAG
    assert hosted.offer.attempts_used == 0
    await no_pairing(host)


# -- version 2: SAS approval on real nodes, version 1 refused ------------------------------


async def _pair_with_answers(
    host: Node, joiner: Node, host_says: bool, joiner_says: bool
) -> tuple[object, object, list[SasCheck], list[SasCheck]]:
    """Host and join with async confirm callbacks that answer as told; returns both outcomes
    (result or exception) and the checks each side was shown."""
    seen_h: list[SasCheck] = []
    seen_j: list[SasCheck] = []

    async def ask_host(check: SasCheck) -> bool:
        seen_h.append(check)
        await asyncio.sleep(0.05)  # a user takes a moment
        return host_says

    async def ask_joiner(check: SasCheck) -> bool:
        seen_j.append(check)
        await asyncio.sleep(0.05)
        return joiner_says

    hosted = await host.host_pairing(confirm=ask_host, confirm_timeout=10)
    joined, waited = await asyncio.gather(
        joiner.join(hosted.code, timeout=10, confirm=ask_joiner, confirm_timeout=10),
        hosted.wait(15),
        return_exceptions=True,
    )
    return joined, waited, seen_h, seen_j


async def test_both_approve_the_same_sas(host: Node, tmp_path: Path) -> None:
    joiner = await open_node(tmp_path / "joiner", "joiner")
    try:
        joined, waited, seen_h, seen_j = await _pair_with_answers(host, joiner, True, True)
        assert not isinstance(joined, BaseException) and not isinstance(waited, BaseException)
        (ch,), (cj,) = seen_h, seen_j
        assert ch.sas == cj.sas and len(ch.sas) == 6 and ch.formatted == f"{ch.sas[:3]} {ch.sas[3:]}"
        assert ch.role.value == "host" and cj.role.value == "joiner"
        assert ch.peer_id == joiner.id.to_bytes() and cj.peer_id == host.id.to_bytes()
        assert ch.peer_info is not None and ch.peer_info.name == "joiner" and cj.peer_info is None
        assert [d.endpoint_id for d in host.devices()] == [joiner.id]
        assert [d.endpoint_id for d in joiner.devices()] == [host.id]
        assert host.last_sas(joiner.id) == joiner.last_sas(host.id) == ch.sas
    finally:
        await joiner.close()


@pytest.mark.parametrize("decliner", ["host", "joiner"])
async def test_declined_sas_stores_nothing_on_either_side(
    host: Node, tmp_path: Path, decliner: str
) -> None:
    joiner = await open_node(tmp_path / "joiner", "joiner")
    try:
        joined, waited, seen_h, seen_j = await _pair_with_answers(
            host, joiner, host_says=decliner != "host", joiner_says=decliner != "joiner"
        )
        assert isinstance(joined, PairingFailed), joined
        assert joined.code == RejectCode.SAS_DECLINED
        assert joined.by_peer == (decliner == "host")
        assert seen_h and seen_j and seen_h[0].sas == seen_j[0].sas  # both were asked
        # a declined SAS ends the code: someone else may know it (§8.3)
        assert isinstance(waited, PairingFailed) and waited.code == RejectCode.SAS_DECLINED
        await asyncio.sleep(0.2)
        assert joiner.devices() == [] and host.devices() == []
        assert len(joiner.registry) == 0 and len(host.registry) == 0
        assert not host._hosted or not next(iter(host._hosted.values())).offer.used
    finally:
        await joiner.close()


async def test_host_approval_timeout_stores_nothing(host: Node, tmp_path: Path) -> None:
    never = asyncio.Event()

    async def slow_user(check: SasCheck) -> bool:
        await never.wait()
        return True

    hosted = await host.host_pairing(confirm=slow_user, confirm_timeout=0.5)
    joiner = await open_node(tmp_path / "joiner", "joiner")
    try:
        with pytest.raises(PairingFailed) as e:
            await joiner.join(hosted.code, timeout=10)
        assert e.value.code == RejectCode.TIMEOUT and e.value.by_peer
        assert joiner.devices() == [] and host.devices() == []
    finally:
        await joiner.close()


async def test_version_1_stream_is_refused_with_the_version_named(host: Node) -> None:
    """A version-1 joiner opens a ``pair`` stream with a version-1 Hello (tag, id, pA): the
    host answers Reject(UNSUPPORTED_VERSION) naming the versions, with no PAKE work."""
    hosted = await host.host_pairing()
    async with await Endpoint.bind() as ep:
        conn = await dial(ep, hosted.code)
        send, recv = await conn.open_bi()
        v1_hello = b"\x01" + hosted.code.tag + ep.id.to_bytes() + b"A" + bytes(32)
        await send.write_frame(encode_header(PAIR_KIND_V1) + v1_hello)
        body = await asyncio.wait_for(recv.read_frame(MAX_MESSAGE), 5)
        assert body is not None
        msg = wire.decode(body)
        assert isinstance(msg, wire.Reject) and msg.code == RejectCode.UNSUPPORTED_VERSION
        assert "version 1" in msg.text and "version 2" in msg.text
        assert await asyncio.wait_for(recv.read_frame(MAX_MESSAGE), 5) is None  # finished
    assert hosted.offer.attempts_used == 0 and not hosted.done
    await no_pairing(host)


async def test_joiner_facing_a_version_1_host_fails_with_unsupported_version(
    tmp_path: Path,
) -> None:
    """A version-1 host does not know the ``pair2`` kind and resets it with UNKNOWN_KIND
    before any reply: the joiner names the version problem."""
    async with await Endpoint.bind(alpns=[ALPN]) as old_host:
        code = PairingCode.generate(old_host.ticket())
        joiner = await open_node(tmp_path / "joiner", "joiner")

        async def version_1_host() -> None:
            conn = await old_host.accept()
            assert conn is not None
            send, recv = await conn.accept_bi()
            await recv.read_frame(MAX_MESSAGE)
            recv.stop(int(StreamErrorCode.UNKNOWN_KIND))
            send.reset(int(StreamErrorCode.UNKNOWN_KIND))
            await asyncio.sleep(5)

        task = asyncio.ensure_future(version_1_host())
        try:
            with pytest.raises(PairingFailed) as e:
                await joiner.join(code, timeout=10)
            assert e.value.code == RejectCode.UNSUPPORTED_VERSION
            assert "version 2" in e.value.reason
            assert joiner.devices() == []
        finally:
            task.cancel()
            await joiner.close()


async def test_pair2_without_an_offer_gets_a_reject(host: Node, tmp_path: Path) -> None:
    """A paired device opening pair2 while nothing is hosted gets Reject(EXPIRED), not a reset."""
    joiner = await open_node(tmp_path / "joiner", "joiner")
    try:
        hosted = await host.host_pairing()
        await joiner.join(hosted.code, timeout=10)
        await hosted.wait(5)
        assert not host.hosting
        with pytest.raises(PairingFailed) as e:
            await joiner.join(hosted.code, timeout=10)
        assert e.value.code in (RejectCode.EXPIRED, RejectCode.USED) and e.value.by_peer
    finally:
        await joiner.close()


async def test_joiner_removes_its_entry_when_the_host_cannot_store(
    host: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The joiner stores before its Accept; a host that then fails to store sends
    Reject(INTERNAL) instead of its FIN, and the joiner removes its entry again (§5)."""
    def broken(r: object) -> object:
        raise OSError("disk full")

    monkeypatch.setattr(host, "_store", broken)
    hosted = await host.host_pairing()
    joiner = await open_node(tmp_path / "joiner", "joiner")
    try:
        with pytest.raises(PairingFailed) as e:
            await joiner.join(hosted.code, timeout=10)
        assert e.value.code == RejectCode.INTERNAL and e.value.by_peer
        assert joiner.devices() == [] and len(joiner.registry) == 0
    finally:
        await joiner.close()


async def test_undone_re_pairing_keeps_ids_and_counters(host: Node, tmp_path: Path) -> None:
    """A re-pairing the host refuses after the joiner's Accept is undone on the joiner (§5):
    the previous entry comes back with its delivered ids (a retry of a handled message is
    still a duplicate: exactly once, §13.8), and the live connection keeps the old keys'
    channel, so no counter restarts under the same subkey (§13.4: a rebuilt channel would
    re-use counter 0, and the peer would refuse its reply as REPLAYED)."""
    joiner = await open_node(tmp_path / "joiner", "joiner")
    try:
        runs: list[bytes] = []

        def handle(dev: object, data: bytes) -> bytes:
            runs.append(data)
            return b"ok"

        joiner.on_message(handle)
        hosted = await host.host_pairing()
        await joiner.join(hosted.code, timeout=10)
        dev = await hosted.wait(10)
        mid = new_message_id()
        assert await host.request(dev, b"pay 10", message_id=mid) == b"ok"

        real_store = host._store

        def fail_once(r: PairingResult) -> object:
            setattr(host, "_store", real_store)
            raise OSError("disk full")

        setattr(host, "_store", fail_once)
        again = await host.host_pairing()
        with pytest.raises(PairingFailed) as e:
            await joiner.join(again.code, timeout=10)
        assert e.value.code == RejectCode.INTERNAL
        assert [d.name for d in joiner.devices()] == ["host"]
        with pytest.raises(errors.RemoteError) as dup:
            await host.request(dev, b"pay 10", message_id=mid)
        assert dup.value.code == StreamErrorCode.DUPLICATE
        assert runs == [b"pay 10"]
        # both directions still work on the same connection, under the old keys
        assert await host.request(dev, b"next") == b"ok"
        host.on_message(lambda d, data: b"back")
        assert await joiner.request(joiner.devices()[0], b"hi") == b"back"
    finally:
        await joiner.close()
