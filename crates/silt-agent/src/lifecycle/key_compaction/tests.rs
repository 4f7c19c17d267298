use bytes::BytesMut;
use kafka_protocol::records::{
    Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use silt_meta::layout::index::IndexEntry;

use super::*;

fn rec(offset: i64, key: &str, value: Option<&str>, ts: i64) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 3,
        producer_id: 7,
        producer_epoch: 1,
        timestamp_type: TimestampType::Creation,
        offset,
        sequence: offset as i32,
        timestamp: ts,
        key: Some(Bytes::from(key.to_string())),
        value: value.map(|v| Bytes::from(v.to_string())),
        headers: Default::default(),
    }
}

fn encode(records: &[Record], compression: Compression) -> Bytes {
    let mut b = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut b,
        records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .unwrap();
    b.freeze()
}

fn latest_of(pairs: &[(&str, i64)]) -> HashMap<KeyId, i64> {
    pairs
        .iter()
        .map(|(k, o)| (key_id(k.as_bytes()), *o))
        .collect()
}

/// A batch keeps exactly its keys' latest records, at their offsets, with every codec, valid
/// CRC and its producer; fully superseded batches are gone; tombstones go only when old.
#[test]
fn batches_keep_each_keys_latest_record() {
    for codec in [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let one = encode(
            &[
                rec(10, "a", Some("a1"), 100),
                rec(11, "b", Some("b1"), 100),
                rec(12, "a", Some("a2"), 100),
                rec(13, "c", None, 100),
            ],
            codec,
        );
        let h = batch::parse_header(&one).unwrap();
        // a's latest is 12, b's is later elsewhere, c's tombstone is its latest.
        let latest = latest_of(&[("a", 12), ("b", 99), ("c", 13)]);
        let Outcome::Rewritten(out) = compact_batch(&one, &h, &latest, 0, true) else {
            panic!("{codec:?}: expected a rewrite");
        };
        let nh = batch::parse_header(&out).unwrap();
        assert_eq!(nh.size, out.len());
        let mut sealed = out.to_vec();
        batch::reseal(&mut sealed);
        assert_eq!(sealed, out.to_vec(), "{codec:?}: CRC valid");
        assert_eq!((nh.base_offset, nh.last_offset_delta), (10, 3), "{codec:?}");
        assert_eq!(batch::compression(nh.attributes), codec as i16);
        assert_eq!((nh.producer_id, nh.producer_epoch), (7, 1));
        let set = RecordBatchDecoder::decode(&mut out.clone()).unwrap();
        let got: Vec<(i64, Option<Bytes>)> = set
            .records
            .into_iter()
            .map(|r| (r.offset, r.value))
            .collect();
        assert_eq!(
            got,
            vec![(12, Some(Bytes::from("a2"))), (13, None)],
            "{codec:?}"
        );
        // Tombstones older than the horizon go too.
        let Outcome::Rewritten(out) = compact_batch(&one, &h, &latest, 101, true) else {
            panic!("{codec:?}: expected a rewrite");
        };
        let set = RecordBatchDecoder::decode(&mut out.clone()).unwrap();
        assert_eq!(set.records.len(), 1);
        // Nothing superseded: the very same bytes.
        let all = latest_of(&[("a", 12), ("b", 11), ("c", 13)]);
        let only_a2 = encode(&[rec(12, "a", Some("a2"), 100)], codec);
        let ha = batch::parse_header(&only_a2).unwrap();
        assert_eq!(compact_batch(&only_a2, &ha, &all, 0, true), Outcome::Same);
        // Every record superseded.
        let later = latest_of(&[("a", 50)]);
        assert_eq!(compact_batch(&only_a2, &ha, &later, 0, true), Outcome::Gone);
    }
}

#[test]
fn control_transactional_and_undecodable_batches_stay_whole() {
    let mut t = rec(5, "a", Some("x"), 1);
    t.transactional = true;
    let one = encode(&[t], Compression::None);
    let h = batch::parse_header(&one).unwrap();
    assert_eq!(
        compact_batch(&one, &h, &latest_of(&[("a", 9)]), 0, false),
        Outcome::Same,
        "with open or aborted transactions about, transactional batches stay whole"
    );
    assert_eq!(
        compact_batch(&one, &h, &latest_of(&[("a", 9)]), 0, true),
        Outcome::Gone,
        "with none, they are committed records like the others"
    );
    // A gzip batch whose payload is not gzip.
    let mut bad = encode(&[rec(5, "a", Some("x"), 1)], Compression::Gzip).to_vec();
    let n = bad.len();
    bad[n - 4..].copy_from_slice(b"junk");
    batch::reseal(&mut bad);
    let bad = Bytes::from(bad);
    let h = batch::parse_header(&bad).unwrap();
    assert_eq!(
        compact_batch(&bad, &h, &latest_of(&[("a", 9)]), 0, true),
        Outcome::Same
    );
}

#[test]
fn an_empty_batch_keeps_its_offsets_and_is_valid() {
    let one = encode(
        &[rec(20, "a", Some("1"), 5), rec(21, "a", Some("2"), 6)],
        Compression::Lz4,
    );
    let h = batch::parse_header(&one).unwrap();
    let e = empty_like(&h);
    let eh = batch::parse_header(&e).unwrap();
    assert_eq!(eh.size, e.len());
    let mut sealed = e.to_vec();
    batch::reseal(&mut sealed);
    assert_eq!(sealed, e.to_vec(), "its CRC is valid");
    assert_eq!(eh.base_offset, 20);
    assert_eq!(eh.base_offset + eh.last_offset_delta as i64, 21);
    assert_eq!(eh.record_count, 0);
    assert_eq!(batch::compression(eh.attributes), 0);
}

fn entry(base: i64, len: u64, ts: i64) -> IndexEntry {
    IndexEntry {
        object: format!("o{base}"),
        pos: 0,
        len,
        base_offset: base,
        last_offset: base,
        max_timestamp: ts,
        producers: vec![],
        marks: vec![],
        txns: vec![],
        pieces: Vec::new(),
    }
}

#[test]
fn passes_start_at_the_dirty_ratio_or_the_max_lag_and_spare_the_active_segment() {
    let rules = KeyRules {
        min_dirty_ratio: 0.5,
        segment_bytes: 400,
        segment_ms: 10_000,
        ..Default::default()
    };
    let es: Vec<IndexEntry> = (0..10).map(|i| entry(i, 100, 1_000)).collect();
    // Never cleaned: all dirty; the last 400 bytes are the active segment.
    assert_eq!(cleanable(&es, None, 2_000, &rules), 6);
    // Cleaned through offset 4: 1 of 10 entries dirty among the cleanable ones.
    assert_eq!(cleanable(&es, Some(4), 2_000, &rules), 0);
    let overdue = KeyRules {
        max_lag_ms: 500,
        ..rules
    };
    assert_eq!(cleanable(&es, Some(4), 2_000, &overdue), 6);
    // Past segment.ms nothing is active.
    assert_eq!(cleanable(&es, None, 20_000, &rules), 10);
    // min.compaction.lag.ms: entries with records too young are not cleanable.
    let mut young = es.clone();
    young[3].max_timestamp = 1_900;
    let lag = KeyRules {
        min_lag_ms: 500,
        min_dirty_ratio: 0.2,
        ..rules
    };
    assert_eq!(cleanable(&young, None, 2_000, &lag), 3);
    assert_eq!(
        cleanable(&es[..4], None, 2_000, &rules),
        0,
        "only the active segment"
    );
}

/// The records that stay keep their bytes: headers, timestamps and offsets; the header keeps
/// its base offset, last offset delta and (LogAppendTime) max timestamp.
#[test]
fn kept_records_keep_their_bytes_and_the_batch_its_offsets() {
    let mut a1 = rec(30, "a", Some("1"), 500);
    a1.headers.insert("h".into(), Some(Bytes::from("x")));
    let mut b1 = rec(31, "b", Some("2"), 600);
    b1.headers.insert("trace".into(), Some(Bytes::from("t")));
    let mut a2 = rec(32, "a", Some("3"), 700);
    a2.headers.insert("k".into(), Some(Bytes::from("v")));
    let one = encode(&[a1, b1, a2], Compression::Zstd);
    let h = batch::parse_header(&one).unwrap();
    // b is superseded elsewhere, a's latest is 32: a1 and b1 go; the batch keeps 30..=32.
    let latest = latest_of(&[("a", 32), ("b", 40)]);
    let Outcome::Rewritten(out) = compact_batch(&one, &h, &latest, 0, true) else {
        panic!("expected a rewrite");
    };
    let nh = batch::parse_header(&out).unwrap();
    assert_eq!((nh.base_offset, nh.last_offset_delta), (30, 2));
    assert_eq!((nh.base_timestamp, nh.max_timestamp), (500, 700));
    assert_eq!(nh.record_count, 1);
    let mut sealed = out.to_vec();
    batch::reseal(&mut sealed);
    assert_eq!(sealed, out.to_vec(), "CRC valid");
    let set = RecordBatchDecoder::decode(&mut out.clone()).unwrap();
    assert_eq!(set.records.len(), 1);
    let r = &set.records[0];
    assert_eq!((r.offset, r.timestamp), (32, 700));
    let headers: Vec<(String, Option<Bytes>)> = r
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    assert_eq!(headers, vec![("k".to_string(), Some(Bytes::from("v")))]);
    // A LogAppendTime batch keeps its max timestamp (the append time).
    let mut lat = one.to_vec();
    let attrs = i16::from_be_bytes([lat[21], lat[22]]) | batch::ATTR_LOG_APPEND_TIME;
    lat[21..23].copy_from_slice(&attrs.to_be_bytes());
    lat[35..43].copy_from_slice(&9_999i64.to_be_bytes());
    batch::reseal(&mut lat);
    let lat = Bytes::from(lat);
    let lh = batch::parse_header(&lat).unwrap();
    let Outcome::Rewritten(out) = compact_batch(&lat, &lh, &latest, 0, true) else {
        panic!("expected a rewrite");
    };
    assert_eq!(batch::parse_header(&out).unwrap().max_timestamp, 9_999);
}

/// A record whose offset delta lies outside its batch (a crafted batch with a valid CRC) makes
/// the batch unreadable to compaction: kept whole, and it teaches no key.
#[test]
fn batches_with_offsets_outside_their_range_are_left_alone() {
    let one = encode(
        &[rec(50, "a", Some("1"), 1), rec(51, "b", Some("2"), 1)],
        Compression::None,
    );
    let mut bad = one.to_vec();
    // Claim a last offset delta of 0: the second record's delta (1) lies outside.
    bad[23..27].copy_from_slice(&0i32.to_be_bytes());
    batch::reseal(&mut bad);
    let bad = Bytes::from(bad);
    let h = batch::parse_header(&bad).unwrap();
    assert_eq!(
        compact_batch(&bad, &h, &latest_of(&[("a", 99), ("b", 99)]), 0, true),
        Outcome::Same
    );
    let mut learned = HashMap::new();
    assert!(learn(&bad, &mut learned, true));
    assert!(learned.is_empty());
}
