//! The bottom of the Silt crate graph: settings, the clock, and small shared types.
//!
//! This crate depends on no other Silt crate. It must never perform I/O other than reading the
//! configuration file it is pointed at.
#![warn(missing_docs)]

pub mod clock;
pub mod config;
pub mod metrics;
pub mod security_config;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{ConfigError, Settings};
