//! SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677) as Kafka speaks them: credentials, and
//! the server side of the three-message exchange.
//!
//! Only the salted, iterated credential is stored ([`Credential`]); the password never reaches
//! the store (AlterUserScramCredentials carries the salted password, and PLAIN logins are
//! checked against the same credential). An unknown user gets a made-up salt and fails at the
//! last step like a wrong password, so an exchange does not reveal which users exist.

use std::num::NonZeroU32;

use aws_lc_rs::{constant_time, digest, hmac, pbkdf2, rand as lc_rand};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use crate::error::AuthError;

/// Fewest iterations a credential may have (Kafka's minimum).
pub const MIN_ITERATIONS: u32 = 4096;
/// Most iterations a credential may have (Kafka's maximum).
pub const MAX_ITERATIONS: u32 = 16384;

/// A SCRAM mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// SCRAM-SHA-256.
    Sha256,
    /// SCRAM-SHA-512.
    Sha512,
}

impl Mechanism {
    /// Both, in preference order.
    pub const ALL: [Mechanism; 2] = [Mechanism::Sha256, Mechanism::Sha512];

    /// The SASL mechanism name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Sha256 => "SCRAM-SHA-256",
            Mechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// From a SASL mechanism name.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == s)
    }

    /// Kafka's `ScramMechanism` code (1, 2).
    pub fn code(self) -> i8 {
        match self {
            Mechanism::Sha256 => 1,
            Mechanism::Sha512 => 2,
        }
    }

    /// From Kafka's `ScramMechanism` code.
    pub fn from_code(c: i8) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.code() == c)
    }

    fn hmac_alg(self) -> hmac::Algorithm {
        match self {
            Mechanism::Sha256 => hmac::HMAC_SHA256,
            Mechanism::Sha512 => hmac::HMAC_SHA512,
        }
    }

    fn pbkdf2_alg(self) -> pbkdf2::Algorithm {
        match self {
            Mechanism::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            Mechanism::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }

    fn digest_alg(self) -> &'static digest::Algorithm {
        match self {
            Mechanism::Sha256 => &digest::SHA256,
            Mechanism::Sha512 => &digest::SHA512,
        }
    }

    /// Output length of the hash, in bytes.
    pub fn hash_len(self) -> usize {
        self.digest_alg().output_len()
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        hmac::sign(&hmac::Key::new(self.hmac_alg(), key), data)
            .as_ref()
            .to_vec()
    }

    fn h(self, data: &[u8]) -> Vec<u8> {
        digest::digest(self.digest_alg(), data).as_ref().to_vec()
    }

    /// `Hi(password, salt, iterations)`: the salted password.
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0u8; self.hash_len()];
        let n = NonZeroU32::new(iterations.max(1)).expect("at least one iteration");
        pbkdf2::derive(self.pbkdf2_alg(), n, salt, password, &mut out);
        out
    }
}

/// What verifies a password without holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// Salt.
    pub salt: Vec<u8>,
    /// `H(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: Vec<u8>,
    /// PBKDF2 iterations.
    pub iterations: u32,
}

impl Credential {
    /// From a salted password (what AlterUserScramCredentials carries).
    pub fn from_salted(m: Mechanism, salted: &[u8], salt: Vec<u8>, iterations: u32) -> Self {
        let client_key = m.hmac(salted, b"Client Key");
        Self {
            salt,
            stored_key: m.h(&client_key),
            server_key: m.hmac(salted, b"Server Key"),
            iterations,
        }
    }

    /// From a password, with a fresh random salt.
    pub fn from_password(m: Mechanism, password: &str, iterations: u32) -> Self {
        let salt = random_bytes(24);
        let salted = m.salted_password(password.as_bytes(), &salt, iterations);
        Self::from_salted(m, &salted, salt, iterations)
    }

    /// Whether `password` is this credential's password (PLAIN logins).
    pub fn verify_password(&self, m: Mechanism, password: &str) -> bool {
        let salted = m.salted_password(password.as_bytes(), &self.salt, self.iterations);
        let stored = m.h(&m.hmac(&salted, b"Client Key"));
        constant_time::verify_slices_are_equal(&stored, &self.stored_key).is_ok()
    }

    /// As stored in the metadata store.
    pub fn to_record(&self) -> silt_meta::layout::security::ScramRecord {
        silt_meta::layout::security::ScramRecord {
            salt: B64.encode(&self.salt),
            stored_key: B64.encode(&self.stored_key),
            server_key: B64.encode(&self.server_key),
            iterations: self.iterations,
        }
    }

    /// From the stored form; `None` if it is not valid base64.
    pub fn from_record(r: &silt_meta::layout::security::ScramRecord) -> Option<Self> {
        Some(Self {
            salt: B64.decode(&r.salt).ok()?,
            stored_key: B64.decode(&r.stored_key).ok()?,
            server_key: B64.decode(&r.server_key).ok()?,
            iterations: r.iterations,
        })
    }
}

/// The salt shown for a user that does not exist: the same on every attempt (as a real user's
/// is), derived from a per-process secret, so repeated exchanges do not tell users apart.
fn fake_salt(m: Mechanism, user: &str) -> Vec<u8> {
    static SECRET: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let key = SECRET.get_or_init(|| random_bytes(32));
    let mut salt = m.hmac(key, user.as_bytes());
    salt.truncate(24);
    salt
}

/// Random bytes from the system's secure generator.
pub fn random_bytes(n: usize) -> Vec<u8> {
    use lc_rand::SecureRandom;
    let mut b = vec![0u8; n];
    lc_rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the system random generator works");
    b
}

/// The parsed client-first message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst {
    /// The user (`n=`, with `=2C`/`=3D` decoded).
    pub user: String,
    /// The client nonce.
    pub nonce: String,
    gs2_header: String,
    bare: String,
}

impl ClientFirst {
    /// Parses `gs2-header client-first-message-bare`.
    pub fn parse(msg: &[u8]) -> Result<Self, AuthError> {
        let bad = |why: &str| AuthError::Malformed(format!("SCRAM client-first message: {why}"));
        let s = std::str::from_utf8(msg).map_err(|_| bad("not UTF-8"))?;
        // gs2-header = gs2-cbind-flag "," [ authzid ] ","
        let (flag, rest) = s.split_once(',').ok_or_else(|| bad("no GS2 header"))?;
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => {
                return Err(bad("channel binding is not supported"));
            }
            _ => return Err(bad("bad channel-binding flag")),
        }
        let (authzid, bare) = rest.split_once(',').ok_or_else(|| bad("no GS2 header"))?;
        let gs2_header = format!("{flag},{authzid},");
        let mut user = None;
        let mut nonce = None;
        for (i, attr) in bare.split(',').enumerate() {
            // Extensions (Kafka's tokenauth=true for delegation tokens): not served.
            if attr.starts_with("tokenauth=") {
                return Err(bad("delegation tokens are not supported"));
            }
            match (i, attr.split_at_checked(2)) {
                (0, Some(("m=", _))) => return Err(bad("mandatory extensions are not supported")),
                (0, Some(("n=", v))) => {
                    user = Some(decode_saslname(v).ok_or_else(|| bad("bad user name"))?)
                }
                (1, Some(("r=", v))) if !v.is_empty() => nonce = Some(v.to_string()),
                _ => {}
            }
        }
        let user = user.ok_or_else(|| bad("no user name"))?;
        if let Some(z) = authzid.strip_prefix("a=") {
            if decode_saslname(z).as_deref() != Some(user.as_str()) {
                return Err(bad(
                    "an authorization id other than the user is not supported",
                ));
            }
        }
        Ok(Self {
            user,
            nonce: nonce.ok_or_else(|| bad("no nonce"))?,
            gs2_header,
            bare: bare.to_string(),
        })
    }
}

fn decode_saslname(s: &str) -> Option<String> {
    if s.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return None,
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// The server side of one exchange, after the client-first message.
#[derive(Debug)]
pub struct ServerExchange {
    mechanism: Mechanism,
    first: ClientFirst,
    credential: Option<Credential>,
    nonce: String,
    server_first: String,
}

impl ServerExchange {
    /// Starts an exchange; `credential` is `None` for an unknown user (the exchange goes on
    /// with a made-up salt and fails at the end).
    pub fn start(mechanism: Mechanism, first: ClientFirst, credential: Option<Credential>) -> Self {
        let (salt, iterations) = match &credential {
            Some(c) => (c.salt.clone(), c.iterations),
            None => (fake_salt(mechanism, &first.user), MIN_ITERATIONS),
        };
        let nonce = format!("{}{}", first.nonce, B64.encode(random_bytes(18)));
        let server_first = format!("r={nonce},s={},i={iterations}", B64.encode(&salt));
        Self {
            mechanism,
            first,
            credential,
            nonce,
            server_first,
        }
    }

    /// The server-first message.
    pub fn server_first(&self) -> &[u8] {
        self.server_first.as_bytes()
    }

    /// The user named in the client-first message.
    pub fn user(&self) -> &str {
        &self.first.user
    }

    /// Checks the client-final message; on success, the server-final message.
    pub fn finish(&self, msg: &[u8]) -> Result<Vec<u8>, AuthError> {
        let bad = |why: &str| AuthError::Malformed(format!("SCRAM client-final message: {why}"));
        let s = std::str::from_utf8(msg).map_err(|_| bad("not UTF-8"))?;
        let (without_proof, proof) = s.rsplit_once(",p=").ok_or_else(|| bad("no proof"))?;
        let mut channel = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(v) = attr.strip_prefix("c=") {
                channel = Some(v);
            } else if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            }
        }
        let expected_channel = B64.encode(self.first.gs2_header.as_bytes());
        if channel != Some(expected_channel.as_str()) {
            return Err(bad("channel binding does not match the GS2 header"));
        }
        // RFC 5802 asks for the server's nonce back exactly. librdkafka up to 2.0 (still in
        // Linux distributions' kcat) sends the client nonce once more in front of it; Kafka
        // accepts any nonce ending with the server's. Silt accepts exactly those two forms.
        let doubled = format!("{}{}", self.first.nonce, self.nonce);
        if nonce != Some(self.nonce.as_str()) && nonce != Some(doubled.as_str()) {
            return Err(AuthError::Failed {
                user: self.first.user.clone(),
                why: "the nonce does not match the server's".into(),
            });
        }
        let proof = B64.decode(proof).map_err(|_| bad("proof is not base64"))?;
        let failed = |why: &str| AuthError::Failed {
            user: self.first.user.clone(),
            why: why.into(),
        };
        let Some(cred) = &self.credential else {
            return Err(failed("no such user"));
        };
        let m = self.mechanism;
        let auth_message = format!(
            "{},{},{}",
            self.first.bare, self.server_first, without_proof
        );
        let client_signature = m.hmac(&cred.stored_key, auth_message.as_bytes());
        if proof.len() != client_signature.len() {
            return Err(failed("wrong password"));
        }
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(a, b)| a ^ b)
            .collect();
        if constant_time::verify_slices_are_equal(&m.h(&client_key), &cred.stored_key).is_err() {
            return Err(failed("wrong password"));
        }
        let server_signature = m.hmac(&cred.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal SCRAM client, written from the RFC, to drive the server.
    fn client_final(m: Mechanism, password: &str, first_bare: &str, server_first: &str) -> String {
        let mut nonce = "";
        let mut salt = vec![];
        let mut iters = 0;
        for a in server_first.split(',') {
            if let Some(v) = a.strip_prefix("r=") {
                nonce = v;
            } else if let Some(v) = a.strip_prefix("s=") {
                salt = B64.decode(v).unwrap();
            } else if let Some(v) = a.strip_prefix("i=") {
                iters = v.parse().unwrap();
            }
        }
        let salted = m.salted_password(password.as_bytes(), &salt, iters);
        let client_key = m.hmac(&salted, b"Client Key");
        let stored = m.h(&client_key);
        let without = format!("c=biws,r={nonce}");
        let auth = format!("{first_bare},{server_first},{without}");
        let sig = m.hmac(&stored, auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        format!("{without},p={}", B64.encode(proof))
    }

    fn run(
        m: Mechanism,
        stored_pw: Option<&str>,
        tried: &str,
        user: &str,
    ) -> Result<Vec<u8>, AuthError> {
        let cred = stored_pw.map(|p| Credential::from_password(m, p, MIN_ITERATIONS));
        let bare = format!("n={user},r=fyko+d2lbbFgONRv9qkxdawL");
        let first = ClientFirst::parse(format!("n,,{bare}").as_bytes())?;
        let ex = ServerExchange::start(m, first, cred);
        let sf = String::from_utf8(ex.server_first().to_vec()).unwrap();
        ex.finish(client_final(m, tried, &bare, &sf).as_bytes())
    }

    #[test]
    fn right_password_passes_and_wrong_or_unknown_fail_for_both_mechanisms() {
        for m in Mechanism::ALL {
            let ok = run(m, Some("pencil"), "pencil", "user").unwrap();
            assert!(ok.starts_with(b"v="));
            assert!(matches!(
                run(m, Some("pencil"), "pen", "user"),
                Err(AuthError::Failed { .. })
            ));
            assert!(matches!(
                run(m, None, "pencil", "user"),
                Err(AuthError::Failed { .. })
            ));
        }
    }

    #[test]
    fn the_nonce_comes_back_exactly_or_in_old_librdkafkas_doubled_form() {
        let m = Mechanism::Sha256;
        let cred = Credential::from_password(m, "pw", MIN_ITERATIONS);
        let bare = "n=u,r=cnonce";
        for (prefix, ok) in [
            ("", true),
            ("cnonce", true),
            ("x", false),
            ("cnoncecnonce", false),
        ] {
            let first = ClientFirst::parse(format!("n,,{bare}").as_bytes()).unwrap();
            let ex = ServerExchange::start(m, first, Some(cred.clone()));
            let sf = String::from_utf8(ex.server_first().to_vec()).unwrap();
            let nonce = sf.split(',').next().unwrap().strip_prefix("r=").unwrap();
            // A correct proof over what the client sends, so only the nonce check can refuse.
            let without = format!("c=biws,r={prefix}{nonce}");
            let auth = format!("{bare},{sf},{without}");
            let salted = m.salted_password(b"pw", &cred.salt, cred.iterations);
            let ck = m.hmac(&salted, b"Client Key");
            let sig = m.hmac(&m.h(&ck), auth.as_bytes());
            let proof: Vec<u8> = ck.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
            let msg = format!("{without},p={}", B64.encode(proof));
            assert_eq!(ex.finish(msg.as_bytes()).is_ok(), ok, "prefix {prefix:?}");
        }
    }

    #[test]
    fn an_unknown_user_sees_the_same_salt_every_time() {
        let start = |user: &str| {
            let f = ClientFirst::parse(format!("n,,n={user},r=abc").as_bytes()).unwrap();
            let ex = ServerExchange::start(Mechanism::Sha256, f, None);
            let sf = String::from_utf8(ex.server_first().to_vec()).unwrap();
            sf.split(',').skip(1).collect::<Vec<_>>().join(",")
        };
        assert_eq!(
            start("ghost"),
            start("ghost"),
            "salt and iterations are stable"
        );
        assert_ne!(start("ghost"), start("other-ghost"));
    }

    #[test]
    fn rfc7677_test_vector_derives_the_same_keys() {
        // RFC 7677 section 3: user "user", password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==, i=4096.
        let m = Mechanism::Sha256;
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let salted = m.salted_password(b"pencil", &salt, 4096);
        let c = Credential::from_salted(m, &salted, salt, 4096);
        let bare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
        let sf = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let without = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let auth = format!("{bare},{sf},{without}");
        let server_sig = m.hmac(&c.server_key, auth.as_bytes());
        assert_eq!(
            B64.encode(server_sig),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        let client_sig = m.hmac(&c.stored_key, auth.as_bytes());
        let client_key = m.hmac(&salted, b"Client Key");
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&client_sig)
            .map(|(a, b)| a ^ b)
            .collect();
        assert_eq!(
            B64.encode(proof),
            "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
    }

    #[test]
    fn plain_passwords_check_against_the_scram_credential() {
        let c = Credential::from_password(Mechanism::Sha512, "s3cret", MIN_ITERATIONS);
        assert!(c.verify_password(Mechanism::Sha512, "s3cret"));
        assert!(!c.verify_password(Mechanism::Sha512, "s3cret "));
        let back = Credential::from_record(&c.to_record()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn client_first_messages_are_parsed_strictly() {
        let f = ClientFirst::parse(b"n,,n=a=2Cb=3Dc,r=abc").unwrap();
        assert_eq!(f.user, "a,b=c");
        for bad in [
            &b"p=tls-unique,,n=u,r=x"[..],
            b"n,,n=u",
            b"n,,n=,r=x",
            b"n,,n=u=zz,r=x",
            b"x,,n=u,r=x",
            b"n,a=other,n=u,r=x",
            b"n,,m=ext,n=u,r=x",
            b"n,,n=u,r=x,tokenauth=true",
            b"",
            b"\xff\xfe",
        ] {
            assert!(
                ClientFirst::parse(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
