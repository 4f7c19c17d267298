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
