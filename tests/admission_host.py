"""A pairing host Node in a child process, driven over stdin/stdout (JSON lines), for the
admission and Hello-flood tests: its memory (VmRSS) and CPU time are the host's alone, not the
attackers'.

Run as a script: ``python tests/admission_host.py DATA_DIR``; it prints ``{"ready": ...}``, then
answers one JSON line per command line:

* ``{"op": "host", "ttl": 300}`` -> ``{"code": "...", "tag": "<hex>", "index": i}``
* ``{"op": "wait", "index": i, "timeout": t}`` -> ``{"device": name}`` or ``{"error": "..."}``
* ``{"op": "stats"}`` -> the node's counters, unknown slots in use, each offer's attempts and
  the spy's counts
* ``{"op": "cpu"}`` -> ``{"cpu": process CPU seconds}``
* ``{"op": "hello_rate", "rate": r, "burst": b}`` -> sets the Hello token bucket of offers made
  afterwards (module constants of :mod:`iroh_pair.protocol.offer`)
* ``{"op": "quit"}``

The host answers every ``msg`` request with its bytes (echo). The SPAKE2 work of the host's
state machine is counted (``stats``: ``spake_starts``, ``spake_finishes``, ``spake_checks``
(point checks before any SPAKE2 work); ``hello_seconds``, the
time spent in ``HostHandshake.receive`` on Hellos): a spy, not a mock, the real code runs.

:class:`HostProcess` is the test side's client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def vm_kib(pid: int, field: str = "VmRSS") -> int:
    """``VmRSS`` (or another ``Vm*`` field) of process ``pid`` in KiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


_P = 2**255 - 19
_D = (-121665 * pow(121666, _P - 2, _P)) % _P


def invalid_points(n: int, start: int = 2) -> list[bytes]:
    """``n`` distinct 32-byte encodings that are not Ed25519 points: ``y`` whose ``x^2 =
    (y^2 - 1) / (d y^2 + 1)`` has no square root mod p (decompression fails)."""
    out: list[bytes] = []
    y = start
    while len(out) < n:
        u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
        x2 = u * pow(v, _P - 2, _P) % _P
        if x2 and pow(x2, (_P - 1) // 2, _P) == _P - 1:
            out.append(y.to_bytes(32, "little"))
        y += 1
    return out


def hello_frame(tag: bytes, joiner_id: bytes, point: bytes) -> bytes:
    """The first frame body of a ``pair2`` stream: envelope header and a Hello with ``point``
    as its SPAKE2 element (side ``A``) and a random commitment."""
    from iroh_pair.protocol import PAIR_KIND, encode_header, wire

    hello = wire.Hello(tag, joiner_id, bytes([wire.SIDE_A]) + point, os.urandom(32))
    return encode_header(PAIR_KIND) + wire.encode(hello)


class HostProcess:
    """The test side: starts the child and sends it commands (every wait has a timeout)."""

    def __init__(self, proc: asyncio.subprocess.Process, ready: dict[str, Any]) -> None:
        self.proc = proc
        self.ready = ready

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    async def start(cls, data_dir: Path, timeout: float = 30.0) -> HostProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE / "admission_host.py"), str(data_dir),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env=dict(os.environ),
        )
        self = cls(proc, {})
        self.ready = await self._line(timeout)
        return self

    async def _line(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"the host process ended (exit {await self.proc.wait()})")
        out: dict[str, Any] = json.loads(line)
        return out

    async def call(self, op: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"op": op, **args}) + "\n").encode())
        await self.proc.stdin.drain()
        return await self._line(timeout)

    def rss_kib(self) -> int:
        return vm_kib(self.pid)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            try:
                await self.call("quit", timeout=10)
            except (RuntimeError, TimeoutError, ConnectionError, json.JSONDecodeError):
                pass
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


# ---------------------------------------------------------------------------------- child


class _Spy:
    """Counts the host state machine's SPAKE2 work and times its Hello handling."""

    spake_starts = 0
    spake_finishes = 0
    spake_checks = 0
    hellos = 0
    hello_seconds = 0.0


def _install_spy() -> None:
    from iroh_pair.protocol import pairing as machine
    from iroh_pair.protocol import wire

    real: Any = getattr(machine, "Spake2")

    class CountingSpake2:
        """Delegates to the real SPAKE2 and counts calls."""

        def __init__(self, inner: Any) -> None:
            self._inner = inner

        @classmethod
        def start(cls, *args: Any, **kwargs: Any) -> tuple[Any, bytes]:
            _Spy.spake_starts += 1
            inner, msg = real.start(*args, **kwargs)
            return cls(inner), msg

        def finish(self, peer_msg: bytes) -> bytes:
            _Spy.spake_finishes += 1
            key: bytes = self._inner.finish(peer_msg)
            return key

        @staticmethod
        def check(*args: Any, **kwargs: Any) -> Any:
            _Spy.spake_checks += 1
            return real.check(*args, **kwargs)

    for name in dir(real):  # anything else the machine uses, as it is
        if not name.startswith("_") and name not in vars(CountingSpake2):
            setattr(CountingSpake2, name, getattr(real, name))
    setattr(machine, "Spake2", CountingSpake2)
    receive = machine.HostHandshake.receive

    def timed_receive(self: Any, body: bytes, now: float) -> Any:
        is_hello = bool(body) and body[0] == wire.MsgType.HELLO
        t0 = time.perf_counter()
        try:
            return receive(self, body, now)
        finally:
            if is_hello:
                _Spy.hellos += 1
                _Spy.hello_seconds += time.perf_counter() - t0

    machine.HostHandshake.receive = timed_receive  # type: ignore[method-assign]


async def _child(data_dir: Path) -> None:
    sys.path.insert(0, str(HERE))
    from helpers import open_local_node

    from iroh_pair import HostedPairing
    from iroh_pair.protocol import offer as offer_mod

    _install_spy()
    node = await open_local_node(data_dir, "host")
    node.on_message(lambda dev, data: data)
    hosted: list[HostedPairing] = []
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def say(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    say({"ready": True, "id": str(node.id), "ticket": node.ticket()})
    try:
        while line := await reader.readline():
            cmd = json.loads(line)
            op = cmd["op"]
            if op == "host":
                h = await node.host_pairing(ttl=float(cmd.get("ttl", 300.0)))
                hosted.append(h)
                say({"code": str(h.code), "tag": h.code.tag.hex(), "index": len(hosted) - 1})
            elif op == "wait":
                try:
                    dev = await hosted[cmd["index"]].wait(float(cmd.get("timeout", 30.0)))
                    say({"device": dev.name})
                except Exception as e:  # reported to the test, which asserts on it
                    say({"error": repr(e)})
            elif op == "stats":
                say({
                    "node": dataclasses.asdict(node.stats().node),
                    "unknown": len(node._unknown),
                    "offers": [
                        {"attempts_used": h.offer.attempts_used, "used": h.offer.used,
                         "done": h.done} for h in hosted
                    ],
                    "spake_starts": _Spy.spake_starts,
                    "spake_finishes": _Spy.spake_finishes,
                    "spake_checks": _Spy.spake_checks,
                    "hellos": _Spy.hellos,
                    "hello_seconds": _Spy.hello_seconds,
                })
            elif op == "cpu":
                say({"cpu": time.process_time()})
            elif op == "hello_rate":
                offer_mod.HELLO_RATE = float(cmd["rate"])
                offer_mod.HELLO_BURST = float(cmd["burst"])
                say({"ok": True})
            elif op == "quit":
                say({"ok": True})
                break
            else:
                say({"error": f"unknown op {op!r}"})
    finally:
        await node.close()


if __name__ == "__main__":
    asyncio.run(_child(Path(sys.argv[1])))
