"""A consume-transform-produce application (confluent-kafka), run as its own process by the
transaction checker (`crates/silt/tests/it/txn_checker.rs`), which SIGKILLs and restarts it.

It reads SRC in GROUP (read_committed) and, per transaction, writes each input's value + b"!"
to the same partition of DST and commits the input offsets with the output
(`send_offsets_to_transaction`). Any failure ends the session: the consumer and producer are
dropped and a new session starts with the same transactional id, which fences the old producer
and aborts what it left open; the new consumer resumes from the offsets the last committed
transaction stored. Runs until SIGTERM.

usage: ctp_app.py BOOTSTRAP SRC DST GROUP TRANSACTIONAL_ID
"""

import signal
import sys
import time

from confluent_kafka import Consumer, Producer

bootstrap, src, dst, group, tid = sys.argv[1:6]
stopping = False


def _stop(*_):
    global stopping
    stopping = True


signal.signal(signal.SIGTERM, _stop)


def session():
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "isolation.level": "read_committed", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "session.timeout.ms": 10000})
    p = None
    try:
        p = Producer({"bootstrap.servers": bootstrap, "transactional.id": tid,
                      "transaction.timeout.ms": 20000, "message.timeout.ms": 20000,
                      "linger.ms": 5})
        p.init_transactions(60)
        c.subscribe([src])
        while not stopping:
            msgs = [m for m in c.consume(50, 0.5) if not m.error()]
            if not msgs:
                continue
            p.begin_transaction()
            for m in msgs:
                p.produce(dst, key=m.key(), value=m.value() + b"!", partition=m.partition())
            p.send_offsets_to_transaction(c.position(c.assignment()),
                                          c.consumer_group_metadata(), 30)
            p.commit_transaction(30)
            print(f"committed {len(msgs)}", flush=True)
    finally:
        c.close()


while not stopping:
    try:
        session()
    except Exception as e:  # noqa: BLE001 - any failure ends the session
        print(f"session ended: {e}; starting a new one", flush=True)
        time.sleep(0.5)
