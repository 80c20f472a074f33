//! Transcript, key schedule, confirmation MACs and SAS (PROTOCOL.md §7).

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub const ALPN: &[u8] = b"iroh-pair/1";
pub const PROTOCOL_VERSION: u8 = 1;
pub const TRANSCRIPT_LABEL: &[u8] = b"iroh-pair/1 pairing transcript";
pub const PAIRING_BINDING_LABEL: &[u8] = b"iroh-pair/1 pairing channel binding";

/// HKDF labels in the order of PROTOCOL.md §7.4.
pub const LABELS: [(&str, &[u8]); 7] = [
    ("host_to_joiner", b"iroh-pair/1 key host->joiner"),
    ("joiner_to_host", b"iroh-pair/1 key joiner->host"),
    ("host_confirm", b"iroh-pair/1 confirm host"),
    ("joiner_confirm", b"iroh-pair/1 confirm joiner"),
    ("sas", b"iroh-pair/1 sas"),
    ("host_seal", b"iroh-pair/1 seal host->joiner"),
    ("joiner_seal", b"iroh-pair/1 seal joiner->host"),
];

pub type Key = [u8; 32];

/// The public inputs of §7.3.
pub struct Transcript<'a> {
    pub joiner_id: &'a [u8],
    pub host_id: &'a [u8],
    pub session_tag: &'a [u8],
    pub joiner_msg: &'a [u8],
    pub host_msg: &'a [u8],
    pub channel_binding: &'a [u8],
}

impl Transcript<'_> {
    pub fn items(&self) -> [&[u8]; 11] {
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
        ]
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for item in self.items() {
            out.extend_from_slice(&(item.len() as u32).to_be_bytes());
            out.extend_from_slice(item);
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
            sas: k(4),
            host_seal: k(5),
            joiner_seal: k(6),
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

pub fn sas_digits(sas_key: &[u8]) -> String {
    let n = u64::from_be_bytes(sas_key[..8].try_into().expect("8 bytes"));
    format!("{:06}", n % 1_000_000)
}
