"""Data directory hygiene: permissions of an existing directory and key file, and the atomic,
durable creation of the key file (issue 31, item 7)."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from helpers import open_local_node
from iroh_pair.store import _identity as identity
from iroh_pair.store import KEY_FILE, ensure_data_dir, load_or_create_secret_key


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.parametrize("initial", [0o755, 0o750, 0o705, 0o777, 0o711], ids=lambda m: f"{m:03o}")
def test_existing_open_directory_is_tightened_with_a_warning(
    tmp_path: Path, initial: int, caplog: pytest.LogCaptureFixture
) -> None:
    d = tmp_path / "data"
    d.mkdir()
    os.chmod(d, initial)
    assert mode(d) == initial
    with caplog.at_level(logging.WARNING, logger="iroh_pair.identity"):
        assert ensure_data_dir(d) == d
    assert mode(d) == 0o700
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(d) in warnings[0].getMessage()
    assert f"{initial:03o}" in warnings[0].getMessage()


def test_private_directory_is_left_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = tmp_path / "data"
    d.mkdir()
    os.chmod(d, 0o700)
    with caplog.at_level(logging.DEBUG, logger="iroh_pair.identity"):
        ensure_data_dir(d)
    assert mode(d) == 0o700 and not caplog.records


def test_new_directory_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        d = ensure_data_dir(tmp_path / "a" / "b")
    finally:
        os.umask(old)
    assert mode(d) == 0o700


async def test_node_open_tightens_an_existing_directory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = tmp_path / "node"
    d.mkdir()
    os.chmod(d, 0o755)
    with caplog.at_level(logging.WARNING, logger="iroh_pair.identity"):
        node = await open_local_node(d, "n")
        await node.close()
    assert mode(d) == 0o700
    assert any("restricted it to 0700" in r.getMessage() for r in caplog.records)


def test_readable_key_file_is_tightened(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    k1 = load_or_create_secret_key(tmp_path)
    kf = tmp_path / KEY_FILE
    os.chmod(kf, 0o644)
    with caplog.at_level(logging.WARNING, logger="iroh_pair.identity"):
        k2 = load_or_create_secret_key(tmp_path)
    assert k2.to_bytes() == k1.to_bytes()
    assert mode(kf) == 0o600
    assert any("restricted it to 0600" in r.getMessage() for r in caplog.records)


def test_key_file_written_atomically_and_durably(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key goes to a temporary file, is fsynced, appears under its name in one step (it is
    never seen partly written), and then the directory is fsynced."""
    d = tmp_path / "node"
    ensure_data_dir(d)
    log: list[tuple[str, str]] = []
    real_fsync, real_link, real_write = os.fsync, os.link, os.write

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        log.append(("fsync", target))
        real_fsync(fd)

    def link(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        # when the name appears, the file behind it is complete
        assert Path(src).read_bytes() and len(Path(src).read_bytes()) == identity.SECRET_KEY_LEN
        assert not Path(dst).exists()
        log.append(("link", f"{Path(src).name}->{Path(dst).name}"))
        real_link(src, dst)

    def write(fd: int, data: bytes) -> int:
        # nothing is ever written under the final name
        assert not os.readlink(f"/proc/self/fd/{fd}").endswith("/" + KEY_FILE)
        return real_write(fd, data)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(os, "write", write)
    key = load_or_create_secret_key(d)
    monkeypatch.undo()
    assert (d / KEY_FILE).read_bytes() == key.to_bytes()
    kinds = [k for k, _ in log]
    # file fsync, then the link into place, then the directory fsync
    assert kinds == ["fsync", "link", "fsync"], log
    assert ".secret.key.tmp-" in log[0][1]
    assert log[1][1].endswith("->" + KEY_FILE)
    assert log[2][1] == str(d)
    assert sorted(p.name for p in d.iterdir()) == [KEY_FILE]  # no temporary file left


def test_crash_before_the_key_is_in_place_leaves_no_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure between writing and linking leaves neither a partial key file nor a temp file,
    and the next start creates the key normally."""
    d = tmp_path / "node"

    def link(src: str, dst: str) -> None:
        raise OSError(5, "simulated I/O error")

    monkeypatch.setattr(os, "link", link)
    with pytest.raises(OSError):
        load_or_create_secret_key(d)
    monkeypatch.undo()
    assert list(d.iterdir()) == []
    key = load_or_create_secret_key(d)
    assert (d / KEY_FILE).read_bytes() == key.to_bytes()
