//! Topic configs: the names Silt accepts, their defaults, validation, and the resolved values
//! the write and read paths use.

use std::collections::BTreeMap;

use silt_common::config::TopicDefaults;

use crate::error::TopicError;

/// The type of a config value, as DescribeConfigs v3+ reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    /// `true` / `false`.
    Boolean = 1,
    /// Any string (checked by `allowed` when set).
    String = 2,
    /// A 32-bit integer.
    Int = 3,
    /// A 64-bit integer.
    Long = 5,
    /// A floating point number.
    Double = 6,
    /// A comma-separated list.
    List = 7,
}

/// One known topic config.
#[derive(Debug, Clone, Copy)]
pub struct ConfigDef {
    /// Kafka's name for it.
    pub name: &'static str,
    /// Its type.
    pub kind: ConfigType,
    /// Accepted values for strings and lists; empty means any.
    pub allowed: &'static [&'static str],
    /// Smallest accepted number.
    pub min: i64,
}

const fn def(name: &'static str, kind: ConfigType) -> ConfigDef {
    ConfigDef {
        name,
        kind,
        allowed: &[],
        min: i64::MIN,
    }
}

const fn num(name: &'static str, kind: ConfigType, min: i64) -> ConfigDef {
    ConfigDef {
        name,
        kind,
        allowed: &[],
        min,
    }
}

/// Every topic config Silt accepts. Configs that only tune Kafka's local log segments are
/// accepted and reported for compatibility but have no effect (see docs/compatibility.md).
pub const DEFS: &[ConfigDef] = &[
    ConfigDef {
        name: "cleanup.policy",
        kind: ConfigType::List,
        allowed: &["delete", "compact"],
        min: 0,
    },
    ConfigDef {
        name: "compression.type",
        kind: ConfigType::String,
        allowed: &["producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"],
        min: 0,
    },
    num("delete.retention.ms", ConfigType::Long, 0),
    num("file.delete.delay.ms", ConfigType::Long, 0),
    num("flush.messages", ConfigType::Long, 1),
    num("flush.ms", ConfigType::Long, 0),
    num("index.interval.bytes", ConfigType::Int, 0),
    num("local.retention.bytes", ConfigType::Long, -2),
    num("local.retention.ms", ConfigType::Long, -2),
    num("max.compaction.lag.ms", ConfigType::Long, 1),
    num("max.message.bytes", ConfigType::Int, 0),
    def("message.downconversion.enable", ConfigType::Boolean),
    // Deprecated in Kafka 3.0 and ignored there since (record batches are always v2); still
    // accepted by Kafka 3.9, which old tools and tests set.
    def("message.format.version", ConfigType::String),
    num("message.timestamp.after.max.ms", ConfigType::Long, 0),
    num("message.timestamp.before.max.ms", ConfigType::Long, 0),
    num("message.timestamp.difference.max.ms", ConfigType::Long, 0),
    ConfigDef {
        name: "message.timestamp.type",
        kind: ConfigType::String,
        allowed: &["CreateTime", "LogAppendTime"],
        min: 0,
    },
    def("min.cleanable.dirty.ratio", ConfigType::Double),
    num("min.compaction.lag.ms", ConfigType::Long, 0),
    num("min.insync.replicas", ConfigType::Int, 1),
    def("preallocate", ConfigType::Boolean),
    def("remote.storage.enable", ConfigType::Boolean),
    num("retention.bytes", ConfigType::Long, -1),
    num("retention.ms", ConfigType::Long, -1),
    num("segment.bytes", ConfigType::Int, 14),
    num("segment.index.bytes", ConfigType::Int, 4),
    num("segment.jitter.ms", ConfigType::Long, 0),
    num("segment.ms", ConfigType::Long, 1),
    def("unclean.leader.election.enable", ConfigType::Boolean),
    // Silt's own: Parquet archiving (docs/archive.md).
    def("silt.archive.enable", ConfigType::Boolean),
    def("silt.archive.serve", ConfigType::Boolean),
    def("silt.archive.value.schema", ConfigType::String),
];

/// Topic config: archive this topic as Parquet.
pub const ARCHIVE_ENABLE: &str = "silt.archive.enable";
/// Topic config: serve offsets below the raw log start from the archive (implies archiving).
pub const ARCHIVE_SERVE: &str = "silt.archive.serve";
/// Topic config: JSON value schema for typed archive columns.
pub const ARCHIVE_VALUE_SCHEMA: &str = "silt.archive.value.schema";

/// Broker configs that set a topic config's default (Kafka's synonyms: broker name, topic
/// name). They change at run time, cluster-wide (`/silt/broker-configs/<default>`).
pub const BROKER_SYNONYMS: &[(&str, &str)] = &[
    ("log.cleanup.policy", "cleanup.policy"),
    ("compression.type", "compression.type"),
    ("log.cleaner.delete.retention.ms", "delete.retention.ms"),
    ("log.segment.delete.delay.ms", "file.delete.delay.ms"),
    ("log.flush.interval.messages", "flush.messages"),
    ("log.flush.interval.ms", "flush.ms"),
    ("log.index.interval.bytes", "index.interval.bytes"),
    ("log.local.retention.bytes", "local.retention.bytes"),
    ("log.local.retention.ms", "local.retention.ms"),
    ("log.cleaner.max.compaction.lag.ms", "max.compaction.lag.ms"),
    ("message.max.bytes", "max.message.bytes"),
    (
        "log.message.downconversion.enable",
        "message.downconversion.enable",
    ),
    (
        "log.message.timestamp.after.max.ms",
        "message.timestamp.after.max.ms",
    ),
    (
        "log.message.timestamp.before.max.ms",
        "message.timestamp.before.max.ms",
    ),
    (
        "log.message.timestamp.difference.max.ms",
        "message.timestamp.difference.max.ms",
    ),
    ("log.message.timestamp.type", "message.timestamp.type"),
    (
        "log.cleaner.min.cleanable.ratio",
        "min.cleanable.dirty.ratio",
    ),
    ("log.cleaner.min.compaction.lag.ms", "min.compaction.lag.ms"),
    ("min.insync.replicas", "min.insync.replicas"),
    ("log.preallocate", "preallocate"),
    ("log.retention.bytes", "retention.bytes"),
    ("log.retention.ms", "retention.ms"),
    ("log.segment.bytes", "segment.bytes"),
    ("log.index.size.max.bytes", "segment.index.bytes"),
    ("log.roll.jitter.ms", "segment.jitter.ms"),
    ("log.roll.ms", "segment.ms"),
    (
        "unclean.leader.election.enable",
        "unclean.leader.election.enable",
    ),
    ("silt.archive.enable", ARCHIVE_ENABLE),
];

/// The topic config a broker config is the default of.
pub fn topic_synonym(broker_name: &str) -> Option<&'static str> {
    BROKER_SYNONYMS
        .iter()
        .find(|(b, _)| *b == broker_name)
        .map(|(_, t)| *t)
}

/// The broker config that is a topic config's default.
pub fn broker_synonym(topic_name: &str) -> Option<&'static str> {
    BROKER_SYNONYMS
        .iter()
        .find(|(_, t)| *t == topic_name)
        .map(|(b, _)| *b)
}

/// Where a topic config's value comes from when the topic does not set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultSource {
    /// A cluster-wide broker config changed at run time.
    Dynamic,
    /// The agent's settings or Kafka's default.
    Static,
}

/// The default of a topic config: the cluster-wide dynamic broker config if one is set (broker
/// names in `dynamic`), else [`default_value`].
pub fn default_with(
    name: &str,
    d: &TopicDefaults,
    dynamic: &BTreeMap<String, String>,
) -> (String, DefaultSource) {
    match broker_synonym(name).and_then(|b| dynamic.get(b)) {
        Some(v) => (v.clone(), DefaultSource::Dynamic),
        None => (default_value(name, d), DefaultSource::Static),
    }
}

/// Cluster-wide broker configs after `changes` (IncrementalAlterConfigs, broker names; or
/// AlterConfigs with `replace`: what is not named goes back to its default). Each must be a
/// topic config's default and is checked as that topic config is; the error names the rest.
pub fn apply_broker_changes(
    current: &BTreeMap<String, String>,
    changes: &[Change],
    replace: bool,
    d: &TopicDefaults,
) -> Result<BTreeMap<String, String>, TopicError> {
    let read_only: Vec<&str> = changes
        .iter()
        .map(|c| c.name())
        .filter(|n| topic_synonym(n).is_none())
        .collect();
    if !read_only.is_empty() {
        return Err(TopicError::InvalidConfig(read_only_message(&read_only)));
    }
    let to_topic = |m: &BTreeMap<String, String>| -> BTreeMap<String, String> {
        m.iter()
            .filter_map(|(k, v)| Some((topic_synonym(k)?.to_owned(), v.clone())))
            .collect()
    };
    let start = if replace {
        BTreeMap::new()
    } else {
        to_topic(current)
    };
    let renamed: Vec<Change> = changes
        .iter()
        .map(|c| {
            let t = topic_synonym(c.name()).unwrap_or_default().to_owned();
            match c {
                Change::Set(_, v) => Change::Set(t, v.clone()),
                Change::Delete(_) => Change::Delete(t),
                Change::Append(_, v) => Change::Append(t, v.clone()),
                Change::Subtract(_, v) => Change::Subtract(t, v.clone()),
            }
        })
        .collect();
    let next = apply_changes(&start, &renamed, d)?;
    Ok(next
        .into_iter()
        .filter_map(|(k, v)| Some((broker_synonym(&k)?.to_owned(), v)))
        .collect())
}

/// Why broker configs cannot change at run time, and what can.
pub fn read_only_message(names: &[&str]) -> String {
    format!(
        "cannot update these broker configs dynamically: {}; broker settings are read at start (change them in the agent's config file or SILT_* environment and restart). What changes at run time: the cluster-wide defaults of topic configs (log.retention.ms, log.retention.bytes, message.max.bytes, log.message.timestamp.*, log.cleanup.policy and the other log.* synonyms of topic configs) on the default broker resource or an agent's own (kafka-configs --entity-type brokers --entity-default; one value for the whole pool), and log levels through the BROKER_LOGGER resource or the admin port",
        names.join(", ")
    )
}

/// The default value of a config, given the agent's topic defaults.
pub fn default_value(name: &str, d: &TopicDefaults) -> String {
    match name {
        "cleanup.policy" => "delete".into(),
        "compression.type" => "producer".into(),
        "delete.retention.ms" => "86400000".into(),
        "file.delete.delay.ms" => "60000".into(),
        "flush.messages" => i64::MAX.to_string(),
        "flush.ms" => i64::MAX.to_string(),
        "index.interval.bytes" => "4096".into(),
        "local.retention.bytes" | "local.retention.ms" => "-2".into(),
        "max.compaction.lag.ms" => i64::MAX.to_string(),
        "max.message.bytes" => d.max_message_bytes.to_string(),
        "message.downconversion.enable" => "true".into(),
        "message.format.version" => "3.0-IV1".into(),
        "message.timestamp.after.max.ms" | "message.timestamp.before.max.ms" => {
            i64::MAX.to_string()
        }
        "message.timestamp.difference.max.ms" => i64::MAX.to_string(),
        "message.timestamp.type" => "CreateTime".into(),
        "min.cleanable.dirty.ratio" => "0.5".into(),
        "min.compaction.lag.ms" => "0".into(),
        "min.insync.replicas" => "1".into(),
        "preallocate" | "remote.storage.enable" | "unclean.leader.election.enable" => {
            "false".into()
        }
        "retention.bytes" => "-1".into(),
        "retention.ms" => d.retention_ms.to_string(),
        "segment.bytes" => "1073741824".into(),
        "segment.index.bytes" => "10485760".into(),
        "segment.jitter.ms" => "0".into(),
        "segment.ms" => "604800000".into(),
        ARCHIVE_ENABLE => d.archive.to_string(),
        ARCHIVE_SERVE => "false".into(),
        _ => String::new(),
    }
}

/// Looks up a config definition by name.
pub fn find(name: &str) -> Option<&'static ConfigDef> {
    DEFS.iter().find(|d| d.name == name)
}

/// Checks one config; the error names the config, the value and what is accepted.
pub fn validate(name: &str, value: &str) -> Result<(), TopicError> {
    let Some(d) = find(name) else {
        return Err(TopicError::InvalidConfig(format!(
            "unknown topic config {name:?}"
        )));
    };
    let bad = |what: String| {
        TopicError::InvalidConfig(format!("invalid value {value:?} for {name}: {what}"))
    };
    match d.kind {
        ConfigType::Boolean => {
            if !value.eq_ignore_ascii_case("true") && !value.eq_ignore_ascii_case("false") {
                return Err(bad("expected true or false".into()));
            }
        }
        ConfigType::Int | ConfigType::Long => {
            let n: i64 = if d.kind == ConfigType::Int {
                value
                    .trim()
                    .parse::<i32>()
                    .map(i64::from)
                    .map_err(|_| bad("expected a 32-bit integer".into()))?
            } else {
                value
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| bad("expected a 64-bit integer".into()))?
            };
            if n < d.min {
                return Err(bad(format!("must be at least {}", d.min)));
            }
        }
        ConfigType::Double => {
            value
                .trim()
                .parse::<f64>()
                .map_err(|_| bad("expected a number".into()))?;
        }
        ConfigType::String => {
            if !d.allowed.is_empty() && !d.allowed.contains(&value) {
                return Err(bad(format!("expected one of {}", d.allowed.join(", "))));
            }
            if name == ARCHIVE_VALUE_SCHEMA && !value.trim().is_empty() {
                silt_archive::schema::ValueSchema::parse(value).map_err(|e| bad(e.to_string()))?;
            }
        }
        ConfigType::List => {
            for item in value.split(',').map(str::trim) {
                if !d.allowed.is_empty() && !d.allowed.contains(&item) {
                    return Err(bad(format!("expected a list of {}", d.allowed.join(", "))));
                }
            }
        }
    }
    Ok(())
}

/// One change of an IncrementalAlterConfigs request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Set the config to a value.
    Set(String, String),
    /// Remove the explicit value (back to the default).
    Delete(String),
    /// Add items to a list config (those not already in it).
    Append(String, String),
    /// Remove items from a list config.
    Subtract(String, String),
}

impl Change {
    /// The change for Kafka's operation code (0 set, 1 delete, 2 append, 3 subtract).
    pub fn from_kafka(op: i8, name: &str, value: Option<&str>) -> Result<Self, TopicError> {
        let v = || value.unwrap_or_default().to_owned();
        Ok(match op {
            0 => Self::Set(name.to_owned(), v()),
            1 => Self::Delete(name.to_owned()),
            2 => Self::Append(name.to_owned(), v()),
            3 => Self::Subtract(name.to_owned(), v()),
            other => {
                return Err(TopicError::InvalidRequest(format!(
                    "unknown config operation {other} for {name} (0 set, 1 delete, 2 append, 3 subtract)"
                )))
            }
        })
    }

    /// The config it changes.
    pub fn name(&self) -> &str {
        match self {
            Self::Set(n, _) | Self::Delete(n) | Self::Append(n, _) | Self::Subtract(n, _) => n,
        }
    }
}

/// A topic's explicit configs after `changes` (IncrementalAlterConfigs), each checked as on
/// creation; a config named twice is refused, as Kafka refuses it.
pub fn apply_changes(
    configs: &BTreeMap<String, String>,
    changes: &[Change],
    d: &TopicDefaults,
) -> Result<BTreeMap<String, String>, TopicError> {
    let mut out = configs.clone();
    let mut seen = std::collections::HashSet::new();
    for c in changes {
        let name = c.name();
        if !seen.insert(name) {
            return Err(TopicError::InvalidRequest(format!(
                "config {name} appears more than once in the request"
            )));
        }
        let Some(def) = find(name) else {
            return Err(TopicError::InvalidConfig(format!(
                "unknown topic config {name:?}"
            )));
        };
        let list = |v: &str| -> Vec<String> {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        };
        let current = || {
            out.get(name)
                .cloned()
                .unwrap_or_else(|| default_value(name, d))
        };
        match c {
            Change::Set(_, v) => {
                validate(name, v)?;
                out.insert(name.to_owned(), v.clone());
            }
            Change::Delete(_) => {
                out.remove(name);
            }
            Change::Append(_, v) | Change::Subtract(_, v) => {
                if def.kind != ConfigType::List {
                    return Err(TopicError::InvalidConfig(format!(
                        "{name} is not a list: APPEND and SUBTRACT apply to list configs only"
                    )));
                }
                let mut items = list(&current());
                for item in list(v) {
                    match c {
                        Change::Append(..) if !items.contains(&item) => items.push(item),
                        Change::Subtract(..) => items.retain(|i| *i != item),
                        _ => {}
                    }
                }
                let joined = items.join(",");
                validate(name, &joined)?;
                out.insert(name.to_owned(), joined);
            }
        }
    }
    Ok(out)
}

/// A topic's explicit configs replaced by `configs` (AlterConfigs: what is not named goes back
/// to its default), each checked as on creation.
pub fn replace_all(configs: &[(String, String)]) -> Result<BTreeMap<String, String>, TopicError> {
    let mut out = BTreeMap::new();
    for (k, v) in configs {
        validate(k, v)?;
        if out.insert(k.clone(), v.clone()).is_some() {
            return Err(TopicError::InvalidRequest(format!(
                "config {k} appears more than once in the request"
            )));
        }
    }
    Ok(out)
}

/// The values the agent acts on, resolved from explicit configs and defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// `max.message.bytes`.
    pub max_message_bytes: usize,
    /// `message.timestamp.type = LogAppendTime`.
    pub log_append_time: bool,
    /// `retention.ms` (-1: forever).
    pub retention_ms: i64,
    /// `retention.bytes` per partition (-1: unbounded).
    pub retention_bytes: i64,
    /// Records may be at most this much older than the broker's clock
    /// (`message.timestamp.before.max.ms`, or the older `message.timestamp.difference.max.ms`).
    pub timestamp_before_max_ms: i64,
    /// Records may be at most this much newer than the broker's clock
    /// (`message.timestamp.after.max.ms`, or `message.timestamp.difference.max.ms`).
    pub timestamp_after_max_ms: i64,
    /// `cleanup.policy` includes `compact`: every record needs a key, and the latest record
    /// of each key is kept (key compaction).
    pub compacted: bool,
    /// `cleanup.policy` includes `delete`: `retention.ms` and `retention.bytes` apply.
    pub deletes: bool,
    /// Key compaction's rules (`delete.retention.ms`, `min.compaction.lag.ms`,
    /// `max.compaction.lag.ms`, `min.cleanable.dirty.ratio`).
    pub key_rules: crate::lifecycle::key_compaction::KeyRules,
    /// `silt.archive.enable` (or `silt.archive.serve`): archived as Parquet.
    pub archive: bool,
    /// `silt.archive.serve`: offsets below the raw log start are served from the archive, and
    /// retention never moves the raw log start past what is archived.
    pub archive_serve: bool,
    /// `message.downconversion.enable`: Fetch v0–3 (message sets) is served.
    pub downconversion: bool,
    /// `silt.archive.value.schema`, parsed.
    pub value_schema: Option<std::sync::Arc<silt_archive::schema::ValueSchema>>,
}

impl Resolved {
    /// Resolves a topic's explicit configs over the cluster-wide dynamic defaults (broker
    /// names) and the agent's settings.
    pub fn from(
        configs: &BTreeMap<String, String>,
        d: &TopicDefaults,
        dynamic: &BTreeMap<String, String>,
    ) -> Self {
        let get = |name: &str| {
            configs
                .get(name)
                .cloned()
                .unwrap_or_else(|| default_with(name, d, dynamic).0)
        };
        let difference: i64 = get("message.timestamp.difference.max.ms")
            .parse()
            .unwrap_or(i64::MAX);
        let bound = |name: &str| get(name).parse::<i64>().unwrap_or(i64::MAX).min(difference);
        Self {
            max_message_bytes: get("max.message.bytes")
                .parse()
                .unwrap_or(d.max_message_bytes as usize),
            log_append_time: get("message.timestamp.type") == "LogAppendTime",
            retention_ms: get("retention.ms").parse().unwrap_or(d.retention_ms),
            retention_bytes: get("retention.bytes").parse().unwrap_or(-1),
            timestamp_before_max_ms: bound("message.timestamp.before.max.ms"),
            timestamp_after_max_ms: bound("message.timestamp.after.max.ms"),
            compacted: get("cleanup.policy")
                .split(',')
                .any(|p| p.trim() == "compact"),
            deletes: get("cleanup.policy")
                .split(',')
                .any(|p| p.trim() == "delete"),
            key_rules: crate::lifecycle::key_compaction::KeyRules {
                delete_retention_ms: get("delete.retention.ms").parse().unwrap_or(86_400_000),
                min_lag_ms: get("min.compaction.lag.ms").parse().unwrap_or(0),
                max_lag_ms: get("max.compaction.lag.ms").parse().unwrap_or(i64::MAX),
                min_dirty_ratio: get("min.cleanable.dirty.ratio").parse().unwrap_or(0.5),
                segment_bytes: get("segment.bytes").parse().unwrap_or(1 << 30),
                segment_ms: get("segment.ms").parse().unwrap_or(7 * 86_400_000),
            },
            archive: get(ARCHIVE_ENABLE).eq_ignore_ascii_case("true")
                || get(ARCHIVE_SERVE).eq_ignore_ascii_case("true"),
            archive_serve: get(ARCHIVE_SERVE).eq_ignore_ascii_case("true"),
            downconversion: !get("message.downconversion.enable").eq_ignore_ascii_case("false"),
            value_schema: configs
                .get(ARCHIVE_VALUE_SCHEMA)
                .filter(|s| !s.trim().is_empty())
                .and_then(|s| silt_archive::schema::ValueSchema::parse(s).ok())
                .map(std::sync::Arc::new),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_def_has_a_valid_default() {
        let d = TopicDefaults::default();
        for def in DEFS {
            let v = default_value(def.name, &d);
            // A value schema is optional: its default is none.
            assert!(
                !v.is_empty() || def.name == ARCHIVE_VALUE_SCHEMA,
                "{} has no default",
                def.name
            );
            validate(def.name, &v).unwrap_or_else(|e| panic!("default of {}: {e}", def.name));
        }
    }

    #[test]
    fn bad_configs_are_explained() {
        let e = validate("retention.msx", "1").unwrap_err().to_string();
        assert!(e.contains("retention.msx"), "{e}");
        let e = validate("retention.ms", "soon").unwrap_err().to_string();
        assert!(e.contains("soon") && e.contains("retention.ms"), "{e}");
        assert!(validate("cleanup.policy", "compact,delete").is_ok());
        let e = validate(
            ARCHIVE_VALUE_SCHEMA,
            r#"{"fields":[{"name":"x","type":"money"}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("money") && e.contains(ARCHIVE_VALUE_SCHEMA),
            "{e}"
        );
        assert!(validate(ARCHIVE_ENABLE, "maybe").is_err());
        assert!(validate("cleanup.policy", "shred").is_err());
        assert!(validate("max.message.bytes", "99999999999").is_err());
    }

    #[test]
    fn incremental_changes_follow_kafkas_rules() {
        let d = TopicDefaults::default();
        let start = BTreeMap::from([("retention.ms".to_string(), "1000".to_string())]);
        let out = apply_changes(
            &start,
            &[
                Change::Set("max.message.bytes".into(), "2048".into()),
                Change::Delete("retention.ms".into()),
                Change::Append("cleanup.policy".into(), "compact".into()),
            ],
            &d,
        )
        .unwrap();
        assert_eq!(
            out,
            BTreeMap::from([
                ("max.message.bytes".to_string(), "2048".to_string()),
                ("cleanup.policy".to_string(), "delete,compact".to_string()),
            ])
        );
        let out = apply_changes(
            &out,
            &[Change::Subtract("cleanup.policy".into(), "delete".into())],
            &d,
        )
        .unwrap();
        assert_eq!(out["cleanup.policy"], "compact");
        let e = apply_changes(
            &start,
            &[Change::Append("retention.ms".into(), "5".into())],
            &d,
        )
        .unwrap_err();
        assert!(matches!(e, TopicError::InvalidConfig(_)), "{e}");
        let e = apply_changes(
            &start,
            &[Change::Set("retention.ms".into(), "soon".into())],
            &d,
        )
        .unwrap_err();
        assert!(e.to_string().contains("soon"), "{e}");
        let e = apply_changes(&start, &[Change::Delete("nope.ms".into())], &d).unwrap_err();
        assert!(e.to_string().contains("nope.ms"), "{e}");
        let twice = [
            Change::Set("retention.ms".into(), "1".into()),
            Change::Delete("retention.ms".into()),
        ];
        assert!(matches!(
            apply_changes(&start, &twice, &d),
            Err(TopicError::InvalidRequest(_))
        ));
        assert!(matches!(
            Change::from_kafka(9, "retention.ms", None),
            Err(TopicError::InvalidRequest(_))
        ));
        assert_eq!(
            replace_all(&[("retention.ms".into(), "5".into())]).unwrap(),
            BTreeMap::from([("retention.ms".to_string(), "5".to_string())])
        );
        assert!(replace_all(&[("bogus".into(), "5".into())]).is_err());
    }

    #[test]
    fn resolved_prefers_explicit_values() {
        let d = TopicDefaults::default();
        let r = Resolved::from(
            &BTreeMap::from([
                ("max.message.bytes".into(), "2048".into()),
                ("message.timestamp.type".into(), "LogAppendTime".into()),
            ]),
            &d,
            &BTreeMap::new(),
        );
        assert_eq!(r.max_message_bytes, 2048);
        assert!(r.log_append_time);
        assert_eq!(r.retention_ms, d.retention_ms);
    }

    #[test]
    fn dynamic_broker_defaults_sit_between_topic_values_and_settings() {
        let d = TopicDefaults::default();
        let dynamic = BTreeMap::from([
            ("log.retention.ms".to_string(), "5000".to_string()),
            ("message.max.bytes".to_string(), "4096".to_string()),
        ]);
        let explicit = BTreeMap::from([("max.message.bytes".into(), "2048".into())]);
        let r = Resolved::from(&explicit, &d, &dynamic);
        assert_eq!(r.retention_ms, 5000, "the dynamic default applies");
        assert_eq!(r.max_message_bytes, 2048, "the topic's own value wins");
        assert_eq!(
            default_with("retention.ms", &d, &dynamic),
            ("5000".to_string(), DefaultSource::Dynamic)
        );
        assert_eq!(
            default_with("retention.bytes", &d, &dynamic),
            ("-1".to_string(), DefaultSource::Static)
        );
        // Every synonym names a known topic config, once.
        for (b, t) in BROKER_SYNONYMS {
            assert!(find(t).is_some(), "{b} -> {t}");
            assert_eq!(broker_synonym(t), Some(*b));
        }
    }

    #[test]
    fn broker_changes_are_checked_as_topic_configs_and_named_when_read_only() {
        let d = TopicDefaults::default();
        let cur = BTreeMap::from([("log.retention.ms".to_string(), "5000".to_string())]);
        let next = apply_broker_changes(
            &cur,
            &[
                Change::Set("log.retention.bytes".into(), "1000000".into()),
                Change::Append("log.cleanup.policy".into(), "compact".into()),
            ],
            false,
            &d,
        )
        .unwrap();
        assert_eq!(
            next,
            BTreeMap::from([
                (
                    "log.cleanup.policy".to_string(),
                    "delete,compact".to_string()
                ),
                ("log.retention.bytes".to_string(), "1000000".to_string()),
                ("log.retention.ms".to_string(), "5000".to_string()),
            ])
        );
        // AlterConfigs replaces the whole set.
        let next = apply_broker_changes(
            &cur,
            &[Change::Set("message.max.bytes".into(), "2048".into())],
            true,
            &d,
        )
        .unwrap();
        assert_eq!(
            next,
            BTreeMap::from([("message.max.bytes".to_string(), "2048".to_string())])
        );
        let bad = apply_broker_changes(
            &cur,
            &[Change::Set("log.retention.ms".into(), "soon".into())],
            false,
            &d,
        );
        assert!(matches!(bad, Err(TopicError::InvalidConfig(_))), "{bad:?}");
        let e = apply_broker_changes(
            &cur,
            &[
                Change::Set("num.io.threads".into(), "4".into()),
                Change::Set("log.retention.ms".into(), "1".into()),
            ],
            false,
            &d,
        )
        .unwrap_err();
        assert!(e.to_string().contains("num.io.threads"), "{e}");
        assert!(!e
            .to_string()
            .contains("these broker configs dynamically: num.io.threads, log.retention.ms"));
    }
}
