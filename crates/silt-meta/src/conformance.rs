//! The conformance suite for [`MetaKv`] backends. Every backend's tests call [`run_all`]; a
//! backend that passes can stand in for any other. Each scenario uses its own key prefix so
//! the suite can run against a shared store.

use std::time::Duration;

use crate::kv::*;

/// Moves the backend's notion of time forward (a manual clock, or a real sleep for etcd).
pub type Advance<'a> = &'a (dyn Fn(Duration) + Sync);

/// Runs every scenario against `kv`.
pub async fn run_all(kv: &dyn MetaKv, advance: Advance<'_>) {
    put_get_and_revisions(kv).await;
    compare_and_swap(kv).await;
    ranges(kv).await;
    delete_prefix(kv).await;
    leases(kv, advance).await;
    watches(kv).await;
    paged_ranges(kv).await;
    request_limits(kv).await;
}

async fn put(kv: &dyn MetaKv, k: &str, v: &str) -> TxnResponse {
    kv.txn(Txn {
        success: vec![Op::put(k, v)],
        ..Default::default()
    })
    .await
    .expect("put")
}

/// Puts are visible, revisions grow, versions count changes.
pub async fn put_get_and_revisions(kv: &dyn MetaKv) {
    let r1 = put(kv, "/c/basic/a", "1").await;
    let r2 = put(kv, "/c/basic/a", "2").await;
    assert!(r2.revision > r1.revision);
    let got = kv.get(b"/c/basic/a").await.unwrap().expect("key exists");
    assert_eq!(got.value, b"2");
    assert_eq!(got.version, 2);
    assert_eq!(got.create_revision, r1.revision);
    assert_eq!(got.mod_revision, r2.revision);
    assert!(kv.get(b"/c/basic/missing").await.unwrap().is_none());
    assert!(kv.revision().await.unwrap() >= r2.revision);
}

/// Compares choose the branch; the failure branch is applied when they do not hold.
pub async fn compare_and_swap(kv: &dyn MetaKv) {
    let create = |v: &str| Txn {
        compares: vec![Compare::absent("/c/cas/k")],
        success: vec![Op::put("/c/cas/k", v)],
        failure: vec![Op::put("/c/cas/lost", v)],
    };
    assert!(kv.txn(create("first")).await.unwrap().succeeded);
    assert!(!kv.txn(create("second")).await.unwrap().succeeded);
    assert_eq!(kv.get(b"/c/cas/k").await.unwrap().unwrap().value, b"first");
    assert_eq!(
        kv.get(b"/c/cas/lost").await.unwrap().unwrap().value,
        b"second"
    );

    let cur = kv.get(b"/c/cas/k").await.unwrap().unwrap();
    let swap = |rev| Txn {
        compares: vec![Compare::mod_revision("/c/cas/k", rev)],
        success: vec![Op::put("/c/cas/k", "swapped")],
        failure: vec![],
    };
    assert!(kv.txn(swap(cur.mod_revision)).await.unwrap().succeeded);
    assert!(!kv.txn(swap(cur.mod_revision)).await.unwrap().succeeded);
    let ok = kv
        .txn(Txn {
            compares: vec![Compare::value("/c/cas/k", "swapped")],
            success: vec![Op::Delete {
                key: b"/c/cas/k".to_vec(),
            }],
            failure: vec![],
        })
        .await
        .unwrap();
    assert!(ok.succeeded);
    assert!(kv.get(b"/c/cas/k").await.unwrap().is_none());
    let gt = kv
        .txn(Txn {
            compares: vec![Compare {
                key: b"/c/cas/lost".to_vec(),
                op: CompareOp::Greater,
                target: CompareTarget::Version(0),
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(gt.succeeded, "an existing key has version > 0");
}

/// Prefix ranges are ordered, limited, bounded below, and reversible.
pub async fn ranges(kv: &dyn MetaKv) {
    kv.txn(Txn {
        success: (0..5)
            .map(|i| Op::put(format!("/c/range/{i:03}"), i.to_string()))
            .chain([Op::put("/c/rangeX", "outside")])
            .collect(),
        ..Default::default()
    })
    .await
    .unwrap();
    let keys = |v: Vec<KeyValue>| {
        v.into_iter()
            .map(|kv| String::from_utf8(kv.key).unwrap())
            .collect::<Vec<_>>()
    };
    let all = kv.range(RangeRequest::prefix("/c/range/")).await.unwrap();
    assert_eq!(
        keys(all),
        (0..5)
            .map(|i| format!("/c/range/{i:03}"))
            .collect::<Vec<_>>()
    );
    let last = kv
        .range(RangeRequest {
            prefix: b"/c/range/".to_vec(),
            limit: 2,
            descending: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(keys(last), vec!["/c/range/004", "/c/range/003"]);
    let from = kv
        .range(RangeRequest {
            prefix: b"/c/range/".to_vec(),
            start_after_or_at: b"/c/range/003".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(keys(from), vec!["/c/range/003", "/c/range/004"]);
}

/// A prefix delete removes exactly the keys under the prefix.
pub async fn delete_prefix(kv: &dyn MetaKv) {
    kv.txn(Txn {
        success: vec![
            Op::put("/c/del/a/1", "x"),
            Op::put("/c/del/a/2", "x"),
            Op::put("/c/del/b/1", "x"),
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    kv.txn(Txn {
        success: vec![Op::DeletePrefix {
            prefix: b"/c/del/a/".to_vec(),
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(kv
        .range(RangeRequest::prefix("/c/del/a/"))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        kv.range(RangeRequest::prefix("/c/del/"))
            .await
            .unwrap()
            .len(),
        1
    );
}

/// Keys bound to a lease vanish when it expires or is revoked; keep-alives extend it.
pub async fn leases(kv: &dyn MetaKv, advance: Advance<'_>) {
    let ttl = Duration::from_secs(5);
    let l1 = kv.grant_lease(ttl).await.unwrap();
    let l2 = kv.grant_lease(ttl).await.unwrap();
    assert_ne!(l1, l2);
    let put_leased = |k: &'static str, lease| Txn {
        success: vec![Op::Put {
            key: k.as_bytes().to_vec(),
            value: b"v".to_vec(),
            lease,
        }],
        ..Default::default()
    };
    kv.txn(put_leased("/c/lease/1", l1)).await.unwrap();
    kv.txn(put_leased("/c/lease/2", l2)).await.unwrap();
    assert_eq!(kv.get(b"/c/lease/1").await.unwrap().unwrap().lease, l1);

    advance(Duration::from_secs(3));
    kv.keep_alive(l2).await.unwrap();
    advance(Duration::from_secs(3));
    assert!(
        kv.get(b"/c/lease/1").await.unwrap().is_none(),
        "expired lease's key must be gone"
    );
    assert!(
        kv.get(b"/c/lease/2").await.unwrap().is_some(),
        "kept-alive lease's key must stay"
    );
    let renewed = kv.keep_alive(l1).await;
    assert!(
        matches!(renewed, Err(MetaError::LeaseNotFound(_))),
        "renewing an expired lease: {renewed:?}"
    );
    assert!(matches!(
        kv.txn(put_leased("/c/lease/3", l1)).await,
        Err(MetaError::LeaseNotFound(_))
    ));
    kv.revoke_lease(l2).await.unwrap();
    assert!(kv.get(b"/c/lease/2").await.unwrap().is_none());
}

/// Watches deliver changes under their prefix, in order, and nothing else.
pub async fn watches(kv: &dyn MetaKv) {
    let mut rx = kv.watch_prefix(b"/c/watch/").await.unwrap();
    put(kv, "/c/watch/a", "1").await;
    put(kv, "/c/other", "1").await;
    kv.txn(Txn {
        success: vec![Op::Delete {
            key: b"/c/watch/a".to_vec(),
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    match recv(&mut rx).await {
        WatchEvent::Put(kv) => {
            assert_eq!((kv.key, kv.value), (b"/c/watch/a".to_vec(), b"1".to_vec()))
        }
        other => panic!("expected put, got {other:?}"),
    }
    match recv(&mut rx).await {
        WatchEvent::Delete { key, .. } => assert_eq!(key, b"/c/watch/a"),
        other => panic!("expected delete, got {other:?}"),
    }
}

async fn recv(rx: &mut tokio::sync::mpsc::UnboundedReceiver<WatchEvent>) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("watch event within 10s")
        .expect("watch open")
}

/// `range_all` reads every key under a prefix however many pages it takes, in order, and
/// nothing outside it.
pub async fn paged_ranges(kv: &dyn MetaKv) {
    let n = PAGE_KEYS * 2 + 100;
    let ops: Vec<Op> = (0..n)
        .map(|i| Op::put(format!("/c/paged/{i:06}"), "v"))
        .chain([Op::put("/c/paged0", "outside")])
        .collect();
    for txn in chunk_ops(&[], ops).expect("chunks fit") {
        assert!(txn.success.len() <= LIMITS.max_txn_ops);
        kv.txn(txn).await.unwrap();
    }
    let all = kv.range_all(b"/c/paged/").await.unwrap();
    assert_eq!(all.len(), n);
    // Values adding up to more than gRPC's default 4 MiB reply: one page of them must decode.
    let big: Vec<Op> = (0..40)
        .map(|i| Op::put(format!("/c/paged-big/{i:02}"), vec![b'z'; 200_000]))
        .collect();
    for txn in chunk_ops(&[], big).expect("chunks fit") {
        kv.txn(txn).await.unwrap();
    }
    let got = kv.range_all(b"/c/paged-big/").await.unwrap();
    assert_eq!(got.len(), 40, "8 MB of values read back");
    assert!(got.iter().all(|kv| kv.value.len() == 200_000));
    assert!(all
        .iter()
        .enumerate()
        .all(|(i, kv)| kv.key == format!("/c/paged/{i:06}").into_bytes()));
}

/// Every backend refuses, before applying anything, a transaction over etcd's default limits
/// (128 operations per list, 1.5 MiB per request), as a permanent error; one at the limits
/// goes through.
pub async fn request_limits(kv: &dyn MetaKv) {
    let many = |n: usize| Txn {
        success: (0..n)
            .map(|i| Op::put(format!("/c/limits/ops/{i:04}"), "v"))
            .collect(),
        ..Default::default()
    };
    let refused = kv.txn(many(LIMITS.max_txn_ops + 1)).await;
    assert!(
        matches!(&refused, Err(e @ MetaError::TooLarge { .. }) if e.class() == ErrorClass::Permanent),
        "129 operations: {refused:?}"
    );
    assert!(kv.range_all(b"/c/limits/ops/").await.unwrap().is_empty());
    kv.txn(many(LIMITS.max_txn_ops))
        .await
        .expect("128 operations");
    let big = |len: usize| Txn {
        success: vec![Op::put("/c/limits/big", vec![b'x'; len])],
        ..Default::default()
    };
    let refused = kv.txn(big(LIMITS.max_request_bytes)).await;
    assert!(
        matches!(refused, Err(MetaError::TooLarge { .. })),
        "a request over 1.5 MiB: {refused:?}"
    );
    assert!(kv.get(b"/c/limits/big").await.unwrap().is_none());
    kv.txn(big(1 << 20)).await.expect("a 1 MiB value");
    // Chunking shapes any list of operations into transactions within the limits.
    let ops: Vec<Op> = (0..40)
        .map(|i| Op::put(format!("/c/limits/chunked/{i:02}"), vec![b'y'; 100_000]))
        .collect();
    let txns = chunk_ops(&[], ops).unwrap();
    assert!(txns.len() >= 3, "{} transactions", txns.len());
    for t in txns {
        t.check(&LIMITS).unwrap();
        kv.txn(t).await.unwrap();
    }
    assert_eq!(kv.range_all(b"/c/limits/chunked/").await.unwrap().len(), 40);
}
