//! SPAKE2 over Ed25519 (RustCrypto `spake2`, docs/PROTOCOL.md §7.1) for the pairing state
//! machines: one side of one exchange. Short pure computation: it runs on the
//! caller's thread with the GIL held, no runtime involved.
//!
//! The crate's `finish` only decompresses the peer's point. Before any scalar multiplication
//! with our secret, `finish` here rejects what python-spake2 rejects and more: a wrong length
//! or side byte, an encoding that does not decode or is not canonical, the identity, a point
//! outside the prime-order subgroup, and our own point reflected. (The same checks as the Rust
//! node's, rust/node/src/pairing.rs.)

use std::sync::Mutex;

use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::traits::IsIdentity;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use rand_core::{CryptoRng, RngCore};
use spake2::{Ed25519Group, Identity, Password};

use crate::sync::lock;

const ENTROPY_LEN: usize = 64;
const MSG_LEN: usize = 33;
const SIDE_A: u8 = b'A';
const SIDE_B: u8 = b'B';

/// Hands out exactly the 64 bytes it was given (the crate draws its scalar as 64 random bytes
/// reduced little-endian mod L), and counts what was asked for, so a crate that drew anything
/// else would be noticed rather than fed zeros.
struct FixedEntropy {
    bytes: [u8; ENTROPY_LEN],
    used: usize,
    overdrawn: bool,
}

impl RngCore for FixedEntropy {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        let n = dest.len().min(ENTROPY_LEN - self.used);
        dest[..n].copy_from_slice(&self.bytes[self.used..self.used + n]);
        self.used += n;
        if n < dest.len() {
            self.overdrawn = true;
            dest[n..].fill(0);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for FixedEntropy {}

/// Why a peer's SPAKE2 message is refused, or `None` if it may be used. Checks everything
/// before any scalar multiplication with our secret (`is_torsion_free` multiplies the peer's
/// point by the group order, a public constant).
fn check_peer(own: &[u8; MSG_LEN], peer: &[u8]) -> Option<&'static str> {
    let expected = if own[0] == SIDE_A { SIDE_B } else { SIDE_A };
    if let Some(why) = check_point(peer, expected) {
        return Some(why);
    }
    if peer[1..] == own[1..] {
        return Some("our own message reflected");
    }
    None
}

/// Why a SPAKE2 message from side `side` is refused on its own (no secret involved): length,
/// side byte, a canonical encoding of a point of the prime-order subgroup other than the
/// identity. Costs one decompression and one multiplication by the (public) group order.
fn check_point(peer: &[u8], side: u8) -> Option<&'static str> {
    if peer.len() != MSG_LEN {
        return Some("a SPAKE2 message is 33 bytes");
    }
    if peer[0] != side {
        return Some("wrong side byte");
    }
    let mut raw = [0u8; 32];
    raw.copy_from_slice(&peer[1..]);
    let Some(point) = CompressedEdwardsY(raw).decompress() else {
        return Some("not a curve point");
    };
    if point.compress().to_bytes() != raw {
        return Some("non-canonical point encoding");
    }
    if point.is_identity() {
        return Some("the identity point");
    }
    if !point.is_torsion_free() {
        return Some("not in the prime-order subgroup");
    }
    None
}

/// One side of a SPAKE2 exchange over Ed25519; `finish` may be called once.
///
/// Example::
///
///     a, msg_a = Spake2.start("A", pw, id_a, id_b, entropy_a)   # 64 bytes of entropy each
///     b, msg_b = Spake2.start("B", pw, id_a, id_b, entropy_b)
///     assert a.finish(msg_b) == b.finish(msg_a)                  # 32-byte key
#[pyclass(module = "iroh_pair._native", frozen)]
pub struct Spake2 {
    inner: Mutex<Option<spake2::Spake2<Ed25519Group>>>,
    own: [u8; MSG_LEN],
}

#[pymethods]
impl Spake2 {
    /// Starts side `side` ("A" or "B"); returns the state and our 33-byte message. The 64
    /// `entropy` bytes are reduced to the secret scalar as python-spake2 does (big-endian mod L),
    /// so fixed entropy reproduces python-spake2's messages and keys.
    #[staticmethod]
    fn start<'py>(
        py: Python<'py>,
        side: &str,
        password: &[u8],
        id_a: &[u8],
        id_b: &[u8],
        entropy: &[u8],
    ) -> PyResult<(Self, Bound<'py, PyBytes>)> {
        if entropy.len() != ENTROPY_LEN {
            return Err(PyValueError::new_err(format!(
                "entropy must be {ENTROPY_LEN} bytes, got {}",
                entropy.len()
            )));
        }
        let mut le = [0u8; ENTROPY_LEN];
        for (dst, src) in le.iter_mut().zip(entropy.iter().rev()) {
            *dst = *src;
        }
        let mut rng = FixedEntropy {
            bytes: le,
            used: 0,
            overdrawn: false,
        };
        let (pw, a, b) = (
            Password::new(password),
            Identity::new(id_a),
            Identity::new(id_b),
        );
        let (inner, msg) = match side {
            "A" => spake2::Spake2::<Ed25519Group>::start_a_with_rng(&pw, &a, &b, &mut rng),
            "B" => spake2::Spake2::<Ed25519Group>::start_b_with_rng(&pw, &a, &b, &mut rng),
            other => {
                return Err(PyValueError::new_err(format!(
                    "side is 'A' or 'B', got {other:?}"
                )));
            }
        };
        if rng.used != ENTROPY_LEN || rng.overdrawn {
            return Err(PyValueError::new_err(
                "the SPAKE2 library drew other than 64 entropy bytes",
            ));
        }
        let own: [u8; MSG_LEN] = msg
            .as_slice()
            .try_into()
            .map_err(|_| PyValueError::new_err("the SPAKE2 message is not 33 bytes"))?;
        let state = Self {
            inner: Mutex::new(Some(inner)),
            own,
        };
        Ok((state, PyBytes::new(py, &own)))
    }

    /// Checks a peer's 33-byte message from side `side` ("A" or "B") before any SPAKE2 work
    /// of ours: `ValueError` for a wrong length or side byte, a point that does not decode or
    /// is not canonical, the identity, or a point outside the prime-order subgroup. (`finish`
    /// checks the same, and a reflection of our own message.) A host calls it on a Hello before
    /// it spends a scalar multiplication with a fresh secret on it.
    #[staticmethod]
    fn check(peer_msg: &[u8], side: &str) -> PyResult<()> {
        let side = match side {
            "A" => SIDE_A,
            "B" => SIDE_B,
            other => {
                return Err(PyValueError::new_err(format!(
                    "side is 'A' or 'B', got {other:?}"
                )));
            }
        };
        match check_point(peer_msg, side) {
            Some(why) => Err(PyValueError::new_err(format!(
                "invalid SPAKE2 message: {why}"
            ))),
            None => Ok(()),
        }
    }

    /// Our 33-byte message (side byte and point).
    #[getter]
    fn message<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.own)
    }

    /// The shared 32-byte key from the peer's 33-byte message. `ValueError` for a message that
    /// is refused (checked before any use of our secret), or a second call.
    fn finish<'py>(&self, py: Python<'py>, peer_msg: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let inner = lock(&self.inner)
            .take()
            .ok_or_else(|| PyValueError::new_err("finish() may be called once"))?;
        if let Some(why) = check_peer(&self.own, peer_msg) {
            return Err(PyValueError::new_err(format!(
                "invalid SPAKE2 message: {why}"
            )));
        }
        let key = inner
            .finish(peer_msg)
            .map_err(|e| PyValueError::new_err(format!("invalid SPAKE2 message: {e:?}")))?;
        Ok(PyBytes::new(py, &key))
    }

    fn __repr__(&self) -> String {
        format!("Spake2(side={:?})", self.own[0] as char)
    }
}
