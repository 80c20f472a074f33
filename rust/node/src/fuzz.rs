//! Property-based fuzzing (proptest) of every decoder in the node that reads peer bytes: the
//! envelope header, the frame decoder (first frames with per-kind limits, and plain frames),
//! the pairing messages of version 2 and the machines that consume them, device info,
//! sealed messages, pairing codes (words, tag, ticket) and iroh tickets.
//!
//! Properties: nothing panics; only the protocol's typed errors come out (`ProtoError` with
//! the codes listed per decoder, `FrameError`, `Rejected` with a §10.3 code, `CodeError`);
//! valid encodings round-trip (and every accepted input is the canonical encoding of what it
//! decoded to); nothing allocates past its bound, measured with a counting allocator on the
//! test's own thread.
//!
//! Cases: `PROPTEST_CASES` (default [`DEFAULT_CASES`] = 2,000 per property; 17 properties, so
//! 34,000 generated cases per `cargo test` run in CI, ~0.3 s in release). A longer run:
//! `rust/node/fuzz.sh [CASES]` (default 200,000 per property, i.e.
//! `PROPTEST_CASES=200000 cargo test --release -p iroh-pair-node fuzz::`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::Config;

use crate::code::{PairingCode, decode_tag, encode_tag};
use crate::kdf::SessionKeys;
use crate::messaging::MessageChannel;
use crate::pairing::{HostHandshake, JoinerHandshake, Offer, OfferBook, os_rng};
use crate::wire::{
    DeviceInfo, FRAME_SLACK, FrameDecoder, FrameError, KindLimits, MAX_MESSAGE,
    MAX_PAIRING_FIRST_FRAME, Message, decode_header, encode_frame, encode_header, reject, stream,
    valid_kind,
};
use crate::words::{CodeError, normalize_words, wordlist};

pub const DEFAULT_CASES: u32 = 2_000;

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    Config {
        cases,
        // Findings are kept as explicit regression tests below, not in a file.
        failure_persistence: None,
        ..Config::default()
    }
}

// ------------------------------------------------------------------ allocation accounting

struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn add(n: usize) {
    let _ = LIVE.try_with(|l| {
        let v = l.get() + n;
        l.set(v);
        let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
    });
}

fn sub(n: usize) {
    let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(n)));
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counters are
// thread-local cells with const initialisers, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            add(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        sub(layout.size());
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            sub(layout.size());
            add(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result with the peak of bytes it kept allocated at once (on this
/// thread, above what was live before; the result itself counts).
pub fn peak_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let r = f();
    let peak = PEAK.with(Cell::get).saturating_sub(base);
    (r, peak)
}

// ------------------------------------------------------------------ strategies

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn arr<const N: usize>() -> impl Strategy<Value = [u8; N]> {
    proptest::collection::vec(any::<u8>(), N).prop_map(|v| v.try_into().expect("N bytes"))
}

fn kind() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("pair2".to_owned()),
        Just("pair".to_owned()),
        Just("msg".to_owned()),
        "[a-z0-9._-]{1,32}",
    ]
}

fn token(min: usize, max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[a-z0-9._-]{{{min},{max}}}")).expect("regex")
}

fn text(max_bytes: usize) -> impl Strategy<Value = String> {
    // printable text of any script, cut to a byte budget at a character boundary
    "\\PC{0,40}".prop_map(move |s: String| {
        let mut end = s.len().min(max_bytes);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_owned()
    })
}

fn device_info() -> impl Strategy<Value = DeviceInfo> {
    (text(64), token(1, 32), text(64), text(32)).prop_filter_map(
        "name needs 1..64 bytes",
        |(name, device_type, os, app_version)| {
            let info = DeviceInfo {
                name,
                device_type,
                os,
                app_version,
            };
            info.validate().is_ok().then_some(info)
        },
    )
}

fn side(mut m: [u8; 33], side: u8) -> [u8; 33] {
    m[0] = side;
    m
}

fn sealed_len() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 16..=212)
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (arr::<16>(), arr::<32>(), arr::<33>(), arr::<32>()).prop_map(|(t, j, s, c)| {
            Message::Hello {
                session_tag: t,
                joiner_id: j,
                spake_msg: side(s, 0x41),
                commitment: c,
            }
        }),
        (arr::<32>(), arr::<33>(), arr::<32>(), arr::<32>()).prop_map(|(h, s, n, m)| {
            Message::Reply {
                host_id: h,
                spake_msg: side(s, 0x42),
                host_nonce: n,
                host_mac: m,
            }
        }),
        (arr::<32>(), arr::<32>(), sealed_len()).prop_map(|(m, n, s)| Message::Confirm {
            joiner_mac: m,
            joiner_nonce: n,
            sealed_info: s,
        }),
        sealed_len().prop_map(|s| Message::Complete { sealed_info: s }),
        arr::<32>().prop_map(|m| Message::Accept { accept_mac: m }),
        (any::<u16>(), text(255)).prop_map(|(c, t)| Message::Reject { code: c, text: t }),
    ]
}

/// A valid encoding, then one mutation: a flipped byte, a cut, or bytes appended.
fn mutated(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let n = valid.len();
    prop_oneof![
        (0..n.max(1), 1u8..=255).prop_map({
            let v = valid.clone();
            move |(i, x)| {
                let mut v = v.clone();
                if !v.is_empty() {
                    let at = i % v.len();
                    v[at] ^= x;
                }
                v
            }
        }),
        (0..n.max(1)).prop_map({
            let v = valid.clone();
            move |cut| v[..cut].to_vec()
        }),
        bytes(8).prop_map(move |extra| {
            let mut v = valid.clone();
            v.extend(extra);
            v
        }),
    ]
}

/// Splits `data` into chunks of arbitrary sizes.
fn chunked(data: Vec<u8>) -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
    let n = data.len();
    (
        Just(data),
        proptest::collection::vec(1usize..64, 0..(n / 8 + 2)),
    )
}

const MESSAGE_CODES: [u16; 2] = [reject::MALFORMED, reject::TOO_LARGE];

// ------------------------------------------------------------------ frame decoder

/// Feeds `data` in chunks the way the node's reader does (never more than `want()`).
/// Returns the outcome and checks the allocation bound after every push.
fn feed(
    dec: &mut FrameDecoder,
    data: &[u8],
    chunks: &[usize],
) -> Result<Option<usize>, TestCaseError> {
    let mut pos = 0;
    let mut sizes = chunks.iter().copied().chain(std::iter::repeat(usize::MAX));
    while !dec.is_done() && pos < data.len() {
        let take = sizes
            .next()
            .unwrap_or(usize::MAX)
            .min(dec.want())
            .min(data.len() - pos);
        prop_assert!(take > 0);
        match dec.push(&data[pos..pos + take]) {
            Ok(used) => {
                prop_assert_eq!(used, take);
                pos += used;
            }
            Err(_) => return Ok(None),
        }
        prop_assert!(
            dec.capacity() <= pos + FRAME_SLACK,
            "capacity {} after {} bytes",
            dec.capacity(),
            pos
        );
    }
    Ok(Some(pos))
}

/// The reference result of a first frame: what a one-shot reader decides.
fn reference_first(data: &[u8], limits: KindLimits) -> Option<Result<Vec<u8>, FrameError>> {
    let n = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let body = &data[4..];
    if n > limits.pairing.max(limits.other) {
        return Some(Err(FrameError::TooLarge));
    }
    if n < 2 {
        return Some(Err(FrameError::BadEnvelope));
    }
    let prefix = body.get(..2)?;
    let l = prefix[1] as usize;
    if prefix[0] != 1 || !(1..=32).contains(&l) || n < 2 + l {
        return Some(Err(FrameError::BadEnvelope));
    }
    let kind = body.get(2..2 + l)?;
    let Some(kind) = std::str::from_utf8(kind).ok().filter(|k| valid_kind(k)) else {
        return Some(Err(FrameError::BadEnvelope));
    };
    let limit = limits.limit(kind);
    if limit == 0 {
        return Some(Err(FrameError::NotAdmitted));
    }
    if n > limit {
        return Some(Err(FrameError::TooLarge));
    }
    Some(Ok(body.get(..n)?.to_vec()))
}

fn limits() -> impl Strategy<Value = KindLimits> {
    prop_oneof![
        Just(crate::node::UNKNOWN_LIMITS),
        Just(crate::node::PAIRED_LIMITS),
        (0usize..200, 0usize..200).prop_map(|(p, o)| KindLimits {
            pairing: p,
            other: o
        }),
    ]
}

/// A first frame that is valid for some kind, or nearly so.
fn first_frame() -> impl Strategy<Value = Vec<u8>> {
    (kind(), bytes(300), any::<bool>(), 0u32..400).prop_map(|(k, body, honest, fake)| {
        let mut b = encode_header(&k);
        b.extend(body);
        let mut f = encode_frame(&b);
        if !honest {
            f[..4].copy_from_slice(&fake.to_be_bytes());
        }
        f
    })
}

proptest! {
    #![proptest_config(config())]

    /// Envelope header: typed errors only; an accepted header is canonical.
    #[test]
    fn envelope_header(data in prop_oneof![bytes(48), first_frame().prop_map(|f| f[4..].to_vec())]) {
        let (r, peak) = peak_during(|| decode_header(&data));
        prop_assert!(peak <= 256, "decode_header kept {peak} bytes");
        match r {
            Ok((kind, used)) => {
                prop_assert!(valid_kind(&kind));
                prop_assert_eq!(&encode_header(&kind)[..], &data[..used]);
            }
            Err(e) => prop_assert_eq!(e.code, reject::MALFORMED),
        }
    }

    /// First frames: the push decoder agrees with a one-shot reference, never takes bytes past
    /// the frame, and never holds more than what arrived plus FRAME_SLACK.
    #[test]
    fn first_frame_decoder(
        (data, chunks) in prop_oneof![first_frame(), bytes(300)].prop_flat_map(chunked),
        limits in limits(),
    ) {
        let mut dec = FrameDecoder::first(limits);
        let fed = feed(&mut dec, &data, &chunks)?;
        let want = reference_first(&data, limits);
        match (fed, want) {
            (None, Some(Err(_))) => {}
            (Some(_), None) => prop_assert!(!dec.is_done()),
            (Some(used), Some(Ok(body))) => {
                prop_assert!(dec.is_done());
                prop_assert_eq!(used, 4 + body.len());
                let (kind, _) = decode_header(&body).expect("the reference decoded it");
                prop_assert_eq!(dec.kind(), Some(kind.as_str()));
                prop_assert_eq!(dec.into_body().expect("done"), body);
            }
            (fed, want) => prop_assert!(false, "decoder {:?}, reference {:?}", fed, want),
        }
    }

    /// The typed error is the reference's, in particular NOT_ADMITTED before any body byte.
    #[test]
    fn first_frame_errors_are_typed(data in first_frame(), limits in limits()) {
        let mut dec = FrameDecoder::first(limits);
        let mut err = None;
        let mut pos = 0;
        while !dec.is_done() && pos < data.len() {
            let take = dec.want().min(data.len() - pos);
            match dec.push(&data[pos..pos + take]) {
                Ok(n) => pos += n,
                Err(e) => {
                    err = Some(e);
                    pos += take;
                    break;
                }
            }
        }
        match reference_first(&data, limits) {
            Some(Err(e)) => {
                prop_assert_eq!(err, Some(e));
                if e == FrameError::NotAdmitted {
                    // only the length and the header were read (the failing push included)
                    let l = data[5] as usize;
                    prop_assert_eq!(pos, 4 + 2 + l);
                }
            }
            _ => prop_assert_eq!(err, None),
        }
    }

    /// Plain frames round-trip, whatever the chunking; a declared length is not reserved.
    #[test]
    fn plain_frame_decoder(
        (data, chunks) in bytes(600).prop_flat_map(|b| chunked(encode_frame(&b))),
        declared in any::<u32>(),
        max in prop_oneof![Just(MAX_MESSAGE), 0usize..700],
    ) {
        let body = data[4..].to_vec();
        let mut dec = FrameDecoder::plain(max);
        let fed = feed(&mut dec, &data, &chunks)?;
        if body.len() > max {
            prop_assert_eq!(fed, None);
        } else {
            prop_assert_eq!(fed, Some(data.len()));
            prop_assert_eq!(dec.into_body(), Some(body.clone()));
        }
        // a lying length: holds only what arrived (plus the slack)
        let mut lie = declared.to_be_bytes().to_vec();
        lie.extend_from_slice(&body);
        let mut dec = FrameDecoder::plain(usize::MAX);
        let ((), peak) = peak_during(|| {
            let _ = feed(&mut dec, &lie, &chunks);
        });
        prop_assert!(peak <= body.len() + FRAME_SLACK + 64, "{} bytes for {}", peak, body.len());
    }

    // -------------------------------------------------------------- pairing messages

    /// Arbitrary bodies: MALFORMED or TOO_LARGE only; anything accepted is canonical.
    #[test]
    fn pairing_message_arbitrary(data in prop_oneof![bytes(400), bytes(8).prop_map(|mut b| { b.insert(0, 0x7f); b })]) {
        let (r, peak) = peak_during(|| Message::decode(&data));
        prop_assert!(peak <= 1024, "decode kept {peak} bytes");
        match r {
            Ok(m) => prop_assert_eq!(m.encode(), data),
            Err(e) => prop_assert!(MESSAGE_CODES.contains(&e.code), "{e:?}"),
        }
    }

    /// Valid messages round-trip; one mutation away they are refused or canonical.
    #[test]
    fn pairing_message_roundtrip_and_mutations(
        (msg, bad) in message().prop_flat_map(|m| { let e = m.encode(); (Just(m), mutated(e)) })
    ) {
        let enc = msg.encode();
        prop_assert_eq!(Message::decode(&enc).expect("valid"), msg);
        match Message::decode(&bad) {
            Ok(m) => prop_assert_eq!(m.encode(), bad),
            Err(e) => prop_assert!(MESSAGE_CODES.contains(&e.code), "{e:?}"),
        }
    }

    /// Bodies over 64 KiB are TOO_LARGE without being copied.
    #[test]
    fn pairing_message_too_large(extra in 1usize..4096, t in any::<u8>()) {
        let mut data = vec![0u8; MAX_MESSAGE + extra];
        data[0] = t;
        let (r, peak) = peak_during(|| Message::decode(&data));
        prop_assert_eq!(r.expect_err("too large").code, reject::TOO_LARGE);
        prop_assert!(peak <= 256);
    }

    /// The host machine fed any first message: a typed failure or a Reply, never a panic; an
    /// invalid point never costs an attempt.
    #[test]
    fn host_machine_first_message(
        data in prop_oneof![
            bytes(200),
            message().prop_map(|m| m.encode()),
            (arr::<33>(), arr::<32>()).prop_map(|(s, c)| Message::Hello {
                session_tag: fuzz_code().tag,
                joiner_id: [9; 32],
                spake_msg: side(s, 0x41),
                commitment: c,
            }.encode()),
        ]
    ) {
        let now = Instant::now();
        let mut book = book(now);
        let mut h = HostHandshake::new([7; 32], [9; 32], [1; 32], info(), 1);
        let out = h.receive(&mut book, &data, now, os_rng());
        let attempts = book.offers[&fuzz_code().tag].attempts_used;
        match out.done {
            None => {
                // a Hello with a valid point: the attempt is counted and M2 goes out
                prop_assert_eq!(attempts, 1);
                let reply = Message::decode(&out.send.expect("M2")).expect("M2 decodes");
                prop_assert_eq!(reply.name(), "Reply");
            }
            Some(Ok(_)) => prop_assert!(false, "paired from one message"),
            Some(Err(f)) => {
                prop_assert_eq!(attempts, 0);
                prop_assert!(matches!(
                    f.code,
                    reject::MALFORMED | reject::UNEXPECTED | reject::TOO_LARGE
                        | reject::BAD_TAG | reject::ID_MISMATCH
                ) || f.by_peer, "{f:?}");
            }
        }
    }

    /// The joiner machine fed any reply after its Hello: typed failures only.
    #[test]
    fn joiner_machine_reply(
        data in prop_oneof![bytes(200), message().prop_map(|m| m.encode())]
    ) {
        let mut j = JoinerHandshake::new(fuzz_code(), [9; 32], [7; 32], [1; 32], info());
        let _ = j.start(os_rng());
        let out = j.receive(&data);
        match out.done {
            Some(Err(f)) => prop_assert!(
                f.by_peer || matches!(
                    f.code,
                    reject::MALFORMED | reject::UNEXPECTED | reject::TOO_LARGE
                        | reject::ID_MISMATCH | reject::WRONG_CODE
                ),
                "{f:?}"
            ),
            other => prop_assert!(false, "accepted a forged reply: {:?}", other.is_some()),
        }
    }

    // -------------------------------------------------------------- device info

    #[test]
    fn device_info_decoder(data in prop_oneof![bytes(300), device_info().prop_flat_map(|i| mutated(i.encode()))]) {
        let (r, peak) = peak_during(|| DeviceInfo::decode(&data));
        prop_assert!(peak <= 2 * data.len() + 512, "{peak} bytes");
        match r {
            Ok(info) => prop_assert_eq!(info.encode(), data),
            Err(e) => prop_assert_eq!(e.code, reject::MALFORMED),
        }
    }

    #[test]
    fn device_info_roundtrip(info in device_info()) {
        prop_assert_eq!(DeviceInfo::decode(&info.encode()).expect("valid"), info);
    }

    // -------------------------------------------------------------- sealed messages

    /// Opening arbitrary or mutated sealed messages: only §10.3 codes; a valid one opens once.
    #[test]
    fn sealed_message_decoder(
        payload in bytes(300),
        garbage in bytes(300),
        flip in (0usize..400, 1u8..=255),
        cut in 0usize..400,
        kind in kind(),
    ) {
        let (mut tx, mut rx) = channels();
        let mid = [3u8; 16];
        let sealed = tx.seal(&kind, &payload, &mid, None);
        prop_assert_eq!(sealed.len(), payload.len() + crate::messaging::OVERHEAD);
        let allowed = [
            stream::MALFORMED_MESSAGE, stream::FRAME_TOO_LARGE, stream::TOO_OLD,
            stream::REPLAYED, stream::TAMPERED,
        ];
        for bad in [
            garbage.clone(),
            { let mut b = sealed.clone(); let i = flip.0 % b.len(); b[i] ^= flip.1; b },
            sealed[..cut.min(sealed.len() - 1)].to_vec(),
        ] {
            let (r, peak) = peak_during(|| rx.open(&kind, &bad, None));
            prop_assert!(peak <= 2 * bad.len() + 1024, "{peak} bytes");
            match r {
                Ok(_) => prop_assert!(false, "a forged message opened"),
                Err(e) => prop_assert!(allowed.contains(&e.0), "{e:?}"),
            }
        }
        let opened = rx.open(&kind, &sealed, None).expect("the valid message opens");
        prop_assert_eq!((opened.message_id, opened.plaintext), (mid, payload));
        prop_assert_eq!(rx.open(&kind, &sealed, None).expect_err("replay").0, stream::REPLAYED);
    }

    // -------------------------------------------------------------- codes and tickets

    /// Any text: a code or a `CodeError`; a parsed code prints back to itself.
    #[test]
    fn pairing_code_parser(text in prop_oneof![
        "\\PC{0,80}",
        "[a-z -]{0,40}\\.[a-z2-7]{26}\\.[!-~]{1,40}",
        valid_code().prop_flat_map(|c| mutated(c.into_bytes()))
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]) {
        let (r, peak) = peak_during(|| PairingCode::parse(&text));
        prop_assert!(peak <= 64 * text.len() + 8192, "{peak} bytes for {}", text.len());
        if let Ok(code) = r {
            prop_assert_eq!(PairingCode::parse(&code.to_string()).expect("canonical"), code);
        }
    }

    #[test]
    fn pairing_code_roundtrip(code in valid_code(), upper in any::<bool>()) {
        let parsed = PairingCode::parse(&code).expect("valid");
        prop_assert_eq!(parsed.to_string(), code.clone());
        let (words, rest) = code.split_once('.').expect("dot");
        let shouted = if upper { words.to_uppercase().replace('-', "  ") } else { words.to_owned() };
        prop_assert_eq!(PairingCode::parse(&format!(" {shouted}.{rest}\n")).expect("normalised"), parsed);
    }

    #[test]
    fn secret_words(text in prop_oneof!["\\PC{0,60}", "[a-z \\t\\r\\n-]{0,60}"]) {
        match normalize_words(&text) {
            Ok(words) => {
                prop_assert!((2..=24).contains(&words.len()));
                prop_assert!(words.iter().all(|w| wordlist().contains(&w.as_str())));
                prop_assert_eq!(normalize_words(&words.join("-")).expect("again"), words);
            }
            Err(CodeError::UnknownWord(_) | CodeError::BadWordCount(_)) => {}
            Err(e) => prop_assert!(false, "unexpected {e:?}"),
        }
    }

    #[test]
    fn session_tag(text in prop_oneof!["\\PC{0,30}", "[a-zA-Z2-7]{26}"], tag in arr::<16>()) {
        if let Ok(t) = decode_tag(&text) {
            prop_assert_eq!(encode_tag(&t), text.to_ascii_lowercase());
        }
        prop_assert_eq!(decode_tag(&encode_tag(&tag)).expect("canonical"), tag);
    }

    /// iroh tickets (the node parses the code's ticket with iroh-tickets).
    #[test]
    fn tickets(text in prop_oneof![
        "\\PC{0,120}",
        "endpoint[a-z2-7]{0,120}",
        Just(ticket()).prop_flat_map(|t| mutated(t.into_bytes()))
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]) {
        use iroh_tickets::endpoint::EndpointTicket;
        let (r, peak) = peak_during(|| text.parse::<EndpointTicket>());
        prop_assert!(peak <= 16 * text.len() + 8192, "{peak} bytes");
        if let Ok(t) = r {
            let again: EndpointTicket = t.to_string().parse().expect("round trip");
            prop_assert_eq!(again, t);
        }
    }
}

/// A valid iroh ticket (an EndpointId only).
fn ticket() -> String {
    let id = iroh::SecretKey::from_bytes(&[1u8; 32]).public();
    iroh_tickets::endpoint::EndpointTicket::new(iroh::EndpointAddr::from(id)).to_string()
}

fn valid_code() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(0usize..2048, 2..=24),
        arr::<16>(),
        "[!-~]{1,60}",
    )
        .prop_map(|(idx, tag, ticket)| {
            let words: Vec<&str> = idx.iter().map(|i| wordlist()[*i]).collect();
            format!("{}.{}.{}", words.join("-"), encode_tag(&tag), ticket)
        })
}

fn fuzz_code() -> PairingCode {
    PairingCode::parse("legal-winner-thank.nf3h6irannvk4mmhvtr4bgrg5i.ticket").expect("code")
}

fn book(now: Instant) -> OfferBook {
    let code = fuzz_code();
    let mut book = OfferBook::default();
    book.offers
        .insert(code.tag, Offer::new(code, now, Duration::from_secs(300)));
    book
}

fn info() -> DeviceInfo {
    DeviceInfo {
        name: "fuzz".into(),
        device_type: "other".into(),
        os: String::new(),
        app_version: String::new(),
    }
}

fn channels() -> (MessageChannel, MessageChannel) {
    let (a, b) = ([1u8; 32], [2u8; 32]);
    let (k1, k2) = ([5u8; 32], [6u8; 32]);
    let cb = [9u8; 32];
    (
        MessageChannel::new(
            a,
            b,
            &SessionKeys {
                send: k1,
                receive: k2,
            },
            &cb,
        ),
        MessageChannel::new(
            b,
            a,
            &SessionKeys {
                send: k2,
                receive: k1,
            },
            &cb,
        ),
    )
}

// ------------------------------------------------------------------ explicit cases

#[test]
fn the_fuzzed_ticket_is_valid() {
    use iroh_tickets::endpoint::EndpointTicket;
    let t: EndpointTicket = ticket().parse().expect("a valid ticket");
    assert_eq!(t.to_string(), ticket());
}

#[test]
fn a_declared_length_is_not_reserved() {
    // 4 GiB - 1 declared, 10 bytes sent: the decoder holds 10 bytes plus at most the slack.
    let mut dec = FrameDecoder::plain(usize::MAX);
    let mut data = u32::MAX.to_be_bytes().to_vec();
    data.extend([7u8; 10]);
    let (r, peak) = peak_during(|| dec.push(&data));
    assert_eq!(r, Ok(14));
    assert!(!dec.is_done());
    assert!(peak <= 10 + FRAME_SLACK, "{peak}");
    assert!(dec.capacity() <= 10 + FRAME_SLACK);
}

#[test]
fn a_large_frame_grows_in_steps_bounded_by_the_slack() {
    let body = vec![1u8; 3 * 1024 * 1024 + 5];
    let frame = encode_frame(&body);
    let mut dec = FrameDecoder::plain(crate::node::MAX_FIRST_FRAME);
    let mut pos = 0;
    while !dec.is_done() {
        let n = dec.want().min(1200);
        pos += dec.push(&frame[pos..pos + n]).expect("push");
        assert!(dec.capacity() <= pos + FRAME_SLACK);
    }
    assert_eq!(dec.into_body(), Some(body));
}

#[test]
fn unknown_peers_get_not_admitted_for_messaging_kinds_before_the_body() {
    let mut first = encode_header("msg");
    first.extend(vec![0u8; 1000]);
    let frame = encode_frame(&first);
    let mut dec = FrameDecoder::first(crate::node::UNKNOWN_LIMITS);
    // the length, the prefix, the kind: then the refusal, with the body unread
    assert_eq!(dec.push(&frame[..4]), Ok(4));
    assert_eq!(dec.push(&frame[4..6]), Ok(2));
    assert_eq!(dec.want(), 3);
    assert_eq!(dec.push(&frame[6..]), Err(FrameError::NotAdmitted));
    // and a pairing frame over 64 KiB + 64 is too large, also before its body
    let mut big = encode_header("pair2");
    big.resize(MAX_PAIRING_FIRST_FRAME + 1, 0);
    let frame = encode_frame(&big);
    let mut dec = FrameDecoder::first(crate::node::UNKNOWN_LIMITS);
    assert_eq!(dec.push(&frame[..11]), Err(FrameError::TooLarge));
    // a bad header
    let mut dec = FrameDecoder::first(crate::node::PAIRED_LIMITS);
    assert_eq!(
        dec.push(&[0, 0, 0, 9, 2, 4, b'p', b'a', b'i', b'r', 0, 0, 0]),
        Err(FrameError::BadEnvelope)
    );
    let mut dec = FrameDecoder::first(crate::node::PAIRED_LIMITS);
    assert_eq!(
        dec.push(&[0, 0, 0, 6, 1, 4, b'P', b'a', b'i', b'r']),
        Err(FrameError::BadEnvelope)
    );
    let mut dec = FrameDecoder::first(crate::node::PAIRED_LIMITS);
    assert_eq!(dec.push(&[0, 0, 0, 1, 1]), Err(FrameError::BadEnvelope));
}

#[test]
fn frames_are_read_exactly_and_not_past_their_end() {
    let mut data = encode_frame(&[encode_header("pair2"), vec![1, 2, 3]].concat());
    data.extend(encode_frame(b"next"));
    let mut dec = FrameDecoder::first(crate::node::UNKNOWN_LIMITS);
    let used = dec.push(&data).expect("push");
    assert!(dec.is_done());
    assert_eq!(used, 4 + 7 + 3);
    assert_eq!(dec.kind(), Some("pair2"));
    let mut next = FrameDecoder::plain(MAX_MESSAGE);
    assert_eq!(next.push(&data[used..]), Ok(8));
    assert_eq!(next.into_body(), Some(b"next".to_vec()));
    // an empty plain frame is complete at once
    let mut empty = FrameDecoder::plain(MAX_MESSAGE);
    assert_eq!(empty.push(&[0, 0, 0, 0, 9]), Ok(4));
    assert_eq!(empty.into_body(), Some(Vec::new()));
}
