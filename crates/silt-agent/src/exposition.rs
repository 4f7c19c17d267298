//! The agent's `/metrics` in Prometheus text format: object-store requests by kind (with
//! latency and failures), metadata-store calls by kind (with latency, failures and refused
//! transactions), the flush pipeline (sizes, latency), caches, leadership, consumer-group lag,
//! connections, and the per-API and per-topic request metrics of [`crate::metrics`].

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use silt_common::metrics::{header, label, single};
use silt_meta::instrumented::KINDS;
use silt_meta::layout::index;

use crate::broker::Broker;

/// The process's resident size, from `/proc/self/status` (Linux only).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Renders every metric of the agent.
pub async fn render(b: &Broker) -> String {
    let mut out = String::new();
    storage(b, &mut out);
    metadata(b, &mut out);
    flush(b, &mut out);
    leadership(b, &mut out);
    group_lag(b, &mut out).await;
    archive(b, &mut out);
    security(b, &mut out);
    let m = &b.metrics;
    single(
        &mut out,
        "silt_connections",
        "Client connections open now.",
        "gauge",
        m.connections_open.load(Ordering::Relaxed),
    );
    single(
        &mut out,
        "silt_connections_accepted_total",
        "Client connections accepted since start.",
        "counter",
        m.connections_total.load(Ordering::Relaxed),
    );
    fetch_sessions(&m.fetch_sessions, &mut out);
    single(
        &mut out,
        "silt_fetch_long_poll_wakeups_total",
        "Times a waiting Fetch was woken because one of its partitions changed (a commit, a new log start, leadership gone) and built its response again. Commits to other partitions do not wake it.",
        "counter",
        m.long_poll_wakeups.load(Ordering::Relaxed),
    );
    by_label(
        &mut out,
        "silt_message_format_conversions_total",
        "Partitions of old requests converted between message sets v0/v1 and record batches v2: up (Produce v0-2), down (Fetch v0-3). Non-zero means clients from before Kafka 0.11 are connected.",
        "direction",
        &[
            ("up", m.converted_up.load(Ordering::Relaxed)),
            ("down", m.converted_down.load(Ordering::Relaxed)),
        ],
    );
    let l = &b.limits;
    by_label(
        &mut out,
        "silt_connections_refused_total",
        "New connections closed at once because too many were open (connections.max_total, connections.max_per_ip).",
        "reason",
        &[
            ("total", l.refused_total.load(Ordering::Relaxed)),
            ("per_ip", l.refused_per_ip.load(Ordering::Relaxed)),
        ],
    );
    single(
        &mut out,
        "silt_connections_idle_closed_total",
        "Connections closed for sending no complete request within connections.idle_timeout_ms.",
        "counter",
        l.idle_closed.load(Ordering::Relaxed),
    );
    single(
        &mut out,
        "silt_response_bytes_reserved",
        "Bytes reserved by fetch responses not yet written, over all connections (bounded by connections.max_total_response_bytes).",
        "gauge",
        l.response_bytes_held(),
    );
    single(
        &mut out,
        "silt_request_bytes_reserved",
        "Bytes reserved by request frames being read or handled, over all connections (bounded by connections.max_total_request_bytes).",
        "gauge",
        l.request_bytes_held(),
    );
    single(
        &mut out,
        "silt_memory_budget_bytes",
        "The agent's memory budget (memory_bytes), which the produce buffer, requests, caches and responses share.",
        "gauge",
        b.settings.memory_bytes,
    );
    if let Some(rss) = resident_bytes() {
        single(
            &mut out,
            "process_resident_memory_bytes",
            "Resident memory of the agent process (Linux), to compare with silt_memory_budget_bytes.",
            "gauge",
            rss,
        );
    }
    load(b, &mut out);
    m.render(&mut out);
    out
}

fn load(b: &Broker, out: &mut String) {
    single(
        out,
        "silt_follower_partitions",
        "Partitions led by other agents that consumers in this agent's zone read here (KIP-392 client.rack).",
        "gauge",
        b.followers.len(),
    );
    single(
        out,
        "silt_load_ratio",
        "The autoscaling signal: produce plus fetch bytes per second over load.window_ms against load.capacity_bytes_per_sec, or the share of the write buffer in use, whichever is larger. Scale the pool to sum(silt_load_ratio) / target agents.",
        "gauge",
        b.load.ratio(),
    );
    by_label(
        out,
        "silt_load_bytes_per_second",
        "Record-batch bytes per second over load.window_ms, by direction.",
        "direction",
        &[
            ("produce", b.load.produce_bytes_per_sec()),
            ("fetch", b.load.fetch_bytes_per_sec()),
        ],
    );
    single(
        out,
        "silt_load_capacity_bytes_per_second",
        "load.capacity_bytes_per_sec: the produce plus fetch bytes per second at a load ratio of 1.",
        "gauge",
        b.settings.load.capacity_bytes_per_sec,
    );
}

fn storage(b: &Broker, out: &mut String) {
    let s = b.storage.stats();
    let r = Ordering::Relaxed;
    for (name, help, v) in [
        (
            "silt_object_puts_total",
            "Object PUTs that succeeded.",
            &s.puts,
        ),
        (
            "silt_object_put_bytes_total",
            "Bytes written to object storage.",
            &s.put_bytes,
        ),
        (
            "silt_object_gets_total",
            "Object GETs (whole or ranged) that succeeded.",
            &s.gets,
        ),
        (
            "silt_object_get_bytes_total",
            "Bytes read from object storage.",
            &s.get_bytes,
        ),
        (
            "silt_object_errors_total",
            "Failed object-store attempts (each retry counts).",
            &s.errors,
        ),
    ] {
        single(out, name, help, "counter", v.load(r));
    }
    single(
        out,
        "silt_object_requests_in_flight",
        "Object-store requests under way now.",
        "gauge",
        s.in_flight.load(r),
    );
    let kinds = [("put", &s.put), ("get", &s.get), ("delete", &s.delete)];
    header(
        out,
        "silt_object_requests_total",
        "Object-store attempts, by kind.",
        "counter",
    );
    for (k, o) in kinds {
        let _ = writeln!(
            out,
            "silt_object_requests_total{{op=\"{k}\"}} {}",
            o.attempts.load(r)
        );
    }
    header(
        out,
        "silt_object_request_errors_total",
        "Failed object-store attempts, by kind.",
        "counter",
    );
    for (k, o) in kinds {
        let _ = writeln!(
            out,
            "silt_object_request_errors_total{{op=\"{k}\"}} {}",
            o.errors.load(r)
        );
    }
    header(
        out,
        "silt_object_request_duration_seconds",
        "Time per object-store attempt, by kind.",
        "histogram",
    );
    for (k, o) in kinds {
        o.latency.render(
            out,
            "silt_object_request_duration_seconds",
            &format!("op=\"{k}\""),
        );
    }
}

fn metadata(b: &Broker, out: &mut String) {
    let s = &b.meta_stats;
    let r = Ordering::Relaxed;
    header(
        out,
        "silt_metadata_calls_total",
        "Metadata-store calls, by kind.",
        "counter",
    );
    for (k, c) in KINDS.iter().zip(&s.calls) {
        let _ = writeln!(
            out,
            "silt_metadata_calls_total{{op=\"{k}\"}} {}",
            c.calls.load(r)
        );
    }
    header(
        out,
        "silt_metadata_call_failures_total",
        "Metadata-store calls that failed, by kind.",
        "counter",
    );
    for (k, c) in KINDS.iter().zip(&s.calls) {
        let _ = writeln!(
            out,
            "silt_metadata_call_failures_total{{op=\"{k}\"}} {}",
            c.failures.load(r)
        );
    }
    header(
        out,
        "silt_metadata_call_duration_seconds",
        "Time per metadata-store call, by kind.",
        "histogram",
    );
    for (k, c) in KINDS.iter().zip(&s.calls) {
        c.latency.render(
            out,
            "silt_metadata_call_duration_seconds",
            &format!("op=\"{k}\""),
        );
    }
    single(
        out,
        "silt_metadata_txn_refused_total",
        "Metadata transactions whose compares failed (fencing, races); nothing was written.",
        "counter",
        s.txn_refused.load(r),
    );
    single(
        out,
        "silt_metadata_txn_bytes_total",
        "Bytes of metadata transactions sent (keys, values and compares).",
        "counter",
        s.txn_bytes.load(r),
    );
    single(
        out,
        "silt_metadata_txn_max_bytes",
        "The largest metadata transaction sent, in bytes (etcd refuses over 1.5 MiB by default).",
        "gauge",
        s.txn_max_bytes.load(r),
    );
    single(
        out,
        "silt_metadata_txn_max_ops",
        "The most operations in one list of a metadata transaction sent (etcd refuses over 128 by default).",
        "gauge",
        s.txn_max_ops.load(r),
    );
}

fn flush(b: &Broker, out: &mut String) {
    let f = b.flusher.stats();
    let r = Ordering::Relaxed;
    for (name, help, v) in [
        ("silt_flushes_total", "Flushes committed.", &f.flushes),
        (
            "silt_flush_batches_total",
            "Record batches committed.",
            &f.batches,
        ),
        (
            "silt_flush_bytes_total",
            "Bytes of record batches committed.",
            &f.bytes,
        ),
        (
            "silt_metadata_commits_total",
            "Metadata-store commits made by the flush pipeline.",
            &f.commits,
        ),
        (
            "silt_flush_commits_refused_total",
            "Flush commits the metadata store refused for good (their writes failed; producers retry).",
            &f.refused,
        ),
    ] {
        single(out, name, help, "counter", v.load(r));
    }
    header(
        out,
        "silt_flush_size_bytes",
        "Bytes of record batches per committed flush.",
        "histogram",
    );
    f.size.render(out, "silt_flush_size_bytes", "");
    header(
        out,
        "silt_flush_duration_seconds",
        "Time from a flush's start to its commit.",
        "histogram",
    );
    f.latency.render(out, "silt_flush_duration_seconds", "");
    single(
        out,
        "silt_buffered_bytes",
        "Bytes buffered or in flight to object storage.",
        "gauge",
        b.flusher.buffered_bytes(),
    );
    single(
        out,
        "silt_tail_cache_hits_total",
        "Reads served from the in-memory tail cache.",
        "counter",
        b.cache.hits.load(r),
    );
    single(
        out,
        "silt_tail_cache_misses_total",
        "Reads that needed an object GET.",
        "counter",
        b.cache.misses.load(r),
    );
}

/// A gauge with one sample per partition led here, read from the partition's state.
fn partition_gauge(
    out: &mut String,
    name: &str,
    help: &str,
    local: &[std::sync::Arc<crate::partition::Partition>],
    value: impl Fn(&crate::partition::PartitionState) -> i64,
) {
    header(out, name, help, "gauge");
    for p in local {
        let v = value(&p.lock());
        let _ = writeln!(
            out,
            "{name}{{topic=\"{}\",partition=\"{}\"}} {v}",
            label(&p.topic),
            p.index
        );
    }
}

fn leadership(b: &Broker, out: &mut String) {
    let mut local = b.cluster.local_partitions();
    local.sort_by(|x, y| (&x.topic, x.index).cmp(&(&y.topic, y.index)));
    let c = &b.cluster.stats;
    let r = Ordering::Relaxed;
    single(
        out,
        "silt_partitions",
        "Partitions this agent leads.",
        "gauge",
        local.len(),
    );
    single(
        out,
        "silt_group_shards",
        "Group-coordinator shards this agent coordinates.",
        "gauge",
        b.groups.shards_owned(),
    );
    single(
        out,
        "silt_cluster_agents",
        "Live agents this agent sees.",
        "gauge",
        b.cluster.brokers().len(),
    );
    single(
        out,
        "silt_is_controller",
        "1 if this agent is the controller.",
        "gauge",
        u8::from(b.cluster.controller_id() == Some(b.node.id)),
    );
    single(
        out,
        "silt_partitions_gained_total",
        "Partitions this agent took leadership of.",
        "counter",
        c.partitions_gained.load(r),
    );
    single(
        out,
        "silt_partitions_lost_total",
        "Partitions whose leadership this agent gave up.",
        "counter",
        c.partitions_lost.load(r),
    );
    single(
        out,
        "silt_controller_load_moves_total",
        "Partitions carrying traffic this agent, as controller, moved to even out load (load.placement).",
        "counter",
        c.load_moves.load(r),
    );
    single(
        out,
        "silt_partition_load_last_ms",
        "Time the last batch of partition take-overs spent rebuilding state from the metadata store.",
        "gauge",
        c.last_load_ms.load(r),
    );
    partition_gauge(
        out,
        "silt_index_entries",
        "Offset-index keys per partition in the metadata store (partitions led here).",
        &local,
        |st| st.segments.len() as i64,
    );
    partition_gauge(
        out,
        "silt_open_transactions",
        "Transactions with records in the partition and no marker yet (partitions led here).",
        &local,
        |st| st.txns.open_count() as i64,
    );
    partition_gauge(
        out,
        "silt_lso_lag",
        "High watermark minus last stable offset: offsets read_committed readers wait for.",
        &local,
        |st| st.high_watermark - st.txns.last_stable(st.high_watermark),
    );
    partition_gauge(
        out,
        "silt_log_start_offset",
        "Log start offset per partition led here (moved by retention and DeleteRecords).",
        &local,
        |st| st.log_start,
    );
    if let Some(bc) = &b.cache.blocks {
        let s = &bc.stats;
        header(out, "silt_cache_hits_total", "Reads served from a cache, by tier (tail: recent objects in memory; memory and disk: the block cache).", "counter");
        let _ = writeln!(
            out,
            "silt_cache_hits_total{{tier=\"tail\"}} {}",
            b.cache.hits.load(r)
        );
        let _ = writeln!(
            out,
            "silt_cache_hits_total{{tier=\"memory\"}} {}",
            s.memory_hits.load(r)
        );
        let _ = writeln!(
            out,
            "silt_cache_hits_total{{tier=\"disk\"}} {}",
            s.disk_hits.load(r)
        );
        single(
            out,
            "silt_block_cache_fetches_total",
            "Blocks fetched from the object store (one GET each, shared by concurrent readers).",
            "counter",
            s.fetches.load(r),
        );
        single(
            out,
            "silt_block_cache_read_ahead_total",
            "Blocks requested ahead of readers.",
            "counter",
            s.read_ahead.load(r),
        );
    }
    let cs = &b.compaction;
    single(
        out,
        "silt_compaction_segments_total",
        "Compacted segments committed.",
        "counter",
        cs.segments.load(r),
    );
    single(
        out,
        "silt_compaction_entries_folded_total",
        "Index entries folded away by compaction.",
        "counter",
        cs.entries_folded.load(r),
    );
    single(
        out,
        "silt_compaction_bytes_total",
        "Bytes rewritten into compacted segments.",
        "counter",
        cs.bytes.load(r),
    );
    single(
        out,
        "silt_compaction_failures_total",
        "Compaction steps that failed (retried).",
        "counter",
        cs.failures.load(r),
    );
    single(
        out,
        "silt_key_compaction_passes_total",
        "Key-compaction passes completed on compacted topics (cleanup.policy=compact).",
        "counter",
        cs.key_passes.load(r),
    );
    single(
        out,
        "silt_key_compaction_records_removed_total",
        "Records key compaction took out (superseded by a later record of their key, or tombstones past delete.retention.ms).",
        "counter",
        cs.key_records_removed.load(r),
    );
    let g = &b.gc;
    single(
        out,
        "silt_gc_passes_total",
        "Garbage-collection passes run (on the controller).",
        "counter",
        g.passes.load(r),
    );
    single(
        out,
        "silt_gc_deleted_objects_total",
        "Unreferenced objects deleted.",
        "counter",
        g.deleted.load(r),
    );
    single(
        out,
        "silt_gc_deleted_bytes_total",
        "Bytes of unreferenced objects deleted.",
        "counter",
        g.deleted_bytes.load(r),
    );
    single(
        out,
        "silt_metadata_index_keys",
        "Offset-index keys in the metadata store, all partitions (counted by GC on the controller).",
        "gauge",
        g.index_keys.load(r),
    );
    single(
        out,
        "silt_gc_last_pass_ms",
        "Milliseconds the last garbage-collection pass took (list, index scan, deletes).",
        "gauge",
        g.last_pass_ms.load(r),
    );
    single(
        out,
        "silt_gc_candidates",
        "Unreferenced objects waiting out the grace period.",
        "gauge",
        g.candidates.load(r),
    );
    header(
        out,
        "silt_high_watermark",
        "High watermark per partition led here.",
        "gauge",
    );
    for p in &local {
        let hw = p.lock().high_watermark;
        let _ = writeln!(
            out,
            "silt_high_watermark{{topic=\"{}\",partition=\"{}\"}} {hw}",
            label(&p.topic),
            p.index
        );
    }
}

/// Lag of every group coordinated here: the partition's high watermark (from memory when led
/// here, else from its last index entry) minus the committed offset.
async fn group_lag(b: &Broker, out: &mut String) {
    let committed = b.groups.committed_all();
    let local: HashMap<(String, i32), i64> = b
        .cluster
        .local_partitions()
        .iter()
        .map(|p| ((p.topic.clone(), p.index), p.lock().high_watermark))
        .collect();
    let mut hws: HashMap<(String, i32), Option<i64>> = HashMap::new();
    header(
        out,
        "silt_group_committed_offset",
        "Committed offset per group and partition (groups coordinated here).",
        "gauge",
    );
    let mut lags = Vec::with_capacity(committed.len());
    for (g, t, p, offset) in &committed {
        let _ = writeln!(
            out,
            "silt_group_committed_offset{{group=\"{}\",topic=\"{}\",partition=\"{p}\"}} {offset}",
            label(g),
            label(t)
        );
        let key = (t.clone(), *p);
        if !hws.contains_key(&key) {
            let hw = match local.get(&key) {
                Some(hw) => Some(*hw),
                None => match b.topics.get(t) {
                    Some(topic) => index::last_entry(b.meta.as_ref(), &topic.record.id, *p)
                        .await
                        .ok()
                        .map(|e| e.map_or(0, |e| e.last_offset + 1)),
                    None => None,
                },
            };
            hws.insert(key.clone(), hw);
        }
        if let Some(Some(hw)) = hws.get(&key) {
            lags.push((g, t, p, (hw - offset).max(0)));
        }
    }
    header(out, "silt_group_lag", "Records between the committed offset and the high watermark, per group and partition (groups coordinated here).", "gauge");
    for (g, t, p, lag) in lags {
        let _ = writeln!(
            out,
            "silt_group_lag{{group=\"{}\",topic=\"{}\",partition=\"{p}\"}} {lag}",
            label(g),
            label(t)
        );
    }
}

fn archive(b: &Broker, out: &mut String) {
    let a = &b.archive;
    let r = Ordering::Relaxed;
    single(
        out,
        "silt_archive_files_total",
        "Parquet archive files made visible.",
        "counter",
        a.files.load(r),
    );
    single(
        out,
        "silt_archive_records_total",
        "Records archived as Parquet.",
        "counter",
        a.records.load(r),
    );
    single(
        out,
        "silt_archive_bytes_total",
        "Parquet bytes written.",
        "counter",
        a.bytes.load(r),
    );
    single(
        out,
        "silt_archive_failures_total",
        "Archive passes over a partition that failed (retried).",
        "counter",
        a.failures.load(r),
    );
    header(
        out,
        "silt_archive_invalid_records_total",
        "Values that did not match the topic's declared schema (kept raw, flagged).",
        "counter",
    );
    for (t, n) in a.invalid() {
        let _ = writeln!(
            out,
            "silt_archive_invalid_records_total{{topic=\"{}\"}} {n}",
            label(&t)
        );
    }
    header(
        out,
        "silt_archive_quarantined_batches_total",
        "Record batches left out of the archive because they could not be decoded (corrupt payload or decompression bomb).",
        "counter",
    );
    let quarantined = a
        .quarantined
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for (t, n) in quarantined {
        let _ = writeln!(
            out,
            "silt_archive_quarantined_batches_total{{topic=\"{}\"}} {n}",
            label(&t)
        );
    }
    let status = a.status();
    header(
        out,
        "silt_archive_offset",
        "First offset not yet archived, per partition archived here.",
        "gauge",
    );
    for s in &status {
        let _ = writeln!(
            out,
            "silt_archive_offset{{topic=\"{}\",partition=\"{}\"}} {}",
            label(&s.topic),
            s.partition,
            s.next_offset
        );
    }
    header(
        out,
        "silt_archive_lag",
        "Committed records not yet archived, per partition archived here.",
        "gauge",
    );
    for s in &status {
        let hw = b
            .cluster
            .local_partitions()
            .iter()
            .find(|p| p.topic == s.topic && p.index == s.partition)
            .map_or(s.high_watermark, |p| p.lock().high_watermark);
        let _ = writeln!(
            out,
            "silt_archive_lag{{topic=\"{}\",partition=\"{}\"}} {}",
            label(&s.topic),
            s.partition,
            (hw - s.next_offset).max(0)
        );
    }
}

fn security(b: &Broker, out: &mut String) {
    let st = &b.security.stats;
    by_label(
        out,
        "silt_sasl_authentications_total",
        "SASL authentications, by result (failed: wrong credentials or a malformed exchange).",
        "result",
        &[
            ("succeeded", st.auth_succeeded.load(Ordering::Relaxed)),
            ("failed", st.auth_failed.load(Ordering::Relaxed)),
        ],
    );
    single(
        out,
        "silt_tls_handshake_failures_total",
        "TLS handshakes that failed or timed out (tls.handshake_timeout_ms).",
        "counter",
        st.tls_failed.load(Ordering::Relaxed),
    );
    single(
        out,
        "silt_quota_throttled_total",
        "Produce and fetch responses throttled by a client quota (the connection muted for throttle_time_ms).",
        "counter",
        b.metrics.throttled.load(Ordering::Relaxed),
    );
    single(
        out,
        "silt_authorization_denied_total",
        "Operations on resources refused by the ACL authorizer.",
        "counter",
        st.denied.load(Ordering::Relaxed),
    );
}

/// A counter with one sample per value of one label.
fn by_label(out: &mut String, name: &str, help: &str, label_name: &str, samples: &[(&str, u64)]) {
    header(out, name, help, "counter");
    for (value, n) in samples {
        let _ = writeln!(out, "{name}{{{label_name}=\"{value}\"}} {n}");
    }
}

fn fetch_sessions(s: &crate::fetch_sessions::Stats, out: &mut String) {
    let r = Ordering::Relaxed;
    single(
        out,
        "silt_fetch_sessions",
        "Incremental fetch sessions (KIP-227) open now.",
        "gauge",
        s.open.load(r),
    );
    single(
        out,
        "silt_fetch_session_partitions",
        "Partitions held by open fetch sessions.",
        "gauge",
        s.partitions.load(r) as u64,
    );
    for (name, help, v) in [
        ("silt_fetch_sessions_created_total", "Fetch sessions created since start.", &s.created),
        ("silt_fetch_incremental_total", "Incremental fetches served since start.", &s.incremental),
        ("silt_fetch_sessions_refused_total", "Full fetches that asked for a session and got none (a per-connection or per-agent bound was reached; the client goes on with full fetches).", &s.refused),
        ("silt_fetch_session_errors_total", "Incremental fetches answered FETCH_SESSION_ID_NOT_FOUND or INVALID_FETCH_SESSION_EPOCH.", &s.errors),
    ] {
        single(out, name, help, "counter", v.load(r));
    }
}
