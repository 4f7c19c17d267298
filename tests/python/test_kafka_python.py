"""End-to-end tests with kafka-python (a pure Python client; it opens with ApiVersions v4)."""

import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError

from conftest import wait_until
from helpers import fetch_batches

N = 100


def _consume(bootstrap, topic, partitions, expected, timeout=60.0):
    """Manual assignment from the beginning; returns ConsumerRecords once `expected` arrived and
    the position reached the end offsets (so nothing beyond them is waiting)."""
    c = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        consumer_timeout_ms=1000,
        fetch_max_wait_ms=100,
        request_timeout_ms=20000,
    )
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        c.assign(tps)
        c.seek_to_beginning()
        got = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=200).values():
                got.extend(recs)
            if len(got) >= expected:
                end = c.end_offsets(tps)
                if all(c.position(tp) >= end[tp] for tp in tps):
                    return got
        raise AssertionError(f"timed out consuming {topic}: got {len(got)} of {expected} records")
    finally:
        c.close()


def _record(i, base_ts):
    key = None if i % 11 == 0 else f"k{i}".encode()
    value = None if i == 7 else (b"" if i == 8 else f"kafka-python value {i} ".encode() * (1 + i % 5))
    headers = [] if i % 4 == 0 else [("dup", b"a"), ("bin", bytes([0, 1, 255, i % 256])), ("dup", b"b")]
    return key, value, headers, base_ts + i


@pytest.mark.parametrize("compression", [None, "gzip", "snappy", "lz4", "zstd"])
def test_produce_consume_with_compression(agent, topic_name, compression):
    p = KafkaProducer(
        bootstrap_servers=agent.bootstrap,
        acks="all",
        compression_type=compression,
        linger_ms=10,
        request_timeout_ms=20000,
    )
    try:
        base_ts = int(time.time() * 1000) - 3_600_000
        records = [_record(i, base_ts) for i in range(N)]
        futures = [
            p.send(topic_name, key=k, value=v, headers=h, timestamp_ms=ts) for k, v, h, ts in records
        ]
        p.flush(timeout=60)
        metas = [f.get(timeout=30) for f in futures]
    finally:
        p.close(timeout=10)
    assert [(m.topic, m.partition, m.offset) for m in metas] == [(topic_name, 0, i) for i in range(N)]

    got = _consume(agent.bootstrap, topic_name, [0], N)
    assert [r.offset for r in got] == list(range(N))
    for i, (r, (k, v, h, ts)) in enumerate(zip(got, records)):
        assert r.key == k, f"record {i}: key"
        assert r.value == v, f"record {i}: value"
        assert list(r.headers) == h, f"record {i}: headers"
        assert r.timestamp == ts, f"record {i}: timestamp"
        assert r.timestamp_type == 0, f"record {i}: timestamp type (0 = CreateTime)"

    # The batches are stored and served with the codec the producer used.
    err, hw, batches = fetch_batches(agent.bootstrap, topic_name)
    assert (err, hw) == (0, N)
    want = {None: 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}[compression]
    assert {attrs & 7 for _, _, attrs, _ in batches} == {want}, batches
    assert sum(count for _, _, _, count in batches) == N


def test_admin_create_list_describe_delete(agent, topic_name):
    a = KafkaAdminClient(bootstrap_servers=agent.bootstrap, request_timeout_ms=20000)
    try:
        res = a.create_topics(
            {topic_name: {"num_partitions": 2, "replication_factor": 1, "configs": {"retention.ms": "7200000"}}}
        )
        assert [(t["name"], t["error_code"]) for t in res["topics"]] == [(topic_name, 0)]

        assert topic_name in a.list_topics()
        (desc,) = a.describe_topics([topic_name])
        assert desc["error_code"] == 0
        assert sorted(p["partition_index"] for p in desc["partitions"]) == [0, 1]
        assert all(p["leader_id"] == 0 for p in desc["partitions"])

        cr = ConfigResource(ConfigResourceType.TOPIC, topic_name)
        modified = a.describe_configs([cr])["topic"][topic_name]
        assert modified["retention.ms"]["value"] == "7200000"
        assert "cleanup.policy" not in modified, "only non-default configs are reported as modified"
        every = a.describe_configs([cr], config_filter="all")["topic"][topic_name]
        assert every["retention.ms"]["value"] == "7200000"
        assert every["cleanup.policy"]["value"] == "delete"

        with pytest.raises(TopicAlreadyExistsError):
            a.create_topics({topic_name: {"num_partitions": 1, "replication_factor": 1}})

        res = a.delete_topics([topic_name])
        assert [(t["name"], t["error_code"]) for t in res["topics"]] == [(topic_name, 0)]
        wait_until(lambda: topic_name not in a.list_topics(), timeout=15, what="topic to disappear")
        with pytest.raises(UnknownTopicOrPartitionError):
            a.delete_topics([topic_name])
    finally:
        a.close()


@pytest.mark.parametrize("api_version", [(0, 11), (1, 1), (2, 1)], ids=lambda v: "kafka-%d.%d" % v)
def test_older_protocol_versions(agent, topic_name, api_version):
    # Pinning api_version makes kafka-python use that broker's request versions instead of the
    # newest both sides support (0.11: Produce v3, Fetch v5, ListOffsets v2, Metadata v4).
    base_ts = int(time.time() * 1000) - 3_600_000
    p = KafkaProducer(
        bootstrap_servers=agent.bootstrap,
        api_version=api_version,
        acks="all",
        compression_type="gzip",
        enable_idempotence=False,
        linger_ms=5,
    )
    try:
        futures = [
            p.send(topic_name, key=f"k{i}".encode(), value=f"v{i}".encode(), headers=[("n", f"{i}".encode())], timestamp_ms=base_ts + i)
            for i in range(30)
        ]
        p.flush(timeout=60)
        assert [f.get(timeout=30).offset for f in futures] == list(range(30))
    finally:
        p.close(timeout=10)

    c = KafkaConsumer(
        bootstrap_servers=agent.bootstrap, api_version=api_version, group_id=None, enable_auto_commit=False,
        consumer_timeout_ms=1000, fetch_max_wait_ms=100,
    )
    try:
        tp = TopicPartition(topic_name, 0)
        c.assign([tp])
        assert c.beginning_offsets([tp]) == {tp: 0}
        assert c.end_offsets([tp]) == {tp: 30}
        assert c.offsets_for_times({tp: base_ts + 3_600_000})[tp] is None  # nothing that late
        c.seek_to_beginning()
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 30 and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=200).values():
                got.extend(recs)
        assert [(r.offset, r.key, r.value, list(r.headers), r.timestamp) for r in got] == [
            (i, f"k{i}".encode(), f"v{i}".encode(), [("n", f"{i}".encode())], base_ts + i) for i in range(30)
        ]
    finally:
        c.close()


def test_tiny_fetch_limits_still_make_progress(agent, topic_name):
    # Every fetch response may hold at most ~1 KiB; batches are larger than that, and the broker
    # must still return the first batch whole so the consumer makes progress (KIP-74).
    n = 600
    p = KafkaProducer(bootstrap_servers=agent.bootstrap, acks="all", linger_ms=20, batch_size=4096)
    try:
        futures = [p.send(topic_name, value=f"small record {i:04d} ".encode() * 4) for i in range(n)]
        p.flush(timeout=60)
        assert [f.get(timeout=30).offset for f in futures] == list(range(n))
    finally:
        p.close(timeout=10)
    c = KafkaConsumer(
        bootstrap_servers=agent.bootstrap, group_id=None, enable_auto_commit=False,
        fetch_max_bytes=1024, max_partition_fetch_bytes=1024, fetch_max_wait_ms=50,
    )
    try:
        tp = TopicPartition(topic_name, 0)
        c.assign([tp])
        c.seek_to_beginning()
        got = []
        deadline = time.monotonic() + 60
        while len(got) < n and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=200).values():
                got.extend(recs)
        assert [r.offset for r in got] == list(range(n))
        assert [r.value for r in got] == [f"small record {i:04d} ".encode() * 4 for i in range(n)]
    finally:
        c.close()


def _metric(port, name):
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"metric {name} not exported")


def test_incremental_fetch_sessions_read_every_record_once(agent_factory, topic_name):
    """kafka-python uses KIP-227 fetch sessions by default: a consumer of 64 partitions, fed
    while it reads, gets every record once, and the agent served it incremental fetches."""
    from kafka.admin import NewTopic

    from conftest import _free_port

    admin_port = _free_port()
    agent = agent_factory(SILT_ADMIN_LISTEN=f"127.0.0.1:{admin_port}")

    partitions = 64
    a = KafkaAdminClient(bootstrap_servers=agent.bootstrap)
    a.create_topics([NewTopic(topic_name, partitions, 1)])
    a.close()
    c = KafkaConsumer(
        bootstrap_servers=agent.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
        request_timeout_ms=20000,
    )
    p = KafkaProducer(bootstrap_servers=agent.bootstrap, acks="all", linger_ms=5)
    try:
        tps = [TopicPartition(topic_name, i) for i in range(partitions)]
        c.assign(tps)
        c.seek_to_beginning()
        sent, got = set(), []
        # Rounds of writes to a few partitions at a time, so most incremental responses are
        # narrower than the session.
        for rnd in range(20):
            for i in range(10):
                v = f"{rnd}-{i}".encode()
                p.send(topic_name, value=v, partition=(rnd * 7 + i % 3) % partitions)
                sent.add(v)
            p.flush(30)
            for recs in c.poll(timeout_ms=200).values():
                got.extend(r.value for r in recs)
        deadline = time.monotonic() + 60
        while len(got) < len(sent) and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=200).values():
                got.extend(r.value for r in recs)
        assert len(got) == len(sent), f"read {len(got)} records, {len(set(got))} distinct, of {len(sent)}"
        assert set(got) == sent
        assert _metric(admin_port, "silt_fetch_sessions_created_total") >= 1
        assert _metric(admin_port, "silt_fetch_incremental_total") >= 10
        assert _metric(admin_port, "silt_fetch_session_errors_total") == 0
    finally:
        c.close()
        p.close()
