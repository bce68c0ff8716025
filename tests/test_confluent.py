"""confluent-kafka (librdkafka) against Tern: admin, producers, assign/seek consumers."""

import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, OffsetSpec


def admin(broker):
    return AdminClient({"bootstrap.servers": broker.bootstrap})


def create(broker, name, partitions=1, config=None):
    a = admin(broker)  # must outlive the future
    fs = a.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})])
    fs[name].result(timeout=30)


def consumer(broker, **extra):
    conf = {
        "bootstrap.servers": broker.bootstrap,
        "group.id": f"unused-{uuid.uuid4().hex[:6]}",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
    }
    conf.update(extra)
    return Consumer(conf)


def read_partition(broker, topic, partition, start=0, expect=None, timeout=30):
    """Reads `topic`/`partition` from `start` until end of partition (or `expect` records)."""
    c = consumer(broker)
    c.assign([TopicPartition(topic, partition, start)])
    out = []
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            m = c.poll(1.0)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    if expect is None or len(out) >= expect:
                        break
                    continue
                raise KafkaException(m.error())
            out.append(m)
            if expect is not None and len(out) >= expect:
                break
    finally:
        c.close()
    return out


def produce(broker, topic, records, **conf):
    """records: iterable of (key, value, headers, partition or None). Returns delivery reports."""
    p = Producer({"bootstrap.servers": broker.bootstrap, **conf})
    reports = []

    def on_delivery(err, msg):
        reports.append((err, msg.topic(), msg.partition(), msg.offset(), msg.key()))

    for key, value, headers, partition in records:
        kwargs = {"key": key, "value": value, "headers": headers, "on_delivery": on_delivery}
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                p.produce(topic, **kwargs)
                break
            except BufferError:
                p.poll(0.1)
    assert p.flush(60) == 0
    return reports


def test_admin_create_list_describe_delete(broker, topic_name):
    a = admin(broker)
    create(broker, topic_name, partitions=3, config={"retention.ms": "3600000", "max.message.bytes": "2000000"})
    md = a.list_topics(timeout=10)
    assert topic_name in md.topics
    assert len(md.topics[topic_name].partitions) == 3
    desc = a.describe_topics(__import__("confluent_kafka").TopicCollection([topic_name]))[topic_name].result(timeout=10)
    assert len(desc.partitions) == 3 and desc.partitions[0].leader.id == 0
    res = ConfigResource(ConfigResource.Type.TOPIC, topic_name)
    configs = a.describe_configs([res])[res].result(timeout=10)
    assert configs["retention.ms"].value == "3600000"
    assert configs["max.message.bytes"].value == "2000000"
    assert configs["cleanup.policy"].value == "delete"
    assert configs["cleanup.policy"].is_default
    # Errors that fit: duplicate name, bad config, bad replication factor.
    with pytest.raises(KafkaException) as e:
        create(broker, topic_name)
    assert e.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS
    with pytest.raises(KafkaException) as e:
        create(broker, topic_name + "-x", config={"cleanup.policy": "shred"})
    assert e.value.args[0].code() == KafkaError.INVALID_CONFIG
    with pytest.raises(KafkaException) as e:
        a.create_topics([NewTopic(topic_name + "-y", 1, 3)])[topic_name + "-y"].result(timeout=10)
    assert e.value.args[0].code() == KafkaError.INVALID_REPLICATION_FACTOR
    a.delete_topics([topic_name])[topic_name].result(timeout=10)
    assert topic_name not in a.list_topics(timeout=10).topics
    with pytest.raises(KafkaException) as e:
        a.delete_topics([topic_name])[topic_name].result(timeout=10)
    assert e.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    # The name can be used again, and the new topic starts empty.
    create(broker, topic_name, partitions=1)
    assert read_partition(broker, topic_name, 0) == []


def test_10k_keyed_records_with_headers_roundtrip(broker, topic_name):
    create(broker, topic_name, partitions=6)
    records = [
        (f"key-{i % 97}".encode(), f"value-{i}".encode(), [("seq", str(i).encode()), ("src", b"test")], None)
        for i in range(10_000)
    ]
    reports = produce(broker, topic_name, records, **{"linger.ms": 5, "acks": "all"})
    assert all(err is None for err, *_ in reports)
    partition_of_key = {}
    for _, _, partition, _, key in reports:
        assert partition_of_key.setdefault(key, partition) == partition, "a key always lands in one partition"
    got = 0
    for p in range(6):
        msgs = read_partition(broker, topic_name, p)
        offsets = [m.offset() for m in msgs]
        assert offsets == list(range(len(msgs))), "dense offsets in order"
        seqs = [int(dict(m.headers())["seq"]) for m in msgs]
        assert seqs == sorted(seqs), "per-partition order is produce order"
        for m in msgs:
            i = int(dict(m.headers())["seq"])
            assert m.key() == f"key-{i % 97}".encode() and m.value() == f"value-{i}".encode()
            assert partition_of_key[m.key()] == p
        got += len(msgs)
    assert got == 10_000


@pytest.mark.parametrize("acks", ["0", "1", "all"])
def test_every_acks_mode(broker, topic_name, acks):
    records = [(None, f"r{i}".encode(), None, 0) for i in range(500)]
    reports = produce(broker, topic_name, records, acks=acks, **{"linger.ms": 2})
    assert all(err is None for err, *_ in reports)
    if acks != "0":
        assert [r[3] for r in reports] == list(range(500))
    msgs = read_partition(broker, topic_name, 0, expect=500)
    assert [m.value() for m in msgs] == [f"r{i}".encode() for i in range(500)]


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_every_compression_codec(broker, topic_name, codec):
    records = [(b"k%d" % i, (b"compressible-%d-" % i) * 20, None, 0) for i in range(2000)]
    reports = produce(broker, topic_name, records, **{"compression.type": codec, "linger.ms": 20, "batch.num.messages": 500})
    assert all(err is None for err, *_ in reports)
    msgs = read_partition(broker, topic_name, 0, expect=2000)
    assert [m.value() for m in msgs] == [v for _, v, _, _ in records]


def test_seek_offsets_and_offsets_for_times(broker, topic_name):
    create(broker, topic_name, partitions=1)
    base = 1_700_000_000_000
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 50})
    for i in range(100):
        p.produce(topic_name, value=b"v%d" % i, partition=0, timestamp=base + i * 1000)
    p.flush(30)
    # Earliest, latest, a given offset.
    assert [m.value() for m in read_partition(broker, topic_name, 0, start=-2)][:2] == [b"v0", b"v1"]
    assert [m.value() for m in read_partition(broker, topic_name, 0, start=95)] == [b"v%d" % i for i in range(95, 100)]
    c = consumer(broker)
    lo, hi = c.get_watermark_offsets(TopicPartition(topic_name, 0), timeout=10)
    assert (lo, hi) == (0, 100)
    # offsets_for_times: first record at or after the timestamp, inside a batch too.
    found = c.offsets_for_times([TopicPartition(topic_name, 0, base + 42_500)], timeout=10)
    assert found[0].offset == 43
    found = c.offsets_for_times([TopicPartition(topic_name, 0, base + 10_000)], timeout=10)
    assert found[0].offset == 10
    found = c.offsets_for_times([TopicPartition(topic_name, 0, base + 999_999)], timeout=10)
    assert found[0].offset == -1
    c.close()
    # Latest: only what is produced after the assignment is read.
    c = consumer(broker)
    c.assign([TopicPartition(topic_name, 0, -1)])
    c.poll(1.0)
    p.produce(topic_name, value=b"after", partition=0)
    p.flush(30)
    got = None
    deadline = time.time() + 20
    while got is None and time.time() < deadline:
        m = c.poll(1.0)
        if m is not None and not m.error():
            got = m
    c.close()
    assert got is not None and got.value() == b"after" and got.offset() == 100


def test_offsets_for_times_with_one_partition_twice(broker, topic_name):
    """librdkafka sends a partition named twice in offsets_for_times once (its debug log says
    "1 partition(s)") and copies the answer into both entries, as it does against Kafka; the
    broker's own answer to a request naming it twice is tested with a raw request
    (test_bad_input). Other partitions in the same call get their own answers."""
    create(broker, topic_name, partitions=2)
    base = 1_700_000_000_000
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(10):
        for part in (0, 1):
            p.produce(topic_name, value=b"v", partition=part, timestamp=base + i * 1000)
    p.flush(30)
    c = consumer(broker)
    asked = [
        TopicPartition(topic_name, 0, base + 2000),
        TopicPartition(topic_name, 1, base + 4000),
        TopicPartition(topic_name, 0, base + 7000),
    ]
    found = c.offsets_for_times(asked, timeout=10)
    c.close()
    assert [(t.partition, t.offset, t.error) for t in found] == [(0, 7, None), (1, 4, None), (0, 7, None)]


def test_alter_configs_of_a_missing_topic_is_unknown_topic(broker, topic_name):
    """As Kafka: a topic that does not exist is reported as such, before its configs are looked
    at (an unknown config name included), by both AlterConfigs and IncrementalAlterConfigs."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry

    a = admin(broker)
    for configs in ({"retention.ms": "1000"}, {"no.such.config": "1"}):
        res = ConfigResource("topic", topic_name, set_config=configs)
        with pytest.raises(KafkaException) as e:
            a.alter_configs([res])[res].result(30)
        assert e.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART, str(e.value)
    entry = ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)
    res = ConfigResource("topic", topic_name, incremental_configs=[entry])
    with pytest.raises(KafkaException) as e:
        a.incremental_alter_configs([res])[res].result(30)
    assert e.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART, str(e.value)


def test_authorized_operations_with_no_authorizer_are_everything(broker, topic_name):
    """describe_cluster / describe_topics / describe_consumer_groups with
    include_authorized_operations: with no authorizer, Kafka reports every operation the
    resource type supports, so tools that check permissions work (librdkafka test 0081)."""
    from confluent_kafka import ConsumerGroupState, TopicCollection
    from confluent_kafka.admin import AclOperation

    create(broker, topic_name, partitions=2)
    a = admin(broker)
    cluster = a.describe_cluster(include_authorized_operations=True).result(30)
    assert cluster.cluster_id and cluster.controller is not None
    assert [n.port for n in cluster.nodes] == [int(broker.bootstrap.rsplit(":", 1)[1])]
    assert set(cluster.authorized_operations) == {
        AclOperation.CREATE, AclOperation.CLUSTER_ACTION, AclOperation.DESCRIBE_CONFIGS,
        AclOperation.ALTER_CONFIGS, AclOperation.IDEMPOTENT_WRITE, AclOperation.ALTER,
        AclOperation.DESCRIBE,
    }
    assert not a.describe_cluster().result(30).authorized_operations, "only when asked"
    topics = a.describe_topics(TopicCollection([topic_name]), include_authorized_operations=True)
    described = topics[topic_name].result(30)
    assert len(described.partitions) == 2
    assert set(described.authorized_operations) == {
        AclOperation.READ, AclOperation.WRITE, AclOperation.CREATE, AclOperation.DELETE,
        AclOperation.ALTER, AclOperation.DESCRIBE, AclOperation.DESCRIBE_CONFIGS,
        AclOperation.ALTER_CONFIGS,
    }
    group = "ops-" + uuid.uuid4().hex[:8]
    c = consumer(broker, **{"group.id": group})
    c.subscribe([topic_name])
    deadline = time.time() + 30
    while not c.assignment() and time.time() < deadline:
        c.poll(0.2)
    groups = a.describe_consumer_groups([group], include_authorized_operations=True)
    g = groups[group].result(30)
    c.close()
    assert g.state == ConsumerGroupState.STABLE
    assert set(g.authorized_operations) == {AclOperation.READ, AclOperation.DESCRIBE, AclOperation.DELETE}


@pytest.mark.parametrize("codec", ["none", "gzip"])
def test_keyless_records_are_refused_by_a_compacted_topic(broker, topic_name, codec):
    """As Kafka: a batch with records without a key is refused by a compacted topic with
    INVALID_RECORD, naming each keyless record (KIP-467), so librdkafka fails exactly those with
    INVALID_RECORD and the rest of the batch with _INVALID_DIFFERENT_RECORD (librdkafka test
    0011). Nothing of the batch is stored; keyed batches go on being accepted."""
    create(broker, topic_name, config={"cleanup.policy": "compact"})
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 200, "compression.type": codec,
                  "enable.idempotence": False, "retries": 0})
    reports = []
    keys = [b"a", None, b"c", None, None]
    for i, key in enumerate(keys):
        p.produce(topic_name, key=key, value=b"v%d" % i, partition=0,
                  on_delivery=lambda err, m: reports.append((m.value(), err.code() if err else None)))
    p.flush(30)
    got = dict(reports)
    assert {v: got[v] for v in (b"v1", b"v3", b"v4")} == dict.fromkeys((b"v1", b"v3", b"v4"), KafkaError.INVALID_RECORD)
    assert {v: got[v] for v in (b"v0", b"v2")} == dict.fromkeys((b"v0", b"v2"), KafkaError._INVALID_DIFFERENT_RECORD)
    reports.clear()
    p.produce(topic_name, key=b"k", value=b"kept", partition=0,
              on_delivery=lambda err, m: reports.append((m.value(), err, m.offset())))
    p.flush(30)
    assert reports == [(b"kept", None, 0)], "the refused batch took no offsets"
    assert [m.value() for m in read_partition(broker, topic_name, 0, expect=1)] == [b"kept"]


def test_create_partitions(broker, topic_name):
    """CreatePartitions grows a topic (validate-only changes nothing, explicit assignments name
    this broker), refuses to shrink it or keep its count (INVALID_PARTITIONS), and the new
    partitions take records at once."""
    from confluent_kafka.admin import NewPartitions

    create(broker, topic_name, partitions=2)
    a = admin(broker)

    def grow(count, **kw):
        np = NewPartitions(topic_name, count, **kw.pop("args", {}))
        try:
            a.create_partitions([np], **kw)[topic_name].result(30)
            return None
        except KafkaException as e:
            return e.args[0].code()

    def count():
        return len(a.list_topics(topic_name, timeout=10).topics[topic_name].partitions)

    assert grow(4, validate_only=True) is None and count() == 2
    assert grow(4) is None and count() == 4
    assert grow(4) == KafkaError.INVALID_PARTITIONS
    assert grow(3) == KafkaError.INVALID_PARTITIONS
    node = a.describe_cluster().result(30).nodes[0].id
    assert grow(6, args={"replica_assignment": [[node + 1], [node + 1]]}) == KafkaError.INVALID_REPLICA_ASSIGNMENT
    assert grow(6, args={"replica_assignment": [[node]]}) == KafkaError.INVALID_REPLICA_ASSIGNMENT
    assert grow(6, args={"replica_assignment": [[node], [node]]}) is None and count() == 6
    np = NewPartitions("no-such-topic-" + uuid.uuid4().hex[:6], 3)
    with pytest.raises(KafkaException) as e:
        a.create_partitions([np])[np.topic].result(30)
    assert e.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    p = Producer({"bootstrap.servers": broker.bootstrap})
    delivered = []
    p.produce(topic_name, value=b"new", partition=5, on_delivery=lambda err, m: delivered.append((err, m.offset())))
    p.flush(30)
    assert delivered == [(None, 0)]
    assert [m.value() for m in read_partition(broker, topic_name, 5, expect=1)] == [b"new"]


def test_every_kafka_topic_config_is_accepted(broker, topic_name):
    """Topic configs Kafka 4.x defines are accepted with its types and ranges (librdkafka's 0081
    sets max.compaction.lag.ms), listed by DescribeConfigs with their source; a wrong type or
    range is INVALID_CONFIG."""
    from confluent_kafka.admin import ConfigSource

    configs = {"max.compaction.lag.ms": "3600000", "min.cleanable.dirty.ratio": "0.2",
               "preallocate": "true", "segment.jitter.ms": "100", "compression.zstd.level": "5"}
    create(broker, topic_name, config=configs)
    a = admin(broker)
    res = ConfigResource("topic", topic_name)
    described = a.describe_configs([res])[res].result(30)
    for name, value in configs.items():
        assert described[name].value == value, name
        assert described[name].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value, name
    assert described["min.compaction.lag.ms"].value == "0"
    assert described["min.compaction.lag.ms"].source == ConfigSource.DEFAULT_CONFIG.value
    for name, bad in [("min.cleanable.dirty.ratio", "2"), ("preallocate", "maybe"), ("max.compaction.lag.ms", "0")]:
        other = topic_name + "-bad"
        with pytest.raises(KafkaException) as e:
            create(broker, other, config={name: bad})
        assert e.value.args[0].code() == KafkaError.INVALID_CONFIG, (name, str(e.value))


def test_admin_list_offsets(broker, topic_name):
    create(broker, topic_name, partitions=1)
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(10):
        p.produce(topic_name, value=b"x", partition=0, timestamp=1_000_000 + i)
    p.flush(30)
    a = admin(broker)
    tp = TopicPartition(topic_name, 0)
    def lo(spec):
        return a.list_offsets({tp: spec})[tp].result(timeout=10)
    assert lo(OffsetSpec.earliest()).offset == 0
    assert lo(OffsetSpec.latest()).offset == 10
    mx = lo(OffsetSpec.max_timestamp())
    assert (mx.offset, mx.timestamp) == (9, 1_000_009)
    assert lo(OffsetSpec.for_timestamp(1_000_005)).offset == 5


def test_900kb_record(broker, topic_name):
    big = bytes(range(256)) * (900_000 // 256)
    reports = produce(broker, topic_name, [(b"big", big, None, 0)], **{"message.max.bytes": 2_000_000})
    assert reports[0][0] is None
    msgs = read_partition(broker, topic_name, 0, expect=1)
    assert msgs[0].value() == big


def test_idempotent_producer(broker, topic_name):
    records = [(b"k%d" % (i % 7), b"v%d" % i, None, 0) for i in range(2000)]
    reports = produce(broker, topic_name, records, **{"enable.idempotence": True, "linger.ms": 1, "batch.num.messages": 50})
    assert all(err is None for err, *_ in reports)
    msgs = read_partition(broker, topic_name, 0, expect=2000)
    assert [m.value() for m in msgs] == [b"v%d" % i for i in range(2000)], "each record once, in order"
