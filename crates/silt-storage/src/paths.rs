//! Object names. Persisted: tools and GC rely on this layout.
//!
//! ```text
//! flush/{node_id}/{session}/{seq:012}.silt                        one flush object (see crate::object)
//! segments/{topic_id}/{partition}/{session}/{step:012}-{base:020}-{last:020}.silt   one compacted range
//! ```
//!
//! `session` is a fresh id per agent start, so a restarted agent never writes over an object
//! an earlier run wrote (and may have committed).

use object_store::path::Path;

/// The path of flush number `seq` of an agent session.
pub fn flush_object(node_id: i32, session: &str, seq: u64) -> Path {
    Path::from(format!("flush/{node_id}/{session}/{seq:012}.silt"))
}

/// The path of a compacted segment of a partition holding `base..=last`, written by
/// `session`. Unique per content: writes are create-only, and an existing object is taken as
/// this writer's own earlier attempt.
pub fn segment_object(
    topic_id: &uuid::Uuid,
    partition: i32,
    step: u64,
    base: i64,
    last: i64,
    session: &str,
) -> Path {
    Path::from(format!(
        "segments/{}/{partition}/{session}/{step:012}-{base:020}-{last:020}.silt",
        topic_id.simple()
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn flush_paths_sort_by_sequence() {
        let a = super::flush_object(1, "s", 9).to_string();
        let b = super::flush_object(1, "s", 10).to_string();
        assert!(a < b);
        assert_eq!(a, "flush/1/s/000000000009.silt");
    }
}
