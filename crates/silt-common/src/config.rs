//! Settings: plain serde structs with defaults, then an optional TOML file, then `SILT_*`
//! environment variables (nested keys joined with `__`, e.g. `SILT_FLUSH__INTERVAL_MS=50`).
//!
//! Settings are data only. Components (stores, clocks) are built from them elsewhere. Unknown
//! keys are errors, so a typo stops start-up instead of being ignored.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use crate::security_config::{
    AuthorizationSettings, ClientAuthSetting, ListenerSettings, PrincipalFromSetting, SaslSettings,
    SecurityProtocol, TlsSettings,
};

/// Everything an agent can be configured with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Address the Kafka listener binds, `host:port` (the listener named `DEFAULT`).
    pub listen: String,
    /// Security protocol of the `listen` listener.
    pub security_protocol: SecurityProtocol,
    /// More named listeners, each with its own address and security protocol.
    pub listeners: Vec<ListenerSettings>,
    /// TLS of SSL and SASL_SSL listeners.
    pub tls: TlsSettings,
    /// SASL of SASL_PLAINTEXT and SASL_SSL listeners.
    pub sasl: SaslSettings,
    /// ACL authorization.
    pub authorization: AuthorizationSettings,
    /// Address of the admin HTTP port (`/metrics`, `/healthz`, `/readyz`); empty to disable.
    pub admin_listen: Option<String>,
    /// Bearer token the admin port's mutating endpoints (log levels) require. Unset: they are
    /// served only to clients on the loopback interface.
    pub admin_token: Option<Secret>,
    /// Serve the admin port over TLS (`tls.cert`, `tls.key`); with `tls.client_ca`, a verified
    /// client certificate may make changes as the token does.
    pub admin_tls: bool,
    /// Host advertised to clients in Metadata; defaults to the listen host.
    pub advertised_host: Option<String>,
    /// Port advertised to clients; defaults to the bound port.
    pub advertised_port: Option<u16>,
    /// This agent's broker id as clients see it; -1 takes the lowest free id at start.
    pub node_id: i32,
    /// The zone (rack) this agent runs in (Kafka's `broker.rack`). Consumers that set
    /// `client.rack` are pointed at an agent in their own zone to read from (KIP-392).
    pub rack: Option<String>,
    /// Directory for everything local: the local object store and the embedded metadata store.
    pub data_dir: PathBuf,
    /// Largest request frame accepted, in bytes; larger frames close the connection.
    pub max_frame_bytes: usize,
    /// The agent's one memory budget, in bytes: the produce buffer, requests being read or
    /// handled, the tail cache, the block cache's memory tier and unwritten fetch responses
    /// share it ([`MEMORY_SHARES`]; what is left covers the process itself). A part set on its
    /// own keeps its value, and the parts together must fit.
    pub memory_bytes: usize,
    /// Object storage.
    pub object_store: ObjectStoreSettings,
    /// Metadata store.
    pub metadata: MetadataSettings,
    /// The flush pipeline.
    pub flush: FlushSettings,
    /// Defaults for topics.
    pub topics: TopicDefaults,
    /// Consumer groups.
    pub groups: GroupSettings,
    /// Transactions.
    pub transactions: TransactionSettings,
    /// Parquet archiving.
    pub archive: ArchiveSettings,
    /// Retention and garbage collection.
    pub lifecycle: LifecycleSettings,
    /// The block cache for reads that miss the tail cache.
    pub cache: CacheSettings,
    /// What one client connection, and all of them, may hold.
    pub connections: ConnectionSettings,
    /// The load signal autoscalers follow.
    pub load: LoadSettings,
}

/// The default memory budget (`memory_bytes`): 1 GiB, sized for a laptop.
pub const DEFAULT_MEMORY_BYTES: usize = 1 << 30;

/// The parts of `memory_bytes`, in eighths of it. They add up to seven eighths: the last eighth
/// is for the process itself (code, the runtime, partition and group state, socket buffers).
pub const MEMORY_SHARES: [(&str, usize); 5] = [
    ("flush.max_buffered_bytes", 1),
    ("connections.max_total_request_bytes", 1),
    ("flush.tail_cache_bytes", 2),
    ("cache.memory_bytes", 2),
    ("connections.max_total_response_bytes", 1),
];

/// `eighths` eighths of `memory`.
const fn share(memory: usize, eighths: usize) -> usize {
    memory / 8 * eighths
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9092".into(),
            security_protocol: SecurityProtocol::Plaintext,
            listeners: Vec::new(),
            tls: TlsSettings::default(),
            sasl: SaslSettings::default(),
            authorization: AuthorizationSettings::default(),
            admin_listen: Some("127.0.0.1:9644".into()),
            admin_token: None,
            admin_tls: false,
            advertised_host: None,
            advertised_port: None,
            node_id: 0,
            rack: None,
            data_dir: PathBuf::from("./silt-data"),
            max_frame_bytes: 100 * 1024 * 1024,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            object_store: ObjectStoreSettings::default(),
            metadata: MetadataSettings::default(),
            flush: FlushSettings::default(),
            topics: TopicDefaults::default(),
            groups: GroupSettings::default(),
            transactions: TransactionSettings::default(),
            archive: ArchiveSettings::default(),
            lifecycle: LifecycleSettings::default(),
            cache: CacheSettings::default(),
            connections: ConnectionSettings::default(),
            load: LoadSettings::default(),
        }
    }
}

/// The agent's load signal (`silt_load_ratio`), which an autoscaler follows: produce plus fetch
/// bytes per second over a sliding window against what one agent is meant to carry, or the
/// share of the write buffer in use, whichever is larger.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LoadSettings {
    /// Produce plus fetch bytes per second one agent is meant to carry: a load ratio of 1.0.
    /// Measure it on your hardware and object store (`scripts/bench`) and set it a little
    /// below what one agent sustains.
    pub capacity_bytes_per_sec: u64,
    /// The sliding window the rates are measured over, in ms.
    pub window_ms: u64,
    /// Whether the controller places partitions by load (traffic published by every agent);
    /// if not, by count only.
    pub placement: bool,
    /// Most moves of partitions that carry traffic the controller makes per minute to even
    /// out load (partitions of dead agents and idle ones move regardless).
    pub max_moves_per_minute: usize,
}

impl Default for LoadSettings {
    fn default() -> Self {
        Self {
            capacity_bytes_per_sec: 100 * 1024 * 1024,
            window_ms: 10_000,
            placement: true,
            max_moves_per_minute: 10,
        }
    }
}

/// The name of the listener `listen` defines.
pub const DEFAULT_LISTENER: &str = "DEFAULT";

/// A secret setting: used as given, never shown (its Debug output is `<redacted>`).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Limits on client connections: how many, how long idle, and how much memory their
/// responses may hold (Kafka's `max.connections`, `max.connections.per.ip`,
/// `connections.max.idle.ms`, and a bound on queued bytes).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionSettings {
    /// Most client connections open at once; more are closed as they are accepted.
    pub max_total: usize,
    /// Most client connections open at once from one IP address.
    pub max_per_ip: usize,
    /// A connection that sends no complete request for this long is closed (ms).
    pub idle_timeout_ms: u64,
    /// Most requests read from one connection whose responses are not yet written.
    pub max_in_flight: usize,
    /// Most bytes of fetch responses one connection may hold unwritten; a client that stops
    /// reading its responses stops being read from once this is reached.
    pub max_response_bytes: usize,
    /// Most bytes of fetch responses all connections together may hold unwritten.
    pub max_total_response_bytes: usize,
    /// Most bytes of request frames all connections together may hold while they are read and
    /// handled (Kafka's `queued.max.request.bytes`): past it, connections are not read from
    /// until requests finish. A frame larger than this waits until it is the only one held.
    pub max_total_request_bytes: usize,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        Self {
            max_total: 10_000,
            max_per_ip: 1_000,
            idle_timeout_ms: 600_000,
            max_in_flight: 1024,
            max_response_bytes: 64 << 20,
            max_total_response_bytes: share(DEFAULT_MEMORY_BYTES, 1),
            max_total_request_bytes: share(DEFAULT_MEMORY_BYTES, 1),
        }
    }
}

/// The block cache (memory, then local disk) in front of object-store reads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// Memory tier, in bytes (0 disables the block cache: misses are plain range GETs).
    pub memory_bytes: usize,
    /// Disk tier, in bytes (0: memory only). Unset: 1 GiB in front of S3, none in front of the
    /// local store, whose objects are already files on a local disk (a disk tier there only
    /// copies them: it halved replay throughput in `scripts/bench-archive-replay`).
    pub disk_bytes: Option<usize>,
    /// Directory of the disk tier; defaults to `<data_dir>/cache`.
    pub dir: Option<PathBuf>,
    /// Objects are read in blocks of this size (one GET per block).
    pub block_bytes: u64,
    /// Committed ranges after the ones a fetch reads that are fetched ahead into the cache, for
    /// sequential (catch-up) readers.
    pub read_ahead_ranges: u64,
}

impl CacheSettings {
    /// The disk tier's size in front of an object store of `kind`.
    pub fn disk_bytes_for(&self, kind: ObjectStoreKind) -> usize {
        self.disk_bytes.unwrap_or(match kind {
            ObjectStoreKind::Local => 0,
            _ => 1 << 30,
        })
    }
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            memory_bytes: share(DEFAULT_MEMORY_BYTES, 2),
            disk_bytes: None,
            dir: None,
            block_bytes: 1 << 20,
            read_ahead_ranges: 2,
        }
    }
}

/// Retention and garbage collection of the raw log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleSettings {
    /// How often each partition's leader applies `retention.ms` / `retention.bytes`.
    pub retention_interval_ms: u64,
    /// How often the controller looks for objects no index entry references.
    pub gc_interval_ms: u64,
    /// How long an object must stay unreferenced before it is deleted (covers fetches that
    /// located it just before it stopped being referenced).
    pub gc_grace_ms: u64,
    /// How often each partition's leader compacts its small committed ranges.
    pub compact_interval_ms: u64,
    /// Compact once a partition has this many committed ranges (index entries) below the last
    /// few; they are folded into segments.
    pub compact_min_entries: usize,
    /// Largest compacted segment, in bytes.
    pub segment_bytes: u64,
}

impl Default for LifecycleSettings {
    fn default() -> Self {
        Self {
            retention_interval_ms: 300_000,
            gc_interval_ms: 60_000,
            gc_grace_ms: 600_000,
            compact_interval_ms: 30_000,
            compact_min_entries: 32,
            segment_bytes: 64 << 20,
        }
    }
}

/// Parquet archiving of topics (which topics: the `silt.archive.enable` topic config, whose
/// default is `topics.archive`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveSettings {
    /// How often each partition led here is archived up to its high watermark: the most a
    /// committed record waits before it appears in Parquet (plus the time to write it).
    pub interval_ms: u64,
    /// Key prefix of archive files in the object store.
    pub prefix: String,
    /// Most records per Parquet file.
    pub max_file_records: usize,
    /// Largest size one record batch may decompress to in the archiver; a batch past it (a
    /// decompression bomb) or whose payload does not decode is left out of the archive and
    /// counted (`silt_archive_quarantined_batches_total`).
    pub max_decompressed_batch_bytes: usize,
}

impl Default for ArchiveSettings {
    fn default() -> Self {
        Self {
            interval_ms: 10_000,
            prefix: "archive".into(),
            max_file_records: 1_000_000,
            max_decompressed_batch_bytes: 128 << 20,
        }
    }
}

/// Which object store holds the data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectStoreSettings {
    /// `local` (a directory) or `memory` (lost on exit; tests only).
    pub kind: ObjectStoreKind,
    /// Root directory for `local`; defaults to `<data_dir>/objects`.
    pub path: Option<PathBuf>,
    /// Extra latency added to every object-store call, in milliseconds (fault injection for
    /// tests and demonstrations of backpressure; 0 in production).
    pub inject_latency_ms: u64,
    /// A pause after every successful PUT, before the writer goes on (fault injection: opens a
    /// window between an object's PUT and its metadata commit; 0 in production).
    pub inject_after_put_ms: u64,
    /// The bucket and endpoint for `kind = "s3"`.
    pub s3: S3Settings,
}

/// An S3-compatible bucket (AWS S3, MinIO, SeaweedFS). Credentials and region left unset here
/// come from the standard `AWS_*` environment variables.
#[derive(Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct S3Settings {
    /// Bucket name (must exist).
    pub bucket: String,
    /// Endpoint URL for S3-compatible servers, e.g. `http://127.0.0.1:9000`; unset for AWS.
    pub endpoint: Option<String>,
    /// Region; defaults to `AWS_REGION` or `us-east-1`.
    pub region: Option<String>,
    /// Access key id; defaults to `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// Secret access key; defaults to `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<String>,
    /// Allow plain `http://` endpoints (local MinIO or SeaweedFS).
    pub allow_http: bool,
    /// Address buckets as `bucket.host` instead of `host/bucket` (path style, the default).
    pub virtual_hosted_style: bool,
}

/// Never prints the secret access key (settings are logged and shown in errors).
impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_http", &self.allow_http)
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .finish()
    }
}

impl Default for ObjectStoreSettings {
    fn default() -> Self {
        Self {
            kind: ObjectStoreKind::Local,
            path: None,
            inject_latency_ms: 0,
            inject_after_put_ms: 0,
            s3: S3Settings::default(),
        }
    }
}

/// Object store backends.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ObjectStoreKind {
    /// A local directory (object_store's LocalFileSystem).
    Local,
    /// In process memory; everything is lost on exit.
    Memory,
    /// An S3-compatible bucket (`object_store.s3`).
    S3,
}

/// Which metadata store holds the catalog and the offset index.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataSettings {
    /// `embedded` (in process, durable in a local file) or `etcd`.
    pub kind: MetadataKind,
    /// Directory of the embedded store; defaults to `<data_dir>/meta`.
    pub path: Option<PathBuf>,
    /// Endpoints of the etcd cluster for `kind = "etcd"`.
    pub etcd_endpoints: Vec<String>,
    /// How long to wait for etcd when connecting, in milliseconds.
    pub connect_timeout_ms: u64,
    /// TTL of the agent's registration lease: an agent that stops renewing it loses the right to
    /// write this long after its last renewal.
    pub lease_ttl_ms: u64,
    /// etcd user, when etcd has authentication enabled.
    pub etcd_user: Option<String>,
    /// That user's password (set it from a secret: `SILT_METADATA__ETCD_PASSWORD`).
    pub etcd_password: Option<Secret>,
    /// PEM CA bundle etcd's certificate must chain to (`https://` endpoints).
    pub etcd_ca_file: Option<PathBuf>,
    /// PEM client certificate for etcd (`--client-cert-auth`).
    pub etcd_cert_file: Option<PathBuf>,
    /// PEM private key of that certificate.
    pub etcd_key_file: Option<PathBuf>,
}

impl Default for MetadataSettings {
    fn default() -> Self {
        Self {
            kind: MetadataKind::Embedded,
            path: None,
            etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
            connect_timeout_ms: 5_000,
            lease_ttl_ms: 10_000,
            etcd_user: None,
            etcd_password: None,
            etcd_ca_file: None,
            etcd_cert_file: None,
            etcd_key_file: None,
        }
    }
}

/// Metadata store backends.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MetadataKind {
    /// In process, durable in `<path>/meta.log`.
    Embedded,
    /// An etcd cluster (`metadata.etcd_endpoints`).
    Etcd,
}

/// When buffered batches are written to object storage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FlushSettings {
    /// Longest a batch waits in the buffer before a flush starts, in milliseconds.
    pub interval_ms: u64,
    /// A flush starts as soon as this many bytes are buffered.
    pub max_bytes: usize,
    /// Flushes whose objects may be written concurrently (commits stay in order).
    pub max_in_flight: usize,
    /// Most bytes buffered or in flight before producers are slowed down (backpressure).
    pub max_buffered_bytes: usize,
    /// Bytes of recently written objects kept in memory to serve tail reads.
    pub tail_cache_bytes: usize,
    /// Flush early once nothing new has been buffered for this many milliseconds: producers
    /// waiting on their acknowledgements (an idempotent producer keeps at most 5 requests in
    /// flight) send nothing more until the flush commits. 0 turns early flushes off.
    pub idle_ms: u64,
    /// The PUT budget of early flushes: one starts at least this many milliseconds after the
    /// previous flush started, so they add at most `1000 / min_gap_ms` object PUTs per second.
    /// Unset: 20 in front of S3 (at most 50 PUTs/s, about $22 a day per agent at $0.005 per
    /// 1 000), 5 in front of the local store, whose writes cost nothing but a file.
    pub min_gap_ms: Option<u64>,
}

impl FlushSettings {
    /// The early-flush gap in front of an object store of `kind`.
    pub fn min_gap_ms_for(&self, kind: ObjectStoreKind) -> u64 {
        self.min_gap_ms.unwrap_or(match kind {
            ObjectStoreKind::Local | ObjectStoreKind::Memory => 5,
            ObjectStoreKind::S3 => 20,
        })
    }
}

impl Default for FlushSettings {
    fn default() -> Self {
        Self {
            interval_ms: 100,
            max_bytes: 4 * 1024 * 1024,
            max_in_flight: 4,
            max_buffered_bytes: share(DEFAULT_MEMORY_BYTES, 1),
            tail_cache_bytes: share(DEFAULT_MEMORY_BYTES, 2),
            idle_ms: 2,
            min_gap_ms: None,
        }
    }
}

/// Defaults applied to topics that do not set their own.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TopicDefaults {
    /// Create a topic when a client produces to or asks metadata for one that does not exist.
    pub auto_create: bool,
    /// Partitions of an auto-created topic, or of one created with `num_partitions = -1`.
    pub num_partitions: i32,
    /// Default `retention.ms`.
    pub retention_ms: i64,
    /// Default `max.message.bytes` (largest record batch accepted).
    pub max_message_bytes: i32,
    /// Default of the `silt.archive.enable` topic config: archive topics as Parquet.
    pub archive: bool,
    /// Most partitions one topic may have (CreateTopics past it: INVALID_PARTITIONS).
    pub max_partitions_per_topic: i32,
    /// Most partitions of all topics together (a creation past it: POLICY_VIOLATION).
    pub max_partitions_total: i64,
}

impl Default for TopicDefaults {
    fn default() -> Self {
        Self {
            auto_create: true,
            num_partitions: 1,
            retention_ms: 7 * 24 * 3600 * 1000,
            max_message_bytes: 1_048_588,
            archive: false,
            max_partitions_per_topic: 10_000,
            max_partitions_total: 100_000,
        }
    }
}

/// Consumer-group coordination (Kafka's `group.*` broker settings).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GroupSettings {
    /// Smallest session timeout a member may ask for (`group.min.session.timeout.ms`).
    pub min_session_timeout_ms: i32,
    /// Largest session timeout a member may ask for (`group.max.session.timeout.ms`).
    pub max_session_timeout_ms: i32,
    /// Delay of an empty group's first rebalance (`group.initial.rebalance.delay.ms`).
    pub initial_rebalance_delay_ms: i32,
    /// Most members per group (`group.max.size`).
    pub max_size: usize,
    /// Most bytes of assignments a leader may send in one SyncGroup.
    pub max_assignment_bytes: usize,
    /// How often members of consumer-protocol (KIP-848) groups heartbeat
    /// (`group.consumer.heartbeat.interval.ms`).
    pub consumer_heartbeat_interval_ms: i32,
    /// A consumer-protocol member that does not heartbeat this long is fenced
    /// (`group.consumer.session.timeout.ms`).
    pub consumer_session_timeout_ms: i32,
}

impl Default for GroupSettings {
    fn default() -> Self {
        Self {
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
            max_size: 1_000,
            max_assignment_bytes: 1024 * 1024,
            consumer_heartbeat_interval_ms: 5_000,
            consumer_session_timeout_ms: 45_000,
        }
    }
}

/// Transactions (Kafka's `transaction.*` broker settings).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TransactionSettings {
    /// Largest `transaction.timeout.ms` a producer may ask for (`transaction.max.timeout.ms`);
    /// InitProducerId with more gets INVALID_TRANSACTION_TIMEOUT.
    pub max_timeout_ms: i32,
    /// How often open transactions are checked against their timeout (and prepared ones left
    /// by a failed coordinator are completed), in ms.
    pub check_interval_ms: u64,
    /// The transaction protocol offered to clients (Kafka's `transaction.version` feature):
    /// 2 advertises KIP-890 part 2 (an epoch bump at the end of every transaction; partitions
    /// and groups join a transaction implicitly), which Kafka 4.0+ Java clients then use; 1
    /// does not, so every client uses AddPartitionsToTxn and keeps its epoch.
    pub version: i16,
}

impl Default for TransactionSettings {
    fn default() -> Self {
        Self {
            max_timeout_ms: 900_000,
            check_interval_ms: 1_000,
            version: 2,
        }
    }
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named with `--config` does not exist.
    #[error("config file {path} does not exist (pass an existing TOML file to --config, or omit it to use defaults)")]
    Missing {
        /// The path given.
        path: PathBuf,
    },
    /// A key or value was rejected.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Settings {
    /// Defaults, then `file` if given, then `SILT_*` variables from the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Missing {
                    path: path.to_owned(),
                });
            }
            fig = fig.merge(Toml::file(path));
        }
        fig = fig.merge(
            Env::prefixed("SILT_")
                .ignore(&["LOG", "LOG_FORMAT"])
                .split("__"),
        );
        let mut settings: Settings = fig
            .extract()
            .map_err(|e| ConfigError::Invalid(describe(e)))?;
        // The parts of the memory budget not set on their own are its shares.
        let given = |key: &str| {
            let mut only = Figment::new();
            if let Some(path) = file {
                only = only.merge(Toml::file(path));
            }
            only.merge(Env::prefixed("SILT_").split("__"))
                .find_value(key)
                .is_ok()
        };
        settings.share_memory(given);
        settings.validate()?;
        Ok(settings)
    }

    /// Sets every part of `memory_bytes` that `given` says was not set on its own to its share
    /// ([`MEMORY_SHARES`]).
    pub fn share_memory(&mut self, given: impl Fn(&str) -> bool) {
        let m = self.memory_bytes;
        for (key, eighths) in MEMORY_SHARES {
            if !given(key) {
                *self.memory_part(key) = share(m, eighths);
            }
        }
        if !given("connections.max_response_bytes") {
            self.connections.max_response_bytes = (64usize << 20)
                .min(self.connections.max_total_response_bytes)
                .max(1 << 20);
        }
    }

    fn memory_part(&mut self, key: &str) -> &mut usize {
        match key {
            "flush.max_buffered_bytes" => &mut self.flush.max_buffered_bytes,
            "flush.tail_cache_bytes" => &mut self.flush.tail_cache_bytes,
            "cache.memory_bytes" => &mut self.cache.memory_bytes,
            "connections.max_total_response_bytes" => {
                &mut self.connections.max_total_response_bytes
            }
            "connections.max_total_request_bytes" => &mut self.connections.max_total_request_bytes,
            other => unreachable!("{other} is not a part of memory_bytes"),
        }
    }

    /// The parts of the memory budget as set: `(key, bytes)`.
    pub fn memory_parts(&self) -> Vec<(&'static str, usize)> {
        let mut s = self.clone();
        MEMORY_SHARES
            .iter()
            .map(|(k, _)| (*k, *s.memory_part(k)))
            .collect()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |what: &str, why: &str| Err(ConfigError::Invalid(format!("{what}: {why}")));
        if self.memory_bytes < 128 << 20 {
            return bad(
                &format!("memory_bytes = {}", self.memory_bytes),
                "must be at least 134217728 (128 MiB): an eighth of it is the produce buffer, which must hold 16 MiB",
            );
        }
        if self.flush.interval_ms == 0 {
            return bad("flush.interval_ms = 0", "must be at least 1");
        }
        if self.load.capacity_bytes_per_sec == 0 || self.load.window_ms < 1_000 {
            return bad(
                "load.capacity_bytes_per_sec / load.window_ms",
                "the capacity must be at least 1 byte/s and the window at least 1000 ms",
            );
        }
        if self
            .rack
            .as_deref()
            .is_some_and(|r| r.is_empty() || r.len() > 255)
        {
            return bad("rack", "must be 1 to 255 characters when set (or left out)");
        }
        if !matches!(self.transactions.version, 1 | 2) {
            return Err(ConfigError::Invalid(format!(
                "transactions.version = {}: must be 1 (epoch per producer instance) or 2 (KIP-890 part 2, an epoch bump per transaction)",
                self.transactions.version
            )));
        }
        if self.flush.max_in_flight == 0 {
            return bad("flush.max_in_flight = 0", "must be at least 1");
        }
        if self.flush.max_bytes == 0 {
            return bad("flush.max_bytes = 0", "must be at least 1");
        }
        let c = &self.connections;
        for (name, v) in [
            ("connections.max_total", c.max_total),
            ("connections.max_per_ip", c.max_per_ip),
            ("connections.max_in_flight", c.max_in_flight),
        ] {
            if v == 0 {
                return bad(&format!("{name} = 0"), "must be at least 1");
            }
        }
        if c.max_response_bytes < 1 << 20 || c.max_total_response_bytes < c.max_response_bytes {
            return bad(
                &format!(
                    "connections.max_response_bytes = {}, connections.max_total_response_bytes = {}",
                    c.max_response_bytes, c.max_total_response_bytes
                ),
                "the per-connection bound must be at least 1 MiB and no larger than the total",
            );
        }
        if c.idle_timeout_ms < 1000 {
            return bad(
                &format!("connections.idle_timeout_ms = {}", c.idle_timeout_ms),
                "must be at least 1000",
            );
        }
        let parts = self.memory_parts();
        let total: usize = parts.iter().map(|(_, n)| n).sum();
        if total > self.memory_bytes {
            let list: Vec<String> = parts.iter().map(|(k, n)| format!("{k} = {n}")).collect();
            return bad(
                &format!("{} (together {total})", list.join(", ")),
                &format!(
                    "the parts of the memory budget exceed memory_bytes = {}: raise memory_bytes, or lower the parts set on their own (unset parts take their share of memory_bytes)",
                    self.memory_bytes
                ),
            );
        }
        if self.connections.max_total_request_bytes < 1 << 20 {
            return bad(
                &format!(
                    "connections.max_total_request_bytes = {}",
                    self.connections.max_total_request_bytes
                ),
                "must be at least 1048576 (1 MiB)",
            );
        }
        if self.flush.max_buffered_bytes < self.max_frame_bytes.min(16 * 1024 * 1024) {
            return bad(
                &format!("flush.max_buffered_bytes = {}", self.flush.max_buffered_bytes),
                "must be at least 16 MiB (or max_frame_bytes if smaller) so one request always fits",
            );
        }
        if self.topics.num_partitions < 1 {
            return bad(
                &format!("topics.num_partitions = {}", self.topics.num_partitions),
                "must be at least 1",
            );
        }
        let g = &self.groups;
        if g.consumer_heartbeat_interval_ms < 1
            || g.consumer_heartbeat_interval_ms >= g.consumer_session_timeout_ms
        {
            return bad(
                &format!(
                    "groups.consumer_heartbeat_interval_ms = {} with groups.consumer_session_timeout_ms = {}",
                    g.consumer_heartbeat_interval_ms, g.consumer_session_timeout_ms
                ),
                "the heartbeat interval must be positive and shorter than the session timeout",
            );
        }
        if self.groups.min_session_timeout_ms > self.groups.max_session_timeout_ms {
            return bad(
                &format!(
                    "groups.min_session_timeout_ms = {} > groups.max_session_timeout_ms = {}",
                    self.groups.min_session_timeout_ms, self.groups.max_session_timeout_ms
                ),
                "the minimum must not exceed the maximum",
            );
        }
        if self.object_store.kind == ObjectStoreKind::S3 && self.object_store.s3.bucket.is_empty() {
            return bad(
                "object_store.kind = \"s3\"",
                "set object_store.s3.bucket (and endpoint for MinIO or SeaweedFS)",
            );
        }
        if self.metadata.kind == MetadataKind::Etcd && self.metadata.etcd_endpoints.is_empty() {
            return bad("metadata.kind = \"etcd\"", "set metadata.etcd_endpoints");
        }
        let m = &self.metadata;
        let https = m.etcd_endpoints.iter().any(|e| e.starts_with("https://"));
        if m.kind == MetadataKind::Etcd && https != m.etcd_ca_file.is_some() {
            return bad(
                "metadata.etcd_endpoints / metadata.etcd_ca_file",
                "https:// endpoints need etcd_ca_file (the CA etcd's certificate chains to), and etcd_ca_file needs https:// endpoints",
            );
        }
        if m.etcd_cert_file.is_some() != m.etcd_key_file.is_some() {
            return bad(
                "metadata.etcd_cert_file / metadata.etcd_key_file",
                "a client certificate needs its key: set both or neither",
            );
        }
        if self.metadata.etcd_user.is_some() != self.metadata.etcd_password.is_some() {
            return bad(
                "metadata.etcd_user / metadata.etcd_password",
                "set both (the password from a secret, SILT_METADATA__ETCD_PASSWORD) or neither",
            );
        }
        if self.node_id < -1 {
            return bad(
                &format!("node_id = {}", self.node_id),
                "must be 0 or more, or -1 to take the lowest free id",
            );
        }
        if self.metadata.lease_ttl_ms < 2_000 {
            return bad(
                &format!("metadata.lease_ttl_ms = {}", self.metadata.lease_ttl_ms),
                "must be at least 2000",
            );
        }
        if self.cache.block_bytes < 4096 || self.cache.read_ahead_ranges > 64 {
            return bad(
                &format!(
                    "cache.block_bytes = {}, cache.read_ahead_ranges = {}",
                    self.cache.block_bytes, self.cache.read_ahead_ranges
                ),
                "blocks must be at least 4096 bytes and read-ahead at most 64 ranges",
            );
        }
        let l = &self.lifecycle;
        if l.compact_interval_ms < 100 || l.compact_min_entries < 2 || l.segment_bytes < 1024 {
            return bad(
                &format!(
                    "lifecycle.compact_interval_ms = {}, lifecycle.compact_min_entries = {}, lifecycle.segment_bytes = {}",
                    l.compact_interval_ms, l.compact_min_entries, l.segment_bytes
                ),
                "the interval must be at least 100, at least 2 entries, segments at least 1024 bytes",
            );
        }
        if l.retention_interval_ms < 100 || l.gc_interval_ms < 100 {
            return bad(
                &format!(
                    "lifecycle.retention_interval_ms = {}, lifecycle.gc_interval_ms = {}",
                    l.retention_interval_ms, l.gc_interval_ms
                ),
                "both must be at least 100",
            );
        }
        if self.archive.interval_ms < 100 || self.archive.max_file_records == 0 {
            return bad(
                &format!(
                    "archive.interval_ms = {}, archive.max_file_records = {}",
                    self.archive.interval_ms, self.archive.max_file_records
                ),
                "the interval must be at least 100 ms and a file must hold at least one record",
            );
        }
        if self.archive.prefix.is_empty() || self.archive.prefix.starts_with('/') {
            return bad(
                &format!("archive.prefix = {:?}", self.archive.prefix),
                "must be a non-empty relative key prefix such as \"archive\"",
            );
        }
        self.validate_security()?;
        if self.max_frame_bytes < 1024 {
            return bad(
                &format!("max_frame_bytes = {}", self.max_frame_bytes),
                "must be at least 1024",
            );
        }
        Ok(())
    }

    fn validate_security(&self) -> Result<(), ConfigError> {
        let bad = |what: String, why: &str| Err(ConfigError::Invalid(format!("{what}: {why}")));
        let mut names = vec![DEFAULT_LISTENER.to_string()];
        let mut protocols = vec![self.security_protocol];
        for l in &self.listeners {
            if l.name.is_empty() || names.contains(&l.name) {
                return bad(
                    format!("listeners name = {:?}", l.name),
                    "every listener needs its own non-empty name (DEFAULT is the `listen` one)",
                );
            }
            names.push(l.name.clone());
            protocols.push(l.security_protocol);
        }
        if protocols.iter().any(|p| p.tls()) && (self.tls.cert.is_none() || self.tls.key.is_none())
        {
            return bad(
                "admin_tls, or a listener with security_protocol SSL or SASL_SSL".into(),
                "set tls.cert and tls.key (PEM files)",
            );
        }
        if self.tls.client_auth != ClientAuthSetting::None && self.tls.client_ca.is_none() {
            return bad(
                format!("tls.client_auth = {:?}", self.tls.client_auth),
                "set tls.client_ca to the PEM bundle client certificates chain to",
            );
        }
        for m in &self.sasl.mechanisms {
            if !matches!(
                m.as_str(),
                "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512" | "OAUTHBEARER"
            ) {
                return bad(
                    format!("sasl.mechanisms contains {m:?}"),
                    "the mechanisms served are PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 and OAUTHBEARER",
                );
            }
            let o = &self.sasl.oauthbearer;
            if m == "OAUTHBEARER" && o.jwks_file.is_some() == o.jwks_url.is_some() {
                return bad(
                    "sasl.mechanisms contains OAUTHBEARER".into(),
                    "set one of sasl.oauthbearer.jwks_file and sasl.oauthbearer.jwks_url (the token issuer's keys)",
                );
            }
        }
        if protocols.iter().any(|p| p.sasl()) && self.sasl.mechanisms.is_empty() {
            return bad(
                "sasl.mechanisms = []".into(),
                "a SASL listener needs a mechanism",
            );
        }
        // User:ANONYMOUS as a super user is for a loopback PLAINTEXT listener (local tools):
        // refused when a connection from elsewhere could be ANONYMOUS.
        let anonymous_super = self.authorization.enabled
            && self
                .authorization
                .super_users
                .iter()
                .any(|u| u == "User:ANONYMOUS");
        if anonymous_super {
            let loopback = |listen: &str| {
                let host = listen.rsplit_once(':').map_or(listen, |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                host == "localhost"
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            };
            let anonymous_ok = |p: SecurityProtocol| match p {
                SecurityProtocol::Plaintext => true,
                SecurityProtocol::Ssl => self.tls.client_auth != ClientAuthSetting::Required,
                SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl => false,
            };
            let exposed = std::iter::once((&self.listen, self.security_protocol))
                .chain(
                    self.listeners
                        .iter()
                        .map(|l| (&l.listen, l.security_protocol)),
                )
                .find(|(listen, p)| anonymous_ok(*p) && !loopback(listen));
            if let Some((listen, p)) = exposed {
                return bad(
                    format!("authorization.super_users has User:ANONYMOUS and {listen} ({p:?}) is not on loopback"),
                    "anyone reaching that listener would be a super user: bind it to 127.0.0.1, make it SASL or SSL with tls.client_auth = \"required\", or drop User:ANONYMOUS",
                );
            }
        }
        for u in &self.authorization.super_users {
            if !u.starts_with("User:") || u.len() == 5 {
                return bad(
                    format!("authorization.super_users contains {u:?}"),
                    "principals are written User:<name>",
                );
            }
        }
        Ok(())
    }

    /// Root of the local object store.
    pub fn object_store_path(&self) -> PathBuf {
        self.object_store
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("objects"))
    }

    /// Directory of the embedded metadata store.
    pub fn metadata_path(&self) -> PathBuf {
        self.metadata
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("meta"))
    }
}

fn describe(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let path = e.path.join(".");
            let from = e
                .metadata
                .as_ref()
                .map(|m| format!(" (from {})", m.name))
                .unwrap_or_default();
            if path.is_empty() {
                format!("{}{from}", e.kind)
            } else {
                format!("`{path}`: {}{from}", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    fn load_toml(text: &str) -> Result<Settings, ConfigError> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        Settings::load(Some(f.path()))
    }

    /// The early-flush gap follows the store's PUT price unless set: 5 ms in front of the
    /// local store, 20 ms in front of S3; a value set applies to both.
    #[test]
    fn the_early_flush_gap_follows_the_store() {
        let d = Settings::default();
        assert_eq!(d.flush.min_gap_ms_for(ObjectStoreKind::Local), 5);
        assert_eq!(d.flush.min_gap_ms_for(ObjectStoreKind::S3), 20);
        let set = load_toml("[flush]\nmin_gap_ms = 50\n").unwrap();
        assert_eq!(set.flush.min_gap_ms_for(ObjectStoreKind::Local), 50);
        assert_eq!(set.flush.min_gap_ms_for(ObjectStoreKind::S3), 50);
    }

    /// Issue 14: one memory budget. Unset parts take their shares of `memory_bytes`; a part set
    /// on its own keeps its value; parts that do not fit stop start-up, naming them.
    #[test]
    fn the_parts_of_memory_share_one_budget() {
        let d = Settings::default();
        let parts: usize = d.memory_parts().iter().map(|(_, n)| n).sum();
        assert_eq!(parts, d.memory_bytes / 8 * 7, "the defaults are the shares");
        let s = load_toml("memory_bytes = 4294967296\n").unwrap();
        assert_eq!(s.flush.max_buffered_bytes, 512 << 20);
        assert_eq!(s.flush.tail_cache_bytes, 1 << 30);
        assert_eq!(s.cache.memory_bytes, 1 << 30);
        assert_eq!(s.connections.max_total_request_bytes, 512 << 20);
        assert_eq!(s.connections.max_total_response_bytes, 512 << 20);
        assert_eq!(s.connections.max_response_bytes, 64 << 20);
        let small = load_toml("memory_bytes = 134217728\n[cache]\nmemory_bytes = 0\n").unwrap();
        assert_eq!(
            small.cache.memory_bytes, 0,
            "a part set on its own keeps its value"
        );
        assert_eq!(small.flush.tail_cache_bytes, 32 << 20);
        assert_eq!(
            small.connections.max_response_bytes,
            16 << 20,
            "a connection's bound is no larger than the total"
        );
        let err = load_toml("memory_bytes = 536870912\n[flush]\ntail_cache_bytes = 400000000\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("flush.tail_cache_bytes = 400000000")
                && err.contains("exceed memory_bytes = 536870912")
                && err.contains("raise memory_bytes"),
            "{err}"
        );
        let err = load_toml("memory_bytes = 1000000\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 134217728"), "{err}");
    }

    use super::*;

    /// No secret in any Debug output of the settings (they are logged and shown in errors).
    #[test]
    fn debug_output_never_shows_the_secret_access_key() {
        let mut s = Settings::default();
        s.object_store.s3.secret_access_key = Some("very-secret-key-123".into());
        s.object_store.s3.access_key_id = Some("AKIDEXAMPLE".into());
        s.admin_token = Some(Secret("very-secret-key-123".into()));
        s.metadata.etcd_user = Some("silt".into());
        s.metadata.etcd_password = Some(Secret("very-secret-key-123".into()));
        for shown in [
            format!("{s:?}"),
            format!("{s:#?}"),
            format!("{:?}", s.object_store),
            format!("{:?}", s.metadata),
        ] {
            assert!(!shown.contains("very-secret-key-123"), "{shown}");
            assert!(shown.contains("<redacted>"));
        }
    }
    use std::io::Write;

    #[test]
    fn defaults_listen_on_localhost_9092() {
        let s = Settings::default();
        assert_eq!(s.listen, "127.0.0.1:9092");
        assert_eq!(s.data_dir, PathBuf::from("./silt-data"));
        assert!(s.topics.auto_create);
    }

    #[test]
    fn file_overrides_defaults_and_unknown_keys_are_named() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "listen = \"127.0.0.1:19092\"\n[flush]\ninterval_ms = 7").unwrap();
        let s = Settings::load(Some(f.path())).unwrap();
        assert_eq!(s.listen, "127.0.0.1:19092");
        assert_eq!(s.flush.interval_ms, 7);

        let mut g = tempfile::NamedTempFile::new().unwrap();
        writeln!(g, "[flush]\nintervall_ms = 7").unwrap();
        let err = Settings::load(Some(g.path())).unwrap_err().to_string();
        assert!(err.contains("intervall_ms"), "{err}");
    }

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let err = Settings::load(Some(Path::new("/nonexistent/silt.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/silt.toml"), "{err}");
    }

    #[test]
    fn anonymous_super_users_are_refused_on_listeners_reachable_from_elsewhere() {
        let load = |toml: &str| {
            let mut f = tempfile::NamedTempFile::new().unwrap();
            writeln!(f, "{toml}").unwrap();
            Settings::load(Some(f.path())).map_err(|e| e.to_string())
        };
        let auth = "[authorization]\nenabled = true\nsuper_users = [\"User:ANONYMOUS\"]";
        let err = load(&format!("listen = \"0.0.0.0:9092\"\n{auth}")).unwrap_err();
        assert!(
            err.contains("User:ANONYMOUS") && err.contains("0.0.0.0:9092"),
            "{err}"
        );
        load(&format!("listen = \"127.0.0.1:9092\"\n{auth}")).unwrap();
        load(&format!("listen = \"[::1]:9092\"\n{auth}")).unwrap();
        let sasl = "[[listeners]]\nname = \"C\"\nlisten = \"0.0.0.0:9093\"\nsecurity_protocol = \"SASL_PLAINTEXT\"";
        load(&format!("listen = \"127.0.0.1:9092\"\n{sasl}\n{auth}")).unwrap();
        let ssl = "[[listeners]]\nname = \"C\"\nlisten = \"0.0.0.0:9093\"\nsecurity_protocol = \"SSL\"\n[tls]\ncert = \"c\"\nkey = \"k\"";
        let err = load(&format!("listen = \"127.0.0.1:9092\"\n{ssl}\n{auth}")).unwrap_err();
        assert!(err.contains("0.0.0.0:9093"), "{err}");
    }

    #[test]
    fn bad_values_are_rejected() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "[flush]\ninterval_ms = 0").unwrap();
        let err = Settings::load(Some(f.path())).unwrap_err().to_string();
        assert!(err.contains("flush.interval_ms"), "{err}");
        let mut g = tempfile::NamedTempFile::new().unwrap();
        writeln!(g, "[object_store]\nkind = \"s4\"").unwrap();
        let err = Settings::load(Some(g.path())).unwrap_err().to_string();
        assert!(err.contains("kind") && err.contains("s4"), "{err}");
    }
}

#[cfg(test)]
mod example_file {
    use super::*;

    /// `config/silt.toml` documents every key with its default; keep it true.
    #[test]
    fn example_config_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/silt.toml");
        let s = Settings::load(Some(&path)).unwrap();
        assert_eq!(s, Settings::default());
    }

    /// docs/configuration.md documents every setting.
    #[test]
    fn every_setting_is_documented() {
        fn leaves(prefix: &str, v: &figment::value::Value, out: &mut Vec<String>) {
            match v {
                figment::value::Value::Dict(_, d) => {
                    for (k, v) in d {
                        leaves(&format!("{prefix}{k}."), v, out);
                    }
                }
                _ => out.push(prefix.trim_end_matches('.').to_string()),
            }
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let docs = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
        let value =
            figment::Figment::from(figment::providers::Serialized::defaults(Settings::default()))
                .find_value("")
                .unwrap();
        let mut keys = Vec::new();
        leaves("", &value, &mut keys);
        assert!(keys.len() > 20, "{keys:?}");
        for k in keys {
            let last = k.rsplit('.').next().unwrap();
            assert!(
                docs.contains(&format!("`{k}`")) || docs.contains(&format!("/ `{last}`")),
                "docs/configuration.md does not document `{k}`"
            );
        }
    }

    /// `config/test.toml` is valid and sets what the test harnesses set.
    #[test]
    fn test_example_is_fast() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/test.toml");
        let s = Settings::load(Some(&path)).unwrap();
        assert_eq!(s.flush.interval_ms, 20);
        assert_eq!(s.metadata.lease_ttl_ms, 3000);
        assert_eq!(s.groups.initial_rebalance_delay_ms, 200);
        assert_eq!(s.admin_listen.as_deref(), Some("127.0.0.1:0"));
    }

    /// `config/cluster.toml` is a valid cluster configuration.
    #[test]
    fn cluster_example_selects_etcd_and_s3() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/cluster.toml");
        let s = Settings::load(Some(&path)).unwrap();
        assert_eq!(s.metadata.kind, MetadataKind::Etcd);
        assert_eq!(s.object_store.kind, ObjectStoreKind::S3);
        assert_eq!(s.node_id, -1);
        assert_eq!(s.object_store.s3.bucket, "silt");
    }
}
