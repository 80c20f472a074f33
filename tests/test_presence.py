"""Presence: ``Node.events()`` connected / disconnected / path_changed and ``Node.is_connected``,
with the peer in a process of its own (tests/presence_peer.py), real endpoints, and the local
relay and lookup server (:class:`~iroh_pair.testing.LocalServers`) on 127.0.0.1.

The rules checked (stated in ``Node.events``):

- "connected" arrives within :data:`CONNECTED_WITHIN` of the peer's dial completing, and
  ``is_connected`` is True from then on;
- a peer that closes its node: "disconnected" within :data:`CONNECTED_WITHIN`;
- a peer whose process is SIGKILLed (no close frame): "disconnected" once the QUIC idle
  timeout passes, within ``IDLE_TIMEOUT + DISCONNECT_MARGIN`` of the kill; ``is_connected``
  turns False with it;
- a connection that starts on the relay and then gets a direct path shows a path_changed
  event with path "direct".

Everything runs in a network namespace that has only loopback (as tests/test_servers.py), so
nothing can reach beyond 127.0.0.0/8: ``test_in_network_namespace`` re-runs this module under
``unshare --net`` with ``IROH_PAIR_IN_PRESENCE_NETNS=1``; every other test skips outside it.
The relay -> direct test also uses ``nft`` in that namespace (see its docstring). Needs
``iroh-pair-relay`` and ``iroh-pair-dns`` built, root, ``ip`` and ``nft``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from iroh_pair import Node, NodeEvent, NodeEventKind, UnknownDevice
from iroh_pair.protocol.constants import ALPN
from iroh_pair.testing import LocalServers
from iroh_pair.transport import NetworkOptions

from helpers import interfaces, need_server_binaries, rerun_in_netns, skip_or_fail

IN_NETNS = os.environ.get("IROH_PAIR_IN_PRESENCE_NETNS") == "1"
inner = pytest.mark.skipif(not IN_NETNS, reason="runs inside the loopback-only netns (see test_in_network_namespace)")
PEER = Path(__file__).resolve().parent / "presence_peer.py"

#: QUIC idle timeout and keep-alive of both nodes (iroh's defaults are 30 s and 5 s).
IDLE_TIMEOUT = 2.0
KEEP_ALIVE = 0.5
#: "connected" after the dial completed, and "disconnected" after a graceful close, within this.
CONNECTED_WITHIN = 1.0
#: "disconnected" of a killed peer within IDLE_TIMEOUT + this.
DISCONNECT_MARGIN = 1.5
#: the direct path once a's UDP socket is open again, within this.
DIRECT_WITHIN = 15.0



@pytest.mark.slow
def test_in_network_namespace() -> None:
    """Runs the tests of this module in a fresh network namespace with only `lo` up."""
    if IN_NETNS:
        pytest.skip("already inside the namespace")
    need_server_binaries()
    if shutil.which("nft") is None:
        skip_or_fail("needs nft (nftables)")
    rerun_in_netns(Path(__file__), "IROH_PAIR_IN_PRESENCE_NETNS", "ip link set lo up")


@pytest.fixture
async def servers() -> AsyncIterator[LocalServers]:
    assert interfaces() == ["lo"], f"IROH_PAIR_IN_PRESENCE_NETNS=1 but interfaces are {interfaces()}"
    need_server_binaries()
    async with LocalServers(start_timeout=30) as s:
        yield s


def options(servers: LocalServers) -> NetworkOptions:
    return servers.options().replace(idle_timeout=IDLE_TIMEOUT, keep_alive=KEEP_ALIVE)


class Recorder:
    """Collects a node's events with the wall-clock time each arrived and what
    ``is_connected`` said at that moment."""

    def __init__(self, node: Node, device: str) -> None:
        self.node = node
        self.device = device
        self.events: list[tuple[float, NodeEvent, bool]] = []
        self._new = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        async for ev in self.node.events():
            self.events.append((time.time(), ev, self.node.is_connected(self.device)))
            self._new.set()

    async def next(self, kind: NodeEventKind, timeout: float,
                   where: Callable[[NodeEvent], bool] = lambda ev: True) -> tuple[float, NodeEvent, bool]:
        """The first event of ``kind`` (matching ``where``) not yet taken; fails after ``timeout``."""
        async with asyncio.timeout(timeout):
            while True:
                for i, (at, ev, conn) in enumerate(self.events):
                    if ev.kind == kind and where(ev):
                        del self.events[: i + 1]
                        return at, ev, conn
                self._new.clear()
                await self._new.wait()

    def kinds(self) -> list[str]:
        return [f"{ev.kind}:{ev.path}" for _, ev, _ in self.events]

    def close(self) -> None:
        self._task.cancel()


async def pair(servers: LocalServers, tmp_path: Path) -> tuple[Node, Path]:
    """Node "a" (open) and the data directory of "b" (closed), paired."""
    a = await Node.open(tmp_path / "a", name="a", options=options(servers))
    b = await Node.open(tmp_path / "b", name="b", options=options(servers))
    try:
        hosted = await a.host_pairing()
        await b.join(hosted.code)
        await hosted.wait(10)
    finally:
        await b.close()
    return a, tmp_path / "b"


async def start_peer(servers: LocalServers, data_dir: Path, name: str, target: str) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    cfg = {
        "data_dir": str(data_dir), "name": name, "target": target,
        "relays": [str(r) for r in servers.relays], "pkarr_url": servers.pkarr_url,
        "dns_origin": servers.origin, "dns_server": servers.dns_server,
        "idle_timeout": IDLE_TIMEOUT, "keep_alive": KEEP_ALIVE,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(PEER), json.dumps(cfg),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=dict(os.environ),
    )
    info = await read_line(proc, 45)
    return proc, info


async def read_line(proc: asyncio.subprocess.Process, timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None and proc.stderr is not None
    async with asyncio.timeout(timeout):
        line = await proc.stdout.readline()
    if not line:
        raise AssertionError("the peer process ended: " + (await proc.stderr.read()).decode(errors="replace")[-3000:])
    out: dict[str, Any] = json.loads(line)
    return out


async def reap(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
    await proc.wait()


@inner
async def test_connected_and_disconnected_as_the_peer_process_starts_and_dies(
        servers: LocalServers, tmp_path: Path) -> None:
    """Peer b, a process of its own, dials a by id: a sees "connected" within
    CONNECTED_WITHIN of the dial; b closes its node: "disconnected" within CONNECTED_WITHIN;
    b again, then SIGKILLed: "disconnected" within IDLE_TIMEOUT + DISCONNECT_MARGIN of the
    kill. ``is_connected`` follows each event."""
    a, b_dir = await pair(servers, tmp_path)
    got: list[bytes] = []

    def handler(dev: object, data: bytes) -> bytes:
        got.append(data)
        return b"ok"

    a.on_message(handler)
    rec = Recorder(a, "b")
    procs: list[asyncio.subprocess.Process] = []
    try:
        assert await a.wait_reachable()
        await asyncio.sleep(0)
        assert not a.is_connected("b")
        with pytest.raises(UnknownDevice):
            a.is_connected("nobody")

        # 1. b starts and connects; then closes its node (a graceful close)
        proc, info = await start_peer(servers, b_dir, "b", "a")
        procs.append(proc)
        assert info["reply"] == "ok" and got == [b"hello from b"]
        at, ev, conn_then = await rec.next("connected", CONNECTED_WITHIN)
        delay_connected = at - info["connected"]
        print(f"\n[presence] connected {delay_connected * 1000:+.0f} ms after b's dial returned "
              f"(dial took {(info['connected'] - info['dial_start']) * 1000:.0f} ms), path {ev.path}")
        assert ev.name == "b" and ev.path in ("relay", "direct"), ev
        assert conn_then and a.is_connected("b")
        assert delay_connected < CONNECTED_WITHIN, delay_connected
        closing = time.time()
        proc.send_signal(signal.SIGTERM)  # b closes its node
        at, ev, conn_then = await rec.next("disconnected", CONNECTED_WITHIN + 1)
        delay_closed = at - closing
        closed = (await read_line(proc, 10))["closed"]
        print(f"[presence] disconnected {delay_closed * 1000:.0f} ms after b was told to close its node "
              f"(b's close returned after {(closed - closing) * 1000:.0f} ms; {ev.detail})")
        assert delay_closed < CONNECTED_WITHIN, delay_closed
        # the close code by name: b's closing cache ends its connections with CACHE_SHUTDOWN
        assert ev.detail == "closed by the peer: CACHE_SHUTDOWN (18)", ev.detail
        assert not conn_then and not a.is_connected("b")
        assert await proc.wait() == 0

        # 2. b again, then killed: no close frame, the idle timeout ends the connection
        proc, info = await start_peer(servers, b_dir, "b", "a")
        procs.append(proc)
        at, ev, conn_then = await rec.next("connected", CONNECTED_WITHIN)
        assert conn_then and a.is_connected("b")
        assert at - info["connected"] < CONNECTED_WITHIN, at - info["connected"]
        await asyncio.sleep(IDLE_TIMEOUT + 1.0)  # idle longer than the timeout: the keep-alive holds it
        assert a.is_connected("b"), "an idle connection to a live peer stays up (keep-alive)"
        assert not [e for _, e, _ in rec.events if e.kind == "disconnected"], rec.kinds()
        killed = time.time()
        proc.send_signal(signal.SIGKILL)
        at, ev, conn_then = await rec.next("disconnected", IDLE_TIMEOUT + DISCONNECT_MARGIN + 5)
        delay_killed = at - killed
        print(f"[presence] disconnected {delay_killed * 1000:.0f} ms after b was SIGKILLed "
              f"(idle_timeout {IDLE_TIMEOUT:g} s; {ev.detail})")
        assert not conn_then and not a.is_connected("b")
        assert ev.detail == "timed_out", ev.detail
        assert delay_killed < IDLE_TIMEOUT + DISCONNECT_MARGIN, delay_killed
        await asyncio.sleep(0.5)
        assert "connected" not in [e.kind for _, e, _ in rec.events], rec.kinds()
        assert not a.is_connected("b")
    finally:
        rec.close()
        for p in procs:
            await reap(p)
        await a.close()



def nft(*args: str) -> None:
    subprocess.run(["nft", *args], check=True, capture_output=True, text=True, timeout=10)


@inner
async def test_relay_then_direct_shows_as_path_changed(servers: LocalServers, tmp_path: Path) -> None:
    """b (a process of its own) dials a by id; a's lookup record holds only its relay URL, so
    the connection starts on the relay, then iroh hole-punches a direct path (127.0.0.1): a
    sees "connected" with path "relay", then "path_changed" with path "direct".

    On loopback the hole punch can finish before a's accept loop has set the connection up,
    and then "connected" would already say "direct" (a race, not a path change). To make the
    order deterministic, a's UDP socket is cut off by an nft rule in this namespace (the relay
    is TCP, the lookup server's DNS goes through another socket) until a has reported
    "connected" over the relay and a second has passed with no direct path; then the rule
    goes, and the direct path must follow within DIRECT_WITHIN."""
    a, b_dir = await pair(servers, tmp_path)
    a.on_message(lambda dev, data: b"ok")
    rec = Recorder(a, "b")
    proc: asyncio.subprocess.Process | None = None
    ports = [s.rsplit(":", 1)[1] for s in a.endpoint.bound_sockets()]
    assert ports
    try:
        assert await a.wait_reachable()
        nft("add", "table", "inet", "presence")
        for hook in ("input", "output"):
            nft("add", "chain", "inet", "presence", hook,
                "{ type filter hook " + hook + " priority 0; policy accept; }")
            for p in ports:
                nft("add", "rule", "inet", "presence", hook, "udp", "sport", p, "drop")
                nft("add", "rule", "inet", "presence", hook, "udp", "dport", p, "drop")
        proc, info = await start_peer(servers, b_dir, "b", "a")
        assert info["reply"] == "ok"
        _, ev, conn_then = await rec.next("connected", CONNECTED_WITHIN)
        assert conn_then and ev.path == "relay", ev
        await asyncio.sleep(1.0)
        conn = a.cache.peek(ev.device_id, ALPN)
        assert conn is not None
        paths = [(p.kind, p.selected) for p in conn.paths()]
        print(f"\n[presence] connected over the relay; a's paths with UDP cut off, 1 s later: {paths}")
        assert [k for k, sel in paths if sel] == ["relay"], paths
        assert "path_changed:direct" not in rec.kinds(), rec.kinds()
        nft("delete", "table", "inet", "presence")
        t = time.monotonic()
        _, ev, conn_then = await rec.next("path_changed", DIRECT_WITHIN, where=lambda e: e.path == "direct")
        print(f"[presence] path_changed to direct {time.monotonic() - t:.2f} s after the rule went")
        assert ev.name == "b" and conn_then and a.is_connected("b")
        assert [k for k, sel in ((p.kind, p.selected) for p in conn.paths()) if sel] == ["direct"]
    finally:
        subprocess.run(["nft", "delete", "table", "inet", "presence"], capture_output=True, timeout=10)
        rec.close()
        if proc is not None:
            await reap(proc)
        await a.close()
