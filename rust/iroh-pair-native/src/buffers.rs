//! Buffers shared by `chunk` and `streams`: recycled storage for copies of large writes, and
//! the one copy of received chunks into a Python `bytes`.
//!
//! ```ignore
//! let data = buffers::copy(&payload); // a large write: into a recycled buffer
//! let obj = buffers::join_to_py(py, &chunks)?; // received chunks: one Python bytes
//! ```

use std::sync::Mutex;

use bytes::Bytes;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::sync::lock;

// Recycled buffers for copies of large writes: a bulk sender would otherwise get fresh memory
// from the allocator for every write (and fault its pages in) while iroh frees the acknowledged
// ones on another thread. Bounded to `MAX_POOLED` bytes; small copies are plain allocations.

const MIN: usize = 64 * 1024;
const MAX_POOLED: usize = 8 * 1024 * 1024;

static FREE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

struct Pooled(Vec<u8>);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        let mut free = lock(&FREE);
        let held: usize = free.iter().map(Vec::capacity).sum();
        if held + buf.capacity() <= MAX_POOLED {
            free.push(buf);
        }
    }
}

/// `src` as `Bytes`, copied once (into a recycled buffer when it is large).
pub fn copy(src: &[u8]) -> Bytes {
    if src.len() < MIN || src.len() > MAX_POOLED {
        return Bytes::copy_from_slice(src);
    }
    let reused = {
        let mut free = lock(&FREE);
        free.iter()
            .position(|b| b.capacity() >= src.len())
            .map(|i| free.swap_remove(i))
    };
    let mut buf = reused.unwrap_or_else(|| Vec::with_capacity(src.len()));
    buf.clear();
    buf.extend_from_slice(src);
    Bytes::from_owner(Pooled(buf))
}

/// Builds a Python `bytes` of the given chunks, joined: one copy, no zero-filling first.
pub fn join_to_py<'py>(py: Python<'py>, chunks: &[Bytes]) -> PyResult<Bound<'py, PyBytes>> {
    if let [one] = chunks {
        return Ok(PyBytes::new(py, one));
    }
    let len: usize = chunks.iter().map(Bytes::len).sum();
    // SAFETY: `PyBytes_FromStringAndSize(NULL, len)` returns a new, uninitialised bytes object
    // of `len` bytes (or NULL with an exception set, turned into an error here); every byte of
    // it is written below before the object is visible to any Python code.
    unsafe {
        let obj =
            pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), len as pyo3::ffi::Py_ssize_t);
        let obj = Bound::from_owned_ptr_or_err(py, obj)?;
        let mut at = pyo3::ffi::PyBytes_AsString(obj.as_ptr()).cast::<u8>();
        for c in chunks {
            std::ptr::copy_nonoverlapping(c.as_ptr(), at, c.len());
            at = at.add(c.len());
        }
        Ok(obj.cast_into_unchecked())
    }
}
