//! `iroh_pair._native`: a thin binding of iroh 1.x for asyncio.
//!
//! The Python package owns everything above the transport; this crate owns the transport and the
//! hot path (stream I/O, framing, the fused request, the serve loop). See `bridge` for how
//! results reach asyncio without tokio ever taking the GIL.
//!
//! Applications do not call it directly: `iroh_pair.transport` wraps every class with typed
//! asyncio methods that go through the bridge (illustrative, inside a coroutine):
//!
//! ```python
//! from iroh_pair import Endpoint
//!
//! async with await Endpoint.bind(alpns=[b"my-app/1"]) as ep:   # a native Endpoint inside
//!     conn = await ep.connect(ticket, b"my-app/1")
//!     reply = await conn.request(b"ping")                       # one native call, a future
//! ```
//!
//! # Layers
//!
//! The modules import each other in one direction only: each one imports only modules listed
//! above it (`tools/check_mod_deps.py` checks that there is no cycle, and
//! `tests/test_native_layers.py` that this list is in an order the imports allow).
//!
//! Foundations, which know nothing of the bridge:
//! - `sync`: `lock`, a mutex guard whatever a thread that panicked holding it left.
//! - `error`: the one error enum, and its one mapping onto the classes of `iroh_pair.errors`.
//! - `codes`: the stream error codes of docs/PROTOCOL.md.
//! - `counters`: what an endpoint and its connections did, counted per endpoint.
//! - `runtime`: the process's tokio runtime (its kind and workers) and `poll_once`.
//! - `buffers`: recycled buffers for large writes; the one copy of chunks into a Python `bytes`.
//! - `outcome`: what a finished operation hands to the loop (`ToPy`), and a serve loop's
//!   `Request`.
//!
//! Values and the wire, still without the bridge:
//! - `keys`: `SecretKey`, `EndpointId`, `EndpointAddr` and tickets.
//! - `spake`: `Spake2`, the password-authenticated key exchange of pairing.
//! - `chunk`: `Chunk`, bytes Python reads in place; `copy_bytes` for what a write sends.
//! - `frame`: `SendState` (reset when dropped unfinished), framing and bounded reads.
//! - `limits`: `KindLimits` and the serve loop's first-frame read under them.
//!
//! The bridge between tokio and asyncio:
//! - `queue`: one bridge's completion queue and its wake-up fd.
//! - `parked`: the parked-operation state machine (inline poll, resume on the loop, task).
//! - `bridge`: the `Bridge` and `Pending` classes: submit, drain, spin, drive, cancel.
//!
//! The transport's Python classes, on the bridge:
//! - `streams`: `SendStream` and `RecvStream`.
//! - `mdns`: LAN discovery and `MdnsAnnouncement`.
//! - `serve`: the native serve loop and `IncomingRequest`.
//! - `files`: `BlobStore`, files between paired devices on iroh-blobs (store, offers, fetch).
//! - `connection`: `Connection`: streams, close, paths, the fused request.
//! - `endpoint`: `Endpoint`: bind, dial, accept, lookups.
//!
//! This file, the crate root, declares them and exports the Python module.

mod sync;

mod codes;
mod counters;
mod error;
mod runtime;

mod buffers;
mod outcome;

mod chunk;
mod frame;
mod keys;
mod limits;
mod spake;

mod bridge;
mod parked;
mod queue;

mod connection;
mod endpoint;
mod files;
mod mdns;
mod serve;
mod streams;

#[pyo3::pymodule]
mod _native {
    use pyo3::prelude::*;

    // The bridge: how operations started from Python complete on the asyncio loop.
    #[pymodule_export]
    use crate::bridge::{Bridge, Pending};

    // The process's runtime, chosen before the first endpoint or operation.
    #[pymodule_export]
    use crate::runtime::{runtime_kind, use_runtime, worker_threads};
    #[pymodule_export]
    const MAX_WORKER_THREADS: usize = crate::runtime::MAX_WORKERS;

    // Identities and addresses.
    #[pymodule_export]
    use crate::keys::{EndpointAddr, EndpointId, SecretKey};

    // The transport: endpoints, connections, streams, the serve loop, LAN discovery.
    #[pymodule_export]
    use crate::chunk::Chunk;
    #[pymodule_export]
    use crate::connection::Connection;
    #[pymodule_export]
    use crate::endpoint::{_debug_stats, Endpoint};
    #[pymodule_export]
    use crate::limits::KindLimits;
    #[pymodule_export]
    use crate::mdns::MdnsAnnouncement;
    #[pymodule_export]
    use crate::serve::IncomingRequest;
    #[pymodule_export]
    use crate::streams::{RecvStream, SendStream};

    // Files between paired devices (iroh-blobs).
    #[pymodule_export]
    use crate::files::BlobStore;

    // Pairing.
    #[pymodule_export]
    use crate::spake::Spake2;

    // Stream error codes (docs/PROTOCOL.md).
    #[pymodule_export]
    const STREAM_CANCELLED: u64 = crate::codes::STREAM_CANCELLED;
    #[pymodule_export]
    const STREAM_DROPPED: u64 = crate::codes::STREAM_DROPPED;
    #[pymodule_export]
    const HANDLER_ERROR: u64 = crate::codes::HANDLER_ERROR;
    #[pymodule_export]
    const FRAME_TOO_LARGE: u64 = crate::codes::FRAME_TOO_LARGE;
    #[pymodule_export]
    const STREAM_TIMEOUT: u64 = crate::codes::TIMEOUT;
    #[pymodule_export]
    const UNKNOWN_KIND: u64 = crate::codes::UNKNOWN_KIND;
    #[pymodule_export]
    const BAD_ENVELOPE: u64 = crate::codes::BAD_ENVELOPE;
    #[pymodule_export]
    const NOT_ADMITTED: u64 = crate::codes::NOT_ADMITTED;

    #[pymodule_export]
    #[allow(non_upper_case_globals)]
    const __version__: &str = env!("CARGO_PKG_VERSION");

    /// Adds what is a Python object rather than a class, function or constant.
    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        // The one `Pending` instance an operation returns when its result comes later.
        m.add("PENDING", crate::bridge::pending(m.py()))
    }
}
