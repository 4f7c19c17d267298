//! `silt-bench`: a load tool that drives a real agent with librdkafka (through `rdkafka`) and
//! prints throughput and latency percentiles, plus `sink`, a minimal Kafka server that
//! acknowledges produces without storing them — the best this machine and client can do, so a
//! run can report Silt as a ratio of it.

mod group;
mod load;
mod replay;
mod sink;
mod stats;

use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "Load tool for Silt (librdkafka client)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the sink server (acknowledges produces, stores nothing).
    Sink {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:19999")]
        listen: String,
        /// Partitions reported for every topic.
        #[arg(long, default_value_t = 16)]
        partitions: i32,
    },
    /// Produce at a fixed rate (or as fast as possible) and report throughput and latency.
    Produce(load::ProduceArgs),
    /// Produce at a fixed rate while consuming; report consume throughput and end-to-end latency.
    E2e(load::E2eArgs),
    /// Produce a backlog, then drain it with a consumer group; report consume throughput.
    Group(group::GroupArgs),
    /// Read an existing topic from its earliest offsets to its high watermarks; report throughput.
    Replay(replay::ReplayArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match Cli::parse().cmd {
        Cmd::Sink { listen, partitions } => rt.block_on(sink::run(&listen, partitions)),
        Cmd::Produce(a) => rt.block_on(load::produce(a)).map(|r| println!("{r}")),
        Cmd::E2e(a) => rt.block_on(load::e2e(a)).map(|r| println!("{r}")),
        Cmd::Group(a) => rt.block_on(group::run(a)).map(|r| println!("{r}")),
        Cmd::Replay(a) => replay::run(a).map(|r| println!("{r}")),
    }
}

pub(crate) fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}
