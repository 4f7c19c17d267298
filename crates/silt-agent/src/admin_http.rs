//! The admin HTTP port: `GET /metrics` (Prometheus text format), `/healthz` (the process is
//! alive) and `/readyz` (the agent is serving). A deliberately tiny HTTP/1.1 responder: one
//! request per connection, bounded request size, no dependencies.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::broker::Broker;

/// Serves the admin port until the listener is dropped with the task.
pub async fn serve(listener: TcpListener, broker: Arc<Broker>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(handle(stream, broker.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(mut stream: TcpStream, broker: Arc<Broker>) {
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while n < buf.len() {
            let got = stream.read(&mut buf[n..]).await?;
            if got == 0 {
                break;
            }
            n += got;
            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return;
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let path = head.split_whitespace().nth(1).unwrap_or("");
    let (status, ctype, body) = match path {
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", render(&broker)),
        "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
        "/readyz" => {
            if *broker.cluster.settled().borrow() && !broker.flusher.subscribe().borrow().stopped {
                ("200 OK", "text/plain", "ready\n".to_string())
            } else {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    "not ready: partitions or group shards are still being assigned or loaded, or this agent stopped writing\n"
                        .to_string(),
                )
            }
        }
        _ => (
            "404 Not Found",
            "text/plain",
            "try /metrics, /healthz or /readyz\n".to_string(),
        ),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes()).await;
}

fn counter(out: &mut String, name: &str, help: &str, kind: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// The Prometheus exposition of the agent's counters.
pub fn render(b: &Broker) -> String {
    let mut out = String::new();
    let s = b.storage.stats();
    let f = b.flusher.stats();
    let r = Ordering::Relaxed;
    counter(
        &mut out,
        "silt_object_puts_total",
        "Object PUTs that succeeded.",
        "counter",
        s.puts.load(r),
    );
    counter(
        &mut out,
        "silt_object_put_bytes_total",
        "Bytes written to object storage.",
        "counter",
        s.put_bytes.load(r),
    );
    counter(
        &mut out,
        "silt_object_gets_total",
        "Object GETs (whole or ranged) that succeeded.",
        "counter",
        s.gets.load(r),
    );
    counter(
        &mut out,
        "silt_object_get_bytes_total",
        "Bytes read from object storage.",
        "counter",
        s.get_bytes.load(r),
    );
    counter(
        &mut out,
        "silt_object_errors_total",
        "Failed object-store attempts (each retry counts).",
        "counter",
        s.errors.load(r),
    );
    counter(
        &mut out,
        "silt_flushes_total",
        "Flushes committed (one object and one metadata commit each).",
        "counter",
        f.flushes.load(r),
    );
    counter(
        &mut out,
        "silt_flush_batches_total",
        "Record batches committed.",
        "counter",
        f.batches.load(r),
    );
    counter(
        &mut out,
        "silt_flush_bytes_total",
        "Bytes of record batches committed.",
        "counter",
        f.bytes.load(r),
    );
    counter(
        &mut out,
        "silt_metadata_commits_total",
        "Metadata-store commits made by the flush pipeline.",
        "counter",
        f.commits.load(r),
    );
    counter(
        &mut out,
        "silt_buffered_bytes",
        "Bytes buffered or in flight to object storage.",
        "gauge",
        b.flusher.buffered_bytes() as u64,
    );
    counter(
        &mut out,
        "silt_tail_cache_hits_total",
        "Reads served from the in-memory tail cache.",
        "counter",
        b.cache.hits.load(r),
    );
    counter(
        &mut out,
        "silt_tail_cache_misses_total",
        "Reads that needed an object GET.",
        "counter",
        b.cache.misses.load(r),
    );
    b.metrics.render(&mut out);
    let mut local = b.cluster.local_partitions();
    local.sort_by(|x, y| (&x.topic, x.index).cmp(&(&y.topic, y.index)));
    counter(
        &mut out,
        "silt_partitions",
        "Partitions this agent leads.",
        "gauge",
        local.len() as u64,
    );
    counter(
        &mut out,
        "silt_cluster_agents",
        "Live agents this agent sees.",
        "gauge",
        b.cluster.brokers().len() as u64,
    );
    counter(
        &mut out,
        "silt_is_controller",
        "1 if this agent is the controller.",
        "gauge",
        u64::from(b.cluster.controller_id() == Some(b.node.id)),
    );
    let c = &b.cluster.stats;
    counter(
        &mut out,
        "silt_partitions_gained_total",
        "Partitions this agent took leadership of.",
        "counter",
        c.partitions_gained.load(r),
    );
    counter(
        &mut out,
        "silt_partitions_lost_total",
        "Partitions whose leadership this agent gave up.",
        "counter",
        c.partitions_lost.load(r),
    );
    counter(
        &mut out,
        "silt_partition_load_last_ms",
        "Time the last batch of partition take-overs spent rebuilding state from the metadata store.",
        "gauge",
        c.last_load_ms.load(r),
    );
    let _ = writeln!(out, "# HELP silt_index_entries Offset-index keys per partition in the metadata store (partitions led here).\n# TYPE silt_index_entries gauge");
    for p in &local {
        let n = p.lock().segments.len();
        let _ = writeln!(
            out,
            "silt_index_entries{{topic=\"{}\",partition=\"{}\"}} {n}",
            p.topic, p.index
        );
    }
    out
}
