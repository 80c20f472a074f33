"""The control socket (iroh_pair._control): its framing, its server against a fake node, the
owner-only check, and the CLI talking to a running node (real processes, the local servers)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from helpers import skip_or_fail
from iroh_pair._control import (
    MAX_LINE,
    SOCKET_FILE,
    ControlClient,
    _ControlError,
    ControlServer,
    _ControlTimeout,
    decode,
    encode,
    peer_uid,
)
from iroh_pair.errors import UnknownDevice

CLI = [sys.executable, "-m", "iroh_pair"]
ENV = dict(os.environ, PYTHONUNBUFFERED="1")

# ------------------------------------------------------------------ framing


def test_frames_are_one_ascii_line_and_round_trip() -> None:
    obj = {"v": 1, "id": 7, "op": "send", "text": "line one\nline two\r\x1b[31m\u2028\u00e9\U0001f600"}
    data = encode(obj)
    assert data.endswith(b"\n") and data.count(b"\n") == 1 and data.isascii()
    assert decode(data) == obj


@pytest.mark.parametrize("raw, kind", [
    (b"not json\n", "bad_request"),
    (b"[1, 2]\n", "bad_request"),
    (b"\xff\xfe\n", "bad_request"),
    (b'{"op": "ping"}\n', "unsupported_version"),
    (b'{"v": 2, "op": "ping"}\n', "unsupported_version"),
    (b'{"v": 1, "text": "' + b"x" * MAX_LINE + b'"}\n', "line_too_long"),
])
def test_bad_frames_raise_typed_errors(raw: bytes, kind: str) -> None:
    with pytest.raises(_ControlError) as e:
        decode(raw)
    assert e.value.kind == kind


def test_a_frame_beyond_the_limit_is_not_encoded() -> None:
    with pytest.raises(_ControlError) as e:
        encode({"v": 1, "text": "x" * MAX_LINE})
    assert e.value.kind == "line_too_long"


# ------------------------------------------------------------------ server, fake node


class FakeDevice:
    def __init__(self, name: str) -> None:
        self.endpoint_id = f"{name}-id"
        self.name = name
        self.device_type = "laptop"
        self.paired_at = 1.5
        self.last_seen = None


class FakeNode:
    def __init__(self) -> None:
        self.devs = {"bob": FakeDevice("bob")}
        self.sent: list[tuple[str, bytes]] = []

    def devices(self) -> list[Any]:
        return list(self.devs.values())

    def device(self, ref: str) -> Any:
        if ref not in self.devs:
            raise UnknownDevice(ref)
        return self.devs[ref]

    async def send(self, device: Any, data: bytes, *, timeout: float | None = 30.0) -> None:
        if data == b"slow":
            await asyncio.sleep(3600)
        self.sent.append((device.name, data))

    async def unpair(self, ref: str) -> Any:
        return self.devs.pop(self.device(ref).name)


async def test_requests_and_typed_errors_through_the_socket(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    data_dir.mkdir(mode=0o700)
    (data_dir / SOCKET_FILE).write_bytes(b"stale")  # a killed node's leftover is replaced
    node = FakeNode()
    async with ControlServer(node, data_dir) as server:
        sock = data_dir / SOCKET_FILE
        assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o600
        client = await ControlClient.connect(data_dir)
        assert client is not None
        async with client:
            assert [d.name for d in await client.devices()] == ["bob"]
            assert (await client.send("bob", "hi\nthere")).endpoint_id == "bob-id"
            assert node.sent == [("bob", b"hi\nthere")]
            with pytest.raises(_ControlError) as e:
                await client.send("nobody", "x")
            assert e.value.kind == "unknown_device" and str(e.value) == str(UnknownDevice("nobody"))
            with pytest.raises(_ControlError) as e:
                await client.request("reboot")
            assert e.value.kind == "bad_request"
            with pytest.raises(_ControlTimeout) as t:  # the request's own timeout, plus the margin
                await asyncio.wait_for(client.send("bob", "slow", timeout=0.01), 30)
            assert t.value.kind == "timeout" and isinstance(t.value, TimeoutError)
            assert (await client.unpair("bob")).name == "bob"
            assert await client.devices() == []
        # a subscriber gets what the node publishes
        sub = await ControlClient.connect(data_dir)
        assert sub is not None
        events = sub.subscribe()
        first = asyncio.ensure_future(events.__anext__())
        for _ in range(100):
            if server.subscribers:
                break
            await asyncio.sleep(0.02)
        server.publish(FakeDevice("carol"), b"hello \xff")
        assert await asyncio.wait_for(first, 10) == {
            "event": "message", "from": "carol-id", "name": "carol", "text": "hello \ufffd"}
        await sub.close()
        # an over-long line gets its typed error, then the connection ends
        reader, writer = await asyncio.open_unix_connection(str(sock), limit=4 * MAX_LINE)
        writer.write(b'{"v":1,"id":1,"op":"ping","pad":"' + b"x" * MAX_LINE + b'"}\n')
        reply = decode(await asyncio.wait_for(reader.readline(), 10))
        assert reply["ok"] is False and reply["error"]["type"] == "line_too_long"
        writer.close()
    assert not (data_dir / SOCKET_FILE).exists()  # removed on exit
    assert await ControlClient.connect(data_dir) is None


async def test_a_peer_of_another_uid_is_refused(tmp_path: Path) -> None:
    """The peer-credential check itself: a server that belongs to another uid refuses this
    process's connection (forbidden) before it reads a request."""
    async with ControlServer(FakeNode(), tmp_path, uid=os.geteuid() + 4242) as server:
        client = await ControlClient.connect(tmp_path)
        assert client is not None
        with pytest.raises(_ControlError) as e:
            await client.devices()
        assert e.value.kind == "forbidden" and server.refused == 1
        await client.close()


def test_peer_uid_reads_so_peercred() -> None:
    import socket

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert peer_uid(a) == os.geteuid()


PROBE = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("EACCES")
    sys.exit(0)
try:
    s.sendall(b'{"v":1,"id":1,"op":"devices"}\\n')
except BrokenPipeError:  # refused already: the reason is waiting in the buffer
    pass
print(s.makefile("rb").readline().decode().strip())
"""


async def test_another_user_cannot_use_the_socket(request: pytest.FixtureRequest) -> None:
    """As another user (nobody, via setpriv): the 0600 socket refuses to connect (EACCES); and
    with a capability that overrides file permissions, the server's SO_PEERCRED check refuses
    the connection it then gets."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        skip_or_fail("needs root and setpriv to run a client as another user")
    # a directory only the socket's mode protects: the data directory is 0700 (which alone
    # keeps other users out); here it and its parent are searchable by all, so that the
    # socket's own mode is what is tested
    base = Path(tempfile.mkdtemp(prefix="iroh-pair-control-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    data_dir = base / "d"
    data_dir.mkdir(mode=0o700)
    os.chmod(base, 0o711)
    os.chmod(data_dir, 0o711)
    sock = data_dir / SOCKET_FILE
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    async with ControlServer(FakeNode(), data_dir) as server:
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600 and sock.stat().st_uid == 0
        plain = await asyncio.create_subprocess_exec(
            *nobody, python, "-c", PROBE, str(sock), stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(plain.communicate(), 30)
        assert out.decode().strip() == "EACCES"
        privileged = await asyncio.create_subprocess_exec(
            *nobody, "--inh-caps=+dac_override", "--ambient-caps=+dac_override",
            python, "-c", PROBE, str(sock), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(privileged.communicate(), 30)
        assert privileged.returncode == 0, err
        reply = json.loads(out)
        assert reply["ok"] is False and reply["error"]["type"] == "forbidden", reply
        assert server.refused == 1


# ------------------------------------------------------------------ the CLI, real processes


async def start(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *CLI, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=ENV)


async def run(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    p = await asyncio.create_subprocess_exec(*CLI, *args, stdout=asyncio.subprocess.PIPE,
                                             stderr=asyncio.subprocess.PIPE, env=ENV)
    out, err = await asyncio.wait_for(p.communicate(), timeout)
    assert p.returncode is not None
    return p.returncode, out.decode(), err.decode()


async def event(p: asyncio.subprocess.Process, timeout: float = 60) -> dict[str, Any]:
    assert p.stdout is not None
    raw = await asyncio.wait_for(p.stdout.readline(), timeout)
    assert raw, "the process ended early"
    return dict(json.loads(raw))


async def stop(p: asyncio.subprocess.Process | None) -> None:
    if p is not None and p.returncode is None:
        p.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(p.wait(), 15)
        except TimeoutError:
            p.kill()
            await p.wait()


@contextlib.asynccontextmanager
async def two_devices(tmp_path: Path) -> AsyncIterator[tuple[Path, Path]]:
    """The local servers, and data directories a (alice) and b (bob) with their config,
    paired: alice hosts through her running daemon (``host`` over the control socket)."""
    from iroh_pair.config import CONFIG_FILE, ENVIRONMENT
    from iroh_pair.testing import DNS_BIN, RELAY_BIN, find_binary

    if find_binary(RELAY_BIN) is None or find_binary(DNS_BIN) is None:
        skip_or_fail("the relay and lookup server binaries are not built")
    for var in ENVIRONMENT.values():
        ENV.pop(var, None)
    a, b = tmp_path / "a", tmp_path / "b"
    servers = await start("--data-dir", str(a), "--json", "servers", "--write-config",
                          "--relay-port", "0", "--lookup-port", "0", "--dns-port", "0")
    daemon = None
    try:
        assert (await event(servers))["event"] == "servers"
        b.mkdir(mode=0o700)
        (b / CONFIG_FILE).write_bytes((a / CONFIG_FILE).read_bytes())
        daemon = await start("--data-dir", str(a), "--name", "alice", "--json", "daemon")
        running = await event(daemon)
        assert running["event"] == "running" and running["control"] == str(a / SOCKET_FILE)
        host = await start("--data-dir", str(a), "--json", "host", "--yes")
        code = await event(host)
        assert code["event"] == "code" and code["id"] == running["id"]
        rc, out, err = await run("--data-dir", str(b), "--name", "bob", "--json", "join",
                                 str(code["code"]), "--yes")
        assert rc == 0, err
        paired = await event(host)
        assert paired["event"] == "paired" and paired["name"] == "bob"
        assert paired["sas"] == json.loads(out.splitlines()[-1])["sas"]
        assert await asyncio.wait_for(host.wait(), 30) == 0
        await stop(daemon)
        assert daemon.returncode == 0 and not (a / SOCKET_FILE).exists()
        yield a, b
    finally:
        await stop(daemon)
        await stop(servers)


@pytest.mark.slow
async def test_send_devices_unpair_while_listen_runs(tmp_path: Path) -> None:
    async with two_devices(tmp_path) as (a, b):
        bob = await start("--data-dir", str(b), "--json", "listen", "--count", "1")
        alice = await start("--data-dir", str(a), "--json", "listen")
        try:
            assert (await event(bob))["event"] == "listening"
            assert (await event(alice))["event"] == "listening"
            sock = a / SOCKET_FILE
            assert stat.S_IMODE(sock.stat().st_mode) == 0o600
            # send in alice's data directory while her listener holds it: through the socket
            rc, out, err = await run("--data-dir", str(a), "--json", "send", "bob", "hello while listening")
            assert rc == 0, err
            bob_id = json.loads(out)["to"]
            assert json.loads(out) == {"event": "delivered", "to": bob_id}
            got = await event(bob, 30)
            assert got["text"] == "hello while listening" and got["name"] == "alice"
            rc, out, err = await run("--data-dir", str(a), "--json", "devices")
            assert rc == 0, err
            assert [(d["id"], d["name"]) for d in json.loads(out)] == [(bob_id, "bob")]
            # errors keep their text and exit codes
            rc, out, unknown_err = await run("--data-dir", str(a), "send", "nobody", "x")
            assert (rc, unknown_err) == (1, "iroh-pair: no paired device matches nobody\n")
            # bob's listener ends (--count 1): then the timeout's exit code
            assert await asyncio.wait_for(bob.wait(), 30) == 0
            rc, out, err = await run("--data-dir", str(a), "-q", "send", "bob", "x", "--timeout", "2")
            assert rc == 4 and err.startswith("iroh-pair: timed out"), err
            # id is not served: it still names the holder
            rc, out, err = await run("--data-dir", str(a), "id")
            assert rc == 1 and f"in use by process {alice.pid}" in err
            rc, out, err = await run("--data-dir", str(a), "unpair", "bob")
            assert rc == 0 and err.startswith("unpaired bob") and bob_id in err, err
            rc, out, err = await run("--data-dir", str(a), "--json", "devices")
            assert (rc, json.loads(out)) == (0, [])
        finally:
            await stop(alice)
            await stop(bob)
        assert not (a / SOCKET_FILE).exists()
        # the same command on its own gives the same error line
        rc, out, err = await run("--data-dir", str(a), "send", "nobody", "x")
        assert (rc, err) == (1, unknown_err)


@pytest.mark.slow
async def test_chat_standalone_and_through_a_running_node(tmp_path: Path) -> None:
    async with two_devices(tmp_path) as (a, b):
        daemon = await start("--data-dir", str(a), "--json", "daemon")
        bob = alice = None
        try:
            assert (await event(daemon))["event"] == "running"
            bob = await start("--data-dir", str(b), "chat", "alice")  # runs bob's node itself
            alice = await start("--data-dir", str(a), "chat", "bob")  # through alice's daemon
            assert bob.stderr is not None and alice.stderr is not None
            for p in (bob, alice):
                assert p.stderr is not None
                banner = await asyncio.wait_for(p.stderr.readline(), 60)
                if banner.startswith(b"getting reachable"):  # the standalone one, first
                    banner = await asyncio.wait_for(p.stderr.readline(), 60)
                assert banner.startswith(b"chatting with "), banner
            assert bob.stdin is not None and alice.stdin is not None
            alice.stdin.write(b"hi bob \x1b[31m\n")
            await alice.stdin.drain()
            assert bob.stdout is not None and alice.stdout is not None
            line = await asyncio.wait_for(bob.stdout.readline(), 60)
            assert line == b"alice: hi bob \\x1b[31m\n"  # peer text printed terminal-safe
            bob.stdin.write(b"hello alice\n")
            await bob.stdin.drain()
            assert await asyncio.wait_for(alice.stdout.readline(), 60) == b"bob: hello alice\n"
            msg = await event(daemon)  # the daemon prints it too
            assert msg["text"] == "hello alice"
            for p in (alice, bob):
                assert p.stdin is not None
                p.stdin.close()  # end of input ends the chat
                assert await asyncio.wait_for(p.wait(), 30) == 0
        finally:
            await stop(alice)
            await stop(bob)
            await stop(daemon)


async def test_a_lock_holder_without_socket_keeps_the_error(tmp_path: Path) -> None:
    from iroh_pair.store import DataDirLock

    with DataDirLock(tmp_path / "a"):
        for argv in (["devices"], ["send", "bob", "x"], ["unpair", "bob"], ["chat", "bob"]):
            rc, out, err = await run("--data-dir", str(tmp_path / "a"), "--local", *argv)
            assert rc == 1 and f"is in use by process {os.getpid()}" in err, (argv, err)


@pytest.mark.slow
async def test_host_through_the_daemon_asks_the_sas_on_its_own_terminal(tmp_path: Path) -> None:
    """``host`` without --yes through a running daemon: the SAS question is asked on the
    terminal of the ``host`` command (relayed over the socket); a decline there ends it as it
    would standalone, and the next code pairs, joined through the joiner's daemon (``join``
    relayed the same way)."""
    from iroh_pair.config import CONFIG_FILE
    from test_cli import CODE_RE, QUESTION_RE, PtyProc

    async with two_devices(tmp_path) as (a, b):
        daemon = await start("--data-dir", str(a), "--name", "alice", "--json", "daemon")
        carol: asyncio.subprocess.Process | None = None
        procs: list[PtyProc] = []
        try:
            assert (await event(daemon))["event"] == "running"
            for answer, c in ((b"n\n", tmp_path / "c1"), (b"y\n", tmp_path / "c2")):
                c.mkdir(mode=0o700)
                (c / CONFIG_FILE).write_bytes((a / CONFIG_FILE).read_bytes())
                host = PtyProc("--data-dir", str(a), "host", "--no-qr")
                procs.append(host)
                code = (await host.expect(CODE_RE)).group(1).decode()
                if answer == b"y\n":  # carol's node runs: join goes through it
                    carol = await start("--data-dir", str(c), "--name", "carol", "--json", "daemon")
                    assert (await event(carol))["event"] == "running"
                joiner = PtyProc("--data-dir", str(c), "--name", "carol", "join", code)
                procs.append(joiner)
                sas = (await host.expect(QUESTION_RE)).group(1)
                assert (await joiner.expect(QUESTION_RE)).group(1) == sas
                assert b"pairing with carol (" in host.output
                if answer == b"n\n":
                    host.type(answer)
                    assert await host.wait() == 1, host.output
                    assert await joiner.wait() == 3, joiner.output
                    assert (b"not paired: the SAS was not confirmed on this device; nothing was stored"
                            in host.output)
                    assert b"the other device did not confirm the SAS (SAS_DECLINED)" in joiner.output
                else:
                    host.type(answer)
                    joiner.type(answer)
                    assert await joiner.wait() == 0, joiner.output
                    assert await host.wait() == 0, host.output
                    for p in (host, joiner):
                        assert f"SAS {sas.decode()} confirmed on this device".encode() in p.output
                    assert b"paired with carol" in host.output and b"paired with alice" in joiner.output
            rc, out, err = await run("--data-dir", str(a), "--json", "devices")
            assert rc == 0 and sorted(d["name"] for d in json.loads(out)) == ["bob", "carol"], err
            rc, out, err = await run("--data-dir", str(tmp_path / "c2"), "--json", "devices")
            assert rc == 0 and [d["name"] for d in json.loads(out)] == ["alice"], err
            assert carol is not None and carol.returncode is None  # that went through carol's daemon
        finally:
            for p in procs:
                p.close()
            await stop(carol)
            await stop(daemon)


async def test_sigterm_ends_listen_as_ctrl_c_does_and_removes_the_socket(tmp_path: Path) -> None:
    data = tmp_path / "a"
    listen = await start("--data-dir", str(data), "--local", "--json", "listen")
    try:
        assert listen.stdout is not None
        ready = json.loads(await asyncio.wait_for(listen.stdout.readline(), 30))
        sock = Path(ready["control"])
        assert ready["event"] == "listening" and sock.is_socket()
        listen.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(listen.wait(), 30) == 130  # "interrupted", as Ctrl-C
        assert not sock.exists()
    finally:
        if listen.returncode is None:
            listen.kill()
            await listen.wait()
