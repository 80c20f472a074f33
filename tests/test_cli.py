"""The iroh-pair command end to end, in subprocesses, on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

CLI = [sys.executable, "-m", "iroh_pair"]


async def start(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


async def line(p: asyncio.subprocess.Process, timeout: float = 20) -> dict[str, object]:
    assert p.stdout is not None
    raw = await asyncio.wait_for(p.stdout.readline(), timeout)
    assert raw, "the process ended early"
    return dict(json.loads(raw))


async def run(*args: str, timeout: float = 30) -> tuple[int, str, str]:
    p = await start(*args)
    out, err = await asyncio.wait_for(p.communicate(), timeout)
    assert p.returncode is not None
    return p.returncode, out.decode(), err.decode()


async def test_host_join_devices_send_listen(tmp_path: Path) -> None:
    a = ["--data-dir", str(tmp_path / "a"), "--local", "--json"]
    b = ["--data-dir", str(tmp_path / "b"), "--local", "--json"]
    evil_name = "evil\x1b[31mRED\x1b]0;title\x07\u202e"
    host = await start(*a, "--name", evil_name, "host", "--listen", "--yes")
    try:
        code = await line(host)
        assert code["event"] == "code"
        rc, out, err = await run(*b, "--name", "bob", "join", str(code["code"]), "--yes")
        assert rc == 0, err
        joined = json.loads(out.strip().splitlines()[-1])
        paired = await line(host)
        assert joined["event"] == paired["event"] == "paired"
        assert joined["sas"] == paired["sas"] and len(str(joined["sas"])) == 6
        assert paired["name"] == "bob"
        # devices lists the peer, and prints the hostile name harmlessly
        rc, out, err = await run("--data-dir", str(tmp_path / "b"), "--local", "devices")
        assert rc == 0, err
        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
        assert "evil" in out and str(code["id"]) in out
    finally:
        host.kill()
        await host.wait()


async def test_listen_receives_from_send(tmp_path: Path) -> None:
    a = ["--data-dir", str(tmp_path / "a"), "--local", "--json"]
    b = ["--data-dir", str(tmp_path / "b"), "--local", "--json"]
    host = await start(*a, "--name", "alice", "host", "--listen", "--yes")
    try:
        code = await line(host)
        rc, out, err = await run(*b, "--name", "bob", "join", str(code["code"]), "--yes")
        assert rc == 0, err
        await line(host)
    finally:
        host.kill()
        await host.wait()
    # A new listener process cannot be found without address lookup (the local servers'
    # tests cover that), so this checks the listen command itself on the joiner's side: the
    # host is gone, and send fails with one clear line and a non-zero exit.
    rc, out, err = await run(*a, "send", "bob", "anyone there?", "--timeout", "3", timeout=60)
    assert rc != 0
    assert len(err.strip().splitlines()) == 1 and err.startswith("iroh-pair: ")


async def test_wrong_code_exit_status(tmp_path: Path) -> None:
    a = ["--data-dir", str(tmp_path / "a"), "--local", "--json"]
    b = ["--data-dir", str(tmp_path / "b"), "--local", "--json"]
    host = await start(*a, "host", "--yes")
    try:
        code = str((await line(host))["code"])
        words, rest = code.split(".", 1)
        first, *others = words.split("-")
        wrong = "-".join(["zoo" if first != "zoo" else "abandon", *others]) + "." + rest
        rc, out, err = await run(*b, "join", wrong, "--yes")
        assert rc == 3, err
        assert "WRONG_CODE" in err and len(err.strip().splitlines()) == 1
    finally:
        host.kill()
        await host.wait()
    rc, out, err = await run(*b, "devices")
    assert rc == 0 and json.loads(out) == []


async def test_bad_code_is_one_clear_line(tmp_path: Path) -> None:
    rc, out, err = await run("--data-dir", str(tmp_path / "x"), "--local", "-q", "join", "not-a-code", "--yes")
    assert rc == 1 and err.startswith("iroh-pair: ") and len(err.strip().splitlines()) == 1


async def test_second_process_on_same_data_dir_fails(tmp_path: Path) -> None:
    a = ["--data-dir", str(tmp_path / "a"), "--local", "--json"]
    first = await start(*a, "listen")
    try:
        assert (await line(first))["event"] == "listening"
        rc, out, err = await run(*a, "id")
        assert rc == 1 and "in use by process" in err and str(first.pid) in err
    finally:
        first.kill()
        await first.wait()


@pytest.mark.parametrize("argv", [["send"], ["--bogus"]])
async def test_usage_errors(argv: list[str]) -> None:
    rc, _, err = await run(*argv)
    assert rc == 2 and "usage" in err


# ------------------------------------------------------------------------------------------
# --version, and pairing without a terminal


async def test_version() -> None:
    from iroh_pair import __version__

    rc, out, err = await run("--version")
    assert rc == 0 and out.strip() == f"iroh-pair {__version__}", (out, err)


NOT_A_TERMINAL = ("cannot ask to compare the SAS: stdin is not a terminal; "
                  "pass --yes to pair without asking")


@pytest.mark.parametrize("command", [["host"], ["join", "abandon-ability-able.aaaaaaaaaaaaaaaaaaaaaaaaaa.x"]])
async def test_pairing_without_a_terminal_fails_closed(tmp_path: Path, command: list[str]) -> None:
    """stdin is not a terminal (here /dev/null) and no --yes: nothing is hosted or dialed."""
    p = await asyncio.create_subprocess_exec(
        *CLI, "--data-dir", str(tmp_path / "d"), "--local", *command,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(p.communicate(), 30)
    assert p.returncode == 2, err
    assert err.decode().strip() == f"iroh-pair: {NOT_A_TERMINAL}" and out == b""
    assert not (tmp_path / "d").exists()  # it failed before opening the node


# ------------------------------------------------------------------------------------------
# peer text on the terminal: test the bytes written

#: What a hostile peer sends: OSC title + BEL, clear screen, SGR, an 8-bit CSI (U+009B), bidi
#: override and isolate, CR/LF to forge a line, NUL, DEL, a line separator.
EVIL = "\x1b]0;pwned\x07\x1b[2J\x1b[31mRED\x9b1m\u202eevil\u2066\r\nforged: line\x00\x7f\u2028end"


def assert_terminal_safe(raw: bytes, *, allow: bytes = b"\n") -> None:
    """No control byte but ``allow``, valid UTF-8, and no unsafe character (C1, bidi...)."""
    from iroh_pair._text import is_unsafe_char

    bad = sorted({b for b in raw if (b < 0x20 or b == 0x7F) and b not in allow})
    assert not bad, f"control bytes {bad} in {raw!r}"
    text = raw.decode("utf-8")
    unsafe = {c for c in text if is_unsafe_char(c) and c.encode() not in [bytes([a]) for a in allow]}
    assert not unsafe, f"unsafe characters {unsafe!r} in {raw!r}"


async def evil_host(reason: str, code: int) -> tuple[Any, str, asyncio.Task[bytes]]:
    """A host built from the transport alone: it answers the joiner's Hello with
    Reject(``code``, ``reason``). Returns the endpoint, a pairing code for it, and a task that
    yields the first frame it received."""
    from iroh_pair.protocol.code import PairingCode
    from iroh_pair.protocol import ALPN, MAX_MESSAGE, wire
    from iroh_pair.transport import Endpoint

    ep = await Endpoint.bind(alpns=[ALPN])
    pc = PairingCode.generate(ep.ticket())

    async def serve() -> bytes:
        conn = await ep.accept()
        assert conn is not None
        send, recv = await conn.accept_bi()
        first = await recv.read_frame(MAX_MESSAGE + 64)
        assert first is not None
        await send.write_frame(wire.encode(wire.Reject.make(code, reason)))
        send.finish()
        await asyncio.wait_for(conn.closed(), 30)  # the joiner closes once it has the Reject
        return first

    return ep, str(pc), asyncio.ensure_future(serve())


@pytest.mark.parametrize("code", [10, 999], ids=["WRONG_CODE", "unknown-code"])
@pytest.mark.parametrize("json_mode", [False, True], ids=["text", "json"])
async def test_reject_reason_with_escape_sequences_is_printed_harmlessly(
    tmp_path: Path, code: int, json_mode: bool
) -> None:
    ep, pc, served = await evil_host(EVIL, code)
    try:
        args = ["--data-dir", str(tmp_path / "j"), "--local", *(["--json"] if json_mode else [])]
        p = await start(*args, "join", pc, "--yes")
        out, err = await asyncio.wait_for(p.communicate(), 30)
        first = await asyncio.wait_for(served, 30)
    finally:
        await ep.close()
    assert first.startswith(b"\x01\x05pair2")  # it was a real pairing attempt
    assert p.returncode == 3, err
    assert_terminal_safe(out)
    assert_terminal_safe(err)
    text = err.decode()
    lines = text.strip().splitlines()
    # the forged line stayed on the error's line: progress (text mode), then one error line
    assert lines[-1].startswith("iroh-pair: pairing failed (") and lines[:-1] in ([], ["pairing..."])
    # the reason is shown, escaped (not dropped): the user sees what the peer sent
    assert "\\x1b]0;pwned\\x07\\x1b[2J" in text and "\\u202eevil" in text and "\\x9b" in text
    assert ("WRONG_CODE" if code == 10 else "UNSPECIFIED") in text


async def test_message_text_and_peer_name_in_listen_are_printed_harmlessly(tmp_path: Path) -> None:
    """A paired peer whose name carries bidi and separator characters sends message text with
    escape sequences, control characters and invalid UTF-8; `host --listen` prints it on one
    line, escaped; with --json the same text arrives exactly."""
    from helpers import open_local_node
    from iroh_pair.protocol import DeviceInfo

    payload = EVIL.encode() + b"\xff\xfe"
    for json_mode in (False, True):
        a = ["--data-dir", str(tmp_path / f"a{json_mode}"), "--local", *(["--json"] if json_mode else [])]
        host = await start(*a, "--name", "alice", "host", "--listen", "--yes")
        peer = await open_local_node(tmp_path / f"b{json_mode}", "bob")
        # the peer's own device info, as it chooses to send it (no Cc allowed by the format)
        peer.info = DeviceInfo(name="bob\u202e\u2066\u200b\u2028x", device_type="phone")
        try:
            assert host.stdout is not None
            raw = await asyncio.wait_for(host.stdout.readline(), 20)
            code = json.loads(raw)["code"] if json_mode else raw.decode().strip()
            dev = await peer.join(code, timeout=20)
            paired = await asyncio.wait_for(host.stdout.readline(), 20)
            if not json_mode:
                paired += await asyncio.wait_for(host.stdout.readline(), 20)  # the SAS line
            await peer.send(dev, payload, timeout=20)
            got = await asyncio.wait_for(host.stdout.readline(), 20)
        finally:
            await peer.close()
            host.kill()
            _, err = await host.communicate()
        for out in (raw, paired, got, err):
            assert_terminal_safe(out)
        if json_mode:
            ev = json.loads(got)
            assert ev["event"] == "message" and ev["text"] == payload.decode("utf-8", "replace")
            assert got.isascii()
        else:
            shown = got.decode()
            assert shown.endswith("\n") and shown.count("\n") == 1
            assert shown.startswith("bob") and "\\x1b]0;pwned\\x07" in shown
            assert "\\x0d\\x0aforged" in shown and shown.startswith("bob\\u200bx: ")
            assert "\ufffd" in shown  # invalid UTF-8 shown as the replacement character
            assert b"paired with bob" in paired


# ------------------------------------------------------------------------------------------
# the SAS question on a terminal (each CLI process on its own pseudo-terminal)


class PtyProc:
    """A CLI process whose stdin, stdout and stderr are one pseudo-terminal."""

    def __init__(self, *args: str) -> None:
        import fcntl
        import pty
        import struct
        import termios
        import threading

        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 400, 0, 0))  # no wrapping
        self.proc = subprocess.Popen(
            [*CLI, *args], stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        os.close(slave)
        self.master = master
        self.buf = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 4096)
            except OSError:  # EIO: the child side closed
                return
            if not data:
                return
            with self._lock:
                self.buf += data

    @property
    def output(self) -> bytes:
        with self._lock:
            return bytes(self.buf)

    async def expect(self, pattern: bytes, timeout: float = 30) -> re.Match[bytes]:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            m = re.search(pattern, self.output)
            if m:
                return m
            if loop.time() > end or self.proc.poll() is not None and not re.search(pattern, self.output):
                if self.proc.poll() is not None:
                    await asyncio.sleep(0.2)  # the last output may still be in flight
                    m = re.search(pattern, self.output)
                    if m:
                        return m
                raise AssertionError(f"{pattern!r} not seen; output: {self.output!r}")
            await asyncio.sleep(0.05)

    def type(self, text: bytes) -> None:
        os.write(self.master, text)

    async def wait(self, timeout: float = 30) -> int:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self.proc.poll() is None:
            if loop.time() > end:
                raise AssertionError(f"still running; output: {self.output!r}")
            await asyncio.sleep(0.05)
        self._reader.join(5)
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        os.close(self.master)


CODE_RE = rb"([a-z]+(?:-[a-z]+){2,}\.[a-z2-7]{26}\.[!-~]+)"
QUESTION_RE = rb"Do both screens show (\d{3} \d{3})\? \[y/N\] "


async def devices(data_dir: Path) -> list[Any]:
    rc, out, err = await run("--data-dir", str(data_dir), "--local", "--json", "devices")
    assert rc == 0, err
    return list(json.loads(out))


async def host_and_join(tmp_path: Path, *extra: str) -> tuple[PtyProc, PtyProc]:
    host = PtyProc("--data-dir", str(tmp_path / "h"), "--local", "--name", "alice", "host", *extra)
    try:
        code = (await host.expect(CODE_RE)).group(1).decode()
        joiner = PtyProc("--data-dir", str(tmp_path / "j"), "--local", "--name", "bob", "join", code, *extra)
    except BaseException:
        host.close()
        raise
    return host, joiner


async def both_asked(host: PtyProc, joiner: PtyProc) -> str:
    sas_h = (await host.expect(QUESTION_RE)).group(1)
    sas_j = (await joiner.expect(QUESTION_RE)).group(1)
    assert sas_h == sas_j
    assert b"pairing with bob (" in host.output  # the host knows the joiner's name by then
    return sas_h.decode()


async def test_sas_question_on_both_terminals_yes_pairs(tmp_path: Path) -> None:
    host, joiner = await host_and_join(tmp_path)
    try:
        sas = await both_asked(host, joiner)
        host.type(b"y\n")
        joiner.type(b"y\n")
        assert await joiner.wait() == 0, joiner.output
        assert await host.wait() == 0, host.output
    finally:
        host.close()
        joiner.close()
    for p in (host, joiner):
        assert f"SAS {sas} confirmed on this device".encode() in p.output
        assert_terminal_safe(p.output, allow=b"\n\r")
    assert [d["name"] for d in await devices(tmp_path / "h")] == ["bob"]
    assert [d["name"] for d in await devices(tmp_path / "j")] == ["alice"]


@pytest.mark.parametrize("decliner", ["joiner", "host"])
async def test_sas_declined_on_one_terminal_fails_both_and_stores_nothing(
    tmp_path: Path, decliner: str
) -> None:
    host, joiner = await host_and_join(tmp_path)
    try:
        await both_asked(host, joiner)
        no, yes = (joiner, host) if decliner == "joiner" else (host, joiner)
        if decliner == "joiner":
            yes.type(b"y\n")  # the host approves first, then the joiner declines
            await yes.expect(rb"waiting for the other device to confirm")
        no.type(b"n\n")
        assert await no.wait() == 1, no.output
        assert await yes.wait() == 3, yes.output
    finally:
        host.close()
        joiner.close()
    assert b"not paired: the SAS was not confirmed on this device; nothing was stored" in no.output
    if decliner == "host":
        assert b"the other device did not confirm the SAS (SAS_DECLINED)" in yes.output
    else:  # the host CLI learns it from the ended code, or first from its watch of the offer
        assert (b"the other device did not confirm the SAS (SAS_DECLINED)" in yes.output
                or b"the other device did not complete the pairing" in yes.output), yes.output
    assert b"paired with" not in host.output + joiner.output
    assert await devices(tmp_path / "h") == [] and await devices(tmp_path / "j") == []


async def test_yes_pairs_without_asking_on_a_terminal(tmp_path: Path) -> None:
    host, joiner = await host_and_join(tmp_path, "--yes")
    try:
        assert await joiner.wait() == 0, joiner.output
        assert await host.wait() == 0, host.output
    finally:
        host.close()
        joiner.close()
    for p in (host, joiner):
        assert b"Do both screens show" not in p.output
        assert re.search(rb"check that both screens show: \d{6}", p.output), p.output
    assert len(await devices(tmp_path / "h")) == 1 and len(await devices(tmp_path / "j")) == 1


async def test_sas_question_shows_a_hostile_peer_name_harmlessly(tmp_path: Path) -> None:
    """The host's question names the joiner from its (sealed, but peer-chosen) device info."""
    from helpers import open_local_node
    from iroh_pair.errors import PairingFailed
    from iroh_pair.protocol import DeviceInfo, RejectCode

    host = PtyProc("--data-dir", str(tmp_path / "h"), "--local", "host")
    peer = await open_local_node(tmp_path / "b", "bob")
    peer.info = DeviceInfo(name="mallory\u202egnp.exe\u2066\u200b\u2028", device_type="phone")
    try:
        code = (await host.expect(CODE_RE)).group(1).decode()
        joining = asyncio.ensure_future(peer.join(code, timeout=20))
        await host.expect(QUESTION_RE)
        host.type(b"n\n")
        with pytest.raises(PairingFailed) as e:
            await asyncio.wait_for(joining, 20)
        assert e.value.code == RejectCode.SAS_DECLINED and e.value.by_peer
        assert await host.wait() == 1
    finally:
        await peer.close()
        host.close()
    assert_terminal_safe(host.output, allow=b"\n\r")
    assert b"pairing with mallory\\u202egnp.exe\\u2066\\u200b\\u2028 (" in host.output


@pytest.mark.parametrize("silent", ["joiner", "host"])
async def test_typed_ahead_answer_is_discarded_and_no_answer_declines(
    tmp_path: Path, silent: str
) -> None:
    """A "y" typed before the question appeared does not answer it (the question discards
    pending input), and no answer within --confirm-timeout declines: nothing stored."""
    t_host = ["--confirm-timeout", "2"] if silent == "host" else []
    t_join = ["--confirm-timeout", "2"] if silent == "joiner" else []
    host = PtyProc("--data-dir", str(tmp_path / "h"), "--local", "--name", "alice", "host", *t_host)
    try:
        code = (await host.expect(CODE_RE)).group(1).decode()
        joiner = PtyProc("--data-dir", str(tmp_path / "j"), "--local", "--name", "bob", "join", code,
                         *t_join)
        try:
            quiet, other = (joiner, host) if silent == "joiner" else (host, joiner)
            quiet.type(b"y\n")  # before the question: the joiner is still starting, the
            # host has not been reached yet
            await both_asked(host, joiner)
            other.type(b"y\n")
            assert await quiet.wait() == 1, quiet.output
            assert await other.wait() == 3, other.output
        finally:
            joiner.close()
    finally:
        host.close()
    assert b"not paired: no answer to the SAS question within 2 s; nothing was stored" in quiet.output
    assert b"paired with" not in host.output + joiner.output
    assert await devices(tmp_path / "h") == [] and await devices(tmp_path / "j") == []


def test_log_lines_are_sanitised() -> None:
    """The CLI's log handler: a log message quoting peer text cannot reach the terminal raw."""
    import io
    import logging

    from iroh_pair.cli import SafeFormatter

    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(SafeFormatter("%(levelname)s: %(message)s"))
    logger = logging.getLogger("iroh_pair.test_cli_safe_formatter")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("peer %s said %r", "ev\x1b[2Jil\u202e", EVIL)
        try:
            raise ValueError("boom\x1b]0;x\x07")
        except ValueError:
            logger.exception("failed for %s", "\x9bpeer")
    finally:
        logger.removeHandler(handler)
    out = buf.getvalue().encode()
    assert_terminal_safe(out)
    assert b"ev\\x1b[2Jil\\u202e" in out and b"Traceback" in out and b"boom\\x1b]0;x\\x07" in out
