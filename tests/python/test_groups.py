"""End-to-end tests of consumer groups (classic rebalance protocol) with confluent-kafka
(librdkafka) and kafka-python against a real silt agent: assignment and rebalances, session
expiry of a killed member, committed offsets (also across an agent SIGKILL), static membership
and the group admin APIs.

Every agent here runs with a short initial rebalance delay and a low minimum session timeout so
rebalances take a fraction of a second instead of Kafka's default 3 s."""

import signal
import struct
import subprocess
import sys
import threading
import time
import uuid

import pytest
from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    ConsumerGroupType,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from kafka import KafkaAdminClient, KafkaConsumer, OffsetAndMetadata
from kafka import TopicPartition as KTopicPartition
from kafka.admin import MemberToRemove
from kafka.errors import GroupSubscribedToTopicError, NoError, UnknownMemberIdError

from conftest import wait_until
from helpers import admin, create_topic, produce_all, raw_request, result_of

GROUP_ENV = {
    "SILT_GROUPS__INITIAL_REBALANCE_DELAY_MS": "200",
    "SILT_GROUPS__MIN_SESSION_TIMEOUT_MS": "1000",
}


@pytest.fixture
def gagent(agent_factory):
    """An agent tuned for fast rebalances (200 ms initial delay, 1 s minimum session timeout)."""
    return agent_factory(**GROUP_ENV)


@pytest.fixture
def group_name(request):
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]
    return f"g-{base}-{uuid.uuid4().hex[:8]}"


# -- confluent-kafka members ---------------------------------------------------------------------


class Member:
    """One confluent-kafka group member, polled by the test thread. Records every delivered
    record, every assign/revoke/lost callback, and (by default) commits its consumed positions
    synchronously when partitions are revoked, so the next owner continues exactly there."""

    def __init__(self, bootstrap, group, topics, name, assignor="range", commit_on_revoke=True, **extra):
        self.name = name
        self.topics = list(topics)
        self.commit_on_revoke = commit_on_revoke
        self.records = []  # (topic, partition, offset, value)
        self.assigned = []  # partitions passed to each on_assign
        self.revoked = []  # partitions passed to each on_revoke
        self.lost = []
        self.commit_errors = []
        self.closed = False
        conf = {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "client.id": name,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
            "max.poll.interval.ms": 60000,
            "partition.assignment.strategy": assignor,
            "fetch.wait.max.ms": 50,
            "socket.timeout.ms": 10000,
            "topic.metadata.refresh.interval.ms": 1000,
        }
        conf.update(extra)
        self.c = Consumer(conf)
        self.subscribe(self.topics)

    def subscribe(self, topics):
        self.topics = list(topics)
        self.c.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)

    def _on_assign(self, c, parts):
        self.assigned.append(sorted((tp.topic, tp.partition) for tp in parts))

    def _on_revoke(self, c, parts):
        self.revoked.append(sorted((tp.topic, tp.partition) for tp in parts))
        if self.commit_on_revoke and parts:
            try:
                c.commit(asynchronous=False)
            except KafkaException as e:
                if e.args[0].code() != KafkaError._NO_OFFSET:
                    self.commit_errors.append(str(e))

    def _on_lost(self, c, parts):
        self.lost.append(sorted((tp.topic, tp.partition) for tp in parts))

    def poll(self, timeout=0.02):
        m = self.c.poll(timeout)
        if m is None:
            return None
        err = m.error()
        if err is not None:
            raise AssertionError(f"{self.name}: consumer error {err}")
        self.records.append((m.topic(), m.partition(), m.offset(), m.value()))
        return m

    def parts(self):
        """The current assignment as a set of (topic, partition)."""
        return frozenset((tp.topic, tp.partition) for tp in self.c.assignment())

    def close(self):
        if not self.closed:
            self.closed = True
            self.c.close()


def pump(members, cond=None, timeout=30.0, what="condition", poll=0.02):
    """Polls every open member round-robin until cond() is true (or, without cond, for
    `timeout` seconds). Fails with `what` after the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        for m in members:
            if not m.closed:
                m.poll(poll)
        if cond is not None and cond():
            return
        if time.monotonic() >= deadline:
            if cond is None:
                return
            state = {m.name: sorted(m.parts()) for m in members if not m.closed}
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; assignments: {state}")


def disjoint_cover(members, topic, n):
    """True when the open members' assignments are non-empty, disjoint and cover topic[0..n)."""
    sets = [m.parts() for m in members if not m.closed]
    union = frozenset().union(*sets)
    return all(sets) and sum(len(s) for s in sets) == n and union == {(topic, p) for p in range(n)}


def close_all(members):
    for m in members:
        try:
            m.close()
        except Exception:  # noqa: BLE001 - best effort in cleanup
            pass


def produce_spread(bootstrap, topic, partitions, start, count):
    """Produces values v<start>..v<start+count-1>, record i to partition i % partitions.
    Returns {(topic, partition, offset): value}."""
    recs = [{"value": f"v{i}".encode(), "partition": i % partitions} for i in range(start, start + count)]
    reports = produce_all(bootstrap, topic, recs)
    out = {}
    for r, (err, p, off) in zip(recs, reports):
        assert err is None, f"delivery failed: {err}"
        out[(topic, p, off)] = r["value"]
    return out


def delivered(members):
    """Every record delivered to any of `members`, as a list of (topic, partition, offset, value)."""
    return [r for m in members for r in m.records]


def assert_exactly_once(members, expected):
    """Every expected (topic, partition, offset) was delivered exactly once, with its value, and
    nothing else was delivered."""
    got = delivered(members)
    seen = {}
    dups = []
    for t, p, off, v in got:
        if (t, p, off) in seen:
            dups.append((t, p, off))
        seen[(t, p, off)] = v
    errors = {m.name: m.commit_errors for m in members if getattr(m, "commit_errors", None)}
    assert not dups, f"{len(dups)} records delivered more than once, e.g. {dups[:10]}; commit errors: {errors}"
    missing = sorted(set(expected) - set(seen))
    extra = sorted(set(seen) - set(expected))
    assert not missing, f"{len(missing)} records never delivered, e.g. {missing[:10]}"
    assert not extra, f"unexpected records delivered: {extra[:10]}"
    wrong = [k for k, v in seen.items() if expected[k] != v]
    assert not wrong, f"records with the wrong value: {wrong[:10]}"


def describe_group(bootstrap, group):
    a = admin(bootstrap)
    fs = a.describe_consumer_groups([group], request_timeout=15)
    return result_of(fs, group)


# -- 1. three (then four, then three) confluent-kafka members --------------------------------------


@pytest.mark.parametrize("assignor", ["range", "roundrobin", "cooperative-sticky"])
def test_members_share_partitions_and_rebalance_exactly_once(gagent, topic_name, group_name, assignor):
    n = 6
    create_topic(gagent.bootstrap, topic_name, partitions=n)
    expected = produce_spread(gagent.bootstrap, topic_name, n, 0, 300)  # before anyone consumes

    members = [Member(gagent.bootstrap, group_name, [topic_name], f"m{i}", assignor) for i in range(3)]
    try:
        pump(
            members,
            lambda: disjoint_cover(members, topic_name, n) and all(len(m.parts()) == 2 for m in members),
            what="3 members to own 2 partitions each",
        )

        # Records produced while the group consumes.
        during = {}
        t = threading.Thread(
            target=lambda: during.update(produce_spread(gagent.bootstrap, topic_name, n, 300, 300))
        )
        t.start()
        try:
            pump(members, lambda: not t.is_alive() and len(delivered(members)) >= 600, what="600 records")
        finally:
            t.join()
        expected.update(during)
        pump(members, timeout=0.5)  # anything duplicated would arrive now
        assert_exactly_once(members, expected)

        # A fourth member joins: all four end with a disjoint assignment covering the topic.
        members.append(Member(gagent.bootstrap, group_name, [topic_name], "m3", assignor))
        pump(members, lambda: disjoint_cover(members, topic_name, n), what="4 members to cover 6 partitions")
        expected.update(produce_spread(gagent.bootstrap, topic_name, n, 600, 120))
        pump(members, lambda: len(delivered(members)) >= len(expected), what=f"{len(expected)} records")

        # One member leaves: the other three take over its partitions.
        members[0].close()
        pump(members, lambda: disjoint_cover(members, topic_name, n), what="3 remaining members to cover 6")
        expected.update(produce_spread(gagent.bootstrap, topic_name, n, 720, 120))
        pump(members, lambda: len(delivered(members)) >= len(expected), what=f"{len(expected)} records")
        pump(members, timeout=0.5)
        assert_exactly_once(members, expected)
        for m in members:
            assert not m.lost, f"{m.name} lost its partitions: {m.lost}"
            assert not m.commit_errors, f"{m.name}: commits on revoke failed: {m.commit_errors}"
            assert m.records, f"{m.name} consumed nothing"
    finally:
        close_all(members)


# -- 2. kafka-python members -----------------------------------------------------------------------


class KPMember(threading.Thread):
    """A kafka-python KafkaConsumer in its own thread (KafkaConsumer is not thread-safe): polls,
    records what it got and its assignment, commits when asked to, and closes when stopped.

    kafka-python commits the consumed positions before it rejoins for a rebalance when
    auto-commit is on (a blocking commit() inside a plain ConsumerRebalanceListener is refused
    by kafka-python 3); the interval is long so that is the only automatic commit."""

    def __init__(self, bootstrap, group, topic, name, **extra):
        super().__init__(name=name, daemon=True)
        self.bootstrap, self.group, self.topic = bootstrap, group, topic
        self.extra = extra
        self.lock = threading.Lock()
        self.records = []
        self.assignment = frozenset()
        self.error = None
        self._commit_evt = threading.Event()
        self.committed = threading.Event()
        self._stop_evt = threading.Event()

    def run(self):
        c = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            client_id=self.name,
            auto_offset_reset="earliest",
            enable_auto_commit=True,
            auto_commit_interval_ms=600_000,
            session_timeout_ms=6000,
            heartbeat_interval_ms=500,
            max_poll_interval_ms=30000,
            fetch_max_wait_ms=100,
            request_timeout_ms=20000,
            **self.extra,
        )
        try:
            c.subscribe([self.topic])
            while not self._stop_evt.is_set():
                batch = c.poll(timeout_ms=100)
                with self.lock:
                    for recs in batch.values():
                        self.records.extend((r.topic, r.partition, r.offset, r.value) for r in recs)
                    self.assignment = frozenset(tp.partition for tp in c.assignment())
                if self._commit_evt.is_set() and not self.committed.is_set():
                    c.commit()
                    self.committed.set()
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e
        finally:
            c.close(autocommit=False)

    def commit(self):
        """Has the thread commit its consumed positions; waits for it."""
        self._commit_evt.set()
        wait_until(lambda: self.committed.is_set() or not self.is_alive(), timeout=30, what=f"{self.name}'s commit")
        assert self.error is None, f"{self.name} failed: {self.error!r}"

    def stop(self):
        self._stop_evt.set()
        self.join(timeout=30)
        assert not self.is_alive(), f"{self.name} did not stop"
        assert self.error is None, f"{self.name} failed: {self.error!r}"

    def snapshot(self):
        with self.lock:
            return self.assignment, list(self.records)


def test_kafka_python_members_share_partitions_and_resume_from_commits(gagent, topic_name, group_name):
    n = 6
    create_topic(gagent.bootstrap, topic_name, partitions=n)
    expected = produce_spread(gagent.bootstrap, topic_name, n, 0, 150)
    members = [KPMember(gagent.bootstrap, group_name, topic_name, f"kp{i}") for i in range(3)]
    try:
        # The first member alone consumes everything there is; when the others join, the
        # partitions it hands over must continue after what it consumed (its commit before
        # rejoining), not start over.
        members[0].start()
        wait_until(lambda: len(members[0].snapshot()[1]) == 150, timeout=40, what="the first member's 150 records")
        for m in members[1:]:
            m.start()

        def covered():
            sets = [m.snapshot()[0] for m in members]
            return all(sets) and sum(map(len, sets)) == n and frozenset().union(*sets) == set(range(n))

        wait_until(covered, timeout=40, what="3 kafka-python members to cover 6 partitions")
        expected.update(produce_spread(gagent.bootstrap, topic_name, n, 150, 150))

        def total():
            return sum(len(m.snapshot()[1]) for m in members)

        wait_until(lambda: total() >= len(expected), timeout=40, what=f"{len(expected)} records")
        time.sleep(0.3)  # anything duplicated would arrive now
        assert all(m.snapshot()[0] for m in members) and covered(), "the assignment changed while consuming"
        assert_exactly_once(members, expected)
        for m in members:  # all commit while the group is stable, then all leave
            m.commit()
    finally:
        for m in members:
            m._stop_evt.set()
        for m in members:
            if m.ident is not None:
                m.stop()

    # The commits are the end of each partition.
    ends = {}
    for t, p, off in expected:
        ends[p] = max(ends.get(p, 0), off + 1)
    probe = KafkaConsumer(bootstrap_servers=gagent.bootstrap, group_id=group_name, enable_auto_commit=False)
    try:
        committed = {p: probe.committed(KTopicPartition(topic_name, p)) for p in range(n)}
    finally:
        probe.close()
    assert committed == ends

    # A new member of the group resumes from there: it gets exactly the newer records.
    newer = produce_spread(gagent.bootstrap, topic_name, n, 300, 60)
    c = KafkaConsumer(
        bootstrap_servers=gagent.bootstrap,
        group_id=group_name,
        client_id="kp-resume",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
        fetch_max_wait_ms=100,
    )
    try:
        c.subscribe([topic_name])
        got = []
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and len(got) < len(newer):
            for recs in c.poll(timeout_ms=200).values():
                got.extend((r.topic, r.partition, r.offset, r.value) for r in recs)
        for _ in range(3):
            for recs in c.poll(timeout_ms=100).values():
                got.extend((r.topic, r.partition, r.offset, r.value) for r in recs)
    finally:
        c.close()
    assert sorted(got) == sorted((t, p, o, v) for (t, p, o), v in newer.items())


@pytest.mark.parametrize("api_version", [(0, 11), (1, 1), (2, 1)], ids=lambda v: "kafka-%d.%d" % v)
def test_kafka_python_group_with_older_protocol_versions(gagent, topic_name, group_name, api_version):
    """Pinned to an older broker version, kafka-python uses older group requests (0.11:
    FindCoordinator v1, JoinGroup v2, SyncGroup v1, Heartbeat v1, LeaveGroup v1,
    OffsetCommit v3, OffsetFetch v3; 1.1 and 2.1: newer ones, but all before flexible
    versions)."""
    n = 4
    create_topic(gagent.bootstrap, topic_name, partitions=n)
    expected = produce_spread(gagent.bootstrap, topic_name, n, 0, 80)
    members = [KPMember(gagent.bootstrap, group_name, topic_name, f"old{i}", api_version=api_version) for i in range(2)]
    for m in members:
        m.start()
    try:

        def covered():
            sets = [m.snapshot()[0] for m in members]
            return all(sets) and sum(map(len, sets)) == n and frozenset().union(*sets) == set(range(n))

        wait_until(covered, timeout=40, what="2 kafka-python members to cover 4 partitions")
        wait_until(lambda: sum(len(m.snapshot()[1]) for m in members) >= len(expected), timeout=40, what="80 records")
        time.sleep(0.3)
        assert_exactly_once(members, expected)
        for m in members:
            m.commit()
    finally:
        for m in members:
            m._stop_evt.set()
        for m in members:
            m.stop()
    probe = KafkaConsumer(
        bootstrap_servers=gagent.bootstrap, group_id=group_name, enable_auto_commit=False, api_version=api_version
    )
    try:
        assert {p: probe.committed(KTopicPartition(topic_name, p)) for p in range(n)} == {p: 20 for p in range(n)}
    finally:
        probe.close()


# -- 3. a member killed without leaving ------------------------------------------------------------

CHILD = r"""
import sys
from confluent_kafka import Consumer
bootstrap, group, topic = sys.argv[1:4]
c = Consumer({
    "bootstrap.servers": bootstrap, "group.id": group, "client.id": "doomed",
    "session.timeout.ms": 3000, "heartbeat.interval.ms": 500,
    "auto.offset.reset": "earliest", "enable.auto.commit": False,
    "partition.assignment.strategy": "range", "fetch.wait.max.ms": 50,
})
c.subscribe([topic])
last = None
while True:
    m = c.poll(0.05)
    if m is not None and not m.error():
        print("RECORD", m.partition(), m.offset(), flush=True)
    now = sorted(tp.partition for tp in c.assignment())
    if now != last:
        last = now
        print("ASSIGNED", " ".join(map(str, now)), flush=True)
"""


def test_killed_member_is_expired_after_its_session_timeout(gagent, topic_name, group_name):
    n = 6
    create_topic(gagent.bootstrap, topic_name, partitions=n)
    produce_spread(gagent.bootstrap, topic_name, n, 0, 60)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, gagent.bootstrap, group_name, topic_name],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    child_assignment = []
    records = []

    def read():
        for line in child.stdout:
            if line.startswith("ASSIGNED"):
                child_assignment.append([int(x) for x in line.split()[1:]])
            elif line.startswith("RECORD"):
                records.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    m = Member(gagent.bootstrap, group_name, [topic_name], "survivor")
    try:
        pump(
            [m],
            lambda: len(m.parts()) == 3 and child_assignment and len(child_assignment[-1]) == 3,
            what="the survivor and the subprocess to hold 3 partitions each",
        )
        assert {p for _, p in m.parts()} | set(child_assignment[-1]) == set(range(n))
        pump([m], lambda: records, timeout=15, what="the subprocess to consume")

        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        killed = time.monotonic()
        pump([m], lambda: len(m.parts()) == n, timeout=3 + 6, what="the survivor to get all 6 partitions")
        took = time.monotonic() - killed
        # The dead member keeps its partitions until its 3 s session expires (a closed
        # connection is not a leave), then the survivor gets them all.
        assert took >= 2.0, f"the killed member was dropped after {took:.1f}s, before its session timed out"
        desc = describe_group(gagent.bootstrap, group_name)
        assert [x.client_id for x in desc.members] == ["survivor"]
        assert desc.state == ConsumerGroupState.STABLE
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        m.close()


# -- 4. commits ------------------------------------------------------------------------------------


def test_commit_metadata_and_explicit_lower_offset(gagent, topic_name, group_name):
    create_topic(gagent.bootstrap, topic_name, partitions=2)
    produce_spread(gagent.bootstrap, topic_name, 2, 0, 100)
    m = Member(gagent.bootstrap, group_name, [topic_name], "committer")
    probe = Consumer({"bootstrap.servers": gagent.bootstrap, "group.id": group_name, "enable.auto.commit": False})

    def committed(c=probe):
        got = c.committed([TopicPartition(topic_name, 0), TopicPartition(topic_name, 1)], timeout=10)
        return [(tp.partition, tp.offset, tp.metadata, tp.error) for tp in got]

    try:
        pump([m], lambda: len(m.parts()) == 2, what="the member to own both partitions")
        res = m.c.commit(
            offsets=[TopicPartition(topic_name, 0, 50, metadata="m1"), TopicPartition(topic_name, 1, 7, metadata="m2")],
            asynchronous=False,
        )
        assert [(tp.partition, tp.offset, tp.error) for tp in res] == [(0, 50, None), (1, 7, None)]
        assert committed(m.c) == [(0, 50, "m1", None), (1, 7, "m2", None)]
        assert committed() == [(0, 50, "m1", None), (1, 7, "m2", None)]  # any client sees them

        # Committing another partition, consuming and heartbeating leave partition 0 alone.
        m.c.commit(offsets=[TopicPartition(topic_name, 1, 9, metadata="")], asynchronous=False)
        pump([m], timeout=1.0)
        assert len(m.records) == 100  # consumption did not commit anything (auto commit is off)
        assert committed() == [(0, 50, "m1", None), (1, 9, "", None)]

        # An explicitly committed lower offset is taken as is.
        m.c.commit(offsets=[TopicPartition(topic_name, 0, 40, metadata="m3")], asynchronous=False)
        assert committed() == [(0, 40, "m3", None), (1, 9, "", None)]
    finally:
        probe.close()
        m.close()


@pytest.mark.parametrize("mode", ["sync", "async", "auto"])
def test_new_member_resumes_where_the_last_commit_left_off(gagent, topic_name, group_name, mode):
    """The first member consumes 25 of 60 records and commits them (synchronously,
    asynchronously or by auto-commit); after it closes, a new member of the group gets exactly
    the rest, including records produced after the first member closed."""
    create_topic(gagent.bootstrap, topic_name, partitions=2)
    expected = produce_spread(gagent.bootstrap, topic_name, 2, 0, 60)
    k = 25
    commits = []
    extra = {"enable.auto.offset.store": False, "on_commit": lambda err, parts: commits.append((err, parts))}
    if mode == "auto":
        extra.update({"enable.auto.commit": True, "auto.commit.interval.ms": 200})
    a = Member(gagent.bootstrap, group_name, [topic_name], "first", commit_on_revoke=False, **extra)
    try:
        while len(a.records) < k:
            pump([a], lambda: len(a.records) > 0, what="a record")
            # Only the first k are stored: later deliveries are not committed.
            for t, p, off, _ in a.records[:k]:
                a.c.store_offsets(offsets=[TopicPartition(t, p, off + 1)])
        first = a.records[:k]
        want = {}
        for t, p, off, _ in first:
            want[p] = max(want.get(p, OFFSET_INVALID), off + 1)
        want_list = [(p, want.get(p, OFFSET_INVALID)) for p in (0, 1)]

        def committed():
            got = a.c.committed([TopicPartition(topic_name, 0), TopicPartition(topic_name, 1)], timeout=10)
            return [(tp.partition, tp.offset) for tp in got]

        if mode == "sync":
            res = a.c.commit(asynchronous=False)
            assert all(tp.error is None for tp in res), res
            assert sorted((tp.partition, tp.offset) for tp in res if tp.offset >= 0) == sorted(want.items())
        elif mode == "async":
            assert a.c.commit(asynchronous=True) is None
            pump([a], lambda: commits, timeout=10, what="the async commit's callback")
            err, parts = commits[0]
            assert err is None, err
            assert sorted((tp.partition, tp.offset) for tp in parts if tp.offset >= 0) == sorted(want.items())
        else:
            pump([a], lambda: committed() == want_list, timeout=10, what=f"auto-commit of {want_list}")
            assert all(err is None for err, _ in commits), commits
        assert committed() == want_list
    finally:
        a.close()

    expected.update(produce_spread(gagent.bootstrap, topic_name, 2, 60, 20))
    rest = {key: v for key, v in expected.items() if (key[0], key[1], key[2]) not in {r[:3] for r in first}}
    b = Member(gagent.bootstrap, group_name, [topic_name], "second")
    try:
        pump([b], lambda: len(b.records) >= len(rest), what=f"the {len(rest)} remaining records")
        pump([b], timeout=0.5)
        assert_exactly_once([b], rest)
    finally:
        b.close()


# -- 5. committed offsets survive an agent SIGKILL ---------------------------------------------------


def test_committed_offsets_survive_agent_sigkill(gagent, topic_name, group_name):
    n = 3
    create_topic(gagent.bootstrap, topic_name, partitions=n)
    expected = produce_spread(gagent.bootstrap, topic_name, n, 0, 90)
    k = 40
    a = Member(gagent.bootstrap, group_name, [topic_name], "before-kill", commit_on_revoke=False)
    survivor_group = group_name + "-live"
    live = Member(gagent.bootstrap, survivor_group, [topic_name], "live", commit_on_revoke=False)
    try:
        pump([a, live], lambda: len(a.records) >= k and len(live.parts()) == n, what=f"{k} records")
        first = a.records[:k]
        pos = {}
        for t, p, off, _ in first:
            pos[p] = max(pos.get(p, 0), off + 1)
        offsets = [TopicPartition(topic_name, p, pos.get(p, 0), metadata=f"meta-{p}") for p in range(n)]
        # Partition 0 first gets a higher offset, then the real one: the last commit counts.
        res = a.c.commit(offsets=[TopicPartition(topic_name, 0, 77, metadata="too-far")], asynchronous=False)
        assert all(tp.error is None for tp in res), res
        res = a.c.commit(offsets=offsets, asynchronous=False)
        assert all(tp.error is None for tp in res), res
        a.close()
        want = [(p, pos.get(p, 0), f"meta-{p}") for p in range(n)]

        # Deletions must be as durable as commits: one group deleted, one partition's offset
        # deleted (OffsetDelete) in another.
        doomed, trimmed = group_name + "-deleted", group_name + "-trimmed"
        kp = KafkaAdminClient(bootstrap_servers=gagent.bootstrap, request_timeout_ms=15000)
        try:
            for g in (doomed, trimmed):
                r = kp.alter_group_offsets(g, {KTopicPartition(topic_name, p): OffsetAndMetadata(3, "", -1) for p in range(n)})
                assert set(r.values()) == {NoError}, r
            assert kp.delete_groups([doomed]) == {doomed: "OK"}
            assert kp.delete_group_offsets(trimmed, [KTopicPartition(topic_name, 1)]) == {
                KTopicPartition(topic_name, 1): NoError
            }
        finally:
            kp.close()

        gagent.kill()
        gagent.restart()

        kp = KafkaAdminClient(bootstrap_servers=gagent.bootstrap, request_timeout_ms=15000)
        try:
            after = kp.list_group_offsets([group_name, doomed, trimmed])
            listed = {g["group_id"]: g.get("group_state") for g in kp.list_groups()}
        finally:
            kp.close()
        # confluent-kafka-python sends a metadata string with its terminating NUL (the length
        # librdkafka is given includes it), and kafka-python shows the bytes as sent.
        assert {tp.partition: (o.offset, o.metadata.rstrip("\0")) for tp, o in after[group_name].items()} == {
            p: (off, m) for p, off, m in want
        }
        assert after[doomed] == {}, "a deleted group's offsets came back after the restart"
        assert {tp.partition: o.offset for tp, o in after[trimmed].items()} == {0: 3, 2: 3}
        assert listed.get(group_name) == "Empty" and doomed not in listed

        probe = Consumer({"bootstrap.servers": gagent.bootstrap, "group.id": group_name, "enable.auto.commit": False})
        try:
            got = probe.committed([TopicPartition(topic_name, p) for p in range(n)], timeout=15)
        finally:
            probe.close()
        assert [(tp.partition, tp.offset, tp.metadata) for tp in got] == want

        # The member that stayed connected through the restart lost its membership with the
        # agent's memory; it rejoins and owns the partitions again.
        deadline = time.monotonic() + 30

        def live_member_back():
            try:
                d = describe_group(gagent.bootstrap, survivor_group)
            except KafkaException:
                return False
            return d.state == ConsumerGroupState.STABLE and [x.client_id for x in d.members] == ["live"]

        while not (live_member_back() and len(live.parts()) == n):
            assert time.monotonic() < deadline, "the live member did not rejoin after the restart"
            for _ in range(10):
                try:
                    live.poll(0.05)
                except AssertionError:
                    pass  # transport errors while the agent was down
    finally:
        a.close()
        live.close()

    # A member rejoining the group resumes from the committed offsets.
    rest = {key: v for key, v in expected.items() if key[2] >= pos.get(key[1], 0)}
    b = Member(gagent.bootstrap, group_name, [topic_name], "after-restart")
    try:
        pump([b], lambda: len(b.records) >= len(rest), what=f"the {len(rest)} remaining records")
        pump([b], timeout=0.5)
        assert_exactly_once([b], rest)
    finally:
        b.close()


# -- 6. static membership --------------------------------------------------------------------------


@pytest.mark.parametrize("restarted", [1, 2], ids=["restart-inst-1", "restart-inst-2"])
def test_static_member_restart_keeps_its_partitions_without_rebalance(gagent, topic_name, group_name, restarted):
    n = 4
    create_topic(gagent.bootstrap, topic_name, partitions=n)

    def member(i):
        conf = {"group.instance.id": f"inst-{i}", "session.timeout.ms": 10000}
        return Member(gagent.bootstrap, group_name, [topic_name], f"static-{i}", **conf)

    # One of the two leads the group: between them, the two runs restart the leader and a
    # follower.
    x, y = member(1), member(2)
    a, b = (x, y) if restarted == 1 else (y, x)
    inst_a, inst_b = ("inst-1", "inst-2") if restarted == 1 else ("inst-2", "inst-1")
    a2 = None
    try:
        pump([a, b], lambda: disjoint_cover([a, b], topic_name, n), what="2 static members to cover 4")
        a_parts, b_parts = a.parts(), b.parts()
        pump([a, b], timeout=1.0)  # settled: nothing changes any more
        assert (a.parts(), b.parts()) == (a_parts, b_parts)
        b_assigns, b_revokes = len(b.assigned), len(b.revoked)
        desc = describe_group(gagent.bootstrap, group_name)
        before = {m.group_instance_id: m.member_id for m in desc.members}
        assert set(before) == {"inst-1", "inst-2"}

        # A static member's close() sends no LeaveGroup: the group still lists it.
        a.close()
        desc = describe_group(gagent.bootstrap, group_name)
        assert {m.group_instance_id: m.member_id for m in desc.members} == before
        assert desc.state == ConsumerGroupState.STABLE

        # Back within its session timeout with the same instance id: same partitions, no rebalance.
        a2 = member(restarted)
        pump([a2, b], lambda: a2.parts(), timeout=15, what="the restarted static member's assignment")
        assert a2.parts() == a_parts
        pump([a2, b], timeout=2.0)  # several heartbeats: a rebalance would show now
        assert a2.parts() == a_parts
        assert b.parts() == b_parts
        assert (len(b.assigned), len(b.revoked)) == (b_assigns, b_revokes), (
            f"the other member went through a rebalance: assigned {b.assigned}, revoked {b.revoked}"
        )
        desc = describe_group(gagent.bootstrap, group_name)
        after = {m.group_instance_id: m.member_id for m in desc.members}
        assert set(after) == {"inst-1", "inst-2"} and after[inst_b] == before[inst_b]
        assert after[inst_a] != before[inst_a], "the restarted static member got no new member id"
        assert desc.state == ConsumerGroupState.STABLE
    finally:
        close_all([m for m in (a, b, a2) if m is not None])


def test_static_member_that_stays_away_expires_after_its_session_timeout(gagent, topic_name, group_name):
    n = 4
    create_topic(gagent.bootstrap, topic_name, partitions=n)

    def member(i):
        conf = {"group.instance.id": f"inst-{i}", "session.timeout.ms": 2500}
        return Member(gagent.bootstrap, group_name, [topic_name], f"static-{i}", **conf)

    a, b = member(1), member(2)
    try:
        pump([a, b], lambda: disjoint_cover([a, b], topic_name, n), what="2 static members to cover 4")
        a.close()  # no LeaveGroup
        closed = time.monotonic()
        pump([b], lambda: len(b.parts()) == n, timeout=2.5 + 6, what="the remaining member to get all 4")
        took = time.monotonic() - closed
        assert took >= 1.5, f"the departed static member was dropped after {took:.1f}s, within its session"
        desc = describe_group(gagent.bootstrap, group_name)
        assert [m.group_instance_id for m in desc.members] == ["inst-2"]
    finally:
        close_all([a, b])


def test_second_instance_with_the_same_static_id_fences_the_first(gagent, topic_name, group_name):
    """KIP-345: a new member with a group.instance.id already in use takes over; the old one is
    fenced (FENCED_INSTANCE_ID, fatal for librdkafka)."""
    create_topic(gagent.bootstrap, topic_name, partitions=2)
    conf = {"group.instance.id": "the-one", "session.timeout.ms": 6000, "heartbeat.interval.ms": 300}
    first = Member(gagent.bootstrap, group_name, [topic_name], "first", **conf)
    second = None
    try:
        pump([first], lambda: len(first.parts()) == 2, what="the first instance's assignment")
        second = Member(gagent.bootstrap, group_name, [topic_name], "second", **conf)
        errors = []
        deadline = time.monotonic() + 15
        while not (errors and len(second.parts()) == 2):
            assert time.monotonic() < deadline, f"no fencing: errors {errors}, second owns {second.parts()}"
            msg = first.c.poll(0.05)
            if msg is not None and msg.error() is not None:
                errors.append(msg.error())
            second.poll(0.05)
        assert errors[0].code() == KafkaError._FATAL, errors
        assert "fenced" in errors[0].str().lower(), errors
        desc = describe_group(gagent.bootstrap, group_name)
        assert [(m.client_id, m.group_instance_id) for m in desc.members] == [("second", "the-one")]
    finally:
        close_all([x for x in (first, second) if x is not None])


def test_admin_removes_a_departed_static_member_by_instance_id(gagent, topic_name, group_name):
    """A static member that closed (no LeaveGroup) is removed by an admin LeaveGroup (v3+, by
    group.instance.id, as kafka-consumer-groups --delete-members does): the other member gets
    its partitions at once instead of after the 30 s session timeout."""
    n = 4
    create_topic(gagent.bootstrap, topic_name, partitions=n)

    def member(i):
        conf = {"group.instance.id": f"inst-{i}", "session.timeout.ms": 30000}
        return Member(gagent.bootstrap, group_name, [topic_name], f"static-{i}", **conf)

    a, b = member(1), member(2)
    kp = KafkaAdminClient(bootstrap_servers=gagent.bootstrap, request_timeout_ms=15000)
    try:
        pump([a, b], lambda: disjoint_cover([a, b], topic_name, n), what="2 static members to cover 4")
        a.close()
        pump([b], timeout=0.5)
        assert len(b.parts()) == 2  # still waiting for the departed member

        r = kp.remove_group_members(
            group_name, [MemberToRemove(group_instance_id="inst-1"), MemberToRemove(group_instance_id="inst-9")]
        )
        assert r == {"inst-1": NoError, "inst-9": UnknownMemberIdError}
        started = time.monotonic()
        pump([b], lambda: len(b.parts()) == n, timeout=10, what="the remaining member to get all 4 partitions")
        assert time.monotonic() - started < 10
        desc = describe_group(gagent.bootstrap, group_name)
        assert [m.group_instance_id for m in desc.members] == ["inst-2"]
    finally:
        kp.close()
        close_all([a, b])


# -- more coordinator behaviour -------------------------------------------------------------------


def test_session_timeout_outside_the_agent_limits_is_refused(agent, gagent, topic_name):
    """JoinGroup with a session timeout below groups.min_session_timeout_ms (6 s by default)
    fails with INVALID_SESSION_TIMEOUT; an agent with a 1 s minimum accepts the same member."""
    for a in (agent, gagent):
        create_topic(a.bootstrap, topic_name, partitions=1)
    m = Member(agent.bootstrap, "short-session", [topic_name], "short", **{"session.timeout.ms": 3000})
    try:
        deadline = time.monotonic() + 15
        err = None
        while err is None:
            assert time.monotonic() < deadline, "no error for a 3 s session timeout"
            msg = m.c.poll(0.1)
            if msg is not None and msg.error() is not None:
                err = msg.error()
        assert err.code() == KafkaError.INVALID_SESSION_TIMEOUT, err
        assert not m.parts()
    finally:
        m.close()
    ok = Member(gagent.bootstrap, "short-session", [topic_name], "short", **{"session.timeout.ms": 3000})
    try:
        pump([ok], lambda: ok.parts() == {(topic_name, 0)}, timeout=15, what="the 3 s session member's assignment")
    finally:
        ok.close()


def test_subscription_change_rebalances_the_group(gagent, topic_name, group_name):
    """A member that subscribes to another topic as well rejoins with new metadata: the group
    rebalances and the partitions of both topics are shared."""
    t1, t2 = topic_name + "-1", topic_name + "-2"
    create_topic(gagent.bootstrap, t1, partitions=2)
    create_topic(gagent.bootstrap, t2, partitions=2)
    members = [Member(gagent.bootstrap, group_name, [t1], f"sub-{i}") for i in range(2)]
    try:
        pump(members, lambda: disjoint_cover(members, t1, 2), what="2 members to cover topic 1")
        for m in members:
            m.subscribe([t1, t2])
        want = {(t, p) for t in (t1, t2) for p in range(2)}

        def both_topics():
            sets = [m.parts() for m in members]
            return sum(map(len, sets)) == 4 and frozenset().union(*sets) == want

        pump(members, both_topics, timeout=20, what="the 4 partitions of both topics to be shared")
        desc = describe_group(gagent.bootstrap, group_name)
        assert desc.state == ConsumerGroupState.STABLE
        got = {(tp.topic, tp.partition) for m in desc.members for tp in m.assignment.topic_partitions}
        assert got == want
    finally:
        close_all(members)


def test_simple_group_with_only_commits_is_listed_as_simple_and_empty(gagent, topic_name, group_name):
    """A group that never had members, only offsets committed by a consumer using assign()
    (generation -1), is a "simple" consumer group: ListGroups and DescribeGroups report it
    Empty with an empty protocol type, as Kafka does."""
    create_topic(gagent.bootstrap, topic_name, partitions=1)
    produce_spread(gagent.bootstrap, topic_name, 1, 0, 10)
    c = Consumer({"bootstrap.servers": gagent.bootstrap, "group.id": group_name, "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic_name, 0, 0)])
        res = c.commit(offsets=[TopicPartition(topic_name, 0, 3, metadata="manual")], asynchronous=False)
        assert [(tp.offset, tp.error) for tp in res] == [(3, None)]
        got = c.committed([TopicPartition(topic_name, 0)], timeout=10)
        assert [(tp.offset, tp.metadata) for tp in got] == [(3, "manual")]
    finally:
        c.close()
    a = admin(gagent.bootstrap)
    d = describe_group(gagent.bootstrap, group_name)
    assert d.state == ConsumerGroupState.EMPTY and d.members == []
    assert d.is_simple_consumer_group is True
    listed = {g.group_id: g for g in a.list_consumer_groups(request_timeout=15).result(timeout=20).valid}
    assert listed[group_name].state == ConsumerGroupState.EMPTY
    assert listed[group_name].is_simple_consumer_group is True, "ListGroups gave the simple group a protocol type"
    kp = KafkaAdminClient(bootstrap_servers=gagent.bootstrap, request_timeout_ms=15000)
    try:
        groups = {g["group_id"]: g for g in kp.list_groups()}
        assert groups[group_name]["protocol_type"] == ""
    finally:
        kp.close()


# -- the coordinator's protocol, by hand ------------------------------------------------------------


def _i16(v):
    return struct.pack(">h", v)


def _i32(v):
    return struct.pack(">i", v)


def _str(v):
    if v is None:
        return _i16(-1)
    b = v.encode()
    return _i16(len(b)) + b


def _bytes(v):
    return _i32(len(v)) + v


class _Reader:
    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def _take(self, fmt):
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return v

    def i16(self):
        return self._take(">h")

    def i32(self):
        return self._take(">i")

    def i64(self):
        return self._take(">q")

    def str(self):
        n = self.i16()
        if n < 0:
            return None
        v = self.buf[self.pos : self.pos + n].decode()
        self.pos += n
        return v

    def bytes(self):
        n = self.i32()
        v = self.buf[self.pos : self.pos + max(n, 0)]
        self.pos += max(n, 0)
        return v

    def array(self, item):
        return [item() for _ in range(self.i32())]


class RawGroup:
    """JoinGroup v4, SyncGroup v2, Heartbeat v2, LeaveGroup v2, OffsetCommit v3, OffsetFetch v3
    and DescribeGroups v0, each on its own connection (header v1, client id "silt-py-raw")."""

    def __init__(self, bootstrap, group):
        self.bootstrap, self.group = bootstrap, group

    def join(self, member_id="", protocols=(("range", b"meta"),), ptype="consumer", session=10000):
        body = _str(self.group) + _i32(session) + _i32(10000) + _str(member_id) + _str(ptype)
        body += _i32(len(protocols)) + b"".join(_str(n) + _bytes(m) for n, m in protocols)
        r = _Reader(raw_request(self.bootstrap, 11, 4, body, timeout=30))
        r.i32()
        err, gen, proto, leader, mid = r.i16(), r.i32(), r.str(), r.str(), r.str()
        members = r.array(lambda: (r.str(), r.bytes()))
        return {"error": err, "generation": gen, "protocol": proto, "leader": leader, "member_id": mid,
                "members": members}

    def join_new(self, **kw):
        """The two-step join of a new member (MEMBER_ID_REQUIRED, then with that id)."""
        first = self.join("", **kw)
        assert first["error"] == 79 and first["member_id"], first  # MEMBER_ID_REQUIRED
        return self.join(first["member_id"], **kw)

    def sync(self, member_id, generation, assignments=()):
        body = _str(self.group) + _i32(generation) + _str(member_id)
        body += _i32(len(assignments)) + b"".join(_str(m) + _bytes(a) for m, a in assignments)
        r = _Reader(raw_request(self.bootstrap, 14, 2, body, timeout=30))
        r.i32()
        return r.i16(), r.bytes()

    def heartbeat(self, member_id, generation):
        r = _Reader(raw_request(self.bootstrap, 12, 2, _str(self.group) + _i32(generation) + _str(member_id)))
        r.i32()
        return r.i16()

    def leave(self, member_id):
        r = _Reader(raw_request(self.bootstrap, 13, 2, _str(self.group) + _str(member_id)))
        r.i32()
        return r.i16()

    def commit(self, member_id, generation, offsets, version=3):
        """offsets: [(topic, partition, offset, metadata)]; returns {(topic, partition): error}.
        Version 2 or 3 (the same request; v3 answers with a throttle time)."""
        body = _str(self.group) + _i32(generation) + _str(member_id) + struct.pack(">q", -1)
        by_topic = {}
        for t, p, o, m in offsets:
            by_topic.setdefault(t, []).append((p, o, m))
        body += _i32(len(by_topic))
        for t, ps in by_topic.items():
            body += _str(t) + _i32(len(ps)) + b"".join(_i32(p) + struct.pack(">q", o) + _str(m) for p, o, m in ps)
        r = _Reader(raw_request(self.bootstrap, 8, version, body))
        if version >= 3:
            r.i32()
        out = {}
        for t, ps in r.array(lambda: (r.str(), r.array(lambda: (r.i32(), r.i16())))):
            for p, e in ps:
                out[(t, p)] = e
        return out

    def fetch(self, topic, partitions, version=3):
        """{partition: (offset, metadata, error)} and the top-level error (v1 has none: 0).
        Version 1 or 3 (the same request; v2+ adds the top-level error, v3 a throttle time)."""
        body = _str(self.group) + _i32(1) + _str(topic) + _i32(len(partitions)) + b"".join(map(_i32, partitions))
        r = _Reader(raw_request(self.bootstrap, 9, version, body))
        if version >= 3:
            r.i32()
        out = {}
        for _t, ps in r.array(lambda: (r.str(), r.array(lambda: (r.i32(), r.i64(), r.str(), r.i16())))):
            for p, o, m, e in ps:
                out[p] = (o, m, e)
        top = r.i16() if version >= 2 else 0
        assert r.pos == len(r.buf), f"OffsetFetch v{version}: {len(r.buf) - r.pos} bytes left over"
        return out, top

    def describe(self):
        r = _Reader(raw_request(self.bootstrap, 15, 0, _i32(1) + _str(self.group)))
        groups = r.array(
            lambda: {
                "error": r.i16(),
                "group": r.str(),
                "state": r.str(),
                "protocol_type": r.str(),
                "protocol": r.str(),
                "members": r.array(lambda: (r.str(), r.str(), r.str(), r.bytes(), r.bytes())),
            }
        )
        assert len(groups) == 1 and groups[0]["group"] == self.group, groups
        return groups[0]


def _in_thread(fn, *args, **kw):
    box = {}

    def run():
        try:
            box["result"] = fn(*args, **kw)
        except BaseException as e:  # noqa: BLE001 - re-raised by the caller
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()

    class Pending:
        def done(self):
            return not t.is_alive()

        def __call__(self, timeout=30):
            t.join(timeout)
            assert not t.is_alive(), f"{fn.__name__} did not return within {timeout}s"
            if "error" in box:
                raise box["error"]
            return box["result"]

    return Pending()


def test_raw_protocol_join_sync_heartbeat_commit_and_their_errors(gagent, topic_name, group_name):
    """The coordinator's answers, request by request, including every error a client relies on
    to recover: MEMBER_ID_REQUIRED, ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID,
    REBALANCE_IN_PROGRESS, INCONSISTENT_GROUP_PROTOCOL, INVALID_GROUP_ID and the per-partition
    OffsetCommit errors."""
    create_topic(gagent.bootstrap, topic_name, partitions=2)
    g = RawGroup(gagent.bootstrap, group_name)
    assert RawGroup(gagent.bootstrap, "").join()["error"] == 24  # INVALID_GROUP_ID

    # A first member: MEMBER_ID_REQUIRED, then generation 1 with itself as leader.
    a = g.join_new(protocols=(("range", b"meta-a"), ("roundrobin", b"rr-a")))
    assert a["error"] == 0, a
    ma, gen = a["member_id"], a["generation"]
    assert gen == 1 and a["leader"] == ma and a["protocol"] == "range"
    assert a["members"] == [(ma, b"meta-a")]
    assert g.sync(ma, gen + 1, [(ma, b"x")]) == (22, b"")  # ILLEGAL_GENERATION
    assert g.sync("nobody", gen, []) == (25, b"")  # UNKNOWN_MEMBER_ID
    assert g.sync(ma, gen, [(ma, b"assign-a1")]) == (0, b"assign-a1")
    assert g.heartbeat(ma, gen) == 0
    assert g.heartbeat(ma, gen + 1) == 22
    assert g.heartbeat("nobody", gen) == 25
    assert g.join(a["member_id"] + "-made-up")["error"] == 25

    # OffsetCommit: generation and member checks, per-partition errors.
    assert g.commit(ma, gen, [(topic_name, 0, 5, "five"), (topic_name, 1, 6, None)]) == {
        (topic_name, 0): 0,
        (topic_name, 1): 0,
    }
    assert g.commit(ma, gen - 1, [(topic_name, 0, 1, "")]) == {(topic_name, 0): 22}
    assert g.commit("nobody", gen, [(topic_name, 0, 1, "")]) == {(topic_name, 0): 25}
    assert g.commit(ma, gen, [(topic_name, 7, 1, "")]) == {(topic_name, 7): 3}  # UNKNOWN_TOPIC_OR_PARTITION
    assert g.commit(ma, gen, [(topic_name, 0, 1, "m" * 5000)]) == {(topic_name, 0): 12}  # too large
    fetched, err = g.fetch(topic_name, [0, 1, 5])
    assert err == 0
    assert fetched[0] == (5, "five", 0) and fetched[1][:1] == (6,) and fetched[1][2] == 0
    assert fetched[5][0] == -1

    # Different protocol type, or no protocol in common: INCONSISTENT_GROUP_PROTOCOL.
    assert g.join(ptype="connect")["error"] == 23
    assert g.join(protocols=(("sticky", b""),))["error"] == 23

    # A second member: the group rebalances; the first learns it from its heartbeat.
    b_join = _in_thread(g.join_new, protocols=(("roundrobin", b"rr-b"), ("range", b"meta-b")))
    wait_until(lambda: g.heartbeat(ma, gen) == 27, timeout=10, what="REBALANCE_IN_PROGRESS for the first member")
    a2 = g.join(ma, protocols=(("range", b"meta-a"), ("roundrobin", b"rr-a")))
    b = b_join()
    assert a2["error"] == 0 and b["error"] == 0, (a2, b)
    mb, gen2 = b["member_id"], a2["generation"]
    assert gen2 == gen + 1 and b["generation"] == gen2
    assert a2["leader"] == ma and b["leader"] == ma
    # One vote each for range and roundrobin: either may win, the same for everyone, and the
    # leader gets each member's metadata for that protocol.
    proto = a2["protocol"]
    assert proto in ("range", "roundrobin") and b["protocol"] == proto
    meta = {"range": (b"meta-a", b"meta-b"), "roundrobin": (b"rr-a", b"rr-b")}[proto]
    assert sorted(a2["members"]) == sorted([(ma, meta[0]), (mb, meta[1])])
    assert b["members"] == []  # only the leader gets the members

    # The follower's SyncGroup waits for the leader's assignment.
    b_sync = _in_thread(g.sync, mb, gen2)
    time.sleep(0.3)
    assert not b_sync.done(), f"the follower's SyncGroup was answered before the leader's: {b_sync()}"
    assert g.sync(ma, gen2, [(ma, b"assign-a2"), (mb, b"assign-b2")]) == (0, b"assign-a2")
    assert b_sync() == (0, b"assign-b2")
    assert g.commit(ma, gen, [(topic_name, 0, 9, "")]) == {(topic_name, 0): 22}  # the old generation

    d = g.describe()
    assert (d["error"], d["state"], d["protocol_type"], d["protocol"]) == (0, "Stable", "consumer", proto)
    assert sorted(d["members"]) == sorted(
        [
            (ma, "silt-py-raw", "/127.0.0.1", meta[0], b"assign-a2"),
            (mb, "silt-py-raw", "/127.0.0.1", meta[1], b"assign-b2"),
        ]
    )

    # Leaving: unknown member refused; the second member's leave starts a rebalance.
    assert g.leave("nobody") == 25
    assert g.leave(mb) == 0
    assert g.heartbeat(ma, gen2) == 27
    a3 = g.join(ma, protocols=(("range", b"meta-a"),))
    assert (a3["error"], a3["generation"], a3["members"]) == (0, gen2 + 1, [(ma, b"meta-a")])
    assert g.sync(ma, a3["generation"], [(ma, b"alone")]) == (0, b"alone")
    assert g.leave(ma) == 0
    d = g.describe()
    assert (d["state"], d["members"]) == ("Empty", [])
    assert RawGroup(gagent.bootstrap, group_name + "-unknown").describe()["state"] == "Dead"

    # The oldest versions: OffsetCommit v2 without membership (generation -1), OffsetFetch v1.
    simple = RawGroup(gagent.bootstrap, group_name + "-v2")
    assert simple.commit("", -1, [(topic_name, 0, 11, "eleven")], version=2) == {(topic_name, 0): 0}
    assert simple.fetch(topic_name, [0, 1], version=1) == ({0: (11, "eleven", 0), 1: (-1, "", 0)}, 0)
    assert simple.commit("", -1, [(topic_name, 0, 12, None)], version=2) == {(topic_name, 0): 0}
    assert simple.fetch(topic_name, [0], version=1)[0][0][:2] in ((12, ""), (12, None))


# -- 7. AdminClient (confluent-kafka) ------------------------------------------------------------------


def _groups_listed(a, states=None, types=None):
    kw = {"request_timeout": 15}
    if states is not None:
        kw["states"] = states
    if types is not None:
        kw["types"] = types
    res = a.list_consumer_groups(**kw).result(timeout=20)
    assert not res.errors, res.errors
    return {g.group_id: g.state for g in res.valid}


def test_admin_client_groups_offsets_lag_and_deletion(gagent, topic_name, group_name):
    topic_a, topic_b = topic_name + "-a", topic_name + "-b"
    create_topic(gagent.bootstrap, topic_a, partitions=3)
    create_topic(gagent.bootstrap, topic_b, partitions=2)
    produce_spread(gagent.bootstrap, topic_a, 3, 0, 30)  # 10 per partition
    produce_spread(gagent.bootstrap, topic_b, 2, 0, 20)
    g_active, g_moved = group_name + "-active", group_name + "-moved"
    a = admin(gagent.bootstrap)
    members = []
    try:
        # g_moved consumed topic B, committed, and has no members any more.
        old = Member(gagent.bootstrap, g_moved, [topic_b], "old")
        pump([old], lambda: len(old.records) == 20, what="topic B")
        old.c.commit(asynchronous=False)
        old.close()

        # g_active: two members on topic A with known commits.
        members = [Member(gagent.bootstrap, g_active, [topic_a], f"admin-{i}") for i in range(2)]
        pump(members, lambda: disjoint_cover(members, topic_a, 3), what="2 members to cover topic A")
        res = members[0].c.commit(
            offsets=[TopicPartition(topic_a, 0, 4), TopicPartition(topic_a, 1, 7), TopicPartition(topic_a, 2, 10)],
            asynchronous=False,
        )
        assert all(tp.error is None for tp in res), res

        # ListGroups, with and without the state filter.
        listed = _groups_listed(a)
        assert listed.get(g_active) == ConsumerGroupState.STABLE
        assert listed.get(g_moved) == ConsumerGroupState.EMPTY
        stable = _groups_listed(a, {ConsumerGroupState.STABLE})
        assert g_active in stable and g_moved not in stable
        empty = _groups_listed(a, {ConsumerGroupState.EMPTY})
        assert g_moved in empty and g_active not in empty
        assert set(stable.values()) == {ConsumerGroupState.STABLE}
        assert set(empty.values()) == {ConsumerGroupState.EMPTY}
        # ListGroups v5 type filter: these are classic groups, not KIP-848 "consumer" groups.
        classic = _groups_listed(a, types={ConsumerGroupType.CLASSIC})
        assert {g_active, g_moved} <= set(classic)
        assert not {g_active, g_moved} & set(_groups_listed(a, types={ConsumerGroupType.CONSUMER}))
        res = a.list_consumer_groups(request_timeout=15).result(timeout=20)
        assert {g.group_id: g.type for g in res.valid if g.group_id in (g_active, g_moved)} == {
            g_active: ConsumerGroupType.CLASSIC,
            g_moved: ConsumerGroupType.CLASSIC,
        }

        # DescribeGroups.
        fs = a.describe_consumer_groups([g_active, g_moved], request_timeout=15)
        d = result_of(fs, g_active)
        assert d.group_id == g_active
        assert d.state == ConsumerGroupState.STABLE
        assert d.is_simple_consumer_group is False
        assert d.partition_assignor == "range"
        assert d.coordinator.id == 0
        assert sorted(x.client_id for x in d.members) == ["admin-0", "admin-1"]
        assert all(x.member_id and x.host for x in d.members)
        by_client = {x.client_id: {(tp.topic, tp.partition) for tp in x.assignment.topic_partitions} for x in d.members}
        assert by_client == {m.name: set(m.parts()) for m in members}
        d2 = result_of(fs, g_moved)
        assert d2.state == ConsumerGroupState.EMPTY
        assert d2.members == []

        # Committed offsets against the high watermarks: the lag.
        fs = a.list_consumer_group_offsets([ConsumerGroupTopicPartitions(g_active)], request_timeout=15)
        offs = result_of(fs, g_active)
        assert offs.group_id == g_active
        committed = {(tp.topic, tp.partition): tp.offset for tp in offs.topic_partitions}
        assert committed == {(topic_a, 0): 4, (topic_a, 1): 7, (topic_a, 2): 10}
        lag = {}
        for (t, p), off in committed.items():
            low, high = members[0].c.get_watermark_offsets(TopicPartition(t, p), timeout=10, cached=False)
            assert (low, high) == (0, 10)
            lag[p] = high - off
        assert lag == {0: 6, 1: 3, 2: 0}
        fs = a.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(g_moved, [TopicPartition(topic_b, 0), TopicPartition(topic_b, 1)])],
            request_timeout=15,
        )
        moved = result_of(fs, g_moved)
        assert [(tp.topic, tp.partition, tp.offset) for tp in moved.topic_partitions] == [
            (topic_b, 0, 10),
            (topic_b, 1, 10),
        ]

        # OffsetDelete (confluent-kafka's Python AdminClient has no call for it; kafka-python's
        # KafkaAdminClient sends it): fine for a topic the group does not subscribe to, refused
        # for one an active member subscribes to.
        kp = KafkaAdminClient(bootstrap_servers=gagent.bootstrap, request_timeout_ms=15000)
        try:
            r = kp.delete_group_offsets(g_moved, [KTopicPartition(topic_b, 0)])
            assert r == {KTopicPartition(topic_b, 0): NoError}
            r = kp.delete_group_offsets(g_active, [KTopicPartition(topic_a, 1)])
            assert r == {KTopicPartition(topic_a, 1): GroupSubscribedToTopicError}
        finally:
            kp.close()
        fs = a.list_consumer_group_offsets([ConsumerGroupTopicPartitions(g_moved)], request_timeout=15)
        assert [(tp.topic, tp.partition, tp.offset) for tp in result_of(fs, g_moved).topic_partitions] == [
            (topic_b, 1, 10)
        ]
        fs = a.list_consumer_group_offsets([ConsumerGroupTopicPartitions(g_active)], request_timeout=15)
        assert {(tp.topic, tp.partition): tp.offset for tp in result_of(fs, g_active).topic_partitions} == committed

        # DeleteGroups: refused while the group has members, done once it is empty.
        fs = a.delete_consumer_groups([g_active], request_timeout=15)
        with pytest.raises(KafkaException) as ei:
            result_of(fs, g_active)
        err = ei.value.args[0]
        assert err.code() == KafkaError.NON_EMPTY_GROUP and err.name() == "NON_EMPTY_GROUP", err
        assert g_active in _groups_listed(a)

        fs = a.delete_consumer_groups([g_moved], request_timeout=15)
        assert result_of(fs, g_moved) is None
        assert g_moved not in _groups_listed(a)
        fs = a.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(g_moved, [TopicPartition(topic_b, 1)])], request_timeout=15
        )
        assert [tp.offset for tp in result_of(fs, g_moved).topic_partitions] == [OFFSET_INVALID]

        fs = a.delete_consumer_groups([group_name + "-never-existed"], request_timeout=15)
        with pytest.raises(KafkaException) as ei:
            result_of(fs, group_name + "-never-existed")
        assert ei.value.args[0].code() == KafkaError.GROUP_ID_NOT_FOUND, ei.value.args[0]

        # Once the active group's members left, it can be deleted too, with its offsets.
        close_all(members)
        wait_until(
            lambda: _groups_listed(a).get(g_active) == ConsumerGroupState.EMPTY, timeout=10, what="g_active empty"
        )
        fs = a.delete_consumer_groups([g_active], request_timeout=15)
        assert result_of(fs, g_active) is None
        fs = a.list_consumer_group_offsets([ConsumerGroupTopicPartitions(g_active)], request_timeout=15)
        assert result_of(fs, g_active).topic_partitions == []
    finally:
        close_all(members)


# -- 8. KafkaAdminClient (kafka-python) ----------------------------------------------------------------


def test_kafka_python_admin_lists_describes_and_fetches_offsets(gagent, topic_name, group_name):
    n = 2
    create_topic(gagent.bootstrap, topic_name, partitions=n)
    produce_spread(gagent.bootstrap, topic_name, n, 0, 20)
    m = KafkaConsumer(
        bootstrap_servers=gagent.bootstrap,
        group_id=group_name,
        client_id="kp-admin-member",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
        fetch_max_wait_ms=100,
    )
    kp = KafkaAdminClient(bootstrap_servers=gagent.bootstrap, request_timeout_ms=15000)
    try:
        m.subscribe([topic_name])
        got = 0
        deadline = time.monotonic() + 30
        while got < 20:
            assert time.monotonic() < deadline, f"consumed {got} of 20"
            got += sum(len(r) for r in m.poll(timeout_ms=200).values())
        m.commit(
            {
                KTopicPartition(topic_name, 0): OffsetAndMetadata(6, "six", -1),
                KTopicPartition(topic_name, 1): OffsetAndMetadata(10, "", -1),
            }
        )

        groups = {g["group_id"]: g for g in kp.list_groups()}
        assert groups[group_name]["protocol_type"] == "consumer"
        stable = [g["group_id"] for g in kp.list_groups(states_filter=["Stable"])]
        assert group_name in stable
        assert group_name not in [g["group_id"] for g in kp.list_groups(states_filter=["Empty"])]

        d = kp.describe_groups([group_name])[group_name]
        assert d["error"] is None
        assert d["group_state"] == "Stable"
        assert d["protocol_type"] == "consumer"
        assert d["protocol_data"] in ("range", "roundrobin", "sticky", "cooperative-sticky")
        assert len(d["members"]) == 1
        member = d["members"][0]
        assert member["client_id"] == "kp-admin-member"
        assert member["client_host"] == "/127.0.0.1"
        assert list(member["member_metadata"]["topics"]) == [topic_name]
        assigned = {
            (t["topic"], p) for t in member["member_assignment"]["assigned_partitions"] for p in t["partitions"]
        }
        assert assigned == {(topic_name, 0), (topic_name, 1)}

        offs = kp.list_group_offsets(group_name)[group_name]
        assert {tp.partition: (o.offset, o.metadata) for tp, o in offs.items()} == {0: (6, "six"), 1: (10, "")}

        # Offsets of a second group, committed by the admin client (no membership), then both
        # groups' offsets in one OffsetFetch (v8+ carries several groups).
        other = group_name + "-other"
        r = kp.alter_group_offsets(other, {KTopicPartition(topic_name, 1): OffsetAndMetadata(2, "two", -1)})
        assert r == {KTopicPartition(topic_name, 1): NoError}
        both = kp.list_group_offsets([group_name, other])
        assert {g: {tp.partition: (o.offset, o.metadata) for tp, o in v.items()} for g, v in both.items()} == {
            group_name: {0: (6, "six"), 1: (10, "")},
            other: {1: (2, "two")},
        }
        only = kp.list_group_offsets({other: [KTopicPartition(topic_name, 0), KTopicPartition(topic_name, 1)]})
        assert {tp.partition: o.offset for tp, o in only[other].items()} == {0: -1, 1: 2}
    finally:
        m.close()
    try:
        wait_until(
            lambda: group_name in [g["group_id"] for g in kp.list_groups(states_filter=["Empty"])],
            timeout=10,
            what="the group to be empty after its member closed",
        )
        d = kp.describe_groups([group_name])[group_name]
        assert d["group_state"] == "Empty" and d["members"] == []
    finally:
        kp.close()
