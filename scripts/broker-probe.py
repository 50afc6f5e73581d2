"""The development broker's latency at the end of a long topic, without Tailor.

    ~/.cache/tailor/venv/bin/python scripts/broker-probe.py BROKERS [LENGTH ...]

(the virtualenv with confluent-kafka that tests/foreign/run.sh makes; BROKER_PROBE_RATES,
records a second, 200,2000 by default; BROKER_PROBE_PARTITIONS 4 by default, as the e2e bench's
topics). Creates a topic and fills it, in turn, to each LENGTH records of 120 bytes (0, 1 M and
3 M by default); at each length and each rate a reader of every partition from its end
(fetch.wait.max.ms 5, as the e2e bench's) times the records sent at that rate for 2.5 s, each
from its send to its read back, for up to 40 s. The topic is deleted at the end. A figure for
the broker alone: the e2e bench's latency phases read Tailor's output topic from its end, and
after a 10 M-shopper pass that topic holds about 11 M records.
"""

import os
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

PARTITIONS = int(os.environ.get("BROKER_PROBE_PARTITIONS", "4"))
PAYLOAD = b"x" * 120


def ends(client, topic):
    """Each partition's end offset, as the broker answers it now."""
    return [client.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in range(PARTITIONS)]


def probe(brokers, topic, rate):
    n = int(rate * 2.5)
    nonce = uuid.uuid4().hex[:8]
    reader = Consumer({
        "bootstrap.servers": brokers,
        "group.id": "probe-" + nonce,
        "enable.auto.commit": False,
        "fetch.wait.max.ms": 5,
    })
    producer = Producer({"bootstrap.servers": brokers, "linger.ms": 0})
    try:
        # From the end offsets the broker gives now: nothing sent after is missed.
        reader.assign([TopicPartition(topic, p, end) for p, end in enumerate(ends(reader, topic))])
        sent, times = {}, []
        start, i = time.time(), 0
        while len(times) < n and time.time() - start < 40:
            due = min(n, int((time.time() - start) * rate))
            while i < due:
                key = f"{nonce}-{i}"
                try:
                    producer.produce(topic, key=key, value=PAYLOAD)
                except BufferError:
                    break  # the producer's queue is full: sent later
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
    finally:
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
    lengths = sorted(int(x) for x in sys.argv[2:]) or [0, 1_000_000, 3_000_000]
    rates = [float(r) for r in os.environ.get("BROKER_PROBE_RATES", "200,2000").split(",")]
    topic = "broker-probe-" + uuid.uuid4().hex[:8]
    admin = AdminClient({"bootstrap.servers": brokers})  # kept until the topic is deleted
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result()
    failed = []
    meta = Consumer({"bootstrap.servers": brokers, "group.id": "probe-meta"})
    fill = Producer({"bootstrap.servers": brokers, "linger.ms": 20, "batch.num.messages": 10000})
    try:
        queued = 0
        for length in lengths:
            started = time.time()
            while queued < length:
                try:
                    fill.produce(topic, key=str(queued), value=PAYLOAD,
                                 on_delivery=lambda err, _m: err and failed.append(err))
                    queued += 1
                except BufferError:
                    fill.poll(0.01)
                if queued % 10000 == 0:
                    fill.poll(0)
            if fill.flush(300) or failed:
                sys.exit(f"filling {topic} failed: {len(failed)} records refused "
                         f"({failed[:1]}), or not delivered in 5 minutes")
            print(f"{sum(ends(meta, topic))} records in {topic}, {PARTITIONS} partitions "
                  f"(filled in {time.time() - started:.0f} s)", flush=True)
            for rate in rates:
                print(f"  from its end at {rate:.0f}/s: {probe(brokers, topic, rate)}", flush=True)
    finally:
        fill.flush(10)
        meta.close()
        admin.delete_topics([topic])[topic].result()


if __name__ == "__main__":
    main()
