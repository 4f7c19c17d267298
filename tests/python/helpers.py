"""Client helpers shared by the Python end-to-end tests."""

import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

# Consumer groups are not implemented by Silt: consumers use manual assignment only. librdkafka
# requires a group.id even then; it is never joined and offsets are never committed.
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
    from confluent_kafka.admin import NewTopic

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
    from confluent_kafka import Producer

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
