//! Settings of listeners, TLS, SASL and authorization (documented in `docs/security.md`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A listener's security protocol, with Kafka's names.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SecurityProtocol {
    /// Plain TCP, no authentication (`User:ANONYMOUS`).
    #[default]
    Plaintext,
    /// TLS; the principal comes from a client certificate, if any.
    Ssl,
    /// SASL over plain TCP.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// Whether connections are TLS.
    pub fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    /// Whether clients must authenticate with SASL before anything else.
    pub fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// One more named listener (Kafka's `listeners` and `advertised.listeners` entries).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerSettings {
    /// Its name, the same on every agent of a pool (`EXTERNAL`); clients that connect through
    /// it are told the addresses of the other agents' listeners of the same name.
    pub name: String,
    /// Address it binds, `host:port`.
    pub listen: String,
    /// Its security protocol.
    #[serde(default)]
    pub security_protocol: SecurityProtocol,
    /// Host advertised for it; defaults to the listen host.
    #[serde(default)]
    pub advertised_host: Option<String>,
    /// Port advertised for it; defaults to the bound port.
    #[serde(default)]
    pub advertised_port: Option<u16>,
}

/// Whether TLS clients present certificates (Kafka's `ssl.client.auth`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthSetting {
    /// Not asked for.
    #[default]
    None,
    /// Asked for; verified when given.
    Requested,
    /// Required.
    Required,
}

/// How a client certificate names its principal.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalFromSetting {
    /// `User:CN=alice,O=Example` (the subject in RFC 2253 form, Kafka's default).
    #[default]
    Dn,
    /// `User:alice` (the subject's common name).
    Cn,
}

/// TLS of every SSL and SASL_SSL listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// PEM CA bundle that client certificates must chain to (mTLS).
    pub client_ca: Option<PathBuf>,
    /// Whether clients present certificates.
    pub client_auth: ClientAuthSetting,
    /// How a client certificate names its principal.
    pub principal_from: PrincipalFromSetting,
    /// Kafka's `ssl.principal.mapping.rules` (`RULE:pattern/replacement/[LU]` or `DEFAULT`),
    /// tried in order on the certificate's RFC 2253 name; when set they replace
    /// `principal_from`.
    pub principal_rules: Vec<String>,
    /// How often the certificate and key files are checked for changes (rotation), in ms.
    pub reload_interval_ms: u64,
    /// Longest a client may take to finish the TLS handshake, in ms.
    pub handshake_timeout_ms: u64,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            client_ca: None,
            client_auth: ClientAuthSetting::None,
            principal_from: PrincipalFromSetting::Dn,
            principal_rules: Vec::new(),
            reload_interval_ms: 30_000,
            handshake_timeout_ms: 10_000,
        }
    }
}

/// SASL of every SASL_PLAINTEXT and SASL_SSL listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SaslSettings {
    /// Mechanisms offered: `SCRAM-SHA-256`, `SCRAM-SHA-512`, `PLAIN`.
    pub mechanisms: Vec<String>,
    /// A failed login is answered after this delay (slows password guessing), in ms.
    pub failure_delay_ms: u64,
    /// How long an authentication holds before the client must re-authenticate (KIP-368),
    /// in ms; 0 for the life of the connection (Kafka's `connections.max.reauth.ms`).
    pub max_reauth_ms: u64,
    /// Longest a connection may take from its first byte to a finished authentication, in ms.
    pub auth_timeout_ms: u64,
    /// OAUTHBEARER: how bearer tokens (JWTs) are validated.
    pub oauthbearer: OAuthBearerSettings,
}

/// JWT validation of SASL/OAUTHBEARER tokens.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OAuthBearerSettings {
    /// JWKS file of the token issuer's public keys (re-read when it changes); this or
    /// `jwks_url` is required for the `OAUTHBEARER` mechanism.
    pub jwks_file: Option<PathBuf>,
    /// URL of the issuer's JWKS (`https://…/.well-known/jwks.json`), fetched at start and every
    /// `jwks_refresh_ms`.
    pub jwks_url: Option<String>,
    /// How often the JWKS URL is fetched again (keys rotate), in ms.
    pub jwks_refresh_ms: u64,
    /// Required `iss` claim.
    pub issuer: Option<String>,
    /// Required `aud` claim.
    pub audience: Option<String>,
    /// The claim naming the principal.
    pub principal_claim: String,
    /// Tolerated clock difference for `exp` and `nbf`, in ms.
    pub clock_skew_ms: u64,
}

impl Default for OAuthBearerSettings {
    fn default() -> Self {
        Self {
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_ms: 300_000,
            issuer: None,
            audience: None,
            principal_claim: "sub".into(),
            clock_skew_ms: 30_000,
        }
    }
}

impl Default for SaslSettings {
    fn default() -> Self {
        Self {
            mechanisms: vec![
                "SCRAM-SHA-256".into(),
                "SCRAM-SHA-512".into(),
                "PLAIN".into(),
            ],
            failure_delay_ms: 1_000,
            max_reauth_ms: 0,
            auth_timeout_ms: 10_000,
            oauthbearer: OAuthBearerSettings::default(),
        }
    }
}

/// ACL authorization (Kafka's authorizer settings).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthorizationSettings {
    /// Check every request against the ACLs.
    pub enabled: bool,
    /// Principals allowed everything (`User:admin`; `User:ANONYMOUS` for a loopback-only
    /// PLAINTEXT listener used by local tools).
    pub super_users: Vec<String>,
    /// Allow an operation on a resource no ACL mentions (Kafka's
    /// `allow.everyone.if.no.acl.found`; false: such resources are closed).
    pub allow_everyone_if_no_acl_found: bool,
}
