//! Recomputes every output of tests/vectors/pairing.json and tests/vectors/messaging.json
//! from its inputs and compares (nothing expected is copied into a result).

use curve25519_dalek::scalar::Scalar;
use rand_core::{CryptoRng, RngCore};
use serde_json::Value;

use crate::code::{PairingCode, decode_tag, encode_tag};
use crate::kdf::{
    COMMITMENT_LABEL, LABELS, PAIRING_BINDING_LABEL, PairingKeys, Role, SessionKeys, Transcript,
    commitment, confirmation_mac, hkdf_sha256, opens_commitment, sas, sas_digits, sas_value,
    verify_confirmation_mac,
};
use crate::messaging::{MessageChannel, derive_subkey, encode_aad, nonce};
use crate::pairing::Spake;
use crate::wire::{
    DeviceInfo, Message, decode_header, encode_frame, encode_header, open_sealed, seal,
};
use crate::words::{CodeError, normalize_words, secret_bytes, wordlist};

const PAIRING: &str = include_str!("../../../tests/vectors/pairing.json");
const MESSAGING: &str = include_str!("../../../tests/vectors/messaging.json");

fn h(v: &Value) -> Vec<u8> {
    data_encoding::HEXLOWER
        .decode(v.as_str().expect("a hex string").as_bytes())
        .expect("hex")
}

fn a32(v: &Value) -> [u8; 32] {
    h(v).try_into().expect("32 bytes")
}

fn hx(b: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(b)
}

/// Yields fixed bytes: the SPAKE2 entropy, injected.
struct FixedRng(Vec<u8>, usize);

impl RngCore for FixedRng {
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
        for d in dest {
            *d = self.0[self.1];
            self.1 += 1;
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for FixedRng {}

/// python-spake2 reads its 64 entropy bytes as a big-endian integer mod L; curve25519-dalek's
/// `Scalar::random` reads 64 bytes little-endian mod L. Reversing gives the same scalar.
fn rng_from_entropy(entropy: &[u8]) -> FixedRng {
    assert_eq!(entropy.len(), 64);
    FixedRng(entropy.iter().rev().copied().collect(), 0)
}

fn scalar_le(entropy: &[u8]) -> [u8; 32] {
    let wide: [u8; 64] = entropy
        .iter()
        .rev()
        .copied()
        .collect::<Vec<_>>()
        .try_into()
        .expect("64");
    Scalar::from_bytes_mod_order_wide(&wide).to_bytes()
}

fn pairing() -> Value {
    serde_json::from_str(PAIRING).expect("pairing.json")
}

#[test]
fn wordlist_is_bip39() {
    use sha2::Digest;
    let text = include_str!("../../../python/iroh_pair/bip39_english.txt");
    assert_eq!(
        hx(&sha2::Sha256::digest(text.as_bytes())),
        "2f5eed53a4727b4bf8880d8f3f199efc90e58503646d9ff8eff3a2ed3b24dbda"
    );
    assert_eq!(wordlist().len(), 2048);
    assert_eq!(wordlist()[0], "abandon");
    assert_eq!(wordlist()[2047], "zoo");
}

#[test]
fn envelope() {
    let v = pairing();
    assert_eq!(v["version"].as_u64(), Some(2));
    assert_eq!(
        v["alpn"].as_str().expect("alpn").as_bytes(),
        crate::kdf::ALPN
    );
    let e = &v["envelope"];
    let kind = e["kind"].as_str().expect("kind");
    let header = encode_header(kind);
    assert_eq!(hx(&header), e["header"].as_str().expect("header"));
    // The vector's frame is the framing of one body (the Hello), as on every later frame.
    let hello = Message::decode(&h(&v["messages"]["hello"]))
        .expect("hello")
        .encode();
    assert_eq!(hx(&hello), e["frame_body"].as_str().expect("frame_body"));
    assert_eq!(
        hx(&encode_frame(&hello)),
        e["frame"].as_str().expect("frame")
    );
    // The first frame of a pair stream (§2) carries the header, then M1.
    let mut first = header.clone();
    first.extend_from_slice(&hello);
    let frame = encode_frame(&first);
    assert_eq!(hx(&frame), e["first_frame"].as_str().expect("first_frame"));
    assert_eq!(
        frame[..4],
        ((header.len() + hello.len()) as u32).to_be_bytes()
    );
    assert_eq!(
        hx(&frame[4..4 + header.len()]),
        e["header"].as_str().expect("header")
    );
    let (k, used) = decode_header(&frame[4..]).expect("decodes");
    assert_eq!((k.as_str(), used), (kind, header.len()));
    assert_eq!(
        Message::decode(&frame[4 + used..]).expect("M1").encode(),
        hello
    );
    assert_eq!(kind, crate::wire::PAIR_KIND);
    assert!(decode_header(&[2, 4, b'p', b'a', b'i', b'r']).is_err());
    assert!(decode_header(&[1, 0]).is_err());
    assert!(decode_header(&[1, 4, b'P', b'a', b'i', b'r']).is_err());
}

#[test]
fn code_and_normalization() {
    let v = pairing();
    let c = &v["code"];
    let words: Vec<String> = c["words"]
        .as_array()
        .expect("words")
        .iter()
        .map(|w| w.as_str().expect("str").to_owned())
        .collect();
    assert_eq!(
        hx(&secret_bytes(&words)),
        c["password"].as_str().expect("password")
    );
    let tag: [u8; 16] = h(&c["session_tag"]).try_into().expect("16");
    assert_eq!(
        encode_tag(&tag),
        c["session_tag_base32"].as_str().expect("b32")
    );
    assert_eq!(
        decode_tag(c["session_tag_base32"].as_str().expect("b32")).expect("tag"),
        tag
    );
    assert_eq!(
        decode_tag(
            &c["session_tag_base32"]
                .as_str()
                .expect("b32")
                .to_uppercase()
        )
        .expect("tag"),
        tag
    );
    let code = PairingCode {
        words: words.clone(),
        tag,
        ticket: c["ticket"].as_str().expect("ticket").to_owned(),
    };
    assert_eq!(code.to_string(), c["full"].as_str().expect("full"));
    let parsed = PairingCode::parse(c["full"].as_str().expect("full")).expect("parses");
    assert_eq!(parsed, code);
    assert_eq!(
        PairingCode::parse("legal winner thank"),
        Err(CodeError::Malformed)
    );
    for case in v["normalization"]["valid"].as_array().expect("valid") {
        let want: Vec<&str> = case["words"]
            .as_array()
            .expect("words")
            .iter()
            .map(|w| w.as_str().expect("str"))
            .collect();
        assert_eq!(
            normalize_words(case["input"].as_str().expect("input")).expect("valid"),
            want,
            "{case}"
        );
    }
    for case in v["normalization"]["invalid"].as_array().expect("invalid") {
        let err = normalize_words(case["input"].as_str().expect("input")).expect_err("invalid");
        let kind = match err {
            CodeError::UnknownWord(_) => "unknown_word",
            CodeError::BadWordCount(_) => "word_count",
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(kind, case["error"].as_str().expect("error"), "{case}");
    }
}

#[test]
fn identities() {
    let v = pairing();
    for who in ["joiner", "host"] {
        let sk = iroh::SecretKey::from_bytes(&a32(&v["identities"][format!("{who}_secret_key")]));
        assert_eq!(
            hx(sk.public().as_bytes()),
            v["identities"][format!("{who}_id")].as_str().expect("id")
        );
    }
    let m: Value = serde_json::from_str(MESSAGING).expect("messaging.json");
    for who in ["joiner", "host"] {
        let sk = iroh::SecretKey::from_bytes(&a32(&m[format!("{who}_secret_key")]));
        assert_eq!(
            hx(sk.public().as_bytes()),
            m[format!("{who}_id")].as_str().expect("id")
        );
    }
}

#[test]
fn spake2_full_run_transcript_keys_and_messages() {
    let v = pairing();
    let s = &v["spake2"];
    let pw = h(&s["password"]);
    assert_eq!(pw, h(&v["code"]["password"]));
    let (id_a, id_b) = (h(&s["idA"]), h(&s["idB"]));
    assert_eq!(id_a, h(&v["identities"]["joiner_id"]));
    assert_eq!(id_b, h(&v["identities"]["host_id"]));
    let (je, he) = (h(&s["joiner_entropy"]), h(&s["host_entropy"]));
    assert_eq!(
        hx(&scalar_le(&je)),
        s["joiner_scalar_le"].as_str().expect("scalar")
    );
    assert_eq!(
        hx(&scalar_le(&he)),
        s["host_scalar_le"].as_str().expect("scalar")
    );

    let joiner = Spake::start(Role::Joiner, &pw, &id_a, &id_b, rng_from_entropy(&je));
    let host = Spake::start(Role::Host, &pw, &id_a, &id_b, rng_from_entropy(&he));
    let (jm, hm) = (joiner.message(), host.message());
    assert_eq!(hx(&jm), s["joiner_msg"].as_str().expect("msg"));
    assert_eq!(hx(&hm), s["host_msg"].as_str().expect("msg"));
    // the scalar injected as scalar_le || zeros gives the same message
    let mut fixed = h(&s["joiner_scalar_le"]);
    fixed.extend([0u8; 32]);
    assert_eq!(
        Spake::start(Role::Joiner, &pw, &id_a, &id_b, FixedRng(fixed, 0)).message(),
        jm
    );
    let kj = joiner.finish(&hm).expect("joiner finishes");
    let kh = host.finish(&jm).expect("host finishes");
    assert_eq!(kj, kh);
    assert_eq!(hx(&kj), s["key"].as_str().expect("key"));
    // the wrong password on the host side
    let w = &s["wrong_password"];
    let wrong = Spake::start(
        Role::Host,
        &h(&w["password"]),
        &id_a,
        &id_b,
        rng_from_entropy(&he),
    );
    assert_eq!(hx(&wrong.message()), w["host_msg"].as_str().expect("msg"));
    assert_eq!(
        hx(&wrong.finish(&jm).expect("finishes")),
        w["host_key"].as_str().expect("key")
    );
    // reflection and bad points are refused
    let again = Spake::start(Role::Host, &pw, &id_a, &id_b, rng_from_entropy(&he));
    let mut reflected = hm;
    reflected[0] = 0x41;
    assert!(again.finish(&reflected).is_err());
    let bad = Spake::start(Role::Host, &pw, &id_a, &id_b, rng_from_entropy(&he));
    let mut identity = [0u8; 33];
    identity[0] = 0x41;
    identity[1] = 1;
    assert!(bad.finish(&identity).is_err());

    // commitment and nonces
    let c = &v["commitment"];
    assert_eq!(h(&c["label"]), COMMITMENT_LABEL.to_vec());
    let joiner_nonce: [u8; 32] = a32(&c["joiner_nonce"]);
    let host_nonce: [u8; 32] = a32(&c["host_nonce"]);
    let commit = commitment(&joiner_nonce);
    assert_eq!(hx(&commit), c["value"].as_str().expect("commitment"));
    assert!(opens_commitment(&commit, &joiner_nonce));
    let mut other = joiner_nonce;
    other[31] ^= 1;
    assert!(!opens_commitment(&commit, &other));

    // transcript
    let tag = h(&v["code"]["session_tag"]);
    assert_eq!(
        h(&v["channel_binding"]["label"]),
        PAIRING_BINDING_LABEL.to_vec()
    );
    let cb = h(&v["channel_binding"]["value"]);
    let t = Transcript {
        joiner_id: &id_a,
        host_id: &id_b,
        session_tag: &tag,
        joiner_msg: &jm,
        host_msg: &hm,
        channel_binding: &cb,
        commitment: &commit,
        host_nonce: &host_nonce,
    };
    let items = v["transcript"]["items"].as_array().expect("items");
    assert_eq!(items.len(), 13);
    assert_eq!(t.items().len(), 13);
    for (mine, want) in t.items().iter().zip(items) {
        assert_eq!(hx(mine), want.as_str().expect("item"));
    }
    assert_eq!(
        hx(&t.encode()),
        v["transcript"]["encoding"].as_str().expect("encoding")
    );
    let th = t.hash();
    assert_eq!(hx(&th), v["transcript"]["hash"].as_str().expect("hash"));

    // key schedule
    let kdf = &v["kdf"];
    assert_eq!(h(&kdf["ikm"]), kj.to_vec());
    assert_eq!(h(&kdf["salt"]), th.to_vec());
    let keys = PairingKeys::derive(&kj, &th);
    let derived = [
        keys.host_to_joiner,
        keys.joiner_to_host,
        keys.host_confirm,
        keys.joiner_confirm,
        keys.joiner_accept,
        keys.sas,
        keys.host_seal,
        keys.joiner_seal,
    ];
    assert_eq!(
        kdf["outputs"].as_object().expect("outputs").len(),
        LABELS.len()
    );
    for ((name, label), key) in LABELS.iter().zip(derived) {
        let out = &kdf["outputs"][*name];
        assert_eq!(hx(label), out["info"].as_str().expect("info"), "{name}");
        assert_eq!(hx(&key), out["okm"].as_str().expect("okm"), "{name}");
        assert_eq!(hkdf_sha256(&kj, &th, label), key);
    }
    let hs = keys.session_keys(Role::Host);
    let js = keys.session_keys(Role::Joiner);
    assert_eq!((hs.send, hs.receive), (js.receive, js.send));
    assert_ne!(hs.send, hs.receive);

    // confirmation and SAS
    let host_mac = confirmation_mac(&keys.host_confirm, &th);
    let joiner_mac = confirmation_mac(&keys.joiner_confirm, &th);
    assert_eq!(
        hx(&host_mac),
        v["confirm"]["host_mac"].as_str().expect("mac")
    );
    assert_eq!(
        hx(&joiner_mac),
        v["confirm"]["joiner_mac"].as_str().expect("mac")
    );
    assert!(verify_confirmation_mac(&keys.host_confirm, &th, &host_mac));
    assert!(!verify_confirmation_mac(
        &keys.joiner_confirm,
        &th,
        &host_mac
    ));
    let accept_mac = confirmation_mac(&keys.joiner_accept, &th);
    assert_eq!(
        hx(&accept_mac),
        v["confirm"]["accept_mac"].as_str().expect("mac")
    );
    assert!(verify_confirmation_mac(
        &keys.joiner_accept,
        &th,
        &accept_mac
    ));
    assert_eq!(
        hx(&keys.sas),
        v["sas"]["sas_key"].as_str().expect("sas key")
    );
    let mut sas_msg = host_nonce.to_vec();
    sas_msg.extend_from_slice(&joiner_nonce);
    assert_eq!(hx(&sas_msg), v["sas"]["message"].as_str().expect("message"));
    let value = sas_value(&keys.sas, &host_nonce, &joiner_nonce);
    assert_eq!(hx(&value), v["sas"]["value"].as_str().expect("value"));
    assert_eq!(
        sas_digits(&value),
        v["sas"]["digits"].as_str().expect("digits")
    );
    assert_eq!(
        sas(&keys.sas, &host_nonce, &joiner_nonce),
        v["sas"]["digits"].as_str().expect("digits")
    );
    // the nonces' order matters, and the joiner's nonce changes the SAS
    assert_ne!(sas_value(&keys.sas, &joiner_nonce, &host_nonce), value);
    assert_ne!(sas_value(&keys.sas, &host_nonce, &other), value);

    // device infos
    let mut sealed = Vec::new();
    for (who, key) in [("joiner", keys.joiner_seal), ("host", keys.host_seal)] {
        let d = &v["device_info"][who];
        let info = DeviceInfo {
            name: d["name"].as_str().expect("name").into(),
            device_type: d["device_type"].as_str().expect("type").into(),
            os: d["os"].as_str().expect("os").into(),
            app_version: d["app_version"].as_str().expect("version").into(),
        };
        info.validate().expect("valid");
        let enc = info.encode();
        assert_eq!(hx(&enc), d["encoded"].as_str().expect("encoded"));
        assert_eq!(DeviceInfo::decode(&enc).expect("decodes"), info);
        assert_eq!(hx(&key), d["key"].as_str().expect("key"));
        assert_eq!(h(&d["nonce"]), vec![0u8; 12]);
        assert_eq!(h(&d["aad"]), th.to_vec());
        let s = seal(&key, &enc, &th);
        assert_eq!(hx(&s), d["sealed"].as_str().expect("sealed"));
        assert_eq!(open_sealed(&key, &s, &th).expect("opens"), enc);
        let mut bad = s.clone();
        bad[0] ^= 1;
        assert!(open_sealed(&key, &bad, &th).is_err());
        sealed.push(s);
    }

    // the five messages and a Reject
    let m = &v["messages"];
    let tag16: [u8; 16] = tag.clone().try_into().expect("16");
    let msgs = [
        (
            "hello",
            Message::Hello {
                session_tag: tag16,
                joiner_id: id_a.clone().try_into().expect("32"),
                spake_msg: jm,
                commitment: commit,
            },
        ),
        (
            "reply",
            Message::Reply {
                host_id: id_b.clone().try_into().expect("32"),
                spake_msg: hm,
                host_nonce,
                host_mac,
            },
        ),
        (
            "confirm",
            Message::Confirm {
                joiner_mac,
                joiner_nonce,
                sealed_info: sealed[0].clone(),
            },
        ),
        (
            "complete",
            Message::Complete {
                sealed_info: sealed[1].clone(),
            },
        ),
        ("accept", Message::Accept { accept_mac }),
    ];
    for (name, msg) in msgs {
        let enc = msg.encode();
        assert_eq!(hx(&enc), m[name].as_str().expect("msg"), "{name}");
        assert_eq!(Message::decode(&enc).expect("decodes"), msg);
        let mut trailing = enc.clone();
        trailing.push(0);
        assert!(
            Message::decode(&trailing).is_err(),
            "{name} with a trailing byte"
        );
        assert!(
            Message::decode(&enc[..enc.len() - 1]).is_err(),
            "{name} one byte short"
        );
    }
    let r = &m["reject"];
    let reject = Message::reject(
        r["code"].as_u64().expect("code") as u16,
        r["text"].as_str().expect("text"),
    );
    assert_eq!(
        hx(&reject.encode()),
        r["encoded"].as_str().expect("encoded")
    );
    assert_eq!(Message::decode(&reject.encode()).expect("decodes"), reject);
}

#[test]
fn messaging_vectors() {
    let v: Value = serde_json::from_str(MESSAGING).expect("messaging.json");
    let host_id = a32(&v["host_id"]);
    let joiner_id = a32(&v["joiner_id"]);
    let h2j = a32(&v["session_keys"]["host_to_joiner"]);
    let j2h = a32(&v["session_keys"]["joiner_to_host"]);
    let cb = h(&v["channel_binding"]);
    assert_eq!(
        v["channel_binding_label"]
            .as_str()
            .expect("label")
            .as_bytes(),
        crate::messaging::BINDING_LABEL
    );
    assert_eq!(
        v["key_label"].as_str().expect("label").as_bytes(),
        crate::messaging::KEY_LABEL
    );
    let sub_h2j = derive_subkey(&h2j, &cb, &host_id, &joiner_id);
    let sub_j2h = derive_subkey(&j2h, &cb, &joiner_id, &host_id);
    assert_eq!(
        hx(&sub_h2j),
        v["subkeys"]["host_to_joiner"].as_str().expect("subkey")
    );
    assert_eq!(
        hx(&sub_j2h),
        v["subkeys"]["joiner_to_host"].as_str().expect("subkey")
    );

    let mut host = MessageChannel::new(
        host_id,
        joiner_id,
        &SessionKeys {
            send: h2j,
            receive: j2h,
        },
        &cb,
    );
    let mut joiner = MessageChannel::new(
        joiner_id,
        host_id,
        &SessionKeys {
            send: j2h,
            receive: h2j,
        },
        &cb,
    );
    assert_eq!((host.seal_key(), host.open_key()), (&sub_h2j, &sub_j2h));
    assert_eq!((joiner.seal_key(), joiner.open_key()), (&sub_j2h, &sub_h2j));
    for msg in v["messages"].as_array().expect("messages") {
        let from_host = msg["from"] == "host";
        let kind = msg["kind"].as_str().expect("kind");
        let counter = msg["counter"].as_u64().expect("counter");
        let mid: [u8; 16] = h(&msg["message_id"]).try_into().expect("16");
        let plaintext = h(&msg["plaintext"]);
        let reply_to: Option<[u8; 16]> =
            (!msg["reply_to"].is_null()).then(|| h(&msg["reply_to"]).try_into().expect("16"));
        let (sender, receiver) = if from_host {
            (host_id, joiner_id)
        } else {
            (joiner_id, host_id)
        };
        let aad = encode_aad(&sender, &receiver, kind, counter, reply_to.as_ref());
        assert_eq!(
            hx(&aad),
            msg["aad"].as_str().expect("aad"),
            "{}",
            msg["note"]
        );
        assert_eq!(hx(&nonce(counter)), msg["nonce"].as_str().expect("nonce"));
        let (tx, rx) = if from_host {
            (&mut host, &mut joiner)
        } else {
            (&mut joiner, &mut host)
        };
        let sealed = tx.seal(kind, &plaintext, &mid, reply_to.as_ref());
        assert_eq!(
            hx(&sealed),
            msg["sealed"].as_str().expect("sealed"),
            "{}",
            msg["note"]
        );
        // opening: a wrong kind is tampered; the right one opens once, then is a replay
        assert_eq!(
            rx.open("other", &sealed, reply_to.as_ref())
                .expect_err("wrong kind")
                .0,
            16
        );
        let opened = rx.open(kind, &sealed, reply_to.as_ref()).expect("opens");
        assert_eq!(
            (opened.message_id, opened.plaintext, opened.counter),
            (mid, plaintext, counter)
        );
        assert_eq!(
            rx.open(kind, &sealed, reply_to.as_ref())
                .expect_err("replay")
                .0,
            17
        );
    }
}

#[test]
fn replay_window() {
    use crate::messaging::ReplayWindow;
    let mut w = ReplayWindow::default();
    assert!(w.check(5).is_none());
    w.mark(5);
    assert_eq!(w.check(5).map(|r| r.0), Some(17));
    assert!(w.check(3).is_none());
    w.mark(3);
    assert_eq!(w.check(3).map(|r| r.0), Some(17));
    w.mark(2000);
    assert_eq!(w.check(2000 - 1024).map(|r| r.0), Some(20));
    assert!(w.check(2000 - 1023).is_none());
    assert_eq!(w.check(5).map(|r| r.0), Some(20));
    w.mark(2001);
    assert_eq!(w.check(2000).map(|r| r.0), Some(17));
    assert!(w.check(1999).is_none());
}
