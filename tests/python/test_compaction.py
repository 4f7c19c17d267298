"""Key compaction (`cleanup.policy=compact`) end to end with confluent-kafka against a real silt
agent: a changelog workload (100 000 updates over 1 000 keys, deletes included) produced in
rounds with the agent SIGKILLed between and during compaction passes; afterwards a full read of
the topic equals the key -> latest value map built from what was acknowledged, offsets only
grow, and the consumer never stalls in the gaps compaction leaves. Also: a tombstone stays for
`delete.retention.ms` and goes after it; keyless records are refused."""

import random
import threading
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from conftest import wait_until
from helpers import create_topic, metric, watermarks

ENV = {
    "SILT_LIFECYCLE__COMPACT_INTERVAL_MS": "500",
    "SILT_LIFECYCLE__COMPACT_MIN_ENTRIES": "4",
}


def read_topic(bootstrap, topic, partitions, timeout=60):
    """Every record of `topic` from the beginning to the high watermarks at the start:
    {partition: [(offset, key, value)]}. Fails if a partition makes no progress for 20 s."""
    ends = {p: watermarks(bootstrap, topic, p)[1] for p in range(partitions)}
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"read-{random.random()}",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "fetch.wait.max.ms": 50,
    })
    out = {p: [] for p in range(partitions)}
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions) if ends[p] > 0])
        done = {p for p in range(partitions) if ends[p] == 0}
        last_progress = time.monotonic()
        deadline = time.monotonic() + timeout
        while len(done) < partitions:
            assert time.monotonic() < deadline, f"reading {topic} took over {timeout}s"
            assert time.monotonic() - last_progress < 20, f"a reader stalled: read {[len(v) for v in out.values()]}"
            m = c.poll(0.2)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    if m.offset() >= ends[m.partition()]:
                        done.add(m.partition())
                    continue
                raise AssertionError(f"consumer error: {m.error()}")
            last_progress = time.monotonic()
            recs = out[m.partition()]
            assert not recs or recs[-1][0] < m.offset(), f"offset {m.offset()} after {recs[-1][0]}"
            if m.offset() < ends[m.partition()]:
                recs.append((m.offset(), m.key(), m.value()))
            if m.offset() + 1 >= ends[m.partition()]:
                done.add(m.partition())
    finally:
        c.close()
    return out


def produce_changelog(bootstrap, topic, n, keys, rng, latest):
    """n updates over `keys` keys (one in twenty a delete), idempotent, acks=all; `latest`
    takes every acknowledged update in offset order per partition."""
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5,
                  "message.timeout.ms": 60000})
    acked = []
    lock = threading.Lock()

    def on_delivery(err, msg):
        if err is None:
            with lock:
                acked.append((msg.partition(), msg.offset(), msg.key(), msg.value()))

    for i in range(n):
        k = f"key-{rng.randrange(keys)}".encode()
        v = None if rng.random() < 0.05 else f"v{i}-{rng.random()}".encode() * rng.randint(1, 4)
        while True:
            try:
                p.produce(topic, key=k, value=v, on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    p.flush(120)
    for part, off, k, v in sorted(acked):
        latest[k] = (part, off, v)
    return len(acked)


def roll(bootstrap, topic, partitions, latest):
    """Waits out segment.ms, then writes one record per partition: the log's last entry is
    never compacted (Kafka's active segment), so this one moves everything before it out."""
    time.sleep(1.2)
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    acked = []
    for part in range(partitions):
        k = f"roll-{part}-{time.monotonic()}".encode()
        p.produce(topic, key=k, value=b"roll", partition=part,
                  on_delivery=lambda e, m: acked.append((e, m.partition(), m.offset(), m.key())))
    p.flush(30)
    for e, part, off, k in acked:
        assert e is None, e
        latest[k] = (part, off, b"roll")


def test_changelog_compacts_to_the_latest_value_per_key_across_agent_kills(agent_factory, topic_name):
    agent = agent_factory(**ENV)
    partitions = 2
    create_topic(agent.bootstrap, topic_name, partitions=partitions, config={
        "cleanup.policy": "compact",
        "min.cleanable.dirty.ratio": "0.1",
        "segment.ms": "1000",
        "delete.retention.ms": "0",
    })
    rng = random.Random(11)
    latest = {}
    total = 0
    for round_ in range(4):
        total += produce_changelog(agent.bootstrap, topic_name, 25_000, 1_000, rng, latest)
        # Kill the agent while compaction is likely at work (it runs every 500 ms once the
        # records are older than segment.ms), at a different moment each round.
        time.sleep(1.0 + rng.random() * 1.5)
        agent.kill()
        agent.restart()
    assert total == 100_000, f"{total} of 100 000 updates acknowledged"
    roll(agent.bootstrap, topic_name, partitions, latest)
    live = {k: v for k, (_, _, v) in latest.items() if v is not None}
    deleted = len(latest) - len(live)
    assert deleted > 0

    def compacted():
        got = read_topic(agent.bootstrap, topic_name, partitions)
        recs = [r for p in got.values() for r in p]
        return got if len(recs) == len(live) else None

    got = wait_until(compacted, timeout=90, interval=1.0, what="the topic to be compacted to one record per live key")
    seen = {}
    for part, recs in got.items():
        for off, k, v in recs:
            assert k not in seen, f"key {k} read twice"
            seen[k] = v
            assert latest[k][:2] == (part, off), f"{k}: read at {part}/{off}, latest acknowledged at {latest[k][:2]}"
    assert seen == live
    # Another round with no kill: the running agent's passes take the superseded records out
    # (its counter says so) and the read equals the map again.
    total += produce_changelog(agent.bootstrap, topic_name, 5_000, 1_000, rng, latest)
    roll(agent.bootstrap, topic_name, partitions, latest)
    live = {k: v for k, (_, _, v) in latest.items() if v is not None}
    got = wait_until(compacted, timeout=90, interval=1.0, what="the last round to be compacted")
    assert {k: v for recs in got.values() for _, k, v in recs} == live
    assert metric(agent, "silt_key_compaction_records_removed_total") > 0


def test_tombstones_stay_for_delete_retention_and_keyless_records_are_refused(agent_factory, topic_name):
    agent = agent_factory(**ENV)
    create_topic(agent.bootstrap, topic_name, config={
        "cleanup.policy": "compact",
        "min.cleanable.dirty.ratio": "0.01",
        "segment.ms": "500",
        "delete.retention.ms": "4000",
    })
    p = Producer({"bootstrap.servers": agent.bootstrap, "linger.ms": 0})
    errors = []
    for i in range(20):
        p.produce(topic_name, key=b"k", value=f"v{i}".encode())
        p.flush(10)
    p.produce(topic_name, key=b"k", value=None)
    p.flush(10)
    tombstoned = time.monotonic()
    p.produce(topic_name, key=b"other", value=b"stays")
    p.flush(10)
    # Alone in its batch (Kafka refuses the whole batch holding a keyless record).
    p.produce(topic_name, key=None, value=b"no key", on_delivery=lambda e, m: errors.append(e))
    p.flush(10)
    assert errors and errors[0] is not None and errors[0].code() == KafkaError.INVALID_RECORD, errors

    last = []

    def only_latest():
        recs = read_topic(agent.bootstrap, topic_name, 1)[0]
        last[:] = recs
        return recs if len(recs) == 2 else None

    # Superseded values go; the tombstone stays while delete.retention.ms runs.
    try:
        recs = wait_until(only_latest, timeout=30, interval=0.5, what="k's old values to be compacted away")
    except AssertionError as e:
        raise AssertionError(f"{e}; read {last}") from None
    assert [(k, v) for _, k, v in recs] == [(b"k", None), (b"other", b"stays")]

    # Then the tombstone goes too: at the first pass after delete.retention.ms (a pass needs the
    # partition dirty enough, as in Kafka), here set off by new records.
    time.sleep(max(0.0, tombstoned + 4.5 - time.monotonic()))
    for i in range(5):
        p.produce(topic_name, key=b"later", value=f"{i}".encode())
        p.flush(10)

    def tombstone_gone():
        recs = read_topic(agent.bootstrap, topic_name, 1)[0]
        return recs if all(k != b"k" for _, k, _ in recs) else None

    recs = wait_until(tombstone_gone, timeout=30, interval=0.5, what="the tombstone to expire")
    assert (b"other", b"stays") in [(k, v) for _, k, v in recs]
