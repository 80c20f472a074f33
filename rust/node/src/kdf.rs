//! Transcript, key schedule, confirmation MACs and SAS (PROTOCOL.md §7).

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub const ALPN: &[u8] = b"iroh-pair/1";
/// The pairing version (transcript item 2): version 2 of PROTOCOL.md.
pub const PROTOCOL_VERSION: u8 = 2;
pub const TRANSCRIPT_LABEL: &[u8] = b"iroh-pair/2 pairing transcript";
pub const PAIRING_BINDING_LABEL: &[u8] = b"iroh-pair/2 pairing channel binding";
pub const COMMITMENT_LABEL: &[u8] = b"iroh-pair/2 sas commitment";
pub const NONCE_LEN: usize = 32;

/// HKDF labels in the order of PROTOCOL.md §7.4.
pub const LABELS: [(&str, &[u8]); 8] = [
    ("host_to_joiner", b"iroh-pair/2 key host->joiner"),
    ("joiner_to_host", b"iroh-pair/2 key joiner->host"),
    ("host_confirm", b"iroh-pair/2 confirm host"),
    ("joiner_confirm", b"iroh-pair/2 confirm joiner"),
    ("joiner_accept", b"iroh-pair/2 accept joiner"),
    ("sas", b"iroh-pair/2 sas"),
    ("host_seal", b"iroh-pair/2 seal host->joiner"),
    ("joiner_seal", b"iroh-pair/2 seal joiner->host"),
];

/// `u32 length || x`, the encoding of transcript and commitment items.
fn lp(out: &mut Vec<u8>, item: &[u8]) {
    out.extend_from_slice(&(item.len() as u32).to_be_bytes());
    out.extend_from_slice(item);
}

/// `SHA-256(lp(label) || lp(joiner_nonce))` (§7.3).
pub fn commitment(joiner_nonce: &[u8; NONCE_LEN]) -> Key {
    let mut enc = Vec::with_capacity(8 + COMMITMENT_LABEL.len() + NONCE_LEN);
    lp(&mut enc, COMMITMENT_LABEL);
    lp(&mut enc, joiner_nonce);
    Sha256::digest(enc).into()
}

/// Whether `joiner_nonce` opens `commitment` (constant time).
pub fn opens_commitment(commitment_value: &[u8; 32], joiner_nonce: &[u8; NONCE_LEN]) -> bool {
    let mine = commitment(joiner_nonce);
    mine.iter()
        .zip(commitment_value)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// 32 bytes from the OS CSPRNG: a fresh nonce.
pub fn fresh_nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).expect("the OS random number generator failed");
    n
}

pub type Key = [u8; 32];

/// The public inputs of §7.3.
pub struct Transcript<'a> {
    pub joiner_id: &'a [u8],
    pub host_id: &'a [u8],
    pub session_tag: &'a [u8],
    pub joiner_msg: &'a [u8],
    pub host_msg: &'a [u8],
    pub channel_binding: &'a [u8],
    pub commitment: &'a [u8],
    pub host_nonce: &'a [u8],
}

impl Transcript<'_> {
    pub fn items(&self) -> [&[u8]; 13] {
        [
            TRANSCRIPT_LABEL,
            &[PROTOCOL_VERSION],
            ALPN,
            b"joiner",
            b"host",
            self.joiner_id,
            self.host_id,
            self.session_tag,
            self.joiner_msg,
            self.host_msg,
            self.channel_binding,
            self.commitment,
            self.host_nonce,
        ]
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for item in self.items() {
            lp(&mut out, item);
        }
        out
    }

    pub fn hash(&self) -> Key {
        Sha256::digest(self.encode()).into()
    }
}

pub fn hkdf_sha256(ikm: &[u8], salt: &[u8], info: &[u8]) -> Key {
    let mut out = [0u8; 32];
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, &mut out)
        .expect("32 bytes is a valid HKDF-SHA256 length");
    out
}

#[derive(Clone)]
pub struct PairingKeys {
    pub host_to_joiner: Key,
    pub joiner_to_host: Key,
    pub host_confirm: Key,
    pub joiner_confirm: Key,
    pub joiner_accept: Key,
    pub sas: Key,
    pub host_seal: Key,
    pub joiner_seal: Key,
}

/// Directional session keys of one side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionKeys {
    pub send: Key,
    pub receive: Key,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Host,
    Joiner,
}

impl PairingKeys {
    pub fn derive(spake_key: &[u8], th: &[u8]) -> Self {
        let k = |i: usize| hkdf_sha256(spake_key, th, LABELS[i].1);
        Self {
            host_to_joiner: k(0),
            joiner_to_host: k(1),
            host_confirm: k(2),
            joiner_confirm: k(3),
            joiner_accept: k(4),
            sas: k(5),
            host_seal: k(6),
            joiner_seal: k(7),
        }
    }

    pub fn session_keys(&self, role: Role) -> SessionKeys {
        match role {
            Role::Host => SessionKeys {
                send: self.host_to_joiner,
                receive: self.joiner_to_host,
            },
            Role::Joiner => SessionKeys {
                send: self.joiner_to_host,
                receive: self.host_to_joiner,
            },
        }
    }
}

pub fn confirmation_mac(key: &[u8], th: &[u8]) -> Key {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(th);
    mac.finalize().into_bytes().into()
}

/// Constant-time check.
pub fn verify_confirmation_mac(key: &[u8], th: &[u8], tag: &[u8]) -> bool {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(th);
    mac.verify_slice(tag).is_ok()
}

/// `HMAC-SHA256(sas, host_nonce || joiner_nonce)` (§7.6).
pub fn sas_value(sas_key: &[u8], host_nonce: &[u8], joiner_nonce: &[u8]) -> Key {
    let mut mac = Hmac::<Sha256>::new_from_slice(sas_key).expect("HMAC takes any key length");
    mac.update(host_nonce);
    mac.update(joiner_nonce);
    mac.finalize().into_bytes().into()
}

/// Six digits: `int_be(value[0..8]) mod 10^6`, zero-padded.
pub fn sas_digits(value: &[u8]) -> String {
    let n = u64::from_be_bytes(value[..8].try_into().expect("8 bytes"));
    format!("{:06}", n % 1_000_000)
}

/// The SAS of §7.6 from the `sas` key and both nonces.
pub fn sas(sas_key: &[u8], host_nonce: &[u8], joiner_nonce: &[u8]) -> String {
    sas_digits(&sas_value(sas_key, host_nonce, joiner_nonce))
}
