//! Pairing codes: `<words>.<tag>.<ticket>` (PROTOCOL.md §4.1).

use data_encoding::BASE32_NOPAD;
use unicode_normalization::UnicodeNormalization;

use crate::words::{CodeError, generate_words, normalize_words, secret_bytes};

pub const SESSION_TAG_LEN: usize = 16;
const TAG_CHARS: usize = 26;
const MAX_TICKET: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairingCode {
    pub words: Vec<String>,
    pub tag: [u8; SESSION_TAG_LEN],
    pub ticket: String,
}

/// Lower-case RFC 4648 base32 of the tag, no padding.
pub fn encode_tag(tag: &[u8; SESSION_TAG_LEN]) -> String {
    BASE32_NOPAD.encode(tag).to_ascii_lowercase()
}

/// Case-insensitive; only the canonical form (zero unused bits) is accepted.
pub fn decode_tag(text: &str) -> Result<[u8; SESSION_TAG_LEN], CodeError> {
    if text.len() != TAG_CHARS || !text.is_ascii() {
        return Err(CodeError::BadSessionTag);
    }
    let raw = BASE32_NOPAD
        .decode(text.to_ascii_uppercase().as_bytes())
        .map_err(|_| CodeError::BadSessionTag)?;
    let tag: [u8; SESSION_TAG_LEN] = raw.try_into().map_err(|_| CodeError::BadSessionTag)?;
    if encode_tag(&tag) != text.to_ascii_lowercase() {
        return Err(CodeError::BadSessionTag);
    }
    Ok(tag)
}

fn check_ticket(ticket: &str) -> Result<(), CodeError> {
    if ticket.is_empty()
        || ticket.len() > MAX_TICKET
        || !ticket.chars().all(|c| ('!'..='~').contains(&c))
    {
        return Err(CodeError::BadTicket);
    }
    Ok(())
}

impl PairingCode {
    pub fn generate(ticket: &str, word_count: usize) -> Result<Self, CodeError> {
        check_ticket(ticket)?;
        let mut tag = [0u8; SESSION_TAG_LEN];
        getrandom::fill(&mut tag).expect("the OS random number generator failed");
        Ok(Self {
            words: generate_words(word_count)?,
            tag,
            ticket: ticket.to_owned(),
        })
    }

    pub fn parse(text: &str) -> Result<Self, CodeError> {
        let folded: String = text.nfkc().collect();
        let parts: Vec<&str> = folded.trim().splitn(3, '.').collect();
        let [words, tag, ticket] = parts[..] else {
            return Err(CodeError::Malformed);
        };
        let words = normalize_words(words)?;
        let tag = decode_tag(tag)?;
        check_ticket(ticket)?;
        Ok(Self {
            words,
            tag,
            ticket: ticket.to_owned(),
        })
    }

    pub fn password(&self) -> Vec<u8> {
        secret_bytes(&self.words)
    }
}

impl std::fmt::Display for PairingCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}.{}.{}",
            self.words.join("-"),
            encode_tag(&self.tag),
            self.ticket
        )
    }
}
