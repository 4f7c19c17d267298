//! The metadata-store conformance suite against a real etcd (Debian's `etcd-server`), started
//! for the test on free loopback ports.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use silt_meta_etcd::EtcdKv;

struct Etcd {
    child: Child,
    _dir: tempfile::TempDir,
    url: String,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_etcd() -> Etcd {
    let bin = std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into());
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new(&bin)
        .args([
            "--name", "silt-test",
            "--data-dir", dir.path().to_str().unwrap(),
            "--listen-client-urls", &url,
            "--advertise-client-urls", &url,
            "--listen-peer-urls", &peer_url,
            "--initial-advertise-peer-urls", &peer_url,
            "--initial-cluster", &format!("silt-test={peer_url}"),
            "--log-level", "error",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("could not start `{bin}` ({e}); install Debian's etcd-server (scripts/test does) or set ETCD_BIN"));
    Etcd {
        child,
        _dir: dir,
        url,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_backend_passes_the_conformance_suite() {
    let etcd = start_etcd();
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
    let port = free_port();
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
