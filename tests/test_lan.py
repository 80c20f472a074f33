"""LAN discovery over mDNS and spoken LAN codes (``iroh_pair.protocol.lan``).

The pure parts (parsing, the derived session tag, the CLI's LAN mode) run anywhere. The live
parts need multicast on a LAN interface and must not touch the machine's real network, so they
run inside a network namespace made by ``test_in_network_namespace``: ``lo`` plus an empty
bridge ``lan0`` (10.77.0.1/24, multicast on, the default route, which is where
mDNS sends by default; the namespace has no way out); multicast sent on it loops back to every
socket in the namespace, so endpoints in this process see each other's mDNS. Relays and
address lookup servers are off throughout: only mDNS can find anyone. The multi-host checks
(different LANs, a third device capturing the advertisements) are in the lab (test_lab.py).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from iroh_pair import Node, NodeEvent, errors
from iroh_pair.cli import lan_mode, network_options, parser
from iroh_pair.errors import (
    AmbiguousNameplate,
    MalformedCode,
    NameplateNotFound,
    PairingFailed,
    UnknownWord,
)
from iroh_pair.protocol.code import PairingCode
from iroh_pair.protocol.lan import LanCode, lan_tag, looks_spoken, service_name
from iroh_pair.protocol import ALPN as NODE_ALPN
from iroh_pair.protocol import RejectCode
from iroh_pair.transport import Endpoint, EndpointAddr, NetworkOptions, RelayConfig, SecretKey

from helpers import ALPN, interfaces, rerun_in_netns

IN_LAN = os.environ.get("IROH_PAIR_IN_LAN_NETNS") == "1"
inner = pytest.mark.skipif(not IN_LAN, reason="runs inside the LAN netns (see test_in_network_namespace)")
LAN_SETUP = (
    "ip link set lo up && ip link add lan0 type bridge && ip link set lan0 up "
    "&& ip addr add 10.77.0.1/24 dev lan0 && ip route add default dev lan0"
)
#: mDNS only: no relay, no lookup server, every interface (mDNS needs the LAN one).


# -- pure ---------------------------------------------------------------------------------------


def test_spoken_code_round_trip_and_normalisation() -> None:
    code = LanCode(7, ("ocean", "tiger", "river"))
    assert str(code) == "7-ocean-tiger-river"
    assert LanCode.parse("7-ocean-tiger-river") == code
    assert LanCode.parse("  7 Ocean  TIGER-river\n") == code
    assert LanCode.parse("\uff17-ocean-tiger-river") == code  # NFKC: a full-width digit
    assert "ocean" not in repr(code)  # the secret never lands in logs by accident
    for _ in range(50):
        g = LanCode.generate()
        assert 1 <= g.nameplate <= 99 and len(g.words) == 3
        assert LanCode.parse(str(g)) == g


@pytest.mark.parametrize("text", ["0-ocean-tiger-river", "100-ocean-tiger-river", "ocean-tiger-river", "7"])
def test_malformed_spoken_codes(text: str) -> None:
    with pytest.raises(ValueError):
        LanCode.parse(text)


def test_unknown_word_in_spoken_code() -> None:
    with pytest.raises(UnknownWord):
        LanCode.parse("7-ocean-tigre-river")


def test_spoken_and_full_forms_are_told_apart() -> None:
    full = PairingCode.generate(EndpointAddr(SecretKey.generate().public()).to_ticket())
    assert looks_spoken("7-ocean-tiger-river") and looks_spoken(" 42 ocean tiger river")
    assert not looks_spoken(str(full)) and not looks_spoken("ocean-tiger-river")


def test_lan_tag_binds_host_and_nameplate() -> None:
    a, b = SecretKey.generate().public().to_bytes(), SecretKey.generate().public().to_bytes()
    assert lan_tag(a, 7) == lan_tag(a, 7) and len(lan_tag(a, 7)) == 16
    assert len({lan_tag(a, 7), lan_tag(a, 8), lan_tag(b, 7)}) == 3
    code = LanCode(7, ("ocean", "tiger", "river")).pairing_code(a, "endpointabc")
    assert code.tag == lan_tag(a, 7) and code.words == ("ocean", "tiger", "river")
    with pytest.raises(MalformedCode):
        lan_tag(a, 0)
    assert service_name(99) == "iroh-pair-99" and len(service_name(99)) <= 15


def test_cli_lan_mode() -> None:
    p = parser()
    for argv in (["--lan", "host"], ["host", "--lan"], ["join", "7-ocean-tiger-river"], ["send", "--lan", "x", "hi"]):
        args = p.parse_args(argv)
        assert lan_mode(args), argv
        opts = network_options(args)
        assert opts.mdns is True and opts.relay == "disabled" and opts.lookup == "none"
    args = p.parse_args(["--lan", "--relay", "http://10.0.0.1:3340", "host"])
    # explicit servers still apply
    assert network_options(args).relay == (RelayConfig("http://10.0.0.1:3340", quic_port=7842),)
    assert not lan_mode(p.parse_args(["host"]))
    assert network_options(p.parse_args(["host"])).mdns is False


async def test_mdns_needs_the_option() -> None:
    ep = await Endpoint.bind()
    try:
        with pytest.raises(ValueError, match="mdns"):
            async for _ in ep.lan_events():
                pass
        with pytest.raises(ValueError, match="service"):
            ep.mdns_announce("not a service name!")
    finally:
        await ep.close()


# -- the wrapper --------------------------------------------------------------------------------


@pytest.mark.slow
def test_in_network_namespace() -> None:
    """Runs the live tests of this module in a fresh namespace with ``lo`` and a one-host LAN."""
    if IN_LAN:
        pytest.skip("already inside the namespace")
    rerun_in_netns(Path(__file__), "IROH_PAIR_IN_LAN_NETNS", LAN_SETUP)


# -- live, inside the namespace -----------------------------------------------------------------


@pytest.fixture
def lan_lookup_timeout() -> float:
    """The lan_nodes' ``lan_lookup_timeout`` (a test changes it with ``parametrize``)."""
    return 6.0


@pytest.fixture
async def lan_nodes(tmp_path: Path, lan_lookup_timeout: float) -> AsyncIterator[tuple[Node, Node]]:
    assert sorted(interfaces()) == ["lan0", "lo"], interfaces()
    a = await Node.open(tmp_path / "a", name="alpha", options=NetworkOptions.lan(),
                        lan_lookup_timeout=lan_lookup_timeout)
    b = await Node.open(tmp_path / "b", name="beta", options=NetworkOptions.lan(),
                        lan_lookup_timeout=lan_lookup_timeout)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


@inner
async def test_dial_by_id_through_mdns_alone() -> None:
    """Two endpoints that know nothing of each other's addresses: B dials A by its id."""
    a = await Endpoint.bind(NetworkOptions.lan(), alpns=[ALPN])
    b = await Endpoint.bind(NetworkOptions.lan())
    try:
        seen: list[str] = []

        async def watch() -> None:
            async for ev in b.lan_events():
                if ev.id == a.id and ev.event == "discovered":
                    seen.extend(ev.addrs)
                    return

        await asyncio.wait_for(watch(), 10)
        assert any(s.startswith("10.77.0.1:") for s in seen), seen
        t = time.monotonic()
        acc = asyncio.ensure_future(a.accept())
        conn = await b.connect(a.id, ALPN, timeout=15)
        sconn = await asyncio.wait_for(acc, 5)
        assert sconn is not None
        sconn.serve(lambda req: req[::-1])
        assert await conn.request(b"hello") == b"olleh"
        print(f"dial by id via mDNS: {time.monotonic() - t:.2f} s; paths {[(p.kind, p.addr) for p in conn.paths()]}")
        assert all(p.kind == "direct" for p in conn.paths())
    finally:
        await a.close()
        await b.close()


@inner
async def test_lan_events_report_a_device_this_endpoint_dialed_first() -> None:
    """iroh's mDNS lookup keeps ids it resolved for a dial out of its own events; lan_events
    listens separately, so a device dialed before anyone watched is still reported."""
    a = await Endpoint.bind(NetworkOptions.lan(), alpns=[ALPN])
    b = await Endpoint.bind(NetworkOptions.lan())
    try:
        acc = asyncio.ensure_future(a.accept())
        conn = await b.connect(a.id, ALPN, timeout=15)  # resolved through mDNS
        assert await asyncio.wait_for(acc, 5) is not None
        assert conn.remote_id == a.id

        async def first_seen() -> None:
            async for ev in b.lan_events():
                if ev.id == a.id and ev.event == "discovered":
                    return

        await asyncio.wait_for(first_seen(), 15)
    finally:
        await a.close()
        await b.close()


@inner
async def test_browse_finds_announcement_and_stops_after_close() -> None:
    a = await Endpoint.bind(NetworkOptions.lan().replace(mdns=False))
    b = await Endpoint.bind(NetworkOptions.lan().replace(mdns=False))
    try:
        ann = a.mdns_announce("iroh-pair-42")
        assert ann.active and ann.service == "iroh-pair-42"
        found = await b.mdns_browse("iroh-pair-42", timeout=10)
        assert [f.id for f in found] == [a.id]
        assert any(x.startswith("10.77.0.1:") for x in found[0].ip_addrs)
        assert await b.mdns_browse("iroh-pair-43", timeout=2) == []  # another nameplate: nobody
        assert await a.mdns_browse("iroh-pair-42", timeout=2) == []  # its own announcement is not listed
        ann.close()
        assert not ann.active
        await asyncio.sleep(1)
        t = time.monotonic()
        assert await b.mdns_browse("iroh-pair-42", timeout=3) == []  # a fresh browse: nobody answers
        assert time.monotonic() - t < 5
    finally:
        await a.close()
        await b.close()


@inner
async def test_spoken_code_pairs_on_the_lan(lan_nodes: tuple[Node, Node]) -> None:
    host, joiner = lan_nodes
    hosted = await host.host_pairing(lan=True)
    assert hosted.spoken is not None
    spoken = str(hosted.spoken)
    assert spoken.split("-", 1)[0].isdigit() and len(spoken.split("-")) == 4
    assert hosted.code.tag == lan_tag(host.id.to_bytes(), hosted.spoken.nameplate)
    t = time.monotonic()
    dev = await joiner.join(spoken, timeout=30)
    print(f"spoken-code pairing {spoken.split('-')[0]}-...: {time.monotonic() - t:.2f} s")
    assert dev.endpoint_id == host.id
    assert (await hosted.wait(5)).endpoint_id == joiner.id
    assert host.last_sas(joiner.id) == joiner.last_sas(host.id)
    # the code is used: the nameplate is no longer announced
    assert await joiner.endpoint.mdns_browse(hosted.spoken.service, timeout=3) == []
    host.on_message(lambda dev, data: b"pong:" + data)
    assert await asyncio.wait_for(joiner.request(host.id, b"ping"), 15) == b"pong:ping"


@inner
async def test_spoken_code_with_wrong_words_counts_an_attempt(lan_nodes: tuple[Node, Node]) -> None:
    host, joiner = lan_nodes
    hosted = await host.host_pairing(lan=True)
    assert hosted.spoken is not None
    words = list(hosted.spoken.words)
    words[0] = "zoo" if words[0] != "zoo" else "abandon"
    wrong = f"{hosted.spoken.nameplate}-{'-'.join(words)}"
    with pytest.raises(PairingFailed) as e:
        await joiner.join(wrong, timeout=30)
    assert e.value.code == RejectCode.WRONG_CODE
    assert hosted.offer.attempts_used == 1 and not hosted.done
    assert host.devices() == [] and joiner.devices() == []


@inner
@pytest.mark.parametrize("lan_lookup_timeout", [3.0])  # the joiner's
async def test_unknown_and_ambiguous_nameplates(lan_nodes: tuple[Node, Node], tmp_path: Path) -> None:
    host, joiner = lan_nodes
    t = time.monotonic()
    with pytest.raises(NameplateNotFound):
        await joiner.join("98-ocean-tiger-river")
    assert time.monotonic() - t < 6
    hosted = await host.host_pairing(lan=True)
    assert hosted.spoken is not None
    # a second device announcing the same nameplate: the joiner refuses to guess
    squatter = await Endpoint.bind(NetworkOptions.lan().replace(mdns=False))
    ann = squatter.mdns_announce(hosted.spoken.service)
    try:
        with pytest.raises(AmbiguousNameplate):
            await joiner.join(str(hosted.spoken), timeout=30)
        assert hosted.offer.attempts_used == 0  # no words were tried on anybody
    finally:
        ann.close()
        await squatter.close()
    assert isinstance(NameplateNotFound("x"), errors.IrohPairError)


@inner
async def test_paired_node_restarted_is_found_by_mdns(lan_nodes: tuple[Node, Node], tmp_path: Path) -> None:
    """After pairing, B restarts on a new port; A reaches it by EndpointId through mDNS alone,
    and A's events report B on the LAN, leaving it, and coming back."""
    a, b = lan_nodes
    events: list[tuple[float, NodeEvent]] = []

    async def collect() -> None:
        async for ev in a.events():
            events.append((time.monotonic(), ev))

    async def wait_event(kind: str, timeout: float) -> float:
        t = time.monotonic()
        while time.monotonic() - t < timeout:
            if any(e.kind == kind and e.device_id == b_id for _, e in events):
                return time.monotonic() - t
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {kind} event within {timeout} s: {[e.kind for _, e in events]}")

    watcher = asyncio.ensure_future(collect())
    await asyncio.sleep(0)
    hosted = await a.host_pairing(lan=True)
    assert hosted.spoken is not None
    await b.join(str(hosted.spoken), timeout=30)
    b_id, b_dir = b.id, b.data_dir
    await wait_event("lan_appeared", 10)
    assert a.on_lan(b_id)
    old_sockets = b.endpoint.bound_sockets()
    await b.close()
    t_left = await wait_event("lan_left", 60)
    assert not a.on_lan(b_id)
    events.clear()
    b2 = await Node.open(b_dir, name="beta", options=NetworkOptions.lan())
    try:
        assert b2.id == b_id and b2.endpoint.bound_sockets() != old_sockets
        t_back = await wait_event("lan_appeared", 30)
        got: list[bytes] = []

        def on_message(dev: object, data: bytes) -> bytes:
            got.append(data)
            return b"pong"

        b2.on_message(on_message)
        t = time.monotonic()
        reply = await asyncio.wait_for(a.request(b_id, b"ping"), 30)
        t_req = time.monotonic() - t
        assert reply == b"pong" and got == [b"ping"]
        conn = a.cache.peek(b_id, NODE_ALPN)
        assert conn is not None
        print(f"B left the LAN after {t_left:.1f} s, was back {t_back:.1f} s after restart; "
              f"first request by id after restart {t_req:.2f} s; events {[e.kind for _, e in events]}")
        assert [p.kind for p in conn.paths() if p.selected] == ["direct"]
    finally:
        watcher.cancel()
        await b2.close()
