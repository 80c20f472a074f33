"""The pairing state machines driven against each other in memory."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from pairing_helpers import (
    HOST_INFO,
    JOINER_INFO,
    TICKET,
    Conn,
    make_pair,
    new_id,
    other_words,
    outcome,
    run,
    sas_ready,
    sends,
    with_tag,
    with_words,
)

from iroh_pair.protocol.code import PairingCode
from iroh_pair.protocol import wire
from iroh_pair.protocol.constants import MAX_MESSAGE
from iroh_pair.errors import ProtocolError
from iroh_pair.protocol.constants import RejectCode
from iroh_pair.protocol.offer import OfferBook, PairingOffer
from iroh_pair.protocol.pairing import (
    Failed,
    HostHandshake,
    JoinerHandshake,
    Paired,
    SasReady,
    SendMessage,
)


@pytest.fixture
def code() -> PairingCode:
    return PairingCode.generate(TICKET)


@pytest.fixture
def offer(code: PairingCode) -> PairingOffer:
    return PairingOffer.create(code, now=0.0, ttl=300.0)


def assert_failed(x: object, code: RejectCode) -> None:
    assert isinstance(x, Failed), x
    assert x.code == code, x


# -- happy path --------------------------------------------------------------------------


def test_happy_path(code: PairingCode, offer: PairingOffer) -> None:
    j, h, conn = make_pair(code, offer)
    r = run(j, h, now=1.0)
    assert isinstance(r.joiner, Paired) and isinstance(r.host, Paired)
    jr, hr = r.joiner.result, r.host.result
    assert jr.keys.send == hr.keys.receive and jr.keys.receive == hr.keys.send
    assert jr.keys.send != jr.keys.receive
    assert len(jr.keys.send) == 32
    assert jr.sas == hr.sas and len(jr.sas) == 6
    assert jr.transcript_hash == hr.transcript_hash
    assert jr.peer_id == conn.host_id and hr.peer_id == conn.joiner_id
    assert jr.peer_info == HOST_INFO and hr.peer_info == JOINER_INFO
    assert offer.used and offer.attempts_used == 1 and not offer.busy(1.0)
    assert j.is_finished and h.is_finished and j.result == jr and h.result == hr
    # the joiner emits Paired before its Accept (store, then send); the host pairs on the Accept
    assert isinstance(r.joiner_events[-2], Paired) and isinstance(r.joiner_events[-1], SendMessage)
    assert isinstance(wire.decode(r.joiner_events[-1].body), wire.Accept)
    assert isinstance(r.host_events[-1], Paired)
    # both sides saw SasReady with the same SAS before pairing
    sj, sh = sas_ready(r.joiner_events), sas_ready(r.host_events)
    assert sj is not None and sh is not None and sj.sas == sh.sas == jr.sas
    assert sj.peer_info is None and sh.peer_info == JOINER_INFO


def test_sas_available_before_completion(code: PairingCode, offer: PairingOffer) -> None:
    j, h, _ = make_pair(code, offer)
    assert j.sas is None and h.sas is None
    m2 = sends(h.receive(j.start(), 0.0))[0]
    assert h.sas is None and j.sas is None  # the host learns it only from the opened nonce
    ev = j.receive(m2)
    assert j.sas is not None and h.sas is None
    ev2 = h.receive(sends(ev)[0], 0.0)
    assert ev2 == [SasReady(j.sas, JOINER_INFO)] and h.sas == j.sas
    assert not offer.used and offer.busy(100.0)  # held while the users compare


def test_code_is_single_use(code: PairingCode, offer: PairingOffer) -> None:
    assert isinstance(run(*make_pair(code, offer)[:2]).host, Paired)
    r = run(*make_pair(code, offer)[:2])
    assert_failed(r.joiner, RejectCode.USED)
    assert isinstance(r.joiner, Failed) and r.joiner.by_peer
    assert_failed(r.host, RejectCode.USED)
    assert offer.attempts_used == 1


def test_offer_book_routes_by_tag(code: PairingCode) -> None:
    book = OfferBook()
    other = PairingOffer.create(PairingCode.generate(TICKET), now=0.0)
    mine = PairingOffer.create(code, now=0.0)
    book.add(other)
    book.add(mine)
    r = run(*make_pair(code, book)[:2])
    assert isinstance(r.host, Paired)
    assert mine.used and not other.used and other.attempts_used == 0
    assert book.purge(1.0) == [mine] and len(book) == 1
    assert book.lookup(other.tag) is other and book.remove(other.tag) is other


# -- wrong code, confirmation ------------------------------------------------------------


def test_wrong_code_both_fail(code: PairingCode, offer: PairingOffer) -> None:
    r = run(*make_pair(with_words(code, other_words(code)), offer)[:2])
    assert_failed(r.joiner, RejectCode.WRONG_CODE)
    assert_failed(r.host, RejectCode.WRONG_CODE)
    assert isinstance(r.host, Failed) and r.host.by_peer
    assert not any(isinstance(e, Paired) for e in r.joiner_events + r.host_events)
    assert offer.attempts_used == 1 and not offer.busy(0.0)


def test_joiner_refuses_bad_host_mac(code: PairingCode, offer: PairingOffer) -> None:
    j, h, _ = make_pair(code, offer)
    reply = wire.decode(sends(h.receive(j.start(), 0.0))[0])
    assert isinstance(reply, wire.Reply)
    bad = wire.Reply(reply.host_id, reply.spake_msg, reply.host_nonce, bytes(32))
    ev = j.receive(wire.encode(bad))
    assert_failed(outcome(ev), RejectCode.WRONG_CODE)
    rej = wire.decode(sends(ev)[0])
    assert isinstance(rej, wire.Reject) and rej.code == RejectCode.WRONG_CODE


def test_host_refuses_bad_joiner_mac(code: PairingCode, offer: PairingOffer) -> None:
    j, h, _ = make_pair(code, offer)
    m3 = wire.decode(sends(j.receive(sends(h.receive(j.start(), 0.0))[0]))[0])
    assert isinstance(m3, wire.Confirm)
    ev = h.receive(wire.encode(wire.Confirm(bytes(32), m3.joiner_nonce, m3.sealed_info)), 0.0)
    assert_failed(outcome(ev), RejectCode.WRONG_CODE)
    assert not offer.used and offer.attempts_used == 1


def test_tampered_sealed_info(code: PairingCode, offer: PairingOffer) -> None:
    j, h, _ = make_pair(code, offer)
    m3 = wire.decode(sends(j.receive(sends(h.receive(j.start(), 0.0))[0]))[0])
    assert isinstance(m3, wire.Confirm)
    sealed = bytes([m3.sealed_info[0] ^ 1]) + m3.sealed_info[1:]
    ev = h.receive(wire.encode(wire.Confirm(m3.joiner_mac, m3.joiner_nonce, sealed)), 0.0)
    assert_failed(outcome(ev), RejectCode.MALFORMED)
    assert not offer.used


# -- attempts, expiry, tag ---------------------------------------------------------------


def test_twenty_wrong_joiners_burn_the_code(code: PairingCode, offer: PairingOffer) -> None:
    wrong = with_words(code, other_words(code))
    codes = []
    for _ in range(20):
        r = run(*make_pair(wrong, offer)[:2])
        assert not isinstance(r.joiner, Paired) and not isinstance(r.host, Paired)
        assert isinstance(r.joiner, Failed)
        codes.append(r.joiner.code)
        assert offer.attempts_used <= 3
    assert codes[:3] == [RejectCode.WRONG_CODE] * 3
    assert set(codes[3:]) == {RejectCode.BURNED}
    assert offer.burned and offer.attempts_left == 0
    r = run(*make_pair(code, offer)[:2])
    assert_failed(r.joiner, RejectCode.BURNED)


def test_right_code_on_third_attempt(code: PairingCode, offer: PairingOffer) -> None:
    wrong = with_words(code, other_words(code))
    for _ in range(2):
        run(*make_pair(wrong, offer)[:2])
    assert isinstance(run(*make_pair(code, offer)[:2]).joiner, Paired)


def test_vanishing_joiner_still_counted(code: PairingCode, offer: PairingOffer) -> None:
    j, h, _ = make_pair(code, offer)
    h.receive(j.start(), 0.0)  # M2 sent
    assert offer.attempts_used == 1 and offer.busy(0.0)
    ev = h.connection_lost()
    assert_failed(outcome(ev), RejectCode.CONNECTION_LOST)
    assert sends(ev) == []
    assert offer.attempts_used == 1 and not offer.busy(0.0)
    assert h.connection_lost() == [] and h.abort() == []


def test_wrong_tag_not_counted(code: PairingCode, offer: PairingOffer) -> None:
    for _ in range(5):
        r = run(*make_pair(with_tag(code, os.urandom(16)), offer)[:2])
        assert_failed(r.joiner, RejectCode.BAD_TAG)
        assert_failed(r.host, RejectCode.BAD_TAG)
    assert offer.attempts_used == 0
    assert isinstance(run(*make_pair(code, offer)[:2]).joiner, Paired)


def test_expired_code(code: PairingCode, offer: PairingOffer) -> None:
    r = run(*make_pair(code, offer)[:2], now=300.0)
    assert_failed(r.joiner, RejectCode.EXPIRED)
    assert offer.attempts_used == 0
    assert isinstance(run(*make_pair(code, offer)[:2], now=299.9).joiner, Paired)


def test_handshake_deadline(code: PairingCode, offer: PairingOffer) -> None:
    j, h, _ = make_pair(code, offer)
    m3 = sends(j.receive(sends(h.receive(j.start(), 10.0))[0]))[0]
    assert h.deadline == 40.0
    assert h.check_deadline(39.0) == []
    ev = h.receive(m3, 40.0)
    assert_failed(outcome(ev), RejectCode.TIMEOUT)
    assert not offer.used and not offer.busy(40.0)


def test_check_deadline(code: PairingCode, offer: PairingOffer) -> None:
    j, h, _ = make_pair(code, offer)
    h.receive(j.start(), 0.0)
    assert_failed(outcome(h.check_deadline(30.0)), RejectCode.TIMEOUT)


# -- replay, MITM, identity binding ------------------------------------------------------


def test_replayed_m1_m3_do_not_pair(code: PairingCode) -> None:
    # record an honest run that the host-side then loses (offer still usable)
    offer = PairingOffer.create(code, now=0.0)
    j, h, conn = make_pair(code, offer)
    m1 = j.start()
    m3 = sends(j.receive(sends(h.receive(m1, 0.0))[0]))[0]
    h.connection_lost()
    # replay on a new connection from the same joiner id (new channel binding)
    h2 = HostHandshake(offer, host_id=conn.host_id, remote_id=conn.joiner_id,
                       channel_binding=os.urandom(32), host_info=HOST_INFO)
    assert sends(h2.receive(m1, 1.0))
    ev = h2.receive(m3, 1.0)
    assert_failed(outcome(ev), RejectCode.WRONG_CODE)
    # replay from another id
    h3 = HostHandshake(offer, host_id=conn.host_id, remote_id=new_id(),
                       channel_binding=os.urandom(32), host_info=HOST_INFO)
    assert_failed(outcome(h3.receive(m1, 2.0)), RejectCode.ID_MISMATCH)
    assert not offer.used


def test_mitm_without_code_fails(code: PairingCode, offer: PairingOffer) -> None:
    jid, hid, mid = new_id(), new_id(), new_id()
    # J dialed M (M replaced the ticket); M dialed H.
    jm, mh = Conn(jid, mid), Conn(mid, hid)
    j = JoinerHandshake(code, joiner_id=jid, host_id=mid, channel_binding=jm.cb,
                        joiner_info=JOINER_INFO)
    h = HostHandshake(offer, host_id=hid, remote_id=mid, channel_binding=mh.cb,
                      host_info=HOST_INFO)
    m1 = wire.decode(j.start())
    assert isinstance(m1, wire.Hello)
    # relayed verbatim: the claim does not match the authenticated id
    h_plain = HostHandshake(PairingOffer.create(code, now=0.0), host_id=hid, remote_id=mid,
                            channel_binding=mh.cb, host_info=HOST_INFO)
    assert_failed(outcome(h_plain.receive(wire.encode(m1), 0.0)), RejectCode.ID_MISMATCH)
    # claim rewritten to M's id: keys differ, confirmation fails on both halves
    ev = h.receive(wire.encode(wire.Hello(m1.session_tag, mid, m1.spake_msg, m1.commitment)), 0.0)
    m2 = wire.decode(sends(ev)[0])
    assert isinstance(m2, wire.Reply)
    assert_failed(outcome(j.receive(wire.encode(m2))), RejectCode.ID_MISMATCH)
    j2 = JoinerHandshake(code, joiner_id=jid, host_id=mid, channel_binding=jm.cb,
                         joiner_info=JOINER_INFO)
    j2.start()
    ev = j2.receive(wire.encode(wire.Reply(mid, m2.spake_msg, m2.host_nonce, m2.host_mac)))
    assert_failed(outcome(ev), RejectCode.WRONG_CODE)
    assert not offer.used


def test_mitm_with_code_gets_different_sas(code: PairingCode, offer: PairingOffer) -> None:
    jid, hid, mid = new_id(), new_id(), new_id()
    # M knows the code and runs two honest-looking handshakes under its own id.
    j, m_host, _ = make_pair(code, PairingOffer.create(code, now=0.0), joiner_id=jid,
                             host_id=mid)
    m_joiner, h, _ = make_pair(code, offer, joiner_id=mid, host_id=hid)
    r1, r2 = run(j, m_host), run(m_joiner, h)
    assert isinstance(r1.joiner, Paired) and isinstance(r2.host, Paired)
    assert r1.joiner.result.sas != r2.host.result.sas  # the humans compare and notice
    assert r2.host.result.peer_id == mid  # and the host registered M's id, not J's


def test_claimed_id_mismatch_host_side(code: PairingCode, offer: PairingOffer) -> None:
    conn = Conn(new_id(), new_id())
    j = JoinerHandshake(code, joiner_id=conn.joiner_id, host_id=conn.host_id,
                        channel_binding=conn.cb, joiner_info=JOINER_INFO)
    h = HostHandshake(offer, host_id=conn.host_id, remote_id=new_id(),
                      channel_binding=conn.cb, host_info=HOST_INFO)
    r = run(j, h)
    assert_failed(r.host, RejectCode.ID_MISMATCH)
    assert_failed(r.joiner, RejectCode.ID_MISMATCH)
    assert offer.attempts_used == 0


def test_claimed_id_mismatch_joiner_side(code: PairingCode, offer: PairingOffer) -> None:
    conn = Conn(new_id(), new_id())
    j = JoinerHandshake(code, joiner_id=conn.joiner_id, host_id=new_id(),
                        channel_binding=conn.cb, joiner_info=JOINER_INFO)
    h = HostHandshake(offer, host_id=conn.host_id, remote_id=conn.joiner_id,
                      channel_binding=conn.cb, host_info=HOST_INFO)
    r = run(j, h)
    assert_failed(r.joiner, RejectCode.ID_MISMATCH)
    assert_failed(r.host, RejectCode.ID_MISMATCH)
    assert not offer.used


# -- concurrency -------------------------------------------------------------------------


def test_two_joiners_racing(code: PairingCode, offer: PairingOffer) -> None:
    j1, h1, _ = make_pair(code, offer)
    j2, h2, _ = make_pair(code, offer)
    m2_1 = sends(h1.receive(j1.start(), 0.0))[0]
    ev = h2.receive(j2.start(), 0.0)
    assert_failed(outcome(ev), RejectCode.BUSY)
    assert_failed(outcome(j2.receive(sends(ev)[0])), RejectCode.BUSY)
    assert offer.attempts_used == 1
    m3 = sends(j1.receive(m2_1))[0]
    assert sas_ready(h1.receive(m3, 1.0)) is not None
    # still held while the host's user compares: a third joiner is BUSY
    assert_failed(run(*make_pair(code, offer)[:2], now=2.0).joiner, RejectCode.BUSY)
    m4 = sends(h1.approve(2.0))[0]
    j1.approve()
    m5 = sends(j1.receive(m4))[0]
    paired = [e for e in h1.receive(m5, 3.0) if isinstance(e, Paired)]
    assert len(paired) == 1
    r = run(*make_pair(code, offer)[:2])
    assert_failed(r.joiner, RejectCode.USED)


def test_busy_released_after_failure(code: PairingCode, offer: PairingOffer) -> None:
    j1, h1, _ = make_pair(code, offer)
    h1.receive(j1.start(), 0.0)
    assert offer.busy(0.0)
    h1.abort(RejectCode.CANCELLED, "user cancelled")
    assert isinstance(run(*make_pair(code, offer)[:2]).joiner, Paired)


def test_stale_session_is_taken_over(code: PairingCode, offer: PairingOffer) -> None:
    j1, h1, _ = make_pair(code, offer)
    m2 = sends(h1.receive(j1.start(), 0.0))[0]
    m3 = sends(j1.receive(m2))[0]
    # the first handshake stalls past its deadline; a second joiner takes the code over
    j2, h2, _ = make_pair(code, offer)
    r = run(j2, h2, now=31.0)
    assert isinstance(r.host, Paired)
    assert_failed(outcome(h1.receive(m3, 31.0)), RejectCode.TIMEOUT)
    assert offer.attempts_used == 2


# -- malformed / out-of-order ------------------------------------------------------------


def test_out_of_order_messages(code: PairingCode, offer: PairingOffer) -> None:
    j, h, _ = make_pair(code, offer)
    confirm = wire.encode(wire.Confirm(bytes(32), bytes(32), bytes(30)))
    assert_failed(outcome(h.receive(confirm, 0.0)), RejectCode.UNEXPECTED)
    j, h, _ = make_pair(code, offer)
    j.start()
    assert_failed(outcome(j.receive(wire.encode(wire.Complete(bytes(30))))), RejectCode.UNEXPECTED)
    with pytest.raises(ProtocolError) as ei:
        j.receive(b"\x01")
    assert ei.value.code == RejectCode.UNEXPECTED


def test_receive_before_start() -> None:
    code = PairingCode.generate(TICKET)
    j, _, _ = make_pair(code, PairingOffer.create(code, now=0.0))
    with pytest.raises(ProtocolError):
        j.receive(b"\x02")
    j.start()
    with pytest.raises(ProtocolError):
        j.start()


def test_oversized_and_garbage(code: PairingCode, offer: PairingOffer) -> None:
    _, h, _ = make_pair(code, offer)
    ev = h.receive(bytes(MAX_MESSAGE + 1), 0.0)
    assert_failed(outcome(ev), RejectCode.TOO_LARGE)
    rej = wire.decode(sends(ev)[0])
    assert isinstance(rej, wire.Reject) and rej.code == RejectCode.TOO_LARGE
    _, h, _ = make_pair(code, offer)
    assert_failed(outcome(h.receive(b"\x99garbage", 0.0)), RejectCode.MALFORMED)
    assert offer.attempts_used == 0


def test_invalid_spake_element_not_counted(code: PairingCode, offer: PairingOffer) -> None:
    j, h, conn = make_pair(code, offer)
    j.start()
    bad = wire.Hello(code.tag, conn.joiner_id, b"A" + b"\xff" * 32, bytes(32))
    assert_failed(outcome(h.receive(wire.encode(bad), 0.0)), RejectCode.MALFORMED)
    assert offer.attempts_used == 0 and not offer.busy(0.0)


def test_peer_reject_with_unknown_code(code: PairingCode, offer: PairingOffer) -> None:
    j, _, _ = make_pair(code, offer)
    j.start()
    ev = j.receive(wire.encode(wire.Reject(0x3FF, "future")))
    assert ev == [Failed(RejectCode.UNSPECIFIED, "future", by_peer=True)]


def test_abort_sends_reject(code: PairingCode, offer: PairingOffer) -> None:
    j, _, _ = make_pair(code, offer)
    j.start()
    ev = j.abort(RejectCode.CANCELLED, "bye")
    rej = wire.decode(sends(ev)[0])
    assert rej == wire.Reject(RejectCode.CANCELLED, "bye")
    assert j.failure == Failed(RejectCode.CANCELLED, "bye")


def test_constructor_validation(code: PairingCode) -> None:
    with pytest.raises(ValueError):
        JoinerHandshake(code, joiner_id=b"short", host_id=new_id(), channel_binding=bytes(32),
                        joiner_info=JOINER_INFO)
    with pytest.raises(ValueError):
        HostHandshake(PairingOffer.create(code, now=0.0), host_id=new_id(), remote_id=new_id(),
                      channel_binding=bytes(31), host_info=HOST_INFO)
    with pytest.raises(ValueError):
        PairingOffer.create(code, now=0.0, max_attempts=0)


def test_refusals_do_no_pake_work(code: PairingCode, offer: PairingOffer) -> None:
    def no_entropy(n: int) -> bytes:
        raise AssertionError("SPAKE2 work was done")

    def host(remote: bytes, offers: PairingOffer) -> HostHandshake:
        return HostHandshake(offers, host_id=new_id(), remote_id=remote,
                             channel_binding=os.urandom(32), host_info=HOST_INFO,
                             entropy=no_entropy)

    jid = new_id()
    hello = wire.Hello(code.tag, jid, b"A" + bytes(32), bytes(32))
    bad_tag = wire.Hello(os.urandom(16), jid, b"A" + bytes(32), bytes(32))
    assert_failed(outcome(host(jid, offer).receive(wire.encode(bad_tag), 0.0)), RejectCode.BAD_TAG)
    assert_failed(outcome(host(new_id(), offer).receive(wire.encode(hello), 0.0)),
                  RejectCode.ID_MISMATCH)
    assert_failed(outcome(host(jid, offer).receive(wire.encode(hello), 400.0)),
                  RejectCode.EXPIRED)
    assert offer.attempts_used == 0


# -- version 2: commitment, SAS approval, Accept, rate limit ----------------------------


def _to_confirm(j: JoinerHandshake, h: HostHandshake, now: float = 0.0) -> wire.Confirm:
    """Run M1, M2; return the joiner's (decoded) M3, not yet delivered."""
    m3 = wire.decode(sends(j.receive(sends(h.receive(j.start(), now))[0]))[0])
    assert isinstance(m3, wire.Confirm)
    return m3


def _to_approval(j: JoinerHandshake, h: HostHandshake, now: float = 0.0) -> SasReady:
    """Run up to the host's SasReady."""
    m3 = _to_confirm(j, h, now)
    ready = sas_ready(h.receive(wire.encode(m3), now))
    assert ready is not None
    return ready


def test_bad_commitment(code: PairingCode, offer: PairingOffer) -> None:
    """A joiner (or a man in the middle) that opens another nonce than it committed to: the MAC
    still verifies (the nonce is not in TH), the commitment does not."""
    j, h, _ = make_pair(code, offer)
    m3 = _to_confirm(j, h)
    other = bytes([m3.joiner_nonce[0] ^ 1]) + m3.joiner_nonce[1:]
    ev = h.receive(wire.encode(wire.Confirm(m3.joiner_mac, other, m3.sealed_info)), 0.0)
    assert_failed(outcome(ev), RejectCode.BAD_COMMITMENT)
    assert sas_ready(ev) is None and h.sas is None  # no SAS shown for a broken commitment
    rej = wire.decode(sends(ev)[0])
    assert isinstance(rej, wire.Reject) and rej.code == RejectCode.BAD_COMMITMENT
    assert j.receive(sends(ev)[0]) == [Failed(RejectCode.BAD_COMMITMENT, rej.text, by_peer=True)]
    assert not offer.used and not offer.busy(0.0) and offer.attempts_used == 1


def test_host_declines_sas(code: PairingCode, offer: PairingOffer) -> None:
    r = run(*make_pair(code, offer)[:2], host_approves=False)
    assert_failed(r.host, RejectCode.SAS_DECLINED)
    assert_failed(r.joiner, RejectCode.SAS_DECLINED)
    assert isinstance(r.joiner, Failed) and r.joiner.by_peer
    assert isinstance(r.host, Failed) and not r.host.by_peer
    assert not any(isinstance(e, Paired) for e in r.joiner_events + r.host_events)
    # the host never sent its Complete (its device info stays sealed from the joiner)
    assert not any(isinstance(wire.decode(b), wire.Complete) for b in sends(r.host_events))
    assert not offer.used and not offer.busy(0.0) and offer.attempts_used == 1


@pytest.mark.parametrize("after_complete", [False, True])
def test_joiner_declines_sas(code: PairingCode, offer: PairingOffer, after_complete: bool) -> None:
    j, h, _ = make_pair(code, offer)
    _to_approval(j, h)
    m4 = sends(h.approve(1.0))[0]
    if after_complete:
        assert j.receive(m4) == []  # waits for its own user
        assert j.state == "await_approval"
    ev = j.decline()
    assert_failed(outcome(ev), RejectCode.SAS_DECLINED)
    assert not any(isinstance(e, Paired) for e in ev)
    hev = h.receive(sends(ev)[0], 2.0)
    assert hev == [Failed(RejectCode.SAS_DECLINED, "the SAS was not confirmed", by_peer=True)]
    assert not offer.used and not offer.busy(2.0)


def test_joiner_approves_after_complete(code: PairingCode, offer: PairingOffer) -> None:
    j, h, _ = make_pair(code, offer)
    _to_approval(j, h)
    assert j.receive(sends(h.approve(1.0))[0]) == []
    paired, accept = j.approve()
    assert isinstance(paired, Paired) and isinstance(accept, SendMessage)
    assert isinstance(outcome(h.receive(accept.body, 2.0)), Paired)
    assert offer.used


def test_host_approval_timeout(code: PairingCode, offer: PairingOffer) -> None:
    j, h, _ = make_pair(code, offer)
    _to_approval(j, h, now=10.0)
    assert h.deadline == 10.0 + offer.confirm_timeout == 130.0
    assert h.check_deadline(129.9) == []
    ev = h.approve(130.0)
    assert_failed(outcome(ev), RejectCode.TIMEOUT)
    rej = wire.decode(sends(ev)[0])
    assert isinstance(rej, wire.Reject) and rej.code == RejectCode.TIMEOUT
    assert_failed(outcome(j.receive(sends(ev)[0])), RejectCode.TIMEOUT)
    assert not offer.used and not offer.busy(130.0)


def test_approval_deadline_check_and_takeover(code: PairingCode, offer: PairingOffer) -> None:
    j, h, _ = make_pair(code, offer)
    _to_approval(j, h, now=0.0)
    assert_failed(run(*make_pair(code, offer)[:2], now=119.0).joiner, RejectCode.BUSY)
    assert_failed(outcome(h.check_deadline(120.0)), RejectCode.TIMEOUT)
    assert isinstance(run(*make_pair(code, offer)[:2], now=121.0).host, Paired)


def test_accept_after_the_deadline(code: PairingCode, offer: PairingOffer) -> None:
    j, h, _ = make_pair(code, offer)
    _to_approval(j, h, now=0.0)
    j.approve()
    m5 = sends(j.receive(sends(h.approve(60.0))[0]))[0]
    assert_failed(outcome(h.receive(m5, 120.0)), RejectCode.TIMEOUT)
    assert not offer.used


def test_accept_with_bad_mac(code: PairingCode, offer: PairingOffer) -> None:
    j, h, _ = make_pair(code, offer)
    _to_approval(j, h)
    j.approve()
    m5 = wire.decode(sends(j.receive(sends(h.approve(1.0))[0]))[0])
    assert isinstance(m5, wire.Accept)
    bad = wire.Accept(bytes([m5.accept_mac[0] ^ 1]) + m5.accept_mac[1:])
    ev = h.receive(wire.encode(bad), 2.0)
    assert_failed(outcome(ev), RejectCode.MALFORMED)
    assert not any(isinstance(e, Paired) for e in ev)
    assert not offer.used and not offer.busy(2.0)
    # the joiner's own confirm MAC in place of the accept MAC is refused too (distinct keys)
    j2, h2, _ = make_pair(code, offer)
    m3 = _to_confirm(j2, h2, 3.0)
    h2.receive(wire.encode(m3), 3.0)
    h2.approve(3.0)
    assert_failed(outcome(h2.receive(wire.encode(wire.Accept(m3.joiner_mac)), 3.0)),
                  RejectCode.MALFORMED)


def test_v2_messages_out_of_order(code: PairingCode, offer: PairingOffer) -> None:
    accept = wire.encode(wire.Accept(bytes(32)))
    # an Accept instead of a Hello, and instead of a Confirm
    _, h, _ = make_pair(code, PairingOffer.create(code, now=0.0))
    assert_failed(outcome(h.receive(accept, 0.0)), RejectCode.UNEXPECTED)
    j, h, _ = make_pair(code, PairingOffer.create(code, now=0.0))
    h.receive(j.start(), 0.0)
    assert_failed(outcome(h.receive(accept, 0.0)), RejectCode.UNEXPECTED)
    # an Accept while the host's user has not approved (no Complete sent yet)
    j, h, _ = make_pair(code, PairingOffer.create(code, now=0.0))
    _to_approval(j, h)
    assert_failed(outcome(h.receive(accept, 0.0)), RejectCode.UNEXPECTED)
    # a second Confirm, a second Hello
    j, h, _ = make_pair(code, PairingOffer.create(code, now=0.0))
    m3 = _to_confirm(j, h)
    h.receive(wire.encode(m3), 0.0)
    h.approve(0.0)
    assert_failed(outcome(h.receive(wire.encode(m3), 0.0)), RejectCode.UNEXPECTED)
    # the joiner: a Complete before the Reply, a second Reply
    j, h, _ = make_pair(code, PairingOffer.create(code, now=0.0))
    j.start()
    assert_failed(outcome(j.receive(wire.encode(wire.Complete(bytes(16))))),
                  RejectCode.UNEXPECTED)
    j, h, _ = make_pair(code, PairingOffer.create(code, now=0.0))
    m2 = sends(h.receive(j.start(), 0.0))[0]
    j.receive(m2)
    assert_failed(outcome(j.receive(m2)), RejectCode.UNEXPECTED)
    # answers before the SAS exists are driver bugs
    j, h, _ = make_pair(code, PairingOffer.create(code, now=0.0))
    j.start()
    for call in (j.approve, j.decline, lambda: h.approve(0.0), h.decline):
        with pytest.raises(ProtocolError) as ei:
            call()
        assert ei.value.code == RejectCode.UNEXPECTED


def test_hello_rate_limit(code: PairingCode) -> None:
    """10 Hellos per second per offer get SPAKE2 work; the 11th in the same second gets BUSY
    without any. Hellos with invalid points are refused (MALFORMED, not counted) before any
    SPAKE2 work and take no token, so they cannot starve the real joiner (review finding)."""
    offer = PairingOffer.create(code, now=0.0, max_attempts=100)
    drawn: list[int] = []

    def counting(n: int) -> bytes:
        drawn.append(n)
        return os.urandom(n)

    def host(hid: bytes, jid: bytes) -> HostHandshake:
        return HostHandshake(offer, host_id=hid, remote_id=jid, channel_binding=os.urandom(32),
                             host_info=HOST_INFO, entropy=counting)

    hid = new_id()
    wrong = PairingCode(words=("abandon", "zoo", "legal"), tag=code.tag, ticket=code.ticket)
    for _ in range(10):  # wrong words, valid points: SPAKE2 work, a token and an attempt each
        j = JoinerHandshake(wrong, joiner_id=new_id(), host_id=hid, channel_binding=bytes(32),
                            joiner_info=JOINER_INFO)
        h = host(hid, j._local_id)
        assert any(isinstance(e, SendMessage) for e in h.receive(j.start(), 5.0))
        h.connection_lost()  # the offer is free again; the attempt stays counted
    assert offer.attempts_used == 10 and len(drawn) == 20  # SPAKE2 entropy and a nonce each
    # invalid points, with the bucket empty: MALFORMED (not BUSY), no SPAKE2 work, not counted
    for _ in range(5):
        jid = new_id()
        bad = wire.Hello(code.tag, jid, b"A" + b"\xff" * 32, bytes(32))
        assert_failed(outcome(host(hid, jid).receive(wire.encode(bad), 5.0)), RejectCode.MALFORMED)
    assert len(drawn) == 20 and offer.attempts_used == 10
    # the 11th valid Hello in the same second, even an honest one, gets BUSY before any work
    j = JoinerHandshake(code, joiner_id=new_id(), host_id=hid, channel_binding=bytes(32),
                        joiner_info=JOINER_INFO)
    ev = host(hid, j._local_id).receive(j.start(), 5.05)
    assert_failed(outcome(ev), RejectCode.BUSY)
    assert len(drawn) == 20 and offer.attempts_used == 10
    # a tenth of a second later one token is back
    conn = Conn(new_id(), hid)
    j = JoinerHandshake(code, joiner_id=conn.joiner_id, host_id=hid, channel_binding=conn.cb,
                        joiner_info=JOINER_INFO)
    h = HostHandshake(offer, host_id=hid, remote_id=conn.joiner_id, channel_binding=conn.cb,
                      host_info=HOST_INFO, entropy=counting)
    assert isinstance(run(j, h, now=5.15).host, Paired)


def test_version_1_hello_is_malformed_and_not_counted(code: PairingCode,
                                                       offer: PairingOffer) -> None:
    """A version-1 Hello (no commitment, 82 bytes) on a pair2 stream does no PAKE work. (On a
    ``pair`` stream the node answers Reject(UNSUPPORTED_VERSION): test_pairing_live.py.)"""
    def no_entropy(n: int) -> bytes:
        raise AssertionError("SPAKE2 work was done")

    jid = new_id()
    v1_hello = bytes([1]) + code.tag + jid + b"A" + os.urandom(32)
    assert len(v1_hello) == 82
    h = HostHandshake(offer, host_id=new_id(), remote_id=jid, channel_binding=bytes(32),
                      host_info=HOST_INFO, entropy=no_entropy)
    assert_failed(outcome(h.receive(v1_hello, 0.0)), RejectCode.MALFORMED)
    assert offer.attempts_used == 0


def test_sas_depends_on_the_joiner_nonce(code: PairingCode) -> None:
    """Same SPAKE2 randomness and host nonce, another joiner nonce: another SAS (the nonce is
    the part the host cannot know when it sends M2)."""
    sas = set()
    conn = Conn(new_id(), new_id())
    spake_j, spake_h, host_nonce = os.urandom(64), os.urandom(64), os.urandom(32)

    def joiner_entropy(nonce: bytes) -> Callable[[int], bytes]:
        return lambda n: nonce if n == 32 else spake_j

    for _ in range(5):
        j = JoinerHandshake(code, joiner_id=conn.joiner_id, host_id=conn.host_id,
                            channel_binding=conn.cb, joiner_info=JOINER_INFO,
                            entropy=joiner_entropy(os.urandom(32)))
        h = HostHandshake(PairingOffer.create(code, now=0.0), host_id=conn.host_id,
                          remote_id=conn.joiner_id, channel_binding=conn.cb, host_info=HOST_INFO,
                          entropy=lambda n: host_nonce if n == 32 else spake_h)
        r = run(j, h)
        assert isinstance(r.host, Paired) and isinstance(r.joiner, Paired)
        sas.add(r.host.result.sas)
    assert len(sas) >= 4  # 5 draws from 10**6: a collision is ~1e-5


def test_last_attempt_running_is_not_burned(code: PairingCode, offer: PairingOffer) -> None:
    """While the last counted attempt holds the code, the code is not burned: a stranger's
    failure elsewhere must not end it (review finding), and a new Hello gets BUSY, not BURNED.
    Once the last attempt fails the code is burned."""
    session = object()
    for _ in range(offer.max_attempts - 1):
        s = object()
        offer.claim(s, 1.0)
        offer.release(s)
    offer.claim(session, 2.0)
    assert offer.exhausted and not offer.burned
    with pytest.raises(ProtocolError) as e:
        offer.check(3.0)
    assert e.value.code is RejectCode.BUSY
    offer.release(session)
    assert offer.burned
    with pytest.raises(ProtocolError) as e:
        offer.check(4.0)
    assert e.value.code is RejectCode.BURNED


def test_last_attempt_can_still_pair(code: PairingCode, offer: PairingOffer) -> None:
    """Two wrong attempts, then the right words on the last one: it pairs, and the code is
    used, never burned."""
    session = object()
    for _ in range(offer.max_attempts - 1):
        s = object()
        offer.claim(s, 1.0)
        offer.release(s)
    offer.claim(session, 2.0)
    offer.complete(session)
    assert offer.used and not offer.burned
