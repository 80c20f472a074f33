"""Helpers shared by the test modules (importable as `helpers`: tests/ is on sys.path)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from iroh_pair import Node
    from iroh_pair.transport import Connection

ROOT = Path(__file__).resolve().parent.parent
ALPN = b"iroh-pair-test/1"


def node_binary() -> Path | None:
    """The plain-Rust peer (rust/node), if built: $IROH_PAIR_NODE, then target/release, debug."""
    env = os.environ.get("IROH_PAIR_NODE")
    if env:
        return Path(env)
    for profile in ("release", "debug"):
        p = ROOT / "target" / profile / "iroh-pair-node"
        if p.exists():
            return p
    found = shutil.which("iroh-pair-node")
    return Path(found) if found else None



async def open_local_node(path: Path, name: str, **tuning: Any) -> Node:
    """A Node in ``path`` reachable on loopback only; ``tuning``: ``Node.open``'s tuning
    parameters (``dial_timeout=...``)."""
    from iroh_pair import NetworkOptions, Node

    return await Node.open(path, name=name, options=NetworkOptions.loopback(), **tuning)


def need_server_binaries() -> None:
    """Skips (fails in CI) unless the relay and the lookup server can be started: their own
    binaries, or the one ``iroh-pair-servers`` holding both (``LocalServers`` finds either)."""
    from iroh_pair.testing import DNS_BIN, RELAY_BIN, server_command

    missing = [n for n in (RELAY_BIN, DNS_BIN) if server_command(n) is None]
    if missing:
        skip_or_fail(f"not built: {missing} (cargo build --release -p iroh-pair-relay -p iroh-pair-dns)")


def skip_or_fail(reason: str) -> None:
    """Skips, or fails under ``IROH_PAIR_REQUIRE_ALL`` (CI), where a missing piece is a defect."""
    import pytest

    if os.environ.get("IROH_PAIR_REQUIRE_ALL"):
        pytest.fail(reason)
    pytest.skip(reason)


def interfaces() -> list[str]:
    """The network interfaces of this process's namespace (/proc/net/dev is per namespace)."""
    lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    return [line.split(":", 1)[0].strip() for line in lines]


def rerun_in_netns(module: Path, marker_env: str, setup: str, timeout: float = 540) -> None:
    """Re-runs the tests of ``module`` (except ``test_in_network_namespace``) under
    ``unshare --net`` after the shell commands ``setup``, with ``marker_env=1``; fails unless the
    inner run passed with no skip. Its output is printed (pytest ``-s`` shows it)."""
    import signal
    import subprocess
    import sys

    import pytest

    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if not unshare or not ip:
        skip_or_fail("needs unshare (util-linux) and ip (iproute2)")
    assert unshare is not None
    probe = subprocess.run([unshare, "--net", "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        skip_or_fail(f"cannot create a network namespace (needs root/CAP_SYS_ADMIN): {probe.stderr.strip()}")
    env = dict(os.environ)  # the same interpreter and package as this run (the installed wheel in CI)
    script = (
        f'{setup} && {marker_env}=1 exec "$0" -m pytest "$1" -p no:cacheprovider -q -s -rs '
        '-k "not test_in_network_namespace"'
    )
    cmd = [unshare, "--net", "sh", "-c", script, sys.executable, str(module.resolve())]
    # A session of its own, so that on a timeout the whole tree (pytest and whatever it
    # started) is killed, not just the first process.
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        print(out)
        pytest.fail(f"the tests inside the namespace did not finish within {timeout:g} s")
    print(out)
    print(err, file=sys.stderr)
    assert p.returncode == 0, f"tests inside the network namespace failed (exit {p.returncode}):\n{out[-6000:]}"
    summary = out.strip().splitlines()[-1]
    # an inner skip means a missing piece: it must not pass silently
    assert " passed" in summary and "skipped" not in summary and "deselected" in summary, summary


def lab_events(lines: list[dict[str, Any]], src: str, event: str) -> list[dict[str, Any]]:
    """The JSON lines of the lab harness from ``src`` with this ``event``."""
    return [x for x in lines if x.get("src") == src and x.get("event") == event]


def show(tag: str, title: str, **numbers: Any) -> None:
    """Prints a test's key numbers on one line (``pytest -s`` shows them)."""
    print(f"\n[{tag}] {title}: " + ", ".join(f"{k}={v}" for k, v in numbers.items()))


async def socket_read_during_flood(conn: Connection, message: bytes) -> tuple[bytes, int]:
    """Floods ``conn`` with requests (its peer echoes them); meanwhile a timer sends ``message``
    on a socketpair and the loop reads it. Returns (what was read, requests made). A loop that
    starves its timers or other fds fails here after 10 s, not at CI's limit."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    async def flood() -> int:
        n = 0
        while not stop.is_set():
            await conn.request(b"ping", timeout=5)
            n += 1
        return n

    flooding = asyncio.ensure_future(flood())
    left, right = socket.socketpair()
    left.setblocking(False)
    right.setblocking(False)
    try:
        async with asyncio.timeout(10):
            await asyncio.sleep(0.05)
            loop.call_later(0.02, right.send, message)
            got = await loop.sock_recv(left, 16)
            await asyncio.sleep(0.02)
        stop.set()
        return got, await flooding
    finally:
        stop.set()
        left.close()
        right.close()
