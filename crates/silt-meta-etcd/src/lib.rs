//! The etcd backend of [`silt_meta::MetaKv`]: a thin translation onto etcd v3 (etcd-client).
//! Revisions, compare-and-swap transactions, leases and prefix watches are etcd's own, so this
//! backend passes the same conformance suite as the embedded one
//! ([`silt_meta::conformance::run_all`]).
//!
//! Owns nothing but a client connection; every call is independent (the client is cheap to
//! clone). It never interprets keys: the layout lives in `silt_meta::layout`.
#![warn(missing_docs)]

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare as ECompare, CompareOp as EOp, ConnectOptions, DeleteOptions, EventType,
    GetOptions, PutOptions, SortOrder, SortTarget, Txn as ETxn, TxnOp, WatchOptions,
};
use silt_meta::kv::*;
use tokio::sync::mpsc;

/// A metadata store in an etcd cluster.
#[derive(Clone)]
pub struct EtcdKv {
    client: Client,
    endpoints: Vec<String>,
}

impl std::fmt::Debug for EtcdKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdKv")
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

fn unavailable(doing: &str, e: etcd_client::Error) -> MetaError {
    MetaError::Unavailable {
        doing: doing.to_string(),
        source: Box::new(e),
    }
}

/// A failed transaction: refused as invalid (etcd's own limits, a bad request), or sent and not
/// answered, so of unknown outcome. "Too many requests" and "no space" (gRPC resource
/// exhausted) are not refusals: the same transaction may succeed later.
fn txn_error(doing: &str, e: etcd_client::Error) -> MetaError {
    match &e {
        // gRPC code 3: invalid argument (too many operations, request too large).
        etcd_client::Error::GRpcStatus(s) if s.code() as i32 == 3 => MetaError::Refused {
            doing: doing.to_string(),
            reason: s.message().to_string(),
        },
        // gRPC code 7: the etcd user's role does not cover the key — it never will by retrying.
        etcd_client::Error::GRpcStatus(s) if s.code() as i32 == 7 => MetaError::Refused {
            doing: doing.to_string(),
            reason: format!(
                "{} (grant metadata.etcd_user's role readwrite on the /silt/ prefix)",
                s.message()
            ),
        },
        _ => MetaError::Unanswered {
            doing: doing.to_string(),
            source: Box::new(e),
        },
    }
}

/// etcd reports an expired or revoked lease as a gRPC "not found" status.
fn lease_error(lease: LeaseId, doing: &str, e: etcd_client::Error) -> MetaError {
    match &e {
        etcd_client::Error::GRpcStatus(s) if s.message().contains("not found") => {
            MetaError::LeaseNotFound(lease)
        }
        etcd_client::Error::LeaseKeepAliveError(m) if m.contains("not found") => {
            MetaError::LeaseNotFound(lease)
        }
        _ => unavailable(doing, e),
    }
}

fn convert(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: kv.key().to_vec(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    }
}

/// The smallest key greater than every key starting with `prefix` (etcd's range end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}

/// TLS to etcd: PEM bytes of the CA bundle, and of a client certificate and key.
#[derive(Clone)]
pub struct EtcdTls {
    /// CA bundle the server's certificate must chain to.
    pub ca_pem: Vec<u8>,
    /// Client certificate chain and private key, when etcd asks for them.
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca_pem", &format!("{} bytes", self.ca_pem.len()))
            .field(
                "identity_pem",
                &self.identity_pem.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl EtcdKv {
    /// Connects to `endpoints` (e.g. `http://127.0.0.1:2379`), failing after `timeout`.
    pub async fn connect(endpoints: &[String], timeout: Duration) -> Result<Self, MetaError> {
        Self::connect_as(endpoints, timeout, None).await
    }

    /// Connects as an etcd user (`(name, password)`) when etcd has authentication enabled; its
    /// token is refreshed whenever etcd says it expired.
    pub async fn connect_as(
        endpoints: &[String],
        timeout: Duration,
        user: Option<(&str, &str)>,
    ) -> Result<Self, MetaError> {
        Self::connect_with(endpoints, timeout, user, None).await
    }

    /// Connects with every option: a user, and TLS for `https://` endpoints (a CA bundle to
    /// trust, and a client certificate and key when etcd requires them).
    pub async fn connect_with(
        endpoints: &[String],
        timeout: Duration,
        user: Option<(&str, &str)>,
        tls: Option<&EtcdTls>,
    ) -> Result<Self, MetaError> {
        // HTTP/2 pings find a connection that died silently (a network cut drops packets and
        // sends no reset), so watches break and are re-established instead of waiting forever.
        // etcd refuses pings more often than every 5 s (`--grpc-keepalive-min-time`).
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout.max(Duration::from_secs(5)))
            .with_keep_alive(Duration::from_secs(6), Duration::from_secs(3))
            .with_keep_alive_while_idle(true);
        if let Some((name, password)) = user {
            opts = opts.with_user(name, password).with_auto_token_refresh(true);
        }
        if let Some(t) = tls {
            let mut o = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(&t.ca_pem));
            if let Some((cert, key)) = &t.identity_pem {
                o = o.identity(etcd_client::Identity::from_pem(cert, key));
            }
            opts = opts.with_tls(o);
        }
        let mut client = Client::connect(endpoints, Some(opts)).await.map_err(|e| {
            unavailable(&format!("connecting to etcd at {}", endpoints.join(",")), e)
        })?;
        // A round trip proves the endpoint is an etcd that answers.
        client
            .get("/silt/", Some(GetOptions::new().with_count_only()))
            .await
            .map_err(|e| {
                unavailable(&format!("reading from etcd at {}", endpoints.join(",")), e)
            })?;
        Ok(Self {
            client,
            endpoints: endpoints.to_vec(),
        })
    }

    fn compare(c: &Compare) -> ECompare {
        let op = match c.op {
            CompareOp::Equal => EOp::Equal,
            CompareOp::NotEqual => EOp::NotEqual,
            CompareOp::Greater => EOp::Greater,
            CompareOp::Less => EOp::Less,
        };
        match &c.target {
            CompareTarget::Version(v) => ECompare::version(c.key.clone(), op, *v),
            CompareTarget::CreateRevision(v) => ECompare::create_revision(c.key.clone(), op, *v),
            CompareTarget::ModRevision(v) => ECompare::mod_revision(c.key.clone(), op, *v),
            CompareTarget::Value(v) => ECompare::value(c.key.clone(), op, v.clone()),
        }
    }

    fn op(o: &Op) -> TxnOp {
        match o {
            Op::Put { key, value, lease } => TxnOp::put(
                key.clone(),
                value.clone(),
                (*lease != 0).then(|| PutOptions::new().with_lease(*lease)),
            ),
            Op::Delete { key } => TxnOp::delete(key.clone(), None),
            Op::DeletePrefix { prefix } => TxnOp::delete(
                prefix.clone(),
                Some(DeleteOptions::new().with_range(prefix_end(prefix))),
            ),
        }
    }
}

#[async_trait]
impl MetaKv for EtcdKv {
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, MetaError> {
        let r = self
            .client
            .clone()
            .get(key, None)
            .await
            .map_err(|e| unavailable("reading a key", e))?;
        Ok(r.kvs().first().map(convert))
    }

    async fn range(&self, req: RangeRequest) -> Result<Vec<KeyValue>, MetaError> {
        let start = if req.start_after_or_at.starts_with(&req.prefix)
            && !req.start_after_or_at.is_empty()
        {
            req.start_after_or_at.clone()
        } else {
            req.prefix.clone()
        };
        let mut opts = GetOptions::new().with_range(prefix_end(&req.prefix));
        if req.limit > 0 {
            opts = opts.with_limit(req.limit as i64);
        }
        let order = if req.descending {
            SortOrder::Descend
        } else {
            SortOrder::Ascend
        };
        opts = opts.with_sort(SortTarget::Key, order);
        // Pages of up to PAGE_KEYS index entries (each well under 1.5 MiB) can exceed gRPC's
        // default 4 MiB reply limit: decode up to LIMITS.max_reply_bytes.
        let r = self
            .client
            .kv_client()
            .max_decoding_message_size(LIMITS.max_reply_bytes)
            .get(start, Some(opts))
            .await
            .map_err(|e| unavailable("reading a key range", e))?;
        Ok(r.kvs().iter().map(convert).collect())
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, MetaError> {
        txn.check(&LIMITS)?;
        // etcd refuses a lease that does not exist; report it the way the trait says.
        for op in txn.success.iter().chain(&txn.failure) {
            if let Op::Put { lease, .. } = op {
                if *lease != 0 {
                    let ttl = self
                        .client
                        .clone()
                        .lease_time_to_live(*lease, None)
                        .await
                        .map_err(|e| unavailable("checking a lease", e))?;
                    if ttl.ttl() <= 0 {
                        return Err(MetaError::LeaseNotFound(*lease));
                    }
                }
            }
        }
        let t = ETxn::new()
            .when(txn.compares.iter().map(Self::compare).collect::<Vec<_>>())
            .and_then(txn.success.iter().map(Self::op).collect::<Vec<_>>())
            .or_else(txn.failure.iter().map(Self::op).collect::<Vec<_>>());
        let r = self
            .client
            .clone()
            .txn(t)
            .await
            .map_err(|e| txn_error("committing a transaction", e))?;
        Ok(TxnResponse {
            succeeded: r.succeeded(),
            revision: r.header().map_or(0, |h| h.revision()),
        })
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, MetaError> {
        let secs = ttl.as_secs().max(1) as i64;
        let r = self
            .client
            .clone()
            .lease_grant(secs, None)
            .await
            .map_err(|e| unavailable("granting a lease", e))?;
        Ok(r.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), MetaError> {
        let doing = "renewing a lease";
        let (mut keeper, mut stream) = self
            .client
            .clone()
            .lease_keep_alive(lease)
            .await
            .map_err(|e| lease_error(lease, doing, e))?;
        keeper
            .keep_alive()
            .await
            .map_err(|e| lease_error(lease, doing, e))?;
        match stream
            .message()
            .await
            .map_err(|e| lease_error(lease, doing, e))?
        {
            Some(r) if r.ttl() > 0 => Ok(()),
            _ => Err(MetaError::LeaseNotFound(lease)),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), MetaError> {
        self.client
            .clone()
            .lease_revoke(lease)
            .await
            .map(|_| ())
            .map_err(|e| lease_error(lease, "revoking a lease", e))
    }

    async fn watch_prefix(
        &self,
        prefix: &[u8],
    ) -> Result<mpsc::UnboundedReceiver<WatchEvent>, MetaError> {
        let mut stream = self
            .client
            .clone()
            .watch(prefix, Some(WatchOptions::new().with_prefix()))
            .await
            .map_err(|e| unavailable("watching a prefix", e))?;
        let (tx, rx) = mpsc::unbounded_channel();
        // The first message is the creation notice; wait for it so that changes made after this
        // call returns are seen.
        match stream.message().await {
            Ok(Some(r)) if r.created() => {}
            Ok(_) => {}
            Err(e) => return Err(unavailable("starting a watch", e)),
        }
        tokio::spawn(async move {
            // The channel closes (and the follower re-reads) when the stream fails, ends, or etcd
            // cancels the watch (compaction past it, a server-side cancel).
            while let Ok(Some(r)) = stream.message().await {
                if r.canceled() {
                    tracing::warn!(
                        reason = r.cancel_reason(),
                        compact_revision = r.compact_revision(),
                        "etcd cancelled a watch; it will be re-established"
                    );
                    return;
                }
                for ev in r.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let out = match ev.event_type() {
                        EventType::Put => WatchEvent::Put(convert(kv)),
                        EventType::Delete => WatchEvent::Delete {
                            key: kv.key().to_vec(),
                            mod_revision: kv.mod_revision(),
                        },
                    };
                    if tx.send(out).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    async fn revision(&self) -> Result<i64, MetaError> {
        let r = self
            .client
            .clone()
            // Any key answers with the store's revision; Silt's own root is one every role
            // Silt runs as may read.
            .get("/silt/", Some(GetOptions::new().with_count_only()))
            .await
            .map_err(|e| unavailable("reading the revision", e))?;
        Ok(r.header().map_or(0, |h| h.revision()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(super::prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(super::prefix_end(&[0x61, 0xff]), vec![0x62]);
        assert_eq!(super::prefix_end(&[0xff]), vec![0]);
    }
}
