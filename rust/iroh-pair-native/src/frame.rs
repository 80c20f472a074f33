//! Stream I/O below the Python classes: a send stream that resets itself when dropped
//! unfinished (`SendState`), native framing (a u32 big-endian length prefix), and bounded reads
//! (exactly `n` bytes; a frame body gathered into blocks as it arrives).
//!
//! A send stream that is dropped or whose write is cancelled midway is *reset*, never finished:
//! iroh finishes a dropped `SendStream`, which would hand the peer a truncated message as if it
//! were complete.
//!
//! ```ignore
//! let header = frame_header(payload.len(), u32::MAX as usize)?;
//! send.write_all_chunks(&mut [header, payload]).await?; // one frame
//! let frame = read_frame(&mut recv, max_len).await?; // None at a clean end of stream
//! ```

use bytes::Bytes;
use iroh::endpoint::{RecvStream as IrohRecv, SendStream as IrohSend, VarInt};

use crate::codes;
use crate::error::Error;

pub fn varint(code: u64) -> Result<VarInt, Error> {
    VarInt::from_u64(code)
        .map_err(|_| Error::Value(format!("error code {code} does not fit a QUIC varint")))
}

/// Exactly `n` bytes, as the chunks received (not copied). If the stream ends after `got < n`
/// bytes, the error is `Truncated(early(got))`.
pub async fn read_exact_chunks(
    recv: &mut IrohRecv,
    n: usize,
    early: impl FnOnce(usize) -> String,
) -> Result<Vec<Bytes>, Error> {
    let mut chunks = Vec::new();
    let mut got = 0;
    while got < n {
        match recv.read_chunk(n - got).await? {
            Some(c) => {
                got += c.len();
                chunks.push(c);
            }
            None => return Err(Error::Truncated(early(got))),
        }
    }
    Ok(chunks)
}

/// A send stream that resets itself when dropped unfinished.
pub struct SendState {
    pub stream: IrohSend,
    pub done: bool,
}

impl SendState {
    pub fn new(stream: IrohSend) -> Self {
        Self {
            stream,
            done: false,
        }
    }

    pub fn finish(&mut self) -> Result<(), Error> {
        self.done = true;
        self.stream
            .finish()
            .map_err(|_| Error::StreamClosed("the stream was already finished or reset".into()))
    }

    pub fn reset(&mut self, code: u64) -> Result<(), Error> {
        self.done = true;
        self.stream
            .reset(varint(code)?)
            .map_err(|_| Error::StreamClosed("the stream was already finished or reset".into()))
    }

    /// Writes all of `chunks`; when the future is dropped before that completes (cancelled,
    /// timed out), the stream is reset with `STREAM_CANCELLED`.
    pub async fn write_all_chunks(&mut self, chunks: &mut [Bytes]) -> Result<(), Error> {
        let mut guard = ResetOnDrop {
            state: self,
            armed: true,
        };
        let r = guard.state.stream.write_all_chunks(chunks).await;
        guard.armed = false;
        r.map_err(Into::into)
    }
}

impl Drop for SendState {
    fn drop(&mut self) {
        if !self.done {
            let _ = self
                .stream
                .reset(VarInt::from_u32(codes::STREAM_DROPPED as u32));
        }
    }
}

struct ResetOnDrop<'a> {
    state: &'a mut SendState,
    armed: bool,
}

impl Drop for ResetOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.state.reset(codes::STREAM_CANCELLED);
        }
    }
}

pub fn frame_header(len: usize, limit: usize) -> Result<Bytes, Error> {
    if len > u32::MAX as usize || len > limit {
        return Err(Error::FrameTooLarge {
            length: len as u64,
            limit: limit.min(u32::MAX as usize) as u64,
        });
    }
    Ok(Bytes::copy_from_slice(&(len as u32).to_be_bytes()))
}

/// Reads a frame's u32 big-endian length: `None` at a clean end of stream before any byte.
pub async fn read_frame_len(recv: &mut IrohRecv) -> Result<Option<u32>, Error> {
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match recv.read(&mut header[got..]).await? {
            Some(n) => got += n,
            None if got == 0 => return Ok(None),
            None => {
                return Err(Error::Truncated(format!(
                    "the stream ended {got} bytes into a 4-byte frame header"
                )));
            }
        }
    }
    Ok(Some(u32::from_be_bytes(header)))
}

/// Size of the blocks `read_body` gathers a frame into.
pub const BODY_BLOCK: usize = 64 * 1024;

/// Exactly `n` bytes of a frame body whose length the peer declared, copied as they arrive into
/// blocks of at most `BODY_BLOCK` bytes (the last one no larger than what is left of `n`).
///
/// Memory held is what has arrived plus less than one block: nothing is reserved for the
/// declared length up front, and no received chunk is kept. (A chunk iroh hands out is a slice
/// of a shared receive buffer that also holds other packets; keeping many small chunks, say a
/// peer that sends its frame a few bytes per packet, would pin far more memory than the bytes
/// themselves.) If the stream ends after `got < n` bytes, the error is `Truncated(early(got))`.
pub async fn read_body(
    recv: &mut IrohRecv,
    n: usize,
    early: impl FnOnce(usize) -> String,
) -> Result<Vec<Bytes>, Error> {
    let mut blocks = Blocks::new(n);
    while blocks.got < n {
        match recv.read_chunk(n - blocks.got).await? {
            Some(c) => blocks.push(&c),
            None => return Err(Error::Truncated(early(blocks.got))),
        }
    }
    Ok(blocks.finish())
}

/// Received bytes copied into owned blocks of at most `BODY_BLOCK` bytes, none of them larger
/// than what is left of `max` (see `read_body`).
pub struct Blocks {
    max: usize,
    done: Vec<Bytes>,
    block: bytes::BytesMut,
    /// Bytes received; bytes in `done` (full blocks, not counting `block`).
    pub got: usize,
    placed: usize,
}

impl Blocks {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            done: Vec::new(),
            block: bytes::BytesMut::new(),
            got: 0,
            placed: 0,
        }
    }

    /// Appends `c` (at most what is left of `max`).
    pub fn push(&mut self, mut c: &[u8]) {
        self.got += c.len();
        while !c.is_empty() {
            if self.block.len() == self.block.capacity() {
                if !self.block.is_empty() {
                    self.placed += self.block.len();
                    self.done.push(self.block.split().freeze());
                }
                self.block = bytes::BytesMut::with_capacity(
                    BODY_BLOCK.min(self.max.saturating_sub(self.placed)).max(1),
                );
            }
            let take = c.len().min(self.block.capacity() - self.block.len());
            self.block.extend_from_slice(&c[..take]);
            c = &c[take..];
        }
    }

    pub fn finish(mut self) -> Vec<Bytes> {
        if !self.block.is_empty() {
            self.done.push(self.block.freeze());
        }
        self.done
    }
}

/// Reads one frame: `None` at a clean end of stream before any byte of it. The length is checked
/// against `max_len` before anything is read of the body, which is then gathered as it arrives
/// (see `read_body`: never more than what has arrived plus one block).
pub async fn read_frame(recv: &mut IrohRecv, max_len: usize) -> Result<Option<Vec<Bytes>>, Error> {
    let Some(len) = read_frame_len(recv).await? else {
        return Ok(None);
    };
    let len = len as usize;
    if len > max_len {
        return Err(Error::FrameTooLarge {
            length: len as u64,
            limit: max_len as u64,
        });
    }
    let body = read_body(recv, len, |n| {
        format!("the stream ended {n} bytes into a frame of {len} bytes")
    })
    .await?;
    Ok(Some(body))
}
