//! The authentication layer of the request pipeline: who a connection is, and whether it may
//! send a request yet.
//!
//! On a SASL listener a new connection may send only ApiVersions, SaslHandshake and
//! SaslAuthenticate; anything else closes it (as Kafka does). After a SaslHandshake v0 (clients
//! from before KIP-152) the exchange's tokens travel as bare length-prefixed frames. A failed login is answered with
//! SASL_AUTHENTICATION_FAILED after `sasl.failure_delay_ms`, logged with the peer, counted, and
//! the connection closed. With `sasl.max_reauth_ms` set, an authentication holds that long
//! (KIP-368): the client re-authenticates on the same connection (as the same principal) or its
//! next request after expiry closes it. On TLS listeners with client certificates the
//! principal comes from the certificate; otherwise it is `User:ANONYMOUS`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::messages::{
    ApiKey, ResponseKind, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use silt_security::authorizer::DecisionCache;
use silt_security::sasl::{Exchange, SaslMechanism, Step};
use silt_security::{AuthError, Principal};

use crate::broker::Broker;
use crate::listeners::ListenerInfo;

/// One connection's identity and authentication state.
#[derive(Debug)]
pub struct Session {
    /// The listener it came through.
    pub listener: Arc<ListenerInfo>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's host, as ACLs name it.
    pub host: String,
    /// Who it is.
    pub principal: Principal,
    /// The authorizer's decisions for it.
    pub acl: DecisionCache,
    authenticated: bool,
    exchange: Option<Exchange>,
    expires: Option<Instant>,
    /// After a SaslHandshake v0: the exchange's tokens come as bare length-prefixed frames.
    raw: bool,
}

/// What the authentication layer says about a request.
pub enum Gate {
    /// Go on to authorization and the handler.
    Pass,
    /// Answer this (a SASL step) and go on reading.
    Answer(ResponseKind),
    /// Answer this, then close the connection (a failed login).
    AnswerAndClose(ResponseKind),
    /// Close the connection without an answer (a request before authentication).
    Close(String),
}

impl Session {
    /// A new connection's session.
    pub fn new(listener: Arc<ListenerInfo>, peer: SocketAddr, cert: Option<Principal>) -> Self {
        let sasl = listener.protocol.sasl();
        Self {
            listener,
            peer,
            host: peer.ip().to_canonical().to_string(),
            principal: cert.unwrap_or_else(Principal::anonymous),
            acl: DecisionCache::default(),
            authenticated: !sasl,
            exchange: None,
            expires: None,
            raw: false,
        }
    }

    /// Whether the next frame is a bare SASL token (SaslHandshake v0), not a request.
    pub fn expects_raw_token(&self) -> bool {
        self.raw
    }

    /// Handles a bare SASL token: the bytes to send back (bare, length-prefixed by the
    /// caller), or `None` to close the connection (a failed login; v0 has no error response).
    pub async fn raw_token(&mut self, b: &Broker, token: &[u8]) -> Option<Vec<u8>> {
        let req = SaslAuthenticateRequest::default()
            .with_auth_bytes(bytes::Bytes::copy_from_slice(token));
        match self.authenticate(b, &req, 0).await {
            Gate::Answer(ResponseKind::SaslAuthenticate(r)) => {
                self.raw = self.exchange.is_some();
                Some(r.auth_bytes.to_vec())
            }
            _ => None,
        }
    }

    /// Whether Metadata may auto-create a topic for this connection: CREATE on the cluster or
    /// on the topic, and DESCRIBE on it (always, without authorization).
    pub fn may_create<'a>(&'a self, b: &'a Broker) -> impl Fn(&str) -> bool + Sync + 'a {
        use silt_security::acl::{Operation, ResourceType, CLUSTER_NAME};
        move |topic: &str| match &b.security.authorizer {
            None => true,
            Some(az) => {
                let (p, h) = (&self.principal, &self.host);
                // Kafka creates only what the client may also see.
                (az.authorize(p, h, Operation::Create, ResourceType::Cluster, CLUSTER_NAME)
                    || az.authorize(p, h, Operation::Create, ResourceType::Topic, topic))
                    && az.authorize(p, h, Operation::Describe, ResourceType::Topic, topic)
            }
        }
    }

    /// Whether the connection has authenticated (always, on listeners without SASL).
    pub fn authenticated(&self) -> bool {
        self.authenticated
    }

    /// Runs the authentication layer for one decoded request.
    pub async fn gate(
        &mut self,
        b: &Broker,
        api: ApiKey,
        version: i16,
        body: &kafka_protocol::messages::RequestKind,
    ) -> Gate {
        use kafka_protocol::messages::RequestKind as R;
        match body {
            R::SaslHandshake(r) => return Gate::Answer(self.handshake(b, r, version)),
            R::SaslAuthenticate(r) => return self.authenticate(b, r, version).await,
            R::ApiVersions(_) => return Gate::Pass,
            _ => {}
        }
        if !self.authenticated {
            return Gate::Close(format!(
                "{api:?} before SASL authentication on listener {} (only ApiVersions, SaslHandshake and SaslAuthenticate are accepted until then)",
                self.listener.name
            ));
        }
        if self.expires.is_some_and(|e| Instant::now() >= e) {
            return Gate::Close(format!(
                "{api:?} after the authentication of {} expired (sasl.max_reauth_ms); the client did not re-authenticate",
                self.principal
            ));
        }
        Gate::Pass
    }

    fn handshake(&mut self, b: &Broker, r: &SaslHandshakeRequest, version: i16) -> ResponseKind {
        let offered: Vec<StrBytes> = b
            .security
            .mechanisms
            .iter()
            .map(|m| StrBytes::from_static_str(m.name()))
            .collect();
        let resp = SaslHandshakeResponse::default().with_mechanisms(offered);
        if !self.listener.protocol.sasl() {
            return ResponseKind::SaslHandshake(
                resp.with_error_code(ResponseError::IllegalSaslState.code()),
            );
        }
        match SaslMechanism::from_name(&r.mechanism).filter(|m| b.security.mechanisms.contains(m)) {
            Some(m) => {
                self.exchange = Some(Exchange::new(m));
                self.raw = version == 0;
                ResponseKind::SaslHandshake(resp)
            }
            None => {
                tracing::info!(peer = %self.peer, mechanism = %r.mechanism.as_str(),
                    "SASL mechanism asked for is not enabled (sasl.mechanisms)");
                ResponseKind::SaslHandshake(
                    resp.with_error_code(ResponseError::UnsupportedSaslMechanism.code()),
                )
            }
        }
    }

    async fn authenticate(
        &mut self,
        b: &Broker,
        r: &SaslAuthenticateRequest,
        version: i16,
    ) -> Gate {
        let Some(mut ex) = self.exchange.take() else {
            return Gate::AnswerAndClose(failure(
                ResponseError::IllegalSaslState,
                "SaslAuthenticate without a SaslHandshake first",
            ));
        };
        let stats = &b.security.stats;
        match ex.step(&b.security.verifiers, &r.auth_bytes).await {
            Ok(Step::Continue(bytes)) => {
                self.exchange = Some(ex);
                Gate::Answer(ResponseKind::SaslAuthenticate(
                    SaslAuthenticateResponse::default().with_auth_bytes(bytes.into()),
                ))
            }
            Ok(Step::Done(principal, bytes, credential_expiry_ms)) => {
                if self.authenticated
                    && self.listener.protocol.sasl()
                    && principal != self.principal
                {
                    stats.auth_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(peer = %self.peer, was = %self.principal, now = %principal,
                        "closing connection: re-authentication as another principal");
                    return Gate::AnswerAndClose(failure(
                        ResponseError::SaslAuthenticationFailed,
                        "cannot change principals during re-authentication",
                    ));
                }
                stats.auth_succeeded.fetch_add(1, Ordering::Relaxed);
                // The session lasts until the credential expires (a token's exp) or
                // sasl.max_reauth_ms passes, whichever is first (KIP-368).
                let reauth = b.settings.sasl.max_reauth_ms;
                let token_left = credential_expiry_ms.map(|exp| {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_millis() as i64;
                    (exp - now).max(1) as u64
                });
                let lifetime = match (reauth, token_left) {
                    (0, None) => None,
                    (0, Some(t)) => Some(t),
                    (r, None) => Some(r),
                    (r, Some(t)) => Some(r.min(t)),
                };
                self.expires = lifetime.map(|ms| Instant::now() + Duration::from_millis(ms));
                tracing::debug!(peer = %self.peer, %principal, mechanism = ex.mechanism().name(),
                    "SASL authentication succeeded");
                self.principal = principal;
                self.authenticated = true;
                let mut resp = SaslAuthenticateResponse::default().with_auth_bytes(bytes.into());
                if version >= 1 {
                    resp =
                        resp.with_session_lifetime_ms(
                            lifetime.unwrap_or(0).min(i64::MAX as u64) as i64
                        );
                }
                Gate::Answer(ResponseKind::SaslAuthenticate(resp))
            }
            Err(e) => {
                stats.auth_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(peer = %self.peer, listener = %self.listener.name,
                    mechanism = ex.mechanism().name(), error = %e,
                    "SASL authentication failed; closing the connection");
                tokio::time::sleep(Duration::from_millis(b.settings.sasl.failure_delay_ms)).await;
                let message = match &e {
                    AuthError::Store(_) => "the credential store could not be read; retry".to_string(),
                    _ => format!(
                        "Authentication failed during authentication due to invalid credentials with SASL mechanism {}",
                        ex.mechanism().name()
                    ),
                };
                Gate::AnswerAndClose(failure(crate::error::auth_error_code(&e), &message))
            }
        }
    }
}

fn failure(code: ResponseError, message: &str) -> ResponseKind {
    ResponseKind::SaslAuthenticate(
        SaslAuthenticateResponse::default()
            .with_error_code(code.code())
            .with_error_message(Some(StrBytes::from_string(message.to_string()))),
    )
}
