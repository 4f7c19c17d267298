"""Topic and cluster administration with stock admin clients (confluent-kafka's AdminClient and
kafka-python's KafkaAdminClient): config changes that take effect at once (IncrementalAlterConfigs,
AlterConfigs), partition growth (CreatePartitions), log-dir sizes (DescribeLogDirs), leader
elections and reassignments answered as a one-replica Kafka cluster answers them, and producer
state (DescribeProducers)."""

import urllib.request

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as TP
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions
from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import ConfigResource as KPConfigResource
from kafka.admin import ConfigResourceType

from conftest import _free_port, wait_until
from helpers import admin, consume_all, create_topic


def _configs(a, topic):
    res = a.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)])
    return list(res.values())[0].result(timeout=20)


def _incremental(a, resource, changes, validate_only=False):
    """changes: [(name, op, value)]; returns the future's exception or None."""
    entries = [ConfigEntry(n, v, incremental_operation=op) for n, op, v in changes]
    resource = ConfigResource(resource[0], resource[1], incremental_configs=entries)
    f = list(a.incremental_alter_configs([resource], validate_only=validate_only).values())[0]
    try:
        f.result(timeout=20)
        return None
    except KafkaException as e:
        return e.args[0]


def _send(bootstrap, topic, value, partition=0):
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "message.timeout.ms": 15000})
    errors = []
    # Keyed: a compacted topic refuses records without a key.
    p.produce(topic, key=b"k", value=value, partition=partition,
              on_delivery=lambda e, m: errors.append(e))
    p.flush(20)
    return errors[0] if errors else "no delivery report"


def test_incremental_config_changes_take_effect_at_once(agent_factory, topic_name):
    agent = agent_factory(SILT_LIFECYCLE__RETENTION_INTERVAL_MS="200")
    create_topic(agent.bootstrap, topic_name)
    a = admin(agent.bootstrap)
    topic = (ConfigResource.Type.TOPIC, topic_name)
    assert _send(agent.bootstrap, topic_name, b"x" * 5000) is None

    # SET: the next produce is checked against the new limit; DescribeConfigs shows it as set
    # on the topic.
    assert _incremental(a, topic, [("max.message.bytes", AlterConfigOpType.SET, "2000")]) is None
    c = _configs(a, topic_name)
    assert c["max.message.bytes"].value == "2000"
    assert c["max.message.bytes"].source == 1  # DYNAMIC_TOPIC_CONFIG
    err = _send(agent.bootstrap, topic_name, b"x" * 5000)
    assert err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE, err

    # validate_only changes nothing; bad changes get Kafka's errors and change nothing either.
    assert _incremental(a, topic, [("retention.ms", AlterConfigOpType.SET, "1000")], validate_only=True) is None
    assert _configs(a, topic_name)["retention.ms"].source == 5  # DEFAULT_CONFIG
    for bad in ([("no.such.config", AlterConfigOpType.SET, "1")],
                [("retention.ms", AlterConfigOpType.SET, "soon")],
                [("retention.ms", AlterConfigOpType.APPEND, "5")]):
        e = _incremental(a, topic, bad)
        assert e is not None and e.code() == KafkaError.INVALID_CONFIG, (bad, e)
    e = _incremental(a, (ConfigResource.Type.TOPIC, topic_name + "-missing"),
                     [("retention.ms", AlterConfigOpType.SET, "1")])
    assert e is not None and e.code() == KafkaError.UNKNOWN_TOPIC_OR_PART, e
    assert _configs(a, topic_name)["max.message.bytes"].value == "2000"

    # APPEND to a list config; DELETE goes back to the default.
    assert _incremental(a, topic, [("cleanup.policy", AlterConfigOpType.APPEND, "compact"),
                                   ("max.message.bytes", AlterConfigOpType.DELETE, None)]) is None
    c = _configs(a, topic_name)
    assert c["cleanup.policy"].value == "delete,compact"
    assert c["max.message.bytes"].source == 5
    assert _send(agent.bootstrap, topic_name, b"x" * 5000) is None

    # Broker settings are read at start: refused with INVALID_CONFIG and a reason.
    broker = str(next(iter(a.list_topics(timeout=10).brokers)))
    e = _incremental(a, (ConfigResource.Type.BROKER, broker), [("num.io.threads", AlterConfigOpType.SET, "5")])
    assert e is not None and e.code() == KafkaError.INVALID_CONFIG and "read at start" in e.str(), e

    # retention.ms changed on a live topic: the retention job applies it at its next pass.
    assert _incremental(a, topic, [("retention.ms", AlterConfigOpType.SET, "1")]) is None
    c = Consumer({"bootstrap.servers": agent.bootstrap, "group.id": "x"})
    try:
        def start_moved():
            low, high = c.get_watermark_offsets(TP(topic_name, 0), timeout=5)
            return low == high and high >= 2
        wait_until(start_moved, timeout=30, what="the log start moved to the end")
    finally:
        c.close()


def _broker_configs(a, name):
    res = a.describe_configs([ConfigResource(ConfigResource.Type.BROKER, name)])
    return list(res.values())[0].result(timeout=20)


def test_cluster_wide_broker_defaults_change_at_run_time(agent_factory, topic_name):
    """log.retention.ms and the other topic-config defaults change at run time (Python clients
    address an agent's own broker resource; Silt keeps one cluster-wide value): topics without
    their own value follow at once (DescribeConfigs says DYNAMIC_DEFAULT_BROKER_CONFIG, the
    retention job applies it), topics with one keep it, and deleting the default goes back to
    the agent's setting."""
    import time as _time

    agent = agent_factory(SILT_LIFECYCLE__RETENTION_INTERVAL_MS="200")
    own = topic_name + "-own"
    create_topic(agent.bootstrap, topic_name)
    create_topic(agent.bootstrap, own, config={"retention.ms": "86400000"})
    # Records written an hour ago (CreateTime).
    old = int(_time.time() * 1000) - 3_600_000
    p = Producer({"bootstrap.servers": agent.bootstrap, "linger.ms": 0})
    for t in (topic_name, own):
        for i in range(5):
            p.produce(t, key=b"k", value=b"v%d" % i, partition=0, timestamp=old)
    assert p.flush(20) == 0

    a = admin(agent.bootstrap)
    broker = str(next(iter(a.list_topics(timeout=10).brokers)))
    res = (ConfigResource.Type.BROKER, broker)
    assert _incremental(a, res, [("log.retention.ms", AlterConfigOpType.SET, "600000")], validate_only=True) is None
    assert _configs(a, topic_name)["retention.ms"].source == 5, "validate_only changes nothing"
    e = _incremental(a, res, [("log.retention.ms", AlterConfigOpType.SET, "soon")])
    assert e is not None and e.code() == KafkaError.INVALID_CONFIG, e
    e = _incremental(a, res, [("num.io.threads", AlterConfigOpType.SET, "4")])
    assert e is not None and e.code() == KafkaError.INVALID_CONFIG and "num.io.threads" in e.str(), e

    assert _incremental(a, res, [("log.retention.ms", AlterConfigOpType.SET, "600000"),
                                 ("message.max.bytes", AlterConfigOpType.SET, "3000")]) is None
    c = _configs(a, topic_name)
    assert (c["retention.ms"].value, c["retention.ms"].source) == ("600000", 3)  # DYNAMIC_DEFAULT_BROKER_CONFIG
    assert c["max.message.bytes"].value == "3000"
    c = _configs(a, own)
    assert (c["retention.ms"].value, c["retention.ms"].source) == ("86400000", 1)
    d = _broker_configs(a, broker)
    assert (d["log.retention.ms"].value, d["log.retention.ms"].source) == ("600000", 3)
    # Synonyms (librdkafka always asks for them): the topic's own value first, then the broker
    # config that is its default (the cluster-wide value and the default share that name).
    syn = _configs(a, own)["retention.ms"].synonyms
    assert list(syn)[0] == "retention.ms" and syn["retention.ms"].source == 1, syn
    assert "log.retention.ms" in syn, syn
    ka = KafkaAdminClient(bootstrap_servers=agent.bootstrap)
    try:
        got = ka.describe_configs([KPConfigResource(ConfigResourceType.TOPIC, own)], include_synonyms=True,
                                  config_filter="all")
        chain = [(x["name"], x["value"], x["source"]) for x in got["topic"][own]["retention.ms"]["synonyms"]]
    finally:
        ka.close()
    assert chain == [("retention.ms", "86400000", "DYNAMIC_TOPIC_CONFIG"),
                     ("log.retention.ms", "600000", "DYNAMIC_DEFAULT_BROKER_CONFIG"),
                     ("log.retention.ms", "604800000", "DEFAULT_CONFIG")], chain

    # The new defaults act: the hour-old records go, those of the topic with its own value stay,
    # and the produce size limit follows too.
    c = Consumer({"bootstrap.servers": agent.bootstrap, "group.id": "x"})
    try:
        def gone():
            low, high = c.get_watermark_offsets(TP(topic_name, 0), timeout=5)
            return low == high == 5
        wait_until(gone, timeout=30, what="retention applied the cluster-wide default")
        assert c.get_watermark_offsets(TP(own, 0), timeout=5) == (0, 5)
    finally:
        c.close()
    err = _send(agent.bootstrap, topic_name, b"x" * 5000)
    assert err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE, err

    # kafka-python's AlterConfigs replaces the whole set; DELETE goes back to the settings.
    ka = KafkaAdminClient(bootstrap_servers=agent.bootstrap)
    try:
        ka.alter_configs([KPConfigResource(ConfigResourceType.BROKER, broker, configs={"log.retention.bytes": "1000000"})],
                         raise_on_unknown=False, incremental=False)
        got = ka.describe_configs([KPConfigResource(ConfigResourceType.BROKER, broker)], config_filter="all")
        assert got["broker"][broker]["log.retention.bytes"]["value"] == "1000000", got
    finally:
        ka.close()
    d = _broker_configs(a, broker)
    assert "log.retention.ms" not in d or d["log.retention.ms"].source != 3
    assert _configs(a, topic_name)["max.message.bytes"].source == 5
    assert _configs(a, topic_name)["retention.bytes"].value == "1000000"
    assert _incremental(a, res, [("log.retention.bytes", AlterConfigOpType.DELETE, None)]) is None
    assert (_configs(a, topic_name)["retention.bytes"].value, _configs(a, topic_name)["retention.bytes"].source) == ("-1", 5)
    # Another agent's id is not this agent's to change.
    e = _incremental(a, (ConfigResource.Type.BROKER, str(int(broker) + 7)), [("log.retention.ms", AlterConfigOpType.SET, "5")])
    assert e is not None, "a broker id that is not the agent's is refused"


def test_alter_configs_replaces_the_whole_set(agent, topic_name):
    create_topic(agent.bootstrap, topic_name, config={"retention.ms": "60000"})
    a = admin(agent.bootstrap)
    r = ConfigResource(ConfigResource.Type.TOPIC, topic_name, set_config={"max.message.bytes": "4096"})
    list(a.alter_configs([r]).values())[0].result(timeout=20)
    c = _configs(a, topic_name)
    assert c["max.message.bytes"].value == "4096"
    assert c["retention.ms"].source == 5, "AlterConfigs replaces: retention.ms is back to its default"


def test_create_partitions_grows_a_topic_and_producers_use_the_new_partitions(agent, topic_name):
    create_topic(agent.bootstrap, topic_name, partitions=2)
    a = admin(agent.bootstrap)
    f = a.create_partitions([NewPartitions(topic_name, 5)], validate_only=True)
    f[topic_name].result(timeout=20)
    assert len(a.list_topics(topic_name, timeout=10).topics[topic_name].partitions) == 2
    a.create_partitions([NewPartitions(topic_name, 5)])[topic_name].result(timeout=20)
    md = a.list_topics(topic_name, timeout=10).topics[topic_name]
    assert sorted(md.partitions) == [0, 1, 2, 3, 4]
    assert all(p.leader >= 0 for p in md.partitions.values())
    for count, code in ((3, KafkaError.INVALID_PARTITIONS), (5, KafkaError.INVALID_PARTITIONS)):
        with pytest.raises(KafkaException) as e:
            a.create_partitions([NewPartitions(topic_name, count)])[topic_name].result(timeout=20)
        assert e.value.args[0].code() == code
    with pytest.raises(KafkaException) as e:
        a.create_partitions([NewPartitions(topic_name + "-missing", 3)])[topic_name + "-missing"].result(timeout=20)
    assert e.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART

    # A keyed producer with the default partitioner spreads over all five.
    p = Producer({"bootstrap.servers": agent.bootstrap, "linger.ms": 5})
    seen = set()
    for i in range(200):
        p.produce(topic_name, key=f"k{i}".encode(), value=b"v",
                  on_delivery=lambda err, m: seen.add(m.partition()) if err is None else None)
    assert p.flush(30) == 0
    assert seen == {0, 1, 2, 3, 4}
    got = consume_all(agent.bootstrap, topic_name, [0, 1, 2, 3, 4], 200)
    assert len(got) == 200


def test_kafka_python_admin_reads_log_dirs_producers_and_elections(agent_factory, topic_name):
    admin_port = _free_port()
    agent = agent_factory(SILT_ADMIN_LISTEN=f"127.0.0.1:{admin_port}")
    create_topic(agent.bootstrap, topic_name, partitions=2)
    p = Producer({"bootstrap.servers": agent.bootstrap, "enable.idempotence": True})
    for i in range(10):
        p.produce(topic_name, value=b"x" * 1000, partition=i % 2)
    assert p.flush(30) == 0
    ka = KafkaAdminClient(bootstrap_servers=agent.bootstrap, request_timeout_ms=20000)
    try:
        # Log dirs: one per agent, each partition's size from the index (5 batches of 1 KB).
        dirs = ka.describe_log_dirs()
        assert len(dirs) == 1 and len(dirs[0]["log_dirs"]) == 1, dirs
        topics = {t["name"]: t for t in dirs[0]["log_dirs"][0]["topics"]}
        sizes = {q["partition_index"]: q["partition_size"] for q in topics[topic_name]["partitions"]}
        assert sorted(sizes) == [0, 1] and all(5000 < v < 6000 for v in sizes.values()), sizes
        # Producer state: the idempotent producer on each partition, with its last sequence.
        prods = ka.describe_producers([TopicPartition(topic_name, 0), TopicPartition(topic_name, 1)])
        for tp, state in prods.items():
            (only,) = state.active_producers
            assert (only.last_sequence, only.current_transaction_start_offset) == (4, -1), (tp, only)
            assert only.producer_id >= 0 and only.last_timestamp > 0
        # Elections: every leader is already the preferred (only) replica.
        res = ka.elect_leaders(0, {topic_name: [0, 1]}, raise_errors=False)
        codes = [r.error_code for t in res.replica_election_results for r in t.partition_result]
        assert codes == [84, 84], res  # ELECTION_NOT_NEEDED
        # Reassignments: none in progress, and none accepted (the controller places partitions).
        assert ka.list_partition_reassignments() == {}
        refused = ka.alter_partition_reassignments({TopicPartition(topic_name, 0): [0]})
        assert refused[TopicPartition(topic_name, 0)].__name__ == "InvalidReplicationAssignmentError", refused
        # Configs through kafka-python: incremental SET, shown as modified.
        ka.alter_configs([KPConfigResource(ConfigResourceType.TOPIC, topic_name,
                                           configs={"retention.bytes": "123456"})], incremental=True)
        c = _configs(admin(agent.bootstrap), topic_name)
        assert (c["retention.bytes"].value, c["retention.bytes"].source) == ("123456", 1)
        # Log levels through the BROKER_LOGGER resource: this agent's filter changes at once.
        ka.alter_configs([KPConfigResource(ConfigResourceType.BROKER_LOGGER, "0",
                                           configs={"silt_agent::flush": "DEBUG"})], incremental=True, raise_on_unknown=False)
        level = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/loglevel", timeout=5).read().decode()
        assert "silt_agent::flush=debug" in level, level
        described = ka.describe_configs([KPConfigResource(ConfigResourceType.BROKER_LOGGER, "0")])
        entries = described["broker_logger"]["0"]
        assert entries["silt_agent::flush"]["value"] == "DEBUG", described
        assert entries["root"]["config_source"] == "DYNAMIC_BROKER_LOGGER_CONFIG", described
        # Partitions through kafka-python.
        ka.create_partitions({topic_name: 4})
        md = admin(agent.bootstrap).list_topics(topic_name, timeout=10).topics[topic_name]
        assert sorted(md.partitions) == [0, 1, 2, 3]
    finally:
        ka.close()
