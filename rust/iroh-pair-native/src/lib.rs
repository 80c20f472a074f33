//! `iroh_pair._native`: a thin binding of iroh 1.x for asyncio.
//!
//! The Python package owns everything above the transport; this crate owns the transport and the
//! hot path (stream I/O, framing, the fused request, the serve loop). See `bridge.rs` for how
//! results reach asyncio without tokio ever taking the GIL.

use pyo3::prelude::*;

mod bridge;
mod buffers;
mod chunk;
mod codes;
mod connection;
mod counters;
mod endpoint;
mod error;
mod frame;
mod keys;
mod limits;
mod mdns;
mod outcome;
mod parked;
mod queue;
mod runtime;
mod serve;
mod spake;
mod streams;
mod sync;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<bridge::Bridge>()?;
    m.add_class::<bridge::Pending>()?;
    m.add("PENDING", bridge::pending(m.py()))?;
    m.add_class::<keys::SecretKey>()?;
    m.add_class::<keys::EndpointId>()?;
    m.add_class::<keys::EndpointAddr>()?;
    m.add_class::<endpoint::Endpoint>()?;
    m.add_class::<connection::Connection>()?;
    m.add_class::<mdns::MdnsAnnouncement>()?;
    m.add_class::<serve::IncomingRequest>()?;
    m.add_class::<limits::KindLimits>()?;
    m.add_class::<spake::Spake2>()?;
    m.add_class::<streams::SendStream>()?;
    m.add_class::<streams::RecvStream>()?;
    m.add_class::<chunk::Chunk>()?;
    m.add_function(wrap_pyfunction!(endpoint::_debug_stats, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::use_runtime, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::runtime_kind, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::worker_threads, m)?)?;
    m.add("MAX_WORKER_THREADS", runtime::MAX_WORKERS)?;
    m.add("STREAM_CANCELLED", codes::STREAM_CANCELLED)?;
    m.add("STREAM_DROPPED", codes::STREAM_DROPPED)?;
    m.add("HANDLER_ERROR", codes::HANDLER_ERROR)?;
    m.add("FRAME_TOO_LARGE", codes::FRAME_TOO_LARGE)?;
    m.add("STREAM_TIMEOUT", codes::TIMEOUT)?;
    m.add("UNKNOWN_KIND", codes::UNKNOWN_KIND)?;
    m.add("BAD_ENVELOPE", codes::BAD_ENVELOPE)?;
    m.add("NOT_ADMITTED", codes::NOT_ADMITTED)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
