//! Why a client could not be authenticated, and why a security setting is unusable.

/// A failed or refused authentication.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The credentials did not match (or the user does not exist).
    #[error("authentication of user {user:?} failed: {why}")]
    Failed {
        /// The user named.
        user: String,
        /// What did not match (logged, never sent to the client).
        why: String,
    },
    /// The SASL message could not be understood.
    #[error("malformed SASL message: {0}")]
    Malformed(String),
    /// The mechanism is not enabled on this listener.
    #[error("SASL mechanism {0:?} is not enabled")]
    UnsupportedMechanism(String),
    /// The credential store could not be read (retryable by the client).
    #[error("could not read credentials: {0}")]
    Store(#[from] silt_meta::MetaError),
}

/// A TLS certificate, key or CA bundle that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM item.
    #[error("{what} {path}: {why}. Check the path in [tls] and that it is PEM")]
    File {
        /// Which setting.
        what: &'static str,
        /// The path.
        path: String,
        /// What was wrong.
        why: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration refused: {0}")]
    Config(String),
}
