"""Client helpers shared by the Python end-to-end tests."""

import socket
import struct
import urllib.request
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

# Settings for consumers that use manual assignment (assign()). librdkafka requires a group.id
# even then; these consumers never join the group and never commit.
CONSUMER_BASE = {
    "group.id": "silt-python-e2e-unused",
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "enable.partition.eof": True,
    "fetch.wait.max.ms": 50,
    "socket.timeout.ms": 10000,
    "topic.metadata.refresh.interval.ms": 1000,
}


def admin(bootstrap, **extra):
    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000, **extra})


def create_topic(bootstrap, name, partitions=1, config=None, timeout=30):
    a = admin(bootstrap)  # must outlive the future: destroying it fails the request
    fs = a.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
        request_timeout=timeout,
    )
    fs[name].result(timeout=timeout)


def consume_all(bootstrap, topic, partitions, expected, timeout=60.0, extra=None):
    """Assigns `partitions` of `topic` from the beginning and polls until `expected` records
    arrived and every partition reported EOF (so nothing beyond them is waiting).

    Returns the list of Message objects in arrival order. Fails on consumer errors other than
    partition EOF and on timeout (reporting how many records arrived)."""
    c = Consumer({"bootstrap.servers": bootstrap, **CONSUMER_BASE, **(extra or {})})
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        got = []
        eof = set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None:
                continue
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    eof.add(m.partition())
                    if len(got) >= expected and eof >= set(partitions):
                        break
                    continue
                raise AssertionError(f"consumer error on {topic}: {err}")
            eof.discard(m.partition())
            got.append(m)
        else:
            raise AssertionError(
                f"timed out after {timeout}s consuming {topic}: got {len(got)} of {expected} records, "
                f"EOF on {sorted(eof)} of {len(partitions)} partitions"
            )
        return got
    finally:
        c.close()


def watermarks(bootstrap, topic, partition, timeout=10.0):
    c = Consumer({"bootstrap.servers": bootstrap, **CONSUMER_BASE})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout, cached=False)
    finally:
        c.close()


def kafka_error(exc):
    """The KafkaError inside a KafkaException raised by an admin future."""
    assert isinstance(exc, KafkaException), f"expected KafkaException, got {type(exc).__name__}: {exc}"
    return exc.args[0]


def produce_all(bootstrap, topic, records, conf=None, flush_timeout=60.0):
    """Produces records (dicts of Producer.produce keyword arguments) with a confluent-kafka
    Producer and waits for every delivery report. Returns one (error, partition, offset) per
    record, in the order given."""
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, **(conf or {})})
    reports = [None] * len(records)

    def cb(i):
        def on_delivery(err, msg):
            reports[i] = (err, msg.partition(), msg.offset())

        return on_delivery

    for i, r in enumerate(records):
        while True:
            try:
                p.produce(topic, on_delivery=cb(i), **r)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    remaining = p.flush(flush_timeout)
    assert remaining == 0, f"{remaining} records still undelivered after {flush_timeout}s"
    missing = [i for i, r in enumerate(reports) if r is None]
    assert not missing, f"no delivery report for records {missing[:10]}"
    return reports


# -- raw protocol (non-flexible request versions, encoded by hand) -------------------------------


def _kstr(s):
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def raw_request(bootstrap, api_key, api_version, body, timeout=10.0):
    """Sends one request with header v1 and returns the response body (after the correlation
    id). Only for non-flexible versions (no tagged fields)."""
    host, port = bootstrap.rsplit(":", 1)
    header = struct.pack(">hhi", api_key, api_version, 7) + _kstr("silt-py-raw")
    frame = header + body
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(struct.pack(">i", len(frame)) + frame)
        size = struct.unpack(">i", _recv_exact(s, 4))[0]
        resp = _recv_exact(s, size)
    corr = struct.unpack(">i", resp[:4])[0]
    assert corr == 7, f"correlation id {corr} != 7"
    return resp[4:]


def _recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        assert chunk, f"connection closed after {len(buf)} of {n} bytes"
        buf += chunk
    return buf


def api_versions_v0(bootstrap):
    """ApiVersions v0: {api_key: (min, max)}; asserts error_code 0."""
    r = raw_request(bootstrap, 18, 0, b"")
    err, n = struct.unpack(">hi", r[:6])
    assert err == 0, f"ApiVersions error {err}"
    out = {}
    for i in range(n):
        k, lo, hi = struct.unpack(">hhh", r[6 + 6 * i : 12 + 6 * i])
        out[k] = (lo, hi)
    return out


def fetch_batches(bootstrap, topic, partition=0, offset=0, max_bytes=50_000_000, version=10):
    """Fetch (v4 or v10) of one partition; returns (error_code, high_watermark, batches), where
    batches are (base_offset, last_offset, attributes, record_count) of each complete batch."""
    assert version in (4, 10)
    body = struct.pack(">iiiib", -1, 100, 1, max_bytes, 0)
    if version >= 7:
        body += struct.pack(">ii", 0, -1)  # no fetch session
    body += struct.pack(">i", 1) + _kstr(topic) + struct.pack(">i", 1)
    if version >= 9:
        body += struct.pack(">iiqqi", partition, -1, offset, -1, max_bytes)
    else:
        body += struct.pack(">iqi", partition, offset, max_bytes)
    if version >= 7:
        body += struct.pack(">i", 0)  # forgotten topics
    r = raw_request(bootstrap, 1, version, body)
    pos = 4  # throttle_time_ms
    if version >= 7:
        (top_err,) = struct.unpack(">h", r[pos : pos + 2])
        assert top_err == 0, f"Fetch v{version} top-level error {top_err}"
        pos += 6  # error_code, session_id
    (ntopics,) = struct.unpack(">i", r[pos : pos + 4])
    pos += 4
    assert ntopics == 1, ntopics
    (tlen,) = struct.unpack(">h", r[pos : pos + 2])
    pos += 2
    assert r[pos : pos + tlen].decode() == topic
    pos += tlen
    (nparts,) = struct.unpack(">i", r[pos : pos + 4])
    pos += 4
    assert nparts == 1, nparts
    p, err, hw, _lso = struct.unpack(">ihqq", r[pos : pos + 22])
    pos += 22
    if version >= 5:
        pos += 8  # log_start_offset
    assert p == partition
    (naborted,) = struct.unpack(">i", r[pos : pos + 4])
    pos += 4 + 16 * max(naborted, 0)
    (rlen,) = struct.unpack(">i", r[pos : pos + 4])
    pos += 4
    records = r[pos : pos + max(rlen, 0)]
    batches = []
    i = 0
    while i + 61 <= len(records):
        base, blen = struct.unpack(">qi", records[i : i + 12])
        if i + 12 + blen > len(records):
            break  # a partial batch at the end is allowed
        magic = records[i + 16]
        assert magic == 2, f"batch at {base} has magic {magic}"
        (attrs,) = struct.unpack(">h", records[i + 21 : i + 23])
        (last_delta,) = struct.unpack(">i", records[i + 23 : i + 27])
        (count,) = struct.unpack(">i", records[i + 57 : i + 61])
        batches.append((base, base + last_delta, attrs, count))
        i += 12 + blen
    return err, hw, batches


def result_of(futures, key, timeout=30):
    """The result of one admin future; the dict holding them stays referenced while waiting
    (confluent-kafka can drop a request whose futures dict was garbage collected)."""
    return futures[key].result(timeout=timeout)


def metric(agent, name):
    """A counter from the agent's /metrics (its admin port is in its log)."""
    port = None
    for line in agent.log_text().splitlines():
        if "admin http on" in line:
            port = line.rsplit(":", 1)[1].strip().rstrip(")")
    assert port, "admin port not in the log"
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")
