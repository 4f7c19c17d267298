"""A transactional producer (confluent-kafka) that the zombie-fencing test freezes with SIGSTOP.

It begins a transaction, writes b"before-N" records and prints "ready"; then waits for a line
on stdin (the test sends it after SIGCONT), writes b"after-N" records and tries to commit,
printing "committed" or "refused: <error>".

usage: zombie_producer.py BOOTSTRAP TOPIC TRANSACTIONAL_ID TIMEOUT_MS
"""

import sys

from confluent_kafka import Producer

bootstrap, topic, tid, timeout_ms = sys.argv[1:5]
p = Producer({"bootstrap.servers": bootstrap, "transactional.id": tid,
              "transaction.timeout.ms": int(timeout_ms), "linger.ms": 5})
p.init_transactions(30)
p.begin_transaction()
for i in range(5):
    p.produce(topic, value=f"before-{i}".encode(), partition=0)
p.flush(30)
print("ready", flush=True)
sys.stdin.readline()
try:
    for i in range(5):
        p.produce(topic, value=f"after-{i}".encode(), partition=0)
    p.flush(15)
    p.commit_transaction(15)
    print("committed", flush=True)
except Exception as e:  # noqa: BLE001 - any refusal is what the test expects
    print(f"refused: {e}", flush=True)
