//! SASL on a Kafka connection: which mechanisms are offered, and one exchange from the first
//! SaslAuthenticate to an authenticated principal.
//!
//! PLAIN and SCRAM both check the SCRAM credentials in the metadata store ([`Users`]): a PLAIN
//! password is checked against the SCRAM-SHA-256 credential, else the SCRAM-SHA-512 one, so
//! there is one user database and no stored password.

use std::sync::Arc;

use silt_meta::layout::security as layout;
use silt_meta::MetaKv;

use crate::error::AuthError;
use crate::oauth::{bearer_token, JwtValidator};
use crate::principal::Principal;
use crate::scram::{ClientFirst, Credential, Mechanism, ServerExchange, MIN_ITERATIONS};

/// The user database: SCRAM credentials in the metadata store.
#[derive(Debug, Clone)]
pub struct Users {
    kv: Arc<dyn MetaKv>,
}

impl Users {
    /// Over a metadata store.
    pub fn new(kv: Arc<dyn MetaKv>) -> Self {
        Self { kv }
    }

    /// `user`'s credential for `m`, if any.
    pub async fn credential(
        &self,
        user: &str,
        m: Mechanism,
    ) -> Result<Option<Credential>, AuthError> {
        Ok(layout::get_user(self.kv.as_ref(), user, m.name())
            .await?
            .and_then(|r| Credential::from_record(&r)))
    }

    /// Creates or replaces `user`'s credential for `m`.
    pub async fn upsert(
        &self,
        user: &str,
        m: Mechanism,
        c: &Credential,
    ) -> Result<(), silt_meta::MetaError> {
        self.kv
            .txn(silt_meta::Txn {
                compares: vec![],
                success: vec![layout::put_user_op(user, m.name(), &c.to_record())],
                failure: vec![],
            })
            .await
            .map(|_| ())
    }

    /// Deletes `user`'s credential for `m`; `false` if there was none.
    pub async fn delete(&self, user: &str, m: Mechanism) -> Result<bool, silt_meta::MetaError> {
        layout::delete_user(self.kv.as_ref(), user, m.name()).await
    }

    /// Every user with the mechanisms and iterations of their credentials.
    pub async fn list(&self) -> Result<Vec<(String, Mechanism, u32)>, silt_meta::MetaError> {
        Ok(layout::list_users(self.kv.as_ref())
            .await?
            .into_iter()
            .filter_map(|(u, m, r)| Some((u, Mechanism::from_name(&m)?, r.iterations)))
            .collect())
    }
}

/// What checks credentials: the user database, and the bearer-token validator when
/// OAUTHBEARER is configured.
#[derive(Debug, Clone)]
pub struct Verifiers {
    /// SCRAM credentials (PLAIN and SCRAM).
    pub users: Users,
    /// JWT validation (OAUTHBEARER).
    pub jwt: Option<Arc<JwtValidator>>,
}

/// A SASL mechanism Silt serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// PLAIN (RFC 4616); only over TLS in production.
    Plain,
    /// SCRAM-SHA-256 or -512.
    Scram(Mechanism),
    /// OAUTHBEARER (RFC 7628) with JWTs.
    OAuthBearer,
}

impl SaslMechanism {
    /// The name clients ask for.
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::Scram(m) => m.name(),
            SaslMechanism::OAuthBearer => "OAUTHBEARER",
        }
    }

    /// From a name clients ask for.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "PLAIN" => Some(SaslMechanism::Plain),
            "OAUTHBEARER" => Some(SaslMechanism::OAuthBearer),
            other => Mechanism::from_name(other).map(SaslMechanism::Scram),
        }
    }
}

/// The server's answer to a bearer token that does not validate (RFC 7628 §3.2.2). It names no
/// reason: why a token was refused is logged, never told to the client.
pub const BEARER_ERROR_CHALLENGE: &[u8] = br#"{"status":"invalid_token"}"#;

/// What one SaslAuthenticate round produced.
#[derive(Debug)]
pub enum Step {
    /// Send these bytes and wait for the client's next message.
    Continue(Vec<u8>),
    /// Authenticated: send these bytes (possibly empty); the connection is this principal,
    /// until the credential's expiry (Unix ms) if it has one.
    Done(Principal, Vec<u8>, Option<i64>),
}

#[derive(Debug)]
enum State {
    Start,
    ScramSent(Box<ServerExchange>),
    /// OAUTHBEARER sent its error challenge (RFC 7628 §3.2.2); the client's `%x01` ends it.
    BearerRefused(AuthError),
    Finished,
}

/// One SASL exchange on one connection.
#[derive(Debug)]
pub struct Exchange {
    mechanism: SaslMechanism,
    state: State,
}

impl Exchange {
    /// An exchange with the mechanism SaslHandshake chose.
    pub fn new(mechanism: SaslMechanism) -> Self {
        Self {
            mechanism,
            state: State::Start,
        }
    }

    /// The mechanism.
    pub fn mechanism(&self) -> SaslMechanism {
        self.mechanism
    }

    /// Handles the next client message.
    pub async fn step(&mut self, v: &Verifiers, msg: &[u8]) -> Result<Step, AuthError> {
        let users = &v.users;
        match (
            std::mem::replace(&mut self.state, State::Finished),
            self.mechanism,
        ) {
            (State::Start, SaslMechanism::OAuthBearer) => {
                let jwt = v
                    .jwt
                    .as_ref()
                    .ok_or_else(|| AuthError::UnsupportedMechanism("OAUTHBEARER".into()))?;
                match jwt.validate(bearer_token(msg)?, std::time::SystemTime::now()) {
                    Ok(ok) => Ok(Step::Done(ok.principal, Vec::new(), Some(ok.expires_ms))),
                    // A token that does not validate is answered with the error challenge
                    // (as Kafka's OAuthBearerSaslServer does); the client acknowledges it with
                    // a single %x01 and only then is the exchange failed.
                    Err(e @ AuthError::Failed { .. }) => {
                        self.state = State::BearerRefused(e);
                        Ok(Step::Continue(BEARER_ERROR_CHALLENGE.to_vec()))
                    }
                    Err(e) => Err(e),
                }
            }
            (State::BearerRefused(e), SaslMechanism::OAuthBearer) => {
                if msg != [0x01] {
                    tracing::debug!(
                        "OAUTHBEARER client did not acknowledge the error challenge with %x01"
                    );
                }
                Err(e)
            }
            (State::Start, SaslMechanism::Plain) => {
                let (user, password) = parse_plain(msg)?;
                for m in Mechanism::ALL {
                    if let Some(c) = users.credential(&user, m).await? {
                        if c.verify_password(m, &password) {
                            return Ok(Step::Done(Principal::user(user), Vec::new(), None));
                        }
                        return Err(AuthError::Failed {
                            user,
                            why: "wrong password".into(),
                        });
                    }
                }
                // As slow as a wrong password, so timing does not tell users apart.
                let _ = Credential::from_password(Mechanism::Sha256, &password, MIN_ITERATIONS);
                Err(AuthError::Failed {
                    user,
                    why: "no such user".into(),
                })
            }
            (State::Start, SaslMechanism::Scram(m)) => {
                let first = ClientFirst::parse(msg)?;
                let cred = users.credential(&first.user, m).await?;
                let ex = ServerExchange::start(m, first, cred);
                let reply = ex.server_first().to_vec();
                self.state = State::ScramSent(Box::new(ex));
                Ok(Step::Continue(reply))
            }
            (State::ScramSent(ex), SaslMechanism::Scram(_)) => {
                let reply = ex.finish(msg)?;
                Ok(Step::Done(Principal::user(ex.user()), reply, None))
            }
            (State::ScramSent(_), SaslMechanism::Plain | SaslMechanism::OAuthBearer)
            | (State::BearerRefused(_), SaslMechanism::Plain | SaslMechanism::Scram(_))
            | (State::Finished, _) => Err(AuthError::Malformed(
                "a SASL message after the exchange finished".into(),
            )),
        }
    }
}

/// Parses `[authzid] NUL authcid NUL passwd`; an authzid other than the user is refused.
pub fn parse_plain(msg: &[u8]) -> Result<(String, String), AuthError> {
    let bad = |why: &str| AuthError::Malformed(format!("PLAIN message: {why}"));
    let s = std::str::from_utf8(msg).map_err(|_| bad("not UTF-8"))?;
    let mut parts = s.split('\0');
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("expected authzid NUL user NUL password"));
    };
    if user.is_empty() || password.is_empty() {
        return Err(bad("empty user or password"));
    }
    if !authzid.is_empty() && authzid != user {
        return Err(bad(
            "an authorization id other than the user is not supported",
        ));
    }
    Ok((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn users() -> Verifiers {
        let kv: Arc<dyn MetaKv> = Arc::new(silt_meta::embedded::EmbeddedKv::in_memory(Arc::new(
            silt_common::SystemClock,
        )));
        let u = Users::new(kv);
        let c = Credential::from_password(Mechanism::Sha512, "pw", 4096);
        u.upsert("alice", Mechanism::Sha512, &c).await.unwrap();
        Verifiers {
            users: u,
            jwt: None,
        }
    }

    #[tokio::test]
    async fn plain_checks_the_stored_scram_credential() {
        let u = users().await;
        let mut ok = Exchange::new(SaslMechanism::Plain);
        match ok.step(&u, b"\0alice\0pw").await.unwrap() {
            Step::Done(p, _, None) => assert_eq!(p.to_string(), "User:alice"),
            s => panic!("{s:?}"),
        }
        for (msg, want_failed) in [
            (&b"\0alice\0nope"[..], true),
            (b"\0mallory\0pw", true),
            (b"alice\0pw", false),
            (b"bob\0alice\0pw", false),
            (b"\0alice\0pw\0x", false),
        ] {
            let r = Exchange::new(SaslMechanism::Plain).step(&u, msg).await;
            match r {
                Err(AuthError::Failed { .. }) => assert!(want_failed),
                Err(AuthError::Malformed(_)) => assert!(!want_failed),
                other => panic!("{other:?}"),
            }
        }
        let db = &u.users;
        assert_eq!(
            db.list().await.unwrap(),
            vec![("alice".into(), Mechanism::Sha512, 4096)]
        );
        assert!(db.delete("alice", Mechanism::Sha512).await.unwrap());
        assert!(!db.delete("alice", Mechanism::Sha512).await.unwrap());
        // OAUTHBEARER without a validator configured is refused as a mechanism.
        let r = Exchange::new(SaslMechanism::OAuthBearer)
            .step(&u, b"n,,\x01auth=Bearer t\x01\x01")
            .await;
        assert!(
            matches!(r, Err(AuthError::UnsupportedMechanism(_))),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn an_exchange_refuses_messages_after_it_finished() {
        let u = users().await;
        let mut ex = Exchange::new(SaslMechanism::Plain);
        ex.step(&u, b"\0alice\0pw").await.unwrap();
        assert!(matches!(
            ex.step(&u, b"\0alice\0pw").await,
            Err(AuthError::Malformed(_))
        ));
    }
}
