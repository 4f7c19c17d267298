//! The agent's security components, built from settings at start: the TLS server of SSL and
//! SASL_SSL listeners (and its certificate reload job), the user database SASL checks, the
//! mechanisms offered, and the ACL authorizer when authorization is on. Counters of logins and
//! denials are exported as metrics.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use silt_common::config::{ClientAuthSetting, PrincipalFromSetting};
use silt_common::Settings;
use silt_meta::MetaKv;
use silt_security::authorizer::{Authorizer, Policy};
use silt_security::mapping::PrincipalRules;
use silt_security::oauth::{JwtRules, JwtValidator};
use silt_security::sasl::{SaslMechanism, Users, Verifiers};
use silt_security::tls::{ClientAuth, PrincipalFrom, TlsFiles, TlsServer};
use silt_security::Principal;

use crate::startup::StartError;

/// Login and authorization counters.
#[derive(Debug, Default)]
pub struct SecurityStats {
    /// SASL authentications that succeeded.
    pub auth_succeeded: AtomicU64,
    /// SASL authentications that failed (wrong credentials, malformed exchanges).
    pub auth_failed: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub tls_failed: AtomicU64,
    /// Requests (or parts of them) refused by the authorizer.
    pub denied: AtomicU64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Security {
    /// TLS of SSL and SASL_SSL listeners.
    pub tls: Option<TlsServer>,
    /// TLS of the admin port (`admin_tls`): client certificates requested, and verified
    /// against `tls.client_ca` when one is set.
    pub admin_tls: Option<TlsServer>,
    /// The user database and the bearer-token validator.
    pub verifiers: Verifiers,
    /// Mechanisms offered, in order.
    pub mechanisms: Vec<SaslMechanism>,
    /// The authorizer, when authorization is on.
    pub authorizer: Option<Arc<Authorizer>>,
    /// Counters.
    pub stats: SecurityStats,
}

impl Security {
    /// Builds them from settings.
    pub async fn start(s: &Settings, meta: Arc<dyn MetaKv>) -> Result<Self, StartError> {
        let any_tls =
            s.security_protocol.tls() || s.listeners.iter().any(|l| l.security_protocol.tls());
        let principal_from = if s.tls.principal_rules.is_empty() {
            match s.tls.principal_from {
                PrincipalFromSetting::Dn => PrincipalFrom::Dn,
                PrincipalFromSetting::Cn => PrincipalFrom::Cn,
            }
        } else {
            PrincipalFrom::Rules(Arc::new(
                PrincipalRules::parse(&s.tls.principal_rules)
                    .map_err(|e| StartError::Security(format!("tls.principal_rules: {e}")))?,
            ))
        };
        let files = |client_auth: ClientAuth| -> Option<TlsFiles> {
            Some(TlsFiles {
                cert: s.tls.cert.clone()?,
                key: s.tls.key.clone()?,
                client_ca: s.tls.client_ca.clone(),
                client_auth,
                principal_from: principal_from.clone(),
            })
        };
        let admin_tls = match files(if s.tls.client_ca.is_some() {
            ClientAuth::Requested
        } else {
            ClientAuth::None
        }) {
            Some(f) if s.admin_tls => Some(
                TlsServer::new(f).map_err(|e| StartError::Security(format!("admin_tls: {e}")))?,
            ),
            _ => None,
        };
        let client_auth = match s.tls.client_auth {
            ClientAuthSetting::None => ClientAuth::None,
            ClientAuthSetting::Requested => ClientAuth::Requested,
            ClientAuthSetting::Required => ClientAuth::Required,
        };
        let tls = match files(client_auth) {
            Some(f) if any_tls => {
                Some(TlsServer::new(f).map_err(|e| StartError::Security(e.to_string()))?)
            }
            _ => None,
        };
        let mechanisms = s
            .sasl
            .mechanisms
            .iter()
            .filter_map(|m| SaslMechanism::from_name(m))
            .collect();
        let authorizer = if s.authorization.enabled {
            let policy = Policy {
                super_users: s
                    .authorization
                    .super_users
                    .iter()
                    .filter_map(|u| Principal::parse(u))
                    .collect(),
                allow_everyone_if_no_acl_found: s.authorization.allow_everyone_if_no_acl_found,
            };
            Some(Arc::new(
                Authorizer::start(meta.clone(), policy)
                    .await
                    .map_err(|source| StartError::Meta {
                        doing: "reading the ACLs",
                        source,
                    })?,
            ))
        } else {
            None
        };
        let o = &s.sasl.oauthbearer;
        let jwt = if o.jwks_file.is_some() || o.jwks_url.is_some() {
            let v = JwtValidator::new(JwtRules {
                jwks_file: o.jwks_file.clone(),
                issuer: o.issuer.clone(),
                audience: o.audience.clone(),
                principal_claim: o.principal_claim.clone(),
                clock_skew: Duration::from_millis(o.clock_skew_ms),
            })
            .map_err(|e| {
                StartError::Security(format!(
                    "sasl.oauthbearer.jwks_file: {e}. Point it at a JWKS file ({{\"keys\": [...]}}) of the token issuer"
                ))
            })?;
            if let Some(url) = &o.jwks_url {
                let n = fetch_jwks(url, &v).await.map_err(|e| {
                    StartError::Security(format!(
                        "sasl.oauthbearer.jwks_url: {e}. Check the URL serves the issuer's JWKS and is reachable from the agent"
                    ))
                })?;
                tracing::info!(%url, keys = n, "JWKS fetched");
            }
            Some(Arc::new(v))
        } else {
            None
        };
        Ok(Self {
            tls,
            admin_tls,
            verifiers: Verifiers {
                users: Users::new(meta),
                jwt,
            },
            mechanisms,
            authorizer,
            stats: SecurityStats::default(),
        })
    }
}

/// Reloads the TLS certificate when its files change.
pub(crate) struct TlsReloadJob {
    tls: TlsServer,
    admin: Option<TlsServer>,
    every: Duration,
}

impl TlsReloadJob {
    /// A job when TLS is on.
    pub(crate) fn new(security: &Security, settings: &Settings) -> Option<Self> {
        Some(Self {
            tls: security
                .tls
                .clone()
                .or_else(|| security.admin_tls.clone())?,
            admin: security
                .admin_tls
                .clone()
                .filter(|_| security.tls.is_some()),
            every: Duration::from_millis(settings.tls.reload_interval_ms.max(100)),
        })
    }
}

impl crate::tasks::Periodic for TlsReloadJob {
    fn name(&self) -> &'static str {
        "tls-reload"
    }

    fn interval(&self) -> Duration {
        self.every
    }

    async fn step(&mut self) {
        if let Some(admin) = &self.admin {
            if let Err(e) = admin.reload_if_changed() {
                tracing::error!(error = %e, "the admin port's TLS certificate could not be reloaded");
            }
        }
        match self.tls.reload_if_changed() {
            Ok(true) => tracing::info!(
                "TLS certificate reloaded: new connections use the current certificate, key and client CA bundle"
            ),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e,
                "the changed TLS certificate, key or client CA bundle could not be loaded; still serving the previous ones"),
        }
    }
}

/// Fetches a JWKS document and gives its keys to the validator; how many it had.
async fn fetch_jwks(url: &str, v: &JwtValidator) -> Result<usize, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let resp = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let body = resp.text().await.map_err(|e| e.to_string())?;
    v.set_jwks(&body)
}

/// Fetches the JWKS URL again every `sasl.oauthbearer.jwks_refresh_ms` (keys rotate); a failed
/// fetch keeps the keys in use.
pub(crate) struct JwksRefreshJob {
    url: String,
    validator: Arc<JwtValidator>,
    every: Duration,
}

impl JwksRefreshJob {
    /// A job when the keys come from a URL.
    pub(crate) fn new(security: &Security, settings: &Settings) -> Option<Self> {
        Some(Self {
            url: settings.sasl.oauthbearer.jwks_url.clone()?,
            validator: security.verifiers.jwt.clone()?,
            every: Duration::from_millis(settings.sasl.oauthbearer.jwks_refresh_ms.max(100)),
        })
    }
}

impl crate::tasks::Periodic for JwksRefreshJob {
    fn name(&self) -> &'static str {
        "jwks-refresh"
    }

    fn interval(&self) -> Duration {
        self.every
    }

    async fn step(&mut self) {
        if let Err(e) = fetch_jwks(&self.url, &self.validator).await {
            tracing::warn!(url = %self.url, error = %e,
                "could not refresh the JWKS; keeping the keys in use");
        }
    }
}
