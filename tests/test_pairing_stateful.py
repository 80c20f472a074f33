"""Stateful property test: random interleavings of joiners, deliveries, SAS answers (approve or
decline, on either side, at any time), disconnects and time."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from pairing_helpers import TICKET, make_pair, other_words, sends, with_tag, with_words

from iroh_pair.protocol.code import PairingCode
from iroh_pair.protocol.offer import PairingOffer
from iroh_pair.protocol.pairing import Event, Failed, HostHandshake, JoinerHandshake, Paired

MAX_SESSIONS = 7


@dataclass
class Session:
    j: JoinerHandshake
    h: HostHandshake
    right: bool
    tag_ok: bool
    to_host: list[bytes] = field(default_factory=list)
    to_joiner: list[bytes] = field(default_factory=list)
    j_events: list[Event] = field(default_factory=list)
    h_events: list[Event] = field(default_factory=list)
    connected: bool = True
    h_answer: bool | None = None
    j_answer: bool | None = None


def _paired(events: list[Event]) -> list[Paired]:
    return [e for e in events if isinstance(e, Paired)]


class PairingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.code = PairingCode(("legal", "winner", "thank"), os.urandom(16), TICKET)
        self.offer = PairingOffer.create(self.code, now=0.0, ttl=300.0)
        self.now = 0.0
        self.sessions: list[Session] = []

    def _pick(self, i: int) -> Session:
        return self.sessions[i % len(self.sessions)]

    @precondition(lambda self: len(self.sessions) < MAX_SESSIONS)
    @rule(right=st.booleans(), tag_ok=st.sampled_from([True, True, False]))
    def new_joiner(self, right: bool, tag_ok: bool) -> None:
        code = self.code if right else with_words(self.code, other_words(self.code))
        if not tag_ok:
            code = with_tag(code, os.urandom(16))
        j, h, _ = make_pair(code, self.offer)
        s = Session(j, h, right, tag_ok)
        s.to_host.append(j.start())
        self.sessions.append(s)

    @precondition(lambda self: any(s.to_host and s.connected for s in self.sessions))
    @rule(i=st.integers(0, 100))
    def deliver_to_host(self, i: int) -> None:
        s = self._pick(i)
        if not (s.to_host and s.connected):
            return
        body = s.to_host.pop(0)
        if s.h.is_finished:
            return
        ev = s.h.receive(body, self.now)
        s.h_events += ev
        s.to_joiner += sends(ev)

    @precondition(lambda self: any(s.to_joiner and s.connected for s in self.sessions))
    @rule(i=st.integers(0, 100))
    def deliver_to_joiner(self, i: int) -> None:
        s = self._pick(i)
        if not (s.to_joiner and s.connected):
            return
        body = s.to_joiner.pop(0)
        if s.j.is_finished:
            return
        ev = s.j.receive(body)
        s.j_events += ev
        s.to_host += sends(ev)

    @precondition(lambda self: bool(self.sessions))
    @rule(i=st.integers(0, 100))
    def pump(self, i: int) -> None:
        """Deliver everything pending in one session until it is quiet."""
        s = self._pick(i)
        while s.connected and (s.to_host or s.to_joiner):
            if s.to_host:
                self.deliver_to_host(i)
            if s.to_joiner:
                self.deliver_to_joiner(i)

    @precondition(lambda self: any(s.h.awaiting_approval for s in self.sessions))
    @rule(i=st.integers(0, 100), yes=st.sampled_from([True, True, False]))
    def host_answers_sas(self, i: int, yes: bool) -> None:
        s = self._pick(i)
        if not s.h.awaiting_approval:
            return
        s.h_answer = yes
        ev = s.h.approve(self.now) if yes else s.h.decline()
        s.h_events += ev
        if s.connected:
            s.to_joiner += sends(ev)

    @precondition(lambda self: any(s.j.sas is not None and not s.j.is_finished
                                   and not s.j.approved for s in self.sessions))
    @rule(i=st.integers(0, 100), yes=st.sampled_from([True, True, False]))
    def joiner_answers_sas(self, i: int, yes: bool) -> None:
        s = self._pick(i)
        if s.j.sas is None or s.j.is_finished or s.j.approved:
            return
        s.j_answer = yes
        ev = s.j.approve() if yes else s.j.decline()
        s.j_events += ev
        if s.connected:
            s.to_host += sends(ev)

    @precondition(lambda self: bool(self.sessions))
    @rule(i=st.integers(0, 100))
    def disconnect(self, i: int) -> None:
        s = self._pick(i)
        s.connected = False
        s.h_events += s.h.connection_lost()
        s.j_events += s.j.connection_lost()

    @precondition(lambda self: bool(self.sessions))
    @rule(i=st.integers(0, 100))
    def host_deadline(self, i: int) -> None:
        s = self._pick(i)
        ev = s.h.check_deadline(self.now)
        s.h_events += ev
        if s.connected:
            s.to_joiner += sends(ev)

    @rule(dt=st.sampled_from([0.5, 2.0, 5.0, 31.0, 100.0]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @invariant()
    def at_most_three_attempts(self) -> None:
        assert self.offer.attempts_used <= 3
        if not self.offer.used and self.offer.attempts_used >= 3:
            # burned once the last counted attempt no longer holds the code (it may still pair)
            assert self.offer.burned == (not self.offer.holds_any)

    @invariant()
    def at_most_one_pairing(self) -> None:
        host_paired = [s for s in self.sessions if _paired(s.h_events)]
        joiner_paired = [s for s in self.sessions if _paired(s.j_events)]
        assert len(host_paired) <= 1 and len(joiner_paired) <= 1
        assert self.offer.used == bool(host_paired)
        for s in joiner_paired:
            # the joiner pairs only with the right code, after both users approved
            assert s.right and s.tag_ok
            assert s.h_answer is True and s.j_answer is True
        for s in host_paired:
            assert s in joiner_paired  # the host pairs only on the joiner's Accept
            (jp,), (hp,) = _paired(s.j_events), _paired(s.h_events)
            assert jp.result.keys.send == hp.result.keys.receive
            assert jp.result.keys.receive == hp.result.keys.send
            assert jp.result.sas == hp.result.sas
        for s in self.sessions:
            if s.h_answer is False or s.j_answer is False:  # a decline: nobody pairs
                assert not _paired(s.h_events) and not _paired(s.j_events)

    @invariant()
    def terminal_events_are_final(self) -> None:
        for s in self.sessions:
            for events in (s.j_events, s.h_events):
                finals = [e for e in events if isinstance(e, (Paired, Failed))]
                assert len(finals) <= 1
                if finals:
                    assert events[-1] is finals[0] or isinstance(finals[0], Paired)


PairingMachine.TestCase.settings = settings(
    max_examples=30, stateful_step_count=30, deadline=None
)
TestPairingStateful = PairingMachine.TestCase
