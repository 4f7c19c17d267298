"""KIP-848 consumer groups (`group.protocol=consumer`, ConsumerGroupHeartbeat) with
confluent-kafka / librdkafka 2.12 against a real silt agent: server-side assignment, members
joining and being SIGKILLed without a stop-the-world rebalance, no partition owned by two live
members at any time, offsets committed with member epochs surviving an agent SIGKILL, the admin
APIs (ConsumerGroupDescribe, ListGroups by type), and classic members sharing a group with
consumer-protocol members (Kafka 4.0's online migration).

The agent runs with a 500 ms consumer heartbeat interval and a 6 s consumer session timeout
(Kafka's defaults are 5 s and 45 s) so membership changes take seconds."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from confluent_kafka import (
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    ConsumerGroupType,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from conftest import wait_until
from helpers import admin, create_topic, result_of
from test_groups import assert_exactly_once, close_all, delivered, group_name, produce_spread  # noqa: F401

KIP848_ENV = {
    "SILT_GROUPS__CONSUMER_HEARTBEAT_INTERVAL_MS": "500",
    "SILT_GROUPS__CONSUMER_SESSION_TIMEOUT_MS": "6000",
    "SILT_GROUPS__INITIAL_REBALANCE_DELAY_MS": "200",
    "SILT_GROUPS__MIN_SESSION_TIMEOUT_MS": "1000",
}


@pytest.fixture
def cagent(agent_factory):
    return agent_factory(**KIP848_ENV)


def conf(bootstrap, group, name, **extra):
    c = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "group.protocol": "consumer",
        "client.id": name,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "fetch.wait.max.ms": 50,
        "socket.timeout.ms": 10000,
        "topic.metadata.refresh.interval.ms": 1000,
    }
    c.update(extra)
    return c


class Member:
    """A `group.protocol=consumer` member polled by the test thread; records what it gets and
    every assign/revoke/lost callback, and commits synchronously on revocation."""

    def __init__(self, bootstrap, group, topics, name, commit_on_revoke=True, **extra):
        self.name = name
        self.commit_on_revoke = commit_on_revoke
        self.records = []
        self.assigned = []
        self.revoked = []
        self.lost = []
        self.commit_errors = []
        self.closed = False
        self.c = Consumer(conf(bootstrap, group, name, **extra))
        self.c.subscribe(list(topics), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)

    def _on_assign(self, c, parts):
        self.assigned.append(sorted((tp.topic, tp.partition) for tp in parts))

    def _on_revoke(self, c, parts):
        self.revoked.append(sorted((tp.topic, tp.partition) for tp in parts))
        if parts and self.commit_on_revoke:
            try:
                c.commit(asynchronous=False)
            except KafkaException as e:
                if e.args[0].code() != KafkaError._NO_OFFSET:
                    self.commit_errors.append(str(e))

    def _on_lost(self, c, parts):
        self.lost.append(sorted((tp.topic, tp.partition) for tp in parts))

    def poll(self, timeout=0.02, tolerate_errors=False):
        m = self.c.poll(timeout)
        if m is None:
            return None
        if m.error() is not None:
            if tolerate_errors:
                return None
            raise AssertionError(f"{self.name}: consumer error {m.error()}")
        self.records.append((m.topic(), m.partition(), m.offset(), m.value()))
        return m

    def parts(self):
        return frozenset((tp.topic, tp.partition) for tp in self.c.assignment())

    def close(self):
        if not self.closed:
            self.closed = True
            self.c.close()


def pump(members, cond=None, timeout=30.0, what="condition", tolerate_errors=False):
    """Polls every open member until cond() holds; after every round asserts that no partition
    is owned by two open members."""
    deadline = time.monotonic() + timeout
    while True:
        for m in members:
            if not m.closed:
                m.poll(0.02, tolerate_errors)
        owned = {}
        for m in members:
            if m.closed:
                continue
            for tp in m.parts():
                assert tp not in owned, f"{tp} owned by both {owned[tp]} and {m.name}"
                owned[tp] = m.name
        if cond is not None and cond():
            return
        if time.monotonic() >= deadline:
            if cond is None:
                return
            state = {m.name: sorted(m.parts()) for m in members if not m.closed}
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; assignments: {state}")


def cover(members, topic, n):
    sets = [m.parts() for m in members if not m.closed]
    return all(sets) and frozenset().union(*sets) == {(topic, p) for p in range(n)} and sum(map(len, sets)) == n


CHILD = textwrap.dedent(
    """
    import sys
    from confluent_kafka import Consumer
    bootstrap, group, topic = sys.argv[1:4]
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "group.protocol": "consumer",
                  "client.id": "doomed", "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    while True:
        m = c.poll(0.1)
        if c.assignment():
            print("assigned", flush=True)
    """
)


def test_members_join_and_die_without_stopping_the_others(cagent, topic_name, group_name):
    n = 6
    create_topic(cagent.bootstrap, topic_name, partitions=n)
    expected = produce_spread(cagent.bootstrap, topic_name, n, 0, 300)
    members = [Member(cagent.bootstrap, group_name, [topic_name], f"m{i}") for i in range(3)]
    try:
        pump(members, lambda: cover(members, topic_name, n) and all(len(m.parts()) == 2 for m in members),
             what="3 members to own 2 partitions each")
        pump(members, lambda: len(delivered(members)) >= 300, what="300 records")
        expected.update(produce_spread(cagent.bootstrap, topic_name, n, 300, 300))
        pump(members, lambda: len(delivered(members)) >= 600, what="600 records")
        pump(members, timeout=0.5)
        assert_exactly_once(members, expected)

        # A fourth member joins: the server moves only what it needs (incremental: no member
        # gives up everything), and the four cover the topic.
        before = {m.name: m.parts() for m in members}
        seen_revokes = {m.name: len(m.revoked) for m in members}
        members.append(Member(cagent.bootstrap, group_name, [topic_name], "m3"))
        pump(members, lambda: cover(members, topic_name, n), what="4 members to cover 6 partitions")
        moved = [tp for m in members[:3] for r in m.revoked[seen_revokes[m.name]:] for tp in r]
        assert 1 <= len(moved) <= 2, f"revoked {moved}"
        for m in members[:3]:
            assert m.parts(), f"{m.name} was left with nothing: stop-the-world"
            assert m.parts() <= before[m.name], f"{m.name} gained partitions it did not have"
        expected.update(produce_spread(cagent.bootstrap, topic_name, n, 600, 120))
        pump(members, lambda: len(delivered(members)) >= len(expected), what=f"{len(expected)} records")
        pump(members, timeout=0.5)
        assert_exactly_once(members, expected)

        # The admin view: a consumer group, Stable, its four members and their assignments.
        a = admin(cagent.bootstrap)
        d = result_of(a.describe_consumer_groups([group_name], request_timeout=15), group_name)
        assert d.type == ConsumerGroupType.CONSUMER
        assert d.state == ConsumerGroupState.STABLE
        assert sorted(x.client_id for x in d.members) == ["m0", "m1", "m2", "m3"]
        described = sorted((tp.topic, tp.partition) for x in d.members for tp in x.assignment.topic_partitions)
        assert described == [(topic_name, p) for p in range(n)]
        listed = a.list_consumer_groups(types={ConsumerGroupType.CONSUMER}, request_timeout=15).result()
        assert group_name in [g.group_id for g in listed.valid]
        listed = a.list_consumer_groups(types={ConsumerGroupType.CLASSIC}, request_timeout=15).result()
        assert group_name not in [g.group_id for g in listed.valid]

        # A fifth member in its own process is SIGKILLed once it owns partitions: after the
        # session timeout the survivors own everything again, and nothing is missed.
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, cagent.bootstrap, group_name, topic_name],
            stdout=subprocess.PIPE, text=True,
        )
        owns = threading.Event()

        def watch():
            for line in child.stdout:
                if line.startswith("assigned"):
                    owns.set()

        threading.Thread(target=watch, daemon=True).start()
        try:
            pump(members, owns.is_set, timeout=30, what="the fifth member to own partitions")
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        t0 = time.monotonic()
        expected.update(produce_spread(cagent.bootstrap, topic_name, n, 720, 120))
        pump(members, lambda: cover(members, topic_name, n) and len({k[:3] for k in delivered(members)} & set(expected)) == len(expected),
             timeout=40, what="the survivors to take over the killed member's partitions and read everything")
        took = time.monotonic() - t0
        assert took < 20, f"takeover took {took:.1f}s (session timeout 6s)"
        for m in members:
            assert not m.lost, f"{m.name} lost partitions: {m.lost}"
            assert not m.commit_errors, f"{m.name}: {m.commit_errors}"
    finally:
        close_all(members)


def test_commits_survive_an_agent_sigkill_and_members_rejoin(cagent, topic_name, group_name):
    n = 4
    create_topic(cagent.bootstrap, topic_name, partitions=n)
    expected = produce_spread(cagent.bootstrap, topic_name, n, 0, 200)
    a = Member(cagent.bootstrap, group_name, [topic_name], "a", commit_on_revoke=False)
    try:
        pump([a], lambda: len(a.records) >= 120, what="120 records")
        pos = {}
        for _, p, off, _ in a.records:
            pos[p] = max(pos.get(p, 0), off + 1)
        res = a.c.commit(offsets=[TopicPartition(topic_name, p, pos.get(p, 0)) for p in range(n)], asynchronous=False)
        assert all(tp.error is None for tp in res), res

        cagent.kill()
        cagent.restart()

        # The group's membership was stored: the member carries on at its epoch with its
        # partitions (it loses none).
        wait_until(lambda: (a.poll(0.05, tolerate_errors=True) or True) and len(a.parts()) == n,
                   timeout=40, what="the member to rejoin after the agent restart")
        assert not a.lost, f"the member lost its partitions: {a.lost}"
        committed = a.c.committed([TopicPartition(topic_name, p) for p in range(n)], timeout=15)
        assert {tp.partition: tp.offset for tp in committed} == {p: pos.get(p, 0) for p in range(n)}
    finally:
        a.close()
    rest = {k: v for k, v in expected.items() if k[2] >= pos.get(k[1], 0)}
    b = Member(cagent.bootstrap, group_name, [topic_name], "b")
    try:
        pump([b], lambda: len(b.records) >= len(rest), what=f"the {len(rest)} uncommitted records")
        pump([b], timeout=0.5)
        assert_exactly_once([b], rest)
    finally:
        b.close()


def test_regex_subscription_and_range_assignor(cagent, topic_name, group_name):
    for suffix in ("a", "b"):
        create_topic(cagent.bootstrap, f"{topic_name}-{suffix}", partitions=2)
    create_topic(cagent.bootstrap, f"other-{topic_name}", partitions=2)
    members = [
        Member(cagent.bootstrap, group_name, [f"^{topic_name}-.*"], f"r{i}", **{"group.remote.assignor": "range"})
        for i in range(2)
    ]
    try:
        want = {(f"{topic_name}-{s}", p) for s in ("a", "b") for p in range(2)}
        pump(members, lambda: frozenset().union(*(m.parts() for m in members)) == want and all(m.parts() for m in members),
             what="the regex's topics to be shared")
        # Range: each member gets the same partition number of both topics.
        for m in members:
            assert len({p for _, p in m.parts()}) == 1, f"{m.name}: {sorted(m.parts())}"
        a = admin(cagent.bootstrap)
        d = result_of(a.describe_consumer_groups([group_name], request_timeout=15), group_name)
        assert d.partition_assignor == "range"
    finally:
        close_all(members)


def test_classic_and_consumer_members_share_a_group_through_an_online_upgrade(cagent, topic_name, group_name):
    """Kafka 4.0's online migration: two classic members (librdkafka's default protocol, eager
    range/roundrobin) consume a topic; a group.protocol=consumer member joins the same group,
    which becomes a consumer group; the classic members are told to rejoin and the server's
    assignor spreads the partitions over all three. The consumer-protocol member then leaves:
    the group is classic again and the classic members take everything back in a classic
    rebalance. No partition is ever owned by two members, and every record is delivered
    exactly once (members commit on revocation)."""
    n = 6
    create_topic(cagent.bootstrap, topic_name, partitions=n)
    expected = produce_spread(cagent.bootstrap, topic_name, n, 0, 300)
    classic_conf = {"group.protocol": "classic", "session.timeout.ms": 6000, "heartbeat.interval.ms": 500}
    a = Member(cagent.bootstrap, group_name, [topic_name], "classic-a", **classic_conf)
    b = Member(cagent.bootstrap, group_name, [topic_name], "classic-b", **classic_conf)
    members = [a, b]
    try:
        pump(members, lambda: cover(members, topic_name, n), timeout=40, what="the classic members' assignment")
        pump(members, lambda: len(delivered(members)) >= 100, timeout=30, what="records before the upgrade")
        c = Member(cagent.bootstrap, group_name, [topic_name], "consumer-c")
        members.append(c)
        pump(members, lambda: cover(members, topic_name, n), timeout=60, what="a share for all three")
        expected.update(produce_spread(cagent.bootstrap, topic_name, n, 300, 300))
        pump(members, lambda: len(delivered(members)) >= len(expected), timeout=40, what="records after the upgrade")
        ac = admin(cagent.bootstrap)
        listed = ac.list_consumer_groups(types={ConsumerGroupType.CONSUMER}, request_timeout=15).result()
        assert group_name in {x.group_id for x in listed.valid}, listed.valid
        desc = result_of(ac.describe_consumer_groups([group_name], request_timeout=15), group_name)
        assert len(desc.members) == 3, desc.members
        # The consumer-protocol member leaves: the classic members take everything back.
        c.close()
        expected.update(produce_spread(cagent.bootstrap, topic_name, n, 600, 300))
        pump(members, lambda: cover(members, topic_name, n), timeout=60, what="the classic members taking all back")
        listed = ac.list_consumer_groups(types={ConsumerGroupType.CLASSIC}, request_timeout=15).result()
        assert group_name in {x.group_id for x in listed.valid}, "a classic group again"
        pump(members, lambda: len(delivered(members)) >= len(expected), timeout=40, what="records after the leave")
        assert_exactly_once(members, expected)
        assert c.assigned and all(m.revoked for m in (a, b)), "the classic members rejoined"
    finally:
        close_all(members)


def test_a_classic_group_of_another_protocol_type_is_not_taken_over(cagent, topic_name, group_name):
    """Only a group of consumers (protocol type "consumer") can become a consumer group: a
    group.protocol=consumer member joining one with members of another type gets
    GROUP_ID_NOT_FOUND, as from Kafka, and the classic members keep their partitions."""
    create_topic(cagent.bootstrap, topic_name, partitions=2)
    # A classic member with protocol type "connect" (as Kafka Connect workers join), in raw frames.
    import socket
    import struct

    def frame(api, version, body):
        client = b"raw"
        head = struct.pack(">hhih", api, version, 1, len(client)) + client
        payload = head + body
        return struct.pack(">i", len(payload)) + payload

    def string(x):
        x = x.encode()
        return struct.pack(">h", len(x)) + x

    s = socket.create_connection(("127.0.0.1", int(cagent.bootstrap.rsplit(":", 1)[1])), timeout=10)
    # FindCoordinator is not needed: a single agent coordinates every group.
    body = (string(group_name) + struct.pack(">ii", 10000, 10000) + string("") + string("connect")
            + struct.pack(">i", 1) + string("default") + struct.pack(">i", 0))
    for _ in range(2):  # JoinGroup v1; the first answer may be MEMBER_ID_REQUIRED in newer versions
        s.sendall(frame(11, 1, body))
        size = struct.unpack(">i", s.recv(4))[0]
        resp = b""
        while len(resp) < size:
            resp += s.recv(size - len(resp))
        error = struct.unpack(">h", resp[4:6])[0]
        if error == 0:
            break
    assert error == 0, error
    c = Consumer(conf(cagent.bootstrap, group_name, "new"))
    c.subscribe([topic_name])
    errors = []
    deadline = time.monotonic() + 15
    while not errors and time.monotonic() < deadline:
        m = c.poll(0.1)
        if m is not None and m.error() is not None:
            errors.append(m.error())
    c.close()
    s.close()
    assert errors and "group id does not exist" in errors[0].str(), errors
