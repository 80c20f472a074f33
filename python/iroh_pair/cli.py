"""The ``iroh-pair`` command: pair devices and message them from a terminal.

Exit codes: 0 success, 1 error (also: the SAS was declined here; no paired device matches),
2 usage (also: the SAS cannot be asked, stdin is not a terminal and ``--yes`` was not given;
a ``send-file`` PATH that does not exist), 3 pairing failed, 4 timed out (also: ``send-file``
could not reach the device within ``--connect-timeout``), 5 the receiving device declined the
file (``send-file``), 6 the file transfer failed (refused, or not stored by the receiver),
130 interrupted. Every error is one line on stderr; progress and questions go to
stderr, results to stdout (``host``: the code on stdout, its QR code on stderr).

Pairing asks the user to compare the short authentication string (SAS) on both screens,
"Do both screens show 123 456? [y/N]", before anything is stored; ``--yes`` pairs without
asking (scripts), which gives up the protection against a man in the middle who knows the code
(docs/PROTOCOL.md §8.3, §12).

While a command runs the node (``listen``, ``daemon``, ``chat``, ``host --listen``), ``send``,
``send-file``, ``devices``, ``unpair``, ``host``, ``join`` and ``chat`` with the same data
directory talk to it through its control socket ``DATA_DIR/control.sock``
(:mod:`iroh_pair._control`: owner-only, never on the network), with the same output and exit
codes; ``--name`` and the network flags of such a command are then the running node's.

Files: ``send-file DEVICE PATH...`` offers each file to a paired device and returns once it
is stored there, verified (a progress bar on stderr when it is a terminal; with ``--json`` the
lines ``{"event": "progress", "name", "done", "total", "rate"}`` and ``{"event": "sent",
"name", "size", "hash", "stored_as", "to"}`` on stdout). ``listen --accept-files DIR`` (and
``daemon --accept-files DIR``) stores every offered file in DIR; ``listen`` without it asks
on a terminal, and declines (logging why) without one.

Text that comes from a peer (device names, Reject reasons, message text, error messages that
quote them) is printed only through :func:`~iroh_pair._text.sanitize_for_terminal`: no control
character or escape sequence from a peer reaches the terminal. ``--json`` output is exact:
``json.dumps`` escapes every control and non-ASCII character.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shlex
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, Protocol

from tqdm import tqdm

from iroh_pair import __version__, _qr
from iroh_pair._control import ControlClient, _ControlError, ControlServer, DeviceSummary
from iroh_pair._files import FileOffer, FileProgress, FileReceipt, ProgressCallback, unique_destination
from iroh_pair._node import HostedPairing, Node
from iroh_pair._pairing import SasCheck
from iroh_pair._text import sanitize_for_terminal
from iroh_pair.config import CONFIG_FILE, ENVIRONMENT, Mode, NetworkSettings, load_settings, write_config
from iroh_pair.errors import (
    ConfigError,
    DataDirLocked,
    FileTransferError,
    IrohPairError,
    OfferDeclined,
    PairingFailed,
)
from iroh_pair.protocol import DeviceInfo
from iroh_pair.protocol.constants import ALPN, RejectCode
from iroh_pair.protocol.kdf import Role
from iroh_pair.protocol.lan import looks_spoken
from iroh_pair.store import PairedDevice
from iroh_pair.transport import NetworkOptions

__all__ = ["main"]

log = logging.getLogger(__name__)

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PAIRING, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
#: Exit code of ``send-file`` when the receiving device declined the file.
EXIT_FILE_DECLINED = 5
#: Exit code of ``send-file`` when the transfer failed (refused by the provider, not stored).
EXIT_FILE_FAILED = 6
#: Exit code when this side's user declined the SAS (or did not answer in time).
EXIT_DECLINED = EXIT_ERROR
#: Default seconds to answer the SAS question (the Node API's ``confirm_timeout``).
CONFIRM_TIMEOUT = 120.0
NOT_A_TERMINAL = ("cannot ask to compare the SAS: stdin is not a terminal; "
                  "pass --yes to pair without asking")

def safe(text: str, max_chars: int = 300) -> str:
    """Peer (or peer-influenced) text as it may be printed on a terminal."""
    return sanitize_for_terminal(text, max_chars)


def default_data_dir() -> Path:
    env = os.environ.get("IROH_PAIR_DATA_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "iroh-pair"


def flag_settings(args: argparse.Namespace) -> NetworkSettings:
    """The network settings given as flags (the top layer of :mod:`iroh_pair.config`)."""
    if args.local and lan_mode(args):
        raise _UsageError("--lan and --local exclude each other (mDNS needs a LAN interface)")
    mode: Mode | None = "local" if args.local else "lan" if lan_mode(args) else None
    try:
        return NetworkSettings(
            mode=mode,
            relay=tuple(args.relay) if args.relay else None,
            pkarr_url=args.pkarr_url,
            dns_origin=args.dns_origin,
            dns_server=args.dns_server,
            bind=tuple(args.bind) if args.bind else None,
            portmapper=False if args.no_portmapper else None,
            ca_cert=tuple(args.ca_cert) if args.ca_cert else None,
        )
    except ConfigError as e:
        raise _UsageError(f"flags: {e}") from None


def network_settings(args: argparse.Namespace) -> NetworkSettings:
    """Flags over ``IROH_PAIR_*`` variables over the data directory's ``config.toml``."""
    return load_settings(args.data_dir, overrides=flag_settings(args))


def network_options(args: argparse.Namespace) -> NetworkOptions:
    """The node's network options: flags, then environment variables, then the data
    directory's ``config.toml``, then n0's public services (:mod:`iroh_pair.config`)."""
    return network_settings(args).to_options()


class _UsageError(Exception):
    pass


def lan_mode(args: argparse.Namespace) -> bool:
    """``--lan`` (before or after the command), or joining with a spoken LAN code."""
    code = getattr(args, "code", None)
    return bool(getattr(args, "lan", False)) or (isinstance(code, str) and looks_spoken(code))


def describe(dev: PairedDevice | DeviceSummary) -> str:
    kind = safe(dev.device_type, 20)
    return f"{safe(dev.name, 40)}  ({kind})  {dev.endpoint_id}"


class Progress:
    """A waiting indicator on stderr (a spinner on a terminal, one line otherwise), which the
    SAS question pauses while it waits for the answer."""

    def __init__(self, text: str, enabled: bool) -> None:
        self.text = text
        self.enabled = enabled
        self.paused = False
        self._shown = 0

    def clear(self) -> None:
        if self._shown:
            print("\r" + " " * self._shown + "\r", end="", file=sys.stderr, flush=True)
            self._shown = 0

    def pause(self) -> None:
        self.paused = True
        self.clear()

    def resume(self, text: str | None = None) -> None:
        if text is not None:
            self.text = text
            if self.enabled and not sys.stderr.isatty():
                print(f"{text}...", file=sys.stderr, flush=True)
        self.paused = False

    async def spin(self) -> None:
        frames = "|/-\\"
        i = 0
        while True:
            if not self.paused:
                line = f"{self.text} {frames[i % 4]}"
                print("\r" + line, end="", file=sys.stderr, flush=True)
                self._shown = max(self._shown, len(line))
                i += 1
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def progress(text: str, quiet: bool) -> AsyncIterator[Progress]:
    """A waiting indicator on stderr (a spinner only on a terminal)."""
    p = Progress(text, not quiet)
    if quiet:
        yield p
        return
    if not sys.stderr.isatty():
        print(f"{text}...", file=sys.stderr, flush=True)
        yield p
        return
    task = asyncio.ensure_future(p.spin())
    try:
        yield p
    finally:
        task.cancel()
        p.clear()


class _SasDeclined(Exception):
    """This side's user answered no (or nothing in time): nothing was stored."""

    def __init__(self, timed_out: bool = False, timeout: float = 0.0) -> None:
        super().__init__(
            f"not paired: no answer to the SAS question within {timeout:g} s; nothing was stored"
            if timed_out else
            "not paired: the SAS was not confirmed on this device; nothing was stored"
        )


async def read_line(timeout: float) -> bytes | None:
    """One line typed on stdin, without blocking the event loop (the node keeps running);
    ``None`` after ``timeout`` seconds, ``b""`` at end of input."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[bytes] = loop.create_future()
    fd = sys.stdin.fileno()

    def deliver(data: bytes) -> None:
        if not fut.done():
            fut.set_result(data)

    def on_readable() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        deliver(data)

    try:
        loop.add_reader(fd, on_readable)
        remove = True
    except (NotImplementedError, ValueError, OSError):
        # a loop without add_reader: a daemon thread reads (it may stay blocked, harmlessly)
        remove = False

        def read_in_thread() -> None:
            try:
                data = os.read(fd, 4096)
            except OSError:
                data = b""
            loop.call_soon_threadsafe(deliver, data)

        threading.Thread(target=read_in_thread, name="iroh-pair-stdin", daemon=True).start()
    try:
        return await asyncio.wait_for(fut, timeout)
    except TimeoutError:
        return None
    finally:
        if remove:
            loop.remove_reader(fd)


class SasQuestion:
    """The ``confirm=`` callback of :meth:`Node.host_pairing` / :meth:`Node.join`: asks this
    terminal's user "Do both screens show 123 456? [y/N]" (``--yes``: approves at once).

    Only "y" or "yes" approves; anything else, end of input, or no answer within ``timeout``
    seconds declines. Input typed before the question appeared is discarded, so a stray "y"
    cannot answer a question the user has not seen."""

    def __init__(self, *, assume_yes: bool, timeout: float) -> None:
        self.assume_yes = assume_yes
        self.timeout = timeout
        self.answer: bool | None = None
        self.asked = False
        self.timed_out = False
        self.sas = ""
        self.status: Progress | None = None
        self.prompt_open = False
        #: The question was withdrawn before an answer: the pairing attempt ended meanwhile.
        self.cancelled = False
        self.asked_at = 0.0

    async def __call__(self, check: SasCheck) -> bool:
        self.sas = check.formatted
        if self.assume_yes:
            self.answer = True
            return True
        self.asked = True
        self.asked_at = time.monotonic()
        if self.status is not None:
            self.status.pause()
        peer = check.peer_info
        short = bytes(check.peer_id).hex()[:10]
        who = f"{safe(peer.name, 40)} ({short}...)" if peer is not None else f"{short}..."
        print(f"pairing with {who}", file=sys.stderr, flush=True)
        if os.isatty(sys.stdin.fileno()):
            try:
                import termios

                termios.tcflush(sys.stdin.fileno(), termios.TCIFLUSH)  # no typed-ahead answer
            except (ImportError, OSError):  # pragma: no cover
                pass
        print(f"Do both screens show {check.formatted}? [y/N] ", end="", file=sys.stderr, flush=True)
        self.prompt_open = True
        try:
            line = await read_line(self.timeout)
        except asyncio.CancelledError:  # the pairing ended meanwhile (the other side declined)
            self.cancelled = True
            self.end_prompt()
            raise
        self.prompt_open = False
        if line is None:
            self.timed_out = True
            print(f"\nno answer within {self.timeout:g} s", file=sys.stderr, flush=True)
        elif not line.endswith(b"\n"):
            print(file=sys.stderr, flush=True)  # end of input: end the question's line
        self.answer = line is not None and line.strip().lower() in (b"y", b"yes")
        if self.status is not None and self.answer:
            self.status.resume("waiting for the other device to confirm")
        return self.answer

    def ran_out(self) -> bool:
        """Whether the question was open for (about) the whole ``timeout``."""
        return self.asked and time.monotonic() - self.asked_at >= self.timeout - 0.5

    def declined(self, e: PairingFailed | None = None) -> _SasDeclined | None:
        """This side's decline, if that is why the pairing ended: the user said no, or the
        question was still open when this side's ``confirm_timeout`` passed."""
        if self.answer is False:
            return _SasDeclined(self.timed_out, self.timeout)
        if (e is not None and self.asked and self.answer is None and not e.by_peer
                and e.code == RejectCode.TIMEOUT):
            return _SasDeclined(True, self.timeout)
        return None

    def end_prompt(self) -> None:
        """Ends the question's line if it is still open (the pairing ended meanwhile)."""
        if self.prompt_open:
            print(file=sys.stderr, flush=True)
            self.prompt_open = False


def sas_question(args: argparse.Namespace) -> SasQuestion:
    """The question for this command; refuses (_UsageError, exit 2) to pair without asking when
    stdin is not a terminal and ``--yes`` was not given."""
    if not args.yes and not sys.stdin.isatty():
        raise _UsageError(NOT_A_TERMINAL)
    return SasQuestion(assume_yes=args.yes, timeout=args.confirm_timeout)


async def open_node(args: argparse.Namespace) -> Node:
    return await Node.open(args.data_dir, name=args.name, options=network_options(args))


async def node_or_control(args: argparse.Namespace) -> Node | ControlClient:
    """The node, opened in the data directory; or, if a running node holds the directory
    (``listen``, ``daemon``, ``chat``), a connection to its control socket
    (:mod:`iroh_pair._control`). A holder without a control socket (an older version, or
    ``id``/``join``/... running meanwhile) still raises :class:`DataDirLocked`."""
    try:
        return await open_node(args)
    except DataDirLocked:
        client = await ControlClient.connect(args.data_dir)
        if client is None:
            raise
        return client


@contextlib.asynccontextmanager
async def control_server(node: Node, args: argparse.Namespace) -> AsyncIterator[ControlServer]:
    """Serves ``DATA_DIR/control.sock`` for the other commands while this one runs the node."""

    async def pair(op: str, params: dict[str, Any], emit: Any, ask: Any) -> Any:
        if op == "join":
            return await _join_for_client(node, params, ask)
        return await _host_for_client(node, params, emit, ask)

    async def send_file(params: dict[str, Any], progress: Callable[[int, int, float], None]) -> Any:
        return await _send_file_for_client(node, params, progress)

    server = ControlServer(node, node.data_dir, pair=pair, stats=node.endpoint.stats,
                           send_file=send_file)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


def report_stats(node: Node | dict[str, int], args: argparse.Namespace) -> None:
    """With --stats: the endpoint's native counters (connections, streams) as the last line."""
    if args.stats:
        stats = node.endpoint.stats() if isinstance(node, Node) else node
        if args.json:
            print(json.dumps({"event": "stats", "stats": stats}), flush=True)
        else:
            print("stats: " + ", ".join(f"{k}={v}" for k, v in stats.items()), file=sys.stderr)


async def cmd_id(args: argparse.Namespace) -> int:
    async with await open_node(args) as node:
        print(node.id)
    return EXIT_OK


async def cmd_devices(args: argparse.Namespace) -> int:
    target = await node_or_control(args)
    devs: Sequence[PairedDevice | DeviceSummary]
    async with target:
        devs = await target.devices() if isinstance(target, ControlClient) else target.devices()
        if args.json:
            print(json.dumps([
                {"id": str(d.endpoint_id), "name": d.name, "type": d.device_type, "paired_at": d.paired_at,
                 "last_seen": d.last_seen} for d in devs
            ]))
        elif not devs:
            print("no paired devices", file=sys.stderr)
        for d in devs if not args.json else []:
            print(describe(d))
    return EXIT_OK


def _print_message(dev: PairedDevice, data: bytes, as_json: bool) -> None:
    _print_text(str(dev.endpoint_id), dev.name, data.decode("utf-8", errors="replace"), as_json)


def _print_text(sender: str, name: str, text: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"event": "message", "from": sender, "name": name, "text": text}), flush=True)
    else:
        print(f"{safe(name, 40)}: {safe(text, 4000)}", flush=True)


async def _listen(node: Node, args: argparse.Namespace, count: int | None,
                  server: ControlServer | None = None) -> None:
    done = asyncio.Event()
    received = 0

    def on_message(dev: PairedDevice, data: bytes) -> None:
        nonlocal received
        _print_message(dev, data, args.json)
        if server is not None:
            server.publish(dev, data)
        received += 1
        if count is not None and received >= count:
            done.set()

    node.on_message(on_message)
    await done.wait()
    # The sender reads last (our reply), so it closes: wait for that rather than cutting the
    # reply off by closing first.
    await node.wait_disconnected(timeout=5.0)


def _attempt_over(hosted: HostedPairing) -> bool:
    """After this side approved: the handshake no longer holds the offer and did not pair (the
    other device declined, timed out or went away)."""
    offer = hosted.offer
    return not hosted.done and not offer.used and not offer.busy(time.monotonic())


class _Question(Protocol):
    """What :func:`_wait_hosted` reads of a SAS question (:class:`SasQuestion` here, or
    :class:`_RelayedQuestion` on a node that hosts for a control-socket client)."""

    answer: bool | None
    timed_out: bool
    timeout: float
    cancelled: bool

    def ran_out(self) -> bool: ...


async def _wait_hosted(hosted: HostedPairing, question: _Question) -> PairedDevice:
    """``hosted.wait()``, but once the SAS was shown this one attempt decides: a decline here
    ends the command (after the Reject had a moment to leave), and so does the attempt ending
    without a pairing after this side approved."""
    waiter = asyncio.ensure_future(hosted.wait())
    try:
        while True:
            done, _ = await asyncio.wait({waiter}, timeout=0.2)
            if done:
                return waiter.result()
            if question.answer is False:
                try:  # the node sends Reject(SAS_DECLINED); let it leave before closing
                    return await asyncio.wait_for(asyncio.shield(waiter), 1.5)
                except TimeoutError:
                    raise _SasDeclined(question.timed_out, question.timeout) from None
            if question.cancelled and question.ran_out():
                raise _SasDeclined(True, question.timeout)  # the node's confirm_timeout passed
            if question.cancelled or (question.answer is True and _attempt_over(hosted)):
                raise PairingFailed(
                    RejectCode.CONNECTION_LOST,
                    "the other device did not complete the pairing after the SAS check "
                    "(it declined, timed out or went away); nothing was stored",
                )
    finally:
        waiter.cancel()


async def cmd_host(args: argparse.Namespace) -> int:
    question = sas_question(args)
    target = await node_or_control(args)
    if isinstance(target, ControlClient):
        async with target:
            return await _host_through(target, args, question)
    async with target as node:
        hosted = await node.host_pairing(
            ttl=args.ttl, words=args.words, lan=lan_mode(args), confirm=question,
            confirm_timeout=args.confirm_timeout,
        )
        spoken = None if hosted.spoken is None else str(hosted.spoken)
        _print_code(str(hosted.code), spoken, str(node.id), hosted.qr_text, args)
        try:
            async with progress("waiting for the other device", args.quiet or args.json) as status:
                question.status = status
                dev = await _wait_hosted(hosted, question)
        finally:
            question.end_prompt()
        _report_paired(dev, node.last_sas(dev.endpoint_id), args, question)
        if args.listen:
            async with control_server(node, args) as server:
                def on_message(d: PairedDevice, data: bytes) -> None:
                    _print_message(d, data, args.json)
                    server.publish(d, data)

                node.on_message(on_message)
                await asyncio.Event().wait()
    return EXIT_OK


def _print_code(code: str, spoken: str | None, node_id: str, qr_text: str,
                args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps({"event": "code", "code": code, "spoken": spoken, "id": node_id}), flush=True)
    elif spoken is not None:
        print(f"pairing code for a device on this LAN (single use, expires in {args.ttl:.0f} s):",
              file=sys.stderr)
        print(spoken, flush=True)
        print(f"from another network use the full code: {code}", file=sys.stderr)
    else:
        print(f"pairing code (single use, expires in {args.ttl:.0f} s):", file=sys.stderr)
        print(code, flush=True)
    if not args.json and args.qr:
        print_qr(qr_text)


class _RelayedQuestion:
    """The daemon's side of ``host`` and ``join`` through the control socket: the SAS question
    goes to the client (whose terminal asks it); :func:`_wait_hosted` reads the same state as
    from a :class:`SasQuestion`."""

    def __init__(self, ask: Any, timeout: float) -> None:
        self.ask = ask
        self.timeout = timeout
        self.answer: bool | None = None
        self.asked = False
        self.timed_out = False
        self.cancelled = False
        self.asked_at = 0.0

    async def __call__(self, check: SasCheck) -> bool:
        self.asked = True
        self.asked_at = time.monotonic()
        peer = check.peer_info
        try:
            answer = bool(await self.ask({
                "event": "sas", "sas": check.sas, "peer_id": bytes(check.peer_id).hex(),
                "peer_name": None if peer is None else peer.name,
                "peer_type": None if peer is None else peer.device_type}))
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        self.answer = answer
        return answer

    def ran_out(self) -> bool:
        return self.asked and time.monotonic() - self.asked_at >= self.timeout - 0.5

    def declined(self, e: PairingFailed) -> _ControlError | None:
        """As :meth:`SasQuestion.declined`, as the error the client turns back into it."""
        if self.answer is False or (self.asked and self.answer is None and not e.by_peer
                                    and e.code == RejectCode.TIMEOUT):
            return _ControlError("sas_declined", str(_SasDeclined(self.answer is None, self.timeout)))
        return None


async def _join_for_client(node: Node, params: dict[str, Any], ask: Any) -> dict[str, Any]:
    """Runs ``join`` for a client of the control socket (the daemon side of
    :func:`_pair_through`)."""
    confirm_timeout = float(params.get("confirm_timeout", CONFIRM_TIMEOUT))
    question = _RelayedQuestion(ask, confirm_timeout)
    code = params.get("code")
    if not isinstance(code, str):
        raise _ControlError("bad_request", "'code' must be a string")
    try:
        dev = await node.join(code, timeout=float(params.get("timeout", 60.0)),
                              confirm=question if params.get("ask") else None,
                              confirm_timeout=confirm_timeout)
    except PairingFailed as e:
        declined = question.declined(e)
        if declined is not None:
            raise declined from None
        raise
    return {**DeviceSummary.of(dev).to_json(), "sas": node.last_sas(dev.endpoint_id)}


async def _host_for_client(node: Node, params: dict[str, Any], emit: Any, ask: Any) -> dict[str, Any]:
    """Runs ``host`` for a client of the control socket (the daemon side of
    :func:`_host_through`): the events ``code`` and ``sas`` go to the client, the SAS answer
    comes back from it. Returns the paired device with its SAS."""
    confirm_timeout = float(params.get("confirm_timeout", CONFIRM_TIMEOUT))
    question = _RelayedQuestion(ask, confirm_timeout)
    hosted = await node.host_pairing(
        ttl=float(params.get("ttl", 300.0)), words=int(params.get("words", 3)),
        lan=bool(params.get("lan", False)),
        confirm=question if params.get("ask") else None, confirm_timeout=confirm_timeout,
    )
    try:
        await emit({"event": "code", "code": str(hosted.code),
                    "spoken": None if hosted.spoken is None else str(hosted.spoken),
                    "id": str(node.id), "qr_text": hosted.qr_text})
        try:
            dev = await _wait_hosted(hosted, question)
        except _SasDeclined as e:
            raise _ControlError("sas_declined", str(e)) from None
    finally:
        if not hosted.done:  # declined, failed, or the client went away: the code ends now
            hosted.cancel()
    return {**DeviceSummary.of(dev).to_json(), "sas": node.last_sas(dev.endpoint_id)}


async def _pair_through(client: ControlClient, args: argparse.Namespace, question: SasQuestion,
                        op: str, params: dict[str, Any]) -> dict[str, Any]:
    """``host`` or ``join`` through the running node's control socket: the same output, SAS
    question and errors as when this command runs the node."""
    status: Progress | None = None
    waiting: contextlib.AbstractAsyncContextManager[Progress] | None = None
    if op == "join":
        waiting = progress("pairing", args.quiet or args.json)
        status = await waiting.__aenter__()
        question.status = status

    async def on_event(ev: dict[str, Any]) -> bool | None:
        nonlocal status, waiting
        if ev.get("event") == "code":
            _print_code(str(ev["code"]), None if ev.get("spoken") is None else str(ev["spoken"]),
                        str(ev["id"]), str(ev.get("qr_text", "")), args)
            waiting = progress("waiting for the other device", args.quiet or args.json)
            status = await waiting.__aenter__()
            question.status = status
            return None
        if ev.get("event") == "sas":
            info = None
            if ev.get("peer_name") is not None:
                with contextlib.suppress(Exception):
                    info = DeviceInfo(name=str(ev["peer_name"]), device_type=str(ev.get("peer_type") or "other"))
            role = Role.HOST if op == "host" else Role.JOINER
            check = SasCheck(role, bytes.fromhex(str(ev["peer_id"])), str(ev["sas"]), info)
            return await question(check)
        return None

    try:
        result = await client.pair(op, {**params, "confirm_timeout": args.confirm_timeout,
                                        "ask": not question.assume_yes}, on_event)
    except _ControlError as e:
        if e.kind == "sas_declined":
            raise _SasDeclined(question.timed_out, question.timeout) from None
        raise
    finally:
        question.end_prompt()
        if waiting is not None:
            await waiting.__aexit__(None, None, None)
    _report_paired(DeviceSummary.from_json(result), str(result.get("sas", "")), args, question)
    return result


async def _host_through(client: ControlClient, args: argparse.Namespace, question: SasQuestion) -> int:
    """``host`` through the running node's control socket."""
    await _pair_through(client, args, question, "host",
                        {"ttl": args.ttl, "words": args.words, "lan": lan_mode(args)})
    if args.listen:
        await _print_subscribed(args, client)
    return EXIT_OK


async def _print_subscribed(args: argparse.Namespace, client: ControlClient) -> None:
    """Prints the messages the running node receives, until it stops."""
    async for ev in client.subscribe():
        _print_text(str(ev.get("from", "")), str(ev.get("name", "")), str(ev.get("text", "")), args.json)


def print_qr(qr_text: str) -> None:
    """The full code as a QR code on stderr (after the code itself on stdout, which stays the
    one line a script reads): half blocks with a quiet zone, light modules drawn (for the usual
    light-on-dark terminal), no escape sequences. A terminal too narrow for it gets a one-line
    note instead of a wrapped, unscannable code."""
    text = _qr.terminal(qr_text)
    width = len(text.split("\n", 1)[0])
    if sys.stderr.isatty():
        columns = shutil.get_terminal_size(fallback=(width, 24)).columns
        if columns < width:
            print(f"(the QR code of the code needs {width} columns; this terminal has {columns})",
                  file=sys.stderr, flush=True)
            return
    print(text, end="", file=sys.stderr, flush=True)


def read_code_from_stdin() -> str:
    """``join -``: the code from standard input (a line typed at a prompt on a terminal, else
    all of it), stripped; so it never sits in the shell history."""
    if sys.stdin.isatty():
        print("pairing code: ", end="", file=sys.stderr, flush=True)
        text = sys.stdin.readline()
    else:
        text = sys.stdin.read()
    code = text.strip()
    if not code:
        raise _UsageError("join -: no pairing code on standard input")
    return code


def _report_paired(dev: PairedDevice | DeviceSummary, sas: str, args: argparse.Namespace,
                   question: SasQuestion) -> None:
    if args.json:
        print(json.dumps({"event": "paired", "id": str(dev.endpoint_id), "name": dev.name, "sas": sas,
                          "confirmed": question.asked}), flush=True)
    else:
        print(f"paired with {describe(dev)}")
        if question.asked:
            print(f"SAS {question.sas or sas} confirmed on this device")
        else:
            print(f"check that both screens show: {sas}")


async def cmd_join(args: argparse.Namespace) -> int:
    question = sas_question(args)
    if args.code == "-":
        args.code = read_code_from_stdin()
    target = await node_or_control(args)
    if isinstance(target, ControlClient):
        async with target:
            await _pair_through(target, args, question, "join",
                                {"code": args.code, "timeout": args.timeout})
        return EXIT_OK
    async with target as node:
        try:
            async with progress("pairing", args.quiet or args.json) as status:
                question.status = status
                dev = await node.join(
                    args.code, timeout=args.timeout, confirm=question,
                    confirm_timeout=args.confirm_timeout,
                )
        except PairingFailed as e:
            declined = question.declined(e)
            if declined is not None:
                raise declined from None
            raise
        finally:
            question.end_prompt()
        _report_paired(dev, node.last_sas(dev.endpoint_id), args, question)
    return EXIT_OK


async def cmd_send(args: argparse.Namespace) -> int:
    target = await node_or_control(args)
    if isinstance(target, ControlClient):
        async with target:
            summary = await target.device(args.device)
            async with progress(f"sending to {safe(summary.name, 40)}", args.quiet or args.json):
                await target.send(summary.endpoint_id, args.text, timeout=args.timeout)
            if args.json:
                print(json.dumps({"event": "delivered", "to": summary.endpoint_id}), flush=True)
            else:
                print(f"delivered to {safe(summary.name, 40)}", file=sys.stderr)
            if args.stats:
                report_stats(await target.request("stats"), args)
        return EXIT_OK
    async with target as node:
        dev = node.device(args.device)
        async with progress(f"sending to {safe(dev.name, 40)}", args.quiet or args.json):
            await node.send(dev, args.text.encode(), timeout=args.timeout)
        if args.json:
            print(json.dumps({"event": "delivered", "to": str(dev.endpoint_id)}), flush=True)
        else:
            print(f"delivered to {safe(dev.name, 40)}", file=sys.stderr)
        report_stats(node, args)
    return EXIT_OK


# ------------------------------------------------------------------ files


def human_size(n: float) -> str:
    """Bytes for people: ``human_size(268435456) == '256.0 MiB'``, ``human_size(12) == '12 B'``."""
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}"


def _bar(name: str, total: int | None, position: int | None = None) -> tqdm[NoReturn]:
    """A tqdm progress bar on stderr for one file (bytes, binary units)."""
    return tqdm(total=total, desc=safe(name, 30), unit="iB", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, dynamic_ncols=True, mininterval=0.1, leave=True,
                position=position)


class FileView:
    """How one file's transfer is shown: a tqdm bar on stderr (only when stderr is a terminal,
    and not with ``--json``, ``-q`` or ``--no-progress``), or with ``--json`` the lines
    ``{"event": "progress", "name", "done", "total", "rate"}`` on stdout, at most every
    :data:`JSON_PROGRESS_INTERVAL` seconds once bytes move, and once more at the end (``done``
    never goes down). The same whether the node runs here or behind the control socket."""

    def __init__(self, name: str, total: int | None, *, as_json: bool, bar: bool) -> None:
        self.name = name
        self.total = total
        self.as_json = as_json
        self.done = 0
        self._last_json = -1.0
        self._last_shown: tuple[int, int] | None = None
        self._moving = False
        self.started = time.monotonic()
        self.bar = _bar(name, total) if bar and not as_json else None

    def update(self, done: int, total: int, rate: float) -> None:
        """A progress report (``FileProgress`` fields)."""
        self.total = total
        self.done = max(self.done, min(done, total))
        if not self._moving:  # the clock (and the bar's rate) start with the transfer, not
            self._moving = True  # with the import (hashing) before it
            self.started = time.monotonic()
            if self.bar is not None:
                self.bar.reset(total=total)
        if self.bar is not None:
            self.bar.update(self.done - self.bar.n)
        if self.as_json and self.done:  # nothing moved yet: no line (the offer may be declined)
            now = time.monotonic()
            if now - self._last_json >= JSON_PROGRESS_INTERVAL:
                self._last_json = now
                self._print_json(rate)

    def _print_json(self, rate: float) -> None:
        shown = (self.done, self.total or 0)
        if shown != self._last_shown:
            self._last_shown = shown
            print(json.dumps({"event": "progress", "name": self.name, "done": self.done,
                              "total": self.total or 0, "rate": round(rate, 1)}), flush=True)

    def finish(self, size: int, rate: float) -> None:
        """The transfer completed: the final progress (``done == total == size``)."""
        self.total = size
        self.done = size
        if self.bar is not None:
            self.bar.total = size
            self.bar.update(size - self.bar.n)
            self.bar.close()
            self.bar = None
        if self.as_json:
            self._print_json(rate)

    def close(self) -> None:
        """Ends the bar (the transfer failed or was interrupted)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


#: Seconds between two ``--json`` progress lines of one file (at most).
JSON_PROGRESS_INTERVAL = 0.25
#: Default seconds to reach the device before a file is offered (``--connect-timeout``).
CONNECT_TIMEOUT = 30.0


def _send_paths(raw: Sequence[str]) -> list[Path]:
    """The PATH arguments of ``send-file``: each must exist (else a usage error, exit 2)."""
    paths = []
    for p in raw:
        path = Path(p)
        if not os.path.lexists(path):
            raise _UsageError(f"send-file: {p}: no such file or directory")
        if not os.access(path, os.R_OK):
            raise _UsageError(f"send-file: {p}: not readable")
        paths.append(path)
    return paths


async def _send_one(node: Node, dev: PairedDevice, path: Path, progress: ProgressCallback | None,
                    *, connect_timeout: float, timeout: float | None) -> FileReceipt:
    """Reaches ``dev`` (within ``connect_timeout`` s, else :class:`TimeoutError`), then
    ``node.send_file(dev, path)``; a directory the node cannot send yet is a clear error."""
    try:
        await asyncio.wait_for(node.cache.get(dev.endpoint_id, ALPN), connect_timeout)
    except TimeoutError:
        raise TimeoutError(f"could not reach {dev.name} within {connect_timeout:g} s") from None
    try:
        return await node.send_file(dev, path, progress=progress, timeout=timeout)
    except FileNotFoundError:
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a directory: this version of iroh-pair sends "
                                    "single files only") from None
        raise


def _sent_json(name: str, receipt: dict[str, Any]) -> str:
    return json.dumps({"event": "sent", "name": name, "size": receipt["size"],
                       "hash": receipt["hash"], "stored_as": receipt["stored_as"],
                       "to": receipt["to"]})


def _report_sent(view: FileView, name: str, receipt: dict[str, Any], device_name: str,
                 started: float, args: argparse.Namespace) -> None:
    size = int(receipt["size"])
    view.finish(size, size / max(time.monotonic() - started, 1e-9))
    if args.json:
        print(_sent_json(name, receipt), flush=True)
    else:
        stored = str(receipt["stored_as"])
        as_name = f" as {safe(stored, 100)}" if stored and stored != name else ""
        print(f"sent {safe(name, 100)} ({human_size(size)}) to {safe(device_name, 40)}{as_name}",
              file=sys.stderr, flush=True)


def _receipt_json(receipt: FileReceipt, dev: PairedDevice) -> dict[str, Any]:
    return {"size": receipt.size, "hash": receipt.hash, "stored_as": receipt.name,
            "to": str(dev.endpoint_id)}


async def cmd_send_file(args: argparse.Namespace) -> int:
    """Sends each PATH to DEVICE, one after the other; stops at the first that fails (its error
    names it). Runs the node itself, or goes through the control socket of the node that holds
    the data directory, with the same output."""
    paths = _send_paths(args.paths)
    show_bar = not (args.json or args.quiet or args.no_progress) and sys.stderr.isatty()
    timeout = args.timeout if args.timeout and args.timeout > 0 else None

    def view_for(path: Path) -> FileView:
        total = path.stat().st_size if path.is_file() else None
        return FileView(path.name, total, as_json=args.json, bar=show_bar)

    target = await node_or_control(args)
    if isinstance(target, ControlClient):
        async with target:
            summary = await target.device(args.device)
            for path in paths:
                view = view_for(path)
                started = time.monotonic()
                try:
                    receipt = await target.send_file(
                        {"device": summary.endpoint_id, "path": str(path.resolve()),
                         "timeout": timeout, "connect_timeout": args.connect_timeout},
                        view.update)
                finally:
                    view.close()
                _report_sent(view, path.name, receipt, summary.name, started, args)
            if args.stats:
                report_stats(await target.request("stats"), args)
        return EXIT_OK
    async with target as node:
        dev = node.device(args.device)
        for path in paths:
            view = view_for(path)
            started = time.monotonic()
            try:
                r = await _send_one(node, dev, path,
                                    lambda p: view.update(p.done, p.total, p.rate),
                                    connect_timeout=args.connect_timeout, timeout=timeout)
            finally:
                view.close()
            _report_sent(view, path.name, _receipt_json(r, dev), dev.name, started, args)
        report_stats(node, args)
    return EXIT_OK


async def _send_file_for_client(node: Node, params: dict[str, Any],
                                progress: Callable[[int, int, float], None]) -> dict[str, Any]:
    """Runs ``send-file`` for a client of the control socket (one path): the daemon side of
    :func:`cmd_send_file`."""
    path = params.get("path")
    device = params.get("device")
    if not isinstance(path, str) or not isinstance(device, str) or not os.path.isabs(path):
        raise _ControlError("bad_request", "'device' and an absolute 'path' are required")
    timeout = params.get("timeout")
    connect_timeout = params.get("connect_timeout")
    dev = node.device(device)
    r = await _send_one(node, dev, Path(path), lambda p: progress(p.done, p.total, p.rate),
                        connect_timeout=CONNECT_TIMEOUT if connect_timeout is None else float(connect_timeout),
                        timeout=None if timeout is None else float(timeout))
    return _receipt_json(r, dev)


class FileReceiver:
    """The receiving side of ``listen`` and ``daemon``: decides on each file a paired device
    offers (``--accept-files DIR``: into DIR; else, with ``ask`` and stdin and stderr on a
    terminal, the question "DEVICE offers NAME (SIZE). Accept into DIR? [y/N]"; else declined,
    with the reason logged on stderr), shows a bar per file on a terminal, and prints one line
    per stored file (``--json``: ``{"event": "file", "from", "name", "file", "path", "size",
    "hash"}``)."""

    def __init__(self, args: argparse.Namespace, *, ask: bool) -> None:
        self.args = args
        self.accept: Path | None = getattr(args, "accept_files", None)
        self.files_dir: Path = getattr(args, "files_dir", None) or Path.cwd()
        for flag, d in (("--accept-files", self.accept), ("--files-dir", self.files_dir)):
            if d is not None and not d.is_dir():
                raise _UsageError(f"{flag} {d}: not a directory")
        self.ask = ask and self.accept is None and sys.stdin.isatty() and sys.stderr.isatty()
        self.bars = not (args.json or args.quiet) and sys.stderr.isatty()
        self._question = asyncio.Lock()
        #: offers being received: (sender, hash) -> (predicted destination, the directory as
        #: given, its view)
        self._active: dict[tuple[str, str, str], tuple[Path, Path, FileView]] = {}
        #: offers whose last bytes are in, waiting for their final name
        self._waiting: dict[tuple[str, str, str], asyncio.Task[None]] = {}

    def install(self, node: Node) -> None:
        node.on_file_offer(self.decide, progress=self.progress)

    async def decide(self, offer: FileOffer) -> Path | None:
        """The ``on_file_offer`` handler."""
        dev = offer.sender
        what = f"{safe(offer.name, 100)} ({human_size(offer.size)}) from {safe(dev.name, 40)}"
        target: Path | None
        if self.accept is not None:
            target = self.accept
        elif self.ask:
            async with self._question:
                target = self.files_dir if await self._ask(offer) else None
            if target is None:
                log.warning("declined %s: not accepted on this terminal", what)
                return None
        else:
            log.warning("declined %s: no --accept-files, and no terminal to ask on", what)
            return None
        # the node picks the same name right after this returns (nothing runs in between)
        dest = unique_destination(target.resolve(), offer.name)
        key = _offer_key(offer)
        old = self._active.pop(key, None)
        if old is not None:
            old[2].close()
        self._active[key] = (dest, target, FileView(offer.name, offer.size, as_json=False, bar=self.bars))
        return target

    async def _ask(self, offer: FileOffer) -> bool:
        if os.isatty(sys.stdin.fileno()):
            try:
                import termios

                termios.tcflush(sys.stdin.fileno(), termios.TCIFLUSH)  # no typed-ahead answer
            except (ImportError, OSError):  # pragma: no cover
                pass
        print(f"{safe(offer.sender.name, 40)} offers {safe(offer.name, 100)} "
              f"({human_size(offer.size)}). Accept into {self.files_dir}? [y/N] ",
              end="", file=sys.stderr, flush=True)
        line = await read_line(CONFIRM_TIMEOUT)
        if line is None:
            print(f"\nno answer within {CONFIRM_TIMEOUT:g} s", file=sys.stderr, flush=True)
        elif not line.endswith(b"\n"):
            print(file=sys.stderr, flush=True)
        return line is not None and line.strip().lower() in (b"y", b"yes")

    def progress(self, offer: FileOffer, p: FileProgress) -> None:
        """The ``on_file_offer`` progress callback: the bar, and the line once it is stored."""
        key = _offer_key(offer)
        entry = self._active.get(key)
        if entry is None:
            return
        entry[2].update(p.done, p.total, p.rate)
        if p.done < p.total or key in self._waiting:
            return
        if os.path.lexists(entry[0]):  # a file: at its name before the fetch's last report
            self._stored(offer)
        else:  # the last bytes are in; a directory is renamed into place right after
            self._waiting[key] = asyncio.ensure_future(self._await_stored(offer, entry[0]))

    async def _await_stored(self, offer: FileOffer, dest: Path) -> None:
        key = _offer_key(offer)
        try:
            for _ in range(STORED_WAIT_STEPS):
                await asyncio.sleep(0.1)
                if os.path.lexists(dest):
                    self._stored(offer)
                    return
                if key not in self._active:
                    return
            entry = self._active.pop(key, None)  # not stored (the node logged why)
            if entry is not None:
                entry[2].close()
        finally:
            self._waiting.pop(key, None)

    def _stored(self, offer: FileOffer) -> None:
        entry = self._active.pop(_offer_key(offer), None)
        if entry is None:
            return
        dest, shown_dir, view = entry
        view.finish(offer.size, offer.size / max(time.monotonic() - view.started, 1e-9))
        dev = offer.sender
        if self.args.json:
            print(json.dumps({"event": "file", "from": str(dev.endpoint_id), "name": dev.name,
                              "file": dest.name, "path": str(dest), "size": offer.size,
                              "hash": offer.hash,
                              "directory": bool(getattr(offer, "is_directory", False))}),
                  flush=True)
        else:
            print(f"{safe(dev.name, 40)}: received {safe(dest.name, 100)} "
                  f"({human_size(offer.size)}) in {shown_dir}", flush=True)

    def close(self) -> None:
        for task in self._waiting.values():
            task.cancel()
        for _, _, view in self._active.values():
            view.close()
        self._active.clear()


def _offer_key(offer: FileOffer) -> tuple[str, str, str]:
    return (str(offer.sender.endpoint_id), offer.hash, offer.name)


#: How long (0.1 s steps) a received offer may take from its last bytes to its final name.
STORED_WAIT_STEPS = 600


async def cmd_listen(args: argparse.Namespace) -> int:
    """Prints the messages paired devices send, and receives the files they offer
    (:class:`FileReceiver`), until ``--count`` messages arrived or it is interrupted."""
    receiver = FileReceiver(args, ask=True)
    async with await open_node(args) as node, control_server(node, args) as server:
        receiver.install(node)
        # Report "listening" only once a sender started now can find this node by id.
        if node.uses_servers:
            async with progress("getting reachable (relay, address lookup)", args.quiet or args.json):
                await node.wait_reachable()
        if args.json:
            print(json.dumps({"event": "listening", "id": str(node.id),
                              "control": str(server.path)}), flush=True)
        else:
            print(f"listening as {node.id} (Ctrl-C to stop)", file=sys.stderr)
        try:
            await _listen(node, args, args.count, server)
        finally:
            receiver.close()
        report_stats(node, args)
    return EXIT_OK


async def cmd_daemon(args: argparse.Namespace) -> int:
    """Runs the node until interrupted, serving the control socket (``listen`` that also says
    where the socket is); messages that arrive are printed as ``listen`` prints them, and files
    are received with ``--accept-files DIR`` (else declined: a daemon asks no questions)."""
    receiver = FileReceiver(args, ask=False)
    async with await open_node(args) as node, control_server(node, args) as server:
        receiver.install(node)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if node.uses_servers:
            async with progress("getting reachable (relay, address lookup)", args.quiet or args.json):
                await node.wait_reachable()
        if args.json:
            print(json.dumps({"event": "running", "id": str(node.id), "control": str(server.path)}),
                  flush=True)
        else:
            print(f"running as {node.id}; other commands with this data directory go through "
                  f"{server.path} (Ctrl-C to stop)", file=sys.stderr)

        def on_message(dev: PairedDevice, data: bytes) -> None:
            _print_message(dev, data, args.json)
            server.publish(dev, data)

        node.on_message(on_message)
        try:
            await stop.wait()
        finally:
            receiver.close()
    return EXIT_OK


async def cmd_unpair(args: argparse.Namespace) -> int:
    target = await node_or_control(args)
    async with target:
        dev = await target.unpair(args.device)
        print(f"unpaired {describe(dev)}", file=sys.stderr)
    return EXIT_OK


class _StdinLines:
    """Lines of standard input, read by a daemon thread (pipes and terminals alike), without
    blocking the event loop; ``None`` at end of input."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def read() -> None:
            try:
                for raw in iter(sys.stdin.buffer.readline, b""):
                    loop.call_soon_threadsafe(self.queue.put_nowait, raw)
            except (OSError, ValueError):
                pass
            loop.call_soon_threadsafe(self.queue.put_nowait, None)

        threading.Thread(target=read, name="iroh-pair-stdin", daemon=True).start()

    async def __aiter__(self) -> AsyncIterator[str]:
        while True:
            raw = await self.queue.get()
            if raw is None:
                return
            text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if text:
                yield text


async def cmd_chat(args: argparse.Namespace) -> int:
    """Sends each line of stdin to DEVICE and prints the messages that arrive ("name: text"),
    until end of input or Ctrl-C. Runs the node itself (and serves the control socket
    meanwhile), or talks to the node that holds the data directory."""
    target = await node_or_control(args)
    failed = 0

    def not_delivered(e: Exception) -> None:
        nonlocal failed
        failed += 1
        fail(f"not delivered: {'timed out: ' if isinstance(e, TimeoutError) else ''}{e}")

    if isinstance(target, ControlClient):
        async with target:
            dev = await target.device(args.device)
            listener = await ControlClient.connect(args.data_dir)
            if listener is None:
                raise _ControlError("closed", f"the node at {target.path} stopped")
            printer = asyncio.ensure_future(_print_subscribed(args, listener))
            try:
                _chat_banner(dev.name, dev.endpoint_id, args)
                async for text in _StdinLines():
                    try:
                        await target.send(dev.endpoint_id, text, timeout=args.timeout)
                    except (IrohPairError, TimeoutError) as e:
                        not_delivered(e)
            finally:
                printer.cancel()
                await listener.close()
        return EXIT_ERROR if failed else EXIT_OK
    async with target as node, control_server(node, args) as server:
        paired = node.device(args.device)

        def on_message(d: PairedDevice, data: bytes) -> None:
            _print_message(d, data, args.json)
            server.publish(d, data)

        node.on_message(on_message)
        if node.uses_servers:
            async with progress("getting reachable (relay, address lookup)", args.quiet or args.json):
                await node.wait_reachable()
        _chat_banner(paired.name, str(paired.endpoint_id), args)
        async for text in _StdinLines():
            try:
                await node.send(paired, text.encode(), timeout=args.timeout)
            except (IrohPairError, TimeoutError) as e:
                not_delivered(e)
    return EXIT_ERROR if failed else EXIT_OK


def _chat_banner(name: str, endpoint_id: str, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps({"event": "chat", "with": endpoint_id, "name": name}), flush=True)
    elif not args.quiet:
        print(f"chatting with {safe(name, 40)}: type a line and Enter to send it, Ctrl-D to end",
              file=sys.stderr, flush=True)


_SETTING_FLAGS = {
    "mode": "--local / --lan", "relay": "--relay", "pkarr_url": "--pkarr-url",
    "dns_origin": "--dns-origin", "dns_server": "--dns-server", "bind": "--bind",
    "portmapper": "--no-portmapper", "ca_cert": "--ca-cert",
}


async def cmd_config(args: argparse.Namespace) -> int:
    """Shows the network settings in effect and where each comes from; ``--write`` saves them
    (flags, environment and the existing file merged) as the data directory's config.toml."""
    settings = network_settings(args)
    settings.to_options()  # a setting that cannot make options is reported before anything is written
    if args.write:
        path = write_config(args.data_dir, settings)
        if not args.json:
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        print(json.dumps({
            "event": "config", "file": str(Path(args.data_dir) / CONFIG_FILE),
            "settings": {k: (list(v) if isinstance(v, tuple) else v)
                         for k, v in dataclasses.asdict(settings).items() if k != "sources"},
            "sources": dict(settings.sources),
        }), flush=True)
        return EXIT_OK
    print(f"# {Path(args.data_dir) / CONFIG_FILE}; precedence: flags, environment, file, defaults")
    for key, var in ENVIRONMENT.items():
        value = getattr(settings, key)
        source = settings.sources.get(key, "default")
        shown = ("(n0)" if key == "mode" else "(not set)") if value is None else \
            ", ".join(value) if isinstance(value, tuple) else str(value).lower() if isinstance(value, bool) else value
        print(f"{key:<11} {shown}  [{source}; {_SETTING_FLAGS[key]}, {var}]")
    return EXIT_OK


async def cmd_servers(args: argparse.Namespace) -> int:
    """Runs a relay and an address lookup server on 127.0.0.1 until interrupted."""
    from iroh_pair.testing import LocalServers  # only this command needs the server binaries

    state = Path(args.state_dir) if args.state_dir else Path(args.data_dir) / "servers"
    servers = LocalServers(relay_port=args.relay_port, dns_http_port=args.lookup_port,
                           dns_port=args.dns_port, workdir=state)
    async with progress("starting the relay and the lookup server", args.quiet or args.json):
        await servers.start()
    try:
        settings = NetworkSettings(
            relay=tuple(str(r) for r in servers.relays), pkarr_url=servers.pkarr_url,
            dns_origin=servers.origin, dns_server=servers.dns_server, portmapper=False)
        written = write_config(args.data_dir, settings) if args.write_config else None
        if args.json:
            print(json.dumps({"event": "servers", "relay": list(settings.relay or ()),
                              "pkarr_url": servers.pkarr_url, "dns_origin": servers.origin,
                              "dns_server": servers.dns_server,
                              "config": str(written) if written else None,
                              "commands": {s.name: [str(s.binary), *s.args[:-2]]
                                           for s in (servers.relay, servers.dns) if s is not None},
                              }), flush=True)
        else:
            print("relay and address lookup on 127.0.0.1 (Ctrl-C to stop); give nodes these "
                  "settings:\n", file=sys.stderr)
            print(" ".join(servers.cli_args()))
            for key, var in ENVIRONMENT.items():
                value = getattr(settings, key)
                if value is not None:
                    text = ",".join(value) if isinstance(value, tuple) else \
                        str(value).lower() if isinstance(value, bool) else value
                    print(f"export {var}={shlex.quote(text)}")
            if written:
                print(f"\nwrote {written}: every command with --data-dir {args.data_dir} uses "
                      "these servers", file=sys.stderr)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await servers.stop()
    return EXIT_OK


def _add_pairing_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-y", "--yes", action="store_true", default=argparse.SUPPRESS,
                   help="pair without asking to compare the SAS (for scripts; gives up the check "
                        "against a man in the middle who knows the code)")
    p.add_argument("--confirm-timeout", type=float, default=CONFIRM_TIMEOUT, metavar="SECONDS",
                   help="how long to wait for the SAS answer (default %(default)g)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iroh-pair", description="Pair devices and message them over iroh.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--data-dir", type=Path, default=default_data_dir(),
                   help="where the key and paired devices live (default: %(default)s)")
    p.add_argument("--name", help="this device's name, shown to peers (default: the host name)")
    p.add_argument("--json", action="store_true", help="machine-readable output (JSON lines)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.add_argument("--stats", action="store_true",
                   help="print the connection and stream counters when the command ends")
    p.add_argument("-y", "--yes", action="store_true",
                   help="host/join: pair without asking to compare the SAS (for scripts)")
    net = p.add_argument_group("network (default: n0's public relays and address lookup)")
    net.add_argument("--local", action="store_true", help="loopback only: no relays, no lookup")
    net.add_argument("--lan", action="store_true",
                     help="LAN mode: find devices over mDNS, no server needed (no public relays or "
                          "lookup unless --relay/--pkarr-url); host prints a short spoken code")
    net.add_argument("--relay", action="append", metavar="URL",
                     help="a self-hosted relay (repeatable); URL#qad=none if it runs no QUIC address "
                          "discovery, URL#qad=PORT if that is not on port 7842")
    net.add_argument("--pkarr-url", help="self-hosted address lookup: pkarr relay URL")
    net.add_argument("--dns-origin", help="self-hosted address lookup: DNS origin domain")
    net.add_argument("--dns-server", metavar="IP:PORT", help="DNS server to resolve lookups with")
    net.add_argument("--bind", action="append", metavar="IP:PORT", help="local address to bind (repeatable)")
    net.add_argument("--no-portmapper", action="store_true", help="do not probe the gateway for port mapping")
    net.add_argument("--ca-cert", action="append", metavar="PEM",
                     help="trust this CA certificate for self-hosted servers (repeatable)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("id", help="print this device's EndpointId").set_defaults(fn=cmd_id)
    h = sub.add_parser("host", help="create a pairing code and wait for the other device")
    h.add_argument("--ttl", type=float, default=300.0, help="seconds the code is valid (default 300)")
    h.add_argument("--words", type=int, default=3, help="secret words in the code (default 3)")
    h.add_argument("--listen", action="store_true", help="after pairing, keep printing messages")
    h.add_argument("--lan", action="store_true", default=argparse.SUPPRESS,
                   help="LAN mode, with a code to read aloud (e.g. 7-ocean-tiger-river)")
    h.add_argument("--no-qr", dest="qr", action="store_false",
                   help="do not show the full code as a QR code (by default it is printed on "
                        "stderr below the code, also when the output is piped; never with --json)")
    _add_pairing_options(h)
    h.set_defaults(fn=cmd_host)
    j = sub.add_parser("join", help="pair with the device that shows CODE")
    j.add_argument("code", help="the full code, or a spoken LAN code like 7-ocean-tiger-river; "
                                "- reads it from standard input (so it stays out of the shell history)")
    j.add_argument("--lan", action="store_true", default=argparse.SUPPRESS, help="LAN mode")
    j.add_argument("--timeout", type=float, default=60.0)
    _add_pairing_options(j)
    j.set_defaults(fn=cmd_join)
    sub.add_parser("devices", help="list paired devices").set_defaults(fn=cmd_devices)
    s = sub.add_parser("send", help="send TEXT to DEVICE (exits once delivered)")
    s.add_argument("device", help="name, EndpointId or id prefix")
    s.add_argument("text")
    s.add_argument("--timeout", type=float, default=30.0)
    s.add_argument("--lan", action="store_true", default=argparse.SUPPRESS, help="LAN mode")
    s.set_defaults(fn=cmd_send)
    sf = sub.add_parser(
        "send-file", help="send files to DEVICE (exits once each is stored there, verified)",
        description="Offers each PATH to DEVICE, which stores it verified (BLAKE3) and "
                    "answers; exits once every file is stored, or at the first that fails. "
                    "Exit codes: 0 sent, 1 error (unknown device, ...), 2 a PATH does not exist, "
                    "4 timed out, 5 declined by the receiver, 6 the transfer failed.")
    sf.add_argument("device", help="name, EndpointId or id prefix")
    sf.add_argument("paths", nargs="+", metavar="PATH", help="a file to send")
    sf.add_argument("--timeout", type=float, default=0.0, metavar="SECONDS",
                    help="give up when a file is not stored within this time (default: no limit)")
    sf.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT, metavar="SECONDS",
                    help="give up when DEVICE cannot be reached within this time (default %(default)g)")
    sf.add_argument("--no-progress", action="store_true", help="no progress bar")
    sf.add_argument("--lan", action="store_true", default=argparse.SUPPRESS, help="LAN mode")
    sf.set_defaults(fn=cmd_send_file)
    li = sub.add_parser("listen", help="print messages from paired devices and receive their files")
    li.add_argument("--count", type=int, help="exit after this many messages")
    li.add_argument("--accept-files", type=Path, metavar="DIR",
                    help="store every file a paired device offers in DIR (without it: asked on a "
                         "terminal, declined otherwise)")
    li.add_argument("--files-dir", type=Path, metavar="DIR",
                    help="where an offer accepted at the question is stored (default: the current "
                         "directory)")
    li.add_argument("--lan", action="store_true", default=argparse.SUPPRESS, help="LAN mode")
    li.set_defaults(fn=cmd_listen)
    u = sub.add_parser("unpair", help="forget DEVICE")
    u.add_argument("device")
    u.set_defaults(fn=cmd_unpair)
    ch = sub.add_parser("chat", help="send each line of stdin to DEVICE and print what arrives, "
                                     "until end of input (Ctrl-D) or Ctrl-C")
    ch.add_argument("device", help="name, EndpointId or id prefix")
    ch.add_argument("--timeout", type=float, default=30.0, help="seconds to deliver each line")
    ch.add_argument("--lan", action="store_true", default=argparse.SUPPRESS, help="LAN mode")
    ch.set_defaults(fn=cmd_chat)
    dm = sub.add_parser("daemon", help="run the node until interrupted; send, send-file, devices, unpair, "
                                       "host, join and chat with this data directory talk to it")
    dm.add_argument("--lan", action="store_true", default=argparse.SUPPRESS, help="LAN mode")
    dm.add_argument("--accept-files", type=Path, metavar="DIR",
                    help="store every file a paired device offers in DIR (without it: declined)")
    dm.set_defaults(fn=cmd_daemon)
    c = sub.add_parser(
        "config", help="show the network settings in effect; --write saves them",
        description="Network settings come from flags, then IROH_PAIR_* environment variables "
                    "(IROH_PAIR_MODE, IROH_PAIR_RELAY, IROH_PAIR_PKARR_URL, IROH_PAIR_DNS_ORIGIN, "
                    "IROH_PAIR_DNS_SERVER, IROH_PAIR_BIND, IROH_PAIR_PORTMAPPER, IROH_PAIR_CA_CERT), "
                    "then DATA_DIR/config.toml, then n0's public services. Shows each setting "
                    "and where it came from.")
    c.add_argument("--write", action="store_true",
                   help="save the settings in effect (flags, environment and file merged) as "
                        "DATA_DIR/config.toml, so later commands need no network flags")
    c.set_defaults(fn=cmd_config)
    sv = sub.add_parser(
        "servers", help="run a relay and an address lookup server on 127.0.0.1 (development, "
                        "two devices on one machine, no internet)")
    sv.add_argument("--write-config", action="store_true",
                    help="write their settings as DATA_DIR/config.toml")
    sv.add_argument("--relay-port", type=int, default=3340, help="relay HTTP port (default %(default)s)")
    sv.add_argument("--lookup-port", type=int, default=3341,
                    help="lookup server's HTTP (pkarr) port (default %(default)s)")
    sv.add_argument("--dns-port", type=int, default=5300, help="lookup server's DNS port (default %(default)s)")
    sv.add_argument("--state-dir", type=Path,
                    help="where the lookup server keeps its records (default DATA_DIR/servers)")
    sv.set_defaults(fn=cmd_servers)
    return p


class SafeFormatter(logging.Formatter):
    """Log lines on the terminal without control characters from peer text (a log message may
    quote a peer's name or reason); a traceback keeps its line breaks, each line sanitised."""

    def format(self, record: logging.LogRecord) -> str:
        return "\n".join(sanitize_for_terminal(line) for line in super().format(record).split("\n"))


def setup_logging() -> None:
    """Warnings and errors of the package on stderr, sanitised."""
    root = logging.getLogger("iroh_pair")
    if any(isinstance(h.formatter, SafeFormatter) for h in root.handlers):
        return  # main() ran before in this process
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter("iroh-pair: %(levelname)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    root.propagate = False


def fail(text: str) -> None:
    """One error line on stderr; ``text`` may quote the peer, so it is sanitised."""
    print(f"iroh-pair: {safe(text, 500)}", file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``iroh-pair`` command with ``argv`` (default: ``sys.argv[1:]``); returns its exit
    code (see the module's text). ``iroh-pair --help`` lists the commands."""
    args = parser().parse_args(argv)
    setup_logging()
    # SIGTERM ends a command as Ctrl-C does: the node closes and the control socket is removed
    # (daemon and servers wait for it themselves)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        code: int = asyncio.run(args.fn(args))
        return code
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (_UsageError, ConfigError) as e:
        fail(str(e))
        return EXIT_USAGE
    except _SasDeclined as e:
        fail(str(e))
        return EXIT_DECLINED
    except PairingFailed as e:
        if e.code == RejectCode.SAS_DECLINED and e.by_peer:
            fail("not paired: the other device did not confirm the SAS (SAS_DECLINED); "
                 "nothing was stored")
        elif e.code == RejectCode.SAS_DECLINED:
            fail("not paired: the SAS was not confirmed on this device; nothing was stored")
            return EXIT_DECLINED
        else:
            fail(str(e))
        return EXIT_PAIRING
    except TimeoutError as e:
        fail(f"timed out{': ' + str(e) if str(e) else ''}")
        return EXIT_TIMEOUT
    except OfferDeclined as e:
        fail(f"not sent: {e}")
        return EXIT_FILE_DECLINED
    except FileTransferError as e:
        fail(f"not sent: {e}")
        return EXIT_FILE_FAILED
    except (IrohPairError, OSError, ValueError) as e:
        fail(str(e))
        return EXIT_ERROR
    except Exception as e:  # a bug: say so in one line, the traceback sanitised below it
        fail(f"internal error: {type(e).__name__}: {e}")
        for line in traceback.format_exception(e):
            for part in line.rstrip("\n").split("\n"):
                print(sanitize_for_terminal(part), file=sys.stderr)
        return EXIT_ERROR
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
