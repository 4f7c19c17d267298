//! The identity requests are authorized as: Kafka's `KafkaPrincipal` (`User:name`).

use std::fmt;

/// Who a connection is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    /// The user name (`ANONYMOUS` for an unauthenticated connection).
    pub name: String,
}

impl Principal {
    /// A user.
    pub fn user(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }

    /// What a connection without authentication is (Kafka's `User:ANONYMOUS`).
    pub fn anonymous() -> Self {
        Self::user("ANONYMOUS")
    }

    /// Parses `User:name` (the form ACLs and settings use).
    pub fn parse(s: &str) -> Option<Self> {
        s.strip_prefix("User:")
            .filter(|n| !n.is_empty())
            .map(Self::user)
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "User:{}", self.name)
    }
}
