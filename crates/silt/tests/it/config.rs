//! Settings and logs as an operator meets them: environment overrides take effect, a wrong or
//! unknown option stops start-up naming the option and the value, and JSON logs are JSON.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::harness::AgentProc;
use crate::kafka::config;

#[test]
fn bad_options_stop_start_up_with_their_name_and_value() {
    let (status, log) = AgentProc::start_failing(&[("SILT_FLUSH__INTERVALL_MS", "5")]);
    assert!(!status.success());
    assert!(
        log.contains("intervall_ms") && log.contains("SILT_"),
        "unknown option named with its source: {log}"
    );

    let (status, log) = AgentProc::start_failing(&[("SILT_FLUSH__INTERVAL_MS", "soon")]);
    assert!(!status.success());
    assert!(
        log.contains("interval_ms") && log.contains("soon"),
        "bad value named: {log}"
    );

    let (status, log) = AgentProc::start_failing(&[("SILT_OBJECT_STORE__KIND", "s4")]);
    assert!(!status.success());
    assert!(
        log.contains("s4") && log.contains("local"),
        "accepted values listed: {log}"
    );

    let (status, log) = AgentProc::start_failing(&[("SILT_NODE_ID", "-5")]);
    assert!(!status.success());
    assert!(
        log.contains("node_id = -5") && log.contains("-1 to take the lowest free id"),
        "out-of-range value named with what is accepted: {log}"
    );

    let (status, log) = AgentProc::start_failing(&[("SILT_METADATA__LEASE_TTL_MS", "100")]);
    assert!(!status.success());
    assert!(
        log.contains("lease_ttl_ms = 100") && log.contains("2000"),
        "{log}"
    );

    let (status, log) = AgentProc::start_failing(&[("SILT_LOG_FORMAT", "xml")]);
    assert!(!status.success());
    assert!(
        log.contains("SILT_LOG_FORMAT") && log.contains("json"),
        "{log}"
    );
}

#[test]
fn environment_overrides_apply_and_json_logs_are_json() {
    let agent = AgentProc::start(&[
        ("SILT_TOPICS__NUM_PARTITIONS", "4"),
        ("SILT_LOG_FORMAT", "json"),
    ]);
    let c: BaseConsumer = config(&agent.bootstrap(), &[("allow.auto.create.topics", "true")])
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some("auto-created"), Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        md.topics()[0].partitions().len(),
        4,
        "SILT_TOPICS__NUM_PARTITIONS applies to auto-created topics"
    );
    let log = agent.log();
    let json_lines: Vec<&str> = log.lines().filter(|l| l.starts_with('{')).collect();
    assert!(!json_lines.is_empty(), "JSON log lines expected: {log}");
    for l in json_lines {
        assert!(
            l.ends_with('}') && l.contains("\"level\"") && l.contains("\"timestamp\""),
            "not a JSON log line: {l}"
        );
    }
}
