"""Local servers anyone can start (issue #36), from a user's seat: a clean venv (not the
repository) installs the dist/ wheel with its ``servers`` extra (the companion wheel
``iroh-pair-servers``, one binary holding the relay and the lookup server); then
``iroh-pair servers --write-config`` runs them, and two data directories pair, restart as new
processes, and exchange a message through them, with no network flag on any command.

Nothing of the repository is reachable from the venv's processes: no PYTHONPATH, no
``IROH_PAIR_*_BIN``, a working directory outside the tree, and a PATH of the venv and the
system only; the servers' JSON line shows the binary that ran.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import skip_or_fail

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _wheel(pattern: str) -> Path | None:
    import platform
    found = [w for w in (ROOT / "dist").glob(pattern) if w.name.endswith(f"_{platform.machine()}.whl")]
    return max(found, key=lambda w: w.stat().st_mtime) if found else None


def _env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("IROH_PAIR_") and k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_servers_from_an_installed_package(tmp_path: Path) -> None:
    main, servers_whl = _wheel("iroh_pair-*.whl"), _wheel("iroh_pair_servers-*.whl")
    if main is None or servers_whl is None:
        skip_or_fail(f"no iroh_pair and iroh_pair_servers wheels in {ROOT / 'dist'} (scripts/setup builds them)")
        raise AssertionError("unreachable")
    assert ROOT not in tmp_path.parents
    venv = tmp_path / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    env = _env(venv)
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True, cwd=tmp_path, env=env, timeout=300)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    f"{main}[servers]", str(servers_whl)], check=True, cwd=tmp_path, env=env, timeout=600)
    cli = str(venv / "bin" / "iroh-pair")
    a, b = tmp_path / "a", tmp_path / "b"

    def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([cli, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)

    srv = subprocess.Popen([cli, "--data-dir", str(a), "--json", "servers", "--write-config",
                            "--relay-port", "0", "--lookup-port", "0", "--dns-port", "0"],
                           cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs: list[subprocess.Popen[str]] = [srv]
    try:
        assert srv.stdout is not None
        line = srv.stdout.readline()
        assert line, srv.stderr.read() if srv.stderr else "servers ended"
        ready = json.loads(line)
        binary = str(venv / "bin" / "iroh-pair-servers")
        assert ready["commands"] == {"relay": [binary, "relay"], "dns": [binary, "dns"]}, ready
        b.mkdir(mode=0o700)
        shutil.copy(a / "config.toml", b / "config.toml")
        host = subprocess.Popen([cli, "--data-dir", str(a), "--name", "alice", "--json", "host", "--yes", "--no-qr"],
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(host)
        assert host.stdout is not None
        code = json.loads(host.stdout.readline())
        assert code["event"] == "code", code
        joined = run("--data-dir", str(b), "--name", "bob", "--json", "join", code["code"], "--yes")
        assert joined.returncode == 0, joined.stderr
        assert host.wait(30) == 0
        # restarted: new processes, found by EndpointId through the servers
        listener = subprocess.Popen([cli, "--data-dir", str(b), "--json", "listen", "--count", "1"],
                                    cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(listener)
        assert listener.stdout is not None
        assert json.loads(listener.stdout.readline())["event"] == "listening"
        sent = run("--data-dir", str(a), "send", "bob", "from an installed package")
        assert sent.returncode == 0, sent.stderr
        got = json.loads(listener.stdout.readline())
        assert got["text"] == "from an installed package", got
        assert listener.wait(30) == 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGINT if p is srv else signal.SIGKILL)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    assert srv.returncode == 0, srv.stderr.read() if srv.stderr else ""
