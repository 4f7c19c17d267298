//! Who a client is and what it may do.
//!
//! - [`tls`]: the rustls server configuration of TLS listeners (reloaded on rotation, mTLS);
//!   [`mapping`]: Kafka's principal mapping rules for client certificates.
//! - [`sasl`] and [`scram`]: SASL PLAIN and SCRAM-SHA-256/512 against the user database in the
//!   metadata store; [`oauth`]: OAUTHBEARER with JWTs checked against a JWKS.
//! - [`acl`] and [`authorizer`]: Kafka's ACL model and the authorizer that enforces it.
//! - [`producer_ids`]: producer ids sealed to the principal they were issued to.
//!
//! The agent's connection layer uses these; the request handlers never do.

pub mod acl;
pub mod authorizer;
pub mod error;
pub mod mapping;
pub mod oauth;
pub mod principal;
pub mod producer_ids;
pub mod sasl;
pub mod scram;
pub mod tls;

#[cfg(test)]
mod mutation_tests;

pub use error::{AuthError, TlsError};
pub use principal::Principal;
