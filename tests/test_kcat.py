"""kcat (Debian's, on librdkafka 2.0.2) against Tern."""

import subprocess
import time


def kcat(broker, *args, input=None):
    return subprocess.run(
        ["kcat", "-b", broker.bootstrap, *args],
        input=input,
        capture_output=True,
        timeout=60,
        check=True,
    )


def test_metadata_lists_broker_and_topics(broker, topic_name):
    kcat(broker, "-P", "-t", topic_name, input=b"hello\n")
    out = kcat(broker, "-L").stdout.decode()
    assert f"broker 0 at {broker.bootstrap}" in out
    assert f'topic "{topic_name}" with 1 partitions' in out


def test_roundtrip_keys_headers_timestamps(broker, topic_name):
    lines = b"".join(f"key{i}:value{i}\n".encode() for i in range(100))
    before = int(time.time() * 1000) - 1000
    kcat(broker, "-P", "-t", topic_name, "-K:", "-H", "app=tern", "-H", "n=1", input=lines)
    out = kcat(broker, "-C", "-t", topic_name, "-e", "-f", "%k|%s|%h|%T|%o\n").stdout.decode()
    rows = [r.split("|") for r in out.splitlines()]
    assert len(rows) == 100
    for i, (key, value, headers, ts, offset) in enumerate(rows):
        assert (key, value, offset) == (f"key{i}", f"value{i}", str(i))
        assert headers == "app=tern,n=1"
        assert before <= int(ts) <= time.time() * 1000 + 1000


def test_compressed_produce_with_kcat(broker, topic_name):
    for codec in ["gzip", "snappy", "lz4", "zstd"]:
        kcat(broker, "-P", "-t", topic_name, "-z", codec, input=f"{codec}-record\n".encode())
    out = kcat(broker, "-C", "-t", topic_name, "-e", "-f", "%s\n").stdout.decode()
    assert out.split() == ["gzip-record", "snappy-record", "lz4-record", "zstd-record"]


def test_consume_from_offset_and_tail(broker, topic_name):
    kcat(broker, "-P", "-t", topic_name, input=b"".join(b"m%d\n" % i for i in range(10)))
    out = kcat(broker, "-C", "-t", topic_name, "-o", "7", "-e", "-f", "%s\n").stdout.decode()
    assert out.split() == ["m7", "m8", "m9"]
    out = kcat(broker, "-C", "-t", topic_name, "-o", "-2", "-e", "-f", "%s\n").stdout.decode()
    assert out.split() == ["m8", "m9"]
