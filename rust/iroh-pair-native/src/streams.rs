//! `SendStream` and `RecvStream`: the Python classes of a QUIC stream's two halves, whose
//! operations go through the bridge (framing and bounded reads are in `frame`).
//!
//! ```python
//! send, recv = await conn.open_bi()
//! await send.write_frame(b"hello")
//! reply = await recv.read_frame(1 << 20)
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use iroh::endpoint::{RecvStream as IrohRecv, SendStream as IrohSend};
use pyo3::prelude::*;
use tokio::sync::Mutex;

use crate::bridge::Bridge;
use crate::buffers::join_to_py;
use crate::chunk::{Chunk, copy_bytes};
use crate::error::Error;
use crate::frame::{Blocks, SendState, frame_header, read_exact_chunks, read_frame, varint};
use crate::outcome::{Plain, ToPy};

/// Received chunks that become one Python `bytes` on the loop's thread (one copy in all: the
/// chunks are iroh's receive buffers, gathered without copying on the tokio side).
pub struct JoinedOut(pub Vec<Bytes>);

impl ToPy for JoinedOut {
    fn to_py(self: Box<Self>, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(join_to_py(py, &self.0)?.into_any().unbind())
    }
}

/// `None`, or a frame's bytes: `read_frame` at a clean end of stream.
struct OptJoinedOut(Option<Vec<Bytes>>);

impl ToPy for OptJoinedOut {
    fn to_py(self: Box<Self>, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match self.0 {
            Some(chunks) => Box::new(JoinedOut(chunks)).to_py(py),
            None => Ok(py.None()),
        }
    }
}

/// Appends to `chunks` what `recv` already holds, never waiting, until they make `n` bytes.
/// The end of the stream or an error is left for the next read to report.
fn take_ready(recv: &mut IrohRecv, chunks: &mut Vec<Bytes>, n: usize) {
    let mut got: usize = chunks.iter().map(Bytes::len).sum();
    while got < n {
        match crate::runtime::poll_once(recv.read_chunk(n - got)) {
            Some(Ok(Some(chunk))) => {
                got += chunk.len();
                chunks.push(chunk);
            }
            _ => break,
        }
    }
}

/// The result of `read(n)` and `read_chunks(n)`: the first chunk that arrived, then, on the
/// loop's thread when it is converted, every chunk received by then (up to `n` bytes in all).
/// Gathering them there rather than when the first one arrives takes the packets that landed
/// during the hop to the loop too, which saves a whole read each.
struct ChunksOut {
    first: Option<Bytes>,
    recv: Arc<Mutex<IrohRecv>>,
    n: usize,
    /// This read's number, and the stream's count of reads started (see `RecvStream::reads`).
    seq: u64,
    reads: Arc<AtomicU64>,
    /// `read`: joined into one `bytes` (one copy); `read_chunks`: a list of `Chunk` (no copy).
    as_chunks: bool,
}

impl ToPy for ChunksOut {
    fn to_py(self: Box<Self>, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let mut chunks = Vec::new();
        if let Some(first) = self.first {
            chunks.push(first);
            // A later read (concurrent reads) may already hold the chunks that follow: leave them.
            if self.reads.load(Ordering::Relaxed) == self.seq
                && let Ok(mut recv) = self.recv.try_lock()
            {
                take_ready(&mut recv, &mut chunks, self.n);
            }
        } // else the end of the stream: b"" or []
        if !self.as_chunks {
            return Ok(join_to_py(py, &chunks)?.into_any().unbind());
        }
        let list = pyo3::types::PyList::empty(py);
        for c in chunks {
            list.append(Chunk::untracked(py, c)?)?;
        }
        Ok(list.into_any().unbind())
    }
}

/// The sending half of a QUIC stream.
#[pyclass(module = "iroh_pair._native", frozen)]
pub struct SendStream {
    pub inner: Arc<Mutex<SendState>>,
    pub id: u64,
}

impl SendStream {
    pub fn new(s: IrohSend) -> Self {
        let id = s.id().index();
        Self {
            inner: Arc::new(Mutex::new(SendState::new(s))),
            id,
        }
    }

    fn try_state(&self) -> Result<tokio::sync::MutexGuard<'_, SendState>, Error> {
        self.inner
            .try_lock()
            .map_err(|_| Error::StreamClosed("a write on this stream is still in progress".into()))
    }
}

#[pymethods]
impl SendStream {
    /// The stream's index within its connection.
    #[getter]
    fn id(&self) -> u64 {
        self.id
    }

    /// Writes some of `data`; returns how many bytes were accepted.
    fn write(
        &self,
        py: Python<'_>,
        bridge: &Bridge,
        token: u64,
        data: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let data = copy_bytes(data)?;
        let inner = self.inner.clone();
        bridge.submit(py, token, async move {
            let mut st = inner.lock().await;
            let n = st.stream.write(&data).await?;
            Ok(Plain(n))
        })
    }

    /// Writes all of `data`. Cancelled midway, the stream is reset with `STREAM_CANCELLED`.
    fn write_all(
        &self,
        py: Python<'_>,
        bridge: &Bridge,
        token: u64,
        data: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let data = copy_bytes(data)?;
        let (inner, len) = (self.inner.clone(), data.len());
        let fut = async move {
            inner.lock().await.write_all_chunks(&mut [data]).await?;
            Ok(Plain(()))
        };
        bridge.submit_sized(py, token, fut, len)
    }

    /// Writes `data` as one frame: a u32 big-endian length, then the bytes.
    fn write_frame(
        &self,
        py: Python<'_>,
        bridge: &Bridge,
        token: u64,
        data: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let data = copy_bytes(data)?;
        let header = frame_header(data.len(), u32::MAX as usize)?;
        let (inner, len) = (self.inner.clone(), data.len());
        let fut = async move {
            inner
                .lock()
                .await
                .write_all_chunks(&mut [header, data])
                .await?;
            Ok(Plain(()))
        };
        bridge.submit_sized(py, token, fut, len)
    }

    /// Ends the stream: the peer reads everything written, then the end.
    fn finish(&self) -> PyResult<()> {
        Ok(self.try_state()?.finish()?)
    }

    /// Abandons the stream: the peer's reads fail with `StreamReset(code)`.
    fn reset(&self, code: u64) -> PyResult<()> {
        Ok(self.try_state()?.reset(code)?)
    }

    /// Waits until the peer has received everything (`None`) or stopped the stream (its code).
    fn stopped(&self, py: Python<'_>, bridge: &Bridge, token: u64) -> PyResult<Py<PyAny>> {
        let inner = self.inner.clone();
        bridge.submit(py, token, async move {
            let fut = inner.lock().await.stream.stopped();
            let code = fut.await?;
            Ok(Plain(code.map(|c| c.into_inner())))
        })
    }

    fn __repr__(&self) -> String {
        format!("SendStream(id={})", self.id)
    }
}

/// The receiving half of a QUIC stream.
#[pyclass(module = "iroh_pair._native", frozen)]
pub struct RecvStream {
    pub inner: Arc<Mutex<IrohRecv>>,
    pub id: u64,
    /// Reads started on this stream so far (on the loop's thread): a finished `read` tops up
    /// only if no later read has started, so concurrent reads never reorder the data.
    reads: Arc<AtomicU64>,
}

impl RecvStream {
    pub fn new(r: IrohRecv) -> Self {
        let id = r.id().index();
        Self {
            inner: Arc::new(Mutex::new(r)),
            id,
            reads: Arc::default(),
        }
    }

    /// Counts a read starting; returns its number.
    fn start_read(&self) -> u64 {
        self.reads.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// `read` and `read_chunks`: waits for the first chunk, then gathers (see `ChunksOut`).
    fn read_up_to(
        &self,
        py: Python<'_>,
        bridge: &Bridge,
        token: u64,
        n: usize,
        as_chunks: bool,
    ) -> PyResult<Py<PyAny>> {
        let inner = self.inner.clone();
        let (seq, reads) = (self.start_read(), self.reads.clone());
        bridge.submit(py, token, async move {
            let first = inner.lock().await.read_chunk(n).await?;
            Ok(ChunksOut {
                first,
                recv: inner,
                n,
                seq,
                reads,
                as_chunks,
            })
        })
    }
}

#[pymethods]
impl RecvStream {
    /// The stream's index within its connection.
    #[getter]
    fn id(&self) -> u64 {
        self.id
    }

    /// Up to `n` bytes, as soon as some are available; `b""` at the end of the stream. Takes
    /// every chunk already received (up to `n`) in one go, so bulk reads cost few operations.
    fn read(&self, py: Python<'_>, bridge: &Bridge, token: u64, n: usize) -> PyResult<Py<PyAny>> {
        self.read_up_to(py, bridge, token, n, false)
    }

    /// Up to `n` bytes as the chunks iroh received them, without a copy; `[]` at the end of
    /// the stream. Takes every chunk already received (up to `n` bytes) in one go.
    fn read_chunks(
        &self,
        py: Python<'_>,
        bridge: &Bridge,
        token: u64,
        n: usize,
    ) -> PyResult<Py<PyAny>> {
        self.read_up_to(py, bridge, token, n, true)
    }

    /// Exactly `n` bytes; `TruncatedFrame` if the stream ends first.
    fn read_exact(
        &self,
        py: Python<'_>,
        bridge: &Bridge,
        token: u64,
        n: usize,
    ) -> PyResult<Py<PyAny>> {
        self.start_read();
        let inner = self.inner.clone();
        let fut = async move {
            let early = |got| format!("finished after {got} bytes of an exact read");
            let chunks = read_exact_chunks(&mut *inner.lock().await, n, early).await?;
            Ok(JoinedOut(chunks))
        };
        bridge.submit_sized(py, token, fut, n)
    }

    /// Everything up to the end of the stream; `FrameTooLarge` beyond `limit` bytes. Holds what
    /// has arrived plus less than one block (see `read_body`).
    fn read_to_end(
        &self,
        py: Python<'_>,
        bridge: &Bridge,
        token: u64,
        limit: usize,
    ) -> PyResult<Py<PyAny>> {
        self.start_read();
        let inner = self.inner.clone();
        bridge.submit(py, token, async move {
            let mut recv = inner.lock().await;
            // Copied into blocks as it arrives, as a frame's body is (see `read_body`).
            let mut blocks = Blocks::new(limit);
            while let Some(c) = recv.read_chunk(usize::MAX).await? {
                if blocks.got + c.len() > limit {
                    return Err(Error::FrameTooLarge {
                        length: limit as u64 + 1, // at least: the rest is not read
                        limit: limit as u64,
                    });
                }
                blocks.push(&c);
            }
            Ok(JoinedOut(blocks.finish()))
        })
    }

    /// One frame, or `None` at a clean end of stream.
    fn read_frame(
        &self,
        py: Python<'_>,
        bridge: &Bridge,
        token: u64,
        max_len: usize,
    ) -> PyResult<Py<PyAny>> {
        self.start_read();
        let inner = self.inner.clone();
        bridge.submit(py, token, async move {
            let f = read_frame(&mut *inner.lock().await, max_len).await?;
            Ok(OptJoinedOut(f))
        })
    }

    /// Tells the peer to stop sending, with `code`.
    fn stop(&self, code: u64) -> PyResult<()> {
        let mut r = self.inner.try_lock().map_err(|_| {
            Error::StreamClosed("a read on this stream is still in progress".into())
        })?;
        r.stop(varint(code)?)
            .map_err(|_| Error::StreamClosed("the stream was already stopped".into()))?;
        Ok(())
    }

    fn __repr__(&self) -> String {
        format!("RecvStream(id={})", self.id)
    }
}
