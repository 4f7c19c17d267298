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
