//! Envelope (§2), framing (§3), pairing messages (§6), device info (§6.1), sealing (§7.7),
//! and the code tables of §10.

use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};

pub const ENVELOPE_VERSION: u8 = 1;
pub const MAX_KIND_LEN: usize = 32;
/// Largest pairing frame body.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Pairing version 2 (§2.1).
pub const PAIR_KIND: &str = "pair2";
/// Pairing version 1: refused with UNSUPPORTED_VERSION.
pub const PAIR_KIND_V1: &str = "pair";
pub const MSG_KIND: &str = "msg";
/// The largest first frame of a `pair`/`pair2` stream: a pairing message and the header (§9.1).
pub const MAX_PAIRING_FIRST_FRAME: usize = MAX_MESSAGE + 64;

/// Reject / failure reason codes (§10.1).
pub mod reject {
    pub const UNSPECIFIED: u16 = 0;
    pub const MALFORMED: u16 = 1;
    pub const UNEXPECTED: u16 = 2;
    pub const TOO_LARGE: u16 = 3;
    pub const BAD_TAG: u16 = 4;
    pub const EXPIRED: u16 = 5;
    pub const BURNED: u16 = 6;
    pub const USED: u16 = 7;
    pub const BUSY: u16 = 8;
    pub const ID_MISMATCH: u16 = 9;
    pub const WRONG_CODE: u16 = 10;
    pub const TIMEOUT: u16 = 11;
    pub const CANCELLED: u16 = 12;
    pub const INTERNAL: u16 = 13;
    pub const UNSUPPORTED_VERSION: u16 = 14;
    pub const BAD_COMMITMENT: u16 = 15;
    pub const SAS_DECLINED: u16 = 16;
    pub const CONNECTION_LOST: u16 = 0x400;

    pub fn name(code: u16) -> &'static str {
        match code {
            MALFORMED => "MALFORMED",
            UNEXPECTED => "UNEXPECTED",
            TOO_LARGE => "TOO_LARGE",
            BAD_TAG => "BAD_TAG",
            EXPIRED => "EXPIRED",
            BURNED => "BURNED",
            USED => "USED",
            BUSY => "BUSY",
            ID_MISMATCH => "ID_MISMATCH",
            WRONG_CODE => "WRONG_CODE",
            TIMEOUT => "TIMEOUT",
            CANCELLED => "CANCELLED",
            INTERNAL => "INTERNAL",
            UNSUPPORTED_VERSION => "UNSUPPORTED_VERSION",
            BAD_COMMITMENT => "BAD_COMMITMENT",
            SAS_DECLINED => "SAS_DECLINED",
            CONNECTION_LOST => "CONNECTION_LOST",
            _ => "UNSPECIFIED",
        }
    }

    /// A received code this version does not know is UNSPECIFIED.
    pub fn from_wire(code: u16) -> u16 {
        if (1..=16).contains(&code) {
            code
        } else {
            UNSPECIFIED
        }
    }
}

/// QUIC application close codes (§10.2).
#[allow(dead_code)]
pub mod close {
    pub const OK: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const PAIRING_FAILED: u32 = 2;
    pub const SHUTDOWN: u32 = 3;
    pub const NOT_PAIRED: u32 = 4;
}

/// Stream error codes (§10.3).
#[allow(dead_code)]
pub mod stream {
    pub const HANDLER_ERROR: u32 = 3;
    pub const FRAME_TOO_LARGE: u32 = 4;
    pub const UNKNOWN_KIND: u32 = 5;
    pub const BAD_ENVELOPE: u32 = 6;
    pub const TIMEOUT: u32 = 7;
    pub const NOT_ADMITTED: u32 = 8;
    pub const TAMPERED: u32 = 16;
    pub const REPLAYED: u32 = 17;
    pub const DUPLICATE: u32 = 18;
    pub const MALFORMED_MESSAGE: u32 = 19;
    pub const TOO_OLD: u32 = 20;
    pub const IN_PROGRESS: u32 = 21;

    pub fn name(code: u64) -> &'static str {
        match code {
            1 => "CANCELLED",
            2 => "DROPPED",
            3 => "HANDLER_ERROR",
            4 => "FRAME_TOO_LARGE",
            5 => "UNKNOWN_KIND",
            6 => "BAD_ENVELOPE",
            7 => "TIMEOUT",
            8 => "NOT_ADMITTED",
            16 => "TAMPERED",
            17 => "REPLAYED",
            18 => "DUPLICATE",
            19 => "MALFORMED_MESSAGE",
            20 => "TOO_OLD",
            21 => "IN_PROGRESS",
            _ => "UNKNOWN",
        }
    }
}

/// A protocol failure: a reason code (§10.1) and a text for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoError {
    pub code: u16,
    pub reason: String,
}

impl ProtoError {
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for ProtoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", reject::name(self.code), self.reason)
    }
}

impl std::error::Error for ProtoError {}

fn malformed(what: impl Into<String>) -> ProtoError {
    ProtoError::new(reject::MALFORMED, what)
}

pub fn valid_kind(kind: &str) -> bool {
    (1..=MAX_KIND_LEN).contains(&kind.len())
        && kind
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
}

/// The envelope header of a stream of `kind`.
pub fn encode_header(kind: &str) -> Vec<u8> {
    assert!(valid_kind(kind), "invalid stream kind {kind:?}");
    let mut out = vec![ENVELOPE_VERSION, kind.len() as u8];
    out.extend_from_slice(kind.as_bytes());
    out
}

/// `(kind, bytes consumed)` of the header at the start of a first frame's body (the node
/// reads headers with [`FrameDecoder`]; this is the vectors' and the fuzzers' reference).
#[cfg_attr(not(test), allow(dead_code))]
pub fn decode_header(data: &[u8]) -> Result<(String, usize), ProtoError> {
    if data.len() < 2 {
        return Err(malformed("envelope prefix is 2 bytes"));
    }
    if data[0] != ENVELOPE_VERSION {
        return Err(malformed(format!(
            "unsupported envelope version {}",
            data[0]
        )));
    }
    let n = data[1] as usize;
    if !(1..=MAX_KIND_LEN).contains(&n) || data.len() < 2 + n {
        return Err(malformed("bad stream kind length"));
    }
    let kind = std::str::from_utf8(&data[2..2 + n]).map_err(|_| malformed("kind is not ASCII"))?;
    if !valid_kind(kind) {
        return Err(malformed("invalid stream kind name"));
    }
    Ok((kind.to_owned(), 2 + n))
}

pub fn encode_frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

// ------------------------------------------------------------------------------ frame decoder

/// How far a buffer may be allocated beyond the bytes that have arrived (§9.1: a declared
/// length is never reserved up front).
pub const FRAME_SLACK: usize = 64 * 1024;

/// The acceptor's limit per stream kind on a first frame (header included); 0 refuses the kind
/// with NOT_ADMITTED before its body is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KindLimits {
    /// `pair` and `pair2`.
    pub pairing: usize,
    /// Every other kind.
    pub other: usize,
}

impl KindLimits {
    pub fn limit(&self, kind: &str) -> usize {
        if kind == PAIR_KIND || kind == PAIR_KIND_V1 {
            self.pairing
        } else {
            self.other
        }
    }
}

/// Why a frame could not be read; each maps to a stream error code (§10.3) or a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The declared length is over the limit (FRAME_TOO_LARGE, or TOO_LARGE in a handshake).
    TooLarge,
    /// The envelope header is malformed (BAD_ENVELOPE).
    BadEnvelope,
    /// The kind is not allowed from this peer (NOT_ADMITTED).
    NotAdmitted,
}

impl FrameError {
    pub fn stream_code(self) -> u32 {
        match self {
            FrameError::TooLarge => stream::FRAME_TOO_LARGE,
            FrameError::BadEnvelope => stream::BAD_ENVELOPE,
            FrameError::NotAdmitted => stream::NOT_ADMITTED,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Length,
    /// Envelope version and kind length.
    Prefix,
    Kind,
    Body,
    Done,
}

/// A push decoder of one `u32 length || body` frame (§3), optionally a first frame whose
/// body starts with the envelope header (§2), checked against per-kind limits before the body
/// is read. It says how many bytes it wants next ([`FrameDecoder::want`]), so a reader never
/// takes bytes past the frame, and its buffer never holds more than what has arrived plus
/// [`FRAME_SLACK`].
#[derive(Debug)]
pub struct FrameDecoder {
    stage: Stage,
    len_buf: [u8; 4],
    got: usize,
    declared: usize,
    max: usize,
    limits: Option<KindLimits>,
    kind_len: usize,
    kind: Option<String>,
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// A frame of at most `max` bytes (no envelope header).
    pub fn plain(max: usize) -> Self {
        Self::new(max, None)
    }

    /// A first frame: envelope header, then the body under the kind's limit.
    pub fn first(limits: KindLimits) -> Self {
        Self::new(limits.pairing.max(limits.other), Some(limits))
    }

    fn new(max: usize, limits: Option<KindLimits>) -> Self {
        Self {
            stage: Stage::Length,
            len_buf: [0; 4],
            got: 0,
            declared: 0,
            max,
            limits,
            kind_len: 0,
            kind: None,
            buf: Vec::new(),
        }
    }

    /// How many bytes to read next (0 once the frame is complete).
    pub fn want(&self) -> usize {
        match self.stage {
            Stage::Length => 4 - self.got,
            Stage::Prefix => 2 - self.buf.len(),
            Stage::Kind => 2 + self.kind_len - self.buf.len(),
            Stage::Body => self.declared - self.buf.len(),
            Stage::Done => 0,
        }
    }

    /// Whether any byte of the frame has arrived.
    pub fn started(&self) -> bool {
        self.got > 0
    }

    pub fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }

    /// The kind, once the header has been read (first frames only).
    pub fn kind(&self) -> Option<&str> {
        self.kind.as_deref()
    }

    /// Allocated buffer capacity (for the allocation bound's tests).
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Takes the next bytes; at most [`Self::want`] of them are used, the number is returned.
    pub fn push(&mut self, data: &[u8]) -> Result<usize, FrameError> {
        let mut used = 0;
        while used < data.len() && self.stage != Stage::Done {
            let n = self.want().min(data.len() - used);
            let chunk = &data[used..used + n];
            used += n;
            if self.stage == Stage::Length {
                self.len_buf[self.got..self.got + n].copy_from_slice(chunk);
                self.got += n;
            } else {
                self.grow(n);
                self.buf.extend_from_slice(chunk);
            }
            if self.want() == 0 {
                self.advance()?;
            }
        }
        Ok(used)
    }

    /// Room for `n` more bytes, never more than [`FRAME_SLACK`] past the arrived ones.
    fn grow(&mut self, n: usize) {
        let need = self.buf.len() + n;
        if need <= self.buf.capacity() {
            return;
        }
        let step = self.buf.len().clamp(n, FRAME_SLACK.max(n));
        let target = (self.buf.len() + step).min(self.declared.max(need));
        self.buf.reserve_exact(target - self.buf.len());
    }

    fn advance(&mut self) -> Result<(), FrameError> {
        match self.stage {
            Stage::Length => {
                self.declared = u32::from_be_bytes(self.len_buf) as usize;
                if self.declared > self.max {
                    return Err(FrameError::TooLarge);
                }
                self.stage = if self.limits.is_some() {
                    if self.declared < 2 {
                        return Err(FrameError::BadEnvelope);
                    }
                    Stage::Prefix
                } else {
                    Stage::Body
                };
            }
            Stage::Prefix => {
                let (version, n) = (self.buf[0], self.buf[1] as usize);
                if version != ENVELOPE_VERSION
                    || !(1..=MAX_KIND_LEN).contains(&n)
                    || self.declared < 2 + n
                {
                    return Err(FrameError::BadEnvelope);
                }
                self.kind_len = n;
                self.stage = Stage::Kind;
            }
            Stage::Kind => {
                let kind = std::str::from_utf8(&self.buf[2..])
                    .ok()
                    .filter(|k| valid_kind(k))
                    .ok_or(FrameError::BadEnvelope)?
                    .to_owned();
                let limits = self.limits.expect("first frames have limits");
                let limit = limits.limit(&kind);
                self.kind = Some(kind);
                if limit == 0 {
                    return Err(FrameError::NotAdmitted);
                }
                if self.declared > limit {
                    return Err(FrameError::TooLarge);
                }
                self.stage = Stage::Body;
            }
            Stage::Body => {}
            Stage::Done => return Ok(()),
        }
        if self.stage == Stage::Body && self.want() == 0 {
            self.stage = Stage::Done;
        }
        Ok(())
    }

    /// The frame's body (header included for a first frame), once done.
    pub fn into_body(self) -> Option<Vec<u8>> {
        (self.stage == Stage::Done).then_some(self.buf)
    }
}

// ------------------------------------------------------------------------------ device info

pub const FIELD_LIMITS: [(usize, usize); 4] = [(1, 64), (1, 32), (0, 64), (0, 32)];
pub const MAX_DEVICE_INFO: usize = 196;
pub const AEAD_TAG_LEN: usize = 16;
pub const MIN_SEALED: usize = AEAD_TAG_LEN;
pub const MAX_SEALED: usize = MAX_DEVICE_INFO + AEAD_TAG_LEN;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub name: String,
    pub device_type: String,
    pub os: String,
    pub app_version: String,
}

impl DeviceInfo {
    fn fields(&self) -> [&str; 4] {
        [&self.name, &self.device_type, &self.os, &self.app_version]
    }

    /// Checks the limits of §6.1.
    pub fn validate(&self) -> Result<(), String> {
        for (i, (value, (lo, hi))) in self.fields().iter().zip(FIELD_LIMITS).enumerate() {
            if !(lo..=hi).contains(&value.len()) {
                return Err(format!(
                    "device info field {i} must be {lo}..{hi} UTF-8 bytes"
                ));
            }
            if value.chars().any(char::is_control) {
                return Err(format!(
                    "device info field {i} contains a control character"
                ));
            }
        }
        if !self
            .device_type
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
        {
            return Err("device_type is a token of [a-z0-9._-]".into());
        }
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for f in self.fields() {
            out.push(f.len() as u8);
            out.extend_from_slice(f.as_bytes());
        }
        out
    }

    pub fn decode(data: &[u8]) -> Result<Self, ProtoError> {
        let mut values = Vec::with_capacity(4);
        let mut pos = 0;
        for _ in 0..4 {
            let n = *data
                .get(pos)
                .ok_or_else(|| malformed("truncated device info"))? as usize;
            let raw = data
                .get(pos + 1..pos + 1 + n)
                .ok_or_else(|| malformed("truncated device info"))?;
            pos += 1 + n;
            values.push(
                String::from_utf8(raw.to_vec())
                    .map_err(|_| malformed("device info is not UTF-8"))?,
            );
        }
        if pos != data.len() {
            return Err(malformed("trailing bytes after device info"));
        }
        let mut it = values.into_iter();
        let info = Self {
            name: it.next().unwrap_or_default(),
            device_type: it.next().unwrap_or_default(),
            os: it.next().unwrap_or_default(),
            app_version: it.next().unwrap_or_default(),
        };
        info.validate().map_err(malformed)?;
        Ok(info)
    }
}

/// ChaCha20-Poly1305 with a zero nonce and AAD = TH (§7.7).
pub fn seal(key: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    ChaCha20Poly1305::new(key.into())
        .encrypt(
            &[0u8; 12].into(),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("sealing cannot fail")
}

pub fn open_sealed(key: &[u8; 32], sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, ProtoError> {
    ChaCha20Poly1305::new(key.into())
        .decrypt(&[0u8; 12].into(), Payload { msg: sealed, aad })
        .map_err(|_| malformed("sealed device info failed authentication"))
}

// ------------------------------------------------------------------------------ messages

pub const SIDE_A: u8 = 0x41;
pub const SIDE_B: u8 = 0x42;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Hello {
        session_tag: [u8; 16],
        joiner_id: [u8; 32],
        spake_msg: [u8; 33],
        commitment: [u8; 32],
    },
    Reply {
        host_id: [u8; 32],
        spake_msg: [u8; 33],
        host_nonce: [u8; 32],
        host_mac: [u8; 32],
    },
    Confirm {
        joiner_mac: [u8; 32],
        joiner_nonce: [u8; 32],
        sealed_info: Vec<u8>,
    },
    Complete {
        sealed_info: Vec<u8>,
    },
    Accept {
        accept_mac: [u8; 32],
    },
    Reject {
        code: u16,
        text: String,
    },
}

pub const HELLO_LEN: usize = 114;
pub const REPLY_LEN: usize = 130;
pub const ACCEPT_LEN: usize = 33;

fn take<const N: usize>(body: &[u8], at: usize) -> [u8; N] {
    body[at..at + N].try_into().expect("length checked")
}

impl Message {
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::Reply { .. } => "Reply",
            Message::Confirm { .. } => "Confirm",
            Message::Complete { .. } => "Complete",
            Message::Accept { .. } => "Accept",
            Message::Reject { .. } => "Reject",
        }
    }

    /// A Reject whose text is truncated at a character boundary to 255 bytes.
    pub fn reject(code: u16, text: &str) -> Self {
        let mut end = text.len().min(255);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Message::Reject {
            code,
            text: text[..end].to_owned(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Message::Hello {
                session_tag,
                joiner_id,
                spake_msg,
                commitment,
            } => {
                out.push(0x01);
                out.extend_from_slice(session_tag);
                out.extend_from_slice(joiner_id);
                out.extend_from_slice(spake_msg);
                out.extend_from_slice(commitment);
            }
            Message::Reply {
                host_id,
                spake_msg,
                host_nonce,
                host_mac,
            } => {
                out.push(0x02);
                out.extend_from_slice(host_id);
                out.extend_from_slice(spake_msg);
                out.extend_from_slice(host_nonce);
                out.extend_from_slice(host_mac);
            }
            Message::Confirm {
                joiner_mac,
                joiner_nonce,
                sealed_info,
            } => {
                out.push(0x03);
                out.extend_from_slice(joiner_mac);
                out.extend_from_slice(joiner_nonce);
                out.extend_from_slice(&(sealed_info.len() as u16).to_be_bytes());
                out.extend_from_slice(sealed_info);
            }
            Message::Complete { sealed_info } => {
                out.push(0x04);
                out.extend_from_slice(&(sealed_info.len() as u16).to_be_bytes());
                out.extend_from_slice(sealed_info);
            }
            Message::Accept { accept_mac } => {
                out.push(0x05);
                out.extend_from_slice(accept_mac);
            }
            Message::Reject { code, text } => {
                out.push(0x7f);
                out.extend_from_slice(&code.to_be_bytes());
                out.push(text.len() as u8);
                out.extend_from_slice(text.as_bytes());
            }
        }
        out
    }

    pub fn decode(body: &[u8]) -> Result<Self, ProtoError> {
        if body.len() > MAX_MESSAGE {
            return Err(ProtoError::new(
                reject::TOO_LARGE,
                format!("{} > {MAX_MESSAGE} bytes", body.len()),
            ));
        }
        let Some(&t) = body.first() else {
            return Err(malformed("empty message"));
        };
        match t {
            0x01 => {
                if body.len() != HELLO_LEN {
                    return Err(malformed("Hello: wrong length"));
                }
                if body[49] != SIDE_A {
                    return Err(malformed("Hello: SPAKE2 message is not from side A"));
                }
                Ok(Message::Hello {
                    session_tag: take(body, 1),
                    joiner_id: take(body, 17),
                    spake_msg: take(body, 49),
                    commitment: take(body, 82),
                })
            }
            0x02 => {
                if body.len() != REPLY_LEN {
                    return Err(malformed("Reply: wrong length"));
                }
                if body[33] != SIDE_B {
                    return Err(malformed("Reply: SPAKE2 message is not from side B"));
                }
                Ok(Message::Reply {
                    host_id: take(body, 1),
                    spake_msg: take(body, 33),
                    host_nonce: take(body, 66),
                    host_mac: take(body, 98),
                })
            }
            0x03 => {
                if body.len() < 65 {
                    return Err(malformed("truncated Confirm"));
                }
                Ok(Message::Confirm {
                    joiner_mac: take(body, 1),
                    joiner_nonce: take(body, 33),
                    sealed_info: sealed_field(body, 65, "Confirm")?,
                })
            }
            0x04 => Ok(Message::Complete {
                sealed_info: sealed_field(body, 1, "Complete")?,
            }),
            0x05 => {
                if body.len() != ACCEPT_LEN {
                    return Err(malformed("Accept: wrong length"));
                }
                Ok(Message::Accept {
                    accept_mac: take(body, 1),
                })
            }
            0x7f => {
                if body.len() < 4 || body.len() != 4 + body[3] as usize {
                    return Err(malformed("Reject: wrong length"));
                }
                let text = std::str::from_utf8(&body[4..])
                    .map_err(|_| malformed("Reject: text is not UTF-8"))?
                    .to_owned();
                Ok(Message::Reject {
                    code: u16::from_be_bytes([body[1], body[2]]),
                    text,
                })
            }
            other => Err(malformed(format!("unknown message type 0x{other:02x}"))),
        }
    }
}

fn sealed_field(body: &[u8], at: usize, name: &str) -> Result<Vec<u8>, ProtoError> {
    if body.len() < at + 2 {
        return Err(malformed(format!("truncated {name}")));
    }
    let n = u16::from_be_bytes([body[at], body[at + 1]]) as usize;
    if !(MIN_SEALED..=MAX_SEALED).contains(&n) {
        return Err(malformed(format!(
            "{name}: sealed info length {n} out of range"
        )));
    }
    if body.len() != at + 2 + n {
        return Err(malformed(format!("{name}: wrong length")));
    }
    Ok(body[at + 2..].to_vec())
}
