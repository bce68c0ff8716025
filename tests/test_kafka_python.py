"""kafka-python against Tern: admin, producers, assign/seek consumers."""

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError


def admin(broker):
    return KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=10000)


def consumer(broker):
    return KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False, consumer_timeout_ms=3000)


def read_all(broker, topic, partition, start=None):
    c = consumer(broker)
    tp = TopicPartition(topic, partition)
    c.assign([tp])
    if start is None:
        c.seek_to_beginning(tp)
    else:
        c.seek(tp, start)
    msgs = list(c)
    c.close()
    return msgs


def test_admin_create_list_describe_delete(broker, topic_name):
    a = admin(broker)
    a.create_topics([NewTopic(topic_name, num_partitions=4, replication_factor=1, topic_configs={"segment.bytes": "1048576"})])
    assert topic_name in a.list_topics()
    described = a.describe_topics([topic_name])
    assert len(described[0]["partitions"]) == 4
    configs = a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic_name)])
    assert set(configs["topic"][topic_name]) == {"segment.bytes"}, "only modified configs by default"
    assert configs["topic"][topic_name]["segment.bytes"]["value"] == "1048576"
    configs = a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic_name)], config_filter="all")
    assert configs["topic"][topic_name]["cleanup.policy"]["value"] == "delete"
    with pytest.raises(TopicAlreadyExistsError):
        a.create_topics([NewTopic(topic_name, num_partitions=1, replication_factor=1)], raise_errors=True)
    a.delete_topics([topic_name])
    assert topic_name not in a.list_topics()
    with pytest.raises(UnknownTopicOrPartitionError):
        a.delete_topics([topic_name], raise_errors=True)
    a.close()


@pytest.mark.parametrize("acks", [0, 1, "all"])
def test_every_acks_mode(broker, topic_name, acks):
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, acks=acks, linger_ms=5)
    futures = [p.send(topic_name, key=b"k%d" % i, value=b"v%d" % i, partition=0) for i in range(300)]
    p.flush()
    metas = [f.get(timeout=30) for f in futures]
    if acks != 0:
        assert [m.offset for m in metas] == list(range(300))
    p.close()
    msgs = read_all(broker, topic_name, 0)
    assert [(m.key, m.value) for m in msgs] == [(b"k%d" % i, b"v%d" % i) for i in range(300)]


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_every_compression_codec(broker, topic_name, codec):
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, compression_type=codec, linger_ms=20, batch_size=64 * 1024)
    values = [(b"payload-%d-" % i) * 30 for i in range(1000)]
    for v in values:
        p.send(topic_name, value=v, headers=[("codec", codec.encode())], partition=0)
    p.flush()
    p.close()
    msgs = read_all(broker, topic_name, 0)
    assert [m.value for m in msgs] == values
    assert all(m.headers == [("codec", codec.encode())] for m in msgs)


def test_offsets_seek_and_times(broker, topic_name):
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=50)
    base = 1_600_000_000_000
    for i in range(50):
        p.send(topic_name, value=b"%d" % i, partition=0, timestamp_ms=base + i * 10)
    p.flush()
    p.close()
    c = consumer(broker)
    tp = TopicPartition(topic_name, 0)
    assert c.beginning_offsets([tp])[tp] == 0
    assert c.end_offsets([tp])[tp] == 50
    found = c.offsets_for_times({tp: base + 255})[tp]
    assert (found.offset, found.timestamp) == (26, base + 260)
    assert c.offsets_for_times({tp: base + 10_000})[tp] is None
    c.close()
    msgs = read_all(broker, topic_name, 0, start=45)
    assert [m.value for m in msgs] == [b"%d" % i for i in range(45, 50)]
    assert [m.timestamp for m in msgs] == [base + i * 10 for i in range(45, 50)]


def test_incremental_fetch_sessions(broker, topic_name):
    """kafka-python fetches in a KIP-227 session: after the first full fetch it names only
    the partitions whose position changed, and is told only of partitions with news. Every
    record arrives once, in order, while writes go on to some of the partitions."""
    a = admin(broker)
    a.create_topics([NewTopic(topic_name, 6, 1)])
    a.close()
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    for i in range(600):
        p.send(topic_name, value=b"%d" % i, partition=i % 6)
    p.flush()
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False,
                      consumer_timeout_ms=3000, max_partition_fetch_bytes=2048)
    tps = [TopicPartition(topic_name, i) for i in range(6)]
    c.assign(tps)
    c.seek_to_beginning()
    got = {i: [] for i in range(6)}
    for n, m in enumerate(c):
        got[m.partition].append(int(m.value))
        if n == 300:
            # Writes to two of the partitions while the session is in use.
            for i in range(600, 700):
                p.send(topic_name, value=b"%d" % i, partition=i % 2)
            p.flush()
    sessions = [h.next_metadata.session_id for h in c._fetcher._session_handlers.values()]
    c.close()
    p.close()
    assert sessions and all(s != 0 for s in sessions), sessions
    for i in range(6):
        expect = [v for v in range(600) if v % 6 == i]
        if i < 2:
            expect += [v for v in range(600, 700) if v % 2 == i]
        assert got[i] == expect, (i, got[i][:10])
