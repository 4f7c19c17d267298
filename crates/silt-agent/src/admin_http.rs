//! The admin HTTP port: `GET /metrics` (Prometheus text format), `/healthz` (the process is
//! alive) and `/readyz` (the agent takes writes, reaches the metadata store and object storage,
//! and its share of partitions and groups is loaded). A deliberately tiny HTTP/1.1 responder: one
//! request per connection, bounded request size, no dependencies.
//!
//! With `admin_tls` the port speaks TLS with the agent's certificate; with a `tls.client_ca`,
//! a client certificate that chains to it and names a super user may also make changes (mTLS),
//! as the admin token does.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::broker::Broker;

/// Serves the admin port until the listener is dropped with the task.
pub async fn serve(listener: TcpListener, broker: Arc<Broker>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => match broker.security.admin_tls.clone() {
                None => {
                    tokio::spawn(handle(stream, peer, broker.clone(), None));
                }
                Some(tls) => {
                    let b = broker.clone();
                    tokio::spawn(async move {
                        let wait = std::time::Duration::from_secs(5);
                        match tokio::time::timeout(wait, tls.accept(stream)).await {
                            Ok(Ok((s, cert))) => handle(s, peer, b, cert).await,
                            _ => tracing::debug!(%peer, "admin port: TLS handshake failed"),
                        }
                    });
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: std::net::SocketAddr,
    broker: Arc<Broker>,
    cert: Option<silt_security::Principal>,
) {
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
    let mut words = head.split_whitespace();
    let method = words.next().unwrap_or("");
    let target = words.next().unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (status, ctype, body) = match path {
        "/loglevel" if method != "GET" => {
            let token = broker.settings.admin_token.as_ref().map(|t| t.0.as_str());
            // A verified client certificate (mTLS) is as good as the token.
            // A client certificate whose principal is a super user is as good as the token;
            // any other certificate is not enough (every Kafka mTLS client has one).
            let admin_cert = cert.as_ref().filter(|p| {
                broker
                    .settings
                    .authorization
                    .super_users
                    .iter()
                    .any(|u| *u == p.to_string())
            });
            let allowed = match admin_cert {
                Some(p) => {
                    tracing::info!(%peer, principal = %p, "admin change by client certificate");
                    Ok(())
                }
                None => may_change(token, peer.ip(), bearer(&head)),
            };
            match allowed {
                Ok(()) => log_level(&broker, method, query),
                Err(why) => {
                    tracing::warn!(%peer, "refused a change through the admin port: {why}");
                    ("401 Unauthorized", "text/plain", format!("{why}\n"))
                }
            }
        }
        "/loglevel" => log_level(&broker, method, query),
        "/archive" => ("200 OK", "application/json", archive_status(&broker)),
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4",
            crate::exposition::render(&broker).await,
        ),
        "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
        "/readyz" => match not_ready(&broker) {
            None => ("200 OK", "text/plain", "ready\n".to_string()),
            Some(why) => (
                "503 Service Unavailable",
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        _ => (
            "404 Not Found",
            "text/plain",
            "try /metrics, /healthz, /readyz, /loglevel or /archive\n".to_string(),
        ),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Why the agent should not receive traffic now, if it should not.
fn not_ready(b: &Broker) -> Option<&'static str> {
    if b.flusher.subscribe().borrow().stopped {
        Some("this agent stopped taking writes (shutting down or fenced)")
    } else if !b.meta_stats.healthy() {
        Some("the metadata store is failing (see the log for the endpoint and error)")
    } else if !b.storage.stats().healthy() {
        Some("object storage is failing (see the log for the bucket and error)")
    } else if !*b.cluster.settled().borrow() {
        Some("partitions or group shards are still being assigned or loaded")
    } else {
        None
    }
}

/// `GET /archive`: Parquet archive progress of the partitions archived here, one JSON object
/// per partition: topic, partition, archived_offset (first offset not archived), high_watermark,
/// lag, files.
fn archive_status(b: &Broker) -> String {
    let live: std::collections::HashMap<(String, i32), i64> = b
        .cluster
        .local_partitions()
        .iter()
        .map(|p| ((p.topic.clone(), p.index), p.lock().high_watermark))
        .collect();
    let rows: Vec<String> = b
        .archive
        .status()
        .iter()
        .map(|s| {
            let hw = live
                .get(&(s.topic.clone(), s.partition))
                .copied()
                .unwrap_or(s.high_watermark);
            format!(
                "{{\"topic\":\"{}\",\"partition\":{},\"archived_offset\":{},\"high_watermark\":{},\"lag\":{},\"files\":{}}}",
                s.topic,
                s.partition,
                s.next_offset,
                hw,
                (hw - s.next_offset).max(0),
                s.files
            )
        })
        .collect();
    format!("[{}]\n", rows.join(",\n"))
}

/// `GET /loglevel`: the filter in force; `PUT /loglevel?filter=...`: replace it.
/// The token of an `Authorization: Bearer ...` header, if any.
fn bearer(head: &str) -> Option<&str> {
    head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        if !name.trim().eq_ignore_ascii_case("authorization") {
            return None;
        }
        let v = value.trim();
        v.get(..7)
            .filter(|p| p.eq_ignore_ascii_case("bearer "))
            .map(|_| v[7..].trim())
    })
}

/// Whether a mutating admin request may proceed: with `admin_token` set, only with that bearer
/// token (compared in constant time); without one, only from the loopback interface.
fn may_change(
    token: Option<&str>,
    peer: std::net::IpAddr,
    given: Option<&str>,
) -> Result<(), &'static str> {
    match (token, given) {
        (Some(t), Some(g)) if t.len() == g.len() => {
            let diff = t
                .bytes()
                .zip(g.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                Ok(())
            } else {
                Err("wrong admin token (send Authorization: Bearer <admin_token>)")
            }
        }
        (Some(_), _) => {
            Err("this endpoint needs the admin token (send Authorization: Bearer <admin_token>)")
        }
        (None, _) if peer.is_loopback() => Ok(()),
        (None, _) => Err(
            "changes through the admin port are only taken from loopback unless admin_token is set",
        ),
    }
}

fn log_level(b: &Broker, method: &str, query: &str) -> (&'static str, &'static str, String) {
    let Some(levels) = &b.log_levels else {
        return (
            "404 Not Found",
            "text/plain",
            "this agent was started without run-time log control\n".into(),
        );
    };
    match method {
        "GET" => ("200 OK", "text/plain", format!("{}\n", levels.current())),
        "PUT" | "POST" => {
            let filter = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("filter="))
                .map(percent_decode);
            match filter {
                None => (
                    "400 Bad Request",
                    "text/plain",
                    "give the new filter as ?filter=..., e.g. PUT /loglevel?filter=silt_agent::flush=debug,info\n".into(),
                ),
                Some(f) => match levels.set(&f) {
                    Ok(()) => {
                        tracing::info!(filter = %f, "log filter changed through the admin port");
                        ("200 OK", "text/plain", format!("{f}\n"))
                    }
                    Err(e) => ("400 Bad Request", "text/plain", format!("{e}\n")),
                },
            }
        }
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "use GET or PUT\n".into(),
        ),
    }
}

fn percent_decode(s: &str) -> String {
    fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn query_values_decode_without_panicking() {
        assert_eq!(
            percent_decode("silt_agent%3Ddebug%2Cinfo"),
            "silt_agent=debug,info"
        );
        assert_eq!(percent_decode("a+b%2"), "a b%2");
        assert_eq!(percent_decode("%zz%é"), "%zz%é");
    }
}
