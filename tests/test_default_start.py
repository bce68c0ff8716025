"""The README's first command: `tern start` with its defaults (data in ./tern-data), run from
some directory, takes produces and serves them, also after a restart."""

import os
import signal
import subprocess
import uuid

from confluent_kafka import Consumer, Producer

from conftest import TERN_BIN, free_port, wait_for


def start(cwd, port):
    log = open(os.path.join(cwd, "tern.log"), "ab")
    proc = subprocess.Popen([TERN_BIN, "start", "--listen", f"127.0.0.1:{port}"], cwd=cwd, stdout=log,
                            stderr=subprocess.STDOUT)

    def ready():
        assert proc.poll() is None, open(log.name, errors="replace").read()
        return b"tern ready" in open(log.name, "rb").read()

    wait_for(ready, what="tern ready")
    return proc


def read_back(bootstrap, topic, n):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{uuid.uuid4().hex[:6]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    got = []

    def polled():
        m = c.poll(0.5)
        if m is not None and not m.error():
            got.append(m.value())
        return len(got) >= n

    try:
        wait_for(polled, what=f"{n} records")
    finally:
        c.close()
    return got


def test_default_data_dir_is_relative_to_where_tern_starts(tmp_path):
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    proc = start(tmp_path, port)
    try:
        p = Producer({"bootstrap.servers": bootstrap})
        for i in range(10):
            p.produce("default-start", value=b"v%d" % i)
        assert p.flush(30) == 0
        assert read_back(bootstrap, "default-start", 10) == [b"v%d" % i for i in range(10)]
        assert os.path.isdir(tmp_path / "tern-data" / "default-start-0")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log = (tmp_path / "tern.log").read_text(errors="replace")
        assert "ERROR" not in log, log
        proc = start(tmp_path, port)
        assert read_back(bootstrap, "default-start", 10) == [b"v%d" % i for i in range(10)]
    finally:
        proc.kill()
        proc.wait(timeout=30)
