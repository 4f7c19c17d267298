"""End-to-end tests with confluent-kafka (librdkafka) against a real silt agent."""

import os
import time

import pytest
from confluent_kafka import (
    TIMESTAMP_CREATE_TIME,
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import ConfigResource, ConfigSource, NewTopic, OffsetSpec, ResourceType

from conftest import wait_until
from helpers import (
    CONSUMER_BASE,
    admin,
    api_versions_v0,
    consume_all,
    create_topic,
    fetch_batches,
    kafka_error,
    result_of,
    produce_all,
    watermarks,
)

N_COMPRESSED = 200


def _record(i, base_ts):
    """Record i of the compression round-trip: every shape a record can take."""
    if i % 17 == 0:
        key = None
    elif i == 1:
        key = b""
    else:
        key = f"key-{i}".encode()
    if i == 5:
        value = None
    elif i == 6:
        value = b""
    elif i % 2:
        value = (f"value {i} " * (1 + i % 7)).encode()  # compressible text
    else:
        value = bytes((i * 7 + j) % 256 for j in range(64 + i))  # binary, every byte value
    if i % 3 == 0:
        headers = None
    else:
        headers = [
            ("dup", b"first"),
            ("bin", bytes([0, 255, i % 256, 10, 13])),
            ("dup", b"second"),
            ("empty", b""),
            ("null", None),
            ("h\u00e9ader", f"{i}".encode()),
            ("dup", b"third"),
        ]
    return {"key": key, "value": value, "headers": headers, "timestamp": base_ts + i}


@pytest.mark.parametrize("compression", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_roundtrip_every_record_shape_with_compression(agent, topic_name, compression):
    base_ts = int(time.time() * 1000) - 3_600_000
    records = [_record(i, base_ts) for i in range(N_COMPRESSED)]
    reports = produce_all(
        agent.bootstrap,
        topic_name,
        records,
        conf={"compression.type": compression, "linger.ms": 20, "batch.num.messages": 64},
    )
    errors = [(i, r[0]) for i, r in enumerate(reports) if r[0] is not None]
    assert not errors, f"delivery errors: {errors[:5]}"
    assert [(p, o) for _, p, o in reports] == [(0, i) for i in range(N_COMPRESSED)]

    msgs = consume_all(agent.bootstrap, topic_name, [0], N_COMPRESSED)
    assert [m.offset() for m in msgs] == list(range(N_COMPRESSED))
    for i, (m, r) in enumerate(zip(msgs, records)):
        assert m.partition() == 0
        assert m.key() == r["key"], f"record {i}: key"
        assert m.value() == r["value"], f"record {i}: value"
        assert m.headers() == r["headers"], f"record {i}: headers"
        assert m.timestamp() == (TIMESTAMP_CREATE_TIME, r["timestamp"]), f"record {i}: timestamp"
    assert watermarks(agent.bootstrap, topic_name, 0) == (0, N_COMPRESSED)


CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


@pytest.mark.parametrize("compression", ["gzip", "snappy", "lz4", "zstd"])
def test_producer_compression_reaches_the_log(agent, topic_name, compression):
    # librdkafka silently sends a batch uncompressed when it believes the broker cannot take the
    # codec (it derives that from ApiVersions); Silt must advertise what makes every codec usable.
    records = [{"key": f"{i}".encode(), "value": f"compressible {i % 3} ".encode() * 40} for i in range(50)]
    reports = produce_all(agent.bootstrap, topic_name, records, conf={"compression.type": compression, "linger.ms": 50})
    assert [(r[0], r[2]) for r in reports] == [(None, i) for i in range(50)]
    err, hw, batches = fetch_batches(agent.bootstrap, topic_name)
    assert (err, hw) == (0, 50)
    assert batches and batches[0][0] == 0 and batches[-1][1] == 49
    codecs = {attrs & 7 for _, _, attrs, _ in batches}
    assert codecs == {CODEC_IDS[compression]}, (
        f"asked librdkafka for {compression} (codec {CODEC_IDS[compression]}); the log holds batches with codecs "
        f"{sorted(codecs)}: {batches}"
    )
    msgs = consume_all(agent.bootstrap, topic_name, [0], 50)
    assert [m.value() for m in msgs] == [r["value"] for r in records]


def test_api_versions_advertises_the_documented_ranges(agent):
    assert api_versions_v0(agent.bootstrap) == {
        0: (0, 12),  # Produce (v0-2: message sets v0/v1, converted; v12: transaction version 2)
        1: (0, 16),  # Fetch (v0-3: message sets, converted down)
        2: (0, 8),  # ListOffsets
        3: (0, 13),  # Metadata
        8: (0, 9),  # OffsetCommit
        9: (0, 9),  # OffsetFetch
        10: (0, 4),  # FindCoordinator
        11: (0, 9),  # JoinGroup
        12: (0, 4),  # Heartbeat
        13: (0, 5),  # LeaveGroup
        14: (0, 5),  # SyncGroup
        15: (0, 5),  # DescribeGroups
        16: (0, 5),  # ListGroups
        68: (0, 1),  # ConsumerGroupHeartbeat (KIP-848)
        69: (0, 1),  # ConsumerGroupDescribe
        18: (0, 4),  # ApiVersions
        19: (0, 7),  # CreateTopics
        20: (0, 6),  # DeleteTopics
        21: (0, 2),  # DeleteRecords
        22: (0, 4),  # InitProducerId
        24: (0, 3),  # AddPartitionsToTxn
        25: (0, 3),  # AddOffsetsToTxn
        26: (0, 5),  # EndTxn (v5: transaction version 2)
        28: (0, 5),  # TxnOffsetCommit (v5: transaction version 2)
        65: (0, 0),  # DescribeTransactions
        66: (0, 1),  # ListTransactions
        23: (0, 4),  # OffsetForLeaderEpoch
        32: (0, 4),  # DescribeConfigs
        42: (0, 2),  # DeleteGroups
        47: (0, 0),  # OffsetDelete
        60: (0, 1),  # DescribeCluster
        17: (0, 1),  # SaslHandshake
        36: (0, 2),  # SaslAuthenticate
        29: (0, 3),  # DescribeAcls
        30: (0, 3),  # CreateAcls
        31: (0, 3),  # DeleteAcls
        50: (0, 0),  # DescribeUserScramCredentials
        51: (0, 0),  # AlterUserScramCredentials
        48: (0, 1),  # DescribeClientQuotas
        49: (0, 1),  # AlterClientQuotas
        61: (0, 0),  # DescribeProducers
        33: (0, 2),  # AlterConfigs
        44: (0, 1),  # IncrementalAlterConfigs
        37: (0, 3),  # CreatePartitions
        35: (1, 4),  # DescribeLogDirs
        43: (0, 2),  # ElectLeaders
        46: (0, 0),  # ListPartitionReassignments
        45: (0, 0),  # AlterPartitionReassignments
    }


def test_idempotent_producer_exactly_once_in_order(agent, topic_name):
    n = 1000
    records = [{"key": str(i % 10).encode(), "value": f"idem-{i}".encode()} for i in range(n)]
    reports = produce_all(
        agent.bootstrap,
        topic_name,
        records,
        conf={"enable.idempotence": True, "linger.ms": 2, "batch.num.messages": 50},
    )
    assert all(r[0] is None for r in reports), [r for r in reports if r[0] is not None][:5]
    assert [o for _, _, o in reports] == list(range(n))

    msgs = consume_all(agent.bootstrap, topic_name, [0], n)
    assert [m.offset() for m in msgs] == list(range(n))
    assert [m.value() for m in msgs] == [r["value"] for r in records]
    assert [m.key() for m in msgs] == [r["key"] for r in records]


def test_one_mebibyte_value_roundtrips(agent, topic_name):
    create_topic(agent.bootstrap, topic_name, config={"max.message.bytes": "2097152"})
    big = os.urandom(1048576)
    reports = produce_all(
        agent.bootstrap,
        topic_name,
        [{"key": b"big", "value": big}, {"key": b"small", "value": b"after"}],
        conf={"message.max.bytes": 3000000, "linger.ms": 0},
    )
    assert [r[0] for r in reports] == [None, None], reports
    assert [r[2] for r in reports] == [0, 1]

    msgs = consume_all(agent.bootstrap, topic_name, [0], 2)
    assert [m.offset() for m in msgs] == [0, 1]
    assert msgs[0].key() == b"big"
    assert len(msgs[0].value()) == 1048576
    assert msgs[0].value() == big
    assert msgs[1].value() == b"after"


def test_hundred_partitions_every_record_once(agent, topic_name):
    parts = 100
    per = 3
    create_topic(agent.bootstrap, topic_name, partitions=parts)
    md = admin(agent.bootstrap).list_topics(timeout=10)
    assert len(md.topics[topic_name].partitions) == parts

    records = [{"partition": p, "value": f"{p}/{j}".encode()} for j in range(per) for p in range(parts)]
    reports = produce_all(agent.bootstrap, topic_name, records, conf={"linger.ms": 10})
    assert all(r[0] is None for r in reports), [r for r in reports if r[0] is not None][:5]
    assert sorted((p, o) for _, p, o in reports) == [(p, o) for p in range(parts) for o in range(per)]

    msgs = consume_all(agent.bootstrap, topic_name, list(range(parts)), parts * per, timeout=90)
    assert len(msgs) == parts * per
    by_part = {}
    for m in msgs:
        by_part.setdefault(m.partition(), []).append((m.offset(), m.value()))
    assert sorted(by_part) == list(range(parts))
    for p in range(parts):
        assert by_part[p] == [(j, f"{p}/{j}".encode()) for j in range(per)], f"partition {p}"


def test_record_larger_than_topic_max_message_bytes_is_refused(agent, topic_name):
    create_topic(agent.bootstrap, topic_name, config={"max.message.bytes": "1000"})
    reports = produce_all(
        agent.bootstrap,
        topic_name,
        [{"value": b"x" * 5000}],
        conf={"linger.ms": 0, "retries": 0},
    )
    err = reports[0][0]
    assert err is not None, f"a 5000-byte record into a topic with max.message.bytes=1000 was accepted: {reports}"
    assert err.code() == KafkaError.MSG_SIZE_TOO_LARGE, f"got {err.name()} ({err.code()}): {err.str()}"

    # The topic still takes records that fit, starting at offset 0 (nothing was appended).
    reports = produce_all(agent.bootstrap, topic_name, [{"value": b"y" * 100}], conf={"linger.ms": 0})
    assert reports[0][0] is None and reports[0][2] == 0, reports


def test_admin_create_describe_delete(agent, topic_name):
    a = admin(agent.bootstrap)
    configs = {"retention.ms": "3600000", "max.message.bytes": "65536"}

    fs = a.create_topics([NewTopic(topic_name, num_partitions=3, replication_factor=1, config=configs)], request_timeout=20)
    assert fs[topic_name].result(timeout=30) is None

    md = a.list_topics(timeout=10)
    assert topic_name in md.topics
    t = md.topics[topic_name]
    assert t.error is None
    assert sorted(t.partitions) == [0, 1, 2]
    for p in t.partitions.values():
        assert p.leader == 0
        assert p.replicas == [0]
        assert p.isrs == [0]

    res = ConfigResource(ResourceType.TOPIC, topic_name)
    desc = result_of(a.describe_configs([res], request_timeout=20), res)
    assert desc["retention.ms"].value == "3600000"
    assert desc["max.message.bytes"].value == "65536"
    assert desc["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert desc["cleanup.policy"].value == "delete"
    assert desc["cleanup.policy"].source == ConfigSource.DEFAULT_CONFIG.value
    assert desc["compression.type"].value == "producer"
    assert desc["min.insync.replicas"].value == "1"

    # Again: TOPIC_ALREADY_EXISTS, and the existing topic is unchanged.
    fs = a.create_topics([NewTopic(topic_name, num_partitions=5, replication_factor=1)], request_timeout=20)
    with pytest.raises(KafkaException) as ei:
        fs[topic_name].result(timeout=30)
    assert kafka_error(ei.value).code() == KafkaError.TOPIC_ALREADY_EXISTS, kafka_error(ei.value)
    assert len(a.list_topics(timeout=10).topics[topic_name].partitions) == 3

    # validate_only: accepted, but nothing is created.
    dry = topic_name + "-dry"
    fs = a.create_topics([NewTopic(dry, num_partitions=2, replication_factor=1)], validate_only=True, request_timeout=20)
    assert fs[dry].result(timeout=30) is None
    assert dry not in a.list_topics(timeout=10).topics

    # validate_only of an existing topic reports it exists.
    fs = a.create_topics([NewTopic(topic_name, num_partitions=3, replication_factor=1)], validate_only=True, request_timeout=20)
    with pytest.raises(KafkaException) as ei:
        fs[topic_name].result(timeout=30)
    assert kafka_error(ei.value).code() == KafkaError.TOPIC_ALREADY_EXISTS

    # Invalid topic name.
    fs = a.create_topics([NewTopic("bad name!", num_partitions=1, replication_factor=1)], request_timeout=20)
    with pytest.raises(KafkaException) as ei:
        fs["bad name!"].result(timeout=30)
    assert kafka_error(ei.value).code() == KafkaError.TOPIC_EXCEPTION, kafka_error(ei.value)

    # Unknown config name.
    odd = topic_name + "-odd"
    fs = a.create_topics([NewTopic(odd, num_partitions=1, replication_factor=1, config={"no.such.config": "1"})], request_timeout=20)
    with pytest.raises(KafkaException) as ei:
        fs[odd].result(timeout=30)
    assert kafka_error(ei.value).code() == KafkaError.INVALID_CONFIG, kafka_error(ei.value)
    assert odd not in a.list_topics(timeout=10).topics

    # Delete, then delete again.
    fs = a.delete_topics([topic_name], request_timeout=20)
    assert fs[topic_name].result(timeout=30) is None
    wait_until(lambda: topic_name not in a.list_topics(timeout=10).topics, timeout=15, what="topic to disappear from metadata")
    fs = a.delete_topics([topic_name], request_timeout=20)
    with pytest.raises(KafkaException) as ei:
        fs[topic_name].result(timeout=30)
    assert kafka_error(ei.value).code() == KafkaError.UNKNOWN_TOPIC_OR_PART, kafka_error(ei.value)

    res = ConfigResource(ResourceType.TOPIC, topic_name)
    with pytest.raises(KafkaException) as ei:
        result_of(a.describe_configs([res], request_timeout=20), res)
    assert kafka_error(ei.value).code() == KafkaError.UNKNOWN_TOPIC_OR_PART, kafka_error(ei.value)


def _stored_batches(bootstrap, topic, compression, n):
    """The partition's batches as served (base, last, attributes, count); checks they cover
    0..n-1 and carry the producer's codec."""
    err, hw, batches = fetch_batches(bootstrap, topic)
    assert (err, hw) == (0, n)
    assert [b[0] for b in batches][:1] == [0] and batches[-1][1] == n - 1, batches
    assert {b[2] & 7 for b in batches} == {CODEC_IDS[compression]}, batches
    return batches


def _batch_of(batches, offset):
    (b,) = [b for b in batches if b[0] <= offset <= b[1]]
    return b


def _lookup_answer(batches, exact):
    """What ListOffsets by timestamp answers when the exact answer is `exact`: the exact offset in
    an uncompressed batch, the batch's first offset in a compressed one."""
    b = _batch_of(batches, exact)
    return b[0] if b[2] & 7 else exact


@pytest.mark.parametrize(
    "batching,compression",
    [("batch-per-record", "none"), ("one-batch", "none"), ("one-batch", "gzip"), ("one-batch", "zstd")],
)
def test_watermarks_and_offsets_for_times(agent, topic_name, batching, compression):
    # Timestamps far in the past: keep retention from deleting them.
    create_topic(agent.bootstrap, topic_name, config={"retention.ms": "-1"})
    n = 10
    records = [{"value": f"ts-{i} ".encode() * 50, "timestamp": 1000 * (i + 1)} for i in range(n)]
    if batching == "one-batch":
        conf = {"linger.ms": 200, "batch.num.messages": n}
    else:
        conf = {"linger.ms": 0, "max.in.flight": 1}
    conf["compression.type"] = compression
    reports = produce_all(agent.bootstrap, topic_name, records, conf=conf)
    assert [(r[0], r[2]) for r in reports] == [(None, i) for i in range(n)]
    batches = _stored_batches(agent.bootstrap, topic_name, compression, n)

    c = Consumer({"bootstrap.servers": agent.bootstrap, **CONSUMER_BASE})
    try:
        assert c.get_watermark_offsets(TopicPartition(topic_name, 0), timeout=10, cached=False) == (0, n)

        def lookup(ts):
            (tp,) = c.offsets_for_times([TopicPartition(topic_name, 0, ts)], timeout=10)
            assert tp.error is None, tp.error
            return tp.offset

        # Kafka answers with the first record whose timestamp is at or after the target. Silt
        # does the same for uncompressed batches; for a compressed batch it answers with the
        # batch's first offset (docs/compatibility.md, "Timestamp lookups").
        assert lookup(2500) == _lookup_answer(batches, 2)  # the record with timestamp 3000
        assert lookup(3000) == _lookup_answer(batches, 2)
        assert lookup(0) == 0
        assert lookup(10000) == _lookup_answer(batches, n - 1)
        assert lookup(10001) == -1  # nothing at or after: OFFSET_END
    finally:
        c.close()

    msgs = consume_all(agent.bootstrap, topic_name, [0], n)
    assert [m.timestamp() for m in msgs] == [(TIMESTAMP_CREATE_TIME, 1000 * (i + 1)) for i in range(n)]


@pytest.mark.parametrize(
    "batching,compression", [("batch-per-record", "none"), ("one-batch", "none"), ("one-batch", "gzip")]
)
def test_admin_list_offsets_earliest_latest_max_timestamp(agent, topic_name, batching, compression):
    create_topic(agent.bootstrap, topic_name, config={"retention.ms": "-1"})
    stamps = [5000, 9000, 7000, 8000]  # the largest timestamp is not the last record
    # Compressible values: librdkafka sends a batch uncompressed when compression does not help.
    records = [{"value": f"m{i} ".encode() * 50, "timestamp": ts} for i, ts in enumerate(stamps)]
    if batching == "one-batch":
        conf = {"linger.ms": 200, "batch.num.messages": len(stamps)}
    else:
        conf = {"linger.ms": 0, "max.in.flight": 1}
    conf["compression.type"] = compression
    reports = produce_all(agent.bootstrap, topic_name, records, conf=conf)
    assert [(r[0], r[2]) for r in reports] == [(None, i) for i in range(len(stamps))]
    batches = _stored_batches(agent.bootstrap, topic_name, compression, len(stamps))

    a = admin(agent.bootstrap)
    tp = TopicPartition(topic_name, 0)

    def one(spec):
        res = a.list_offsets({tp: spec}, request_timeout=20)
        (f,) = res.values()
        return f.result(timeout=30)

    assert one(OffsetSpec.earliest()).offset == 0
    assert one(OffsetSpec.latest()).offset == len(stamps)
    # Max timestamp: the record holding it (offset 1); for a compressed batch Silt answers with
    # the batch's last offset (docs/compatibility.md, "Timestamp lookups").
    mx = one(OffsetSpec.max_timestamp())
    b = _batch_of(batches, 1)
    assert (mx.offset, mx.timestamp) == (b[1] if b[2] & 7 else 1, 9000)
    at = one(OffsetSpec.for_timestamp(6000))  # first record with timestamp >= 6000: offset 1
    assert at.offset == _lookup_answer(batches, 1)
    if not b[2] & 7:
        assert at.timestamp == 9000
    at = one(OffsetSpec.for_timestamp(5000))
    assert at.offset == 0


def test_consume_from_the_middle_of_compressed_batches(agent, topic_name):
    n = 200
    records = [{"key": f"{i}".encode(), "value": f"middle {i} ".encode() * 5} for i in range(n)]
    reports = produce_all(
        agent.bootstrap, topic_name, records, conf={"compression.type": "zstd", "linger.ms": 50, "batch.num.messages": 64}
    )
    assert [(r[0], r[2]) for r in reports] == [(None, i) for i in range(n)]
    c = Consumer({"bootstrap.servers": agent.bootstrap, **CONSUMER_BASE})
    try:
        for start in (1, 63, 64, 65, 150, 199):
            c.assign([TopicPartition(topic_name, 0, start)])
            got = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                m = c.poll(0.2)
                if m is None:
                    continue
                if m.error() is not None:
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        break
                    raise AssertionError(f"consumer error: {m.error()}")
                got.append((m.offset(), m.key()))
            else:
                raise AssertionError(f"no EOF consuming from {start}: got {len(got)} records")
            assert got == [(i, f"{i}".encode()) for i in range(start, n)], f"from offset {start}"
    finally:
        c.close()


def test_fetch_beyond_the_end_is_out_of_range(agent, topic_name):
    reports = produce_all(agent.bootstrap, topic_name, [{"value": f"{i}".encode()} for i in range(5)])
    assert [(r[0], r[2]) for r in reports] == [(None, i) for i in range(5)]
    c = Consumer({"bootstrap.servers": agent.bootstrap, **CONSUMER_BASE, "auto.offset.reset": "error"})
    try:
        c.assign([TopicPartition(topic_name, 0, 100)])
        deadline = time.monotonic() + 30
        err = None
        while time.monotonic() < deadline and err is None:
            m = c.poll(0.2)
            if m is None:
                continue
            assert m.error() is not None, f"got a record at offset {m.offset()} when asking for offset 100 of 5"
            if m.error().code() != KafkaError._PARTITION_EOF:
                err = m.error()
        assert err is not None, "no error for an out-of-range fetch offset"
        assert err.code() == KafkaError._AUTO_OFFSET_RESET, err
        assert "OFFSET_OUT_OF_RANGE" in err.str() or "out of range" in err.str().lower(), err.str()
    finally:
        c.close()


def test_deleted_topic_recreated_starts_empty(agent, topic_name):
    reports = produce_all(agent.bootstrap, topic_name, [{"value": f"old-{i}".encode()} for i in range(10)])
    assert [(r[0], r[2]) for r in reports] == [(None, i) for i in range(10)]
    a = admin(agent.bootstrap)
    assert result_of(a.delete_topics([topic_name], request_timeout=20), topic_name) is None
    wait_until(lambda: topic_name not in a.list_topics(timeout=10).topics, timeout=15, what="topic deletion")

    create_topic(agent.bootstrap, topic_name, partitions=2)
    assert sorted(a.list_topics(timeout=10).topics[topic_name].partitions) == [0, 1]
    assert watermarks(agent.bootstrap, topic_name, 0) == (0, 0)
    reports = produce_all(agent.bootstrap, topic_name, [{"value": b"new", "partition": 0}])
    assert (reports[0][0], reports[0][2]) == (None, 0)
    msgs = consume_all(agent.bootstrap, topic_name, [0, 1], 1)
    assert [(m.partition(), m.offset(), m.value()) for m in msgs] == [(0, 0, b"new")]


def test_log_append_time_topic_stamps_records_with_broker_time(agent, topic_name):
    create_topic(agent.bootstrap, topic_name, config={"message.timestamp.type": "LogAppendTime"})
    before = int(time.time() * 1000)
    reports = []
    p = Producer({"bootstrap.servers": agent.bootstrap, "acks": "all", "linger.ms": 5})
    for i in range(5):
        p.produce(
            topic_name,
            value=f"lat-{i}".encode(),
            timestamp=1000 + i,
            on_delivery=lambda err, msg: reports.append((err, msg.offset(), msg.timestamp())),
        )
    assert p.flush(30) == 0
    after = int(time.time() * 1000)
    assert [(e, o) for e, o, _ in sorted(reports, key=lambda r: r[1])] == [(None, i) for i in range(5)]
    for _, _, (kind, ts) in reports:
        assert kind == TIMESTAMP_LOG_APPEND_TIME, reports
        assert before - 1000 <= ts <= after + 1000, (ts, before, after)

    msgs = consume_all(agent.bootstrap, topic_name, [0], 5)
    for m in msgs:
        kind, ts = m.timestamp()
        assert kind == TIMESTAMP_LOG_APPEND_TIME
        assert before - 1000 <= ts <= after + 1000, (ts, before, after)
    assert [m.value() for m in msgs] == [f"lat-{i}".encode() for i in range(5)]


def test_timestamps_outside_the_topic_bounds_are_refused(agent, topic_name):
    # Kafka refuses CreateTime records further than message.timestamp.before.max.ms in the past
    # or message.timestamp.after.max.ms in the future with INVALID_TIMESTAMP (KIP-937).
    create_topic(
        agent.bootstrap,
        topic_name,
        config={"message.timestamp.before.max.ms": "3600000", "message.timestamp.after.max.ms": "3600000"},
    )
    now = int(time.time() * 1000)
    reports = produce_all(
        agent.bootstrap,
        topic_name,
        [{"value": b"too old", "timestamp": now - 7_200_000}],
        conf={"linger.ms": 0, "retries": 0},
    )
    assert reports[0][0] is not None, f"a record 2 h old was accepted at offset {reports[0][2]}"
    assert reports[0][0].code() == KafkaError.INVALID_TIMESTAMP, reports[0][0]
    reports = produce_all(
        agent.bootstrap,
        topic_name,
        [{"value": b"too new", "timestamp": now + 7_200_000}],
        conf={"linger.ms": 0, "retries": 0},
    )
    assert reports[0][0] is not None, f"a record 2 h in the future was accepted at offset {reports[0][2]}"
    assert reports[0][0].code() == KafkaError.INVALID_TIMESTAMP, reports[0][0]
    reports = produce_all(agent.bootstrap, topic_name, [{"value": b"now", "timestamp": now}], conf={"linger.ms": 0})
    assert (reports[0][0], reports[0][2]) == (None, 0)


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_records_without_a_key_are_refused_on_compacted_topics(agent, topic_name, compression):
    # Kafka refuses keyless records on cleanup.policy=compact topics with INVALID_RECORD and names
    # each one (KIP-467): librdkafka fails those with INVALID_RECORD and the rest of their batch
    # with _INVALID_DIFFERENT_RECORD (librdkafka's 0011_produce_batch). Compressed batches too.
    create_topic(agent.bootstrap, topic_name, config={"cleanup.policy": "compact,delete"})
    conf = {"linger.ms": 50, "retries": 0, "compression.type": compression}
    records = [{"value": b"v%d" % i, "key": None if i % 3 == 0 else b"k%d" % i} for i in range(9)]
    reports = produce_all(agent.bootstrap, topic_name, records, conf=conf)
    codes = [r[0].code() if r[0] else None for r in reports]
    assert codes.count(KafkaError.INVALID_RECORD) == 3, codes
    assert set(codes) <= {KafkaError.INVALID_RECORD, KafkaError._INVALID_DIFFERENT_RECORD}, codes
    keyed = produce_all(agent.bootstrap, topic_name, [{"value": b"ok", "key": b"k"}], conf=conf)
    assert (keyed[0][0], keyed[0][2]) == (None, 0), keyed
    # A topic that is not compacted takes keyless records.
    create_topic(agent.bootstrap, topic_name + "-plain")
    plain = produce_all(agent.bootstrap, topic_name + "-plain", [{"value": b"v"}], conf=conf)
    assert plain[0][0] is None, plain


def test_describe_cluster_names_this_agent(agent):
    client = admin(agent.bootstrap)  # keep the handle alive until the future resolves
    d = client.describe_cluster(request_timeout=10).result()
    assert d.cluster_id, "a cluster id is reported"
    assert [n.id for n in d.nodes] == [0]
    assert d.controller.id == 0, "the controller must be a live agent (admin clients send CreateTopics there)"
    host, port = agent.bootstrap.split(":")
    assert (d.nodes[0].host, d.nodes[0].port) == (host, int(port))
