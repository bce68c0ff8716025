"""`tern group ...` against a broker with real consumer groups."""

import json
import os
import subprocess
import time
import uuid

from confluent_kafka import Consumer, Producer

from conftest import TERN_BIN
from test_groups import GROUP_ARGS


def tern(broker, *args, check=True):
    return subprocess.run([TERN_BIN, "group", "-b", broker.bootstrap, *args], capture_output=True, text=True, check=check, timeout=60)


def consume_and_commit(broker, group, topic, n, **extra):
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False, **extra})
    c.subscribe([topic])
    got = 0
    while got < n:
        m = c.poll(1.0)
        if m is not None and not m.error():
            got += 1
            c.commit(message=m, asynchronous=False)
    return c


def test_group_cli(fresh_broker, topic_name):
    broker = fresh_broker(*GROUP_ARGS)
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(100):
        p.produce(topic_name, value=b"%d" % i, timestamp=1_700_000_000_000 + i * 1000)
    p.flush(30)
    group = f"cli-{uuid.uuid4().hex[:6]}"
    c = consume_and_commit(broker, group, topic_name, 30)

    listed = json.loads(tern(broker, "list", "--json").stdout)
    assert {"group": group, "state": "Stable", "protocol_type": "consumer"} in listed
    assert group in tern(broker, "list").stdout

    d = json.loads(tern(broker, "describe", group, "--json").stdout)
    assert d["state"] == "Stable" and d["protocol_type"] == "consumer" and len(d["members"]) == 1
    assert d["members"][0]["assignment"] == {topic_name: [0]}
    row = d["offsets"][0]
    assert (row["topic"], row["partition"], row["committed"], row["log_end"], row["lag"]) == (topic_name, 0, 30, 100, 70)
    table = tern(broker, "describe", group).stdout
    assert "LAG" in table and "70" in table

    refused = tern(broker, "reset-offsets", group, "--topic", topic_name, "--to-earliest", check=False)
    assert refused.returncode != 0 and "active members" in refused.stderr
    c.close()
    time.sleep(0.5)

    def reset(*how):
        rows = json.loads(tern(broker, "reset-offsets", group, "--topic", topic_name, *how, "--json").stdout)
        return rows[0]["committed"]

    assert reset("--to-earliest") == 0
    assert reset("--to-latest") == 100
    assert reset("--to-offset", "42") == 42
    assert reset("--to-datetime", "2023-11-14T22:13:40Z") == 20  # 1_700_000_020_000 ms
    d = json.loads(tern(broker, "describe", group, "--json").stdout)
    assert d["offsets"][0]["committed"] == 20 and d["state"] == "Empty"
    # A consumer of the group now starts at the reset offset.
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "enable.auto.commit": False})
    c.subscribe([topic_name])
    m = None
    while m is None or m.error():
        m = c.poll(1.0)
    assert m.offset() == 20
    c.close()
    time.sleep(0.5)

    assert "deleted" in tern(broker, "delete", group).stdout
    assert group not in tern(broker, "list").stdout
    missing = tern(broker, "describe", group, check=False)
    assert missing.returncode != 0 and "does not exist" in missing.stderr


def test_group_cli_output_to_a_closed_pipe_or_a_full_disk(fresh_broker):
    broker = fresh_broker()
    cmd = [TERN_BIN, "group", "-b", broker.bootstrap, "list"]
    # A reader that went away (`tern group list | head -0`): the output ends quietly.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(cmd, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert done.returncode == 0 and "panicked" not in done.stderr, done.stderr
    # Output that cannot be written: a clear error and a failed exit, not a panic.
    with open("/dev/full", "w") as full:
        done = subprocess.run(cmd, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode != 0 and "panicked" not in done.stderr, done.stderr
    assert "write to stdout" in done.stderr
