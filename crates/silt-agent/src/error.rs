//! Errors in two layers. Inside the agent, small enums carry what went wrong and where; at the
//! protocol edge, [`PartitionError::code`] and [`TopicError::code`] are the only mapping to
//! Kafka error codes, each one `match` with no catch-all arm, so a new error cannot silently
//! become `UNKNOWN_SERVER_ERROR`.

use kafka_protocol::ResponseError;
use silt_meta::MetaError;
use silt_storage::StorageError;

/// Why an operation on one partition failed.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    /// No such topic or partition.
    #[error("unknown topic or partition {topic}-{partition}")]
    UnknownTopicOrPartition {
        /// Topic name.
        topic: String,
        /// Partition.
        partition: i32,
    },
    /// No topic with this id.
    #[error("unknown topic id {0}")]
    UnknownTopicId(uuid::Uuid),
    /// The batch is corrupt (framing or CRC).
    #[error("{0}")]
    CorruptMessage(String),
    /// The batch is well formed but not acceptable.
    #[error("{0}")]
    InvalidRecord(String),
    /// Records without a key sent to a compacted topic (`cleanup.policy=compact`): their
    /// indices in the batch, which the response names (KIP-467).
    #[error("compacted topic cannot accept a record without a key ({} of the batch's records)", .0.len())]
    NullKeys(Vec<i32>),
    /// The batch exceeds `max.message.bytes`.
    #[error("record batch of {size} bytes exceeds max.message.bytes {max}")]
    MessageTooLarge {
        /// Batch size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Idempotence: the sequence is not the next one expected.
    #[error("out of order sequence {got} for producer {pid} (expected {expected})")]
    OutOfOrderSequence {
        /// Producer id.
        pid: i64,
        /// Sequence received.
        got: i32,
        /// Sequence expected.
        expected: i32,
    },
    /// Idempotence: the producer epoch is older than the one seen.
    #[error("producer {pid} epoch {got} is older than the current epoch {current}")]
    InvalidProducerEpoch {
        /// Producer id.
        pid: i64,
        /// Epoch received.
        got: i16,
        /// Epoch known.
        current: i16,
    },
    /// A record timestamp is outside the topic's accepted window.
    #[error("timestamp {timestamp} is outside the topic's accepted range [{min}, {max}] (message.timestamp.before.max.ms / after.max.ms)")]
    InvalidTimestamp {
        /// The offending timestamp.
        timestamp: i64,
        /// Earliest accepted.
        min: i64,
        /// Latest accepted.
        max: i64,
    },
    /// `acks` is not -1, 0 or 1.
    #[error("acks={0} is not one of -1 (all), 0 and 1")]
    InvalidRequiredAcks(i16),
    /// A compression the request's version may not carry (zstd before Produce v7).
    #[error("{0}")]
    UnsupportedCompression(String),
    /// An old request version the topic refuses (Fetch v0–3 with
    /// `message.downconversion.enable=false`).
    #[error("{0}")]
    UnsupportedVersion(String),
    /// A transactional batch whose partition is not in its producer's open transaction.
    #[error("transactional write refused: {0}")]
    TransactionNotVerified(String),
    /// Transaction version 2: the coordinator refused to add the partition to the producer's
    /// transaction (the code it answered: PRODUCER_FENCED, INVALID_PRODUCER_ID_MAPPING,
    /// CONCURRENT_TRANSACTIONS, ...).
    #[error("transactional write refused by the transaction coordinator: {0:?}")]
    TransactionRefused(ResponseError),
    /// The fetch offset is outside the log.
    #[error("offset {offset} is out of range [{log_start}, {high_watermark}]")]
    OffsetOutOfRange {
        /// Requested offset.
        offset: i64,
        /// First offset.
        log_start: i64,
        /// High watermark.
        high_watermark: i64,
    },
    /// A leader epoch in the request is newer than ours.
    #[error("leader epoch {0} is unknown to this agent")]
    UnknownLeaderEpoch(i32),
    /// A leader epoch in the request is older than ours.
    #[error("leader epoch {0} has been fenced")]
    FencedLeaderEpoch(i32),
    /// Waiting for durability took longer than the request's timeout.
    #[error("timed out after {0} ms waiting for the write to become durable")]
    Timeout(i32),
    /// The agent is shutting down or lost the right to write.
    #[error("this agent is not (or no longer) the leader: {0}")]
    NotLeader(String),
    /// Stored bytes do not parse as the index says they should (a damaged or foreign object).
    #[error("stored data of {object} at byte {pos} is not a record batch: {reason}")]
    CorruptStored {
        /// Object path.
        object: String,
        /// Byte position in the object.
        pos: u64,
        /// What was wrong.
        reason: String,
    },
    /// Object storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The metadata store failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
}

impl PartitionError {
    /// The Kafka error code a broker gives for this.
    pub fn code(&self) -> ResponseError {
        match self {
            Self::UnknownTopicOrPartition { .. } => ResponseError::UnknownTopicOrPartition,
            Self::UnknownTopicId(_) => ResponseError::UnknownTopicId,
            Self::CorruptMessage(_) => ResponseError::CorruptMessage,
            Self::InvalidRecord(_) | Self::NullKeys(_) => ResponseError::InvalidRecord,
            Self::MessageTooLarge { .. } => ResponseError::MessageTooLarge,
            Self::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber,
            Self::InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch,
            Self::InvalidTimestamp { .. } => ResponseError::InvalidTimestamp,
            Self::InvalidRequiredAcks(_) => ResponseError::InvalidRequiredAcks,
            Self::UnsupportedCompression(_) => ResponseError::UnsupportedCompressionType,
            Self::UnsupportedVersion(_) => ResponseError::UnsupportedVersion,
            Self::TransactionNotVerified(_) => ResponseError::InvalidTxnState,
            Self::TransactionRefused(code) => *code,
            Self::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
            Self::UnknownLeaderEpoch(_) => ResponseError::UnknownLeaderEpoch,
            Self::FencedLeaderEpoch(_) => ResponseError::FencedLeaderEpoch,
            Self::Timeout(_) => ResponseError::RequestTimedOut,
            Self::NotLeader(_) => ResponseError::NotLeaderOrFollower,
            Self::CorruptStored { .. } => ResponseError::KafkaStorageError,
            Self::Storage(_) => ResponseError::KafkaStorageError,
            Self::Meta(_) => ResponseError::KafkaStorageError,
        }
    }
}

/// Why a topic-level (admin) operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// The name is not a legal Kafka topic name.
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// The topic exists.
    #[error("topic {0} already exists")]
    AlreadyExists(String),
    /// The topic does not exist.
    #[error("topic {0} does not exist")]
    Unknown(String),
    /// No topic has this id.
    #[error("no topic has id {0}")]
    UnknownId(uuid::Uuid),
    /// Bad partition count.
    #[error("invalid number of partitions {0}: must be at least 1 (or -1 for the default)")]
    InvalidPartitions(i32),
    /// More partitions than one topic may have.
    #[error(
        "{requested} partitions is more than topics.max_partitions_per_topic ({limit}) allows"
    )]
    TooManyPartitions {
        /// Partitions asked for.
        requested: i32,
        /// The limit.
        limit: i32,
    },
    /// The agent pool's partition budget would be exceeded.
    #[error("{requested} more partitions would make {total}, more than topics.max_partitions_total ({limit}) allows")]
    PartitionBudget {
        /// Partitions asked for.
        requested: i32,
        /// Partitions there would be.
        total: i64,
        /// The limit.
        limit: i64,
    },
    /// Bad replication factor.
    #[error("invalid replication factor {0}: must be at least 1 (or -1 for the default)")]
    InvalidReplicationFactor(i16),
    /// A config name or value is not accepted.
    #[error("{0}")]
    InvalidConfig(String),
    /// The request contradicts itself (a config or topic named twice, an unknown operation).
    #[error("{0}")]
    InvalidRequest(String),
    /// CreatePartitions asked for no more partitions than the topic has.
    #[error("topic {topic} has {current} partitions; it can only grow (asked for {requested}), as in Kafka")]
    CannotShrink {
        /// The topic.
        topic: String,
        /// Partitions it has.
        current: i32,
        /// Partitions asked for.
        requested: i32,
    },
    /// A replica assignment Silt cannot follow.
    #[error("{0}")]
    InvalidReplicaAssignment(String),
    /// The topic kept changing under a change being applied.
    #[error("{0}")]
    Busy(String),
    /// The metadata store failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
}

impl TopicError {
    /// The Kafka error code a broker gives for this.
    pub fn code(&self) -> ResponseError {
        match self {
            Self::InvalidName { .. } => ResponseError::InvalidTopicException,
            Self::AlreadyExists(_) => ResponseError::TopicAlreadyExists,
            Self::Unknown(_) => ResponseError::UnknownTopicOrPartition,
            Self::UnknownId(_) => ResponseError::UnknownTopicId,
            Self::InvalidPartitions(_) => ResponseError::InvalidPartitions,
            Self::TooManyPartitions { .. } => ResponseError::InvalidPartitions,
            Self::PartitionBudget { .. } => ResponseError::PolicyViolation,
            Self::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor,
            Self::InvalidConfig(_) => ResponseError::InvalidConfig,
            Self::InvalidRequest(_) => ResponseError::InvalidRequest,
            Self::CannotShrink { .. } => ResponseError::InvalidPartitions,
            Self::InvalidReplicaAssignment(_) => ResponseError::InvalidReplicaAssignment,
            Self::Busy(_) => ResponseError::RequestTimedOut,
            Self::Meta(_) => ResponseError::KafkaStorageError,
        }
    }
}

/// The Kafka error a failed SASL exchange is answered with.
pub fn auth_error_code(e: &silt_security::AuthError) -> ResponseError {
    use silt_security::AuthError as A;
    match e {
        A::Failed { .. } | A::Malformed(_) | A::Store(_) => ResponseError::SaslAuthenticationFailed,
        A::UnsupportedMechanism(_) => ResponseError::UnsupportedSaslMechanism,
    }
}

/// The Kafka error an admin API (ACLs, users) answers when the metadata store fails: a
/// retryable failure or an unknown outcome is REQUEST_TIMED_OUT (the client retries), a
/// permanent one UNKNOWN_SERVER_ERROR with the store's message.
pub fn meta_error_code(e: &MetaError) -> ResponseError {
    use silt_meta::kv::ErrorClass;
    match e.class() {
        ErrorClass::Retryable | ErrorClass::OutcomeUnknown => ResponseError::RequestTimedOut,
        ErrorClass::Permanent => ResponseError::UnknownServerError,
    }
}
