"""Self-hosted relay and address lookup: real iroh endpoints through the real servers.

Everything here runs inside a network namespace that has only loopback, so that anything
trying to reach beyond 127.0.0.0/8 (a public relay, the n0 DNS, the mainline DHT) fails instead
of leaking. ``test_in_network_namespace`` is the only test that runs outside: it re-runs this
module under ``unshare --net`` with ``IROH_PAIR_IN_NETNS=1`` and asserts that the inner run
passed (its output is printed; run pytest with ``-s`` or ``-rP`` to see it). Every other test
skips unless ``IROH_PAIR_IN_NETNS=1``, and fails if that variable is set outside a loopback-only
namespace.

Needs ``iroh-pair-relay`` and ``iroh-pair-dns`` built
(``cargo build --release -p iroh-pair-relay -p iroh-pair-dns``), root (for ``unshare --net``),
and ``ip``. Missing pieces skip the tests, or fail them under ``IROH_PAIR_REQUIRE_ALL``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from iroh_pair import errors
from iroh_pair.testing import LocalServers, ServerStartError
from iroh_pair.transport import Connection, Endpoint, EndpointId, LookupConfig, SecretKey

from helpers import ALPN, interfaces, need_server_binaries, rerun_in_netns

IN_NETNS = os.environ.get("IROH_PAIR_IN_NETNS") == "1"
BIG = 16 * 1024 * 1024

inner = pytest.mark.skipif(not IN_NETNS, reason="runs inside the loopback-only netns (see test_in_network_namespace)")



# -- the wrapper ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_in_network_namespace() -> None:
    """Runs the tests of this module in a fresh network namespace with only `lo` up."""
    if IN_NETNS:
        pytest.skip("already inside the namespace")
    need_server_binaries()
    rerun_in_netns(Path(__file__), "IROH_PAIR_IN_NETNS", "ip link set lo up")


# -- fixtures and helpers (inside the namespace) ------------------------------------------------


@pytest.fixture
async def servers() -> AsyncIterator[LocalServers]:
    assert interfaces() == ["lo"], f"IROH_PAIR_IN_NETNS=1 but interfaces are {interfaces()}"
    need_server_binaries()
    async with LocalServers(start_timeout=30) as s:
        yield s


def handler(req: bytes) -> bytes:
    """Echo for small requests; the SHA-256 of big ones."""
    if len(req) > 1024 * 1024:
        return hashlib.sha256(req).digest()
    return b"echo:" + req


class Server:
    """An endpoint that answers every connection with :func:`handler`."""

    def __init__(self, ep: Endpoint) -> None:
        self.ep = ep
        self.conns: list[Connection] = []
        self._serving: list[asyncio.Future[Any]] = []
        self._task = asyncio.get_running_loop().create_task(self._accept())

    async def _accept(self) -> None:
        while (c := await self.ep.accept()) is not None:
            self.conns.append(c)
            self._serving.append(c.serve(handler, max_request=BIG + 1024))

    async def close(self) -> None:
        for f in self._serving:
            f.cancel()
        await self.ep.close()
        self._task.cancel()


async def bind(servers: LocalServers, *, key: SecretKey | None = None, **kw: Any) -> Endpoint:
    return await Endpoint.bind(servers.options().replace(**kw), secret_key=key, alpns=[ALPN])


async def poll(what: str, attempt: Callable[[], Awaitable[Any]], deadline_s: float, pause: float = 0.25) -> Any:
    """Retries ``attempt`` until it returns (not raises), at most ``deadline_s`` seconds."""
    start = time.monotonic()
    last: BaseException | None = None
    while time.monotonic() - start < deadline_s:
        try:
            return await attempt()
        except (errors.ConnectError, errors.Timeout, errors.ConnectionLost) as e:
            last = e
        await asyncio.sleep(pause)
    raise AssertionError(f"{what}: not within {deadline_s}s; last error: {last!r}")


async def dial_by_id(a: Endpoint, target: EndpointId, deadline_s: float = 30.0) -> Connection:
    """Dials ``target`` by id alone until lookup finds it (bounded)."""

    async def once() -> Connection:
        conn = await a.connect(target, ALPN, timeout=5.0)
        reply = await conn.request(b"ping", timeout=5.0)
        assert reply.endswith(b":ping"), reply
        return conn

    conn: Connection = await poll(f"dial {target.fmt_short()} by id", once, deadline_s)
    return conn


async def watch_until_direct(conn: Connection, limit: float) -> tuple[float | None, list[str]]:
    """Keeps requests flowing and waits until a direct path is selected; returns (seconds or
    None, the path events seen)."""
    start = time.monotonic()
    seen: list[str] = []

    async def events() -> float | None:
        async for ev in conn.path_events():
            if ev.event == "snapshot":
                seen.append("snapshot:" + ",".join(f"{p.kind}{'*' if p.selected else ''}" for p in ev.paths))
                if any(p.kind == "direct" and p.selected for p in ev.paths):
                    return time.monotonic() - start
            else:
                seen.append(f"{ev.event}:{ev.kind}:{ev.addr}")
            if any(p.kind == "direct" and p.selected for p in conn.paths()):
                return time.monotonic() - start
        return None

    async def traffic() -> None:
        while True:
            await conn.request(b"x", timeout=5.0)
            await asyncio.sleep(0.05)

    t = asyncio.create_task(traffic())
    try:
        async with asyncio.timeout(limit):
            return await events(), seen
    except TimeoutError:
        return None, seen
    finally:
        t.cancel()


def listening(ports: dict[str, list[int]]) -> dict[str, list[int]]:
    """Which of ``ports`` have a listening TCP socket or a bound UDP socket (IPv4 and IPv6)."""
    found: dict[str, list[int]] = {"tcp": [], "udp": []}
    for proto in ("tcp", "udp"):
        for table in (proto, proto + "6"):
            path = Path("/proc/self/net") / table
            if not path.exists():
                continue
            for line in path.read_text().splitlines()[1:]:
                fields = line.split()
                port = int(fields[1].rsplit(":", 1)[1], 16)
                state = fields[3]
                if port in ports[proto] and (proto == "udp" or state == "0A"):
                    found[proto].append(port)
    return found


# -- the tests -----------------------------------------------------------------------------------


@inner
async def test_servers_start_healthy_and_stop_cleanly() -> None:
    need_server_binaries()
    s = LocalServers(start_timeout=30)
    async with s:
        ports = s.ports()
        assert len(ports["tcp"]) == 3 and len(ports["udp"]) == 1
        up = listening(ports)
        assert sorted(up["tcp"]) == sorted(ports["tcp"]) and up["udp"] == ports["udp"], up
        assert s.relay_urls == [f"http://127.0.0.1:{ports['tcp'][0]}/"]
        assert s.lookup.dns_origin == "irohpair.test" and s.lookup.pkarr_url.endswith("/pkarr")
        # stop and restart each on the same ports
        await s.stop_relay()
        await s.stop_dns()
        assert listening(ports) == {"tcp": [], "udp": []}
        await s.start_relay()
        await s.start_dns()
        assert s.ports() == ports
        assert s.relay is not None and s.dns is not None
        relay, dns = s.relay, s.dns
    assert listening(ports) == {"tcp": [], "udp": []}
    assert relay.proc is not None and relay.proc.returncode == 0, relay.stderr_tail()
    assert dns.proc is not None and dns.proc.returncode == 0, dns.stderr_tail()
    assert s.workdir is None


@inner
async def test_start_error_is_typed() -> None:
    need_server_binaries()
    # A port that is taken: the relay cannot bind it, and the error carries its stderr.
    async with LocalServers(start_timeout=30) as s:
        taken = s.ports()["tcp"][0]
        with pytest.raises(ServerStartError) as e:
            async with LocalServers(relay_port=taken, start_timeout=10):
                pass
        assert e.value.server == "relay" and e.value.stderr_tail
        assert isinstance(e.value, errors.IrohPairError)


PEER_SCRIPT = r"""
import asyncio, json, os, signal, sys
from iroh_pair.transport import Endpoint, LookupConfig, NetworkOptions, SecretKey

async def main() -> None:
    cfg = json.loads(sys.argv[1])
    options = NetworkOptions.self_hosted(cfg["relay"], LookupConfig(**cfg["lookup"]), bind_addrs=("127.0.0.1:0",))
    ep = await Endpoint.bind(
        options, secret_key=SecretKey.from_bytes(bytes.fromhex(cfg["key"])), alpns=[cfg["alpn"].encode()])
    async with asyncio.timeout(30):
        await ep.online()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    serving = []
    async def accept() -> None:
        while (c := await ep.accept()) is not None:
            serving.append(c.serve(lambda r: b"pid%d:" % os.getpid() + r))
    task = asyncio.create_task(accept())
    print(json.dumps({"id": str(ep.id), "sockets": ep.bound_sockets(), "pid": os.getpid()}), flush=True)
    try:
        async with asyncio.timeout(120):
            await stop.wait()
    except TimeoutError:
        pass
    await ep.close()
    task.cancel()

asyncio.run(main())
"""


@inner
async def test_lookup_by_id_then_same_key_new_process(servers: LocalServers) -> None:
    key = SecretKey.generate()
    b = Server(await bind(servers, key=key))
    a = await bind(servers)
    try:
        async with asyncio.timeout(20):
            await b.ep.online()
        t0 = time.monotonic()
        conn = await dial_by_id(a, b.ep.id)
        found_after = time.monotonic() - t0
        first = conn.paths()
        first_selected = [p.kind for p in first if p.selected]
        # path ids count up from the path the connection started on
        started_on = min(first, key=lambda p: p.id).kind if first else None
        direct_after, events = await watch_until_direct(conn, 20.0)
        print(
            f"\n[lookup] B found by id after {found_after:.2f}s; started on the {started_on} path; first paths: "
            f"{[(p.id, p.kind, p.addr, p.selected) for p in first]}; "
            f"direct selected after {direct_after if direct_after is None else round(direct_after, 3)}s; "
            f"events: {events[:12]}"
        )
        assert first_selected, first
        assert started_on == "relay", first  # lookup publishes only the relay URL
        assert all(p.kind in ("relay", "direct") for p in first)
        for i in range(20):
            assert await conn.request(b"m%d" % i, timeout=5) == b"echo:m%d" % i
        conn.close()
        await b.close()

        # Same key, new process, new port: found again by id alone.
        cfg = {
            "key": key.to_bytes().hex(),
            "alpn": ALPN.decode(),
            "relay": servers.relay_urls,
            "lookup": {"pkarr_url": servers.pkarr_url, "dns_origin": servers.origin, "dns_server": servers.dns_server},
        }
        env = dict(os.environ)  # the same interpreter and package as this run (the installed wheel in CI)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PEER_SCRIPT, json.dumps(cfg),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(45):
                line = await proc.stdout.readline()
            if not line:
                assert proc.stderr is not None
                raise AssertionError((await proc.stderr.read()).decode(errors="replace")[-3000:])
            info = json.loads(line)
            assert info["id"] == str(key.public())
            for dialer_name, dialer in (("A (knew the old process)", a), ("C (fresh)", await bind(servers))):
                t1 = time.monotonic()
                c2 = await dial_by_id(dialer, key.public(), deadline_s=45.0)
                took = time.monotonic() - t1
                pid_tag = b"pid%d:" % info["pid"]
                for i in range(10):
                    assert await c2.request(b"n%d" % i, timeout=5) == pid_tag + b"n%d" % i
                assert c2.remote_id == key.public()
                direct2, _ = await watch_until_direct(c2, 15.0)
                print(
                    f"[lookup] {dialer_name} reached the new process {info['sockets']} by id in {took:.2f}s; "
                    f"paths {[(p.kind, p.addr, p.selected) for p in c2.paths()]}; direct after "
                    f"{direct2 if direct2 is None else round(direct2, 3)}s"
                )
                c2.close()
                if dialer is not a:
                    await dialer.close()
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    async with asyncio.timeout(10):
                        await proc.wait()
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
    finally:
        await a.close()
        await b.close()


@inner
async def test_relay_only(servers: LocalServers) -> None:
    b = Server(await bind(servers, clear_ip=True, bind_addrs=()))
    a = await bind(servers, clear_ip=True, bind_addrs=())
    try:
        async with asyncio.timeout(20):
            await b.ep.online()
            await a.online()
        conn = await dial_by_id(a, b.ep.id)
        for i in range(50):
            assert await conn.request(b"r%d" % i, timeout=5) == b"echo:r%d" % i
        big = os.urandom(BIG)
        t = time.monotonic()
        assert await conn.request(big, timeout=120) == hashlib.sha256(big).digest()
        dt = time.monotonic() - t
        paths = conn.paths()
        print(f"\n[relay-only] 16 MiB through the relay in {dt:.2f}s ({BIG / dt / 1e6:.1f} MB/s); paths {paths}")
        assert paths and all(p.kind == "relay" for p in paths), paths
        assert all(p.kind == "relay" for p in b.conns[0].paths()), b.conns[0].paths()
        # the same 16 MiB as a stream written in 1 MiB pieces (one frame: length prefix, body)
        send, recv = await conn.open_bi()
        await send.write_all(struct.pack(">I", BIG))
        for off in range(0, BIG, 1 << 20):
            await send.write_all(big[off : off + (1 << 20)])
        send.finish()
        async with asyncio.timeout(120):
            assert await recv.read_to_end(64) == hashlib.sha256(big).digest()
        assert all(p.kind == "relay" for p in conn.paths()), conn.paths()
    finally:
        await a.close()
        await b.close()


async def direct_pair(servers: LocalServers) -> tuple[Server, Endpoint, Connection]:
    b = Server(await bind(servers))
    a = await bind(servers)
    async with asyncio.timeout(20):
        await b.ep.online()
    conn = await a.connect(b.ep.addr(), ALPN, timeout=10)
    direct, _ = await watch_until_direct(conn, 15.0)
    assert direct is not None, conn.paths()
    return b, a, conn


async def expect_dial_failure(a: Endpoint, target: EndpointId, timeout: float) -> BaseException:
    t = time.monotonic()
    with pytest.raises((errors.ConnectError, errors.Timeout)) as e:
        c = await a.connect(target, ALPN, timeout=timeout)
        await c.request(b"ping", timeout=timeout)
    took = time.monotonic() - t
    assert took < timeout + 3.0, took
    print(f"  dial failed after {took:.2f}s with {type(e.value).__name__}: {str(e.value).splitlines()[0][:160]}")
    return e.value


@inner
async def test_relay_stopped_mid_test(servers: LocalServers) -> None:
    b, a, conn = await direct_pair(servers)
    fresh: list[Server] = []
    try:
        print("\n[fault] relay stopped")
        await servers.stop_relay()
        for i in range(20):
            assert await conn.request(b"d%d" % i, timeout=5) == b"echo:d%d" % i
        c = Server(await bind(servers))
        fresh.append(c)
        await expect_dial_failure(a, c.ep.id, timeout=5.0)
        await servers.start_relay()
        async with asyncio.timeout(45):
            await c.ep.online()
        t = time.monotonic()
        await dial_by_id(a, c.ep.id, deadline_s=45.0)
        print(f"  after the relay restart, dialing by id worked again after {time.monotonic() - t:.2f}s")
        assert await conn.request(b"after", timeout=5) == b"echo:after"
    finally:
        for s in fresh:
            await s.close()
        await a.close()
        await b.close()


@inner
async def test_lookup_server_stopped_mid_test(servers: LocalServers) -> None:
    b, a, conn = await direct_pair(servers)
    fresh: list[Server] = []
    try:
        print("\n[fault] lookup server stopped")
        await servers.stop_dns()
        for i in range(20):
            assert await conn.request(b"d%d" % i, timeout=5) == b"echo:d%d" % i
        d = Server(await bind(servers))
        fresh.append(d)
        async with asyncio.timeout(20):
            await d.ep.online()
        await expect_dial_failure(a, d.ep.id, timeout=5.0)
        await servers.start_dns()
        t = time.monotonic()
        # d's publisher retries with a growing pause (1 s, 2 s, ...): bounded wait.
        await dial_by_id(a, d.ep.id, deadline_s=45.0)
        print(f"  after the lookup server restart, dialing by id worked again after {time.monotonic() - t:.2f}s")
        assert await conn.request(b"after", timeout=5) == b"echo:after"
    finally:
        for s in fresh:
            await s.close()
        await a.close()
        await b.close()


@inner
@pytest.mark.slow
def test_demo_devices_restart_and_talk_by_id_alone(tmp_path: Path) -> None:
    """The README's main job: pair, message, restart both as new processes on new ports, and
    message by device name again, dialed by EndpointId alone through the local servers."""
    need_server_binaries()
    p = subprocess.run([sys.executable, "-m", "iroh_pair.demo", "--keep"], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "TMPDIR": str(tmp_path)})
    print(p.stdout)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "bob received from alice: 'hello bob, alice here after the restart'" in out
    assert "alice received from bob: 'hello alice, bob here after the restart'" in out
    # after the restart each message went over one new connection, dialed by id
    assert out.count("connections dialed 1, accepted 0") >= 2
    db = next(tmp_path.glob("iroh-pair-demo-*/alice/registry.db"))
    import sqlite3

    con = sqlite3.connect(db)
    cols = [r[1].lower() for r in con.execute("PRAGMA table_info(devices)")]
    con.close()
    assert cols and not [c for c in cols if any(w in c for w in ("addr", "ip", "port", "relay"))]


@inner
async def test_node_events_say_relay_or_direct(servers: LocalServers, tmp_path: Path) -> None:
    """A restarted node dials its paired device by id alone; its events say over which path."""
    from iroh_pair import Node, NodeEvent

    opts = servers.options()
    a = await Node.open(tmp_path / "a", name="a", options=opts)
    b = await Node.open(tmp_path / "b", name="b", options=opts)
    try:
        a.on_message(lambda dev, data: b"a got " + data)
        hosted = await a.host_pairing()
        await b.join(hosted.code)
        await b.close()
        b = await Node.open(tmp_path / "b", name="b", options=opts)  # restarted: new port, no address
        events: list[NodeEvent] = []

        async def collect() -> None:
            async for ev in b.events():
                events.append(ev)

        watcher = asyncio.ensure_future(collect())
        await asyncio.sleep(0)
        reply = await poll("request by id", lambda: b.request("a", b"hi", timeout=5), 30)
        assert reply == b"a got hi"
        deadline = time.monotonic() + 5
        while not any(e.kind == "path_changed" and e.path == "direct" for e in events) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        watcher.cancel()
        connected = [e for e in events if e.kind == "connected"]
        assert connected and connected[0].path in ("relay", "direct")
        print("node events:", [(e.kind, e.path) for e in events])
    finally:
        await b.close()
        await a.close()


@inner
async def test_wait_reachable_then_found_by_id_at_once(servers: LocalServers, tmp_path: Path) -> None:
    """``Node.wait_reachable`` returns once the lookup server has the node's record with its
    home relay: a device started right after finds it by id on the first try, no retry. With
    the lookup server down it gives up after ``online_timeout`` and says so."""
    from iroh_pair import Node

    opts = servers.options()
    a = await Node.open(tmp_path / "a", name="a", options=opts)
    c = await bind(servers)
    try:
        assert a.uses_servers
        assert await a.wait_reachable()
        home = a.endpoint.addr().relay_urls
        assert home, "online, so there is a home relay"
        found = await c.lookup(a.id)
        assert found.id == a.id and set(home) <= set(found.relay_urls)
        with pytest.raises(errors.ConnectError):
            await c.lookup(SecretKey.generate().public())

        await servers.stop_dns()
        d = await Node.open(tmp_path / "d", name="d", options=opts, online_timeout=2.0)
        try:
            t = time.monotonic()
            assert not await d.wait_reachable()
            assert time.monotonic() - t < 6.0
        finally:
            await d.close()
    finally:
        await c.close()
        await a.close()
