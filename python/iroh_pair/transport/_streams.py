"""The two halves of a QUIC stream: :class:`SendStream` and :class:`RecvStream`.

Each awaitable starts one native operation through the loop's bridge; cancelling it aborts the
operation, and a write cancelled midway resets the stream (``StreamErrorCode.CANCELLED``), so
the peer never sees a truncated message as complete. Example::

    send, recv = await conn.open_bi()
    await send.write_frame(b"hello")
    send.finish()
    reply = await recv.read_frame(max_len=1 << 20)
"""

from __future__ import annotations

from typing import Union

from iroh_pair import _native
from iroh_pair._native import Chunk
from iroh_pair.runtime._bridge import call

__all__ = ["Data", "SendStream", "RecvStream"]

#: What the write methods take. A :class:`Chunk` (Rust-owned bytes: see
#: :meth:`RecvStream.read_chunks`) is written without a copy; anything else is copied once.
Data = Union[bytes, bytearray, memoryview, Chunk]


class SendStream:
    """The sending half of a QUIC stream. Finish it when done: a stream dropped unfinished is
    reset with ``StreamErrorCode.DROPPED``."""

    __slots__ = ("_n",)

    def __init__(self, native: _native.SendStream) -> None:
        self._n = native

    @property
    def id(self) -> int:
        """The stream's index within its connection."""
        return self._n.id

    async def write(self, data: Data) -> int:
        """Writes some of ``data``; returns how many bytes were accepted."""
        n: int = await call(self._n.write, data)
        return n

    async def write_all(self, data: Data) -> None:
        """Writes all of ``data``."""
        await call(self._n.write_all, data)

    async def write_frame(self, data: Data) -> None:
        """Writes ``data`` as one frame (u32 big-endian length, then the bytes)."""
        await call(self._n.write_frame, data)

    def finish(self) -> None:
        """Ends the stream; the peer reads what was written, then the end."""
        self._n.finish()

    def reset(self, code: int) -> None:
        """Abandons the stream; the peer's reads fail with ``StreamReset(code)``."""
        self._n.reset(code)

    async def stopped(self) -> int | None:
        """Waits until the peer received everything (``None``) or stopped the stream (its code)."""
        r: int | None = await call(self._n.stopped)
        return r

    def __repr__(self) -> str:
        return f"<SendStream id={self.id}>"


class RecvStream:
    """The receiving half of a QUIC stream."""

    __slots__ = ("_n",)

    def __init__(self, native: _native.RecvStream) -> None:
        self._n = native

    @property
    def id(self) -> int:
        """The stream's index within its connection."""
        return self._n.id

    async def read(self, n: int = 65536) -> bytes:
        """Up to ``n`` bytes as soon as any are available; ``b""`` at the end of the stream.

        For bulk data of a known size prefer :meth:`read_exact` in large blocks (1 MiB): it
        waits natively for the whole block, one wake-up of the loop per block instead of one
        per burst of packets (on 2 cores, ~300 against ~250 MiB/s)."""
        r: bytes = await call(self._n.read, n)
        return r

    async def read_chunks(self, n: int = 1 << 20) -> list[Chunk]:
        """Up to ``n`` bytes, as the :class:`Chunk` objects iroh received (one per packet,
        about 1.2 KB each), without copying them; ``[]`` at the end of the stream. A chunk is
        read-only bytes-like (``len``, ``bytes()``, ``memoryview()``, ``hashlib``,
        ``file.write``); writing it to another stream does not copy it either."""
        r: list[Chunk] = await call(self._n.read_chunks, n)
        return r

    async def read_exact(self, n: int) -> bytes:
        """Exactly ``n`` bytes; raises :class:`~iroh_pair.errors.TruncatedFrame` if the stream
        ends first."""
        r: bytes = await call(self._n.read_exact, n)
        return r

    async def read_to_end(self, limit: int) -> bytes:
        """Everything up to the end; raises :class:`~iroh_pair.errors.FrameTooLarge` past
        ``limit`` bytes."""
        r: bytes = await call(self._n.read_to_end, limit)
        return r

    async def read_frame(self, max_len: int) -> bytes | None:
        """One frame, or ``None`` at a clean end of stream. A length prefix over ``max_len``
        raises :class:`~iroh_pair.errors.FrameTooLarge` before anything is allocated."""
        r: bytes | None = await call(self._n.read_frame, max_len)
        return r

    def stop(self, code: int) -> None:
        """Asks the peer to stop sending, with ``code``."""
        self._n.stop(code)

    def __repr__(self) -> str:
        return f"<RecvStream id={self.id}>"
