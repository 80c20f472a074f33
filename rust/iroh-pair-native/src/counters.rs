//! `Counters`: what an endpoint and its connections did, counted natively per endpoint.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counted natively, per endpoint, so that tests can check what really went over the wire.
#[derive(Default)]
pub struct Counters {
    pub conns_accepted: AtomicU64,
    pub conns_dialed: AtomicU64,
    pub bi_accepted: AtomicU64,
    pub bi_opened: AtomicU64,
    pub uni_accepted: AtomicU64,
    pub uni_opened: AtomicU64,
    pub requests_served: AtomicU64,
    pub handshakes_failed: AtomicU64,
    /// Connections on the blobs ALPN, handed to the blob provider (`files`).
    pub blob_conns_accepted: AtomicU64,
}

impl Counters {
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}
