//! Application error codes this package uses on streams (documented in docs/PROTOCOL.md),
//! exported to Python by `lib.rs` under the same names (`TIMEOUT` as `STREAM_TIMEOUT`).

/// A write or request was cancelled midway by the local application.
pub const STREAM_CANCELLED: u64 = 1;
/// A send stream was dropped without `finish()`.
pub const STREAM_DROPPED: u64 = 2;
/// The serving side's handler raised; the request failed.
pub const HANDLER_ERROR: u64 = 3;
/// The request's first frame was larger than the server allows, or truncated.
pub const FRAME_TOO_LARGE: u64 = 4;
/// The stream kind is not served here.
pub const UNKNOWN_KIND: u64 = 5;
/// The first frame's envelope header is malformed (version, kind length or kind name).
pub const BAD_ENVELOPE: u64 = 6;
/// The first frame did not arrive within the serve loop's `frame_timeout`.
pub const TIMEOUT: u64 = 7;
/// The stream kind is not allowed from this peer (its `KindLimits` limit is 0).
pub const NOT_ADMITTED: u64 = 8;
