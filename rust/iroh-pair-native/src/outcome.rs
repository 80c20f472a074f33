//! What a finished operation hands to the loop: `Outcome`, a Rust value (or error) that
//! becomes a Python object only on the loop's thread (`ToPy`), and `Request`, a serve loop's
//! own output, which the bridge may answer natively while draining.
//!
//! ```ignore
//! bridge.submit(py, token, async move { Ok(Plain(42u64)) }) // an int, on the loop's thread
//! ```

use bytes::Bytes;
use pyo3::prelude::*;

use crate::error::Error;

/// A finished operation's value, still in Rust. It becomes a Python object only on the loop's
/// thread, when the bridge is drained.
pub type Outcome = Result<Box<dyn ToPy>, Error>;

/// Conversion of an operation's result into a Python object, done on the asyncio loop's thread.
pub trait ToPy: Send + 'static {
    fn to_py(self: Box<Self>, py: Python<'_>) -> PyResult<Py<PyAny>>;
}

/// Wraps a value whose conversion is the standard pyo3 one.
pub struct Plain<T>(pub T);

impl<T> ToPy for Plain<T>
where
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    fn to_py(self: Box<Self>, py: Python<'_>) -> PyResult<Py<PyAny>> {
        use pyo3::IntoPyObjectExt;
        self.0.into_py_any(py)
    }
}

/// Raw bytes, converted into a Python `bytes` (the one unavoidable copy into Python).
pub struct PyBytesOut(pub bytes::Bytes);

impl ToPy for PyBytesOut {
    fn to_py(self: Box<Self>, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(pyo3::types::PyBytes::new(py, &self.0).into_any().unbind())
    }
}

/// A pyclass value created on the loop's thread.
pub struct ClassOut<T>(pub T);

impl<T> ToPy for ClassOut<T>
where
    T: pyo3::PyClass + Into<pyo3::PyClassInitializer<T>> + Send + 'static,
{
    fn to_py(self: Box<Self>, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(Py::new(py, self.0)?.into_any())
    }
}

impl<T: ToPy> ToPy for Option<T> {
    fn to_py(self: Box<Self>, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match *self {
            Some(v) => Box::new(v).to_py(py),
            None => Ok(py.None()),
        }
    }
}

/// Boxes a value for the completion queue.
pub fn out<T: ToPy>(v: T) -> Box<dyn ToPy> {
    Box::new(v)
}

/// A request a serve loop read (a stream's first frame), delivered under the loop's persistent
/// token. With a native handler the bridge answers it while draining (see
/// `Bridge::handle_request`); otherwise it becomes a Python object like any other result.
pub trait Request: ToPy {
    /// The request's bytes, as received.
    fn request(&self) -> &[Bytes];
    /// Sends `data` as the whole reply; never waits.
    fn respond(self: Box<Self>, data: Bytes);
    /// Refuses the request with the stream error `code`.
    fn reject(self: Box<Self>, code: u64);
}
