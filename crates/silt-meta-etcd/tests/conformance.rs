//! The metadata-store conformance suite against a real etcd (Debian's `etcd-server`), started
//! for the test on free loopback ports.

use std::time::{Duration, Instant};

use silt_meta_etcd::EtcdKv;
use silt_testkit::{free_port_below, Etcd};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_backend_passes_the_conformance_suite() {
    let etcd = Etcd::start();
    let deadline = Instant::now() + Duration::from_secs(30);
    let kv = loop {
        match EtcdKv::connect(std::slice::from_ref(&etcd.url), Duration::from_secs(2)).await {
            Ok(kv) => break kv,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("etcd never came up: {e}"),
        }
    };
    // etcd's leases run on its own clock: advance by sleeping (with a margin for its expiry
    // checks, which run every 500 ms).
    silt_meta::conformance::run_all(&kv, &|d| std::thread::sleep(d + Duration::from_millis(700)))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_etcd_is_a_clear_error() {
    let port = free_port_below(u16::MAX);
    let err = EtcdKv::connect(
        &[format!("http://127.0.0.1:{port}")],
        Duration::from_millis(500),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(&format!("127.0.0.1:{port}")),
        "the error names what was tried: {err}"
    );
}

/// With authentication on in etcd, the backend connects as a user, passes the whole suite —
/// across token expiries (`--auth-token-ttl=2`: the suite runs far longer) — and a connection
/// without credentials is refused with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_with_authentication_passes_the_conformance_suite_as_a_user() {
    let etcd = Etcd::start_args(false, &["--auth-token-ttl=2"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut admin = loop {
        match etcd_client::Client::connect([etcd.url.as_str()], None).await {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("etcd never came up: {e}"),
        }
    };
    admin.user_add("root", "root-pw", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.user_add("silt", "silt-pw", None).await.unwrap();
    admin.role_add("silt").await.unwrap();
    // Least privilege: Silt's keys (and the suite's own, under /c/).
    for prefix in ["/silt/", "/c/"] {
        admin
            .role_grant_permission(
                "silt",
                etcd_client::Permission::read_write(prefix).with_prefix(),
            )
            .await
            .unwrap();
    }
    admin.user_grant_role("silt", "silt").await.unwrap();
    admin.auth_enable().await.unwrap();

    let url = std::slice::from_ref(&etcd.url);
    let err = match EtcdKv::connect(url, Duration::from_secs(2)).await {
        Ok(_) => panic!("a connection without credentials was let in"),
        Err(e) => e.to_string(),
    };
    let lower = err.to_lowercase();
    assert!(
        ["permission", "auth", "token", "user"]
            .iter()
            .any(|w| lower.contains(w)),
        "the error says why: {err}"
    );
    let wrong = EtcdKv::connect_as(url, Duration::from_secs(2), Some(("silt", "nope"))).await;
    assert!(wrong.is_err(), "a wrong password was let in");
    let kv = EtcdKv::connect_as(url, Duration::from_secs(2), Some(("silt", "silt-pw")))
        .await
        .unwrap();
    silt_meta::conformance::run_all(&kv, &|d| std::thread::sleep(d + Duration::from_millis(700)))
        .await;
    // A key outside the role's prefixes is a permanent refusal that says what to grant, not an
    // outage to retry.
    use silt_meta::MetaKv as _;
    let err = kv
        .txn(silt_meta::Txn {
            compares: vec![],
            success: vec![silt_meta::Op::put("/elsewhere/k", "v")],
            failure: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.class(), silt_meta::ErrorClass::Permanent, "{err}");
    assert!(err.to_string().contains("/silt/"), "{err}");
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (apt-get install openssl; scripts/test does)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// etcd over TLS with client certificates: the backend connects with the CA and its client
/// certificate and passes the whole suite; without a client certificate, or trusting another
/// CA, it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_client_certificates_passes_the_conformance_suite() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let ext = |name: &str, text: &str| std::fs::write(p.join(name), text).unwrap();
    ext(
        "server.ext",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
    );
    ext("client.ext", "extendedKeyUsage=clientAuth\n");
    for ca in ["ca", "other-ca"] {
        openssl(
            p,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-days",
                "2",
                "-subj",
                &format!("/CN={ca}"),
            ],
        );
    }
    for (name, ext) in [("server", "server.ext"), ("client", "client.ext")] {
        openssl(
            p,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            p,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                ext,
            ],
        );
    }
    let etcd = Etcd::start_tls(
        &p.join("server.pem"),
        &p.join("server.key"),
        &p.join("ca.pem"),
    );
    let read = |n: &str| std::fs::read(p.join(n)).unwrap();
    let tls = silt_meta_etcd::EtcdTls {
        ca_pem: read("ca.pem"),
        identity_pem: Some((read("client.pem"), read("client.key"))),
    };
    let url = std::slice::from_ref(&etcd.url);
    let no_cert = silt_meta_etcd::EtcdTls {
        ca_pem: read("ca.pem"),
        identity_pem: None,
    };
    assert!(
        EtcdKv::connect_with(url, Duration::from_secs(2), None, Some(&no_cert))
            .await
            .is_err(),
        "a client without a certificate was let in"
    );
    let wrong_ca = silt_meta_etcd::EtcdTls {
        ca_pem: read("other-ca.pem"),
        ..tls.clone()
    };
    assert!(
        EtcdKv::connect_with(url, Duration::from_secs(2), None, Some(&wrong_ca))
            .await
            .is_err(),
        "a server certificate from an untrusted CA was accepted"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let kv = loop {
        match EtcdKv::connect_with(url, Duration::from_secs(2), None, Some(&tls)).await {
            Ok(kv) => break kv,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("could not connect over TLS: {e}"),
        }
    };
    assert!(
        !format!("{tls:?}").contains("PRIVATE KEY"),
        "the key is never printed"
    );
    silt_meta::conformance::run_all(&kv, &|d| std::thread::sleep(d + Duration::from_millis(700)))
        .await;
}
