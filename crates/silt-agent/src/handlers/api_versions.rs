//! ApiVersions, and the table of APIs and versions this agent serves.

use kafka_protocol::messages::api_versions_response::{
    ApiVersion, FinalizedFeatureKey, SupportedFeatureKey,
};
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

/// Every API served, with its version range.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 0, 12),
    (ApiKey::Fetch, 0, 16),
    (ApiKey::ListOffsets, 0, 8),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::Metadata, 0, 13),
    (ApiKey::OffsetCommit, 0, 9),
    (ApiKey::OffsetFetch, 0, 9),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
    (ApiKey::ConsumerGroupDescribe, 0, 1),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 0, 7),
    (ApiKey::DeleteTopics, 0, 6),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::AddPartitionsToTxn, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::EndTxn, 0, 5),
    (ApiKey::TxnOffsetCommit, 0, 5),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 1),
    (ApiKey::DescribeProducers, 0, 0),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::ElectLeaders, 0, 2),
    (ApiKey::ListPartitionReassignments, 0, 0),
    (ApiKey::AlterPartitionReassignments, 0, 0),
    (ApiKey::OffsetForLeaderEpoch, 0, 4),
    (ApiKey::DescribeConfigs, 0, 4),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::DescribeAcls, 0, 3),
    (ApiKey::CreateAcls, 0, 3),
    (ApiKey::DeleteAcls, 0, 3),
    (ApiKey::DescribeUserScramCredentials, 0, 0),
    (ApiKey::AlterUserScramCredentials, 0, 0),
    (ApiKey::DescribeClientQuotas, 0, 1),
    (ApiKey::AlterClientQuotas, 0, 1),
];

/// The version range served for `api`, if it is served at all.
pub fn supported(api: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == api)
        .map(|(_, min, max)| (*min, *max))
}

fn api_keys() -> Vec<ApiVersion> {
    SUPPORTED
        .iter()
        .map(|(k, min, max)| {
            ApiVersion::default()
                .with_api_key(*k as i16)
                .with_min_version(*min)
                .with_max_version(*max)
        })
        .collect()
}

/// The ApiVersions response. From v3 it carries the features clients look for, as a Kafka 4
/// broker's does: `transaction.version` (2 is KIP-890 part 2, offered when the
/// `transactions.version` setting is 2) and `group.version` (1: KIP-848 consumer groups).
pub fn handle(version: i16, transaction_version: i16) -> ApiVersionsResponse {
    let supported = |name: &str, max: i16| {
        SupportedFeatureKey::default()
            .with_name(StrBytes::from_string(name.to_string()))
            .with_min_version(0)
            .with_max_version(max)
    };
    let finalized = |name: &str, level: i16| {
        FinalizedFeatureKey::default()
            .with_name(StrBytes::from_string(name.to_string()))
            .with_min_version_level(level)
            .with_max_version_level(level)
    };
    ApiVersionsResponse::default()
        .with_api_keys(api_keys())
        // Supported ranges starting at 0 only from v4: older Java clients refuse a minimum
        // of 0, so Kafka leaves them out below v4.
        .with_supported_features(if version >= 4 {
            vec![
                supported("group.version", 1),
                supported("transaction.version", 2),
            ]
        } else {
            Vec::new()
        })
        .with_finalized_features_epoch(features_epoch())
        .with_finalized_features(vec![
            finalized("group.version", 1),
            finalized("transaction.version", transaction_version),
        ])
}

/// The finalized features' epoch: when this agent process started (ms). Clients keep the
/// features of the highest epoch they saw, so a restart with another `transactions.version`
/// reaches clients that are already connected.
fn features_epoch() -> i64 {
    static STARTED: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *STARTED.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as i64)
    })
}

/// The answer to an ApiVersions request of a version we do not serve: encoded as v0, with
/// UNSUPPORTED_VERSION and our ranges, so the client can retry with one we do (KIP-511).
pub fn unsupported_version_response() -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(ResponseError::UnsupportedVersion.code())
        .with_api_keys(api_keys())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_ranges_are_within_what_the_codecs_know() {
        for (k, min, max) in SUPPORTED {
            let known = k.valid_versions();
            // Below kafka-protocol's floor, silt-wire's legacy codecs take over.
            let floor = silt_wire::legacy::floor(*k).unwrap_or(known.min);
            assert!(
                *min >= floor && *max <= known.max,
                "{k:?} {min}..{max} vs {known:?} (legacy floor {floor})"
            );
        }
    }

    #[test]
    fn features_are_those_of_a_kafka_4_broker() {
        let v4 = handle(4, 2);
        let level = |r: &ApiVersionsResponse, name: &str| {
            r.finalized_features
                .iter()
                .find(|f| f.name.as_str() == name)
                .map(|f| (f.min_version_level, f.max_version_level))
        };
        assert_eq!(level(&v4, "transaction.version"), Some((2, 2)));
        assert_eq!(level(&v4, "group.version"), Some((1, 1)));
        assert_eq!(level(&handle(4, 1), "transaction.version"), Some((1, 1)));
        assert!(v4.finalized_features_epoch > 0);
        assert_eq!(v4.supported_features.len(), 2);
        assert!(
            handle(3, 2).supported_features.is_empty(),
            "ranges from 0 only from v4"
        );
    }
}
