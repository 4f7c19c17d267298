//! Topics as Parquet: committed record batches turned into Parquet files that DuckDB, pyarrow,
//! Polars or Spark read straight from the bucket.
//!
//! This crate owns the pure parts — decoding batches ([`decode`]), the file layout
//! ([`layout`]), rebuilding record batches from archived rows ([`rebuild`]), the value schema a topic may declare ([`schema`]) and building a Parquet file
//! ([`writer`]). The agent's archiver runs them per partition and commits progress.
#![warn(missing_docs)]

pub mod decode;
pub mod layout;
pub mod rebuild;
pub mod schema;
pub mod writer;

/// Why archiving a range failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A stored batch did not decode.
    #[error("a stored record batch could not be decoded: {0}")]
    Decode(String),
    /// Arrow or Parquet refused the data.
    #[error("building the Parquet file failed: {0}")]
    Parquet(String),
    /// A declared value schema is not valid.
    #[error("invalid silt.archive.value.schema: {0}")]
    Schema(String),
}
