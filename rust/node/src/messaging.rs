//! Sealed application messages (PROTOCOL.md §13): subkeys, AAD, counters, replay window,
//! message ids.

use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};

use crate::kdf::{Key, SessionKeys, hkdf_sha256};
use crate::wire::stream;

pub const VERSION: u8 = 1;
pub const BINDING_LABEL: &[u8] = b"iroh-pair/1 messaging channel binding";
pub const KEY_LABEL: &[u8] = b"iroh-pair/1 message key";
pub const MESSAGE_ID_LEN: usize = 16;
pub const HEADER_LEN: usize = 9;
pub const OVERHEAD: usize = HEADER_LEN + MESSAGE_ID_LEN + 16;
pub const REPLAY_WINDOW: u64 = 1024;
pub const DEFAULT_MAX_PLAINTEXT: usize = 16 * 1024 * 1024 - 128;

pub type MessageId = [u8; MESSAGE_ID_LEN];

/// A refused message: the stream error code to reset with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected(pub u32);

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", stream::name(self.0 as u64))
    }
}

pub fn derive_subkey(session_key: &[u8], cb: &[u8], sender: &[u8; 32], receiver: &[u8; 32]) -> Key {
    let mut info = KEY_LABEL.to_vec();
    info.extend_from_slice(sender);
    info.extend_from_slice(receiver);
    hkdf_sha256(session_key, cb, &info)
}

pub fn encode_aad(
    sender: &[u8; 32],
    receiver: &[u8; 32],
    kind: &str,
    counter: u64,
    reply_to: Option<&MessageId>,
) -> Vec<u8> {
    let mut out = vec![VERSION, u8::from(reply_to.is_some())];
    out.extend_from_slice(sender);
    out.extend_from_slice(receiver);
    out.push(kind.len() as u8);
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(&counter.to_be_bytes());
    out.extend_from_slice(reply_to.unwrap_or(&[0u8; MESSAGE_ID_LEN]));
    out
}

pub fn nonce(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n
}

pub fn new_message_id() -> MessageId {
    let mut id = [0u8; MESSAGE_ID_LEN];
    getrandom::fill(&mut id).expect("the OS random number generator failed");
    id
}

/// The highest accepted counter and a bitmap of the 1024 counters up to it (indexed by
/// counter mod 1024).
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    top: Option<u64>,
    bits: [u64; (REPLAY_WINDOW / 64) as usize],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self {
            top: None,
            bits: [0; (REPLAY_WINDOW / 64) as usize],
        }
    }
}

impl ReplayWindow {
    fn bit(&self, c: u64) -> bool {
        let i = (c % REPLAY_WINDOW) as usize;
        self.bits[i / 64] >> (i % 64) & 1 == 1
    }

    fn set(&mut self, c: u64, on: bool) {
        let i = (c % REPLAY_WINDOW) as usize;
        if on {
            self.bits[i / 64] |= 1 << (i % 64);
        } else {
            self.bits[i / 64] &= !(1 << (i % 64));
        }
    }

    pub fn check(&self, counter: u64) -> Option<Rejected> {
        let top = self.top?;
        if counter > top {
            return None;
        }
        if top - counter >= REPLAY_WINDOW {
            return Some(Rejected(stream::TOO_OLD));
        }
        self.bit(counter).then_some(Rejected(stream::REPLAYED))
    }

    pub fn mark(&mut self, counter: u64) {
        match self.top {
            Some(top) if counter <= top => self.set(counter, true),
            top => {
                let start = top.map_or(0, |t| t + 1);
                if counter - start >= REPLAY_WINDOW {
                    self.bits = [0; (REPLAY_WINDOW / 64) as usize];
                } else {
                    for c in start..counter {
                        self.set(c, false);
                    }
                }
                self.set(counter, true);
                self.top = Some(counter);
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub message_id: MessageId,
    pub plaintext: Vec<u8>,
    pub counter: u64,
}

/// Sealing and opening between us and one peer on one connection.
pub struct MessageChannel {
    pub local_id: [u8; 32],
    pub peer_id: [u8; 32],
    seal_key: Key,
    open_key: Key,
    next: u64,
    window: ReplayWindow,
    pub max_plaintext: usize,
}

impl MessageChannel {
    pub fn new(local_id: [u8; 32], peer_id: [u8; 32], keys: &SessionKeys, cb: &[u8]) -> Self {
        Self {
            local_id,
            peer_id,
            seal_key: derive_subkey(&keys.send, cb, &local_id, &peer_id),
            open_key: derive_subkey(&keys.receive, cb, &peer_id, &local_id),
            next: 0,
            window: ReplayWindow::default(),
            max_plaintext: DEFAULT_MAX_PLAINTEXT,
        }
    }

    #[cfg(test)]
    pub fn seal_key(&self) -> &Key {
        &self.seal_key
    }

    #[cfg(test)]
    pub fn open_key(&self) -> &Key {
        &self.open_key
    }

    pub fn seal(
        &mut self,
        kind: &str,
        plaintext: &[u8],
        message_id: &MessageId,
        reply_to: Option<&MessageId>,
    ) -> Vec<u8> {
        let counter = self.next;
        self.next += 1;
        let aad = encode_aad(&self.local_id, &self.peer_id, kind, counter, reply_to);
        let mut inner = message_id.to_vec();
        inner.extend_from_slice(plaintext);
        let ct = ChaCha20Poly1305::new((&self.seal_key).into())
            .encrypt(
                &nonce(counter).into(),
                Payload {
                    msg: &inner,
                    aad: &aad,
                },
            )
            .expect("sealing cannot fail");
        let mut out = vec![VERSION];
        out.extend_from_slice(&counter.to_be_bytes());
        out.extend_from_slice(&ct);
        out
    }

    /// Checks in the order of §13.6 (duplicates are the caller's: it owns the per-peer set).
    pub fn open(
        &mut self,
        kind: &str,
        sealed: &[u8],
        reply_to: Option<&MessageId>,
    ) -> Result<Opened, Rejected> {
        if sealed.len() < OVERHEAD || sealed[0] != VERSION {
            return Err(Rejected(stream::MALFORMED_MESSAGE));
        }
        let counter = u64::from_be_bytes(sealed[1..HEADER_LEN].try_into().expect("8 bytes"));
        if sealed.len() - OVERHEAD > self.max_plaintext {
            return Err(Rejected(stream::FRAME_TOO_LARGE));
        }
        if let Some(r) = self.window.check(counter) {
            return Err(r);
        }
        let aad = encode_aad(&self.peer_id, &self.local_id, kind, counter, reply_to);
        let inner = ChaCha20Poly1305::new((&self.open_key).into())
            .decrypt(
                &nonce(counter).into(),
                Payload {
                    msg: &sealed[HEADER_LEN..],
                    aad: &aad,
                },
            )
            .map_err(|_| Rejected(stream::TAMPERED))?;
        self.window.mark(counter);
        Ok(Opened {
            message_id: inner[..MESSAGE_ID_LEN].try_into().expect("16 bytes"),
            plaintext: inner[MESSAGE_ID_LEN..].to_vec(),
            counter,
        })
    }
}
