//! Security over raw Kafka frames: producer-id ownership between principals.

use std::process::Command;

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::harness::AgentProc;
use crate::protocol::{batch, init_producer_id, metadata, produce_result, Conn};

fn login(addr: &str, user: &str, password: &str) -> Conn {
    let mut c = Conn::to(addr);
    let h: SaslHandshakeResponse = c.call(
        ApiKey::SaslHandshake,
        1,
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
    );
    assert_eq!(h.error_code, 0);
    let a: SaslAuthenticateResponse = c.call(
        ApiKey::SaslAuthenticate,
        2,
        &SaslAuthenticateRequest::default()
            .with_auth_bytes(format!("\0{user}\0{password}").into_bytes().into()),
    );
    assert_eq!(a.error_code, 0, "{:?}", a.error_message);
    c
}

/// A client cannot append as, or fence, an idempotent producer of another principal by using
/// its producer id (ids are sealed to the principal they were issued to).
#[test]
fn producer_ids_belong_to_the_principal_they_were_issued_to() {
    let port = crate::harness::free_port();
    let listeners = format!(
        r#"[{{name="SASL",listen="127.0.0.1:{port}",security_protocol="SASL_PLAINTEXT"}}]"#
    );
    let agent = AgentProc::start(&[("SILT_LISTENERS", listeners.as_str())]);
    for (user, pw) in [("alice", "pw-a"), ("mallory", "pw-m")] {
        let out = Command::new(env!("CARGO_BIN_EXE_silt"))
            .args([
                "admin",
                "--bootstrap",
                &agent.bootstrap(),
                "users",
                "set",
                user,
                "--password",
                pw,
            ])
            .env_remove("SILT_ADMIN_BOOTSTRAP")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let addr = format!("127.0.0.1:{port}");
    let mut alice = login(&addr, "alice", "pw-a");
    let mut mallory = login(&addr, "mallory", "pw-m");
    metadata(&mut alice, &["owned"], 12);
    let pid = init_producer_id(&mut alice);
    assert!(pid >= 1 << 31, "sealed ids are large: {pid}");
    assert_eq!(
        produce_result(&mut alice, "owned", batch(2, pid, 0, 0)),
        (0, 0)
    );
    // Mallory uses alice's id: the next sequence, and a higher epoch (which would fence alice).
    assert_eq!(
        produce_result(&mut mallory, "owned", batch(1, pid, 0, 2)).0,
        59,
        "UNKNOWN_PRODUCER_ID"
    );
    assert_eq!(
        produce_result(&mut mallory, "owned", batch(1, pid, 1, 0)).0,
        59,
        "UNKNOWN_PRODUCER_ID"
    );
    // Alice goes on undisturbed: nothing of mallory's took an offset or moved her epoch.
    assert_eq!(
        produce_result(&mut alice, "owned", batch(1, pid, 0, 2)),
        (0, 2)
    );
    // Mallory's own id works for mallory; an id never issued does not.
    let mine = init_producer_id(&mut mallory);
    assert_eq!(
        produce_result(&mut mallory, "owned", batch(1, mine, 0, 0)),
        (0, 3)
    );
    assert_eq!(
        produce_result(&mut mallory, "owned", batch(1, mine + 1, 0, 0)).0,
        59
    );
    // Non-idempotent batches (producer id -1) are not affected.
    assert_eq!(
        produce_result(&mut mallory, "owned", batch(1, -1, -1, -1)),
        (0, 4)
    );
    assert!(agent
        .log()
        .contains("producer id issued to another principal"));
}

/// OAUTHBEARER (RFC 7628 §3.2.2): a token that does not validate is answered with the error
/// challenge `{"status":"invalid_token"}`; the client's `%x01` then gets
/// SASL_AUTHENTICATION_FAILED and the connection is closed, as Kafka does. A valid token logs in
/// with an empty final message.
#[test]
fn a_refused_bearer_token_gets_the_error_challenge_first() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = crate::tls_clients::Issuer::new(dir.path().to_path_buf());
    let jwks = issuer.dir.join("jwks.json").display().to_string();
    let port = crate::harness::free_port();
    let listeners = format!(
        r#"[{{name="SASL",listen="127.0.0.1:{port}",security_protocol="SASL_PLAINTEXT"}}]"#
    );
    let _agent = AgentProc::start(&[
        ("SILT_LISTENERS", listeners.as_str()),
        ("SILT_SASL__MECHANISMS", r#"["OAUTHBEARER"]"#),
        ("SILT_SASL__OAUTHBEARER__JWKS_FILE", jwks.as_str()),
        ("SILT_SASL__FAILURE_DELAY_MS", "50"),
    ]);
    let addr = format!("127.0.0.1:{port}");
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    let start = |token: &str| {
        let mut c = Conn::to(&addr);
        let h: SaslHandshakeResponse = c.call(
            ApiKey::SaslHandshake,
            1,
            &SaslHandshakeRequest::default()
                .with_mechanism(StrBytes::from_static_str("OAUTHBEARER")),
        );
        assert_eq!(h.error_code, 0);
        let a: SaslAuthenticateResponse = c.call(
            ApiKey::SaslAuthenticate,
            2,
            &SaslAuthenticateRequest::default().with_auth_bytes(
                format!("n,,\x01auth=Bearer {token}\x01\x01")
                    .into_bytes()
                    .into(),
            ),
        );
        (c, a)
    };
    let good = issuer.token(&format!(r#"{{"sub":"svc","exp":{exp}}}"#));
    let (_, a) = start(&good);
    assert_eq!(
        (a.error_code, a.auth_bytes.len()),
        (0, 0),
        "{:?}",
        a.error_message
    );
    assert!(
        a.session_lifetime_ms > 0,
        "the token's expiry bounds the session"
    );

    let expired = issuer.token(&format!(r#"{{"sub":"svc","exp":{}}}"#, exp - 600));
    let (mut c, a) = start(&expired);
    assert_eq!(a.error_code, 0);
    assert_eq!(&a.auth_bytes[..], br#"{"status":"invalid_token"}"#);
    let f: SaslAuthenticateResponse = c.call(
        ApiKey::SaslAuthenticate,
        2,
        &SaslAuthenticateRequest::default().with_auth_bytes(bytes::Bytes::from_static(b"\x01")),
    );
    assert_eq!(f.error_code, 58, "SASL_AUTHENTICATION_FAILED");
    assert!(c.closed(), "the connection is closed after a failed login");
}
