"""Durability: acknowledged records survive SIGKILL and SIGTERM of the agent."""

import threading
import time
from collections import Counter

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import ConfigResource, NewTopic, ResourceType

from helpers import CONSUMER_BASE, admin, consume_all, create_topic, produce_all, result_of, watermarks


def test_sigkill_while_producing_keeps_every_acknowledged_record(agent, topic_name):
    total = 5000
    kill_after = 1000
    create_topic(agent.bootstrap, topic_name)

    acked = []  # (partition, offset, value), in callback order
    failed = []  # (value, error)

    def on_delivery(err, msg):
        if err is None:
            acked.append((msg.partition(), msg.offset(), msg.value()))
        else:
            failed.append((msg.value(), err))

    p = Producer(
        {
            "bootstrap.servers": agent.bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "batch.num.messages": 100,
            "message.timeout.ms": 60000,
            "retry.backoff.ms": 50,
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 500,
        }
    )
    killed_at = None
    for i in range(total):
        p.produce(topic_name, value=f"value-{i:05d}".encode(), on_delivery=on_delivery)
        if i % 50 == 49:
            p.poll(0.01)  # paces the producer so the kill lands while it is sending
        else:
            p.poll(0)
        if killed_at is None and len(acked) >= kill_after:
            agent.kill()
            killed_at = (i + 1, len(acked))
            agent.restart()
    if killed_at is None:  # everything was produced before 1000 acks: kill while flushing
        deadline = time.monotonic() + 60
        while len(acked) < kill_after and time.monotonic() < deadline:
            p.poll(0.01)
        assert len(acked) >= kill_after, f"only {len(acked)} acks after 60 s; failures: {failed[:5]}"
        agent.kill()
        killed_at = (total, len(acked))
        agent.restart()
    remaining = p.flush(90)
    assert remaining == 0, f"{remaining} records neither delivered nor failed 90 s after the restart"
    assert len(acked) + len(failed) == total

    _, acked_before_kill = killed_at
    assert acked_before_kill >= kill_after
    assert acked_before_kill < total, "the kill happened after every record was acknowledged"

    # Acknowledged offsets are unique and every acknowledged value is acknowledged once.
    offsets = [o for _, o, _ in acked]
    assert all(part == 0 for part, _, _ in acked)
    assert len(set(offsets)) == len(offsets), "two records were acknowledged at the same offset"
    values = [v for _, _, v in acked]
    assert len(set(values)) == len(values), "a record was acknowledged twice"

    low, high = watermarks(agent.bootstrap, topic_name, 0)
    assert low == 0
    assert high >= len(acked), f"high watermark {high} < {len(acked)} acknowledged records"
    msgs = consume_all(agent.bootstrap, topic_name, [0], high, timeout=90)
    assert [m.offset() for m in msgs] == list(range(high)), "offsets are not dense from 0"
    log = [m.value() for m in msgs]
    for _, off, v in acked:
        assert log[off] == v, f"offset {off}: acknowledged {v!r}, log has {log[off]!r}"
    dups = sorted(v for v, count in Counter(log).items() if count > 1)
    assert not dups, f"idempotent producer, yet {len(dups)} values are duplicated in the log, e.g. {dups[:5]}"
    sent = {f"value-{i:05d}".encode() for i in range(total)}
    assert set(log) <= sent, "the log holds values that were never produced"
    # The contract allows failures, but an idempotent producer with retries and a 60 s message
    # timeout rides out a restart against Kafka without any; one here means the agent refused
    # the retries (e.g. lost the producer's sequence state).
    assert not failed, (
        f"{len(failed)} records failed after the restart (acked {len(acked)}); first: "
        f"{[(v, e.str()) for v, e in failed[:3]]}"
    )


def test_sigterm_flushes_and_offsets_continue(agent, topic_name):
    n = 2000
    records = [{"key": f"k{i % 7}".encode(), "value": f"before-{i}".encode()} for i in range(n)]
    reports = produce_all(agent.bootstrap, topic_name, records)
    assert [(r[0], r[2]) for r in reports] == [(None, i) for i in range(n)]

    agent.stop()  # asserts exit code 0
    agent.restart()

    assert watermarks(agent.bootstrap, topic_name, 0) == (0, n)
    msgs = consume_all(agent.bootstrap, topic_name, [0], n)
    assert [m.offset() for m in msgs] == list(range(n))
    assert [m.value() for m in msgs] == [r["value"] for r in records]
    assert [m.key() for m in msgs] == [r["key"] for r in records]

    more = [{"value": f"after-{i}".encode()} for i in range(20)]
    reports = produce_all(agent.bootstrap, topic_name, more)
    assert [(r[0], r[2]) for r in reports] == [(None, n + i) for i in range(20)]
    msgs = consume_all(agent.bootstrap, topic_name, [0], n + 20)
    assert [m.offset() for m in msgs] == list(range(n + 20))
    assert [m.value() for m in msgs[n:]] == [r["value"] for r in more]


def test_topic_catalog_survives_sigkill(agent, topic_name):
    keep, gone = topic_name + "-keep", topic_name + "-gone"
    a = admin(agent.bootstrap)
    fs = a.create_topics(
        [
            NewTopic(keep, num_partitions=4, replication_factor=1, config={"retention.ms": "123456789"}),
            NewTopic(gone, num_partitions=2, replication_factor=1),
        ],
        request_timeout=20,
    )
    for f in fs.values():
        assert f.result(timeout=30) is None
    reports = produce_all(agent.bootstrap, keep, [{"value": f"p{p}".encode(), "partition": p} for p in range(4)])
    assert all(r[0] is None and r[2] == 0 for r in reports), reports
    assert result_of(a.delete_topics([gone], request_timeout=20), gone) is None

    agent.kill()
    agent.restart()

    a = admin(agent.bootstrap)
    topics = a.list_topics(timeout=10).topics
    assert gone not in topics, "a deleted topic came back after a restart"
    assert sorted(topics[keep].partitions) == [0, 1, 2, 3]
    res = ConfigResource(ResourceType.TOPIC, keep)
    desc = result_of(a.describe_configs([res], request_timeout=20), res)
    assert desc["retention.ms"].value == "123456789"
    msgs = consume_all(agent.bootstrap, keep, [0, 1, 2, 3], 4)
    assert sorted((m.partition(), m.offset(), m.value()) for m in msgs) == [(p, 0, f"p{p}".encode()) for p in range(4)]


def test_sigterm_flushes_buffered_acks1_writes(agent_factory, topic_name):
    # acks=1 is answered once a record is buffered. With a flush interval far longer than the
    # test, nothing reaches storage before SIGTERM, so the shutdown itself has to flush it.
    agent = agent_factory(SILT_FLUSH__INTERVAL_MS="600000")
    create_topic(agent.bootstrap, topic_name)
    n = 500
    records = [{"value": f"buffered-{i}".encode()} for i in range(n)]
    reports = produce_all(agent.bootstrap, topic_name, records, conf={"acks": "1", "linger.ms": 5})
    assert [(r[0], r[2]) for r in reports] == [(None, i) for i in range(n)]

    agent.stop()  # asserts exit code 0
    agent.restart()

    assert watermarks(agent.bootstrap, topic_name, 0) == (0, n)
    msgs = consume_all(agent.bootstrap, topic_name, [0], n)
    assert [(m.offset(), m.value()) for m in msgs] == [(i, r["value"]) for i, r in enumerate(records)]


def test_two_kills_with_concurrent_producers_and_a_live_consumer(agent, topic_name):
    """Two idempotent producers write to 3 partitions while a consumer tails them; the agent is
    SIGKILLed twice. Nothing acknowledged or already served to the consumer may change or
    disappear, the log has no duplicates and no holes, and nothing fails."""
    parts, per_producer = 3, 4000
    create_topic(agent.bootstrap, topic_name, partitions=parts)
    lock = threading.Lock()
    acked, failed, seen, conflicts, consumer_errors = [], [], {}, [], []
    stop = threading.Event()
    resilient = {"reconnect.backoff.ms": 50, "reconnect.backoff.max.ms": 300}

    def tail():
        c = Consumer(
            {"bootstrap.servers": agent.bootstrap, **CONSUMER_BASE, **resilient, "enable.partition.eof": False}
        )
        try:
            c.assign([TopicPartition(topic_name, p, OFFSET_BEGINNING) for p in range(parts)])
            while not stop.is_set():
                m = c.poll(0.1)
                if m is None:
                    continue
                if m.error() is not None:
                    # Losing the connection while the agent is down is expected.
                    if m.error().code() not in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN):
                        consumer_errors.append(m.error())
                    continue
                key = (m.partition(), m.offset())
                if key in seen and seen[key] != m.value():
                    conflicts.append((key, seen[key], m.value()))
                seen[key] = m.value()
        finally:
            c.close()

    def produce(pid):
        p = Producer(
            {
                "bootstrap.servers": agent.bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 2,
                "batch.num.messages": 50,
                "message.timeout.ms": 60000,
                "retry.backoff.ms": 50,
                **resilient,
            }
        )

        def cb(err, msg):
            with lock:
                (acked if err is None else failed).append((msg.partition(), msg.offset(), msg.value(), err))

        for i in range(per_producer):
            p.produce(topic_name, value=f"p{pid}-{i:05d}".encode(), partition=i % parts, on_delivery=cb)
            p.poll(0.002 if i % 20 == 19 else 0)
        p.flush(90)

    consumer = threading.Thread(target=tail, daemon=True)
    producers = [threading.Thread(target=produce, args=(k,), daemon=True) for k in range(2)]
    consumer.start()
    for t in producers:
        t.start()
    kills = []
    for k in range(2):
        deadline = time.monotonic() + 30
        while len(acked) < 1500 * (k + 1) and time.monotonic() < deadline:
            time.sleep(0.005)
        kills.append(len(acked))
        agent.kill()
        agent.restart()
    for t in producers:
        t.join(150)
        assert not t.is_alive(), "a producer did not finish within 150 s"
    deadline = time.monotonic() + 30
    while len(seen) < len(acked) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    consumer.join(30)

    assert kills[0] < 2 * per_producer, "the first kill came after every record was acknowledged"
    assert not failed, f"{len(failed)} records failed, e.g. {[(v, e.str()) for _, _, v, e in failed[:3]]}"
    assert len(acked) == 2 * per_producer
    assert not consumer_errors, consumer_errors[:5]
    assert not conflicts, f"the consumer was served different values at the same offset: {conflicts[:5]}"
    total = 0
    for part in range(parts):
        low, high = watermarks(agent.bootstrap, topic_name, part)
        assert low == 0
        msgs = consume_all(agent.bootstrap, topic_name, [part], high, timeout=60)
        assert [m.offset() for m in msgs] == list(range(high)), f"partition {part}: offsets not dense"
        log = [m.value() for m in msgs]
        assert len(set(log)) == len(log), f"partition {part}: duplicates in the log"
        for p, off, v, _ in acked:
            if p == part:
                assert off < high and log[off] == v, f"partition {part} offset {off}: acked {v!r}"
        for (p, off), v in seen.items():
            if p == part:
                assert off < high and log[off] == v, f"partition {part} offset {off}: served {v!r} before a kill"
        total += high
    assert total == 2 * per_producer
