//! The `silt` binary: parse the command line and settings, build components, run.

mod admin;
mod logging;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use silt_agent::{Agent, Components, Lost};
use std::time::Duration;

use silt_common::config::{MetadataKind, ObjectStoreKind};
use silt_common::{Clock, Settings, SystemClock};
use silt_meta::{EmbeddedKv, MetaKv};
use silt_meta_etcd::EtcdKv;
use silt_storage::Storage;

#[global_allocator]
static ALLOC: silt_wire::alloc::LazyLargeAlloc = silt_wire::alloc::LazyLargeAlloc;

/// Silt: a Kafka-compatible streaming layer over object storage.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an agent. With no options: listens on 127.0.0.1:9092 and keeps everything under
    /// ./silt-data (local object store, embedded metadata store).
    Agent {
        /// TOML settings file; SILT_* environment variables override it
        /// (nested keys with `__`, e.g. SILT_FLUSH__INTERVAL_MS=50).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Administer topics, groups and agents over the Kafka protocol (no Kafka tooling needed).
    Admin {
        /// Any agent of the cluster.
        #[arg(
            long,
            short,
            default_value = "127.0.0.1:9092",
            env = "SILT_ADMIN_BOOTSTRAP"
        )]
        bootstrap: String,
        #[command(subcommand)]
        command: admin::AdminCommand,
    },
}

fn main() -> anyhow::Result<()> {
    // Before any thread starts: few malloc arenas and a fixed mmap threshold, so freed memory is
    // reused or returned, not kept per thread or fragmented in the heap.
    silt_wire::alloc::tune_malloc(2);
    let cli = Cli::parse();
    if let Command::Admin { bootstrap, command } = cli.command {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        return match rt.block_on(admin::run(&bootstrap, command)) {
            Ok(out) => {
                print!("{out}");
                Ok(())
            }
            Err(e) => {
                eprintln!("silt admin: {e}");
                std::process::exit(1);
            }
        };
    }
    let log_levels = logging::init()?;
    match cli.command {
        Command::Agent { config } => {
            let settings = Settings::load(config.as_deref())?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(run_agent(settings, log_levels))
        }
        Command::Admin { .. } => unreachable!("handled above"),
    }
}

async fn run_agent(
    settings: Settings,
    log_levels: Arc<dyn silt_agent::log_levels::LogLevels>,
) -> anyhow::Result<()> {
    let clock = Arc::new(SystemClock);
    let meta: Arc<dyn MetaKv> = match settings.metadata.kind {
        MetadataKind::Embedded => {
            let dir = settings.metadata_path();
            Arc::new(EmbeddedKv::open(&dir, clock.clone()).with_context(|| {
                format!("opening the embedded metadata store in {}", dir.display())
            })?)
        }
        MetadataKind::Etcd => {
            let endpoints = settings.metadata.etcd_endpoints.clone();
            let timeout = Duration::from_millis(settings.metadata.connect_timeout_ms);
            let user = settings.metadata.etcd_user.as_deref().zip(
                settings
                    .metadata
                    .etcd_password
                    .as_ref()
                    .map(|p| p.0.as_str()),
            );
            let m = &settings.metadata;
            let read = |p: &std::path::PathBuf, what: &str| {
                std::fs::read(p).with_context(|| {
                    format!("reading {what} {} (metadata.etcd_{what}_file)", p.display())
                })
            };
            let tls = match &m.etcd_ca_file {
                None => None,
                Some(ca) => Some(silt_meta_etcd::EtcdTls {
                    ca_pem: read(ca, "ca")?,
                    identity_pem: match (&m.etcd_cert_file, &m.etcd_key_file) {
                        (Some(c), Some(k)) => Some((read(c, "cert")?, read(k, "key")?)),
                        _ => None,
                    },
                }),
            };
            Arc::new(EtcdKv::connect_with(&endpoints, timeout, user, tls.as_ref()).await.with_context(|| {
                format!(
                    "connecting to etcd at {} (metadata.etcd_endpoints); is etcd running and reachable from here?",
                    endpoints.join(", ")
                )
            })?)
        }
    };
    let storage = match settings.object_store.kind {
        ObjectStoreKind::Local => {
            let dir = settings.object_store_path();
            Storage::local(&dir).with_context(|| {
                format!(
                    "opening the local object store in {} (is the directory writable?)",
                    dir.display()
                )
            })?
        }
        ObjectStoreKind::Memory => {
            tracing::warn!("object_store.kind = memory: data is lost when the agent exits");
            Storage::in_memory()
        }
        ObjectStoreKind::S3 => {
            let s3 = &settings.object_store.s3;
            let where_ = format!(
                "bucket {} at {}",
                s3.bucket,
                s3.endpoint.as_deref().unwrap_or("AWS S3")
            );
            let storage = Storage::s3(s3).with_context(|| format!("configuring {where_}"))?;
            let probe = format!("{}-{}", std::process::id(), clock.now_ms());
            storage.probe(&probe).await.with_context(|| {
                format!("writing, reading and deleting a probe object in {where_}: does the bucket exist, and may these credentials write to it?")
            })?;
            storage
        }
    };
    if settings.object_store.inject_latency_ms > 0 {
        tracing::warn!(
            latency_ms = settings.object_store.inject_latency_ms,
            "object_store.inject_latency_ms is set: every object-store call is slowed down"
        );
        storage.faults().latency_ms.store(
            settings.object_store.inject_latency_ms,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
    if settings.object_store.inject_after_put_ms > 0 {
        tracing::warn!(
            pause_ms = settings.object_store.inject_after_put_ms,
            "object_store.inject_after_put_ms is set: every PUT is followed by a pause (fault injection)"
        );
        storage.faults().after_put_ms.store(
            settings.object_store.inject_after_put_ms,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
    let components = Components {
        meta,
        storage,
        clock,
        log_levels: Some(log_levels),
        crash_points: Default::default(),
    };
    let mut agent = Agent::start(settings.clone(), components.clone()).await?;
    match agent.admin_addr() {
        Some(a) => eprintln!(
            "silt agent listening on {} (admin http on {a})",
            agent.local_addr()
        ),
        None => eprintln!("silt agent listening on {}", agent.local_addr()),
    }
    let mut stop = std::pin::pin!(shutdown_signal());
    loop {
        tokio::select! {
            _ = &mut stop => break,
            lost = agent.lease_lost() => match lost {
                // A fixed id taken by another start: two processes claim one broker.
                Lost::TakenOver if settings.node_id >= 0 => anyhow::bail!(
                    "another start registered this agent's node id (node_id = {}); this one stops. Give every agent its own node_id, or set node_id = -1 to have one allocated",
                    settings.node_id
                ),
                // Expired, or (with node_id = -1) an auto-allocated id reused by another agent
                // after this one's lapsed: a new session takes the next free id.
                Lost::Expired | Lost::TakenOver => {
                    // Cut off from the metadata store (or stalled) longer than the lease: the
                    // partitions moved. Start a new session in this process once the store
                    // answers again, instead of exiting into a supervisor's restart back-off.
                    agent.abandon().await;
                    agent = tokio::select! {
                        _ = &mut stop => return Ok(()),
                        a = start_again(&settings, &components) => a?,
                    };
                }
            },
        }
    }
    tracing::info!("shutting down: flushing buffered writes and handing partitions over");
    agent.shutdown().await;
    Ok(())
}

/// Starts a new session after the last one lost its lease, retrying while the metadata store
/// (or the port, still closing) is unavailable.
async fn start_again(settings: &Settings, components: &Components) -> anyhow::Result<Agent> {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match Agent::start(settings.clone(), components.clone()).await {
            Ok(a) => {
                tracing::info!(attempt, "this agent serves again with a new session");
                return Ok(a);
            }
            Err(e @ silt_agent::StartError::NodeIdTaken { .. }) => return Err(e.into()),
            Err(e) => {
                let wait = Duration::from_millis((250u64 << attempt.min(3)).min(2_000));
                tracing::warn!(attempt, error = %e, "starting a new session failed; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
