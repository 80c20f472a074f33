//! Sans-I/O pairing: SPAKE2 with point validation, the host's offers, and the two handshake
//! state machines of PROTOCOL.md §8 (the driver passes in the authenticated remote id, the
//! channel binding and the clock).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::traits::IsIdentity;
use rand_core::{CryptoRng, RngCore};
use spake2::{Ed25519Group, Identity, Password, Spake2};

use crate::code::PairingCode;
use crate::kdf::{
    PairingKeys, Role, SessionKeys, Transcript, confirmation_mac, sas_digits,
    verify_confirmation_mac,
};
use crate::wire::{DeviceInfo, Message, ProtoError, open_sealed, reject, seal};

pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------------------ SPAKE2

/// One side of SPAKE2 (RustCrypto `spake2`), plus the checks python-spake2 makes on the peer's
/// element and the crate does not: canonical encoding, not the identity, in the prime-order
/// subgroup, not our own element reflected.
pub struct Spake {
    inner: Spake2<Ed25519Group>,
    own: [u8; 33],
}

impl Spake {
    pub fn start(
        side: Role,
        password: &[u8],
        id_a: &[u8],
        id_b: &[u8],
        rng: impl RngCore + CryptoRng,
    ) -> Self {
        let (pw, a, b) = (
            Password::new(password),
            Identity::new(id_a),
            Identity::new(id_b),
        );
        let (inner, msg) = match side {
            Role::Joiner => Spake2::<Ed25519Group>::start_a_with_rng(&pw, &a, &b, rng),
            Role::Host => Spake2::<Ed25519Group>::start_b_with_rng(&pw, &a, &b, rng),
        };
        Self {
            inner,
            own: msg.try_into().expect("a 33-byte SPAKE2 message"),
        }
    }

    pub fn message(&self) -> [u8; 33] {
        self.own
    }

    pub fn finish(self, peer: &[u8; 33]) -> Result<[u8; 32], ProtoError> {
        let bad = |why: &str| {
            ProtoError::new(reject::MALFORMED, format!("invalid SPAKE2 message: {why}"))
        };
        let raw: [u8; 32] = peer[1..].try_into().expect("32 bytes");
        let point = CompressedEdwardsY(raw)
            .decompress()
            .ok_or_else(|| bad("not a point"))?;
        if point.compress().to_bytes() != raw {
            return Err(bad("non-canonical encoding"));
        }
        if point.is_identity() || !point.is_torsion_free() {
            return Err(bad("not in the prime-order subgroup"));
        }
        if raw[..] == self.own[1..] {
            return Err(bad("our own message reflected"));
        }
        let key = self
            .inner
            .finish(peer)
            .map_err(|e| bad(&format!("{e:?}")))?;
        key.try_into().map_err(|_| bad("key length"))
    }
}

/// The OS CSPRNG for SPAKE2 scalars.
pub fn os_rng() -> rand_core::OsRng {
    rand_core::OsRng
}

// ------------------------------------------------------------------------------ offers

/// The host's state for one code (§9).
#[derive(Debug)]
pub struct Offer {
    pub code: PairingCode,
    pub expires_at: Instant,
    pub max_attempts: u32,
    pub attempts_used: u32,
    pub used: bool,
    active: Option<u64>,
    active_until: Instant,
}

impl Offer {
    pub fn new(code: PairingCode, now: Instant, ttl: Duration) -> Self {
        Self {
            code,
            expires_at: now + ttl,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            attempts_used: 0,
            used: false,
            active: None,
            active_until: now,
        }
    }

    pub fn burned(&self) -> bool {
        !self.used && self.attempts_used >= self.max_attempts
    }

    fn busy(&self, now: Instant) -> bool {
        self.active.is_some() && now < self.active_until
    }

    pub fn check(&self, now: Instant) -> Result<(), ProtoError> {
        if self.used {
            return Err(ProtoError::new(
                reject::USED,
                "this code has already been used",
            ));
        }
        if self.burned() {
            return Err(ProtoError::new(
                reject::BURNED,
                "too many attempts for this code",
            ));
        }
        if now >= self.expires_at {
            return Err(ProtoError::new(reject::EXPIRED, "this code has expired"));
        }
        if self.busy(now) {
            return Err(ProtoError::new(
                reject::BUSY,
                "another device is pairing with this code",
            ));
        }
        Ok(())
    }

    fn claim(&mut self, session: u64, now: Instant) -> Result<Instant, ProtoError> {
        self.check(now)?;
        self.attempts_used += 1;
        self.active = Some(session);
        self.active_until = now + HANDSHAKE_TIMEOUT;
        Ok(self.active_until)
    }

    fn holds(&self, session: u64) -> bool {
        self.active == Some(session)
    }

    fn release(&mut self, session: u64) {
        if self.holds(session) {
            self.active = None;
        }
    }
}

/// Live offers by session tag.
#[derive(Debug, Default)]
pub struct OfferBook {
    pub offers: HashMap<[u8; 16], Offer>,
}

// ------------------------------------------------------------------------------ machines

#[derive(Debug, Clone)]
pub struct PairingResult {
    pub role: Role,
    pub peer_id: [u8; 32],
    pub keys: SessionKeys,
    pub sas: String,
    pub peer_info: DeviceInfo,
    pub transcript_hash: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: u16,
    pub reason: String,
    pub by_peer: bool,
}

/// What the driver does after one input: send `send` (a frame body), and, when `done` is
/// set, finish. On success the host must commit the pairing before sending (`send` is then
/// its Complete); on a local failure `send` is the Reject.
#[derive(Debug, Default)]
pub struct Out {
    pub send: Option<Vec<u8>>,
    pub done: Option<Result<PairingResult, Failure>>,
}

impl Out {
    fn send(body: Vec<u8>) -> Self {
        Self {
            send: Some(body),
            done: None,
        }
    }

    fn fail(e: ProtoError) -> Self {
        let send = (e.code < 0x400).then(|| Message::reject(e.code, &e.reason).encode());
        Self {
            send,
            done: Some(Err(Failure {
                code: e.code,
                reason: e.reason,
                by_peer: false,
            })),
        }
    }

    fn peer_rejected(code: u16, text: String) -> Self {
        Self {
            send: None,
            done: Some(Err(Failure {
                code: reject::from_wire(code),
                reason: text,
                by_peer: true,
            })),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    AwaitHello,
    AwaitReply,
    AwaitConfirm,
    AwaitComplete,
    Done,
    Failed,
}

fn transcript_hash(
    joiner_id: &[u8],
    host_id: &[u8],
    tag: &[u8],
    jm: &[u8],
    hm: &[u8],
    cb: &[u8],
) -> [u8; 32] {
    Transcript {
        joiner_id,
        host_id,
        session_tag: tag,
        joiner_msg: jm,
        host_msg: hm,
        channel_binding: cb,
    }
    .hash()
}

/// The host's side of one `pair` stream (SPAKE2 side B).
pub struct HostHandshake {
    host_id: [u8; 32],
    remote_id: [u8; 32],
    cb: [u8; 32],
    info: DeviceInfo,
    session: u64,
    state: State,
    tag: Option<[u8; 16]>,
    keys: Option<PairingKeys>,
    th: [u8; 32],
    pub deadline: Option<Instant>,
    pub sas: Option<String>,
}

impl HostHandshake {
    pub fn new(
        host_id: [u8; 32],
        remote_id: [u8; 32],
        cb: [u8; 32],
        info: DeviceInfo,
        session: u64,
    ) -> Self {
        Self {
            host_id,
            remote_id,
            cb,
            info,
            session,
            state: State::AwaitHello,
            tag: None,
            keys: None,
            th: [0; 32],
            deadline: None,
            sas: None,
        }
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Done | State::Failed)
    }

    fn terminate(&mut self, book: &mut OfferBook, out: Out) -> Out {
        if let Some(tag) = self.tag
            && let Some(offer) = book.offers.get_mut(&tag)
        {
            offer.release(self.session);
        }
        self.state = State::Failed;
        self.keys = None;
        out
    }

    pub fn receive(
        &mut self,
        book: &mut OfferBook,
        body: &[u8],
        now: Instant,
        rng: impl RngCore + CryptoRng,
    ) -> Out {
        if self.is_finished() {
            return Out::default();
        }
        let result = Message::decode(body).and_then(|msg| match (self.state, msg) {
            (_, Message::Reject { code, text }) => Ok(Out::peer_rejected(code, text)),
            (
                State::AwaitHello,
                Message::Hello {
                    session_tag,
                    joiner_id,
                    spake_msg,
                },
            ) => self.on_hello(book, session_tag, joiner_id, spake_msg, now, rng),
            (
                State::AwaitConfirm,
                Message::Confirm {
                    joiner_mac,
                    sealed_info,
                },
            ) => self.on_confirm(book, &joiner_mac, &sealed_info, now),
            (state, msg) => Err(ProtoError::new(
                reject::UNEXPECTED,
                format!("{} in {state:?}", msg.name()),
            )),
        });
        match result {
            Ok(out) if matches!(out.done, Some(Err(_))) => self.terminate(book, out),
            Ok(out) => out,
            Err(e) => self.terminate(book, Out::fail(e)),
        }
    }

    fn on_hello(
        &mut self,
        book: &mut OfferBook,
        tag: [u8; 16],
        joiner_id: [u8; 32],
        joiner_msg: [u8; 33],
        now: Instant,
        rng: impl RngCore + CryptoRng,
    ) -> Result<Out, ProtoError> {
        let offer = book
            .offers
            .get_mut(&tag)
            .ok_or_else(|| ProtoError::new(reject::BAD_TAG, "unknown session tag"))?;
        if joiner_id != self.remote_id {
            return Err(ProtoError::new(
                reject::ID_MISMATCH,
                "claimed id is not the connection's id",
            ));
        }
        offer.check(now)?;
        let spake = Spake::start(
            Role::Host,
            &offer.code.password(),
            &joiner_id,
            &self.host_id,
            rng,
        );
        let host_msg = spake.message();
        let key = spake.finish(&joiner_msg)?;
        // The attempt counts from here: M2 is about to be sent.
        self.deadline = Some(offer.claim(self.session, now)?);
        self.tag = Some(tag);
        self.th = transcript_hash(
            &joiner_id,
            &self.host_id,
            &tag,
            &joiner_msg,
            &host_msg,
            &self.cb,
        );
        let keys = PairingKeys::derive(&key, &self.th);
        let host_mac = confirmation_mac(&keys.host_confirm, &self.th);
        self.sas = Some(sas_digits(&keys.sas));
        self.keys = Some(keys);
        self.state = State::AwaitConfirm;
        Ok(Out::send(
            Message::Reply {
                host_id: self.host_id,
                spake_msg: host_msg,
                host_mac,
            }
            .encode(),
        ))
    }

    fn on_confirm(
        &mut self,
        book: &mut OfferBook,
        mac: &[u8; 32],
        sealed: &[u8],
        now: Instant,
    ) -> Result<Out, ProtoError> {
        let keys = self.keys.clone().expect("keys exist in AwaitConfirm");
        let tag = self.tag.expect("tag exists in AwaitConfirm");
        let holds = book.offers.get(&tag).is_some_and(|o| o.holds(self.session));
        if self.deadline.is_none_or(|d| now >= d) || !holds {
            return Err(ProtoError::new(reject::TIMEOUT, "handshake timed out"));
        }
        if !verify_confirmation_mac(&keys.joiner_confirm, &self.th, mac) {
            return Err(ProtoError::new(
                reject::WRONG_CODE,
                "confirmation failed: wrong code",
            ));
        }
        let info = DeviceInfo::decode(&open_sealed(&keys.joiner_seal, sealed, &self.th)?)?;
        let sealed = seal(&keys.host_seal, &self.info.encode(), &self.th);
        if let Some(offer) = book.offers.get_mut(&tag) {
            offer.active = None;
            offer.used = true;
        }
        self.state = State::Done;
        self.keys = None;
        let result = PairingResult {
            role: Role::Host,
            peer_id: self.remote_id,
            keys: keys.session_keys(Role::Host),
            sas: sas_digits(&keys.sas),
            peer_info: info,
            transcript_hash: self.th,
        };
        Ok(Out {
            send: Some(
                Message::Complete {
                    sealed_info: sealed,
                }
                .encode(),
            ),
            done: Some(Ok(result)),
        })
    }

    /// TIMEOUT once the deadline passed.
    pub fn check_deadline(&mut self, book: &mut OfferBook, now: Instant) -> Option<Out> {
        if self.deadline.is_some_and(|d| now >= d) && !self.is_finished() {
            return Some(self.terminate(
                book,
                Out::fail(ProtoError::new(reject::TIMEOUT, "handshake timed out")),
            ));
        }
        None
    }

    pub fn abort(&mut self, book: &mut OfferBook, code: u16, reason: &str) -> Out {
        if self.is_finished() {
            return Out::default();
        }
        self.terminate(book, Out::fail(ProtoError::new(code, reason)))
    }

    pub fn connection_lost(&mut self, book: &mut OfferBook) -> Out {
        self.abort(book, reject::CONNECTION_LOST, "connection lost")
    }
}

/// The joiner's side (SPAKE2 side A).
pub struct JoinerHandshake {
    code: PairingCode,
    joiner_id: [u8; 32],
    host_id: [u8; 32],
    cb: [u8; 32],
    info: DeviceInfo,
    state: State,
    spake: Option<Spake>,
    joiner_msg: [u8; 33],
    keys: Option<PairingKeys>,
    th: [u8; 32],
    pub sas: Option<String>,
}

impl JoinerHandshake {
    pub fn new(
        code: PairingCode,
        joiner_id: [u8; 32],
        host_id: [u8; 32],
        cb: [u8; 32],
        info: DeviceInfo,
    ) -> Self {
        Self {
            code,
            joiner_id,
            host_id,
            cb,
            info,
            state: State::Start,
            spake: None,
            joiner_msg: [0; 33],
            keys: None,
            th: [0; 32],
            sas: None,
        }
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Done | State::Failed)
    }

    /// The body of M1.
    pub fn start(&mut self, rng: impl RngCore + CryptoRng) -> Vec<u8> {
        assert_eq!(self.state, State::Start, "start() may be called once");
        let spake = Spake::start(
            Role::Joiner,
            &self.code.password(),
            &self.joiner_id,
            &self.host_id,
            rng,
        );
        self.joiner_msg = spake.message();
        self.spake = Some(spake);
        self.state = State::AwaitReply;
        Message::Hello {
            session_tag: self.code.tag,
            joiner_id: self.joiner_id,
            spake_msg: self.joiner_msg,
        }
        .encode()
    }

    fn terminate(&mut self, out: Out) -> Out {
        self.state = State::Failed;
        self.spake = None;
        self.keys = None;
        out
    }

    pub fn receive(&mut self, body: &[u8]) -> Out {
        if self.is_finished() {
            return Out::default();
        }
        let result = Message::decode(body).and_then(|msg| match (self.state, msg) {
            (_, Message::Reject { code, text }) => Ok(Out::peer_rejected(code, text)),
            (
                State::AwaitReply,
                Message::Reply {
                    host_id,
                    spake_msg,
                    host_mac,
                },
            ) => self.on_reply(host_id, spake_msg, host_mac),
            (State::AwaitComplete, Message::Complete { sealed_info }) => {
                self.on_complete(&sealed_info)
            }
            (state, msg) => Err(ProtoError::new(
                reject::UNEXPECTED,
                format!("{} in {state:?}", msg.name()),
            )),
        });
        match result {
            Ok(out) if matches!(out.done, Some(Err(_))) => self.terminate(out),
            Ok(out) => out,
            Err(e) => self.terminate(Out::fail(e)),
        }
    }

    fn on_reply(
        &mut self,
        host_id: [u8; 32],
        host_msg: [u8; 33],
        host_mac: [u8; 32],
    ) -> Result<Out, ProtoError> {
        if host_id != self.host_id {
            return Err(ProtoError::new(
                reject::ID_MISMATCH,
                "claimed id is not the connection's id",
            ));
        }
        let spake = self.spake.take().expect("spake exists in AwaitReply");
        let key = spake.finish(&host_msg)?;
        self.th = transcript_hash(
            &self.joiner_id,
            &self.host_id,
            &self.code.tag,
            &self.joiner_msg,
            &host_msg,
            &self.cb,
        );
        let keys = PairingKeys::derive(&key, &self.th);
        if !verify_confirmation_mac(&keys.host_confirm, &self.th, &host_mac) {
            return Err(ProtoError::new(
                reject::WRONG_CODE,
                "confirmation failed: wrong code",
            ));
        }
        let joiner_mac = confirmation_mac(&keys.joiner_confirm, &self.th);
        let sealed_info = seal(&keys.joiner_seal, &self.info.encode(), &self.th);
        self.sas = Some(sas_digits(&keys.sas));
        self.keys = Some(keys);
        self.state = State::AwaitComplete;
        Ok(Out::send(
            Message::Confirm {
                joiner_mac,
                sealed_info,
            }
            .encode(),
        ))
    }

    fn on_complete(&mut self, sealed: &[u8]) -> Result<Out, ProtoError> {
        let keys = self.keys.take().expect("keys exist in AwaitComplete");
        let info = DeviceInfo::decode(&open_sealed(&keys.host_seal, sealed, &self.th)?)?;
        self.state = State::Done;
        Ok(Out {
            send: None,
            done: Some(Ok(PairingResult {
                role: Role::Joiner,
                peer_id: self.host_id,
                keys: keys.session_keys(Role::Joiner),
                sas: sas_digits(&keys.sas),
                peer_info: info,
                transcript_hash: self.th,
            })),
        })
    }

    pub fn abort(&mut self, code: u16, reason: &str) -> Out {
        if self.is_finished() {
            return Out::default();
        }
        self.terminate(Out::fail(ProtoError::new(code, reason)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: [u8; 32] = [7; 32];
    const JOINER: [u8; 32] = [9; 32];
    const CB: [u8; 32] = [1; 32];

    fn info(name: &str) -> DeviceInfo {
        DeviceInfo {
            name: name.into(),
            device_type: "other".into(),
            os: String::new(),
            app_version: String::new(),
        }
    }

    fn setup(now: Instant) -> (OfferBook, PairingCode) {
        let code = PairingCode::parse("legal-winner-thank.nf3h6irannvk4mmhvtr4bgrg5i.ticket")
            .expect("code");
        let mut book = OfferBook::default();
        book.offers.insert(
            code.tag,
            Offer::new(code.clone(), now, Duration::from_secs(300)),
        );
        (book, code)
    }

    fn with_words(code: &PairingCode, words: &str) -> PairingCode {
        PairingCode {
            words: words.split('-').map(str::to_owned).collect(),
            ..code.clone()
        }
    }

    type Done = Option<Result<PairingResult, Failure>>;

    /// Runs one handshake to the end; returns both outcomes.
    fn run(
        book: &mut OfferBook,
        joiner_code: PairingCode,
        session: u64,
        now: Instant,
    ) -> (Done, Done) {
        let mut j = JoinerHandshake::new(joiner_code, JOINER, HOST, CB, info("j"));
        let mut h = HostHandshake::new(HOST, JOINER, CB, info("h"), session);
        let mut to_host = Some(j.start(os_rng()));
        let (mut jd, mut hd) = (None, None);
        while let Some(body) = to_host.take() {
            let out = h.receive(book, &body, now, os_rng());
            if out.done.is_some() {
                hd = out.done;
            }
            let Some(reply) = out.send else { break };
            let out = j.receive(&reply);
            if out.done.is_some() {
                jd = out.done;
            }
            to_host = out.send;
        }
        (jd, hd)
    }

    #[test]
    fn pairs_with_matching_keys_and_sas() {
        let now = Instant::now();
        let (mut book, code) = setup(now);
        let (j, h) = run(&mut book, code.clone(), 1, now);
        let (j, h) = (
            j.expect("joiner done").expect("paired"),
            h.expect("host done").expect("paired"),
        );
        assert_eq!(j.sas, h.sas);
        assert_eq!(j.keys.send, h.keys.receive);
        assert_eq!(j.keys.receive, h.keys.send);
        assert_eq!((j.peer_id, h.peer_id), (HOST, JOINER));
        assert_eq!(
            (j.peer_info.name.as_str(), h.peer_info.name.as_str()),
            ("h", "j")
        );
        // single use
        let (_, h2) = run(&mut book, code, 2, now);
        assert_eq!(h2.expect("done").expect_err("used").code, reject::USED);
    }

    #[test]
    fn wrong_words_burn_the_code_after_three_attempts() {
        let now = Instant::now();
        let (mut book, code) = setup(now);
        for i in 0..3 {
            let (j, h) = run(&mut book, with_words(&code, "zoo-winner-thank"), i, now);
            assert_eq!(
                j.expect("done").expect_err("wrong").code,
                reject::WRONG_CODE
            );
            let h = h.expect("done").expect_err("wrong");
            assert_eq!((h.code, h.by_peer), (reject::WRONG_CODE, true));
        }
        assert_eq!(book.offers[&code.tag].attempts_used, 3);
        let (j, _) = run(&mut book, code, 9, now);
        assert_eq!(j.expect("done").expect_err("burned").code, reject::BURNED);
    }

    #[test]
    fn refusals_cost_no_attempt() {
        let now = Instant::now();
        let (mut book, code) = setup(now);
        // unknown tag
        let (j, _) = run(
            &mut book,
            PairingCode {
                tag: [0; 16],
                ..code.clone()
            },
            1,
            now,
        );
        assert_eq!(j.expect("done").expect_err("tag").code, reject::BAD_TAG);
        // claimed id differs from the authenticated one
        let mut jh = JoinerHandshake::new(code.clone(), JOINER, HOST, CB, info("j"));
        let mut hh = HostHandshake::new(HOST, [3; 32], CB, info("h"), 2);
        let out = hh.receive(&mut book, &jh.start(os_rng()), now, os_rng());
        assert_eq!(
            out.done.expect("done").expect_err("id").code,
            reject::ID_MISMATCH
        );
        // expired
        let (j, _) = run(&mut book, code.clone(), 3, now + Duration::from_secs(301));
        assert_eq!(j.expect("done").expect_err("expired").code, reject::EXPIRED);
        assert_eq!(book.offers[&code.tag].attempts_used, 0);
    }

    #[test]
    fn one_handshake_at_a_time() {
        let now = Instant::now();
        let (mut book, code) = setup(now);
        let mut j1 = JoinerHandshake::new(code.clone(), JOINER, HOST, CB, info("j"));
        let mut h1 = HostHandshake::new(HOST, JOINER, CB, info("h"), 1);
        let m2 = h1
            .receive(&mut book, &j1.start(os_rng()), now, os_rng())
            .send
            .expect("M2");
        let (j2, _) = run(&mut book, code.clone(), 2, now);
        assert_eq!(j2.expect("done").expect_err("busy").code, reject::BUSY);
        // past its deadline another Hello takes over and the stale one fails with TIMEOUT
        let later = now + HANDSHAKE_TIMEOUT;
        let (j3, h3) = run(&mut book, code, 3, later);
        assert!(j3.expect("done").is_ok() && h3.expect("done").is_ok());
        let m3 = j1.receive(&m2).send.expect("M3");
        let out = h1.receive(&mut book, &m3, later, os_rng());
        assert_eq!(
            out.done.expect("done").expect_err("stale").code,
            reject::TIMEOUT
        );
    }

    #[test]
    fn unexpected_and_malformed_messages() {
        let now = Instant::now();
        let (mut book, _) = setup(now);
        let mut h = HostHandshake::new(HOST, JOINER, CB, info("h"), 1);
        let out = h.receive(
            &mut book,
            &Message::Complete {
                sealed_info: vec![0; 16],
            }
            .encode(),
            now,
            os_rng(),
        );
        assert_eq!(
            out.done.expect("done").expect_err("unexpected").code,
            reject::UNEXPECTED
        );
        assert_eq!(
            Message::decode(&out.send.expect("Reject"))
                .expect("decodes")
                .name(),
            "Reject"
        );
        let mut h = HostHandshake::new(HOST, JOINER, CB, info("h"), 2);
        let out = h.receive(&mut book, &[0x01, 0x02], now, os_rng());
        assert_eq!(
            out.done.expect("done").expect_err("malformed").code,
            reject::MALFORMED
        );
    }
}
