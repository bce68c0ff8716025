"""The README's first command: `tern start` with its defaults (data in ./tern-data), run from
some directory, takes produces and serves them, also after a restart."""

import os

from confluent_kafka import Producer

from conftest import Broker
from test_confluent import read_partition


def test_default_data_dir_is_relative_to_where_tern_starts(tmp_path):
    broker = Broker(None, cwd=str(tmp_path)).start()
    try:
        values = [b"v%d" % i for i in range(10)]
        p = Producer({"bootstrap.servers": broker.bootstrap})
        for v in values:
            p.produce("default-start", value=v)
        assert p.flush(30) == 0
        assert [m.value() for m in read_partition(broker, "default-start", 0)] == values
        assert os.path.isdir(tmp_path / "tern-data" / "default-start-0")
        broker.restart()
        assert "ERROR" not in broker.read_log(), broker.read_log()
        assert [m.value() for m in read_partition(broker, "default-start", 0)] == values
    finally:
        broker.kill()
