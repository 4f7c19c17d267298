//! The Kafka wire edge of Silt: length-prefixed frames, request headers, guarded request
//! decoding, response encoding, the v2 record-batch header, and the v0/v1 message sets of old
//! clients.
//!
//! Everything here treats input as hostile: a frame is bounded before it is read, decoding can
//! neither abort the process nor panic past this crate (see [`alloc`] and [`request`]), and a
//! record batch is checked without decompressing it. This crate knows nothing of topics or
//! storage.
#![warn(missing_docs)]

pub mod alloc;
pub mod batch;
pub mod control;
pub mod frame;
pub mod legacy;
pub mod message_set;
pub mod request;
pub mod response;
pub mod rope;
pub mod write;

pub use kafka_protocol;

#[cfg(test)]
#[global_allocator]
static ALLOC: alloc::LazyLargeAlloc = alloc::LazyLargeAlloc;
