"""Old offsets served from the Parquet archive (`silt.archive.serve`): once retention has moved
the raw log start, a consumer reading from offset 0 gets batches rebuilt from Parquet (same
offsets, timestamps, keys, values and headers), then the raw log, then the tail, with no gap;
ListOffsets earliest and by timestamp answer from the archive; deleting archive files or
DeleteRecords moves the start clients see; an agent restart changes nothing."""

import random
import re
import time
from pathlib import Path

import pyarrow.parquet as pq
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from kafka import KafkaConsumer
from kafka import TopicPartition as KTopicPartition

from conftest import wait_until
from helpers import CONSUMER_BASE, consume_all, create_topic, watermarks
from test_archive import _agent, _archived, _get

SERVE_ENV = {
    "SILT_LIFECYCLE__RETENTION_INTERVAL_MS": "200",
    "SILT_ARCHIVE__MAX_FILE_RECORDS": "700",
}
PARTITIONS = 2


def _raw_starts(agent, topic):
    """The raw log start of each partition (the `silt_log_start_offset` gauge)."""
    text = _get(agent.admin_port, "/metrics")
    pat = re.compile(
        r'^silt_log_start_offset\{[^}]*topic="%s"[^}]*partition="(\d+)"[^}]*\} (\d+)$' % re.escape(topic),
        re.M,
    )
    return {int(p): int(v) for p, v in pat.findall(text)}


def _produce(bootstrap, topic, first, n, sent):
    """n records numbered from `first`, from an idempotent and a plain producer, with keys,
    headers, null values and every codec; delivery reports go into `sent`."""
    now_ms = int(time.time() * 1000)
    codecs = ["none", "gzip", "snappy", "lz4", "zstd"]
    producers = [
        Producer({"bootstrap.servers": bootstrap, "compression.type": c, "linger.ms": 5,
                  "enable.idempotence": i % 2 == 0})
        for i, c in enumerate(codecs)
    ]
    for j in range(first, first + n):
        key = None if j % 7 == 0 else f"k{j}".encode()
        value = None if j % 11 == 0 else (f"value-{j}-" + "x" * (j % 300)).encode()
        headers = [("seq", str(j).encode()), ("empty", b"")] if j % 3 else []
        ts = now_ms - 10 * (first + n - j)

        def report(err, msg, key=key, value=value, headers=headers, ts=ts):
            assert err is None, err
            sent[(msg.partition(), msg.offset())] = (key, value, headers, ts)

        producers[j % len(codecs)].produce(topic, key=key, value=value, headers=headers,
                                           timestamp=ts, partition=j % PARTITIONS,
                                           on_delivery=report)
    for p in producers:
        assert p.flush(30) == 0


def _check_all(agent, topic, sent, start=None):
    """Reads every partition from the beginning; every record is exactly what was acknowledged
    and offsets run without a gap from the start clients see to the end."""
    start = start or {p: 0 for p in range(PARTITIONS)}
    expected = {k: v for k, v in sent.items() if k[1] >= start[k[0]]}
    got = consume_all(agent.bootstrap, topic, range(PARTITIONS), len(expected), timeout=90)
    seen = {}
    for m in got:
        k = (m.partition(), m.offset())
        assert k not in seen, f"offset {k} delivered twice"
        seen[k] = (m.key(), m.value(), m.headers() or [], m.timestamp()[1])
    assert set(seen) == set(expected)
    for k, (key, value, headers, ts) in expected.items():
        gk, gv, gh, gts = seen[k]
        assert (gk, gv, gts) == (key, value, ts), f"record {k} differs"
        assert [(h, v or b"") for h, v in gh] == headers, f"headers of {k} differ"
    for p in range(PARTITIONS):
        offs = sorted(o for (q, o) in seen if q == p)
        assert offs == list(range(start[p], start[p] + len(offs))), f"gap in partition {p}"


def _setup(agent_factory, topic):
    a = _agent(agent_factory, **SERVE_ENV)
    create_topic(a.bootstrap, topic, partitions=PARTITIONS,
                 config={"silt.archive.serve": "true", "retention.ms": "1500"})
    sent = {}
    _produce(a.bootstrap, topic, 0, 3000, sent)
    hw = {p: 1 + max(o for (q, o) in sent if q == p) for p in range(PARTITIONS)}
    # Retention moves the raw start only as far as the archive reaches: to the end.
    wait_until(lambda: _raw_starts(a, topic) == hw, timeout=60,
               what=f"raw log start moved to the high watermarks {hw}")
    return a, sent, hw


def test_a_consumer_reads_through_archive_raw_log_and_tail_without_a_gap(agent_factory, topic_name):
    a, sent, hw = _setup(agent_factory, topic_name)
    for p in range(PARTITIONS):
        assert watermarks(a.bootstrap, topic_name, p) == (0, hw[p]), "earliest is the archive's start"
    # More records, archived and dropped from the raw log within the agent's listing cache
    # (just filled by ListOffsets): the file that now holds them must still be found.
    _produce(a.bootstrap, topic_name, 3000, 400, sent)
    hw2 = {p: 1 + max(o for (q, o) in sent if q == p) for p in range(PARTITIONS)}
    wait_until(lambda: _raw_starts(a, topic_name) == hw2, timeout=30,
               what=f"raw log start moved to {hw2}")
    # And records still in the raw log (and the tail cache).
    _produce(a.bootstrap, topic_name, 3400, 200, sent)
    _check_all(a, topic_name, sent)

    # By timestamp: the first record at or after a time the archive alone holds.
    p0 = sorted((o, v[3]) for (q, o), v in sent.items() if q == 0)
    target_offset, target_ts = p0[123]
    c = Consumer({"bootstrap.servers": a.bootstrap, **CONSUMER_BASE})
    try:
        r = c.offsets_for_times([TopicPartition(topic_name, 0, target_ts)], timeout=10)
        want = min(o for o, ts in p0 if ts >= target_ts)
        assert r[0].error is None and r[0].offset == want <= target_offset
    finally:
        c.close()

    # kafka-python checks every batch's CRC; pinned to Kafka 0.10.1 it fetches message sets
    # (Fetch v3), converted down from the rebuilt batches.
    for api_version in [None, (0, 10, 1)]:
        c = KafkaConsumer(bootstrap_servers=a.bootstrap, group_id=None, enable_auto_commit=False,
                          fetch_max_wait_ms=100, check_crcs=True,
                          **({"api_version": api_version} if api_version else {}))
        try:
            tp = KTopicPartition(topic_name, 1)
            c.assign([tp])
            c.seek_to_beginning()
            got = []
            deadline = time.monotonic() + 60
            while len(got) < 1500 and time.monotonic() < deadline:
                for recs in c.poll(timeout_ms=200).values():
                    got.extend(recs)
            want = sorted((o, v) for (q, o), v in sent.items() if q == 1 and o < 1500)
            assert [(r.offset, r.key, r.value) for r in got[:1500]] == [(o, v[0], v[1]) for o, v in want], api_version
        finally:
            c.close()

    # A restart: the archive is listed again and served the same.
    a.restart()
    wait_until(lambda: _archived(a.admin_port, topic_name, PARTITIONS), timeout=30,
               what="archiving resumed")
    _check_all(a, topic_name, sent)


def test_deleted_files_and_delete_records_move_the_start_clients_see(agent_factory, topic_name):
    a, sent, hw = _setup(agent_factory, topic_name)
    files = sorted(Path(a.data_dir, "objects", "archive", f"topic={topic_name}", "partition=0")
                   .rglob("*.parquet"), key=lambda f: f.name)
    assert len(files) >= 2, files
    second = int(files[1].name.split("-")[0])
    files[0].unlink()  # an operator's lifecycle rule expired the oldest file
    wait_until(lambda: watermarks(a.bootstrap, topic_name, 0)[0] == second, timeout=30,
               what="earliest moved to the second file's first offset")
    _check_all(a, topic_name, sent, start={0: second, 1: 0})

    # DeleteRecords below the raw start: archived offsets below it are gone for clients too.
    cut = second + 5
    admin = AdminClient({"bootstrap.servers": a.bootstrap})
    res = admin.delete_records([TopicPartition(topic_name, 0, cut)])
    low = list(res.values())[0].result(timeout=30)
    assert low.low_watermark == cut
    assert watermarks(a.bootstrap, topic_name, 0) == (cut, hw[0])
    assert _raw_starts(a, topic_name)[0] == hw[0], "the raw start never moves backwards"

    # Below the start: OFFSET_OUT_OF_RANGE (seen as an auto.offset.reset error).
    c = Consumer({"bootstrap.servers": a.bootstrap, **CONSUMER_BASE, "auto.offset.reset": "error"})
    try:
        c.assign([TopicPartition(topic_name, 0, cut - 1)])
        err = None
        deadline = time.monotonic() + 30
        while err is None and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error():
                err = m.error()
            assert m is None or m.error() or m.offset() >= cut
        assert err is not None and err.code() == KafkaError._AUTO_OFFSET_RESET, err
    finally:
        c.close()
    a.restart()
    _check_all(a, topic_name, sent, start={0: cut, 1: 0})


def test_any_offset_of_large_files_and_large_records_is_served(agent_factory, topic_name):
    """Shapes the small tests do not draw: one file of three row groups (65 536 rows each) and
    records of several MiB. Consumers assigned at seeded random offsets get exactly that
    offset first, with its value."""
    a = _agent(agent_factory, SILT_LIFECYCLE__RETENTION_INTERVAL_MS="200",
               SILT_ARCHIVE__MAX_FILE_RECORDS="200000", SILT_ARCHIVE__INTERVAL_MS="3000")
    create_topic(a.bootstrap, topic_name, partitions=2,
                 config={"silt.archive.serve": "true", "retention.ms": "1000",
                         "max.message.bytes": str(8 << 20)})
    p = Producer({"bootstrap.servers": a.bootstrap, "linger.ms": 20, "batch.num.messages": 10000,
                  "message.max.bytes": 9 << 20, "compression.type": "lz4"})
    small = 150_000
    for i in range(small):
        p.produce(topic_name, value=b"%08d" % i, partition=0)
        if i % 50_000 == 0:
            p.poll(0)
    big = [bytes([i]) * ((i + 1) * (1 << 20) + i) for i in range(6)]  # 1–6 MiB
    for v in big:
        p.produce(topic_name, value=v, partition=1)
    assert p.flush(60) == 0
    wait_until(lambda: _raw_starts(a, topic_name) == {0: small, 1: len(big)}, timeout=90,
               what="the raw log dropped after archiving")
    # Usually one file of three row groups (an archiver pass during the produce splits it):
    # probe both sides of every row group boundary.
    files = list(Path(a.data_dir, "objects", "archive", f"topic={topic_name}", "partition=0")
                 .rglob("*.parquet"))
    groups = [pq.ParquetFile(f).metadata.row_group(i) for f in files
              for i in range(pq.ParquetFile(f).metadata.num_row_groups)]
    assert max(pq.ParquetFile(f).metadata.num_row_groups for f in files) >= 2, files
    firsts = [g.column(1).statistics.min for g in groups]
    rnd = random.Random(7)
    probes = [o for f in firsts for o in (f - 1, f) if o >= 0] + [small - 1]
    probes += [rnd.randrange(small) for _ in range(10)]
    for off in probes:
        c = Consumer({"bootstrap.servers": a.bootstrap, **CONSUMER_BASE})
        try:
            c.assign([TopicPartition(topic_name, 0, off)])
            m = wait_until(lambda: (lambda m: m if m is not None and not m.error() else None)(c.poll(0.5)),
                           timeout=30, what=f"a record at offset {off}")
            assert (m.offset(), m.value()) == (off, b"%08d" % off)
        finally:
            c.close()
    got = consume_all(a.bootstrap, topic_name, [1], len(big), timeout=60,
                      extra={"fetch.max.bytes": 1 << 20, "max.partition.fetch.bytes": 1 << 20})
    assert [m.value() for m in got] == big


def test_kills_while_archiving_and_retention_run_lose_nothing(agent_factory, topic_name):
    """SIGKILL at seeded random moments while the archiver commits files and retention drops
    the raw log behind it: afterwards every acknowledged record is read from offset 0 exactly
    once, without a gap, through whatever mix of archive and raw log the kills left."""
    a = _agent(agent_factory, **SERVE_ENV)
    create_topic(a.bootstrap, topic_name, partitions=PARTITIONS,
                 config={"silt.archive.serve": "true", "retention.ms": "300"})
    rnd = random.Random(11)
    sent = {}
    for round_ in range(5):
        _produce(a.bootstrap, topic_name, round_ * 800, 800, sent)
        time.sleep(rnd.uniform(0.0, 1.5))
        a.kill()
        a.restart()
    hw = {p: 1 + max(o for (q, o) in sent if q == p) for p in range(PARTITIONS)}
    wait_until(lambda: _raw_starts(a, topic_name) == hw, timeout=60,
               what=f"raw log start moved to {hw}")
    for p in range(PARTITIONS):
        assert watermarks(a.bootstrap, topic_name, p) == (0, hw[p])
    _check_all(a, topic_name, sent)
