//! One client connection: frames are read and handled in order; responses are written in
//! request order even when some wait (acks=all, long-poll fetch) — later requests are read and
//! started meanwhile, up to a bounded number in flight.
//!
//! A frame that is too large, cannot be parsed, names an unknown API or a version we do not
//! serve closes this connection with a log line; nothing else is affected.
//!
//! Each request passes the pipeline's layers in order: frame → decode → authenticate
//! ([`crate::session`]) → fetch sessions ([`crate::fetch_sessions`]) → authorize ([`crate::authz`]) → limits ([`crate::limits`]) → handler.
//! On TLS listeners the handshake comes first (bounded by `tls.handshake_timeout_ms`).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, ResponseKind};
use silt_wire::frame::{read_frame_body, read_frame_size};
use silt_wire::request::{decode_body, parse_header};
use silt_wire::response::{encode_frame, encode_response, Frame};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::authz::Verdict;
use crate::broker::Broker;
use crate::fetch_sessions::{FetchSessions, Plan};
use crate::handlers::{self, Reply};
use crate::listeners::ListenerInfo;
use crate::quotas::{Mute, Ticket};
use crate::session::{Gate, Session};

/// A response on its way out, and what it holds until written (a fetch's reserved bytes).
///
/// Responses in flight per connection are bounded by `connections.max_in_flight`: produce
/// responses wait for a flush (~`flush.interval_ms`) and librdkafka sends one request per
/// partition per linger period, so it must cover hundreds; the bytes produce requests carry are
/// bounded by the flush buffer budget, those of fetch responses by the limits layer
/// ([`crate::limits`]).
struct Outgoing {
    kind: OutKind,
    _hold: Option<crate::limits::ResponsePermit>,
    /// Who the quota layer charges (a fetch response's bytes are counted when it is written).
    quota: Option<Ticket>,
}

/// How long a request frame's body may take to arrive once its size was read and its memory
/// reserved: 30 s, plus a second per MiB.
fn body_deadline(size: usize) -> std::time::Duration {
    std::time::Duration::from_secs(30 + (size >> 20) as u64)
}

/// Largest request accepted before a connection authenticates (Kafka's
/// `sasl.server.max.receive.size`).
const UNAUTHENTICATED_MAX_FRAME: usize = 512 * 1024;

enum OutKind {
    Ready(Bytes),
    Pending {
        task: JoinHandle<handlers::Answer>,
        correlation_id: i32,
        api: ApiKey,
        version: i16,
    },
}

/// Serves one connection until the client closes it or sends something unacceptable.
pub async fn serve(
    broker: Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    _admitted: crate::limits::Admitted,
    listener: Arc<ListenerInfo>,
) {
    broker
        .metrics
        .connections_total
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    broker
        .metrics
        .connections_open
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _ = stream.set_nodelay(true);
    match (&broker.security.tls, listener.protocol.tls()) {
        (Some(tls), true) => {
            let wait = std::time::Duration::from_millis(broker.settings.tls.handshake_timeout_ms);
            match tokio::time::timeout(wait, tls.accept(stream)).await {
                Ok(Ok((tls_stream, cert))) => {
                    let session = Session::new(listener, peer, cert);
                    serve_inner(&broker, tls_stream, session).await;
                }
                Ok(Err(e)) => {
                    broker
                        .security
                        .stats
                        .tls_failed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(%peer, listener = %listener.name, error = %e,
                        "closing connection: TLS handshake failed (a plaintext client on a TLS listener, an untrusted client certificate, or no common protocol)");
                }
                Err(_) => {
                    broker
                        .security
                        .stats
                        .tls_failed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(%peer, listener = %listener.name,
                        "closing connection: no TLS handshake within tls.handshake_timeout_ms");
                }
            }
        }
        (None, true) => {
            tracing::error!(listener = %listener.name, "a TLS listener without a TLS configuration; closing the connection");
        }
        (_, false) => serve_inner(&broker, stream, Session::new(listener, peer, None)).await,
    }
    broker
        .metrics
        .connections_open
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

async fn serve_inner<S>(broker: &Arc<Broker>, stream: S, mut session: Session)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let peer = session.peer;
    let (mut rd, wr) = tokio::io::split(stream);
    let (tx, rx) = mpsc::channel(broker.settings.connections.max_in_flight);
    let budget = broker.limits.connection_budget();
    let idle = std::time::Duration::from_millis(broker.settings.connections.idle_timeout_ms);
    let mute = Arc::new(Mute::default());
    let fetch_sessions = Arc::new(std::sync::Mutex::new(FetchSessions::new(
        broker.metrics.fetch_sessions.clone(),
    )));
    let writer = tokio::spawn(write_loop(
        wr,
        rx,
        peer,
        std::time::Duration::from_millis(broker.settings.connections.idle_timeout_ms),
        (broker.clone(), mute.clone()),
    ));
    let max = broker.settings.max_frame_bytes;
    let mut stopping = broker.stopping.subscribe();
    // A connection on a SASL listener must authenticate within sasl.auth_timeout_ms.
    let auth_deadline = tokio::time::Instant::now()
        + std::time::Duration::from_millis(broker.settings.sasl.auth_timeout_ms);
    loop {
        // A throttled client (quotas) is not read from until its throttle time passed.
        let muted = mute.remaining();
        if !muted.is_zero() {
            tokio::select! {
                _ = stopping.wait_for(|s| *s) => break,
                _ = tokio::time::sleep(muted) => {}
            }
        }
        let (wait, max) = if session.authenticated() {
            (idle, max)
        } else {
            // Before authentication: a small frame limit (Kafka's 512 KB) and a deadline that
            // holds however busily the client sends ApiVersions.
            let left = auth_deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                tracing::info!(%peer, listener = %session.listener.name,
                    "closing connection: not authenticated within sasl.auth_timeout_ms");
                break;
            }
            (idle.min(left), max.min(UNAUTHENTICATED_MAX_FRAME))
        };
        let read = tokio::select! {
            biased;
            _ = stopping.wait_for(|s| *s) => {
                tracing::info!(%peer, "closing connection: this agent session ended");
                break;
            }
            read = tokio::time::timeout(wait, read_frame_size(&mut rd, max)) => match read {
                Ok(read) => read,
                Err(_) if !session.authenticated() => {
                    tracing::info!(%peer, listener = %session.listener.name,
                        "closing connection: not authenticated within sasl.auth_timeout_ms");
                    break;
                }
                Err(_) => {
                    broker.limits.idle_closed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(%peer, idle_ms = idle.as_millis() as u64,
                        "closing connection: no complete request within connections.idle_timeout_ms");
                    break;
                }
            },
        };
        let size = match read {
            Ok(Some(size)) => size,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "closing connection: {e}");
                break;
            }
        };
        // The memory layer: the frame's bytes are reserved on the agent's request budget before
        // they are read, and given back once the request was handled.
        let request_permit = tokio::select! {
            p = broker.limits.reserve_request(size) => p,
            _ = stopping.wait_for(|s| *s) => break,
        };
        // The body within its own bound, and — before authentication — within what is left of
        // sasl.auth_timeout_ms, however slowly it trickles in.
        let body_wait = if session.authenticated() {
            body_deadline(size).min(idle)
        } else {
            body_deadline(size)
                .min(auth_deadline.saturating_duration_since(tokio::time::Instant::now()))
        };
        let frame: Bytes = match tokio::time::timeout(body_wait, read_frame_body(&mut rd, size))
            .await
        {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                tracing::warn!(%peer, error = %e, "closing connection: {e}");
                break;
            }
            Err(_) if !session.authenticated() => {
                tracing::info!(%peer, listener = %session.listener.name,
                    "closing connection: not authenticated within sasl.auth_timeout_ms");
                break;
            }
            Err(_) => {
                tracing::warn!(%peer, size,
                    "closing connection: a request frame's body did not arrive in time (it holds request memory meanwhile)");
                break;
            }
        };
        if session.expects_raw_token() {
            // SaslHandshake v0: the SASL tokens travel bare, without request headers.
            match session.raw_token(broker, &frame).await {
                Some(token) => {
                    let mut out = Vec::with_capacity(4 + token.len());
                    out.extend_from_slice(&(token.len() as i32).to_be_bytes());
                    out.extend_from_slice(&token);
                    let out = Outgoing {
                        kind: OutKind::Ready(Bytes::from(out)),
                        _hold: None,
                        quota: None,
                    };
                    if tx.send(out).await.is_err() {
                        break;
                    }
                    continue;
                }
                None => break,
            }
        }
        let req_len = frame.len() as u64;
        let req = match parse_header(frame) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "closing connection: {e}");
                break;
            }
        };
        let (api, version, correlation_id) = (req.api_key, req.version, req.correlation_id());
        let Some((min, max_v)) = handlers::supported(api) else {
            tracing::warn!(%peer, ?api, correlation_id,
                "closing connection: API {api:?} is not served by Silt yet (see docs/compatibility.md)");
            break;
        };
        if version < min || version > max_v {
            if api == ApiKey::ApiVersions {
                let body = ResponseKind::ApiVersions(handlers::unsupported_version_response());
                let Ok(b) = encode_response(correlation_id, api, 0, &body) else {
                    break;
                };
                let out = Outgoing {
                    kind: OutKind::Ready(b),
                    _hold: None,
                    quota: None,
                };
                if tx.send(out).await.is_err() {
                    break;
                }
                continue;
            }
            tracing::warn!(%peer, ?api, version, correlation_id,
                "closing connection: {api:?} v{version} is not supported (this agent serves v{min}-v{max_v})");
            break;
        }
        let mut body = match decode_body(&req) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "closing connection: {e}");
                break;
            }
        };
        let answer = |resp: ResponseKind| -> Option<Outgoing> {
            match encode_response(correlation_id, api, version, &resp) {
                Ok(b) => Some(Outgoing {
                    kind: OutKind::Ready(b),
                    _hold: None,
                    quota: None,
                }),
                Err(e) => {
                    tracing::error!(%peer, ?api, version, error = %e, "could not encode a response; closing connection");
                    None
                }
            }
        };
        // The authentication and authorization layers: go on to the handler (with a fix-up
        // for its response), answer here (and maybe close), or close.
        let step = match session.gate(broker, api, version, &body).await {
            Gate::Pass => match sessions_layer(&fetch_sessions, &mut body, version) {
                Plan::Answer(resp) => Err((Some(ResponseKind::Fetch(resp)), false)),
                plan => match crate::authz::check(broker, &mut session, &mut body, version) {
                    Verdict::Pass(fixup) => Ok(match plan {
                        Plan::Narrow(n) => crate::authz::then(fixup, move |r| {
                            if let ResponseKind::Fetch(f) = r {
                                crate::fetch_sessions::narrow(&n, f);
                            }
                        }),
                        _ => fixup,
                    }),
                    Verdict::Deny(resp) => Err((Some(*resp), false)),
                    Verdict::Close(why) => {
                        tracing::warn!(%peer, principal = %session.principal, "closing connection: {why}");
                        Err((None, true))
                    }
                },
            },
            Gate::Answer(resp) => Err((Some(resp), false)),
            Gate::AnswerAndClose(resp) => Err((Some(resp), true)),
            Gate::Close(why) => {
                tracing::warn!(%peer, listener = %session.listener.name, "closing connection: {why}");
                Err((None, true))
            }
        };
        let fixup = match step {
            Ok(fixup) => fixup,
            Err((resp, close)) => {
                let sent = match resp.and_then(answer) {
                    Some(out) => tx.send(out).await.is_ok(),
                    None => false,
                };
                if close || !sent {
                    break;
                }
                continue;
            }
        };
        // A fetch reserves the bytes its response may take before it runs (and is capped to
        // them): a client that stops reading stops being read from.
        let hold = match &mut body {
            kafka_protocol::messages::RequestKind::Fetch(f) => {
                let wanted = if f.max_bytes <= 0 {
                    usize::MAX
                } else {
                    f.max_bytes as usize
                };
                // Bounded: a client whose earlier responses are never read, or an agent whose
                // budget is held by such clients, does not keep this connection forever.
                let permit = tokio::select! {
                    p = broker.limits.reserve(&budget, wanted) => p,
                    _ = stopping.wait_for(|s| *s) => break,
                    _ = tokio::time::sleep(idle) => {
                        tracing::info!(%peer, "closing connection: a fetch waited connections.idle_timeout_ms for response memory (responses unread?)");
                        break;
                    }
                };
                f.max_bytes = i32::try_from(permit.bytes).unwrap_or(i32::MAX);
                Some(permit)
            }
            _ => None,
        };
        let span = tracing::debug_span!(
            "request",
            api = ?api,
            version,
            correlation_id,
            client_id = req.header.client_id.as_deref().unwrap_or(""),
            %peer
        );
        // The quota layer: request time and produce bytes are checked as requests arrive,
        // fetch bytes as their response is written (write_loop).
        let (throttle, quota) = crate::quotas::admit(
            &broker.quotas,
            &broker.metrics.throttled,
            &mute,
            (
                session.principal.name.as_str(),
                req.header.client_id.as_deref().unwrap_or(""),
            ),
            (api, req_len),
        );
        let fixup = match throttle {
            Some(ms) => crate::authz::then(fixup, move |r| crate::quotas::set_throttle_time(r, ms)),
            None => fixup,
        };
        let started = std::time::Instant::now();
        let reply = handlers::dispatch(broker, &req, body, &mut session)
            .instrument(span)
            .await;
        drop(req);
        let out = match crate::authz::apply(reply, fixup) {
            Reply::None => {
                broker.metrics.request(api, started.elapsed());
                continue;
            }
            Reply::Now(resp) => {
                drop(request_permit);
                broker.metrics.request(api, started.elapsed());
                let encoded = encode_response(correlation_id, api, version, &resp);
                if let Some(t) = &quota {
                    t.spent(&broker.quotas, started.elapsed());
                }
                match encoded {
                    Ok(b) => Outgoing {
                        kind: OutKind::Ready(b),
                        _hold: hold,
                        quota,
                    },
                    Err(e) => {
                        tracing::error!(%peer, ?api, version, error = %e, "could not encode a response; closing connection");
                        break;
                    }
                }
            }
            Reply::Later(fut) => {
                let b = broker.clone();
                let ticket = quota.clone();
                let dispatched = started.elapsed();
                Outgoing {
                    kind: OutKind::Pending {
                        task: tokio::spawn(async move {
                            let resp = match ticket {
                                None => fut.await,
                                Some(t) => {
                                    let (resp, polled) = crate::quotas::Timed::new(fut).await;
                                    t.spent(&b.quotas, dispatched + polled);
                                    resp
                                }
                            };
                            drop(request_permit);
                            b.metrics.request(api, started.elapsed());
                            resp
                        }),
                        correlation_id,
                        api,
                        version,
                    },
                    _hold: hold,
                    quota,
                }
            }
        };
        if tx.send(out).await.is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

async fn write_loop<W: AsyncRead + AsyncWrite + Send + Unpin>(
    mut wr: WriteHalf<W>,
    mut rx: mpsc::Receiver<Outgoing>,
    peer: SocketAddr,
    stall: std::time::Duration,
    (broker, mute): (Arc<Broker>, Arc<Mute>),
) {
    while let Some(out) = rx.recv().await {
        let frame = match out.kind {
            OutKind::Ready(b) => Frame::from(b),
            OutKind::Pending {
                task,
                correlation_id,
                api,
                version,
            } => {
                let answer = match task.await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(%peer, ?api, error = %e, "request handler failed; closing connection");
                        return;
                    }
                };
                match encode_frame(correlation_id, api, version, &answer.body, &answer.records) {
                    Ok(mut f) => {
                        if let Some(ticket) = out.quota.as_ref().filter(|t| t.fetch) {
                            let t = ticket.fetched(&broker.quotas, f.len() as u64);
                            if !t.is_zero() {
                                mute.extend(t);
                                broker
                                    .metrics
                                    .throttled
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                let ms = t.as_millis().min(i32::MAX as u128) as i32;
                                f.head_mut(|m| {
                                    crate::quotas::set_encoded_fetch_throttle(m, version, ms)
                                });
                            }
                        }
                        f
                    }
                    Err(e) => {
                        tracing::error!(%peer, ?api, version, error = %e, "could not encode a response; closing connection");
                        return;
                    }
                }
            }
        };
        // A client that stops reading for the idle timeout loses its connection (and gives back
        // the response memory it holds).
        match tokio::time::timeout(stall, write_frame(&mut wr, &frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "client went away");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "closing connection: the client read none of a response for connections.idle_timeout_ms");
                return;
            }
        }
    }
}

/// Writes a frame's pieces in order, as many at once as the stream takes (one `writev` for a
/// Fetch response and the record bytes it names, wherever they lie).
async fn write_frame<W: AsyncWrite + Unpin>(wr: &mut W, frame: &Frame) -> std::io::Result<()> {
    let pieces = frame.pieces();
    let (mut i, mut at) = (0usize, 0usize);
    while i < pieces.len() {
        let slices: Vec<std::io::IoSlice<'_>> = std::iter::once(&pieces[i][at..])
            .chain(pieces[i + 1..].iter().map(|p| &p[..]))
            .take(MAX_IOVECS)
            .map(std::io::IoSlice::new)
            .collect();
        let mut n = wr.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 && i < pieces.len() {
            let left = pieces[i].len() - at;
            if n >= left {
                n -= left;
                i += 1;
                at = 0;
            } else {
                at += n;
                n = 0;
            }
        }
    }
    wr.flush().await
}

/// Pieces handed to one vectored write (Linux takes up to 1024).
const MAX_IOVECS: usize = 256;

/// Accepts connections on `bound` until `stop` is set; one over the connection limits is closed
/// at once.
pub(crate) fn accept(
    bound: crate::listeners::Bound,
    broker: Arc<Broker>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                res = bound.socket.accept() => match res {
                    Ok((stream, peer)) => match broker.limits.admit(peer.ip()) {
                        Ok(admitted) => {
                            tokio::spawn(serve(
                                broker.clone(),
                                stream,
                                peer,
                                admitted,
                                bound.info.clone(),
                            ));
                        }
                        Err(why) => {
                            tracing::warn!(%peer, listener = %bound.info.name, reason = ?why,
                                "closing a new connection: too many open (connections.max_total / connections.max_per_ip)");
                            drop(stream);
                        }
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, listener = %bound.info.name, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        }
    })
}

/// The fetch-session layer (KIP-227): expands an incremental Fetch into the full request it
/// stands for, or answers a bad session at once.
fn sessions_layer(
    sessions: &Arc<std::sync::Mutex<FetchSessions>>,
    body: &mut kafka_protocol::messages::RequestKind,
    version: i16,
) -> Plan {
    match body {
        kafka_protocol::messages::RequestKind::Fetch(f) => {
            crate::fetch_sessions::expand(sessions, f, version)
        }
        _ => Plan::Plain,
    }
}
