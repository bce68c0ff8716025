"""The read path: cold data goes from segment files to the socket (sendfile), tail data from the
batch cache; slow readers get every byte, and other clients are not held up by them."""

import socket
import struct
import threading
import time

import crc32c
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from kafka_wire import connect, fetch_v4, parse_fetch_v4, recv_exact
from test_confluent import read_partition


def batches(records):
    """(base offset, last offset) of each batch; every batch whole with a good CRC-32C."""
    out = []
    pos = 0
    while pos < len(records):
        base, length = struct.unpack_from(">qi", records, pos)
        end = pos + 12 + length
        assert end <= len(records), "no partial batch"
        (crc,) = struct.unpack_from(">I", records, pos + 17)
        assert crc32c.crc32c(records[pos + 21 : end]) == crc
        (last_delta,) = struct.unpack_from(">i", records, pos + 23)
        out.append((base, base + last_delta))
        pos = end
    return out


def fill(broker, topic, partitions, per_partition, value_size=1000):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    topics = [NewTopic(topic, partitions, 1, config={"segment.bytes": str(1 << 20)})]
    admin.create_topics(topics)[topic].result(30)
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 20, "batch.size": 65536})
    for part in range(partitions):
        for i in range(per_partition):
            p.produce(topic, value=b"%08d" % i + b"x" * (value_size - 8), partition=part)
    assert p.flush(60) == 0


def test_cold_reads_reach_slow_readers_whole_while_others_are_served(fresh_broker, topic_name):
    broker = fresh_broker("--cache-bytes-per-partition", "0")
    fill(broker, topic_name, 2, 6000)
    broker.restart()  # nothing in memory: every read comes from segment files

    # A reader with a tiny receive buffer that drains slowly, across segment boundaries.
    slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = broker.bootstrap.rsplit(":", 1)
    slow.settimeout(30)
    slow.connect((host, int(port)))
    result = {}

    def read_slowly():
        offset, seen = 0, []
        while offset < 6000:
            slow.sendall(fetch_v4(topic_name, 0, offset, max_bytes=3 << 20))
            (size,) = struct.unpack(">i", recv_exact(slow, 4))
            data = b""
            while len(data) < size:
                data += recv_exact(slow, min(8192, size - len(data)))
                time.sleep(0.002)
            error, hw, records = parse_fetch_v4(data[4:])
            assert error == 0 and hw == 6000
            got = batches(records)
            assert got and got[0][0] <= offset <= got[0][1]
            seen += got
            offset = got[-1][1] + 1
        result["batches"] = seen

    t = threading.Thread(target=read_slowly)
    t.start()
    # Meanwhile another client reads the other partition, also from disk, in full.
    msgs = read_partition(broker, topic_name, 1, expect=6000)
    assert [m.offset() for m in msgs] == list(range(6000))
    assert all(m.value()[:8] == b"%08d" % i for i, m in enumerate(msgs))
    t.join(120)
    assert not t.is_alive()
    seen = result["batches"]
    assert seen[0][0] == 0 and seen[-1][1] == 5999
    assert all(b[0] == a[1] + 1 for a, b in zip(seen, seen[1:])), "dense, in order, once"


def read_bytes(pid):
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    raise AssertionError("no read_bytes in /proc/<pid>/io")


def test_tail_consumers_are_served_from_memory(fresh_broker, topic_name):
    broker = fresh_broker()
    fill(broker, topic_name, 1, 10)
    before = read_bytes(broker.proc.pid)
    fill_more = threading.Thread(target=lambda: produce_more(broker, topic_name))
    fill_more.start()
    msgs = read_partition(broker, topic_name, 0, expect=5010)
    fill_more.join()
    served = sum(len(m.value()) for m in msgs)
    assert len(msgs) == 5010
    assert read_bytes(broker.proc.pid) - before < served // 10, "tail reads do not touch the disk"


def produce_more(broker, topic):
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    for i in range(5000):
        p.produce(topic, value=b"y" * 1000, partition=0)
        if i % 500 == 0:
            p.flush(30)
    assert p.flush(60) == 0


def test_a_client_that_leaves_mid_response_does_not_disturb_the_broker(fresh_broker, topic_name):
    broker = fresh_broker("--cache-bytes-per-partition", "0")
    fill(broker, topic_name, 1, 3000)
    broker.restart()
    for _ in range(5):
        s = connect(broker.bootstrap)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(fetch_v4(topic_name, 0, 0, max_bytes=3 << 20))
        recv_exact(s, 1000)
        s.close()
    msgs = read_partition(broker, topic_name, 0, expect=3000)
    assert len(msgs) == 3000
    assert broker.alive()


def test_a_fetch_fills_its_budget_in_partition_order(fresh_broker, topic_name):
    """Kafka fills a Fetch response in partition order up to fetch.max.bytes, each partition up
    to its own limit: one busy partition among a hundred idle ones gets its whole limit (it got
    a hundredth of the budget when the budget was split evenly), and partitions after the
    budget is spent get nothing."""
    from kafka_wire import fetch_v4_partitions, parse_fetch_v4_sizes, roundtrip

    broker = fresh_broker("--default-partitions", "1")
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic_name, 100, 1)])[topic_name].result(30)
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5, "batch.size": 16384})
    for busy in (7, 8):
        for i in range(400):  # ~400 KB each, in batches of about 16 KB
            p.produce(topic_name, value=b"%05d" % i + b"x" * 1000, partition=busy)
    assert p.flush(30) == 0
    order = [7] + [q for q in range(100) if q not in (7, 8)] + [8]
    with connect(broker.bootstrap) as sock:
        sizes = parse_fetch_v4_sizes(roundtrip(sock, fetch_v4_partitions(topic_name, order, 1 << 20, 256 << 10)))
    assert 200_000 < sizes[7] <= 256 << 10, sizes[7]  # its own limit, not 1/100 of the budget
    assert sizes[8] > 200_000, "the budget reaches the last partition"
    with connect(broker.bootstrap) as sock:
        sizes = parse_fetch_v4_sizes(roundtrip(sock, fetch_v4_partitions(topic_name, order, 300 << 10, 256 << 10)))
    assert 200_000 < sizes[7] <= 256 << 10
    assert sizes[8] < 100 << 10, "only what still fits after partition 7"
