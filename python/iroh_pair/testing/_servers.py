"""Self-hosted relay and address lookup servers, run as local subprocesses.

:class:`LocalServers` starts the two workspace binaries

* ``iroh-pair-relay`` (``rust/relay-server``, over the ``iroh-relay`` crate): an iroh relay
  on plain HTTP, and
* ``iroh-pair-dns`` (``rust/dns-server``, over the ``iroh-dns-server`` crate): a pkarr relay
  (HTTP) plus a DNS server (UDP and TCP) that answers for the published records,

on 127.0.0.1, each with a config file written into a temporary directory, waits until they are
ready and healthy, and stops them again on exit. It is meant for tests, demos and single-host
setups; see ``docs/SELF_HOSTING.md`` for running the servers yourself.

Example::

    async with LocalServers() as servers:
        a = await Endpoint.bind(servers.options(), alpns=[ALPN])
        b = await Endpoint.bind(servers.options(), alpns=[ALPN])
        await b.online()
        conn = await a.connect(b.id, ALPN)   # found through the lookup server

The binaries are found through ``$IROH_PAIR_RELAY_BIN`` / ``$IROH_PAIR_DNS_BIN``, then
``target/release`` and ``target/debug`` of this repository, then ``$PATH``. Build them with
``cargo build --release -p iroh-pair-relay -p iroh-pair-dns``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import struct
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iroh_pair.errors import IrohPairError
from iroh_pair.transport import LookupConfig, NetworkOptions, RelayConfig, SecretKey

__all__ = [
    "LocalServers",
    "ServerProcess",
    "ServerError",
    "ServerStartError",
    "ServerNotFound",
    "DEFAULT_ORIGIN",
    "RELAY_BIN",
    "DNS_BIN",
    "SERVERS_BIN",
    "find_binary",
    "server_command",
]

log = logging.getLogger("iroh_pair.servers")

#: The DNS origin the local lookup server answers for (a reserved test TLD, never public).
DEFAULT_ORIGIN = "irohpair.test"

#: The names of the two server binaries.
RELAY_BIN = "iroh-pair-relay"
DNS_BIN = "iroh-pair-dns"
#: Both servers in one binary (``iroh-pair-servers relay|dns ARGS``): what the companion wheel
#: ``iroh-pair-servers`` installs (``pip install 'iroh-pair[servers]'``); used when the two
#: separate binaries are not found.
SERVERS_BIN = "iroh-pair-servers"
_ENV_BIN = {RELAY_BIN: "IROH_PAIR_RELAY_BIN", DNS_BIN: "IROH_PAIR_DNS_BIN", SERVERS_BIN: "IROH_PAIR_SERVERS_BIN"}
_SUBCOMMAND = {RELAY_BIN: "relay", DNS_BIN: "dns"}
_REPO_ROOT = Path(__file__).resolve().parents[3]  # python/iroh_pair/testing/_servers.py
_STDERR_TAIL = 40


class ServerError(IrohPairError):
    """A local server failed. ``server`` names it ("relay" or "dns"); ``stderr_tail`` holds
    its last lines of log output, to show why."""

    def __init__(self, message: str, server: str, stderr_tail: str = "") -> None:
        full = f"{message}\n--- {server} stderr (tail) ---\n{stderr_tail}" if stderr_tail else message
        super().__init__(full)
        self.server = server
        self.stderr_tail = stderr_tail


class ServerStartError(ServerError):
    """A server did not start: it exited, never printed its ready line, or failed its health
    check within the start timeout."""


class ServerNotFound(ServerStartError):
    """The server binary is not built and not on ``$PATH``."""


def find_binary(name: str) -> Path | None:
    """Where the binary ``name`` is: its ``$IROH_PAIR_*_BIN`` variable, then ``target/release``
    and ``target/debug`` of this repository, then the scripts directory of this Python (a
    virtual environment's ``bin``, even when it is not activated), then ``$PATH``; ``None`` if
    nowhere."""
    env = _ENV_BIN.get(name)
    if env and os.environ.get(env):
        return Path(os.environ[env])
    for profile in ("release", "debug"):
        p = _REPO_ROOT / "target" / profile / name
        if p.is_file() and os.access(p, os.X_OK):
            return p
    scripts = sysconfig.get_path("scripts")
    if scripts:
        p = Path(scripts) / name
        if p.is_file() and os.access(p, os.X_OK):
            return p
    found = shutil.which(name)
    return Path(found) if found else None


def server_command(name: str, given: Path | None = None) -> list[str] | None:
    """The command that runs server ``name`` (:data:`RELAY_BIN` or :data:`DNS_BIN`): ``given``,
    else its own binary (:func:`find_binary`), else :data:`SERVERS_BIN` with the server's
    subcommand; ``None`` if neither is found."""
    if given is not None:
        return [str(given)]
    own = find_binary(name)
    if own is not None:
        return [str(own)]
    both = find_binary(SERVERS_BIN)
    return [str(both), _SUBCOMMAND[name]] if both is not None else None


@dataclass
class ServerProcess:
    """One server subprocess: started with :meth:`start`, stopped with :meth:`stop`.

    ``ready`` is the JSON object of the server's ready line (its bound addresses).
    """

    name: str
    binary: Path
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    ready: dict[str, Any] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None
    _stderr: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=_STDERR_TAIL))
    _readers: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.proc is not None and self.proc.returncode is None

    def stderr_tail(self) -> str:
        """The last lines the server wrote to stderr."""
        return "\n".join(self._stderr)

    async def start(self, timeout: float) -> dict[str, Any]:
        """Starts the process and waits (at most ``timeout`` seconds) for its ready line;
        returns it. Raises :class:`ServerStartError` (after killing the process) otherwise."""
        if self.running:
            raise RuntimeError(f"{self.name} server is already running")
        self._stderr.clear()
        env = {**os.environ, "NO_COLOR": "1", **self.env}
        env.setdefault("RUST_LOG", os.environ.get("IROH_PAIR_SERVERS_LOG", "info"))
        log.info("starting %s server: %s %s", self.name, self.binary, " ".join(self.args))
        try:
            self.proc = await asyncio.create_subprocess_exec(
                str(self.binary),
                *self.args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
        except OSError as e:
            raise ServerStartError(f"cannot run {self.binary}: {e}", self.name) from e
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[dict[str, Any]] = loop.create_future()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            loop.create_task(self._read_stdout(self.proc.stdout, ready)),
            loop.create_task(self._read_stderr(self.proc.stderr)),
        ]
        try:
            async with asyncio.timeout(timeout):
                self.ready = await ready
        except (TimeoutError, ServerStartError) as e:
            await self.stop(grace=1.0)
            msg = str(e) if isinstance(e, ServerStartError) else f"no ready line within {timeout}s"
            raise ServerStartError(
                f"{self.name} server did not start: {msg.splitlines()[0]}", self.name, self.stderr_tail()
            ) from None
        log.info("%s server ready (pid %s): %s", self.name, self.proc.pid, self.ready)
        return self.ready

    async def _read_stdout(self, stream: asyncio.StreamReader, ready: asyncio.Future[dict[str, Any]]) -> None:
        while line := await stream.readline():
            text = line.decode(errors="replace").strip()
            if not ready.done() and text.startswith("{"):
                try:
                    obj = json.loads(text)
                except ValueError:
                    obj = None
                if isinstance(obj, dict) and obj.get("event") == "ready":
                    ready.set_result(obj)
                    continue
            log.debug("%s stdout: %s", self.name, text)
        if not ready.done():
            # stdout closed: the process is exiting; give stderr a moment to be read.
            code = await self.proc.wait() if self.proc else None
            await asyncio.sleep(0.05)
            ready.set_exception(ServerStartError(f"exited with status {code} before it was ready", self.name))

    async def _read_stderr(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip()
            self._stderr.append(text)
            log.debug("%s: %s", self.name, text)

    async def stop(self, grace: float = 5.0) -> int | None:
        """Stops the process: SIGTERM, then SIGKILL if it has not exited after ``grace``
        seconds. Returns its exit status (``None`` if it was not started)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            log.info("stopping %s server (pid %s)", self.name, proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace):
                    await proc.wait()
            except TimeoutError:
                log.warning("%s server ignored SIGTERM for %ss; killing it", self.name, grace)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for t in self._readers:
            try:
                async with asyncio.timeout(1.0):
                    await t
            except (TimeoutError, asyncio.CancelledError):
                t.cancel()
        self._readers = []
        if proc.returncode not in (0, None):
            log.warning("%s server exited with status %s", self.name, proc.returncode)
        return proc.returncode


class LocalServers:
    """A local relay and address lookup server pair on 127.0.0.1 (async context manager).

    ``relay_port``, ``dns_http_port`` and ``dns_port`` choose the ports (0: free ports, chosen
    on the first start and kept for restarts). On exit both servers are stopped and the
    temporary directory (configs, the lookup server's database) is removed.

    After entering, :attr:`relay_urls` and :attr:`lookup` describe the servers and
    :meth:`options` gives the matching :class:`~iroh_pair.transport.NetworkOptions`.
    """

    def __init__(
        self,
        *,
        origin: str = DEFAULT_ORIGIN,
        relay_port: int = 0,
        dns_http_port: int = 0,
        dns_port: int = 0,
        start_timeout: float = 30.0,
        stop_grace: float = 5.0,
        relay_bin: Path | str | None = None,
        dns_bin: Path | str | None = None,
        workdir: Path | str | None = None,
    ) -> None:
        self.origin = origin.rstrip(".")
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self._relay_port = relay_port
        self._dns_http_port = dns_http_port
        self._dns_port = dns_port
        self._relay_bin = Path(relay_bin) if relay_bin else None
        self._dns_bin = Path(dns_bin) if dns_bin else None
        self._workdir_arg = Path(workdir) if workdir else None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.workdir: Path | None = None
        self.relay: ServerProcess | None = None
        self.dns: ServerProcess | None = None

    # -- addresses -------------------------------------------------------------------------

    @property
    def relay_url(self) -> str:
        """The relay's URL (``http://127.0.0.1:PORT/``)."""
        if not self._relay_port:
            raise RuntimeError("the relay has not been started")
        return f"http://127.0.0.1:{self._relay_port}/"

    @property
    def relay_urls(self) -> list[str]:
        """The relay URLs (plain, as the relay's clients report them)."""
        return [self.relay_url]

    @property
    def relays(self) -> list[RelayConfig]:
        """The relays to give endpoints (``NetworkOptions.relay``): this relay runs no QUIC
        address discovery, so each says ``quic_port=None`` (else every endpoint would wait for
        its QAD probe to time out, 3 s, before it takes the relay as its home)."""
        return [RelayConfig(url, quic_port=None) for url in self.relay_urls]

    @property
    def pkarr_url(self) -> str:
        """The pkarr relay URL endpoints publish to and resolve from."""
        if not self._dns_http_port:
            raise RuntimeError("the lookup server has not been started")
        return f"http://127.0.0.1:{self._dns_http_port}/pkarr"

    @property
    def dns_server(self) -> str:
        """The DNS server, ``"127.0.0.1:PORT"`` (UDP and TCP)."""
        if not self._dns_port:
            raise RuntimeError("the lookup server has not been started")
        return f"127.0.0.1:{self._dns_port}"

    @property
    def lookup(self) -> LookupConfig:
        """The address lookup configuration (``NetworkOptions.lookup``)."""
        return LookupConfig(pkarr_url=self.pkarr_url, dns_origin=self.origin, dns_server=self.dns_server)

    def options(self) -> NetworkOptions:
        """The network options for these servers: :meth:`NetworkOptions.self_hosted
        <iroh_pair.transport.NetworkOptions.self_hosted>` with their relay and lookup, bound to
        127.0.0.1 on a free port, portmapper off. For ``Endpoint.bind`` and ``Node.open``::

            ep = await Endpoint.bind(servers.options(), alpns=[ALPN])
        """
        return NetworkOptions.self_hosted(self.relays, self.lookup, bind_addrs=("127.0.0.1:0",))

    def cli_args(self) -> list[str]:
        """The same settings as ``iroh-pair`` command line flags: ``--relay URL#qad=none
        --pkarr-url URL --dns-origin DOMAIN --dns-server IP:PORT``."""
        args: list[str] = []
        for relay in self.relays:
            args += ["--relay", str(relay)]
        return args + [
            "--pkarr-url", self.pkarr_url, "--dns-origin", self.origin, "--dns-server", self.dns_server,
        ]

    def ports(self) -> dict[str, list[int]]:
        """The ports the servers listen on, by protocol: ``{"tcp": [...], "udp": [...]}``."""
        tcp = [p for p in (self._relay_port, self._dns_http_port, self._dns_port) if p]
        udp = [self._dns_port] if self._dns_port else []
        return {"tcp": tcp, "udp": udp}

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> LocalServers:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Starts both servers (relay first) and waits until they are healthy."""
        if self._workdir_arg is not None:
            self.workdir = self._workdir_arg
            self.workdir.mkdir(parents=True, exist_ok=True)
        elif self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="iroh-pair-servers-")
            self.workdir = Path(self._tmp.name)
        try:
            await self.start_relay()
            await self.start_dns()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stops both servers and removes the temporary directory."""
        try:
            await self.stop_dns()
        finally:
            try:
                await self.stop_relay()
            finally:
                if self._tmp is not None:
                    self._tmp.cleanup()
                    self._tmp = None
                    self.workdir = None

    def _dir(self) -> Path:
        if self.workdir is None:
            raise RuntimeError("LocalServers is not started (use `async with` or start())")
        return self.workdir

    def _command(self, name: str, given: Path | None) -> tuple[Path, list[str]]:
        cmd = server_command(name, given)
        if cmd is None or not Path(cmd[0]).exists():
            raise ServerNotFound(
                f"{name} not found: pip install 'iroh-pair[servers]' (the {SERVERS_BIN} binary), "
                f"set ${_ENV_BIN[name]}, or build it: cargo build --release -p {name}",
                _SUBCOMMAND[name],
            )
        return Path(cmd[0]), cmd[1:]

    async def start_relay(self) -> None:
        """Starts the relay (on its previous port, if it ran before) and health-checks it."""
        if self.relay is not None and self.relay.running:
            return
        binary, prefix = self._command(RELAY_BIN, self._relay_bin)
        cfg = self._dir() / "relay.toml"
        cfg.write_text(f'http_bind_addr = "127.0.0.1:{self._relay_port}"\n')
        proc = ServerProcess("relay", binary, [*prefix, "--config", str(cfg)])
        self.relay = proc
        deadline = time.monotonic() + self.start_timeout
        ready = await proc.start(self.start_timeout)
        self._relay_port = _port(ready["http_addr"])
        try:
            await _until(deadline, lambda: _http_status(f"127.0.0.1:{self._relay_port}", "/ping"), 200)
        except Exception as e:
            await proc.stop(1.0)
            raise ServerStartError(f"relay health check failed: {e!r}", "relay", proc.stderr_tail()) from e

    async def stop_relay(self) -> None:
        """Stops the relay (its port is kept for :meth:`start_relay`)."""
        if self.relay is not None:
            await self.relay.stop(self.stop_grace)

    async def start_dns(self) -> None:
        """Starts the lookup server (on its previous ports and with its previous database, if
        it ran before) and health-checks its pkarr HTTP and DNS listeners."""
        if self.dns is not None and self.dns.running:
            return
        binary, prefix = self._command(DNS_BIN, self._dns_bin)
        d = self._dir()
        cfg = d / "dns.toml"
        cfg.write_text(_dns_config(d / "dns-data", self.origin, self._dns_http_port, self._dns_port))
        proc = ServerProcess("dns", binary, [*prefix, "--config", str(cfg)])
        self.dns = proc
        deadline = time.monotonic() + self.start_timeout
        ready = await proc.start(self.start_timeout)
        self._dns_http_port = _port(ready["http_addr"])
        self._dns_port = _port(ready["dns_addr"])
        unknown = _z32(SecretKey.generate().public().to_bytes())  # a valid key nobody published
        try:
            await _until(
                deadline, lambda: _http_status(f"127.0.0.1:{self._dns_http_port}", f"/pkarr/{unknown}"), 404
            )
            await _until(deadline, lambda: _dns_probe(self._dns_port, self.origin), True)
        except Exception as e:
            await proc.stop(1.0)
            raise ServerStartError(f"lookup server health check failed: {e!r}", "dns", proc.stderr_tail()) from e

    async def stop_dns(self) -> None:
        """Stops the lookup server (ports and database are kept for :meth:`start_dns`)."""
        if self.dns is not None:
            await self.dns.stop(self.stop_grace)

    def __repr__(self) -> str:
        return (
            f"<LocalServers relay={self._relay_port or None} pkarr={self._dns_http_port or None} "
            f"dns={self._dns_port or None} origin={self.origin!r}>"
        )


def _dns_config(data_dir: Path, origin: str, http_port: int, dns_port: int) -> str:
    """iroh-dns-server's TOML config: loopback only, no HTTPS, no metrics, no mainline DHT."""
    return f"""\
# Written by iroh_pair.testing.LocalServers.
pkarr_put_rate_limit = "disabled"
data_dir = {json.dumps(str(data_dir))}

[http]
port = {http_port}
bind_addr = "127.0.0.1"

[dns]
port = {dns_port}
bind_addr = "127.0.0.1"
default_soa = "ns1.{origin} hostmaster.{origin} 0 10800 3600 604800 5"
default_ttl = 30
origins = ["{origin}.", "."]
rr_a = "127.0.0.1"
rr_ns = "ns1.{origin}."

[metrics]
disabled = true

[mainline]
enabled = false
"""


def _port(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


async def _until(deadline: float, probe: Any, want: object) -> None:
    """Runs the coroutine function ``probe`` until it returns ``want``, until ``deadline``."""
    last: object = None
    while True:
        try:
            async with asyncio.timeout(max(0.1, min(2.0, deadline - time.monotonic()))):
                last = await probe()
        except (OSError, TimeoutError) as e:
            last = e
        if last == want:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"wanted {want!r}, last got {last!r}")
        await asyncio.sleep(0.05)


async def _http_status(hostport: str, path: str) -> int:
    """The status code of ``GET path`` on ``hostport`` (plain HTTP/1.1, no dependencies)."""
    host, port = hostport.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        status = await reader.readline()
        return int(status.split()[1])
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _dns_probe(port: int, origin: str) -> bool:
    """Whether the DNS server on 127.0.0.1:``port`` answers a UDP SOA query for ``origin``."""
    qid = secrets.randbits(16)
    qname = b"".join(bytes([len(label)]) + label.encode() for label in origin.split(".") if label) + b"\0"
    query = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack(">HH", 6, 1)
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        await loop.sock_connect(s, ("127.0.0.1", port))
        await loop.sock_sendall(s, query)
        reply = await loop.sock_recv(s, 4096)
    return len(reply) >= 12 and struct.unpack(">H", reply[:2])[0] == qid


_Z32 = "ybndrfg8ejkmcpqxot1uwisza345h769"


def _z32(data: bytes) -> str:
    """z-base-32, the encoding of pkarr keys."""
    bits = int.from_bytes(data, "big")
    n = len(data) * 8
    pad = (5 - n % 5) % 5
    bits <<= pad
    n += pad
    return "".join(_Z32[(bits >> (n - 5 * (i + 1))) & 31] for i in range(n // 5))
