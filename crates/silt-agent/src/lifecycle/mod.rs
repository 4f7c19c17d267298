//! The raw log's lifecycle: retention (`retention.ms`, `retention.bytes`, DeleteRecords) moves
//! a partition's log start and deletes the index entries below it ([`retention`]); garbage
//! collection deletes objects no index entry references any more ([`gc`]).
//!
//! Not here yet (the storage-lifecycle issue): compaction of small flush objects into
//! per-partition segments and the block cache for catch-up reads.

pub mod gc;
pub mod retention;
