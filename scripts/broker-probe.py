"""The development broker's latency at the end of a long topic, without Tailor.

    ~/.cache/tailor/venv/bin/python scripts/broker-probe.py BROKERS [LENGTH ...]
    (BROKER_PROBE_RATES=200,2000 by default: records a second)

(the virtualenv with confluent-kafka that tests/foreign/run.sh makes). Creates a topic of 16
partitions and fills it, in turn, to each LENGTH records of 120 bytes; at each length and each
rate a reader assigned to the end of every partition (fetch.wait.max.ms 5, as the e2e bench's)
times the records sent at that rate for 2.5 s, each from its send to its read back. A figure for the broker
alone: the e2e bench's latency phases read Tailor's output topic from its end, and after a
10 M-shopper pass that topic holds about 11 M records.
"""

import os
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition, OFFSET_END
from confluent_kafka.admin import AdminClient, NewTopic

PARTITIONS = 16
PAYLOAD = b"x" * 120


def probe(brokers, topic, rate):
    n = int(rate * 2.5)
    reader = Consumer({
        "bootstrap.servers": brokers,
        "group.id": "probe-" + uuid.uuid4().hex[:8],
        "enable.auto.commit": False,
        "fetch.wait.max.ms": 5,
    })
    reader.assign([TopicPartition(topic, p, OFFSET_END) for p in range(PARTITIONS)])
    settle = time.time()
    while time.time() - settle < 2:
        reader.poll(0.05)
    producer = Producer({"bootstrap.servers": brokers, "linger.ms": 0})
    sent, times = {}, []
    start, i = time.time(), 0
    while len(times) < n and time.time() - start < 40:
        due = min(n, int((time.time() - start) * rate))
        while i < due:
            key = f"probe-{i}"
            producer.produce(topic, key=key, value=PAYLOAD)
            sent[key] = time.time()
            i += 1
        producer.poll(0)
        m = reader.poll(0.001)
        while m is not None:
            if m.error() is None and m.key() is not None:
                t = sent.pop(m.key().decode(), None)
                if t is not None:
                    times.append((time.time() - t) * 1e3)
            m = reader.poll(0)
    reader.close()
    producer.flush(10)
    if not times:
        return f"nothing of {n} read back in 40 s"
    times.sort()
    pct = lambda q: times[min(len(times) - 1, int(len(times) * q))]
    return f"{len(times)} of {n} read back, p50 {pct(0.5):.0f} ms, p99 {pct(0.99):.0f} ms"


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    brokers = sys.argv[1]
    lengths = [int(x) for x in sys.argv[2:]] or [0, 1_000_000, 3_000_000]
    rates = [float(r) for r in os.environ.get("BROKER_PROBE_RATES", "200,2000").split(",")]
    topic = "broker-probe-" + uuid.uuid4().hex[:8]
    admin = AdminClient({"bootstrap.servers": brokers})  # kept until the topic exists
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result()
    fill = Producer({"bootstrap.servers": brokers, "linger.ms": 20, "batch.num.messages": 10000})
    have = 0
    for length in lengths:
        started = time.time()
        while have < length:
            try:
                fill.produce(topic, key=str(have), value=PAYLOAD)
                have += 1
            except BufferError:
                fill.poll(0.01)
            if have % 10000 == 0:
                fill.poll(0)
        fill.flush()
        print(f"{have} records in {topic} (filled in {time.time() - started:.0f} s)", flush=True)
        for rate in rates:
            print(f"  from its end at {rate:.0f}/s: {probe(brokers, topic, rate)}", flush=True)


if __name__ == "__main__":
    main()
