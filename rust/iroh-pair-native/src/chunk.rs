//! `Chunk`: bytes owned by Rust that Python reads in place, through the buffer protocol.
//!
//! A chunk is how data crosses the binding without a copy: `RecvStream.read_chunks` hands out
//! the chunks iroh received, and writing a chunk shares its storage with iroh instead of copying
//! it (a bulk sender makes its chunk once and writes it many times; a proxy forwards what it
//! read). Its storage is an immutable `Bytes`, freed by whichever thread drops the last
//! reference, so tokio threads never hold anything of Python's. `copy_bytes` turns any
//! bytes-like object (a chunk shared, anything else copied once) into what a write sends.

use std::ffi::c_int;

use bytes::Bytes;
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyBufferError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::buffers;

/// Copies any bytes-like object into Rust-owned `Bytes`, once. The copy is deliberate: the bytes
/// outlive this call on tokio threads, which must never touch (or release) a Python buffer, and a
/// mutable buffer could change under a retransmission. Large copies go into recycled buffers
/// (see `buffers::copy`), so a bulk sender does not fault in fresh pages for every write. A
/// `Chunk` is Rust's already: it is shared, not copied.
pub fn copy_bytes(obj: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    if let Ok(c) = obj.cast::<Chunk>() {
        return Ok(c.get().0.clone());
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(buffers::copy(b.as_bytes()));
    }
    let buf = PyBuffer::<u8>::get(obj)?;
    if buf.is_c_contiguous() && buf.readonly() {
        // SAFETY: a read-only, C-contiguous buffer of `len_bytes()` bytes, held (and the GIL
        // with it) for the duration of the copy.
        let src =
            unsafe { std::slice::from_raw_parts(buf.buf_ptr() as *const u8, buf.len_bytes()) };
        return Ok(buffers::copy(src));
    }
    Ok(Bytes::from(buf.to_vec(obj.py())?))
}

/// Immutable bytes held by Rust: `len()`, `bytes()`, `memoryview()`, comparison with any
/// bytes-like object. Writing one to a stream does not copy it.
#[pyclass(module = "iroh_pair._native", frozen)]
pub struct Chunk(pub Bytes);

impl Chunk {
    /// A new chunk object that the cyclic garbage collector does not track. A chunk refers to
    /// no Python object, so it can never be part of a cycle; a bulk read makes one per packet
    /// (hundreds of thousands per 512 MiB), and tracked ones would set off a collection every
    /// 700, scanning every live chunk each time they reach an older generation.
    pub fn untracked(py: Python<'_>, data: Bytes) -> PyResult<Py<Chunk>> {
        let obj = Py::new(py, Chunk(data))?;
        // SAFETY: `obj` is a live object of a GC type (every pyclass is one) that this thread
        // just created and holds; untracking it only stops the collector from visiting it.
        unsafe { pyo3::ffi::PyObject_GC_UnTrack(obj.as_ptr().cast()) };
        Ok(obj)
    }
}

#[pymethods]
impl Chunk {
    /// A chunk of `data` (any bytes-like object), copied once; a `Chunk` is shared, not copied.
    #[new]
    fn new(data: &Bound<'_, PyAny>) -> PyResult<Self> {
        Ok(Self(copy_bytes(data)?))
    }

    fn __len__(&self) -> usize {
        self.0.len()
    }

    /// A copy, as `bytes`.
    fn __bytes__<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0)
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        if let Ok(c) = other.cast::<Chunk>() {
            return c.get().0 == self.0;
        }
        match PyBuffer::<u8>::get(other) {
            Ok(buf) => buf.to_vec(other.py()).is_ok_and(|v| v == self.0),
            Err(_) => false,
        }
    }

    /// The buffer protocol, read-only: `memoryview(chunk)`, `hashlib`, `file.write(chunk)`.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("no view to fill"));
        }
        let data = &slf.get().0;
        // SAFETY: `view` is the caller's; `PyBuffer_FillInfo` stores a new reference to `slf`
        // in it, which keeps this frozen chunk, hence its immutable `Bytes`, alive until the
        // view is released. It refuses a writable request (readonly = 1) with BufferError.
        let rc = unsafe {
            pyo3::ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                data.as_ptr() as *mut std::ffi::c_void,
                data.len() as pyo3::ffi::Py_ssize_t,
                1,
                flags,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(PyErr::fetch(slf.py()))
        }
    }

    unsafe fn __releasebuffer__(&self, _view: *mut pyo3::ffi::Py_buffer) {}

    fn __repr__(&self) -> String {
        format!("Chunk({} bytes)", self.0.len())
    }
}
