//! `silt admin`: administer a Silt cluster (or any Kafka broker) from the command line, with no
//! Kafka tooling installed. Every command speaks the Kafka protocol to the agent given as
//! bootstrap and to the agents its Metadata names, so it works the same on a laptop (embedded
//! store) and on a cluster (etcd). Commands return their output as text; the binary prints it.
#![warn(missing_docs)]

pub mod client;
pub mod commands;
pub mod security;
pub mod transactions;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The agent could not be reached or the connection broke.
    #[error("could not talk to {addr}: {source}. Is an agent listening there? Pass --bootstrap HOST:PORT")]
    Io {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The agent answered something that does not decode.
    #[error("{addr} sent a response that could not be decoded: {reason}")]
    Protocol {
        /// The address.
        addr: String,
        /// What was wrong.
        reason: String,
    },
    /// The agent refused the operation.
    #[error("{what} failed: {code}{message}")]
    Refused {
        /// The operation.
        what: String,
        /// The Kafka error name.
        code: String,
        /// The agent's message, if any.
        message: String,
    },
    /// The command cannot be carried out.
    #[error("{0}")]
    Usage(String),
}

/// Turns a Kafka error code into an [`AdminError::Refused`] (or nothing for 0).
pub(crate) fn check(code: i16, what: &str, message: Option<&str>) -> Result<(), AdminError> {
    if code == 0 {
        return Ok(());
    }
    let name = match kafka_protocol::ResponseError::try_from_code(code) {
        Some(e) => format!("{e:?}"),
        None => format!("error code {code}"),
    };
    Err(AdminError::Refused {
        what: what.to_string(),
        code: name,
        message: message
            .filter(|m| !m.is_empty())
            .map(|m| format!(" ({m})"))
            .unwrap_or_default(),
    })
}
