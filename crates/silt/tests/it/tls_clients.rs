//! The `rdkafka` crate (librdkafka built with OpenSSL) against secured listeners: SASL_SSL with
//! PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 and OAUTHBEARER, and mTLS: admin calls (not over
//! OAUTHBEARER, see below), an idempotent producer and a consumer group; a wrong password and a refused token get librdkafka's
//! authentication error; a changed client CA bundle admits new clients without a restart.
//! Certificates and tokens are made per test with the `openssl` command.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::{ClientContext, OAuthToken};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Message;

use crate::harness::{free_port, AgentProc};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (scripts/test installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Test certificates: CAs, a server certificate for 127.0.0.1 and client certificates.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let pki = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        pki.ca("ca");
        let d = pki.path();
        std::fs::write(
            d.join("san.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "san.ext",
            ],
        );
        std::fs::write(
            d.join("client.ext"),
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        pki
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn file(&self, name: &str) -> String {
        self.path().join(name).display().to_string()
    }

    /// A new CA: `{name}.pem` and `{name}.key`.
    fn ca(&self, name: &str) {
        let (pem, key) = (format!("{name}.pem"), format!("{name}.key"));
        openssl(
            self.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &pem,
                "-days",
                "2",
                "-subj",
                &format!("/CN=Silt Test {name}"),
            ],
        );
    }

    /// A client certificate with common name `cn` signed by CA `ca`: (certificate, key).
    fn client(&self, ca: &str, cn: &str) -> (String, String) {
        let (pem, key, csr) = (
            format!("{cn}.pem"),
            format!("{cn}.key"),
            format!("{cn}.csr"),
        );
        openssl(
            self.path(),
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/O=Example/CN={cn}"),
            ],
        );
        openssl(
            self.path(),
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                "client.ext",
            ],
        );
        (self.file(&pem), self.file(&key))
    }
}

/// An agent with one secured listener besides its loopback PLAINTEXT one (for `silt admin`,
/// whose `User:ANONYMOUS` is a super user).
fn secured_agent(pki: &Pki, protocol: &str, extra: &[(&str, &str)]) -> (AgentProc, String) {
    let port = free_port();
    let listeners =
        format!(r#"[{{name="SECURE",listen="127.0.0.1:{port}",security_protocol="{protocol}"}}]"#);
    let (cert, key, ca) = (
        pki.file("server.pem"),
        pki.file("server.key"),
        pki.file("ca.pem"),
    );
    let mut env = vec![
        ("SILT_LISTENERS", listeners.as_str()),
        ("SILT_TLS__CERT", cert.as_str()),
        ("SILT_TLS__KEY", key.as_str()),
        ("SILT_TLS__CLIENT_CA", ca.as_str()),
        ("SILT_SASL__FAILURE_DELAY_MS", "100"),
        ("SILT_AUTHORIZATION__ENABLED", "true"),
        ("SILT_AUTHORIZATION__SUPER_USERS", r#"["User:ANONYMOUS"]"#),
    ];
    env.extend_from_slice(extra);
    (AgentProc::start(&env), format!("127.0.0.1:{port}"))
}

fn silt_admin(agent: &AgentProc, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_silt"))
        .args(["admin", "--bootstrap", &agent.bootstrap()])
        .args(args)
        .env_remove("SILT_ADMIN_BOOTSTRAP")
        .output()
        .expect("run silt admin");
    assert!(
        out.status.success(),
        "silt admin {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn allow(agent: &AgentProc, principal: &str, operation: &str, resource: &[&str]) {
    let mut args = vec![
        "acls",
        "add",
        "--principal",
        principal,
        "--operation",
        operation,
    ];
    args.extend_from_slice(resource);
    silt_admin(agent, &args);
}

/// librdkafka's errors as the context saw them: (code, reason).
type Errors = Arc<Mutex<Vec<(Option<RDKafkaErrorCode>, String)>>>;

/// A client context that keeps librdkafka's errors and hands out a bearer token.
#[derive(Clone, Default)]
struct Ctx {
    errors: Errors,
    token: Option<String>,
}

impl Ctx {
    fn authentication_failed(&self) -> bool {
        self.errors
            .lock()
            .unwrap()
            .iter()
            .any(|(c, _)| *c == Some(RDKafkaErrorCode::Authentication))
    }
}

impl ClientContext for Ctx {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn error(&self, error: KafkaError, reason: &str) {
        self.errors
            .lock()
            .unwrap()
            .push((error.rdkafka_error_code(), reason.to_string()));
    }

    fn generate_oauth_token(
        &self,
        _config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        let token = self.token.clone().ok_or("no token in this test")?;
        Ok(OAuthToken {
            token,
            principal_name: "svc-orders".into(),
            lifetime_ms: now_ms() + 300_000,
        })
    }
}

impl ConsumerContext for Ctx {}
impl ProducerContext for Ctx {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn client_config(bootstrap: &str, conf: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("log_level", "3")
        .set("socket.timeout.ms", "10000")
        .set("message.timeout.ms", "20000");
    for (k, v) in conf {
        c.set(*k, *v);
    }
    c
}

/// Through `conf`: creates `topic` and reads its configs (admin calls), then [`produce_and_consume`].
async fn admin_produce_and_consume(
    bootstrap: &str,
    conf: &[(&str, &str)],
    ctx: Ctx,
    topic: &str,
    group: &str,
    n: usize,
) {
    let admin: AdminClient<Ctx> = client_config(bootstrap, conf)
        .create_with_context(ctx.clone())
        .expect("admin client");
    let created = admin
        .create_topics(
            &[NewTopic::new(topic, 2, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("CreateTopics");
    assert!(created[0].is_ok(), "create {topic}: {:?}", created[0]);
    let described = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .expect("DescribeConfigs");
    let configs = described[0].as_ref().expect("topic configs");
    assert!(
        configs.get("retention.ms").is_some(),
        "{:?}",
        configs.entries
    );
    produce_and_consume(bootstrap, conf, ctx, topic, group, n).await;
}

/// Through `conf`: produces `n` records to `topic` with an idempotent producer, reads them back
/// in consumer group `group`, commits and reads the committed offsets back.
async fn produce_and_consume(
    bootstrap: &str,
    conf: &[(&str, &str)],
    ctx: Ctx,
    topic: &str,
    group: &str,
    n: usize,
) {
    let mut pconf = conf.to_vec();
    pconf.extend_from_slice(&[("enable.idempotence", "true"), ("linger.ms", "5")]);
    let p: FutureProducer<Ctx> = client_config(bootstrap, &pconf)
        .create_with_context(ctx.clone())
        .expect("producer");
    let mut sent = Vec::new();
    for i in 0..n {
        let v = format!("{group}-{i}");
        let d = p
            .send(
                FutureRecord::to(topic)
                    .key(v.as_bytes())
                    .payload(v.as_bytes()),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap_or_else(|e| panic!("delivery through {conf:?}: {e}"));
        assert!(d.offset >= 0);
        sent.push(v);
    }

    let mut cconf = conf.to_vec();
    cconf.extend_from_slice(&[
        ("group.id", group),
        ("auto.offset.reset", "earliest"),
        ("enable.auto.commit", "false"),
    ]);
    let c: BaseConsumer<Ctx> = client_config(bootstrap, &cconf)
        .create_with_context(ctx.clone())
        .expect("consumer");
    c.subscribe(&[topic]).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < n && Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                got.push(String::from_utf8(m.payload().unwrap().to_vec()).unwrap());
            }
            Some(Err(e)) => panic!("consumer error through {conf:?}: {e}"),
            None => {}
        }
    }
    got.sort();
    sent.sort();
    assert_eq!(got, sent, "the group read every record once");
    c.commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
        .expect("commit");
    let committed = c.committed(Duration::from_secs(10)).expect("OffsetFetch");
    let total: i64 = committed
        .elements()
        .iter()
        .map(|e| e.offset().to_raw().unwrap_or(0).max(0))
        .sum();
    assert_eq!(total, n as i64, "committed offsets cover every record");
    assert!(
        !ctx.authentication_failed(),
        "{:?}",
        ctx.errors.lock().unwrap()
    );
}

/// Asks for metadata through `conf` and waits for librdkafka's authentication error.
fn refused(bootstrap: &str, conf: &[(&str, &str)], ctx: Ctx) -> bool {
    let c: BaseConsumer<Ctx> = client_config(bootstrap, conf)
        .create_with_context(ctx.clone())
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let _ = c.fetch_metadata(None, Duration::from_millis(500));
        // Errors reach the context as events on the main queue, which poll serves.
        let _ = c.poll(Duration::from_millis(100));
        if ctx.authentication_failed() {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdkafka_over_sasl_ssl_with_plain_and_both_scram_mechanisms() {
    let pki = Pki::new();
    let (agent, secure) = secured_agent(&pki, "SASL_SSL", &[]);
    silt_admin(&agent, &["users", "set", "alice", "--password", "pw-alice"]);
    allow(
        &agent,
        "User:alice",
        "all",
        &["--topic", "sasl-", "--prefixed"],
    );
    allow(
        &agent,
        "User:alice",
        "read",
        &["--group", "g-", "--prefixed"],
    );
    allow(&agent, "User:alice", "create", &["--cluster"]);
    let ca = pki.file("ca.pem");
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let conf = [
            ("security.protocol", "SASL_SSL"),
            ("ssl.ca.location", ca.as_str()),
            ("sasl.mechanism", mechanism),
            ("sasl.username", "alice"),
            ("sasl.password", "pw-alice"),
        ];
        let tag = mechanism.to_ascii_lowercase();
        admin_produce_and_consume(
            &secure,
            &conf,
            Ctx::default(),
            &format!("sasl-{tag}"),
            &format!("g-{tag}"),
            40,
        )
        .await;
        let mut wrong = conf;
        wrong[4] = ("sasl.password", "not-the-password");
        assert!(
            refused(&secure, &wrong, Ctx::default()),
            "{mechanism}: a wrong password is refused"
        );
    }
    let log = agent.log();
    assert!(
        log.contains("SASL authentication failed"),
        "failures are logged"
    );
}

/// A JWT issuer made with openssl: an RSA key, its JWKS file, RS256-signed tokens.
pub(crate) struct Issuer {
    pub(crate) dir: PathBuf,
}

fn b64url(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &x)| n | (x as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

impl Issuer {
    pub(crate) fn new(dir: PathBuf) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        openssl(&dir, &["genrsa", "-out", "jwt.key", "2048"]);
        let out = Command::new("openssl")
            .args(["rsa", "-in", "jwt.key", "-noout", "-modulus"])
            .current_dir(&dir)
            .output()
            .unwrap();
        let hex = String::from_utf8(out.stdout).unwrap();
        let hex = hex.trim().split_once('=').unwrap().1.to_string();
        let n: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        std::fs::write(
            dir.join("jwks.json"),
            format!(
                r#"{{"keys":[{{"kty":"RSA","kid":"k1","alg":"RS256","n":"{}","e":"AQAB"}}]}}"#,
                b64url(&n)
            ),
        )
        .unwrap();
        Self { dir }
    }

    pub(crate) fn token(&self, claims: &str) -> String {
        let head = b64url(br#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#);
        let signed = format!("{head}.{}", b64url(claims.as_bytes()));
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign", "jwt.key"])
            .current_dir(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(signed.as_bytes())
            .unwrap();
        let sig = child.wait_with_output().unwrap().stdout;
        format!("{signed}.{}", b64url(&sig))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdkafka_over_sasl_ssl_with_oauthbearer_tokens() {
    let pki = Pki::new();
    let issuer = Issuer::new(pki.path().join("jwt"));
    let jwks = issuer.dir.join("jwks.json").display().to_string();
    let (agent, secure) = secured_agent(
        &pki,
        "SASL_SSL",
        &[
            (
                "SILT_SASL__MECHANISMS",
                r#"["SCRAM-SHA-256","OAUTHBEARER"]"#,
            ),
            ("SILT_SASL__OAUTHBEARER__JWKS_FILE", jwks.as_str()),
            ("SILT_SASL__OAUTHBEARER__ISSUER", "https://issuer.test"),
            ("SILT_SASL__OAUTHBEARER__AUDIENCE", "silt"),
        ],
    );
    allow(
        &agent,
        "User:svc-orders",
        "all",
        &["--topic", "oauth-", "--prefixed"],
    );
    allow(&agent, "User:svc-orders", "read", &["--group", "g-oauth"]);
    // The topic is made through the loopback listener: the rdkafka crate's AdminClient polls
    // only its own queue, so it never serves librdkafka's OAUTHBEARER token-refresh event (admin
    // calls over OAUTHBEARER are covered by confluent-kafka in tests/python/test_security.py).
    crate::kafka::create_topic(&agent.bootstrap(), "oauth-orders", 2, &[]).await;
    let ca = pki.file("ca.pem");
    let conf = [
        ("security.protocol", "SASL_SSL"),
        ("ssl.ca.location", ca.as_str()),
        ("sasl.mechanism", "OAUTHBEARER"),
    ];
    let exp = now_ms() / 1000 + 300;
    let claims = |iss: &str, exp: i64| {
        format!(r#"{{"sub":"svc-orders","iss":"{iss}","aud":"silt","exp":{exp}}}"#)
    };
    let good = Ctx {
        token: Some(issuer.token(&claims("https://issuer.test", exp))),
        ..Ctx::default()
    };
    produce_and_consume(&secure, &conf, good, "oauth-orders", "g-oauth", 30).await;
    for (token, why) in [
        (
            issuer.token(&claims("https://other.test", exp)),
            "wrong issuer",
        ),
        (
            issuer.token(&claims("https://issuer.test", exp - 600)),
            "the token expired",
        ),
    ] {
        let ctx = Ctx {
            token: Some(token),
            ..Ctx::default()
        };
        assert!(refused(&secure, &conf, ctx), "{why}: refused");
        assert!(agent.log().contains(why), "{why} is logged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdkafka_over_mtls_and_a_client_ca_rotated_without_restart() {
    let pki = Pki::new();
    let (alice_cert, alice_key) = pki.client("ca", "alice");
    pki.ca("ca2");
    let (bob_cert, bob_key) = pki.client("ca2", "bob");
    let (agent, secure) = secured_agent(
        &pki,
        "SSL",
        &[
            ("SILT_TLS__CLIENT_AUTH", "required"),
            ("SILT_TLS__PRINCIPAL_FROM", "cn"),
            ("SILT_TLS__RELOAD_INTERVAL_MS", "200"),
        ],
    );
    allow(
        &agent,
        "User:alice",
        "all",
        &["--topic", "mtls-", "--prefixed"],
    );
    allow(&agent, "User:alice", "read", &["--group", "g-mtls"]);
    allow(&agent, "User:alice", "create", &["--cluster"]);
    let ca = pki.file("ca.pem");
    let tls = |cert: &str, key: &str| {
        vec![
            ("security.protocol", "SSL".to_string()),
            ("ssl.ca.location", ca.clone()),
            ("ssl.certificate.location", cert.to_string()),
            ("ssl.key.location", key.to_string()),
        ]
    };
    let alice = tls(&alice_cert, &alice_key);
    let alice: Vec<(&str, &str)> = alice.iter().map(|(k, v)| (*k, v.as_str())).collect();
    admin_produce_and_consume(&secure, &alice, Ctx::default(), "mtls-a", "g-mtls", 30).await;

    // Bob's certificate comes from a CA the agent does not trust yet: no handshake.
    let bob = tls(&bob_cert, &bob_key);
    let bob: Vec<(&str, &str)> = bob.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let metadata_of_bob = || -> Result<Option<RDKafkaErrorCode>, KafkaError> {
        let c: BaseConsumer = client_config(&secure, &bob).create().unwrap();
        let md = c.fetch_metadata(Some("mtls-a"), Duration::from_secs(3))?;
        Ok(md.topics()[0].error().map(RDKafkaErrorCode::from))
    };
    assert!(metadata_of_bob().is_err(), "an untrusted client CA");

    // Trust both CAs: the next handshakes verify against the new bundle.
    let bundle = [
        std::fs::read_to_string(pki.path().join("ca.pem")).unwrap(),
        std::fs::read_to_string(pki.path().join("ca2.pem")).unwrap(),
    ]
    .concat();
    std::fs::write(pki.path().join("bundle.tmp"), bundle).unwrap();
    std::fs::rename(pki.path().join("bundle.tmp"), pki.path().join("ca.pem")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let seen = loop {
        if let Ok(topic_error) = metadata_of_bob() {
            break topic_error;
        }
        assert!(
            Instant::now() < deadline,
            "bob was not admitted after the CA bundle changed"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // Bob is himself (not User:ANONYMOUS, a super user here): the topic is not his to see.
    assert_eq!(seen, Some(RDKafkaErrorCode::TopicAuthorizationFailed));
    assert!(agent.log().contains("TLS certificate reloaded"));
    // Alice's clients still work (through the new bundle, which still holds her CA).
    admin_produce_and_consume(&secure, &alice, Ctx::default(), "mtls-b", "g-mtls", 10).await;
}
