"""``iroh-pair send-file`` and receiving files in ``iroh-pair listen``: real processes, real
nodes, found through the local relay and lookup servers on 127.0.0.1 (as tests/test_control.py
pairs them)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from test_control import CLI, ENV, event, run, stop, two_devices


async def start_in(cwd: Path, *args: str) -> asyncio.subprocess.Process:
    """The command in ``cwd``, stdin a pipe (not a terminal)."""
    return await asyncio.create_subprocess_exec(
        *CLI, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=ENV, cwd=cwd)


def make_file(path: Path, size: int) -> str:
    """A file of ``size`` pseudo-random bytes; its SHA-256."""
    h = hashlib.sha256()
    block = os.urandom(1 << 20)
    with path.open("wb") as f:
        left = size
        while left:
            chunk = block[: min(left, len(block))]
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
            block = hashlib.sha256(block[:64]).digest() * (len(block) // 32)  # differs per MiB
    return h.hexdigest()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def json_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


def check_progress(lines: list[dict[str, Any]], name: str, size: int) -> list[int]:
    """The progress lines of one file: done never goes down, total is the size, the last one
    is complete; returns the done values."""
    progress = [e for e in lines if e["event"] == "progress"]
    assert progress, lines
    assert all(e["name"] == name and e["total"] == size for e in progress), progress
    done = [e["done"] for e in progress]
    assert done == sorted(done) and done[-1] == size, done
    assert all(isinstance(e["rate"], (int, float)) and e["rate"] >= 0 for e in progress)
    return done


@pytest.mark.slow
async def test_send_file_standalone_to_listen_accept_files(tmp_path: Path) -> None:
    """alice's send-file runs her node itself; bob's listen stores every offer in its
    --accept-files directory: the file arrives byte-identical, the JSON progress rises to the
    size; an unknown device and an unreachable one fail with one line and their exit codes."""
    async with two_devices(tmp_path) as (a, b):
        inbox = tmp_path / "inbox"
        inbox.mkdir()
        size = 96 << 20
        src = tmp_path / "video.bin"
        digest = make_file(src, size)
        (inbox / "video.bin").write_bytes(b"already here")  # never overwritten
        bob = await start_in(tmp_path, "--data-dir", str(b), "--json", "listen",
                             "--accept-files", str(inbox))
        try:
            assert (await event(bob))["event"] == "listening"
            rc, out, err = await run("--data-dir", str(a), "--json", "send-file", "bob", str(src),
                                     timeout=300)
            assert rc == 0, err
            lines = json_lines(out)
            done = check_progress(lines, "video.bin", size)
            assert len(done) >= 2, done  # progress while it moved, then the final line
            sent = lines[-1]
            assert sent["event"] == "sent" and sent["name"] == "video.bin" and sent["size"] == size
            assert sent["stored_as"] == "video (2).bin", sent
            assert len(sent["hash"]) == 64
            got = await event(bob, 60)
            assert got["event"] == "file" and got["name"] == "alice", got
            assert got["file"] == "video (2).bin" and got["size"] == size
            assert got["hash"] == sent["hash"] and got["from"] != sent["to"]
            assert Path(got["path"]) == inbox / "video (2).bin"
            assert sha256(inbox / "video (2).bin") == digest
            assert (inbox / "video.bin").read_bytes() == b"already here"
            assert sorted(p.name for p in inbox.iterdir()) == ["video (2).bin", "video.bin"]
            # the plain output: one line on stderr, nothing on stdout (stderr is no terminal:
            # no bar)
            small = tmp_path / "note.txt"
            small.write_bytes(b"hello file\n")
            rc, out, err = await run("--data-dir", str(a), "send-file", "bob", str(small))
            assert rc == 0, err
            assert out == "" and err == "sent note.txt (11 B) to bob\n", err
            got = await event(bob, 60)
            assert got["file"] == "note.txt" and (inbox / "note.txt").read_bytes() == b"hello file\n"
            # an unknown device: one line, exit 1, nothing sent
            rc, out, err = await run("--data-dir", str(a), "send-file", "nobody", str(small))
            assert (rc, out, err) == (1, "", "iroh-pair: no paired device matches nobody\n")
            # the receiver cannot store it (its directory is gone): exit 6, nothing stored
            inbox.rename(tmp_path / "inbox.away")
            rc, out, err = await run("--data-dir", str(a), "send-file", "bob", str(small))
            assert rc == 6 and err == ("iroh-pair: not sent: bob could not receive 'note.txt': "
                                       "the receiver's destination is not a directory\n"), (rc, err)
            assert not inbox.exists()
            (tmp_path / "inbox.away").rename(inbox)
        finally:
            await stop(bob)
        # bob is gone: the device cannot be reached, exit 4 (timed out)
        rc, out, err = await run("--data-dir", str(a), "send-file", "bob", str(small),
                                 "--connect-timeout", "3", timeout=60)
        assert rc == 4 and err == "iroh-pair: timed out: could not reach bob within 3 s\n", (rc, err)
        assert sorted(p.name for p in inbox.iterdir()) == ["note.txt", "video (2).bin", "video.bin"]


@pytest.mark.slow
async def test_send_file_through_a_running_listen_and_a_declined_offer(tmp_path: Path) -> None:
    """alice's data directory is held by her running listen: send-file goes through its
    control socket, with the same JSON output. bob listens without --accept-files and without
    a terminal: the offer is declined (exit 5, one line, the reason logged on bob's side) and
    no file is written; then bob's daemon with --accept-files takes it."""
    async with two_devices(tmp_path) as (a, b):
        size = 96 << 20
        src = tmp_path / "data.bin"
        digest = make_file(src, size)
        bob_cwd = tmp_path / "bobcwd"
        bob_cwd.mkdir()
        alice = await start_in(tmp_path, "--data-dir", str(a), "--json", "listen")
        bob = await start_in(bob_cwd, "--data-dir", str(b), "--json", "listen")
        daemon = None
        try:
            assert (await event(alice))["event"] == "listening"
            assert (await event(bob))["event"] == "listening"
            # declined: no --accept-files, stdin is a pipe
            rc, out, err = await run("--data-dir", str(a), "--json", "send-file", "bob", str(src),
                                     timeout=120)
            assert rc == 5, (rc, err)
            assert err.count("\n") == 1 and err.startswith("iroh-pair: not sent: bob declined 'data.bin'"), err
            assert out == ""  # no progress line: nothing moved
            assert list(bob_cwd.iterdir()) == []
            await stop(bob)
            assert bob.stderr is not None
            bob_err = (await bob.stderr.read()).decode()
            assert "declined data.bin (96.0 MiB) from alice: no --accept-files, and no terminal" in bob_err
            # bob's daemon stores it; alice's send-file still goes through her listen's socket
            inbox = tmp_path / "inbox"
            inbox.mkdir()
            daemon = await start_in(tmp_path, "--data-dir", str(b), "--json", "daemon",
                                    "--accept-files", str(inbox))
            assert (await event(daemon))["event"] == "running"
            rc, out, err = await run("--data-dir", str(a), "--json", "send-file", "bob", str(src),
                                     timeout=300)
            assert rc == 0, err
            lines = json_lines(out)
            done = check_progress(lines, "data.bin", size)
            assert len(done) >= 2, done  # relayed while it moved, then the final line
            sent = lines[-1]
            assert sent["event"] == "sent" and sent["size"] == size and sent["stored_as"] == "data.bin"
            got = await event(daemon, 60)
            assert got["event"] == "file" and got["hash"] == sent["hash"], got
            assert sha256(inbox / "data.bin") == digest
            empty = tmp_path / "empty"
            empty.touch()
            rc, out, err = await run("--data-dir", str(a), "--json", "send-file", "bob", str(empty))
            assert rc == 0, err
            assert [(e["event"], e.get("done"), e["size"] if "size" in e else e["total"])
                    for e in json_lines(out)] == [("progress", 0, 0), ("sent", None, 0)]
            got = await event(daemon, 60)
            assert (got["file"], got["size"]) == ("empty", 0) and (inbox / "empty").read_bytes() == b""
            # through the socket, the errors keep their lines and exit codes
            rc, out, err = await run("--data-dir", str(a), "send-file", "nobody", str(src))
            assert (rc, err) == (1, "iroh-pair: no paired device matches nobody\n")
            assert alice.returncode is None  # that all went through alice's listen
        finally:
            await stop(daemon)
            await stop(bob)
            await stop(alice)


@pytest.mark.slow
async def test_listen_asks_on_a_terminal(tmp_path: Path) -> None:
    """bob's listen runs on a terminal without --accept-files: each offer is a question;
    "y" stores it in --files-dir (with its bar and line), "n" declines it (exit 5 for alice)."""
    from test_cli import PtyProc

    async with two_devices(tmp_path) as (a, b):
        files = tmp_path / "files"
        files.mkdir()
        src = tmp_path / "a.txt"
        src.write_bytes(b"hello")
        bob = PtyProc("--data-dir", str(b), "listen", "--files-dir", str(files))
        try:
            await bob.expect(rb"listening as", 60)
            for answer, rc_expected in ((b"y\n", 0), (b"n\n", 5)):
                alice = await start_in(tmp_path, "--data-dir", str(a), "send-file", "bob", str(src))
                question = re.escape(f"alice offers a.txt (5 B). Accept into {files}? [y/N] ".encode())
                await bob.expect(question + (rb"(?:.|\n)*" + question if answer == b"n\n" else b""), 60)
                bob.type(answer)
                _, err = await asyncio.wait_for(alice.communicate(), 60)
                assert alice.returncode == rc_expected, err
            await bob.expect(rb"alice: received a.txt \(5 B\) in " + re.escape(str(files).encode()))
            assert b"100%|" in bob.output  # its bar
            assert sorted(p.name for p in files.iterdir()) == ["a.txt"]
            assert (files / "a.txt").read_bytes() == b"hello"
            assert err.decode() == "iroh-pair: not sent: bob declined 'a.txt': declined by the receiver\n"
            assert b"declined a.txt (5 B) from alice: not accepted on this terminal" in bob.output
        finally:
            bob.close()


@pytest.mark.slow
async def test_send_file_with_a_directory(tmp_path: Path) -> None:
    """A directory PATH is passed to ``Node.send_file``: where the node sends directories the
    tree arrives whole (files compared, the empty directory kept); where it does not yet, the
    command says so in one line (exit 1) and nothing arrives."""
    from iroh_pair import FileOffer

    sends_dirs = hasattr(FileOffer, "is_directory")
    async with two_devices(tmp_path) as (a, b):
        tree = tmp_path / "album"
        (tree / "sub").mkdir(parents=True)
        (tree / "empty").mkdir()
        (tree / "a.txt").write_bytes(b"alpha\n")
        digest = make_file(tree / "sub" / "b.bin", 3 << 20)
        size = 6 + (3 << 20)
        inbox = tmp_path / "inbox"
        inbox.mkdir()
        bob = await start_in(tmp_path, "--data-dir", str(b), "--json", "listen",
                             "--accept-files", str(inbox))
        try:
            assert (await event(bob))["event"] == "listening"
            rc, out, err = await run("--data-dir", str(a), "--json", "send-file", "bob", str(tree),
                                     timeout=120)
            if not sends_dirs:
                assert (rc, out) == (1, "") and err == (
                    f"iroh-pair: {tree} is a directory: this version of iroh-pair sends single "
                    "files only\n"), err
                assert list(inbox.iterdir()) == []
                return
            assert rc == 0, err
            lines = json_lines(out)
            check_progress(lines, "album", size)
            assert lines[-1]["event"] == "sent" and lines[-1]["size"] == size
            assert lines[-1]["stored_as"] == "album"
            got = await event(bob, 60)
            assert got["event"] == "file" and got["directory"] is True, got
            assert (got["file"], got["size"], Path(got["path"])) == ("album", size, inbox / "album")
            assert (inbox / "album" / "a.txt").read_bytes() == b"alpha\n"
            assert sha256(inbox / "album" / "sub" / "b.bin") == digest
            assert (inbox / "album" / "empty").is_dir()
            assert sorted(p.name for p in inbox.iterdir()) == ["album"]
        finally:
            await stop(bob)


async def test_a_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    rc, out, err = await run("--data-dir", str(tmp_path / "a"), "--local", "send-file", "bob",
                             str(tmp_path / "missing.bin"))
    assert (rc, out) == (2, "")
    assert err == f"iroh-pair: send-file: {tmp_path / 'missing.bin'}: no such file or directory\n"
    assert not (tmp_path / "a").exists()  # checked before the node opens


async def test_accept_files_must_be_a_directory(tmp_path: Path) -> None:
    rc, out, err = await run("--data-dir", str(tmp_path / "a"), "--local", "listen",
                             "--accept-files", str(tmp_path / "nope"))
    assert rc == 2 and err == f"iroh-pair: --accept-files {tmp_path / 'nope'}: not a directory\n"


def test_json_progress_is_throttled_monotonic_and_ends_at_the_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from iroh_pair import cli

    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    clock = [100.0]
    monkeypatch.setattr("iroh_pair.cli.time.monotonic", lambda: clock[0])
    view = cli.FileView("a.bin", 1000, as_json=True, bar=True)  # no bar with --json
    assert view.bar is None
    for t, done in ((-1.0, 0), (0.0, 10), (0.1, 200), (0.3, 150), (0.6, 600), (0.7, 900)):
        clock[0] = 100.0 + t
        view.update(done, 1000, 1.0)
    view.finish(1000, 2.0)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [e["done"] for e in lines] == [10, 200, 600, 1000]  # 150 < 200: kept at 200
    assert all(e["total"] == 1000 and e["name"] == "a.bin" for e in lines)
    assert cli.human_size(268435456) == "256.0 MiB" and cli.human_size(11) == "11 B"
