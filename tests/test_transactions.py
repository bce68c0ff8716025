"""Exactly-once: transactional producers (confluent-kafka, kafka-python), read_committed and
read_uncommitted consumers, consume-transform-produce with offsets in the transaction,
fencing of zombies, the transaction timeout, and crashes of the broker mid-transaction."""

import struct
import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import kafka_wire
from conftest import wait_for


def create(broker, *topics, partitions=2):
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    fs = a.create_topics([NewTopic(t, partitions, 1) for t in topics])
    for t in topics:
        fs[t].result(30)


def producer(broker, txn_id, **extra):
    p = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": txn_id, "linger.ms": 5, **extra})
    p.init_transactions(30)
    return p


def read(broker, topic, partitions, isolation, settle=2.0):
    """Every record a consumer with `isolation` reads from the start: sorted
    (partition, offset, value), once the partitions stay quiet for `settle` seconds."""
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "reader", "isolation.level": isolation,
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out, quiet_since = [], time.time()
    while time.time() - quiet_since < settle:
        m = c.poll(0.2)
        if m is None or m.error():
            continue
        out.append((m.partition(), m.offset(), m.value()))
        quiet_since = time.time()
    c.close()
    return sorted(out)


def end_offsets(broker, topic, partitions, isolation):
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "ends", "isolation.level": isolation})
    ends = [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)]
    c.close()
    return ends


def test_committed_aborted_and_open_transactions_across_topics(broker, topic_name):
    t1, t2 = topic_name + "-a", topic_name + "-b"
    create(broker, t1, t2)
    p = producer(broker, topic_name)
    # Committed: 4 records over both topics, both partitions each.
    p.begin_transaction()
    for i in range(4):
        p.produce(t1, value=b"c1-%d" % i, partition=i % 2)
        p.produce(t2, value=b"c2-%d" % i, partition=i % 2)
    p.commit_transaction(30)
    # Aborted: written to the log (flushed first), then aborted.
    p.begin_transaction()
    for i in range(4):
        p.produce(t1, value=b"a1-%d" % i, partition=i % 2)
    p.flush(30)
    p.abort_transaction(30)
    # Committed again, then one left open.
    p.begin_transaction()
    p.produce(t1, value=b"c1-last", partition=0)
    p.commit_transaction(30)
    p.begin_transaction()
    p.produce(t1, value=b"open", partition=1)
    p.flush(30)

    # Each partition of t1: committed batch, marker, aborted batch, marker, (p0: committed, marker).
    committed = read(broker, t1, 2, "read_committed")
    assert committed == [(0, 0, b"c1-0"), (0, 1, b"c1-2"), (0, 6, b"c1-last"),
                         (1, 0, b"c1-1"), (1, 1, b"c1-3")]
    uncommitted = read(broker, t1, 2, "read_uncommitted")
    assert uncommitted == [(0, 0, b"c1-0"), (0, 1, b"c1-2"), (0, 3, b"a1-0"), (0, 4, b"a1-2"), (0, 6, b"c1-last"),
                           (1, 0, b"c1-1"), (1, 1, b"c1-3"), (1, 3, b"a1-1"), (1, 4, b"a1-3"), (1, 6, b"open")]
    assert read(broker, t2, 2, "read_committed") == [(0, 0, b"c2-0"), (0, 1, b"c2-2"),
                                                     (1, 0, b"c2-1"), (1, 1, b"c2-3")]
    # The last stable offset stops at the open transaction; the high watermark does not.
    assert end_offsets(broker, t1, 2, "read_committed") == [8, 6]
    assert end_offsets(broker, t1, 2, "read_uncommitted") == [8, 7]
    p.commit_transaction(30)
    assert read(broker, t1, 2, "read_committed")[-1] == (1, 6, b"open")
    assert end_offsets(broker, t1, 2, "read_committed") == [8, 8]


def test_consume_transform_produce_commits_offsets_with_the_output(broker, topic_name):
    src, dst = topic_name + "-in", topic_name + "-out"
    create(broker, src, dst, partitions=1)
    plain = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(10):
        plain.produce(src, value=b"%d" % i, partition=0)
    assert plain.flush(30) == 0
    group = topic_name + "-g"
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
    c.subscribe([src])
    p = producer(broker, topic_name)
    watcher_committed, watcher_uncommitted = (
        Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "isolation.level": isolation})
        for isolation in ("read_committed", "read_uncommitted"))

    def process(n, commit):
        got = []
        while len(got) < n:
            m = c.poll(1)
            if m is not None and not m.error():
                got.append(m)
        p.begin_transaction()
        for m in got:
            p.produce(dst, value=b"x" + m.value(), partition=0)
        offsets = [TopicPartition(src, 0, got[-1].offset() + 1)]
        p.send_offsets_to_transaction(offsets, c.consumer_group_metadata(), 30)
        # Until the transaction ends, a read_committed client asking for the group's offsets
        # is told they are unstable (it retries); a read_uncommitted one gets the old offset.
        with pytest.raises(KafkaException):
            watcher_committed.committed([TopicPartition(src, 0)], 2)
        before = watcher_uncommitted.committed([TopicPartition(src, 0)], 10)[0].offset
        assert before < offsets[0].offset
        if commit:
            p.commit_transaction(30)
        else:
            p.flush(30)
            p.abort_transaction(30)
        return [m.value() for m in got]

    assert process(4, True) == [b"0", b"1", b"2", b"3"]
    assert c.committed([TopicPartition(src, 0)], 10)[0].offset == 4
    # An aborted round leaves the group's offset where it was: the input is processed again.
    assert process(3, False) == [b"4", b"5", b"6"]
    assert c.committed([TopicPartition(src, 0)], 10)[0].offset == 4
    c.seek(TopicPartition(src, 0, 4))
    assert process(6, True) == [b"4", b"5", b"6", b"7", b"8", b"9"]
    assert c.committed([TopicPartition(src, 0)], 10)[0].offset == 10
    c.close()
    out = [v for _, _, v in read(broker, dst, 1, "read_committed")]
    assert out == [b"x%d" % i for i in range(10)]


def test_a_zombie_is_fenced_by_a_new_instance(broker, topic_name):
    create(broker, topic_name, partitions=1)
    old = producer(broker, topic_name)
    old.begin_transaction()
    old.produce(topic_name, value=b"zombie", partition=0)
    old.flush(30)
    # The new instance aborts what the old one left open and fences it.
    new = producer(broker, topic_name)
    new.begin_transaction()
    new.produce(topic_name, value=b"new", partition=0)
    new.commit_transaction(30)
    with pytest.raises(KafkaException) as e:
        old.produce(topic_name, value=b"late", partition=0)
        old.commit_transaction(30)
    assert e.value.args[0].fatal() or "fenced" in str(e.value).lower(), e.value
    assert [v for _, _, v in read(broker, topic_name, 1, "read_committed")] == [b"new"]


def test_a_transaction_past_its_timeout_is_aborted(broker, topic_name):
    create(broker, topic_name, partitions=1)
    p = producer(broker, topic_name, **{"transaction.timeout.ms": 2000})
    p.begin_transaction()
    p.produce(topic_name, value=b"lapsed", partition=0)
    p.flush(30)
    # The broker aborts it: the stable offset moves past the abort marker.
    wait_for(lambda: end_offsets(broker, topic_name, 1, "read_committed") == [2], what="the timed-out abort")
    assert read(broker, topic_name, 1, "read_committed") == []
    with pytest.raises(KafkaException):
        p.commit_transaction(30)


def test_a_timeout_above_the_maximum_is_refused(broker, topic_name):
    p = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": topic_name,
                  "transaction.timeout.ms": 3_600_000})
    with pytest.raises(KafkaException) as e:
        p.init_transactions(30)
    assert "INVALID_TRANSACTION_TIMEOUT" in str(e.value) or "timeout" in str(e.value).lower(), e.value


def test_the_timeout_limit_and_id_expiration_are_broker_settings(fresh_broker, topic_name):
    import json
    import subprocess

    from conftest import TERN_BIN

    broker = fresh_broker("--transaction-max-timeout-ms", "5000", "--transactional-id-expiration-ms", "2000")
    create(broker, topic_name, partitions=1)
    refused = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": topic_name + "-long",
                        "transaction.timeout.ms": 6000})
    with pytest.raises(KafkaException) as e:
        refused.init_transactions(30)
    assert "INVALID_TRANSACTION_TIMEOUT" in str(e.value) or "timeout" in str(e.value).lower(), e.value

    p = producer(broker, topic_name, **{"transaction.timeout.ms": 5000})
    p.begin_transaction()
    p.produce(topic_name, value=b"kept", partition=0)
    p.commit_transaction(30)

    def listed():
        out = subprocess.run([TERN_BIN, "txn", "-b", broker.bootstrap, "list", "--json"], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return {r["transactional_id"] for r in json.loads(out.stdout)}

    assert topic_name in listed()
    # Unused past transactional.id.expiration.ms, the id is forgotten.
    wait_for(lambda: topic_name not in listed(), timeout=30, what="the idle transactional id forgotten")


@pytest.mark.parametrize("phase", ["open", "committed", "aborted"])
def test_sigkill_mid_transaction_then_restart(fresh_broker, topic_name, phase):
    broker = fresh_broker()
    create(broker, topic_name)
    p = producer(broker, topic_name)
    p.begin_transaction()
    p.produce(topic_name, value=b"before", partition=0)
    p.commit_transaction(30)
    p.begin_transaction()
    for i in range(4):
        p.produce(topic_name, value=b"t%d" % i, partition=i % 2)
    p.flush(30)
    if phase == "committed":
        p.commit_transaction(30)
    elif phase == "aborted":
        p.abort_transaction(30)
    broker.kill()
    broker.start()
    expect = [b"before"] + ([b"t0", b"t1", b"t2", b"t3"] if phase == "committed" else [])
    assert sorted(v for _, _, v in read(broker, topic_name, 2, "read_committed")) == expect
    # A new instance ends what was open; the log is stable again and nothing half-visible.
    again = producer(broker, topic_name)
    again.begin_transaction()
    again.produce(topic_name, value=b"after", partition=1)
    again.commit_transaction(30)
    assert sorted(v for _, _, v in read(broker, topic_name, 2, "read_committed")) == sorted(expect + [b"after"])
    ends = end_offsets(broker, topic_name, 2, "read_committed")
    assert ends == end_offsets(broker, topic_name, 2, "read_uncommitted")


def test_compaction_drops_aborted_records_then_markers_of_empty_transactions(fresh_broker, topic_name):
    """As Kafka's cleaner: aborted records go at once, a marker once its transaction has no
    records left (and delete.retention.ms passed), with the aborted index entry; readers then
    see exactly the committed records, later transactions of the same producer included."""
    broker = fresh_broker("--retention-check-interval-ms", "200")
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    a.create_topics([NewTopic(topic_name, 1, 1, config={
        "cleanup.policy": "compact", "segment.bytes": "1024", "delete.retention.ms": "0",
        "min.cleanable.dirty.ratio": "0.01"})])[topic_name].result(30)
    p = producer(broker, topic_name)
    keys = [b"k-%d" % k for k in range(3)]
    for i in range(10):
        for commit in (False, True):
            p.begin_transaction()
            for k in keys:
                p.produce(topic_name, key=k, value=b"%s-%d" % (b"committed" if commit else b"aborted", i), partition=0)
            (p.commit_transaction if commit else p.abort_transaction)(30)
    plain = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 1})
    filler = 0

    def fill():
        # New distinct keys close the segments before them and make the log dirty again.
        nonlocal filler
        for _ in range(20):
            plain.produce(topic_name, key=b"filler-%d" % filler, value=b"x" * 200, partition=0)
            filler += 1
        assert plain.flush(30) == 0

    def fetched(isolation):
        with kafka_wire.connect(broker.bootstrap) as s:
            body = kafka_wire.roundtrip(s, kafka_wire.fetch_v4(topic_name, 0, 0, isolation=isolation))
        return kafka_wire.fetch_v4_aborted(body), kafka_wire.parse_fetch_v4(body)[2]

    def cleaned():
        fill()
        aborted, records = fetched(1)
        # Only the last committed transaction still has records (the newest value per key).
        return not aborted and kafka_wire.control_batches(records) == 1

    wait_for(cleaned, timeout=60, what="markers of empty transactions removed")
    # The same producer goes on: nothing left of the old aborts hides its new records.
    p.begin_transaction()
    p.produce(topic_name, key=b"after", value=b"after", partition=0)
    p.commit_transaction(30)
    values = {v for _, _, v in read(broker, topic_name, 1, "read_committed")}
    expected = {b"committed-9", b"after"} | {b"x" * 200}
    assert values == expected
    assert {v for _, _, v in read(broker, topic_name, 1, "read_uncommitted")} == expected


def test_kafka_python_transactional_producer(broker, topic_name):
    from kafka import KafkaConsumer, KafkaProducer

    create(broker, topic_name, partitions=1)
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=topic_name)
    p.init_transactions()
    p.begin_transaction()
    p.send(topic_name, b"kept", partition=0)
    p.commit_transaction()
    p.begin_transaction()
    p.send(topic_name, b"dropped", partition=0)
    p.flush()
    p.abort_transaction()
    p.close()
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, isolation_level="read_committed",
                      auto_offset_reset="earliest", consumer_timeout_ms=3000)
    c.assign([__import__("kafka").TopicPartition(topic_name, 0)])
    assert [m.value for m in c] == [b"kept"]
    c.close()


def test_bad_transaction_requests_get_the_fitting_error(broker, topic_name):
    create(broker, topic_name, partitions=1)

    def call(api, body):
        with kafka_wire.connect(broker.bootstrap) as sock:
            return kafka_wire.roundtrip(sock, kafka_wire.request(api, 0, body))

    def init(txn_id, timeout_ms=60_000):
        resp = call(22, kafka_wire.string(txn_id) + struct.pack(">i", timeout_ms))
        _, error, pid, epoch = struct.unpack(">ihqh", resp[:16])
        return error, pid, epoch

    def end_txn(txn_id, pid, epoch):
        return struct.unpack(">ih", call(26, kafka_wire.string(txn_id) + struct.pack(">qhb", pid, epoch, 1))[:6])[1]

    def add_partition(txn_id, pid, epoch):
        body = (kafka_wire.string(txn_id) + struct.pack(">qhi", pid, epoch, 1) + kafka_wire.string(topic_name)
                + struct.pack(">ii", 1, 0))
        resp = call(24, body)
        # throttle, [topic: name, [partition, error]]
        return struct.unpack(">h", resp[-2:])[0]

    # An absurd timeout: INVALID_TRANSACTION_TIMEOUT (50), nothing stored.
    assert init(topic_name, -5)[0] == 50
    assert init(topic_name, 3_600_000)[0] == 50
    # Unknown transactional id: INVALID_PRODUCER_ID_MAPPING (49).
    assert end_txn("never-initialised", 7, 0) == 49
    error, pid, epoch = init(topic_name)
    assert (error, epoch) == (0, 0)
    # Nothing open: INVALID_TXN_STATE (48); another producer id: 49.
    assert end_txn(topic_name, pid, epoch) == 48
    assert end_txn(topic_name, pid + 1, epoch) == 49
    # A new instance bumps the epoch: the old one is fenced (PRODUCER_FENCED, 90).
    assert init(topic_name) == (0, pid, 1)
    assert add_partition(topic_name, pid, 0) == 90
    assert end_txn(topic_name, pid, 0) == 90
    # The current one still works: the partition joins, and the transaction ends.
    assert add_partition(topic_name, pid, 1) == 0
    assert end_txn(topic_name, pid, 1) == 0
    # A transactional batch to a partition its transaction has not added (or from a fenced
    # epoch) would open a transaction no marker ends: INVALID_TXN_STATE (48) / epoch (47).
    def produce_txn(epoch):
        batch = kafka_wire.record_batch(b"v", producer=(pid, epoch, 0), attributes=0x10)
        with kafka_wire.connect(broker.bootstrap) as sock:
            resp = kafka_wire.roundtrip(sock, kafka_wire.produce_v3(topic_name, 0, batch, transactional_id=topic_name))
        return kafka_wire.single_partition_error(resp)

    assert produce_txn(1) == 48
    assert produce_txn(0) == 47
    assert add_partition(topic_name, pid, 1) == 0
    assert produce_txn(1) == 0

    # TxnOffsetCommit for a group the transaction never added (no AddOffsetsToTxn): 48.
    def txn_offset_commit(group):
        body = (kafka_wire.string(topic_name) + kafka_wire.string(group) + struct.pack(">qh", pid, 1)
                + struct.pack(">i", 1) + kafka_wire.string(topic_name) + struct.pack(">iiqh", 1, 0, 1, -1))
        return struct.unpack(">h", call(28, body)[-2:])[0]

    assert txn_offset_commit(topic_name + "-group") == 48
    assert end_txn(topic_name, pid, 1) == 0
    # Clients may not write control batches (a forged commit marker): INVALID_RECORD (87).
    marker = kafka_wire.record_batch(struct.pack(">hi", 0, 0), key=struct.pack(">hh", 0, 1),
                                     producer=(pid, 1, -1), attributes=0x30)
    with kafka_wire.connect(broker.bootstrap) as sock:
        resp = kafka_wire.roundtrip(sock, kafka_wire.produce_v3(topic_name, 0, marker))
    assert kafka_wire.single_partition_error(resp) == 87


def test_admin_lists_describes_and_aborts_transactions(broker, topic_name):
    from kafka.admin import AbortTransactionSpec, KafkaAdminClient
    from kafka.structs import TopicPartition as KTopicPartition

    create(broker, topic_name, partitions=1)
    p = producer(broker, topic_name)
    p.begin_transaction()
    p.produce(topic_name, value=b"hanging", partition=0)
    p.flush(30)
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        listed = [t for per_broker in admin.list_transactions().values() for t in per_broker]
        mine = [t for t in listed if t.transactional_id == topic_name]
        assert len(mine) == 1 and mine[0].state.value == "Ongoing", listed
        desc = admin.describe_transactions([topic_name])[topic_name]
        assert desc.state.value == "Ongoing", desc
        assert desc.producer_epoch == 0
        assert {(tp.topic, tp.partition) for tp in desc.topic_partitions} == {(topic_name, 0)}, desc
        # The operator aborts the open transaction on its partition (kafka-transactions.sh
        # abort): the stable offset moves past it.
        assert end_offsets(broker, topic_name, 1, "read_committed") == [0]
        admin.abort_transaction(AbortTransactionSpec(
            topic_partition=KTopicPartition(topic_name, 0), producer_id=mine[0].producer_id,
            producer_epoch=desc.producer_epoch, coordinator_epoch=-1))
        assert end_offsets(broker, topic_name, 1, "read_committed") == [2]
        assert read(broker, topic_name, 1, "read_committed") == []
    finally:
        admin.close()


def test_sigkill_while_markers_are_written_leaves_all_or_nothing(fresh_broker, topic_name):
    """The broker dies while EndTxn writes the markers of a transaction over 16 partitions:
    after a restart (and the new instance's init), the transaction is wholly visible or
    wholly absent, never in part."""
    import random
    import threading

    broker = fresh_broker()
    t1, t2 = topic_name + "-a", topic_name + "-b"
    create(broker, t1, t2, partitions=8)
    outcomes = []
    for round_ in range(5):
        p = producer(broker, topic_name)
        p.begin_transaction()
        values = [b"r%d-%d" % (round_, i) for i in range(16)]
        for i, v in enumerate(values):
            p.produce(t1 if i < 8 else t2, value=v, partition=i % 8)
        p.flush(30)
        threading.Thread(target=lambda: _swallow(lambda: p.commit_transaction(10)), daemon=True).start()
        time.sleep(random.uniform(0, 0.01))
        broker.kill()
        broker.start()
        producer(broker, topic_name)  # ends whatever the dead broker left
        wait_for(lambda: end_offsets(broker, t1, 8, "read_committed") == end_offsets(broker, t1, 8, "read_uncommitted")
                 and end_offsets(broker, t2, 8, "read_committed") == end_offsets(broker, t2, 8, "read_uncommitted"),
                 what="every partition stable")
        seen = {v for _, _, v in read(broker, t1, 8, "read_committed", settle=1.0)}
        seen |= {v for _, _, v in read(broker, t2, 8, "read_committed", settle=1.0)}
        mine = seen & set(values)
        assert mine in (set(), set(values)), f"round {round_}: {len(mine)} of 16 visible"
        outcomes.append(bool(mine))
    print("committed rounds:", outcomes, "finished after a restart:",
          broker.read_log().count("finishing a prepared transaction"))


def _swallow(f):
    try:
        f()
    except Exception:
        pass


def test_tern_txn_cli_lists_describes_shows_producers_and_aborts(broker, topic_name):
    import json
    import subprocess

    from conftest import TERN_BIN

    def tern(*args):
        out = subprocess.run([TERN_BIN, "txn", "-b", broker.bootstrap, *args], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    create(broker, topic_name, partitions=1)
    p = producer(broker, topic_name)
    p.begin_transaction()
    p.produce(topic_name, value=b"hanging", partition=0)
    p.flush(30)
    listed = {r["transactional_id"]: r for r in json.loads(tern("list", "--json"))}
    assert listed[topic_name]["state"] == "Ongoing"
    assert topic_name in tern("list")
    desc = json.loads(tern("describe", topic_name, "--json"))
    assert desc["state"] == "Ongoing" and desc["partitions"] == {topic_name: [0]}, desc
    assert "Ongoing" in tern("describe", topic_name)
    [prod] = json.loads(tern("producers", topic_name, "--partition", "0", "--json"))
    assert prod["producer_id"] == desc["producer_id"] and prod["txn_start_offset"] == 0, prod
    tern("abort", topic_name, "--partition", "0", "--producer-id", str(prod["producer_id"]),
         "--producer-epoch", str(prod["producer_epoch"]))
    [prod] = json.loads(tern("producers", topic_name, "--json"))
    assert prod["txn_start_offset"] is None
    assert end_offsets(broker, topic_name, 1, "read_committed") == [2]
    # An unknown id is an error, clearly reported.
    out = subprocess.run([TERN_BIN, "txn", "-b", broker.bootstrap, "describe", "nobody"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0 and "TransactionalIdNotFound" in out.stderr, out.stderr
