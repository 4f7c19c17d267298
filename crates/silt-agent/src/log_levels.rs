//! Changing log levels while the agent runs. The binary owns the logging set-up and hands the
//! agent a [`LogLevels`]; the admin port exposes it (`GET /loglevel`, `PUT /loglevel?filter=…`).

/// Reads and replaces the active log filter (an `EnvFilter` directive such as
/// `silt_agent::flush=debug,info`).
pub trait LogLevels: Send + Sync + std::fmt::Debug {
    /// The filter in force.
    fn current(&self) -> String;
    /// Replaces the filter; the error says what is wrong with it.
    fn set(&self, filter: &str) -> Result<(), String>;
}
