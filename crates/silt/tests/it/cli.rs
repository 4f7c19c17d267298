//! `silt admin` against a running agent: every command, its output, and its errors.

use std::process::Command;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::harness::AgentProc;
use crate::kafka::{config, producer, send};

/// Runs `silt admin -b <agent> args...`: (exit success, stdout, stderr).
fn admin(a: &AgentProc, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_silt"))
        .args(["admin", "--bootstrap", &a.bootstrap()])
        .args(args)
        .env_remove("SILT_ADMIN_BOOTSTRAP")
        .output()
        .expect("run silt admin");
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn ok(a: &AgentProc, args: &[&str]) -> String {
    let (success, out, err) = admin(a, args);
    assert!(success, "silt admin {args:?} failed: {err}");
    out
}

/// The whitespace-separated cells of the line starting with `first`.
fn line<'a>(out: &'a str, first: &str) -> Vec<&'a str> {
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&first))
        .unwrap_or_else(|| panic!("no line starting with {first:?} in:\n{out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_command_against_a_running_agent() {
    let agent = AgentProc::start(&[]);
    let b = agent.bootstrap();

    let out = ok(
        &agent,
        &[
            "topics",
            "create",
            "cli-orders",
            "-p",
            "3",
            "-c",
            "retention.ms=3600000",
        ],
    );
    assert!(
        out.starts_with("created topic cli-orders: 3 partitions"),
        "{out}"
    );
    let (success, _, err) = admin(&agent, &["topics", "create", "cli-orders", "-p", "3"]);
    assert!(!success);
    assert!(err.contains("TopicAlreadyExists"), "{err}");
    let (success, _, err) = admin(&agent, &["topics", "create", "bad", "-c", "retention.ms"]);
    assert!(!success);
    assert!(err.contains("key=value"), "{err}");

    let out = ok(&agent, &["topics", "list"]);
    assert_eq!(line(&out, "cli-orders")[1], "3", "{out}");

    let p = producer(&b, &[]);
    for i in 0..7 {
        send(&p, "cli-orders", 1, b"k", format!("v{i}").as_bytes()).await;
    }
    let out = ok(&agent, &["topics", "describe", "cli-orders"]);
    let p1 = line(&out, "1");
    assert_eq!(
        (p1[1], p1[3], p1[4]),
        ("0", "0", "7"),
        "leader, log start, high watermark:\n{out}"
    );
    assert!(
        out.contains("retention.ms = 3600000"),
        "explicit configs shown:\n{out}"
    );

    // Altered: a config set and one removed, and more partitions; shrinking is refused.
    let out = ok(
        &agent,
        &[
            "topics",
            "alter",
            "cli-orders",
            "-c",
            "max.message.bytes=4096",
            "--delete-config",
            "retention.ms",
            "-p",
            "4",
        ],
    );
    assert!(out.contains("cli-orders: 4 partitions"), "{out}");
    let out = ok(&agent, &["topics", "describe", "cli-orders"]);
    assert!(
        out.contains("max.message.bytes = 4096") && !out.contains("retention.ms = "),
        "{out}"
    );
    assert_eq!(line(&ok(&agent, &["topics", "list"]), "cli-orders")[1], "4");
    let (success, _, err) = admin(&agent, &["topics", "alter", "cli-orders", "-p", "2"]);
    assert!(!success);
    assert!(
        err.contains("InvalidPartitions") && err.contains("only grow"),
        "{err}"
    );
    let (success, _, err) = admin(&agent, &["topics", "alter", "cli-orders"]);
    assert!(!success && err.contains("nothing to change"), "{err}");

    // Cluster-wide defaults: none at first; set, listed, refused when read-only, removed.
    assert!(ok(&agent, &["defaults"]).contains("no cluster-wide defaults"));
    ok(
        &agent,
        &["defaults", "set", "-c", "log.retention.ms=3600000"],
    );
    assert_eq!(ok(&agent, &["defaults"]), "log.retention.ms=3600000\n");
    let (success, _, err) = admin(&agent, &["defaults", "set", "-c", "num.io.threads=4"]);
    assert!(
        !success && err.contains("num.io.threads") && err.contains("read at start"),
        "{err}"
    );
    ok(
        &agent,
        &["defaults", "set", "--delete-config", "log.retention.ms"],
    );
    assert!(ok(&agent, &["defaults"]).contains("no cluster-wide defaults"));

    let out = ok(&agent, &["agents"]);
    let me = line(&out, "0");
    assert_eq!(me[1], b);
    assert_eq!((me[2], me[3]), ("yes", "4"), "{out}");

    // A group that committed 4 of partition 1's 7 records lags by 3.
    let c: BaseConsumer = config(&b, &[("group.id", "cli-group")]).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("cli-orders", 1, Offset::Offset(4))
        .unwrap();
    c.commit(&tpl, CommitMode::Sync).unwrap();
    let out = ok(&agent, &["groups", "list"]);
    assert_eq!(line(&out, "cli-group")[1], "Empty", "{out}");
    let out = ok(&agent, &["groups", "describe", "cli-group"]);
    let row = line(&out, "cli-orders");
    assert_eq!(
        &row[1..],
        ["1", "4", "7", "3"],
        "partition, committed, end, lag:\n{out}"
    );
    assert!(out.contains("total lag 3"), "{out}");
    drop(c);
    let out = ok(&agent, &["groups", "delete", "cli-group"]);
    assert_eq!(out.trim(), "deleted group cli-group");
    let out = ok(&agent, &["groups", "list"]);
    assert!(!out.contains("cli-group"), "{out}");

    let out = ok(&agent, &["topics", "delete", "cli-orders"]);
    assert_eq!(out.trim(), "deleted topic cli-orders");
    let (success, _, err) = admin(&agent, &["topics", "describe", "cli-orders"]);
    assert!(!success);
    assert!(err.contains("UnknownTopicOrPartition"), "{err}");

    let admin_addr = format!("127.0.0.1:{}", agent.admin_port);
    let out = ok(&agent, &["archive", "status", "--admin", &admin_addr]);
    assert!(out.contains("no partition is being archived"), "{out}");

    let dead = Command::new(env!("CARGO_BIN_EXE_silt"))
        .args(["admin", "--bootstrap", "127.0.0.1:1", "topics", "list"])
        .output()
        .unwrap();
    assert!(!dead.status.success());
    let err = String::from_utf8(dead.stderr).unwrap();
    assert!(
        err.contains("127.0.0.1:1") && err.contains("--bootstrap"),
        "says what it tried and what to do: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_levels_change_at_run_time() {
    let agent = AgentProc::start(&[]);
    let b = agent.bootstrap();
    assert_eq!(agent.http_get("/loglevel").trim(), "info");
    let p = producer(&b, &[]);
    send(&p, "quiet", 0, b"k", b"v").await;
    assert!(
        !agent.log().contains("flush committed"),
        "debug is off at info"
    );
    let (code, body) = agent.http(
        "PUT",
        "/loglevel?filter=silt_agent%3A%3Aflush%3Ddebug%2Cinfo",
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        agent.http_get("/loglevel").trim(),
        "silt_agent::flush=debug,info"
    );
    send(&p, "quiet", 0, b"k", b"v").await;
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        agent.log().contains("flush committed"),
        "debug lines of the module appear"
    );
    let (code, body) = agent.http("PUT", "/loglevel?filter=%5Bnot-a-filter");
    assert_eq!(code, 400);
    assert!(body.contains("not a valid log filter"), "{body}");
    assert_eq!(
        agent.http_get("/loglevel").trim(),
        "silt_agent::flush=debug,info",
        "a bad filter changes nothing"
    );
}

/// With `admin_token` set, changing the log level needs it as a bearer token (issue 12).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_changes_need_the_admin_token_once_set() {
    let agent = AgentProc::start(&[("SILT_ADMIN_TOKEN", "t0ken-for-tests")]);
    let put = "/loglevel?filter=debug";
    let (code, body) = agent.http("PUT", put);
    assert_eq!(code, 401, "{body}");
    let (code, _) = agent.http_with("PUT", put, "Authorization: Bearer wrong-token-here\r\n");
    assert_eq!(code, 401);
    let (code, body) = agent.http_with("PUT", put, "Authorization: Bearer t0ken-for-tests\r\n");
    assert_eq!(code, 200, "{body}");
    assert_eq!(agent.http_get("/loglevel").trim(), "debug");
    assert!(
        !agent.log().contains("t0ken-for-tests"),
        "the token is never logged"
    );
}

/// `silt admin users` and `acls` manage who may do what; a librdkafka client (SASL PLAIN over
/// the rdkafka crate) sees the effect: allowed, refused, revoked, logged out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_acls_from_the_command_line_gate_a_sasl_client() {
    let port = crate::harness::free_port();
    let listeners = format!(
        r#"[{{name="SASL",listen="127.0.0.1:{port}",security_protocol="SASL_PLAINTEXT"}}]"#
    );
    let agent = AgentProc::start(&[
        ("SILT_LISTENERS", listeners.as_str()),
        ("SILT_AUTHORIZATION__ENABLED", "true"),
        ("SILT_AUTHORIZATION__SUPER_USERS", r#"["User:ANONYMOUS"]"#),
        ("SILT_SASL__FAILURE_DELAY_MS", "100"),
    ]);
    let sasl = format!("127.0.0.1:{port}");
    crate::kafka::create_topic(&agent.bootstrap(), "cli-sec", 1, &[]).await;
    crate::kafka::create_topic(&agent.bootstrap(), "cli-sec-other", 1, &[]).await;
    let out = ok(&agent, &["users", "set", "alice", "--password", "pw-alice"]);
    assert!(out.contains("SCRAM-SHA-256 and SCRAM-SHA-512"), "{out}");
    let out = ok(&agent, &["users", "list"]);
    assert_eq!(line(&out, "alice")[1], "SCRAM-SHA-256");
    ok(
        &agent,
        &[
            "acls",
            "add",
            "--principal",
            "User:alice",
            "--operation",
            "write",
            "--topic",
            "cli-sec",
        ],
    );
    let out = ok(&agent, &["acls", "list"]);
    assert_eq!(
        line(&out, "topic:cli-sec"),
        [
            "topic:cli-sec",
            "literal",
            "User:alice",
            "*",
            "Write",
            "Allow"
        ]
    );
    let conf = [
        ("security.protocol", "SASL_PLAINTEXT"),
        ("sasl.mechanism", "PLAIN"),
        ("sasl.username", "alice"),
        ("sasl.password", "pw-alice"),
        ("message.timeout.ms", "10000"),
    ];
    let p = producer(&sasl, &conf);
    assert!(send(&p, "cli-sec", 0, b"k", b"allowed").await >= 0);
    let refused = p
        .send(
            rdkafka::producer::FutureRecord::to("cli-sec-other")
                .partition(0)
                .payload(b"refused".as_slice())
                .key(b"k".as_slice()),
            Duration::from_secs(10),
        )
        .await;
    assert!(
        matches!(
            &refused,
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::TopicAuthorizationFailed
                ),
                _
            ))
        ),
        "{refused:?}"
    );
    let out = ok(
        &agent,
        &[
            "acls",
            "remove",
            "--principal",
            "User:alice",
            "--operation",
            "write",
            "--topic",
            "cli-sec",
        ],
    );
    assert_eq!(out.trim(), "removed 1 ACL binding(s)");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = p
            .send(
                rdkafka::producer::FutureRecord::to("cli-sec")
                    .partition(0)
                    .payload(b"after".as_slice())
                    .key(b"k".as_slice()),
                Duration::from_secs(10),
            )
            .await;
        if r.is_err() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the removed ACL still allowed writes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ok(&agent, &["users", "delete", "alice"]);
    assert!(!ok(&agent, &["users", "list"]).contains("alice"));
    let (success, _, err) = admin(&agent, &["users", "delete", "alice"]);
    assert!(!success && err.contains("ResourceNotFound"), "{err}");
    let (success, _, err) = admin(
        &agent,
        &[
            "acls",
            "add",
            "--principal",
            "alice",
            "--operation",
            "read",
            "--topic",
            "t",
        ],
    );
    assert!(!success && err.contains("InvalidRequest"), "{err}");
    assert!(agent.log().contains("SCRAM credential changed"));
}
