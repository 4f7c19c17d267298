//! SASL/OAUTHBEARER (RFC 7628) with JWT validation: the client's bearer token must be a JWT
//! signed by a key of the configured JWKS — a file, or a document the agent fetches from a URL
//! ([`JwtValidator::set_jwks`]) — (RS256, RS384, RS512 or ES256), issued by the
//! configured issuer for the configured audience, and unexpired; the principal is one of its
//! claims (`sub` by default). The token's expiry bounds the session (KIP-368).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use serde_json::Value;

use crate::error::AuthError;
use crate::principal::Principal;

/// What a token must satisfy.
#[derive(Debug, Clone)]
pub struct JwtRules {
    /// JWKS file (`{"keys":[...]}`), re-read when it changes; `None` when the keys come from a
    /// URL ([`JwtValidator::set_jwks`]).
    pub jwks_file: Option<PathBuf>,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Required `aud` (a string or one of an array), if set.
    pub audience: Option<String>,
    /// The claim naming the principal.
    pub principal_claim: String,
    /// Tolerated clock difference for `exp` and `nbf`.
    pub clock_skew: Duration,
}

#[derive(Debug, Clone)]
enum Key {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    P256 { point: Vec<u8> },
}

/// A validator of bearer tokens.
#[derive(Debug)]
pub struct JwtValidator {
    rules: JwtRules,
    keys: RwLock<(Option<SystemTime>, HashMap<String, Key>)>,
}

/// A validated token: who, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    /// The principal.
    pub principal: Principal,
    /// `exp`, as Unix milliseconds.
    pub expires_ms: i64,
}

fn failed(why: impl Into<String>) -> AuthError {
    AuthError::Failed {
        user: "(bearer token)".into(),
        why: why.into(),
    }
}

fn load_jwks(path: &Path) -> Result<HashMap<String, Key>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_jwks(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse_jwks(text: &str) -> Result<HashMap<String, Key>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut out = HashMap::new();
    for k in v["keys"].as_array().ok_or("no \"keys\" array")? {
        let field = |n: &str| k[n].as_str().and_then(|s| B64URL.decode(s).ok());
        let kid = k["kid"].as_str().unwrap_or("").to_string();
        let key = match k["kty"].as_str() {
            Some("RSA") => match (field("n"), field("e")) {
                (Some(n), Some(e)) => Key::Rsa { n, e },
                _ => continue,
            },
            Some("EC") if k["crv"].as_str() == Some("P-256") => match (field("x"), field("y")) {
                (Some(x), Some(y)) if x.len() == 32 && y.len() == 32 => {
                    let mut point = vec![4u8];
                    point.extend_from_slice(&x);
                    point.extend_from_slice(&y);
                    Key::P256 { point }
                }
                _ => continue,
            },
            _ => continue,
        };
        out.insert(kid, key);
    }
    Ok(out)
}

impl JwtValidator {
    /// Loads the JWKS; fails if it cannot be read or holds no usable key.
    pub fn new(rules: JwtRules) -> Result<Self, String> {
        let (stamp, keys) = match &rules.jwks_file {
            None => (None, HashMap::new()),
            Some(file) => {
                let stamp = std::fs::metadata(file).and_then(|m| m.modified()).ok();
                let keys = load_jwks(file)?;
                if keys.is_empty() {
                    return Err(format!("{}: no RSA or P-256 key", file.display()));
                }
                (stamp, keys)
            }
        };
        Ok(Self {
            rules,
            keys: RwLock::new((stamp, keys)),
        })
    }

    /// Replaces the keys with those of a JWKS document (fetched from a URL); how many usable
    /// keys it had. A document without one leaves the keys as they were.
    pub fn set_jwks(&self, json: &str) -> Result<usize, String> {
        let keys = parse_jwks(json)?;
        if keys.is_empty() {
            return Err("no RSA or P-256 key in the JWKS".into());
        }
        let n = keys.len();
        self.keys.write().expect("jwks lock").1 = keys;
        Ok(n)
    }

    fn key(&self, kid: &str) -> Option<Key> {
        if let Some(file) = &self.rules.jwks_file {
            let stamp = std::fs::metadata(file).and_then(|m| m.modified()).ok();
            if stamp != self.keys.read().expect("jwks lock").0 {
                match load_jwks(file) {
                    Ok(keys) => *self.keys.write().expect("jwks lock") = (stamp, keys),
                    Err(e) => {
                        tracing::error!(error = %e, "the changed JWKS file does not load; keeping the previous keys")
                    }
                }
            }
        }
        let keys = self.keys.read().expect("jwks lock");
        keys.1
            .get(kid)
            .or_else(|| {
                (keys.1.len() == 1)
                    .then(|| keys.1.values().next())
                    .flatten()
            })
            .cloned()
    }

    /// Validates a compact JWT at `now`.
    pub fn validate(&self, token: &str, now: SystemTime) -> Result<Validated, AuthError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(failed("not a compact JWT (three dot-separated parts)"));
        };
        let json = |part: &str, what: &str| -> Result<Value, AuthError> {
            let raw = B64URL
                .decode(part)
                .map_err(|_| failed(format!("{what} is not base64url")))?;
            serde_json::from_slice(&raw).map_err(|_| failed(format!("{what} is not JSON")))
        };
        let header = json(h, "the header")?;
        let claims = json(p, "the payload")?;
        let sig = B64URL
            .decode(s)
            .map_err(|_| failed("the signature is not base64url"))?;
        let kid = header["kid"].as_str().unwrap_or("");
        let key = self
            .key(kid)
            .ok_or_else(|| failed(format!("no key {kid:?} in the JWKS")))?;
        let signed = format!("{h}.{p}");
        let ok = match (header["alg"].as_str(), &key) {
            (Some(alg @ ("RS256" | "RS384" | "RS512")), Key::Rsa { n, e }) => {
                let params = match alg {
                    "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
                    "RS384" => &signature::RSA_PKCS1_2048_8192_SHA384,
                    _ => &signature::RSA_PKCS1_2048_8192_SHA512,
                };
                RsaPublicKeyComponents { n, e }
                    .verify(params, signed.as_bytes(), &sig)
                    .is_ok()
            }
            (Some("ES256"), Key::P256 { point }) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(signed.as_bytes(), &sig)
                    .is_ok()
            }
            (Some("none"), _) => return Err(failed(
                "an unsigned token (alg \"none\"); only tokens signed by a JWKS key are accepted",
            )),
            (Some(alg), _) => {
                return Err(failed(format!(
                    "algorithm {alg:?} does not fit the key {kid:?}"
                )))
            }
            (None, _) => return Err(failed("the header names no algorithm (alg)")),
        };
        if !ok {
            return Err(failed("the signature does not verify"));
        }
        let now_s = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let skew = self.rules.clock_skew.as_secs_f64();
        let exp = claims["exp"]
            .as_f64()
            .ok_or_else(|| failed("no exp claim"))?;
        if exp + skew <= now_s {
            return Err(failed("the token expired"));
        }
        if let Some(nbf) = claims["nbf"].as_f64() {
            if nbf - skew > now_s {
                return Err(failed("the token is not valid yet (nbf)"));
            }
        }
        if let Some(iss) = &self.rules.issuer {
            if claims["iss"].as_str() != Some(iss.as_str()) {
                return Err(failed("wrong issuer"));
            }
        }
        if let Some(aud) = &self.rules.audience {
            let found = match &claims["aud"] {
                Value::String(a) => a == aud,
                Value::Array(a) => a.iter().any(|x| x.as_str() == Some(aud.as_str())),
                _ => false,
            };
            if !found {
                return Err(failed("wrong audience"));
            }
        }
        let name = claims[self.rules.principal_claim.as_str()]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| failed(format!("no {:?} claim", self.rules.principal_claim)))?;
        Ok(Validated {
            principal: Principal::user(name),
            expires_ms: (exp * 1000.0) as i64,
        })
    }
}

/// The bearer token of an OAUTHBEARER initial client response
/// (`gs2-header %x01 "auth=Bearer " token %x01 [extensions] %x01`).
pub fn bearer_token(msg: &[u8]) -> Result<&str, AuthError> {
    let bad = |why: &str| AuthError::Malformed(format!("OAUTHBEARER message: {why}"));
    let s = std::str::from_utf8(msg).map_err(|_| bad("not UTF-8"))?;
    let (gs2, rest) = s.split_once('\x01').ok_or_else(|| bad("no GS2 header"))?;
    if !(gs2.starts_with("n,") || gs2.starts_with("y,")) {
        return Err(bad("bad GS2 header"));
    }
    let rest = rest
        .strip_suffix("\x01\x01")
        .ok_or_else(|| bad("not terminated"))?;
    for kv in rest.split('\x01') {
        if let Some(v) = kv.strip_prefix("auth=") {
            let (scheme, token) = v.split_once(' ').ok_or_else(|| bad("no token"))?;
            if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
                return Err(bad("not a bearer token"));
            }
            return Ok(token.trim());
        }
    }
    Err(bad("no auth attribute"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    fn b64(v: &[u8]) -> String {
        B64URL.encode(v)
    }

    struct Issuer {
        key: EcdsaKeyPair,
        dir: tempfile::TempDir,
    }

    impl Issuer {
        fn new() -> Self {
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            let key =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
            let point = key.public_key().as_ref();
            let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1",
                "x": b64(&point[1..33]), "y": b64(&point[33..65])}]});
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("jwks.json"), jwks.to_string()).unwrap();
            Self { key, dir }
        }

        fn token(&self, claims: Value) -> String {
            let h = b64(br#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#);
            let p = b64(claims.to_string().as_bytes());
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let sig = self.key.sign(&rng, format!("{h}.{p}").as_bytes()).unwrap();
            format!("{h}.{p}.{}", b64(sig.as_ref()))
        }

        fn validator(&self) -> JwtValidator {
            JwtValidator::new(JwtRules {
                jwks_file: Some(self.dir.path().join("jwks.json")),
                issuer: Some("https://issuer.example".into()),
                audience: Some("silt".into()),
                principal_claim: "sub".into(),
                clock_skew: Duration::from_secs(30),
            })
            .unwrap()
        }
    }

    #[test]
    fn valid_tokens_pass_and_every_broken_rule_fails() {
        let iss = Issuer::new();
        let v = iss.validator();
        let now = SystemTime::now();
        let t = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let good = serde_json::json!({"sub": "alice", "iss": "https://issuer.example", "aud": ["x", "silt"], "exp": t + 600});
        let ok = v.validate(&iss.token(good.clone()), now).unwrap();
        assert_eq!(ok.principal, Principal::user("alice"));
        assert_eq!(ok.expires_ms, (t as i64 + 600) * 1000);
        for (field, value) in [
            ("exp", serde_json::json!(t - 60)),
            ("iss", serde_json::json!("https://evil.example")),
            ("aud", serde_json::json!("other")),
            ("nbf", serde_json::json!(t + 600)),
            ("sub", serde_json::json!("")),
        ] {
            let mut c = good.clone();
            c[field] = value;
            assert!(
                v.validate(&iss.token(c), now).is_err(),
                "{field} not checked"
            );
        }
        // Keys from a URL replace the file's: the old issuer's tokens stop validating.
        let other = Issuer::new();
        let jwks = std::fs::read_to_string(other.dir.path().join("jwks.json")).unwrap();
        let url_v = JwtValidator::new(JwtRules {
            jwks_file: None,
            ..v.rules.clone()
        })
        .unwrap();
        assert!(
            url_v.validate(&other.token(good.clone()), now).is_err(),
            "no keys yet"
        );
        assert_eq!(url_v.set_jwks(&jwks), Ok(1));
        assert!(url_v.validate(&other.token(good.clone()), now).is_ok());
        assert!(url_v.set_jwks(r#"{"keys":[]}"#).is_err());
        // A token signed by another key, or tampered with, fails.
        let other = Issuer::new();
        assert!(v.validate(&other.token(good.clone()), now).is_err());
        let tok = iss.token(good);
        let (hp, sig) = tok.rsplit_once('.').unwrap();
        let tampered = format!("{}.{sig}", hp.replace('.', ".e30"));
        assert!(v.validate(&tampered, now).is_err());
        assert!(v.validate("a.b", now).is_err());
    }

    #[test]
    fn bearer_tokens_are_read_from_the_initial_response() {
        assert_eq!(
            bearer_token(b"n,,\x01auth=Bearer abc.def.ghi\x01\x01").unwrap(),
            "abc.def.ghi"
        );
        assert_eq!(
            bearer_token(b"n,a=alice,\x01host=x\x01auth=Bearer t\x01\x01").unwrap(),
            "t"
        );
        for bad in [
            &b"auth=Bearer t"[..],
            b"n,,\x01auth=Basic t\x01\x01",
            b"n,,\x01auth=Bearer t",
            b"n,,\x01\x01",
        ] {
            assert!(bearer_token(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_refused_token_gets_the_error_challenge_before_the_failure() {
        use crate::sasl::{
            Exchange, SaslMechanism, Step, Users, Verifiers, BEARER_ERROR_CHALLENGE,
        };
        let issuer = Issuer::new();
        let kv: std::sync::Arc<dyn silt_meta::MetaKv> =
            std::sync::Arc::new(silt_meta::embedded::EmbeddedKv::in_memory(
                std::sync::Arc::new(silt_common::SystemClock),
            ));
        let v = Verifiers {
            users: Users::new(kv),
            jwt: Some(std::sync::Arc::new(issuer.validator())),
        };
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 300;
        let msg = |tok: String| format!("n,,\x01auth=Bearer {tok}\x01\x01").into_bytes();
        let good = issuer.token(serde_json::json!({"sub": "svc", "iss": "https://issuer.example", "aud": "silt", "exp": exp}));
        match Exchange::new(SaslMechanism::OAuthBearer)
            .step(&v, &msg(good))
            .await
        {
            Ok(Step::Done(p, reply, Some(_))) => {
                assert_eq!(p.to_string(), "User:svc");
                assert!(reply.is_empty());
            }
            other => panic!("{other:?}"),
        }
        let bad = issuer.token(serde_json::json!({"sub": "svc", "iss": "https://other.example", "aud": "silt", "exp": exp}));
        let mut ex = Exchange::new(SaslMechanism::OAuthBearer);
        match ex.step(&v, &msg(bad)).await {
            Ok(Step::Continue(challenge)) => assert_eq!(challenge, BEARER_ERROR_CHALLENGE),
            other => panic!("{other:?}"),
        }
        match ex.step(&v, b"\x01").await {
            Err(AuthError::Failed { why, .. }) => assert!(why.contains("issuer"), "{why}"),
            other => panic!("{other:?}"),
        }
        // A malformed initial response fails at once, without a challenge.
        let r = Exchange::new(SaslMechanism::OAuthBearer)
            .step(&v, b"n,,auth=Bearer")
            .await;
        assert!(matches!(r, Err(AuthError::Malformed(_))), "{r:?}");
    }
}
