"""Transactions with stock clients against the real agent: confluent-kafka (librdkafka) and
kafka-python transactional producers commit and abort; a read_committed consumer sees every committed
record once and no aborted one, a read_uncommitted consumer sees both (and no control record);
an open transaction holds read_committed readers back (last stable offset); a second instance
of the producer fences the first; a transaction left open past its timeout is aborted."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from conftest import wait_until
from helpers import create_topic

APPS = Path(__file__).parent / "apps"


def _producer(agent, tid, **extra):
    p = Producer({"bootstrap.servers": agent.bootstrap, "transactional.id": tid,
                  "transaction.timeout.ms": 60000, "linger.ms": 5, **extra})
    p.init_transactions(30)
    return p


def _read(agent, topic, partitions, isolation, idle=3.0, timeout=60.0):
    c = Consumer({"bootstrap.servers": agent.bootstrap, "group.id": f"r-{uuid.uuid4().hex[:6]}",
                  "isolation.level": isolation, "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "enable.partition.eof": True})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got, eof, deadline, last = [], set(), time.time() + timeout, time.time()
    try:
        while time.time() < deadline:
            m = c.poll(0.2)
            if m is None:
                if len(eof) == partitions and time.time() - last > idle:
                    break
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    eof.add(m.partition())
                    continue
                raise KafkaException(m.error())
            last = time.time()
            eof.discard(m.partition())
            got.append((m.partition(), m.value()))
    finally:
        c.close()
    return got


def test_committed_records_are_read_once_and_aborted_ones_never(agent, topic_name):
    create_topic(agent.bootstrap, topic_name, partitions=3)
    p = _producer(agent, f"tx-{uuid.uuid4().hex[:6]}")
    committed, aborted = [], []
    for round_ in range(6):
        p.begin_transaction()
        values = [f"r{round_}-{i}".encode() for i in range(30)]
        for i, v in enumerate(values):
            p.produce(topic_name, value=v, partition=i % 3)
        if round_ % 3 == 1:
            p.flush(30)  # in the log before the abort (unsent records would just be dropped)
            p.abort_transaction(30)
            aborted += values
        else:
            p.commit_transaction(30)
            committed += values
    # Non-transactional records from another producer interleave with them.
    plain = Producer({"bootstrap.servers": agent.bootstrap})
    for i in range(10):
        plain.produce(topic_name, value=f"plain-{i}".encode(), partition=i % 3)
    assert plain.flush(30) == 0
    committed += [f"plain-{i}".encode() for i in range(10)]

    seen = [v for _, v in _read(agent, topic_name, 3, "read_committed")]
    assert sorted(seen) == sorted(committed), "every committed record once, no aborted one"
    assert not set(seen) & set(aborted)
    everything = [v for _, v in _read(agent, topic_name, 3, "read_uncommitted")]
    assert sorted(everything) == sorted(committed + aborted), "no control record is shown"


def test_an_open_transaction_holds_read_committed_readers_back(agent, topic_name):
    create_topic(agent.bootstrap, topic_name, partitions=1)
    p = _producer(agent, f"tx-{uuid.uuid4().hex[:6]}")
    p.begin_transaction()
    p.produce(topic_name, value=b"pending", partition=0)
    p.flush(30)
    def latest(isolation):
        c = Consumer({"bootstrap.servers": agent.bootstrap, "group.id": "lso", "isolation.level": isolation})
        try:
            return c.get_watermark_offsets(TopicPartition(topic_name, 0), timeout=10, cached=False)[1]
        finally:
            c.close()

    assert latest("read_uncommitted") == 1, "the high watermark includes the open transaction"
    assert latest("read_committed") == 0, "ListOffsets read_committed answers the last stable offset"
    assert [v for _, v in _read(agent, topic_name, 1, "read_committed", idle=1.0)] == []
    p.commit_transaction(30)
    assert latest("read_committed") == 2, "past the records and the commit marker"
    assert [v for _, v in _read(agent, topic_name, 1, "read_committed")] == [b"pending"]


def test_a_new_instance_fences_the_old_one_and_aborts_its_transaction(agent, topic_name):
    create_topic(agent.bootstrap, topic_name, partitions=1)
    tid = f"tx-{uuid.uuid4().hex[:6]}"
    old = _producer(agent, tid)
    old.begin_transaction()
    old.produce(topic_name, value=b"zombie", partition=0)
    old.flush(30)
    new = _producer(agent, tid)  # bumps the epoch and aborts the open transaction
    new.begin_transaction()
    new.produce(topic_name, value=b"fresh", partition=0)
    new.commit_transaction(30)
    with pytest.raises(KafkaException) as e:
        old.commit_transaction(10)
    assert e.value.args[0].fatal() or e.value.args[0].code() in (
        KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH), e.value
    assert [v for _, v in _read(agent, topic_name, 1, "read_committed")] == [b"fresh"]


def test_a_fenced_instance_that_writes_again_gets_a_fatal_error(agent, topic_name):
    # librdkafka's 0103_transactions "produce after fence": the old instance's next write is
    # answered INVALID_PRODUCER_EPOCH (fenced, fatal), not INVALID_TXN_STATE (abortable).
    create_topic(agent.bootstrap, topic_name, partitions=1)
    tid = f"tx-{uuid.uuid4().hex[:6]}"
    old = _producer(agent, tid)
    old.begin_transaction()
    old.produce(topic_name, value=b"before", partition=0)
    old.flush(30)
    _producer(agent, tid)  # bumps the epoch and aborts the open transaction
    old.produce(topic_name, value=b"after", partition=0)
    # The client raises the fatal error from its poll loop as soon as the answer arrives.
    with pytest.raises(KafkaException) as fenced:
        old.flush(30)
    assert fenced.value.args[0].code() == KafkaError._FENCED, fenced.value
    assert fenced.value.args[0].fatal(), fenced.value
    with pytest.raises(KafkaException) as e:
        old.commit_transaction(10)
    err = e.value.args[0]
    assert err.fatal() and not err.txn_requires_abort(), err
    assert _read(agent, topic_name, 1, "read_committed") == []


def test_a_transaction_past_its_timeout_is_aborted(agent_factory, topic_name):
    agent = agent_factory(SILT_TRANSACTIONS__CHECK_INTERVAL_MS="200")
    create_topic(agent.bootstrap, topic_name, partitions=1)
    p = _producer(agent, f"tx-{uuid.uuid4().hex[:6]}", **{"transaction.timeout.ms": 2000})
    p.begin_transaction()
    p.produce(topic_name, value=b"abandoned", partition=0)
    p.flush(30)
    time.sleep(4)
    # The coordinator aborted it: read_committed readers are no longer held back, and see nothing.
    assert [v for _, v in _read(agent, topic_name, 1, "read_committed")] == []
    assert "transaction timed out" in agent.log_text()
    # The producer, as if it had been frozen past its timeout and resumed: it is fenced and can
    # neither write into a transaction nor commit one.
    p.produce(topic_name, value=b"zombie write", partition=0)
    with pytest.raises(KafkaException):
        p.commit_transaction(15)
    assert [v for _, v in _read(agent, topic_name, 1, "read_committed")] == []
    everything = [v for _, v in _read(agent, topic_name, 1, "read_uncommitted")]
    assert b"zombie write" not in everything, "a fenced producer's write never lands"


def test_a_producer_frozen_past_its_timeout_cannot_commit_or_write(agent_factory, topic_name):
    """A real zombie: the producer's whole process is frozen (SIGSTOP) past its transaction
    timeout, so the coordinator aborts the transaction; resumed, it can neither write into it
    nor commit it, and nothing it wrote is ever visible."""
    agent = agent_factory(SILT_TRANSACTIONS__CHECK_INTERVAL_MS="200")
    create_topic(agent.bootstrap, topic_name, partitions=1)
    app = subprocess.Popen(
        [sys.executable, str(APPS / "zombie_producer.py"), agent.bootstrap, topic_name,
         f"tx-{uuid.uuid4().hex[:6]}", "3000"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert app.stdout.readline().strip() == "ready"
        os.kill(app.pid, signal.SIGSTOP)
        time.sleep(6)  # twice the transaction timeout
        wait_until(lambda: "transaction timed out" in agent.log_text(), what="the abort")
        os.kill(app.pid, signal.SIGCONT)
        app.stdin.write("go\n")
        app.stdin.flush()
        verdict = app.stdout.readline().strip()
        assert verdict.startswith("refused"), verdict
        app.wait(30)
    finally:
        app.kill()
    assert _read(agent, topic_name, 1, "read_committed") == []
    everything = [v for _, v in _read(agent, topic_name, 1, "read_uncommitted")]
    assert sorted(everything) == [f"before-{i}".encode() for i in range(5)], \
        "the frozen producer's later writes never land"


def test_transactions_survive_agent_kills_all_or_nothing(agent, topic_name):
    """SIGKILL the agent between and inside transactions: every transaction whose commit
    returned is read whole, once; a transaction cut by a kill is read not at all (the next
    instance of the producer aborts it), never in part."""
    create_topic(agent.bootstrap, topic_name, partitions=2)
    tid = f"tx-{uuid.uuid4().hex[:6]}"
    committed, cut = [], []
    p = _producer(agent, tid)
    for round_ in range(9):
        values = [f"k{round_}-{i}".encode() for i in range(20)]
        try:
            p.begin_transaction()
            for i, v in enumerate(values):
                p.produce(topic_name, value=v, partition=i % 2)
            p.flush(30)
            if round_ % 3 == 2:
                agent.kill()  # inside a transaction: written, never committed
                agent.restart()
                raise KafkaException(KafkaError(KafkaError._TRANSPORT, "killed"))
            p.commit_transaction(30)
            committed.append(values)
        except KafkaException:
            cut.append(values)
            # A new instance: fences the old one and aborts its open transaction.
            p = _producer(agent, tid)
        if round_ % 4 == 3:
            agent.kill()  # between transactions
            agent.restart()
    assert len(committed) >= 5 and len(cut) >= 2
    seen = [v for _, v in _read(agent, topic_name, 2, "read_committed")]
    assert len(seen) == len(set(seen)), "no record twice"
    want = sorted(v for t in committed for v in t)
    assert sorted(seen) == want, "every committed transaction whole; nothing of a cut one"


def test_the_parquet_archive_holds_committed_records_only(agent_factory, topic_name):
    """The archive reads like a read_committed consumer: no aborted record, no marker, every
    committed record once — DuckDB's count equals the consumer's."""
    import json
    import socket
    import urllib.request

    import duckdb

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent = agent_factory(SILT_ADMIN_LISTEN=f"127.0.0.1:{port}", SILT_TOPICS__ARCHIVE="true",
                          SILT_ARCHIVE__INTERVAL_MS="200", SILT_ARCHIVE__MAX_FILE_RECORDS="25")
    create_topic(agent.bootstrap, topic_name, partitions=2)
    p = _producer(agent, f"tx-{uuid.uuid4().hex[:6]}")
    for round_ in range(6):
        p.begin_transaction()
        for i in range(20):
            p.produce(topic_name, value=f"a{round_}-{i}".encode(), partition=i % 2)
        p.flush(30)
        if round_ % 2:
            p.abort_transaction(30)
        else:
            p.commit_transaction(30)
    committed = sorted(v for _, v in _read(agent, topic_name, 2, "read_committed"))
    assert len(committed) == 60

    deadline = time.time() + 60
    while time.time() < deadline:
        rows = [r for r in json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/archive").read())
                if r["topic"] == topic_name]
        if len(rows) == 2 and all(r["lag"] == 0 for r in rows):
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"archive did not catch up: {rows}")
    glob = str(agent.data_dir / "objects" / "archive" / "**" / "*.parquet")
    archived = sorted(bytes(v) for (v,) in duckdb.sql(
        f"SELECT value FROM read_parquet('{glob}', hive_partitioning = true) WHERE topic = '{topic_name}'").fetchall())
    assert archived == committed


def _ctp(agent, src, dst, group, tid, stop_after=None, kill=None):
    """Consume-transform-produce: reads `src` in `group`, writes value+b"!" to `dst` and commits
    the input offsets in the same transaction, 10 records per transaction. Stops after
    `stop_after` transactions (without committing the one in progress if `kill` says so)."""
    c = Consumer({"bootstrap.servers": agent.bootstrap, "group.id": group, "isolation.level": "read_committed",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    c.subscribe([src])
    p = _producer(agent, tid)
    done, idle = 0, 0
    try:
        while idle < 15:
            msgs = c.consume(10, 1.0)
            msgs = [m for m in msgs if not m.error()]
            if not msgs:
                idle += 1
                continue
            idle = 0
            p.begin_transaction()
            for m in msgs:
                p.produce(dst, key=m.key(), value=m.value() + b"!", partition=m.partition())
            p.send_offsets_to_transaction(c.position(c.assignment()), c.consumer_group_metadata(), 30)
            if stop_after is not None and done == stop_after and kill:
                p.flush(30)
                return done  # abandoned mid-transaction (the process "dies")
            p.commit_transaction(30)
            done += 1
            if stop_after is not None and done == stop_after:
                return done
    finally:
        c.close()
    return done


def test_consume_transform_produce_writes_every_input_exactly_once(agent, topic_name):
    """Offsets sent in the transaction commit with its output: an application that dies in the
    middle of a transaction and is replaced (same transactional id) neither loses nor repeats
    an input record in the output."""
    src, dst = topic_name, topic_name + "-out"
    create_topic(agent.bootstrap, src, partitions=2)
    create_topic(agent.bootstrap, dst, partitions=2)
    inputs = [f"in-{i}".encode() for i in range(120)]
    plain = Producer({"bootstrap.servers": agent.bootstrap})
    for i, v in enumerate(inputs):
        plain.produce(src, key=str(i).encode(), value=v, partition=i % 2)
    assert plain.flush(30) == 0
    group, tid = f"ctp-{uuid.uuid4().hex[:6]}", f"ctp-{uuid.uuid4().hex[:6]}"
    # The first instance dies inside its fourth transaction (output and offsets written, not
    # committed); the second takes over with the same transactional id and finishes.
    assert _ctp(agent, src, dst, group, tid, stop_after=3, kill=True) == 3
    # The agent dies too: the open transaction, its pending offsets and the group's committed
    # offsets come back from the metadata store.
    agent.kill()
    agent.restart()
    _ctp(agent, src, dst, group, tid)
    out = [v for _, v in _read(agent, dst, 2, "read_committed")]
    assert sorted(out) == sorted(v + b"!" for v in inputs), "every input once in the output"
    # The group's committed offsets are at the end of the input.
    c = Consumer({"bootstrap.servers": agent.bootstrap, "group.id": group})
    committed = c.committed([TopicPartition(src, 0), TopicPartition(src, 1)], timeout=10)
    c.close()
    assert sorted(tp.offset for tp in committed) == [60, 60]


def test_kafka_python_transactions_and_read_committed(agent, topic_name):
    """kafka-python's transactional producer and read_committed consumer."""
    from kafka import KafkaConsumer, KafkaProducer

    create_topic(agent.bootstrap, topic_name, partitions=2)
    p = KafkaProducer(bootstrap_servers=agent.bootstrap, transactional_id=f"kp-{uuid.uuid4().hex[:6]}")
    p.init_transactions()
    committed = []
    for round_ in range(4):
        p.begin_transaction()
        values = [f"kp{round_}-{i}".encode() for i in range(15)]
        for i, v in enumerate(values):
            p.send(topic_name, v, partition=i % 2)
        p.flush()
        if round_ == 2:
            p.abort_transaction()
        else:
            p.commit_transaction()
            committed += values
    p.close()
    c = KafkaConsumer(topic_name, bootstrap_servers=agent.bootstrap, isolation_level="read_committed",
                      auto_offset_reset="earliest", consumer_timeout_ms=8000, group_id=None)
    seen = [m.value for m in c]
    c.close()
    assert sorted(seen) == sorted(committed)


def test_a_transaction_over_300_partitions_commits_whole(agent, topic_name):
    """More partitions than one metadata-store transaction takes (marker requests are written
    100 and deleted 60 at a time; etcd allows 128 operations): every record committed once."""
    create_topic(agent.bootstrap, topic_name, partitions=300)
    p = _producer(agent, f"tx-{uuid.uuid4().hex[:6]}")
    p.begin_transaction()
    for i in range(300):
        p.produce(topic_name, value=f"wide-{i}".encode(), partition=i)
    p.commit_transaction(60)
    p.begin_transaction()
    for i in range(300):
        p.produce(topic_name, value=f"gone-{i}".encode(), partition=i)
    p.flush(60)
    p.abort_transaction(60)
    seen = [v for _, v in _read(agent, topic_name, 300, "read_committed")]
    assert sorted(seen) == sorted(f"wide-{i}".encode() for i in range(300))
