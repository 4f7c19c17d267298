//! Producer ids bound to the principal they were issued to.
//!
//! An issued id is `counter << 31 | tag`, where `tag` is 31 bits of HMAC-SHA256 over the counter
//! and the principal, keyed by a cluster secret in the metadata store. Any agent can tell, with
//! no state, whether a produce batch's producer id was issued to the connection's principal: a
//! client cannot take over (or fence, with a higher epoch) another principal's idempotent
//! producer by guessing its id. Ids below 2^31 were issued before ids were sealed and are
//! accepted as they are.

use aws_lc_rs::hmac;

/// Ids below this are from before sealing.
pub const SEALED_FROM: i64 = 1 << 31;

/// What a producer id is to a principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidCheck {
    /// Not an idempotent batch (`-1`) or an id from before sealing.
    Unsealed,
    /// Issued to this principal.
    Owned,
    /// Not issued to this principal.
    Foreign,
}

/// Seals and checks producer ids.
pub struct PidSealer {
    key: hmac::Key,
}

impl std::fmt::Debug for PidSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PidSealer(<redacted>)")
    }
}

impl PidSealer {
    /// With the cluster's secret.
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    fn tag(&self, counter: i64, principal: &str) -> i64 {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&counter.to_be_bytes());
        ctx.update(principal.as_bytes());
        let d = ctx.sign();
        let b = d.as_ref();
        (u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff) as i64
    }

    /// The id to issue for `counter` (below 2^32) to `principal`.
    pub fn seal(&self, counter: i64, principal: &str) -> i64 {
        debug_assert!((0..1 << 32).contains(&counter));
        (counter << 31) | self.tag(counter, principal)
    }

    /// Whether `pid` was issued to `principal`.
    pub fn check(&self, pid: i64, principal: &str) -> PidCheck {
        if pid < SEALED_FROM {
            return PidCheck::Unsealed;
        }
        let counter = pid >> 31;
        if self.tag(counter, principal) == pid & 0x7fff_ffff {
            PidCheck::Owned
        } else {
            PidCheck::Foreign
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_owned_by_the_principal_they_were_issued_to() {
        let s = PidSealer::new(b"cluster secret");
        let pid = s.seal(1000, "User:alice");
        assert!(pid >= SEALED_FROM);
        assert_eq!(s.check(pid, "User:alice"), PidCheck::Owned);
        assert_eq!(s.check(pid, "User:mallory"), PidCheck::Foreign);
        assert_eq!(s.check(pid + 1, "User:alice"), PidCheck::Foreign);
        assert_eq!(s.check(-1, "User:alice"), PidCheck::Unsealed);
        assert_eq!(s.check(1234, "User:alice"), PidCheck::Unsealed);
        let other = PidSealer::new(b"another cluster");
        assert_eq!(other.check(pid, "User:alice"), PidCheck::Foreign);
        let last = s.seal((1 << 32) - 1, "User:alice");
        assert!(last > 0 && s.check(last, "User:alice") == PidCheck::Owned);
    }
}
