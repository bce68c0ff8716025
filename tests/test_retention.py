"""Retention, DeleteRecords and config changes applied without a restart."""

import os
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

import kafka_wire as wire
from conftest import wait_for
from test_confluent import read_partition



def earliest(broker, topic):
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "wm"})
    lo, hi = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    c.close()
    return lo, hi


def produce(broker, topic, n, size=1000):
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5, "batch.size": 4096})
    for i in range(n):
        p.produce(topic, value=b"%06d" % i + b"x" * size, partition=0)
    assert p.flush(30) == 0


def test_retention_bytes_deletes_old_segments(fresh_broker, topic_name):
    broker = fresh_broker("--retention-check-interval-ms", "200")
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    a.create_topics([NewTopic(topic_name, 1, 1, config={"segment.bytes": "65536", "retention.bytes": "200000"})])[topic_name].result(30)
    produce(broker, topic_name, 1000)  # ~1 MB
    # A retention pass may run while the producer is still writing; wait for one after it.
    wait_for(lambda: earliest(broker, topic_name)[0] > 500, what="retention to delete segments")
    lo, hi = earliest(broker, topic_name)
    assert hi == 1000 and 500 < lo < 1000
    # A consumer asking for a deleted offset gets OFFSET_OUT_OF_RANGE and resets to earliest.
    msgs = read_partition(broker, topic_name, 0, start=0)
    assert msgs[0].offset() == lo and msgs[-1].offset() == 999


def test_retention_ms_changed_at_runtime(fresh_broker, topic_name):
    broker = fresh_broker("--retention-check-interval-ms", "200")
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    a.create_topics([NewTopic(topic_name, 1, 1, config={"segment.bytes": "65536"})])[topic_name].result(30)
    produce(broker, topic_name, 300)
    time.sleep(0.5)
    assert earliest(broker, topic_name)[0] == 0, "the default retention keeps a week"
    res = ConfigResource(ConfigResource.Type.TOPIC, topic_name, incremental_configs=[
        ConfigEntry("retention.ms", "1", incremental_operation=AlterConfigOpType.SET)])
    a.incremental_alter_configs([res])[res].result(10)
    described = a.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic_name)])
    assert list(described.values())[0].result(10)["retention.ms"].value == "1"
    wait_for(lambda: earliest(broker, topic_name)[0] == 300, what="everything to expire")
    # The topic keeps working: new records get the next offsets.
    produce(broker, topic_name, 1)
    assert earliest(broker, topic_name) == (300, 301)


def test_delete_records(broker, topic_name):
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    a.create_topics([NewTopic(topic_name, 1, 1)])[topic_name].result(30)
    produce(broker, topic_name, 100, size=10)
    tp = TopicPartition(topic_name, 0, 40)
    result = a.delete_records([tp])[tp].result(10)
    assert result.low_watermark == 40
    assert earliest(broker, topic_name) == (40, 100)
    msgs = read_partition(broker, topic_name, 0, start=0)
    assert [m.offset() for m in msgs] == list(range(40, 100))
    bad = TopicPartition(topic_name, 0, 1000)
    err = a.delete_records([bad])[bad].exception(10)
    assert err is not None and err.args[0].code() == KafkaError.OFFSET_OUT_OF_RANGE


def test_alter_configs_validates_and_applies(broker, topic_name):
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    a.create_topics([NewTopic(topic_name, 1, 1)])[topic_name].result(30)
    bad = ConfigResource(ConfigResource.Type.TOPIC, topic_name, incremental_configs=[
        ConfigEntry("max.message.bytes", "lots", incremental_operation=AlterConfigOpType.SET)])
    err = a.incremental_alter_configs([bad])[bad].exception(10)
    assert err is not None and err.args[0].code() == KafkaError.INVALID_CONFIG
    # max.message.bytes lowered at runtime: a large record is now refused.
    res = ConfigResource(ConfigResource.Type.TOPIC, topic_name, incremental_configs=[
        ConfigEntry("max.message.bytes", "1000", incremental_operation=AlterConfigOpType.SET)])
    a.incremental_alter_configs([res])[res].result(10)
    p = Producer({"bootstrap.servers": broker.bootstrap})
    errors = []
    p.produce(topic_name, value=b"z" * 5000, partition=0, on_delivery=lambda e, m: errors.append(e))
    p.flush(30)
    assert errors[0] is not None and errors[0].code() == KafkaError.MSG_SIZE_TOO_LARGE
    # kafka-python's alter_configs keeps the other modified configs.
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource as KPResource, ConfigResourceType

    kp = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    kp.alter_configs([KPResource(ConfigResourceType.TOPIC, topic_name, configs={"retention.ms": "3600000"})])
    kp.close()
    described = a.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic_name)])
    configs = list(described.values())[0].result(10)
    assert configs["retention.ms"].value == "3600000"
    assert configs["max.message.bytes"].value == "1000"
    # The legacy AlterConfigs replaces the whole set: the size limit is gone again.
    res = ConfigResource(ConfigResource.Type.TOPIC, topic_name, set_config={"retention.ms": "7200000"})
    list(a.alter_configs([res]).values())[0].result(10)
    described = a.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic_name)])
    configs = list(described.values())[0].result(10)
    assert configs["retention.ms"].value == "7200000"
    assert configs["max.message.bytes"].is_default


def test_compaction_keeps_latest_value_per_key(fresh_broker, topic_name):
    broker = fresh_broker("--retention-check-interval-ms", "200")
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    # Any dirty segment is compacted: with the default ratio (0.5), when the rounds fall during
    # the writes decides whether the last dirty segments are ever worth a round (Kafka's rule),
    # so a slow run could end with the last tombstones never cleaned.
    a.create_topics([NewTopic(topic_name, 1, 1, config={"cleanup.policy": "compact", "segment.bytes": "1024",
                                                          "delete.retention.ms": "0",
                                                          "min.cleanable.dirty.ratio": "0.01"})])[topic_name].result(30)
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 1, "compression.type": "lz4"})
    latest = {}
    for i in range(3000):
        key = b"key-%d" % (i % 50)
        value = None if (i % 50 == 7 and i > 2900) else b"value-%d" % i
        p.produce(topic_name, key=key, value=value, partition=0)
        if value is None:
            latest.pop(key, None)
        else:
            latest[key] = value
    assert p.flush(30) == 0
    # Distinct keys after the workload, in separate requests, so the segment holding the last
    # updates is closed (the active segment is never compacted).
    for part in range(2):
        for i in range(200):
            p.produce(topic_name, key=b"filler-%d-%d" % (part, i), value=os.urandom(200), partition=0)
        assert p.flush(30) == 0

    def main_keys():
        msgs = read_partition(broker, topic_name, 0)
        return msgs, [(m.key(), m.value()) for m in msgs if m.key().startswith(b"key-")]

    wait_for(lambda: len(main_keys()[1]) == len(latest), timeout=60, what="compaction")
    msgs, kept = main_keys()
    assert dict(kept) == latest, "exactly the latest value per key, tombstoned keys gone"
    offsets = [m.offset() for m in msgs]
    assert offsets == sorted(offsets) and offsets[-1] == 3399, "offsets unchanged and increasing"


def test_idempotent_producers_expire_after_producer_id_expiration_ms(fresh_broker, topic_name):
    """A retried batch is a duplicate while its producer is remembered; once the producer has
    not been heard from for producer.id.expiration.ms it is forgotten (as in Kafka), and the
    same batch is taken as new."""
    broker = fresh_broker("--retention-check-interval-ms", "200", "--producer-id-expiration-ms", "1500")
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic_name, 1, 1)])[topic_name].result(30)

    def send(pid):
        batch = wire.record_batch(b"v", timestamp=int(time.time() * 1000), producer=(pid, 0, 0))
        with wire.connect(broker.bootstrap) as s:
            return wire.single_partition_offset(wire.roundtrip(s, wire.produce_v3(topic_name, 0, batch)))

    assert send(7000) == (0, 0)
    assert send(7000) == (0, 0), "a retry while remembered is the same batch"
    # Producer 7001 keeps being heard from (new timestamps); 7000 falls silent and expires.
    deadline = time.time() + 3
    while time.time() < deadline:
        send(7001)
        time.sleep(0.2)
    wait_for(lambda: "idempotent producers expired" in broker.read_log(), what="an expiry pass")
    assert send(7000)[1] > 1, "forgotten: its old batch is taken as new"
    before = send(7001)
    assert send(7001) == before, "a producer heard from is still remembered"


def test_dynamic_broker_configs_set_topic_defaults_without_a_restart(fresh_broker, topic_name):
    """Kafka's dynamic broker configs: log.retention.bytes set cluster-wide applies to a topic
    that sets none (and takes effect at once); a per-broker value beats it, a topic's own value
    beats both; DescribeConfigs says where each value comes from; they survive a restart."""
    from confluent_kafka.admin import ConfigSource

    broker = fresh_broker("--retention-check-interval-ms", "200")
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    a.create_topics([NewTopic(topic_name, 1, 1, config={"segment.bytes": "65536"})])[topic_name].result(30)
    produce(broker, topic_name, 1000)  # ~1 MB, kept: no retention.bytes anywhere
    assert earliest(broker, topic_name)[0] == 0

    def alter(resource_name, name, value, op=AlterConfigOpType.SET):
        if resource_name == "":
            # Client admin APIs refuse the cluster-wide resource "": sent by hand.
            frame = wire.incremental_alter_configs_v0(4, "", [(name, op.value, value)])
            with wire.connect(broker.bootstrap) as s:
                error, message = wire.parse_incremental_alter_configs_v0(wire.roundtrip(s, frame))
            return None if error == 0 else (error, message)
        res = ConfigResource(ConfigResource.Type.BROKER, resource_name,
                             incremental_configs=[ConfigEntry(name, value, incremental_operation=op)])
        return a.incremental_alter_configs([res])[res].exception(10)

    def topic_config(name):
        res = ConfigResource(ConfigResource.Type.TOPIC, topic_name)
        c = a.describe_configs([res])[res].result(10)[name]
        return c.value, c.source

    def broker_config(resource_name, name):
        res = ConfigResource(ConfigResource.Type.BROKER, resource_name)
        c = a.describe_configs([res])[res].result(10).get(name)
        return c and (c.value, c.source)

    assert alter("", "log.retention.bytes", "lots")[0] == KafkaError.INVALID_CONFIG
    assert alter("", "log.dirs", "/elsewhere") is not None, "not a dynamic config in Kafka"
    err = alter("0", "log.retention.bytes", "lots")
    assert err is not None and err.args[0].code() == KafkaError.INVALID_CONFIG
    assert alter("", "log.retention.bytes", "200000") is None
    wait_for(lambda: earliest(broker, topic_name)[0] > 500, what="the cluster-wide retention to apply")
    assert topic_config("retention.bytes") == ("200000", ConfigSource.DYNAMIC_DEFAULT_BROKER_CONFIG.value)
    assert broker_config("0", "log.retention.bytes") == ("200000", ConfigSource.DYNAMIC_DEFAULT_BROKER_CONFIG.value)
    assert alter("0", "log.retention.bytes", "300000") is None
    assert topic_config("retention.bytes") == ("300000", ConfigSource.DYNAMIC_BROKER_CONFIG.value)
    assert broker_config("0", "log.retention.bytes") == ("300000", ConfigSource.DYNAMIC_BROKER_CONFIG.value)
    assert broker_config("0", "log.cleaner.threads") == ("1", ConfigSource.DEFAULT_CONFIG.value)
    res = ConfigResource(ConfigResource.Type.TOPIC, topic_name, incremental_configs=[
        ConfigEntry("retention.bytes", "-1", incremental_operation=AlterConfigOpType.SET)])
    a.incremental_alter_configs([res])[res].result(10)
    assert topic_config("retention.bytes") == ("-1", ConfigSource.DYNAMIC_TOPIC_CONFIG.value)
    broker.restart()
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    assert broker_config("0", "log.retention.bytes") == ("300000", ConfigSource.DYNAMIC_BROKER_CONFIG.value)
    # Deleting the per-broker value falls back to the cluster-wide one.
    assert alter("0", "log.retention.bytes", None, AlterConfigOpType.DELETE) is None
    assert broker_config("0", "log.retention.bytes") == ("200000", ConfigSource.DYNAMIC_DEFAULT_BROKER_CONFIG.value)
