//! Logging set-up: `tracing` to stderr, filtered per module by `SILT_LOG` (an `EnvFilter`
//! directive such as `info` or `silt_agent::flush=debug,info`), one JSON object per line with
//! `SILT_LOG_FORMAT=json`. The filter can be replaced while the agent runs through the admin
//! port (`PUT /loglevel?filter=...`), via the [`LogLevels`] handed to the agent.

use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use silt_agent::log_levels::LogLevels;
use tracing_subscriber::EnvFilter;

type Reload = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// The live filter.
struct Levels {
    current: Mutex<String>,
    reload: Reload,
}

impl std::fmt::Debug for Levels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Levels")
            .field("current", &self.current)
            .finish()
    }
}

impl LogLevels for Levels {
    fn current(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(&self, filter: &str) -> Result<(), String> {
        let f = EnvFilter::try_new(filter).map_err(|e| {
            format!("{filter:?} is not a valid log filter ({e}); try `info` or `silt_agent::flush=debug,info`")
        })?;
        (self.reload)(f)?;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = filter.to_string();
        Ok(())
    }
}

/// Installs the global subscriber; returns the run-time control of its filter.
pub fn init() -> anyhow::Result<Arc<dyn LogLevels>> {
    let directive = std::env::var("SILT_LOG").unwrap_or_else(|_| "info".into());
    let filter = EnvFilter::try_new(&directive).with_context(|| {
        format!("SILT_LOG={directive:?} is not a valid log filter (try `info` or `silt_agent=debug,info`)")
    })?;
    // Colours only on a terminal: log files and shippers get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let reload: Reload = match std::env::var("SILT_LOG_FORMAT").as_deref() {
        Ok("json") => {
            let b = builder.json().with_filter_reloading();
            let h = b.reload_handle();
            b.init();
            Box::new(move |f| h.reload(f).map_err(|e| e.to_string()))
        }
        Ok("text") | Err(_) => {
            let b = builder.with_filter_reloading();
            let h = b.reload_handle();
            b.init();
            Box::new(move |f| h.reload(f).map_err(|e| e.to_string()))
        }
        Ok(other) => anyhow::bail!(
            "SILT_LOG_FORMAT={other:?} is not supported: use `text` (default) or `json`"
        ),
    };
    Ok(Arc::new(Levels {
        current: Mutex::new(directive),
        reload,
    }))
}
