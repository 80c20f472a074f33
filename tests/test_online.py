"""Getting online through the local relay: no wait for a QUIC address discovery probe.

iroh picks an endpoint's home relay (what ``Endpoint.online()`` waits for) from its first net
report, and that report waits for the QUIC address discovery (QAD) probe of each relay entry:
with a bare relay URL, at port 7842 of the URL's host, until iroh's probe timeout. The relay of
:class:`~iroh_pair.testing.LocalServers` runs no QAD, so its relays say ``quic_port=None``. These
tests check that this is honoured, against a control endpoint whose entry points its
QAD probe at a UDP socket that never answers.

iroh sends QAD probes only when the machine has an IPv4 (or IPv6) address beyond loopback, so
a loopback-only namespace, like the one of ``test_servers.py``, would hide the wait. The tests
run in a network namespace of their own with ``lo`` and one bridge with a private address and
a default route (a host's view, with nothing behind it), re-run there by
``test_in_network_namespace``; every other test skips unless ``IROH_PAIR_IN_ONLINE_NETNS=1``.
Needs ``iroh-pair-relay`` and ``iroh-pair-dns`` built, root (for ``unshare --net``) and ``ip``.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from iroh_pair.testing import LocalServers
from iroh_pair.transport import Endpoint, NetworkOptions, RelayConfig

from helpers import ALPN, interfaces, need_server_binaries, rerun_in_netns

IN_NETNS = os.environ.get("IROH_PAIR_IN_ONLINE_NETNS") == "1"
inner = pytest.mark.skipif(not IN_NETNS, reason="runs inside its netns (see test_in_network_namespace)")
SETUP = (
    "ip link set lo up && ip link add up0 type bridge && ip link set up0 up "
    "&& ip addr add 10.77.0.1/24 dev up0 && ip route add default dev up0"
)



@pytest.mark.slow
def test_in_network_namespace() -> None:
    """Runs the tests of this module in a fresh network namespace (``lo`` and one bridge)."""
    if IN_NETNS:
        pytest.skip("already inside the namespace")
    need_server_binaries()
    rerun_in_netns(Path(__file__), "IROH_PAIR_IN_ONLINE_NETNS", SETUP)


@pytest.fixture
async def servers() -> AsyncIterator[LocalServers]:
    assert sorted(interfaces()) == ["lo", "up0"], f"IROH_PAIR_IN_ONLINE_NETNS=1 but interfaces are {interfaces()}"
    need_server_binaries()
    async with LocalServers(start_timeout=30) as s:
        yield s


class SilentUdp(asyncio.DatagramProtocol):
    """A UDP port that records what arrives and never answers: a QAD endpoint that is not there."""

    def __init__(self) -> None:
        self.senders: list[tuple[str, int]] = []
        self.arrived = asyncio.Event()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if data and data[0] & 0xC0 == 0xC0:  # a QUIC long header (an Initial)
            self.senders.append(addr[:2])
            self.arrived.set()


def _port(ep: Endpoint) -> int:
    ports = {int(a.rsplit(":", 1)[1]) for a in ep.addr().ip_addrs if a.startswith("127.0.0.1:")}
    assert len(ports) == 1, ep.addr().ip_addrs
    return ports.pop()


@inner
async def test_local_relay_entry_is_not_held_by_a_qad_probe(servers: LocalServers) -> None:
    # The relay itself says it runs no QAD, and LocalServers hands out that setting.
    assert servers.relay is not None
    assert servers.options().relay == (RelayConfig(servers.relay_url, quic_port=None),)
    assert servers.relay.ready["client_relay_url"] == f"{servers.relay_url}#qad=none"
    assert RelayConfig.parse(servers.relay.ready["client_relay_url"]) == servers.relays[0]

    loop = asyncio.get_running_loop()
    transport, silent = await loop.create_datagram_endpoint(SilentUdp, local_addr=("127.0.0.1", 0))
    qad_port = transport.get_extra_info("sockname")[1]
    control = local = None
    try:
        # The control: the same relay, its QAD said to be on the silent port. Its probe does go
        # out, from its own socket, to the port its entry names, and holds its online().
        t_control = loop.time()
        control_relay = RelayConfig(servers.relay_url, quic_port=qad_port)
        control = await Endpoint.bind(servers.options().replace(relay=(control_relay,)), alpns=[ALPN])
        control_online = asyncio.ensure_future(control.online())
        await asyncio.wait_for(silent.arrived.wait(), 10)
        assert ("127.0.0.1", _port(control)) in silent.senders
        # A head start for the control: an endpoint held by a probe too would come online
        # after it, not before.
        await asyncio.sleep(1.0)

        # The LocalServers entry has no probe to wait for: it is online while the control
        # still waits for its probe to time out, in a fraction of the control's time.
        t_local = loop.time()
        local = await Endpoint.bind(servers.options(), alpns=[ALPN])
        await asyncio.wait_for(local.online(), 10)
        t_local = loop.time() - t_local
        assert not control_online.done(), "the control came online before the LocalServers entry"
        assert ("127.0.0.1", _port(local)) not in silent.senders
        assert local.addr().relay_urls == [servers.relay_url]  # the #qad= part stays on this side

        # The relay serves the control too, once its probe has given up: the wait was the probe.
        await asyncio.wait_for(control_online, 20)
        t_control = loop.time() - t_control
        assert control.addr().relay_urls == [servers.relay_url]
        assert t_local < t_control / 2, (t_local, t_control)
    finally:
        transport.close()
        for ep in (control, local):
            if ep is not None:
                await ep.close()


def test_relay_config_forms() -> None:
    url = "http://127.0.0.1:3340/"
    assert RelayConfig.parse(url) == RelayConfig(url, quic_port=7842)
    assert RelayConfig.parse(url + "#qad=none") == RelayConfig(url, quic_port=None)
    assert RelayConfig.parse(url + "#qad=7900") == RelayConfig(url, quic_port=7900)
    for r in (RelayConfig(url), RelayConfig(url, None), RelayConfig(url, 7900)):
        assert RelayConfig.parse(str(r)) == r
    # string entries of NetworkOptions.relay are read the same way
    opts = NetworkOptions.self_hosted([url + "#qad=none", RelayConfig("https://relay.example/")])
    assert opts.relay == (RelayConfig(url, None), RelayConfig("https://relay.example/", 7842))


def test_bad_qad_setting_is_a_value_error() -> None:
    for bad in ("#qad=", "#qad=0", "#qad=70000", "#qad=off", "#qad=-1"):
        with pytest.raises(ValueError, match="qad"):
            RelayConfig.parse("http://127.0.0.1:9/" + bad)
        with pytest.raises(ValueError, match="qad"):
            NetworkOptions.self_hosted(["http://127.0.0.1:9/" + bad])
    for port in (0, 65536, -1, True, "7842"):
        with pytest.raises(ValueError, match="quic_port"):
            RelayConfig("http://127.0.0.1:9/", quic_port=port)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="quic_port="):
        RelayConfig("http://127.0.0.1:9/#qad=none")  # the string form is parse()'s


async def test_native_endpoint_rejects_port_zero_it_is_given() -> None:
    # The native side checks too, for an object that slipped past the dataclass.
    class Entry:
        url = "http://127.0.0.1:9/"
        quic_port = 0

    opts = NetworkOptions.loopback()
    object.__setattr__(opts, "relay", (Entry(),))
    with pytest.raises(ValueError, match="quic_port"):
        await Endpoint.bind(opts, alpns=[ALPN])
