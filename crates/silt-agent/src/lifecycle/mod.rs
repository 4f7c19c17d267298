//! The raw log's lifecycle: retention (`retention.ms`, `retention.bytes`, DeleteRecords) moves
//! a partition's log start and deletes the index entries below it ([`retention`]); compaction
//! folds small committed ranges into segment objects ([`compaction`]); garbage collection
//! deletes objects no index entry references any more ([`gc`]).
//!
//! Not here yet (the storage-lifecycle issue): the block cache for catch-up reads.

pub mod compaction;
pub mod gc;
pub mod retention;
