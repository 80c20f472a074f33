//! The BIP39 English word list and the normalisation of typed secret words (PROTOCOL.md §4.2).

use std::collections::HashMap;
use std::sync::OnceLock;

use unicode_normalization::UnicodeNormalization;

/// The list file shared with the Python package (a data file, not code).
const WORDLIST: &str = include_str!("../../../python/iroh_pair/bip39_english.txt");
pub const MIN_WORDS: usize = 2;
pub const MAX_WORDS: usize = 24;
pub const DEFAULT_WORD_COUNT: usize = 3;

/// Why a pairing code (or its words) is invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeError {
    Malformed,
    UnknownWord(String),
    BadWordCount(usize),
    BadSessionTag,
    BadTicket,
}

impl std::fmt::Display for CodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodeError::Malformed => write!(f, "a pairing code looks like words.tag.ticket"),
            CodeError::UnknownWord(w) => write!(f, "not a pairing code word: {w:?}"),
            CodeError::BadWordCount(n) => {
                write!(
                    f,
                    "a pairing code has {MIN_WORDS}..{MAX_WORDS} words, got {n}"
                )
            }
            CodeError::BadSessionTag => write!(f, "bad session tag"),
            CodeError::BadTicket => write!(f, "bad ticket"),
        }
    }
}

impl std::error::Error for CodeError {}

/// The 2048 words in list order.
pub fn wordlist() -> &'static [&'static str] {
    static WORDS: OnceLock<Vec<&'static str>> = OnceLock::new();
    WORDS.get_or_init(|| WORDLIST.split('\n').filter(|w| !w.is_empty()).collect())
}

fn index() -> &'static HashMap<&'static str, usize> {
    static INDEX: OnceLock<HashMap<&'static str, usize>> = OnceLock::new();
    INDEX.get_or_init(|| {
        wordlist()
            .iter()
            .enumerate()
            .map(|(i, w)| (*w, i))
            .collect()
    })
}

fn is_separator(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '-')
}

/// NFKC, lower case, split on runs of the five separators; every word must be in the list
/// (checked first, in order), then the count must be within 2..=24.
pub fn normalize_words(text: &str) -> Result<Vec<String>, CodeError> {
    let folded = text.nfkc().collect::<String>().to_lowercase();
    let words: Vec<String> = folded
        .split(is_separator)
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect();
    for w in &words {
        if !index().contains_key(w.as_str()) {
            return Err(CodeError::UnknownWord(w.clone()));
        }
    }
    if !(MIN_WORDS..=MAX_WORDS).contains(&words.len()) {
        return Err(CodeError::BadWordCount(words.len()));
    }
    Ok(words)
}

/// The SPAKE2 password: the words joined with one `-`, UTF-8.
pub fn secret_bytes(words: &[String]) -> Vec<u8> {
    words.join("-").into_bytes()
}

/// `count` words drawn uniformly and independently with the OS CSPRNG.
pub fn generate_words(count: usize) -> Result<Vec<String>, CodeError> {
    if !(MIN_WORDS..=MAX_WORDS).contains(&count) {
        return Err(CodeError::BadWordCount(count));
    }
    let mut raw = vec![0u8; 2 * count];
    getrandom::fill(&mut raw).expect("the OS random number generator failed");
    Ok(raw
        .chunks(2)
        // 2048 = 2^11: masking 11 of 16 uniform bits is uniform.
        .map(|c| wordlist()[(u16::from_be_bytes([c[0], c[1]]) & 0x7ff) as usize].to_owned())
        .collect())
}
