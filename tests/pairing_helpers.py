"""Shared helpers for the in-memory pairing tests (no I/O)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from iroh_pair.protocol.code import PairingCode
from iroh_pair.protocol.device import DeviceInfo
from iroh_pair.protocol.offer import OfferBook, PairingOffer
from iroh_pair.protocol.pairing import (
    Entropy,
    Event,
    Failed,
    HostHandshake,
    JoinerHandshake,
    Paired,
    SasReady,
    SendMessage,
)

TICKET = "endpointtesthostticket"
HOST_INFO = DeviceInfo("host", "desktop", "Linux", "1.0")
JOINER_INFO = DeviceInfo("joiner", "phone", "Android", "1.0")


def new_id() -> bytes:
    return os.urandom(32)


def other_words(code: PairingCode) -> tuple[str, ...]:
    """Different (valid) words than ``code``'s."""
    w = list(code.words)
    w[0] = "abandon" if w[0] != "abandon" else "ability"
    return tuple(w)


def with_words(code: PairingCode, words: tuple[str, ...]) -> PairingCode:
    return PairingCode(words, code.tag, code.ticket)


def with_tag(code: PairingCode, tag: bytes) -> PairingCode:
    return PairingCode(code.words, tag, code.ticket)


@dataclass
class Conn:
    """One simulated QUIC connection: authenticated ids and a channel binding."""

    joiner_id: bytes
    host_id: bytes
    cb: bytes = field(default_factory=lambda: os.urandom(32))


def make_pair(
    code: PairingCode,
    offers: PairingOffer | OfferBook,
    *,
    joiner_id: bytes | None = None,
    host_id: bytes | None = None,
    joiner_entropy: Entropy | None = None,
    host_entropy: Entropy | None = None,
) -> tuple[JoinerHandshake, HostHandshake, Conn]:
    conn = Conn(joiner_id or new_id(), host_id or new_id())
    j = JoinerHandshake(code, joiner_id=conn.joiner_id, host_id=conn.host_id,
                        channel_binding=conn.cb, joiner_info=JOINER_INFO, entropy=joiner_entropy)
    h = HostHandshake(offers, host_id=conn.host_id, remote_id=conn.joiner_id,
                      channel_binding=conn.cb, host_info=HOST_INFO, entropy=host_entropy)
    return j, h, conn


def sends(events: list[Event]) -> list[bytes]:
    return [e.body for e in events if isinstance(e, SendMessage)]


def outcome(events: list[Event]) -> Paired | Failed | None:
    for e in events:
        if isinstance(e, (Paired, Failed)):
            return e
    return None


@dataclass
class Run:
    joiner_events: list[Event] = field(default_factory=list)
    host_events: list[Event] = field(default_factory=list)

    @property
    def joiner(self) -> Paired | Failed | None:
        return outcome(self.joiner_events)

    @property
    def host(self) -> Paired | Failed | None:
        return outcome(self.host_events)


def sas_ready(events: list[Event]) -> SasReady | None:
    for e in events:
        if isinstance(e, SasReady):
            return e
    return None


def run(
    j: JoinerHandshake,
    h: HostHandshake,
    now: float = 0.0,
    *,
    joiner_approves: bool = True,
    host_approves: bool = True,
) -> Run:
    """Pump messages between the two machines until neither has anything to send; each side
    answers its SasReady at once with approve() (or decline())."""
    r = Run()
    to_host = [j.start()]
    to_joiner: list[bytes] = []
    while to_host or to_joiner:
        if to_host:
            body = to_host.pop(0)
            if h.is_finished:
                continue
            ev = h.receive(body, now)
            if sas_ready(ev) is not None:
                ev += h.approve(now) if host_approves else h.decline()
            r.host_events += ev
            to_joiner += sends(ev)
        if to_joiner:
            body = to_joiner.pop(0)
            if j.is_finished:
                continue
            ev = j.receive(body)
            if sas_ready(ev) is not None:
                ev += j.approve() if joiner_approves else j.decline()
            r.joiner_events += ev
            to_host += sends(ev)
    return r
