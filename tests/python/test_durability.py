"""Durability: acknowledged records survive SIGKILL and SIGTERM of the agent."""

import time

from confluent_kafka import Producer

from helpers import consume_all, create_topic, produce_all, watermarks


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

    produced_before_kill, acked_before_kill = killed_at
    print(f"killed after producing {produced_before_kill} with {acked_before_kill} acked; final acked={len(acked)} failed={len(failed)}")
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
    dups = sorted({v for v in log if log.count(v) > 1}) if len(set(log)) != len(log) else []
    assert not dups, f"idempotent producer, yet {len(dups)} values are duplicated in the log, e.g. {dups[:5]}"
    sent = {f"value-{i:05d}".encode() for i in range(total)}
    assert set(log) <= sent, "the log holds values that were never produced"
    # Failures are allowed by the contract, but with retries and an idempotent producer they
    # should not be needed; report them to make a regression visible.
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
    from confluent_kafka.admin import ConfigResource, NewTopic, ResourceType

    from helpers import admin

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
    assert a.delete_topics([gone], request_timeout=20)[gone].result(timeout=30) is None

    agent.kill()
    agent.restart()

    a = admin(agent.bootstrap)
    topics = a.list_topics(timeout=10).topics
    assert gone not in topics, "a deleted topic came back after a restart"
    assert sorted(topics[keep].partitions) == [0, 1, 2, 3]
    res = ConfigResource(ResourceType.TOPIC, keep)
    desc = a.describe_configs([res], request_timeout=20)[res].result(timeout=30)
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
