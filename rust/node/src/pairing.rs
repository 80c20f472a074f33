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
    self, PairingKeys, Role, SessionKeys, Transcript, commitment, confirmation_mac, fresh_nonce,
    opens_commitment, verify_confirmation_mac,
};
use crate::wire::{DeviceInfo, Message, ProtoError, open_sealed, reject, seal};

pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// M2 sent -> M3 received (§11).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// M3 -> approval and M5 on the host; M4 and approval on the joiner (§11).
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(120);

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
        check_point(peer)?;
        if peer[1..] == self.own[1..] {
            return Err(bad_point("our own message reflected"));
        }
        let key = self
            .inner
            .finish(peer)
            .map_err(|e| bad_point(&format!("{e:?}")))?;
        key.try_into().map_err(|_| bad_point("key length"))
    }
}

fn bad_point(why: &str) -> ProtoError {
    ProtoError::new(reject::MALFORMED, format!("invalid SPAKE2 message: {why}"))
}

/// Decompresses the peer's element and checks it (canonical, not the identity, in the
/// prime-order subgroup) before any scalar multiplication with a secret (§7.1).
pub fn check_point(peer: &[u8; 33]) -> Result<(), ProtoError> {
    let raw: [u8; 32] = peer[1..].try_into().expect("32 bytes");
    let point = CompressedEdwardsY(raw)
        .decompress()
        .ok_or_else(|| bad_point("not a point"))?;
    if point.compress().to_bytes() != raw {
        return Err(bad_point("non-canonical encoding"));
    }
    if point.is_identity() || !point.is_torsion_free() {
        return Err(bad_point("not in the prime-order subgroup"));
    }
    Ok(())
}

/// The OS CSPRNG for SPAKE2 scalars.
pub fn os_rng() -> rand_core::OsRng {
    rand_core::OsRng
}

// ------------------------------------------------------------------------------ offers

/// Hellos with an offer's tag processed per second (a token bucket of this size, §9).
pub const HELLO_RATE: f64 = 10.0;

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
    tokens: f64,
    refilled: Instant,
    /// Ended early with this code (a declined SAS, §8.3): later Hellos get BAD_TAG.
    pub ended: Option<u16>,
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
            tokens: HELLO_RATE,
            refilled: now,
            ended: None,
        }
    }

    pub fn burned(&self) -> bool {
        !self.used && self.attempts_used >= self.max_attempts
    }

    /// Whether the offer can still pair a device (not used, burned or expired).
    pub fn live(&self, now: Instant) -> bool {
        self.ended.is_none() && !self.used && !self.burned() && now < self.expires_at
    }

    fn busy(&self, now: Instant) -> bool {
        self.active.is_some() && now < self.active_until
    }

    /// USED, BURNED or EXPIRED when the offer has ended, BUSY while a handshake holds it.
    pub fn check(&self, now: Instant) -> Result<(), ProtoError> {
        if let Some(code) = self.ended {
            return Err(ProtoError::new(code, "this code was ended"));
        }
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

    /// Takes one token of the Hello rate limit; BUSY when none is left.
    fn rate(&mut self, now: Instant) -> Result<(), ProtoError> {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * HELLO_RATE).min(HELLO_RATE);
        self.refilled = self.refilled.max(now);
        if self.tokens < 1.0 {
            return Err(ProtoError::new(reject::BUSY, "too many pairing attempts"));
        }
        self.tokens -= 1.0;
        Ok(())
    }

    fn claim(&mut self, session: u64, now: Instant) -> Instant {
        self.attempts_used += 1;
        self.active = Some(session);
        self.active_until = now + HANDSHAKE_TIMEOUT;
        self.active_until
    }

    fn extend(&mut self, session: u64, until: Instant) {
        if self.holds(session) {
            self.active_until = until;
        }
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

impl OfferBook {
    pub fn hosting(&self, now: Instant) -> bool {
        self.offers.values().any(|o| o.live(now))
    }
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

/// The SAS is known: the application approves or declines it (§8.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SasReady {
    pub sas: String,
    /// The joiner's device info on the host; the joiner learns the host's with Complete.
    pub peer_info: Option<DeviceInfo>,
}

/// What the driver does after one input, in this order: show `sas` (then call `approve` or
/// `decline`); on `done == Some(Ok)` store the pairing (if storing fails, send
/// Reject(INTERNAL) instead of `send`); send `send` (a frame body); after `done`, finish.
#[derive(Debug, Default)]
pub struct Out {
    pub send: Option<Vec<u8>>,
    pub sas: Option<SasReady>,
    pub done: Option<Result<PairingResult, Failure>>,
}

impl Out {
    fn send(body: Vec<u8>) -> Self {
        Self {
            send: Some(body),
            ..Self::default()
        }
    }

    fn fail(e: ProtoError) -> Self {
        let send = (e.code < 0x400).then(|| Message::reject(e.code, &e.reason).encode());
        Self {
            send,
            sas: None,
            done: Some(Err(Failure {
                code: e.code,
                reason: e.reason,
                by_peer: false,
            })),
        }
    }

    fn peer_rejected(code: u16, text: String) -> Self {
        Self {
            done: Some(Err(Failure {
                code: reject::from_wire(code),
                reason: text,
                by_peer: true,
            })),
            ..Self::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Start,
    AwaitHello,
    AwaitReply,
    AwaitConfirm,
    AwaitComplete,
    AwaitApproval,
    AwaitAccept,
    Done,
    Failed,
}

struct Th<'a> {
    joiner_id: &'a [u8; 32],
    host_id: &'a [u8; 32],
    tag: &'a [u8; 16],
    joiner_msg: &'a [u8; 33],
    host_msg: &'a [u8; 33],
    cb: &'a [u8; 32],
    commitment: &'a [u8; 32],
    host_nonce: &'a [u8; 32],
}

impl Th<'_> {
    fn hash(&self) -> [u8; 32] {
        Transcript {
            joiner_id: self.joiner_id,
            host_id: self.host_id,
            session_tag: self.tag,
            joiner_msg: self.joiner_msg,
            host_msg: self.host_msg,
            channel_binding: self.cb,
            commitment: self.commitment,
            host_nonce: self.host_nonce,
        }
        .hash()
    }
}

fn unexpected(state: State, msg: &Message) -> ProtoError {
    ProtoError::new(reject::UNEXPECTED, format!("{} in {state:?}", msg.name()))
}

/// The host's side of one `pair2` stream (SPAKE2 side B).
pub struct HostHandshake {
    host_id: [u8; 32],
    remote_id: [u8; 32],
    cb: [u8; 32],
    info: DeviceInfo,
    session: u64,
    pub state: State,
    tag: Option<[u8; 16]>,
    keys: Option<PairingKeys>,
    th: [u8; 32],
    peer_info: Option<DeviceInfo>,
    commitment: [u8; 32],
    host_nonce: [u8; 32],
    pub deadline: Option<Instant>,
    pub confirm_timeout: Duration,
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
            peer_info: None,
            commitment: [0; 32],
            host_nonce: [0; 32],
            deadline: None,
            confirm_timeout: CONFIRM_TIMEOUT,
            sas: None,
        }
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Done | State::Failed)
    }

    /// Past its Hello (M2 sent): an active handshake, not an idle connection (§9.1).
    pub fn is_active(&self) -> bool {
        matches!(
            self.state,
            State::AwaitConfirm | State::AwaitApproval | State::AwaitAccept
        )
    }

    fn terminate(&mut self, book: &mut OfferBook, out: Out) -> Out {
        if let Some(tag) = self.tag
            && let Some(offer) = book.offers.get_mut(&tag)
        {
            offer.release(self.session);
            // Two screens that disagree: someone else knows the code, it gets no more
            // attempts (§8.3).
            if matches!(&out.done, Some(Err(f)) if f.code == reject::SAS_DECLINED) {
                offer.ended = Some(reject::SAS_DECLINED);
            }
        }
        self.state = State::Failed;
        self.keys = None;
        out
    }

    fn settle(&mut self, book: &mut OfferBook, result: Result<Out, ProtoError>) -> Out {
        match result {
            Ok(out) if matches!(out.done, Some(Err(_))) => self.terminate(book, out),
            Ok(out) => out,
            Err(e) => self.terminate(book, Out::fail(e)),
        }
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
                    commitment,
                },
            ) => self.on_hello(
                book,
                session_tag,
                joiner_id,
                spake_msg,
                commitment,
                now,
                rng,
            ),
            (
                State::AwaitConfirm,
                Message::Confirm {
                    joiner_mac,
                    joiner_nonce,
                    sealed_info,
                },
            ) => self.on_confirm(book, &joiner_mac, &joiner_nonce, &sealed_info, now),
            (State::AwaitAccept, Message::Accept { accept_mac }) => {
                self.on_accept(book, &accept_mac, now)
            }
            (state, msg) => Err(unexpected(state, &msg)),
        });
        self.settle(book, result)
    }

    #[allow(clippy::too_many_arguments)]
    fn on_hello(
        &mut self,
        book: &mut OfferBook,
        tag: [u8; 16],
        joiner_id: [u8; 32],
        joiner_msg: [u8; 33],
        commitment: [u8; 32],
        now: Instant,
        rng: impl RngCore + CryptoRng,
    ) -> Result<Out, ProtoError> {
        let offer = book
            .offers
            .get_mut(&tag)
            .filter(|o| o.ended.is_none())
            .ok_or_else(|| ProtoError::new(reject::BAD_TAG, "unknown session tag"))?;
        if joiner_id != self.remote_id {
            return Err(ProtoError::new(
                reject::ID_MISMATCH,
                "claimed id is not the connection's id",
            ));
        }
        // An invalid point is refused before any scalar multiplication and before the Hello
        // rate's token (so it cannot starve the real joiner), and costs no attempt.
        check_point(&joiner_msg)?;
        if offer.live(now) {
            offer.rate(now)?;
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
        self.deadline = Some(offer.claim(self.session, now));
        self.tag = Some(tag);
        let host_nonce = fresh_nonce();
        self.th = Th {
            joiner_id: &joiner_id,
            host_id: &self.host_id,
            tag: &tag,
            joiner_msg: &joiner_msg,
            host_msg: &host_msg,
            cb: &self.cb,
            commitment: &commitment,
            host_nonce: &host_nonce,
        }
        .hash();
        let keys = PairingKeys::derive(&key, &self.th);
        let host_mac = confirmation_mac(&keys.host_confirm, &self.th);
        self.keys = Some(keys);
        self.commitment = commitment;
        self.host_nonce = host_nonce;
        self.state = State::AwaitConfirm;
        Ok(Out::send(
            Message::Reply {
                host_id: self.host_id,
                spake_msg: host_msg,
                host_nonce,
                host_mac,
            }
            .encode(),
        ))
    }

    fn live(&self, book: &OfferBook, now: Instant) -> Result<(), ProtoError> {
        let tag = self.tag.expect("a tag after Hello");
        let holds = book.offers.get(&tag).is_some_and(|o| o.holds(self.session));
        if self.deadline.is_none_or(|d| now >= d) || !holds {
            return Err(ProtoError::new(reject::TIMEOUT, "handshake timed out"));
        }
        Ok(())
    }

    fn on_confirm(
        &mut self,
        book: &mut OfferBook,
        mac: &[u8; 32],
        joiner_nonce: &[u8; 32],
        sealed: &[u8],
        now: Instant,
    ) -> Result<Out, ProtoError> {
        self.live(book, now)?;
        let keys = self.keys.clone().expect("keys exist in AwaitConfirm");
        if !verify_confirmation_mac(&keys.joiner_confirm, &self.th, mac) {
            return Err(ProtoError::new(
                reject::WRONG_CODE,
                "confirmation failed: wrong code",
            ));
        }
        if !opens_commitment(&self.commitment, joiner_nonce) {
            return Err(ProtoError::new(
                reject::BAD_COMMITMENT,
                "the nonce does not open the commitment",
            ));
        }
        let info = DeviceInfo::decode(&open_sealed(&keys.joiner_seal, sealed, &self.th)?)?;
        let sas = kdf::sas(&keys.sas, &self.host_nonce, joiner_nonce);
        let deadline = now + self.confirm_timeout;
        self.deadline = Some(deadline);
        let tag = self.tag.expect("a tag after Hello");
        if let Some(offer) = book.offers.get_mut(&tag) {
            offer.extend(self.session, deadline);
        }
        self.sas = Some(sas.clone());
        self.peer_info = Some(info.clone());
        self.state = State::AwaitApproval;
        Ok(Out {
            sas: Some(SasReady {
                sas,
                peer_info: Some(info),
            }),
            ..Out::default()
        })
    }

    /// The application approved the SAS: send Complete.
    pub fn approve(&mut self, book: &mut OfferBook, now: Instant) -> Out {
        if self.state != State::AwaitApproval {
            return self.settle(
                book,
                Err(ProtoError::new(reject::UNEXPECTED, "approve() not awaited")),
            );
        }
        let result = self.live(book, now).map(|()| {
            let keys = self.keys.as_ref().expect("keys exist in AwaitApproval");
            let sealed_info = seal(&keys.host_seal, &self.info.encode(), &self.th);
            self.state = State::AwaitAccept;
            Out::send(Message::Complete { sealed_info }.encode())
        });
        self.settle(book, result)
    }

    /// The application declined the SAS: Reject(SAS_DECLINED).
    pub fn decline(&mut self, book: &mut OfferBook) -> Out {
        self.abort(book, reject::SAS_DECLINED, "the SAS was not confirmed")
    }

    fn on_accept(
        &mut self,
        book: &mut OfferBook,
        mac: &[u8; 32],
        now: Instant,
    ) -> Result<Out, ProtoError> {
        self.live(book, now)?;
        let keys = self.keys.take().expect("keys exist in AwaitAccept");
        if !verify_confirmation_mac(&keys.joiner_accept, &self.th, mac) {
            return Err(ProtoError::new(reject::MALFORMED, "bad accept MAC"));
        }
        let tag = self.tag.expect("a tag after Hello");
        if let Some(offer) = book.offers.get_mut(&tag) {
            offer.active = None;
            offer.used = true;
        }
        self.state = State::Done;
        Ok(Out {
            done: Some(Ok(PairingResult {
                role: Role::Host,
                peer_id: self.remote_id,
                keys: keys.session_keys(Role::Host),
                sas: self.sas.clone().unwrap_or_default(),
                peer_info: self.peer_info.take().expect("info after Confirm"),
                transcript_hash: self.th,
            })),
            ..Out::default()
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
    pub state: State,
    spake: Option<Spake>,
    joiner_msg: [u8; 33],
    joiner_nonce: [u8; 32],
    keys: Option<PairingKeys>,
    th: [u8; 32],
    approved: bool,
    peer_info: Option<DeviceInfo>,
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
            joiner_nonce: [0; 32],
            keys: None,
            th: [0; 32],
            approved: false,
            peer_info: None,
            sas: None,
        }
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Done | State::Failed)
    }

    /// Whether a reply from the host has arrived (the host speaks version 2).
    pub fn heard_host(&self) -> bool {
        !matches!(self.state, State::Start | State::AwaitReply)
    }

    /// The body of M1, with a fresh nonce.
    pub fn start(&mut self, rng: impl RngCore + CryptoRng) -> Vec<u8> {
        self.start_with_nonce(rng, fresh_nonce())
    }

    /// The body of M1, committing to `joiner_nonce`.
    pub fn start_with_nonce(
        &mut self,
        rng: impl RngCore + CryptoRng,
        joiner_nonce: [u8; 32],
    ) -> Vec<u8> {
        assert_eq!(self.state, State::Start, "start() may be called once");
        let spake = Spake::start(
            Role::Joiner,
            &self.code.password(),
            &self.joiner_id,
            &self.host_id,
            rng,
        );
        self.joiner_msg = spake.message();
        self.joiner_nonce = joiner_nonce;
        self.spake = Some(spake);
        self.state = State::AwaitReply;
        Message::Hello {
            session_tag: self.code.tag,
            joiner_id: self.joiner_id,
            spake_msg: self.joiner_msg,
            commitment: commitment(&self.joiner_nonce),
        }
        .encode()
    }

    fn terminate(&mut self, out: Out) -> Out {
        self.state = State::Failed;
        self.spake = None;
        self.keys = None;
        out
    }

    fn settle(&mut self, result: Result<Out, ProtoError>) -> Out {
        match result {
            Ok(out) if matches!(out.done, Some(Err(_))) => self.terminate(out),
            Ok(out) => out,
            Err(e) => self.terminate(Out::fail(e)),
        }
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
                    host_nonce,
                    host_mac,
                },
            ) => self.on_reply(host_id, spake_msg, host_nonce, host_mac),
            (State::AwaitComplete, Message::Complete { sealed_info }) => {
                self.on_complete(&sealed_info)
            }
            (state, msg) => Err(unexpected(state, &msg)),
        });
        self.settle(result)
    }

    fn on_reply(
        &mut self,
        host_id: [u8; 32],
        host_msg: [u8; 33],
        host_nonce: [u8; 32],
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
        let commitment = commitment(&self.joiner_nonce);
        self.th = Th {
            joiner_id: &self.joiner_id,
            host_id: &self.host_id,
            tag: &self.code.tag,
            joiner_msg: &self.joiner_msg,
            host_msg: &host_msg,
            cb: &self.cb,
            commitment: &commitment,
            host_nonce: &host_nonce,
        }
        .hash();
        let keys = PairingKeys::derive(&key, &self.th);
        if !verify_confirmation_mac(&keys.host_confirm, &self.th, &host_mac) {
            return Err(ProtoError::new(
                reject::WRONG_CODE,
                "confirmation failed: wrong code",
            ));
        }
        let joiner_mac = confirmation_mac(&keys.joiner_confirm, &self.th);
        let sealed_info = seal(&keys.joiner_seal, &self.info.encode(), &self.th);
        let sas = kdf::sas(&keys.sas, &host_nonce, &self.joiner_nonce);
        self.sas = Some(sas.clone());
        self.keys = Some(keys);
        self.state = State::AwaitComplete;
        Ok(Out {
            send: Some(
                Message::Confirm {
                    joiner_mac,
                    joiner_nonce: self.joiner_nonce,
                    sealed_info,
                }
                .encode(),
            ),
            sas: Some(SasReady {
                sas,
                peer_info: None,
            }),
            done: None,
        })
    }

    fn on_complete(&mut self, sealed: &[u8]) -> Result<Out, ProtoError> {
        let keys = self.keys.as_ref().expect("keys exist in AwaitComplete");
        let info = DeviceInfo::decode(&open_sealed(&keys.host_seal, sealed, &self.th)?)?;
        self.peer_info = Some(info);
        if self.approved {
            Ok(self.paired())
        } else {
            self.state = State::AwaitApproval;
            Ok(Out::default())
        }
    }

    fn paired(&mut self) -> Out {
        let keys = self.keys.take().expect("keys before Accept");
        self.state = State::Done;
        let accept_mac = confirmation_mac(&keys.joiner_accept, &self.th);
        Out {
            send: Some(Message::Accept { accept_mac }.encode()),
            sas: None,
            done: Some(Ok(PairingResult {
                role: Role::Joiner,
                peer_id: self.host_id,
                keys: keys.session_keys(Role::Joiner),
                sas: self.sas.clone().unwrap_or_default(),
                peer_info: self.peer_info.take().expect("info after Complete"),
                transcript_hash: self.th,
            })),
        }
    }

    /// The application approved the SAS: Accept now, or once Complete arrives.
    pub fn approve(&mut self) -> Out {
        match self.state {
            State::AwaitComplete => {
                self.approved = true;
                Out::default()
            }
            State::AwaitApproval => self.paired(),
            _ => self.settle(Err(ProtoError::new(
                reject::UNEXPECTED,
                "approve() not awaited",
            ))),
        }
    }

    /// The application declined the SAS: Reject(SAS_DECLINED).
    pub fn decline(&mut self) -> Out {
        self.abort(reject::SAS_DECLINED, "the SAS was not confirmed")
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

    /// Runs one handshake to the end, each side answering its SAS question with `approve`;
    /// returns both outcomes and the SAS each side saw.
    fn run_with(
        book: &mut OfferBook,
        joiner_code: PairingCode,
        session: u64,
        now: Instant,
        approve: (bool, bool),
    ) -> (Done, Done, Option<String>, Option<String>) {
        let mut j = JoinerHandshake::new(joiner_code, JOINER, HOST, CB, info("j"));
        let mut h = HostHandshake::new(HOST, JOINER, CB, info("h"), session);
        let mut to_host = std::collections::VecDeque::from([j.start(os_rng())]);
        let (mut jd, mut hd, mut js, mut hsas) = (None, None, None, None);
        while let Some(body) = to_host.pop_front() {
            let mut out = h.receive(book, &body, now, os_rng());
            if let Some(ready) = out.sas.take() {
                assert_eq!(ready.peer_info.expect("joiner info").name, "j");
                hsas = Some(ready.sas);
                out = if approve.1 {
                    h.approve(book, now)
                } else {
                    h.decline(book)
                };
            }
            if out.done.is_some() {
                hd = out.done;
            }
            let Some(reply) = out.send else { continue };
            let mut out = j.receive(&reply);
            to_host.extend(out.send.take());
            if let Some(ready) = out.sas.take() {
                assert!(ready.peer_info.is_none());
                js = Some(ready.sas);
                out = if approve.0 { j.approve() } else { j.decline() };
                to_host.extend(out.send.take());
            }
            if out.done.is_some() {
                jd = out.done;
            }
        }
        (jd, hd, js, hsas)
    }

    fn run(
        book: &mut OfferBook,
        joiner_code: PairingCode,
        session: u64,
        now: Instant,
    ) -> (Done, Done) {
        let (j, h, _, _) = run_with(book, joiner_code, session, now, (true, true));
        (j, h)
    }

    #[test]
    fn pairs_with_matching_keys_and_sas() {
        let now = Instant::now();
        let (mut book, code) = setup(now);
        let (j, h, js, hs) = run_with(&mut book, code.clone(), 1, now, (true, true));
        let (j, h) = (
            j.expect("joiner done").expect("paired"),
            h.expect("host done").expect("paired"),
        );
        assert_eq!(j.sas, h.sas);
        assert_eq!(js.as_deref(), Some(j.sas.as_str()));
        assert_eq!(hs.as_deref(), Some(h.sas.as_str()));
        assert_eq!(j.sas.len(), 6);
        assert_eq!(j.keys.send, h.keys.receive);
        assert_eq!(j.keys.receive, h.keys.send);
        assert_eq!((j.peer_id, h.peer_id), (HOST, JOINER));
        assert_eq!(
            (j.peer_info.name.as_str(), h.peer_info.name.as_str()),
            ("h", "j")
        );
        assert!(book.offers[&code.tag].used);
        // single use
        let (_, h2) = run(&mut book, code, 2, now);
        assert_eq!(h2.expect("done").expect_err("used").code, reject::USED);
    }

    #[test]
    fn a_declined_sas_pairs_nobody() {
        for approve in [(true, false), (false, true), (false, false)] {
            let now = Instant::now();
            let (mut book, code) = setup(now);
            let (j, h, js, hs) = run_with(&mut book, code.clone(), 1, now, approve);
            let j = j.expect("joiner done").expect_err("declined");
            let h = h.expect("host done").expect_err("declined");
            assert_eq!(
                (j.code, h.code),
                (reject::SAS_DECLINED, reject::SAS_DECLINED)
            );
            // the side that declined reports it locally, the other as the peer's answer
            assert_eq!(j.by_peer, approve.0, "{approve:?}");
            assert_eq!(h.by_peer, approve.1, "{approve:?}");
            // both were asked (the joiner's Reject follows its Confirm)
            assert!(js.is_some() && hs.is_some());
            let offer = &book.offers[&code.tag];
            assert!(!offer.used);
            assert_eq!(offer.attempts_used, 1);
        }
    }

    #[test]
    fn a_nonce_that_does_not_open_the_commitment_is_refused() {
        let now = Instant::now();
        let (mut book, code) = setup(now);
        let mut j = JoinerHandshake::new(code, JOINER, HOST, CB, info("j"));
        let mut h = HostHandshake::new(HOST, JOINER, CB, info("h"), 1);
        let m2 = h
            .receive(&mut book, &j.start(os_rng()), now, os_rng())
            .send
            .expect("M2");
        let m3 = j.receive(&m2).send.expect("M3");
        let Message::Confirm {
            joiner_mac,
            mut joiner_nonce,
            sealed_info,
        } = Message::decode(&m3).expect("M3")
        else {
            panic!("not a Confirm");
        };
        joiner_nonce[0] ^= 1;
        let forged = Message::Confirm {
            joiner_mac,
            joiner_nonce,
            sealed_info,
        }
        .encode();
        let out = h.receive(&mut book, &forged, now, os_rng());
        assert!(out.sas.is_none());
        assert_eq!(
            out.done.expect("done").expect_err("commitment").code,
            reject::BAD_COMMITMENT
        );
    }

    #[test]
    fn the_sas_depends_on_the_joiner_nonce() {
        // Same SPAKE2 run and host message, two joiner nonces: the SAS differs (a host that
        // fixed M2 cannot predict it). Checked on the primitives of §7.6.
        let key = [5u8; 32];
        let (n1, n2, hn) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        assert_ne!(kdf::sas(&key, &hn, &n1), kdf::sas(&key, &hn, &n2));
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

    fn hello_with_point(code: &PairingCode, point: [u8; 32]) -> Vec<u8> {
        let mut spake_msg = [0u8; 33];
        spake_msg[0] = crate::wire::SIDE_A;
        spake_msg[1..].copy_from_slice(&point);
        Message::Hello {
            session_tag: code.tag,
            joiner_id: JOINER,
            spake_msg,
            commitment: [0; 32],
        }
        .encode()
    }

    #[test]
    fn invalid_points_are_malformed_and_cost_no_attempt() {
        let now = Instant::now();
        let (mut book, code) = setup(now);
        let mut identity = [0u8; 32];
        identity[0] = 1;
        // a point of order 8 (small subgroup), not a point, and a non-canonical encoding
        let torsion = curve25519_dalek::constants::EIGHT_TORSION[1]
            .compress()
            .to_bytes();
        let mut not_a_point = [0u8; 32];
        not_a_point[0] = 2;
        let non_canonical = [0xffu8; 32];
        for (i, p) in [identity, torsion, not_a_point, non_canonical]
            .into_iter()
            .enumerate()
        {
            assert!(
                check_point(&{
                    let mut m = [0x41u8; 33];
                    m[1..].copy_from_slice(&p);
                    m
                })
                .is_err()
            );
            let mut h = HostHandshake::new(HOST, JOINER, CB, info("h"), i as u64);
            let out = h.receive(&mut book, &hello_with_point(&code, p), now, os_rng());
            let f = out.done.expect("done").expect_err("bad point");
            assert_eq!(f.code, reject::MALFORMED, "point {i}");
            assert!(!h.is_active());
        }
        assert_eq!(book.offers[&code.tag].attempts_used, 0);
        // and the code still pairs
        let (j, h) = run(&mut book, code, 99, now + Duration::from_secs(1));
        assert!(j.expect("done").is_ok() && h.expect("done").is_ok());
    }

    #[test]
    fn hellos_are_rate_limited_per_offer() {
        let now = Instant::now();
        let (mut book, code) = setup(now);
        book.offers.get_mut(&code.tag).expect("offer").max_attempts = 100;
        let mut identity = [0u8; 32];
        identity[0] = 1;
        // invalid points take no token: 50 of them leave the bucket full
        for i in 0..50 {
            let mut h = HostHandshake::new(HOST, JOINER, CB, info("h"), i);
            let out = h.receive(&mut book, &hello_with_point(&code, identity), now, os_rng());
            let f = out.done.expect("done").expect_err("bad point");
            assert_eq!(f.code, reject::MALFORMED);
        }
        // valid Hellos at one instant, each handshake abandoned at once: 10 get M2, then BUSY
        let (mut replies, mut busy) = (0, 0);
        for i in 100..125 {
            let mut j = JoinerHandshake::new(code.clone(), JOINER, HOST, CB, info("j"));
            let mut h = HostHandshake::new(HOST, JOINER, CB, info("h"), i);
            let out = h.receive(&mut book, &j.start(os_rng()), now, os_rng());
            match out.done {
                None => {
                    replies += 1;
                    h.abort(&mut book, reject::CANCELLED, "gone");
                }
                Some(Err(f)) if f.code == reject::BUSY => busy += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!((replies, busy), (10, 15));
        assert_eq!(book.offers[&code.tag].attempts_used, 10);
        // refilled after a second: a real joiner gets through
        let (j, h) = run(&mut book, code.clone(), 200, now + Duration::from_secs(1));
        assert!(j.expect("done").is_ok() && h.expect("done").is_ok());
    }

    #[test]
    fn a_declined_sas_ends_the_code() {
        let now = Instant::now();
        let (mut book, code) = setup(now);
        let (_, h, _, _) = run_with(&mut book, code.clone(), 1, now, (false, true));
        assert_eq!(
            h.expect("done").expect_err("declined").code,
            reject::SAS_DECLINED
        );
        assert!(!book.hosting(now));
        assert_eq!(book.offers[&code.tag].attempts_used, 1);
        // the right words again: the code is gone
        let (j, _) = run(&mut book, code, 2, now);
        assert_eq!(j.expect("done").expect_err("ended").code, reject::BAD_TAG);
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
        assert!(h1.is_active());
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
    fn approval_after_the_confirm_timeout_is_a_timeout() {
        let now = Instant::now();
        let (mut book, code) = setup(now);
        let mut j = JoinerHandshake::new(code.clone(), JOINER, HOST, CB, info("j"));
        let mut h = HostHandshake::new(HOST, JOINER, CB, info("h"), 1);
        let m2 = h
            .receive(&mut book, &j.start(os_rng()), now, os_rng())
            .send
            .expect("M2");
        let m3 = j.receive(&m2).send.expect("M3");
        let out = h.receive(&mut book, &m3, now, os_rng());
        assert!(out.sas.is_some());
        // while it waits for its user, the offer stays held: a new Hello is BUSY
        let (j2, _) = run(&mut book, code.clone(), 2, now + HANDSHAKE_TIMEOUT);
        assert_eq!(j2.expect("done").expect_err("busy").code, reject::BUSY);
        let out = h.approve(&mut book, now + CONFIRM_TIMEOUT);
        assert_eq!(
            out.done.expect("done").expect_err("late").code,
            reject::TIMEOUT
        );
        assert!(!book.offers[&code.tag].used);
    }

    #[test]
    fn a_bad_accept_mac_is_malformed_and_stores_nothing() {
        let now = Instant::now();
        let (mut book, code) = setup(now);
        let mut j = JoinerHandshake::new(code.clone(), JOINER, HOST, CB, info("j"));
        let mut h = HostHandshake::new(HOST, JOINER, CB, info("h"), 1);
        let m2 = h
            .receive(&mut book, &j.start(os_rng()), now, os_rng())
            .send
            .expect("M2");
        let m3 = j.receive(&m2).send.expect("M3");
        assert!(h.receive(&mut book, &m3, now, os_rng()).sas.is_some());
        let m4 = h.approve(&mut book, now).send.expect("M4");
        assert!(j.approve().send.is_none());
        let out = j.receive(&m4);
        assert!(matches!(out.done, Some(Ok(_))));
        let mut m5 = out.send.expect("M5");
        m5[5] ^= 1;
        let out = h.receive(&mut book, &m5, now, os_rng());
        assert_eq!(
            out.done.expect("done").expect_err("bad mac").code,
            reject::MALFORMED
        );
        assert!(!book.offers[&code.tag].used);
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
