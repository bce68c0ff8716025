"""Data and topics survive restarts: clean ones and crashes (SIGKILL)."""

import threading
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from test_confluent import read_partition


def test_clean_restart_keeps_everything(fresh_broker, topic_name):
    broker = fresh_broker("--default-partitions", "3")
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    a.create_topics([NewTopic(topic_name, 4, 1, config={"segment.bytes": "65536"})])[topic_name].result(30)
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    for i in range(5000):
        p.produce(topic_name, key=b"k%d" % i, value=b"v%d" % i, partition=i % 4)
    assert p.flush(30) == 0
    broker.restart()
    md = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10)
    assert len(md.topics[topic_name].partitions) == 4
    got = []
    for part in range(4):
        msgs = read_partition(broker, topic_name, part)
        assert [m.offset() for m in msgs] == list(range(len(msgs)))
        got += [m.value() for m in msgs]
    assert sorted(got) == sorted(b"v%d" % i for i in range(5000))
    # Appends continue after the restart where the log ended.
    p = Producer({"bootstrap.servers": broker.bootstrap})
    offsets = []
    p.produce(topic_name, value=b"more", partition=0, on_delivery=lambda e, m: offsets.append(m.offset()))
    p.flush(30)
    assert offsets == [1250]


def test_sigkill_loses_no_acknowledged_record(fresh_broker, topic_name):
    """acks=all producers write while the broker is killed; every acked record survives, once."""
    broker = fresh_broker()
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    a.create_topics([NewTopic(topic_name, 2, 1)])[topic_name].result(30)
    acked = {0: [], 1: []}
    for round_ in range(6):
        p = Producer({
            "bootstrap.servers": broker.bootstrap,
            "acks": "all",
            "linger.ms": 2,
            "message.timeout.ms": 5000,
            "retries": 0,
        })
        lock = threading.Lock()

        def on_delivery(err, msg):
            if err is None:
                with lock:
                    acked[msg.partition()].append((msg.offset(), msg.value()))

        # Kill while records are in flight, after a different number of acks each round.
        kill_after = 100 * (round_ + 1)
        before = sum(len(v) for v in acked.values())
        killed = False
        for i in range(3000):
            p.produce(topic_name, value=b"r%d-%d" % (round_, i), partition=i % 2, on_delivery=on_delivery)
            p.poll(0)
            if not killed and sum(len(v) for v in acked.values()) - before >= kill_after:
                broker.kill()
                killed = True
        deadline = time.time() + 10
        while not killed and time.time() < deadline:
            p.poll(0.01)
            if sum(len(v) for v in acked.values()) - before >= kill_after:
                broker.kill()
                killed = True
        assert killed, "the producer got acknowledgements before the kill"
        p.flush(10)
        broker.start()
    for part in (0, 1):
        msgs = read_partition(broker, topic_name, part)
        stored = [(m.offset(), m.value()) for m in msgs]
        assert [o for o, _ in stored] == list(range(len(stored))), "offsets dense, never repeated"
        stored_set = dict(stored)
        assert len(acked[part]) > 0
        for offset, value in acked[part]:
            assert stored_set.get(offset) == value, f"acknowledged record at {offset} lost"
        values = [v for _, v in stored]
        assert len(values) == len(set(values)), "no record stored twice"
