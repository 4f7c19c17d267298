//! Integration tests of the agent library over in-memory stores: the lifecycle property test
//! and the seeded storage-engine simulation.

mod key_compaction;
mod lifecycle_model;
mod simulation;
mod support;
