"""A full disk: appends fail with KAFKA_STORAGE_ERROR, stored data stays intact, and writes
resume once space returns (on a small loop-mounted ext4: needs root); a log that cannot be
written does not stop the broker."""

import os
import socket
import subprocess
import types

import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import TERN_BIN, Broker, free_port, wait_for
from test_confluent import read_partition


@pytest.fixture
def small_fs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a loop filesystem needs root")
    image = tmp_path / "fs.img"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", "48M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a loop filesystem here: {mounted.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def produce(broker, topic, values):
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "1", "retries": 0, "linger.ms": 1,
                  "message.timeout.ms": 10000})
    results = []
    for v in values:
        while True:
            try:
                p.produce(topic, value=v, partition=0, on_delivery=lambda e, m: results.append((e, m.offset(), m.value())))
                break
            except BufferError:
                p.poll(0.1)
    p.flush(30)
    return results


def test_full_disk_refuses_appends_then_recovers(small_fs, topic_name):
    broker = Broker(str(small_fs / "data"), ["--offsets-partitions", "1"]).start()
    try:
        a = AdminClient({"bootstrap.servers": broker.bootstrap})
        a.create_topics([NewTopic(topic_name, 1, 1)])[topic_name].result(30)
        free = os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize
        filler = small_fs / "filler"
        subprocess.run(["fallocate", "-l", str(free - 4 * 1024 * 1024), str(filler)], check=True)

        results = produce(broker, topic_name, [b"%05d" % i + b"x" * 20_000 for i in range(600)])
        acked = [(o, v) for e, o, v in results if e is None]
        errors = {e.code() for e, _, _ in results if e is not None}
        assert acked, "some records fit before the disk filled"
        assert KafkaError.KAFKA_STORAGE_ERROR in errors, errors
        assert broker.alive()
        stored = {m.offset(): m.value() for m in read_partition(broker, topic_name, 0)}
        for offset, value in acked:
            assert stored.get(offset) == value, f"acknowledged record {offset} damaged or lost"

        filler.unlink()
        more = produce(broker, topic_name, [b"after-%d" % i for i in range(20)])
        assert all(e is None for e, _, _ in more)
        msgs = read_partition(broker, topic_name, 0)
        offsets = [m.offset() for m in msgs]
        assert offsets == list(range(len(offsets))), "offsets stay dense after failed appends"
        assert [m.value() for m in msgs[-20:]] == [b"after-%d" % i for i in range(20)]
    finally:
        broker.kill()


def test_a_log_that_cannot_be_written_does_not_stop_the_broker(tmp_path, topic_name):
    """stderr on a full disk (here /dev/full): log lines are dropped, the broker keeps serving.
    Before, the logging library's report of the failed write panicked the thread that logged."""
    port = free_port()
    with open("/dev/full", "wb") as full:
        proc = subprocess.Popen([TERN_BIN, "start", "--data-dir", str(tmp_path / "data"),
                                 "--listen", f"127.0.0.1:{port}"], stdout=full, stderr=full)
    try:
        def listening():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_for(listening, what="the broker to listen")
        broker = types.SimpleNamespace(bootstrap=f"127.0.0.1:{port}")
        values = [b"v%d" % i for i in range(20)]
        results = produce(broker, topic_name, values)  # creates the topic: logs a line
        assert all(e is None for e, _, _ in results), results
        assert [m.value() for m in read_partition(broker, topic_name, 0)] == values
        assert proc.poll() is None, "the broker exited"
    finally:
        proc.kill()
        proc.wait(timeout=30)
