"""Client quotas (KIP-13/55/219) end to end: `silt admin quotas` sets byte rates through
AlterClientQuotas; a confluent-kafka producer and consumer over their quota are throttled (the
client sees throttle_time_ms and the agent stops reading the connection), while a client with
another client id on the same agent is not."""

import os
import subprocess
import time
import urllib.request

from confluent_kafka import Consumer, Producer, TopicPartition

from helpers import create_topic

RATE = 200_000  # bytes per second


def silt_admin(agent, *args):
    p = subprocess.run([os.environ["TEST_SILT_BIN"], "admin", "--bootstrap", agent.bootstrap, *args],
                       capture_output=True, timeout=60, env={k: v for k, v in os.environ.items()
                                                             if not k.startswith("SILT_")})
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    return p.stdout.decode()


def _metric(agent, name):
    port = next(l.rsplit(":", 1)[1].strip().rstrip(")") for l in agent.log_text().splitlines()
                if "admin http on" in l)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return float(next(l.split()[-1] for l in body.splitlines() if l.startswith(name + " ")))


def _produce(agent, topic, client_id, n, size):
    throttles = []
    p = Producer({"bootstrap.servers": agent.bootstrap, "client.id": client_id, "linger.ms": 0,
                  "batch.size": 20_000, "throttle_cb": lambda ev: throttles.append(ev.throttle_time)})
    started = time.monotonic()
    for i in range(n):
        p.produce(topic, value=os.urandom(size))
        p.poll(0)
    assert p.flush(120) == 0
    p.poll(0.5)
    return time.monotonic() - started, throttles


def test_producers_and_consumers_over_their_quota_are_throttled_and_others_are_not(agent, topic_name):
    create_topic(agent.bootstrap, topic_name)
    out = silt_admin(agent, "quotas", "set", "--client-id", "slow-app", "--producer-byte-rate", str(RATE),
                     "--consumer-byte-rate", str(RATE))
    assert "quotas of client-id=slow-app changed" in out
    listed = silt_admin(agent, "quotas", "list")
    assert "client-id=slow-app\tconsumer_byte_rate=200000,producer_byte_rate=200000" in listed, listed

    n, size = 80, 10_000  # 800 kB: four seconds' worth of the quota
    fast, fast_throttles = _produce(agent, topic_name, "fast-app", n, size)
    slow, slow_throttles = _produce(agent, topic_name, "slow-app", n, size)
    assert fast_throttles == [] or max(fast_throttles) == 0
    assert slow_throttles and max(slow_throttles) > 0, "the client never saw throttle_time_ms"
    # The agent held the slow producer near its rate: 800 kB at 200 kB/s after a first second.
    assert slow >= 2.0 and slow > 3 * fast, (slow, fast)

    def consume(client_id):
        c = Consumer({"bootstrap.servers": agent.bootstrap, "group.id": "unused", "client.id": client_id,
                      "enable.auto.commit": False, "fetch.max.bytes": 100_000, "message.max.bytes": 100_000,
                      "max.partition.fetch.bytes": 100_000})
        c.assign([TopicPartition(topic_name, 0, 0)])
        got, started = 0, time.monotonic()
        while got < 2 * n and time.monotonic() - started < 120:
            m = c.poll(1)
            if m is not None and not m.error():
                got += 1
        c.close()
        return got, time.monotonic() - started

    got_fast, t_fast = consume("fast-reader")
    silt_admin(agent, "quotas", "set", "--client-id", "slow-reader", "--consumer-byte-rate", str(RATE))
    got_slow, t_slow = consume("slow-reader")
    assert got_fast == got_slow == 2 * n
    # 1.6 MB at 200 kB/s: several seconds; unthrottled it is far quicker.
    assert t_slow >= 4.0 and t_slow > 3 * t_fast, (t_slow, t_fast)
    assert _metric(agent, "silt_quota_throttled_total") > 0
    print(f"800 kB produced in {fast:.2f} s unthrottled, {slow:.2f} s at 200 kB/s; "
          f"1.6 MB consumed in {t_fast:.2f} s unthrottled, {t_slow:.2f} s at 200 kB/s")

    silt_admin(agent, "quotas", "remove", "--client-id", "slow-app")
    assert "slow-app" not in silt_admin(agent, "quotas", "list")


def _metadata_v4(sock, corr, client_id):
    """One Metadata v4 request for every topic; the response's throttle_time_ms and how long the
    answer took."""
    import struct

    cid = client_id.encode()
    frame = struct.pack(">hhih", 3, 4, corr, len(cid)) + cid + struct.pack(">i?", -1, False)
    started = time.monotonic()
    sock.sendall(struct.pack(">i", len(frame)) + frame)

    def read(n):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            assert chunk, "connection closed"
            buf += chunk
        return buf

    size = struct.unpack(">i", read(4))[0]
    body = read(size)
    got_corr, throttle = struct.unpack(">ii", body[:8])
    assert got_corr == corr
    return throttle, time.monotonic() - started


def test_request_time_over_request_percentage_is_throttled(agent, topic_name):
    """KIP-124: a client id over its request_percentage gets throttle_time_ms on its responses and
    its connection is not read from for that long; another client id is not throttled."""
    import socket

    # Metadata for every partition of a large topic is real work for the agent.
    create_topic(agent.bootstrap, topic_name, partitions=2000)
    silt_admin(agent, "quotas", "set", "--client-id", "busy", "--request-percentage", "1")
    assert "request_percentage=1" in silt_admin(agent, "quotas", "list")
    host, port = agent.bootstrap.split(":")

    def hammer(client_id, n):
        s = socket.create_connection((host, int(port)), timeout=60)
        seen = []
        try:
            for corr in range(n):
                throttle, took = _metadata_v4(s, corr, client_id)
                seen.append(throttle)
                if throttle > 0:
                    # The connection is muted: the next answer waits out the throttle.
                    _, after = _metadata_v4(s, n + 1, client_id)
                    return seen, throttle, after
        finally:
            s.close()
        return seen, 0, 0.0

    seen, throttle, after = hammer("idle", 60)
    assert throttle == 0 and set(seen) == {0}, "a client id without a quota is never throttled"
    seen, throttle, after = hammer("busy", 2000)
    assert throttle > 0, f"1% of a thread (10 ms/s) was never exceeded in {len(seen)} requests"
    assert after >= 0.8 * throttle / 1000, (throttle, after)
    assert _metric(agent, "silt_quota_throttled_total") > 0
    print(f"request_percentage=1: throttled after {len(seen)} Metadata requests for "
          f"{throttle} ms; the next answer took {after:.2f} s")
    silt_admin(agent, "quotas", "remove", "--client-id", "busy", "--request-percentage")
    assert "busy" not in silt_admin(agent, "quotas", "list")
