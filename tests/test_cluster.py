"""A real 3-node cluster on loopback (scripts/cluster), driven by real clients: replicated
topics, metadata, produce with acks=all through leader failures, consumers reading across
Raft's control batches."""

import json
import os
import random
import re
import socket
import subprocess
import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

import kafka_wire
from conftest import ROOT, TERN_BIN, wait_for

SCRIPT = os.path.join(ROOT, "scripts", "cluster")


def ports_free(base, n):
    for port in [base + i for i in range(n)] + [base + 100 + i for i in range(n)]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


class Cluster:
    def __init__(self, workdir, n=3, flags="", racks="", cores=1):
        self.n = n
        self.dir = os.path.join(workdir, f"cluster-{random.randrange(1 << 30):x}")
        while True:
            self.port = random.randrange(20000, 40000)
            if ports_free(self.port, n):
                break
        self.env = dict(
            os.environ,
            TERN_CLUSTER_DIR=self.dir,
            TERN_CLUSTER_PORT=str(self.port),
            TERN_BIN=TERN_BIN,
            TERN_CLUSTER_FLAGS=flags,
            TERN_CLUSTER_RACKS=racks,
            TERN_CLUSTER_CORES=str(cores),
        )

    def run(self, *args):
        out = subprocess.run(
            [SCRIPT, *map(str, args)], env=self.env, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, f"scripts/cluster {args}: {out.stdout}{out.stderr}"
        return out.stdout

    def start(self):
        self.bootstrap = self.run("start", self.n).strip().splitlines()[-1]
        return self

    def port_of(self, node):
        return self.port + node - 1

    def node_log(self, node):
        """Node `node`'s log, without colours."""
        with open(os.path.join(self.dir, f"node{node}.log"), errors="replace") as f:
            return re.sub(r"\x1b\[[0-9;]*m", "", f.read())

    def logs(self, nodes=None):
        return "\n".join(
            f"--- node {i}\n" + open(os.path.join(self.dir, f"node{i}.log"), errors="replace").read()[-6000:]
            for i in range(1, (nodes or self.n) + 1)
        )


class Writer:
    """An idempotent acks=all producer writing x0, x1, ... round-robin over `partitions`,
    remembering where each record was acknowledged."""

    def __init__(self, cluster, topic, partitions):
        self.cluster, self.topic, self.partitions = cluster, topic, partitions
        self.p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all", "enable.idempotence": True,
                           "linger.ms": 5, "message.timeout.ms": 120000})
        self.acked, self.errors, self.sent = {}, [], 0

    def _delivered(self, err, m):
        if err:
            self.errors.append(str(err))
        else:
            self.acked[m.value()] = (m.partition(), m.offset())

    def produce_for(self, seconds):
        end = time.time() + seconds
        while time.time() < end:
            self.p.produce(self.topic, value=b"x%d" % self.sent, partition=self.sent % self.partitions,
                           on_delivery=self._delivered)
            self.sent += 1
            self.p.poll(0)
            time.sleep(0.002)

    def check(self):
        """Every record acknowledged, and each read back once, where it was acknowledged."""
        assert self.p.flush(120) == 0
        assert self.errors == []
        seen, dups = consume_all(self.cluster, self.topic, self.partitions, self.acked)
        lost = [v for v in self.acked if v not in seen]
        moved = [v for v in self.acked if v in seen and seen[v] != self.acked[v]]
        assert (len(self.acked), lost, moved, dups) == (self.sent, [], [], 0), self.cluster.logs()


@pytest.fixture
def cluster(workdir):
    c = Cluster(workdir).start()
    yield c
    c.run("stop")


def admin(cluster):
    # Kept with the cluster: a future of a dropped client fails.
    if not hasattr(cluster, "admin"):
        cluster.admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    return cluster.admin


def test_a_sequence_gap_at_a_leader_is_answered_retriably(cluster, topic_name):
    """A gap in a producer's sequence at a partition leader is earlier batches refused by a
    replica not yet leading, or still in flight: answered NOT_LEADER_OR_FOLLOWER, not
    OUT_OF_ORDER_SEQUENCE_NUMBER, which makes librdkafka bump its epoch and renumber the
    unanswered batches of every partition (one written but unanswered is then written twice,
    as the chaos test found). Once the missing batches come, the rest follows in order."""
    create(cluster, topic_name, partitions=1, rf=3)
    pid = 4242

    def produce(node, seq, acks=-1):
        batch = kafka_wire.record_batch(b"s%d" % seq, producer=(pid, 0, seq))
        with kafka_wire.connect(f"127.0.0.1:{cluster.port_of(node)}") as sock:
            resp = kafka_wire.roundtrip(sock, kafka_wire.produce_v3(topic_name, 0, batch, acks=acks))
            return kafka_wire.single_partition_error(resp)

    leader = leaders(cluster, topic_name)[0]
    assert produce(leader, 0) == 0
    assert produce(leader, 1) == 0
    assert produce(leader, 4) == 6  # NOT_LEADER_OR_FOLLOWER, retriable
    assert produce(leader, 4, acks=1) == 6
    for seq in (2, 3, 4):
        assert produce(leader, seq) == 0
    assert produce(leader, 3) == 0  # a retry of a batch written: its first answer again
    c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "unused", "enable.auto.commit": False})
    c.assign([TopicPartition(topic_name, 0, 0)])
    values = []
    deadline = time.time() + 30
    while len(values) < 5 and time.time() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            values.append(m.value())
    c.close()
    assert values == [b"s0", b"s1", b"s2", b"s3", b"s4"]


def leaders(cluster, topic):
    md = admin(cluster).list_topics(topic, timeout=10)
    return {p.id: p.leader for p in md.topics[topic].partitions.values()}


def create(cluster, topic, partitions=3, rf=3):
    fs = admin(cluster).create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=rf)])
    fs[topic].result(timeout=30)

    def elected_everywhere():
        # Each node serves Metadata from its own copy: wait until every one names the leaders.
        for node in range(1, cluster.n + 1):
            try:
                with kafka_wire.connect(f"127.0.0.1:{cluster.port_of(node)}") as sock:
                    parts = kafka_wire.metadata_v1(sock, topic)
            except ConnectionRefusedError:
                continue  # a node a test stopped
            if len(parts) != partitions or any(leader < 0 for leader, _, _ in parts.values()):
                return False
        return True

    wait_for(elected_everywhere, what="leaders elected, as every node sees them")


def consume_all(cluster, topic, partitions, expect, timeout=60):
    """Every record of `topic` from its start: {value: (partition, offset)} and the duplicates."""
    c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "unused", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    seen, dups = {}, 0
    deadline = time.time() + timeout
    while time.time() < deadline and not all(v in seen for v in expect):
        m = c.poll(0.5)
        if m is None or m.error():
            continue
        if m.value() in seen:
            dups += 1
        seen[m.value()] = (m.partition(), m.offset())
    c.close()
    return seen, dups


def test_replicated_topics_are_described_and_read_across_control_batches(cluster, topic_name):
    md = admin(cluster).list_topics(timeout=10)
    assert sorted(md.brokers) == [1, 2, 3]
    assert md.controller_id in (1, 2, 3)
    create(cluster, topic_name, partitions=3, rf=3)
    md = admin(cluster).list_topics(topic_name, timeout=10)
    for p in md.topics[topic_name].partitions.values():
        assert sorted(p.replicas) == [1, 2, 3]
        assert p.leader in p.replicas
    # More replicas than nodes: refused.
    fs = admin(cluster).create_topics([NewTopic(topic_name + "-rf4", num_partitions=1, replication_factor=4)])
    with pytest.raises(KafkaException) as e:
        fs[topic_name + "-rf4"].result(timeout=30)
    assert "INVALID_REPLICATION_FACTOR" in str(e.value)
    # validate_only checks the placement too, on whichever node it is sent to.
    fs = admin(cluster).create_topics([NewTopic(topic_name + "-rf4", num_partitions=1, replication_factor=4)],
                                      validate_only=True)
    with pytest.raises(KafkaException) as e:
        fs[topic_name + "-rf4"].result(timeout=30)
    assert "INVALID_REPLICATION_FACTOR" in str(e.value)
    # The response names the topic's replication factor (the default is 3 on 3 nodes).
    from kafka import KafkaAdminClient

    ka = KafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    try:
        for name, options, factor in ((topic_name + "-default", {}, 3),
                                      (topic_name + "-rf2", {"replication_factor": 2}, 2),
                                      (topic_name + "-check", {"replication_factor": 2}, 2)):
            result = ka.create_topics({name: options}, validate_only=name.endswith("-check"))
            [created] = result["topics"]
            assert (created["error_code"], created["replication_factor"]) == (0, factor), created
    finally:
        ka.close()
    assert topic_name + "-check" not in admin(cluster).list_topics(timeout=10).topics

    p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all", "enable.idempotence": True})
    acked = {}
    for i in range(300):
        p.produce(topic_name, value=b"v%d" % i, partition=i % 3,
                  on_delivery=lambda err, m: err is None and acked.__setitem__(m.value(), (m.partition(), m.offset())))
    assert p.flush(30) == 0
    assert len(acked) == 300
    seen, dups = consume_all(cluster, topic_name, 3, acked)
    assert seen == acked and dups == 0
    # Each partition's log starts with its leader's LeaderChange control batch: the first
    # record is at offset 1 and the end offset counts the control batch, as with transaction
    # markers; clients skip it silently.
    c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "lag"})
    for part in range(3):
        low, high = c.get_watermark_offsets(TopicPartition(topic_name, part), timeout=10)
        offsets = sorted(o for (q, o) in acked.values() if q == part)
        assert low == 0 and offsets[0] >= 1 and high == offsets[-1] + 1
    c.close()
    # kafka-python reads the same records at the same offsets.
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTopicPartition

    kc = KafkaConsumer(bootstrap_servers=cluster.bootstrap, enable_auto_commit=False,
                       consumer_timeout_ms=10000)
    kc.assign([KTopicPartition(topic_name, q) for q in range(3)])
    kc.seek_to_beginning()
    read = {m.value: (m.partition, m.offset) for m in kc}
    kc.close()
    assert read == acked
    out = subprocess.run(
        ["kcat", "-b", cluster.bootstrap, "-C", "-t", topic_name, "-e", "-q", "-f", "%p %o %s\n"],
        capture_output=True, text=True, timeout=60,
    )
    lines = [l.split() for l in out.stdout.splitlines()]
    assert sorted((int(q), int(o), v.encode()) for q, o, v in lines) == sorted(
        (q, o, v) for v, (q, o) in acked.items()
    )
    # A transactional batch of a producer no coordinator knows (so none would end its
    # transaction) is refused after the leader asks the id's coordinator, and the partition's
    # stable offset stays at its high watermark.
    leader = leaders(cluster, topic_name)[0]
    batch = kafka_wire.record_batch(b"txn", producer=(5, 0, 0), attributes=0x10)
    with kafka_wire.connect(f"127.0.0.1:{cluster.port_of(leader)}") as sock:
        resp = kafka_wire.roundtrip(sock, kafka_wire.produce_v3(topic_name, 0, batch, transactional_id="t"))
    assert kafka_wire.single_partition_error(resp) == 49  # INVALID_PRODUCER_ID_MAPPING


def test_acknowledged_records_survive_killing_and_pausing_leaders(cluster, topic_name):
    create(cluster, topic_name, partitions=3, rf=3)
    w = Writer(cluster, topic_name, 3)
    w.produce_for(1.5)
    # SIGKILL the leader of partition 0 mid-write, then bring it back.
    victim = leaders(cluster, topic_name)[0]
    cluster.run("kill", victim)
    w.produce_for(4)
    cluster.run("restart", victim)
    # SIGSTOP the leader of partition 1 for longer than an election timeout, then resume it.
    victim = leaders(cluster, topic_name)[1]
    cluster.run("pause", victim)
    w.produce_for(4)
    cluster.run("resume", victim)
    w.produce_for(1.5)
    w.check()
    status = cluster.run("status")
    assert status.count("running") == 3, status


def test_nodes_of_two_shards_replicate_the_partitions_of_both(workdir, topic_name):
    """Each shard of a node hosts the replicas of its partitions (and coordinates the groups
    of its __consumer_offsets partitions): records written to partitions of both shards, with
    the leaders of both killed and restarted, are all there, once, where they were acked, and a
    group's committed offsets survive its coordinator's death."""
    cluster = Cluster(workdir, cores=2).start()
    try:
        create(cluster, topic_name, partitions=4, rf=3)
        for node in range(1, 4):
            log = cluster.node_log(node)
            hosted = [line for line in log.splitlines() if "hosting a replica" in line and topic_name in line]
            assert len(hosted) == 4, log[-4000:]
            assert any("shard=0" in line for line in hosted) and any("shard=1" in line for line in hosted), hosted
        w = Writer(cluster, topic_name, 4)
        w.produce_for(1.5)
        for partition in (0, 1):
            victim = leaders(cluster, topic_name)[partition]
            cluster.run("kill", victim)
            w.produce_for(3)
            cluster.run("restart", victim)
            w.produce_for(1)
        w.check()

        # A group whose __consumer_offsets partition lives on shard 1.
        log = cluster.node_log(1)
        offsets_shards = dict(re.findall(r"hosting a replica topic=__consumer_offsets partition=(\d+) .*shard=(\d)", log))
        assert offsets_shards, log[-4000:]

        def partition_of(key):
            h = 0
            for ch in key:
                h = (31 * h + ord(ch)) & 0xFFFFFFFF
            return (h & 0x7FFFFFFF) % len(offsets_shards)

        group = next(g for g in (f"{topic_name}-group{i}" for i in range(1000))
                     if offsets_shards[str(partition_of(g))] == "1")
        c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": group,
                      "auto.offset.reset": "earliest", "enable.auto.commit": False})
        c.subscribe([topic_name])
        got = 0
        deadline = time.time() + 60
        while got < 100 and time.time() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                got += 1
        c.commit(asynchronous=False)
        committed = {tp.partition: tp.offset for tp in c.committed([TopicPartition(topic_name, i) for i in range(4)], timeout=10)}
        c.close()
        # Positions count Raft's control batches too: at least one per record read.
        assert got == 100 and sum(max(o, 0) for o in committed.values()) >= 100, committed
        coordinator = admin(cluster).describe_consumer_groups([group])[group].result().coordinator.id
        cluster.run("kill", coordinator)

        def committed_again():
            c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": group})
            try:
                tps = c.committed([TopicPartition(topic_name, i) for i in range(4)], timeout=10)
                return {tp.partition: tp.offset for tp in tps} == committed
            except KafkaException:
                return False
            finally:
                c.close()

        wait_for(committed_again, what="the committed offsets, from the new coordinator")
    finally:
        cluster.run("stop")


def test_a_node_restarted_with_fewer_shards_keeps_its_replicas(workdir, topic_name):
    """A node's partitions are placed on shards modulo its shard count: restarted with one
    shard instead of two, a node hosts them all on shard 0, from the Raft state it stored,
    and counts in their quorums (with another node down, nothing acknowledged is missing)."""
    cluster = Cluster(workdir, cores=2).start()
    try:
        create(cluster, topic_name, partitions=6, rf=3)
        p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all", "enable.idempotence": True})
        for i in range(600):
            p.produce(topic_name, value=b"%d" % i, partition=i % 6)
        assert p.flush(60) == 0
        cluster.run("stop")
        cluster.run("restart", 1)
        cluster.run("restart", 2)
        cluster.env["TERN_CLUSTER_CORES"] = "1"
        cluster.run("restart", 3)
        wait_for(lambda: all(l > 0 for l in leaders(cluster, topic_name).values()), what="leaders")
        for i in range(600, 900):
            p.produce(topic_name, value=b"%d" % i, partition=i % 6)
        assert p.flush(60) == 0
        cluster.run("kill", 1)
        for i in range(900, 1200):
            p.produce(topic_name, value=b"%d" % i, partition=i % 6)
        assert p.flush(120) == 0
        seen, dups = consume_all(cluster, topic_name, 6, [b"%d" % i for i in range(1200)])
        missing = [i for i in range(1200) if b"%d" % i not in seen]
        assert (missing, dups) == ([], 0), cluster.logs()
        log = cluster.node_log(3)
        first_run, last_run = log[:log.rindex("joining the cluster")], log[log.rindex("joining the cluster"):]
        assert f"topic={topic_name} partition=1 group" in first_run and "shard=1" in first_run
        assert "shards=1" in last_run and f"topic={topic_name} partition=1 group" in last_run
        assert "shard=1" not in last_run, last_run[-3000:]
    finally:
        cluster.run("stop")


def test_group_offsets_survive_the_coordinator_dying(cluster, topic_name):
    create(cluster, topic_name, partitions=3, rf=3)
    p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
    for i in range(300):
        p.produce(topic_name, value=b"%d" % i, partition=i % 3)
    assert p.flush(30) == 0
    group = topic_name + "-group"

    def consume(n):
        c = Consumer({
            "bootstrap.servers": cluster.bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        })
        c.subscribe([topic_name])
        got = []
        deadline = time.time() + 60
        while len(got) < n and time.time() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                got.append(int(m.value()))
        c.commit(asynchronous=False)
        # Nothing more than asked for is waiting.
        extra = c.poll(3)
        c.close()
        return got, extra

    first, _ = consume(150)
    assert len(first) == 150
    described = admin(cluster).describe_consumer_groups([group])[group].result()
    victim = described.coordinator.id
    cluster.run("kill", victim)
    # A new member of the group resumes at the committed offsets, on the new coordinator.
    second, extra = consume(150)
    assert sorted(first + second) == list(range(300)), cluster.logs()
    assert extra is None or extra.error()
    described = admin(cluster).describe_consumer_groups([group])[group].result()
    assert described.coordinator.id != victim


def java_partition(key, partitions):
    """The partition of an internal topic holding `key`, as Kafka maps it (String.hashCode)."""
    h = 0
    for c in key.encode("utf-16-be").decode("utf-16-be"):
        h = (h * 31 + ord(c)) & 0xFFFFFFFF
    return (h & 0x7FFFFFFF) % partitions


def txn_coordinator(cluster, txn_id):
    """The node leading the transactional id's `__transaction_state` partition."""
    md = admin(cluster).list_topics("__transaction_state", timeout=10)
    parts = md.topics["__transaction_state"].partitions
    return parts[java_partition(txn_id, len(parts))].leader


def read_values(cluster, topic, partitions, isolation):
    """Every value of `topic` a reader with `isolation` reads from the start, sorted."""
    from test_transactions import read
    return sorted(v for _, _, v in read(cluster, topic, partitions, isolation, settle=3.0))


def test_kafka_python_transactions_span_nodes(cluster, topic_name):
    """kafka-python's transactional producer and read_committed consumer against a cluster:
    partitions led by several nodes, a commit and an abort."""
    from kafka import KafkaConsumer, KafkaProducer
    from kafka import TopicPartition as KTopicPartition

    create(cluster, topic_name, partitions=3, rf=3)
    assert len(set(leaders(cluster, topic_name).values())) > 1
    p = KafkaProducer(bootstrap_servers=cluster.bootstrap, transactional_id=topic_name + "-tx")
    p.init_transactions()
    p.begin_transaction()
    for i in range(6):
        p.send(topic_name, b"kept-%d" % i, partition=i % 3)
    p.commit_transaction()
    p.begin_transaction()
    for i in range(3):
        p.send(topic_name, b"dropped-%d" % i, partition=i % 3)
    p.flush()
    p.abort_transaction()
    p.begin_transaction()
    p.send(topic_name, b"last", partition=0)
    p.commit_transaction()
    p.close()

    def read(isolation):
        c = KafkaConsumer(bootstrap_servers=cluster.bootstrap, isolation_level=isolation,
                          auto_offset_reset="earliest", consumer_timeout_ms=3000)
        c.assign([KTopicPartition(topic_name, i) for i in range(3)])
        values = sorted(m.value for m in c)
        c.close()
        return values

    kept = sorted([b"kept-%d" % i for i in range(6)] + [b"last"])
    assert read("read_committed") == kept
    assert read("read_uncommitted") == sorted(kept + [b"dropped-%d" % i for i in range(3)])


def test_transactions_span_nodes_and_survive_the_coordinator_dying(cluster, topic_name):
    out, src = topic_name, topic_name + "-in"
    create(cluster, out, partitions=3, rf=3)
    create(cluster, src, partitions=1, rf=3)
    # The partitions have leaders on several nodes: the coordinator verifies produces and
    # writes markers through other nodes.
    assert len(set(leaders(cluster, out).values())) > 1
    txn_id = topic_name + "-tx"
    config = {"bootstrap.servers": cluster.bootstrap, "transactional.id": txn_id, "linger.ms": 5}
    p = Producer(config)
    p.init_transactions(60)
    p.begin_transaction()
    for i in range(6):
        p.produce(out, value=b"c%d" % i, partition=i % 3)
    p.commit_transaction(60)
    p.begin_transaction()
    for i in range(3):
        p.produce(out, value=b"a%d" % i, partition=i % 3)
    p.flush(60)
    p.abort_transaction(60)

    # Consume-transform-produce: the group's offsets commit with the output.
    plain = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
    for i in range(5):
        plain.produce(src, value=b"%d" % i, partition=0)
    assert plain.flush(30) == 0
    group = topic_name + "-g"
    c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": group, "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
    c.subscribe([src])
    got = []
    deadline = time.time() + 60
    while len(got) < 5 and time.time() < deadline:
        m = c.poll(1)
        if m is not None and not m.error():
            got.append(m)
    assert len(got) == 5
    p.begin_transaction()
    for i, m in enumerate(got):
        p.produce(out, value=b"t" + m.value(), partition=i % 3)
    p.send_offsets_to_transaction([TopicPartition(src, 0, 5)], c.consumer_group_metadata(), 60)
    p.commit_transaction(60)
    assert c.committed([TopicPartition(src, 0)], 10)[0].offset == 5
    c.close()

    # A transaction left open when its coordinator's node dies: a new instance of the producer
    # finds the new coordinator, which aborts it and fences the old instance.
    p.begin_transaction()
    for i in range(3):
        p.produce(out, value=b"open%d" % i, partition=i % 3)
    p.flush(60)
    victim = txn_coordinator(cluster, txn_id)
    cluster.run("kill", victim)
    p2 = Producer(config)
    p2.init_transactions(120)
    p2.begin_transaction()
    for i in range(3):
        p2.produce(out, value=b"after%d" % i, partition=i % 3)
    p2.commit_transaction(120)
    assert txn_coordinator(cluster, txn_id) != victim
    with pytest.raises(KafkaException):
        p.commit_transaction(30)

    committed = [b"c%d" % i for i in range(6)] + [b"t%d" % i for i in range(5)] + [b"after%d" % i for i in range(3)]
    assert read_values(cluster, out, 3, "read_committed") == sorted(committed), cluster.logs()
    uncommitted = committed + [b"a%d" % i for i in range(3)] + [b"open%d" % i for i in range(3)]
    assert read_values(cluster, out, 3, "read_uncommitted") == sorted(uncommitted)


def test_an_operator_finds_and_aborts_a_hanging_transaction_in_a_cluster(cluster, topic_name):
    import json

    create(cluster, topic_name, partitions=3, rf=3)
    p = Producer({"bootstrap.servers": cluster.bootstrap, "transactional.id": topic_name, "linger.ms": 5})
    p.init_transactions(60)
    p.begin_transaction()
    for i in range(3):
        p.produce(topic_name, value=b"hanging%d" % i, partition=i)
    p.flush(60)

    def txn(*args):
        return tern(cluster, "txn", *args)

    # Listed by whichever node coordinates it, described by its coordinator.
    listed = {r["transactional_id"]: r for r in json.loads(txn("list", "--json"))}
    assert listed[topic_name]["state"] == "Ongoing", listed
    desc = json.loads(txn("describe", topic_name, "--json"))
    assert desc["partitions"] == {topic_name: [0, 1, 2]}, desc
    # Each partition's leader knows the open transaction; the operator's abort goes to it and
    # is written through Raft: the stable offset moves past the marker.
    c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "ends", "isolation.level": "read_committed"})
    for partition in range(3):
        [prod] = json.loads(txn("producers", topic_name, "--partition", str(partition), "--json"))
        assert prod["txn_start_offset"] is not None, prod
        assert c.get_watermark_offsets(TopicPartition(topic_name, partition), timeout=10)[1] == 1
        txn("abort", topic_name, "--partition", str(partition), "--producer-id", str(prod["producer_id"]),
            "--producer-epoch", str(prod["producer_epoch"]))
        [prod] = json.loads(txn("producers", topic_name, "--partition", str(partition), "--json"))
        assert prod["txn_start_offset"] is None, prod
        # The open transaction's first record was at 1 (after the leader's first entry).
        assert c.get_watermark_offsets(TopicPartition(topic_name, partition), timeout=10)[1] == 3
    c.close()
    assert read_values(cluster, topic_name, 3, "read_committed") == []


def test_kip848_members_keep_their_partitions_when_the_coordinator_dies(workdir, topic_name):
    """A KIP-848 group's records are replicated in __consumer_offsets: the node that takes
    over coordination knows the members, so they carry on without losing partitions."""
    from test_groups import Member848, split_ok

    cluster = Cluster(workdir, flags="--group-consumer-heartbeat-interval-ms 300").start()
    try:
        create(cluster, topic_name, partitions=4, rf=3)
        p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
        for i in range(40):
            p.produce(topic_name, value=b"%d" % i, partition=i % 4)
        assert p.flush(30) == 0
        group = topic_name + "-848"
        members = [Member848(cluster, group, topic_name, {"group.protocol": "consumer"}) for _ in range(2)]
        wait_for(lambda: split_ok(members, 4) and all(m.assigned for m in members), what="a split")
        wait_for(lambda: len({v for m in members for _, _, v in m.received}) == 40, what="all records")
        before = [(set(m.assigned), len(m.events), list(m.revoked_ever)) for m in members]
        victim = admin(cluster).describe_consumer_groups([group])[group].result().coordinator.id
        cluster.run("kill", victim)
        wait_for(lambda: admin(cluster).describe_consumer_groups([group])[group].result().coordinator.id != victim,
                 what="a new coordinator")
        for i in range(40, 80):
            p.produce(topic_name, value=b"%d" % i, partition=i % 4)
        assert p.flush(60) == 0
        wait_for(lambda: len({v for m in members for _, _, v in m.received}) == 80, timeout=90,
                 what="records after the failover")
        # Several heartbeats went to the new coordinator meanwhile.
        time.sleep(1)
        after = [(set(m.assigned), len(m.events), list(m.revoked_ever)) for m in members]
        assert after == before, (before, after, cluster.logs())
        desc = admin(cluster).describe_consumer_groups([group])[group].result()
        assert len(desc.members) == 2
        for m in members:
            m.close()
    finally:
        cluster.run("stop")


def test_dynamic_broker_configs_are_cluster_metadata(cluster, topic_name):
    """A cluster-wide dynamic broker config is a metadata change: the controller takes it (other
    nodes answer NOT_CONTROLLER), every node applies it, and topics report it as their value."""
    from confluent_kafka.admin import ConfigResource, ConfigSource

    create(cluster, topic_name, partitions=1, rf=3)
    controller = admin(cluster).list_topics(timeout=10).controller_id
    other = next(n for n in (1, 2, 3) if n != controller)

    def alter(node, value):
        frame = kafka_wire.incremental_alter_configs_v0(4, "", [("log.retention.ms", 0, value)])
        with kafka_wire.connect(f"127.0.0.1:{cluster.port_of(node)}") as sock:
            return kafka_wire.parse_incremental_alter_configs_v0(kafka_wire.roundtrip(sock, frame))[0]

    assert alter(other, "3600000") == 41  # NOT_CONTROLLER
    assert alter(controller, "3600000") == 0
    res = ConfigResource(ConfigResource.Type.TOPIC, topic_name)

    def retention():
        c = admin(cluster).describe_configs([res])[res].result(10)["retention.ms"]
        return c.value, c.source

    wait_for(lambda: retention() == ("3600000", ConfigSource.DYNAMIC_DEFAULT_BROKER_CONFIG.value),
             what="the cluster-wide default on the topic")
    for node in (1, 2, 3):
        # Asked of that node: it applied the change from the metadata log.
        b = ConfigResource(ConfigResource.Type.BROKER, str(node))

        def seen():
            c = admin(cluster).describe_configs([b])[b].result(10)["log.retention.ms"]
            return c.value, c.source

        wait_for(lambda: seen() == ("3600000", ConfigSource.DYNAMIC_DEFAULT_BROKER_CONFIG.value),
                 what=f"node {node} to apply the change")


def test_min_insync_replicas_and_the_isr_follow_a_dead_follower(workdir, topic_name):
    cluster = Cluster(workdir, flags="--replica-lag-time-max-ms 1500").start()
    try:
        fs = admin(cluster).create_topics([
            NewTopic(topic_name, num_partitions=1, replication_factor=3, config={"min.insync.replicas": "3"})
        ])
        fs[topic_name].result(timeout=30)
        wait_for(lambda: leaders(cluster, topic_name)[0] >= 0, what="a leader")
        leader = leaders(cluster, topic_name)[0]

        def isr():
            # Asked of the leader itself: the ISR is the leader's knowledge.
            with kafka_wire.connect(f"127.0.0.1:{cluster.port_of(leader)}") as sock:
                return sorted(kafka_wire.metadata_v1(sock, topic_name)[0][2])

        def produce(acks):
            # No retries: NOT_ENOUGH_REPLICAS is retriable, and would end as a timeout.
            p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": acks, "retries": 0,
                          "message.timeout.ms": 10000})
            outcome = []
            p.produce(topic_name, value=b"x", on_delivery=lambda err, m: outcome.append(err))
            p.flush(30)
            return outcome[0]

        wait_for(lambda: isr() == [1, 2, 3], what="all replicas in sync")
        assert produce("all") is None
        follower = next(n for n in (1, 2, 3) if n != leader)
        cluster.run("kill", follower)
        wait_for(lambda: follower not in isr(), what="the dead follower to leave the ISR")
        err = produce("all")
        assert err is not None and err.name() == "NOT_ENOUGH_REPLICAS", err
        assert produce("1") is None
        cluster.run("restart", follower)
        wait_for(lambda: isr() == [1, 2, 3], what="the follower back in sync")
        assert produce("all") is None
    finally:
        cluster.run("stop")


def tern(cluster, *args):
    out = subprocess.run([TERN_BIN, *args, "-b", cluster.bootstrap], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_topic_and_cluster_commands(cluster, topic_name):
    import json

    assert "created topic" in tern(cluster, "topic", "create", topic_name, "-p", "3", "-r", "3", "-c", "retention.ms=3600000")
    wait_for(lambda: all(l >= 0 for l in leaders(cluster, topic_name).values()), what="leaders elected")
    p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
    for i in range(30):
        p.produce(topic_name, value=b"%d" % i, partition=i % 3)
    assert p.flush(30) == 0
    listed = json.loads(tern(cluster, "topic", "list", "--json"))
    assert {"topic": topic_name, "partitions": 3, "replication_factor": 3, "internal": False} in listed
    described = json.loads(tern(cluster, "topic", "describe", topic_name, "--json"))
    assert [d["partition"] for d in described] == [0, 1, 2]
    for d in described:
        assert sorted(d["replicas"]) == [1, 2, 3] and d["leader"] in d["replicas"]
        assert d["log_start"] == 0 and d["high_watermark"] >= 10  # 10 records and a control batch
    # `tern group` asks each group's coordinator and each partition's leader, whichever node it
    # starts from (the first of the bootstrap list): groups coordinated by other nodes too.
    groups = [f"{topic_name}-g{i}" for i in range(12)]
    for g in groups:
        c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": g, "enable.auto.commit": False})
        c.commit(offsets=[TopicPartition(topic_name, q, 2 + q) for q in range(3)], asynchronous=False)
        c.close()
    coordinators = {g: admin(cluster).describe_consumer_groups([g])[g].result().coordinator.id for g in groups}
    elsewhere = [g for g in groups if coordinators[g] != 1]
    assert elsewhere, coordinators
    listed = {r["group"] for r in json.loads(tern(cluster, "group", "list", "--json"))}
    assert set(groups) <= listed
    hw = {d["partition"]: d["high_watermark"] for d in described}
    for g in elsewhere[:2]:
        offsets = json.loads(tern(cluster, "group", "describe", g, "--json"))["offsets"]
        assert [(o["partition"], o["committed"], o["log_end"], o["lag"]) for o in offsets] == [
            (q, 2 + q, hw[q], hw[q] - 2 - q) for q in range(3)]
    reset = json.loads(tern(cluster, "group", "reset-offsets", elsewhere[0], "--topic", topic_name, "--to-earliest",
                            "--json"))
    assert [(r["partition"], r["committed"]) for r in reset] == [(0, 0), (1, 0), (2, 0)]
    assert "deleted group" in tern(cluster, "group", "delete", elsewhere[0])
    assert elsewhere[0] not in {r["group"] for r in json.loads(tern(cluster, "group", "list", "--json"))}
    assert "changed the configs" in tern(cluster, "topic", "alter-config", topic_name, "--set", "retention.ms=7200000")
    info = lambda: json.loads(tern(cluster, "cluster", "info", "--json"))  # noqa: E731
    # Partitions created moments ago (the groups' topic) may still be electing leaders.
    wait_for(lambda: info()["offline"] == [], what="every partition led")
    assert [n["node"] for n in info()["nodes"]] == [1, 2, 3]
    assert all(n["reachable"] for n in info()["nodes"]) and info()["controller"] in (1, 2, 3)
    cluster.run("kill", 3)
    assert [n["reachable"] for n in info()["nodes"]] == [True, True, False]
    assert "deleted topic" in tern(cluster, "topic", "delete", topic_name)
    # Every node applies the change as it learns of the commit.
    wait_for(
        lambda: topic_name not in [t["topic"] for t in json.loads(tern(cluster, "topic", "list", "--json"))],
        what="the topic gone from metadata",
    )


def test_a_follower_names_the_leader_when_it_refuses_a_produce(cluster, topic_name):
    """KIP-951: NOT_LEADER_OR_FOLLOWER comes with the current leader and its endpoint."""
    from kafka.protocol.producer import ProduceRequest, ProduceResponse

    create(cluster, topic_name, partitions=1, rf=3)
    leader = leaders(cluster, topic_name)[0]
    follower = next(n for n in (1, 2, 3) if n != leader)
    req = ProduceRequest[11](
        transactional_id=None,
        acks=-1,
        timeout_ms=10000,
        topic_data=[ProduceRequest[11].TopicProduceData(
            name=topic_name,
            partition_data=[ProduceRequest[11].TopicProduceData.PartitionProduceData(
                index=0, records=kafka_wire.record_batch(b"x"))],
        )],
    )
    req.with_header(correlation_id=7, client_id="kip-951")
    with kafka_wire.connect(f"127.0.0.1:{cluster.port_of(follower)}") as sock:
        sock.sendall(req.encode(header=True, framed=True))
        size = int.from_bytes(kafka_wire.recv_exact(sock, 4), "big")
        resp = ProduceResponse.decode(kafka_wire.recv_exact(sock, size), version=11, header=True)
    part = resp.responses[0].partition_responses[0]
    assert part.error_code == 6  # NOT_LEADER_OR_FOLLOWER
    assert part.current_leader.leader_id == leader and part.current_leader.leader_epoch >= 1
    assert [(e.node_id, e.port) for e in resp.node_endpoints] == [(leader, cluster.port_of(leader))]


def test_full_disks_on_a_follower_then_the_leader_lose_nothing(workdir, tmp_path, topic_name):
    """A node whose disk fills: its writes fail cleanly (it stops leading, it falls behind),
    the others go on, and it catches up once space returns; nothing acknowledged is lost."""
    if os.geteuid() != 0:
        pytest.skip("mounting a loop filesystem needs root")
    # One offsets partition: segment files are preallocated 4 MiB at a time.
    cluster = Cluster(workdir, flags="--offsets-partitions 1")
    os.makedirs(cluster.dir)
    mounts = {}
    for node in (1, 2, 3):
        image, mnt = tmp_path / f"fs{node}.img", os.path.join(cluster.dir, f"node{node}")
        os.makedirs(mnt)
        subprocess.run(["truncate", "-s", "128M", str(image)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
        mounted = subprocess.run(["mount", "-o", "loop", str(image), mnt], capture_output=True)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a loop filesystem here: {mounted.stderr.decode().strip()}")
        mounts[node] = mnt
    try:
        cluster.start()
        # Small segments: preallocation (never past segment.bytes) leaves little slack.
        admin(cluster).create_topics([NewTopic(topic_name, num_partitions=1, replication_factor=3,
                                               config={"segment.bytes": str(8 << 20)})])[topic_name].result(30)
        wait_for(lambda: leaders(cluster, topic_name)[0] >= 0, what="a leader")
        p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all", "enable.idempotence": True,
                      "linger.ms": 5, "message.timeout.ms": 120000})
        acked = {}

        def produce(n, start):
            for i in range(start, start + n):
                while True:
                    try:
                        p.produce(topic_name, value=b"%06d" % i + b"x" * 2000, partition=0,
                                  on_delivery=lambda e, m: e is None and acked.__setitem__(m.value()[:6], m.offset()))
                        break
                    except BufferError:
                        p.poll(0.1)
                p.poll(0)
            return start + n

        def fill(node):
            st = os.statvfs(mounts[node])
            filler = os.path.join(mounts[node], "filler")
            subprocess.run(["fallocate", "-l", str(st.f_bavail * st.f_frsize - 2 * 1024 * 1024), filler], check=True)
            return filler

        def isr():
            leader = leaders(cluster, topic_name)[0]
            with kafka_wire.connect(f"127.0.0.1:{cluster.port_of(leader)}") as sock:
                return sorted(kafka_wire.metadata_v1(sock, topic_name)[0][2])

        nxt = produce(500, 0)
        assert p.flush(60) == 0
        for role in ("follower", "leader"):
            leader = leaders(cluster, topic_name)[0]
            victim = leader if role == "leader" else next(n for n in (1, 2, 3) if n != leader)
            filler = fill(victim)
            nxt = produce(10000, nxt)
            assert p.flush(120) == 0, cluster.logs()
            os.remove(filler)
            # Space is back: the node writes again and catches up.
            wait_for(lambda: isr() == [1, 2, 3], timeout=90, what=f"node {victim} back in sync")
        assert len(acked) == nxt
        seen, dups = consume_all(cluster, topic_name, 1, {v + b"x" * 2000 for v in acked})
        assert dups == 0
        by_key = {v[:6]: o for v, (_, o) in seen.items()}
        assert by_key == acked, cluster.logs()
        assert cluster.run("status").count("running") == 3, cluster.logs()
        # The disks did fill: writes failed on both victims.
        failed = [i for i in (1, 2, 3) if "write failed" in open(os.path.join(cluster.dir, f"node{i}.log"), errors="replace").read()]
        assert len(failed) == 2, failed
    finally:
        try:
            cluster.run("stop")
        finally:
            for mnt in mounts.values():
                subprocess.run(["umount", "-l", mnt], check=False)


def wire_call(port, request, response_class, version):
    """Sends a kafka-python protocol request to one node and decodes its answer."""
    request.with_header(correlation_id=9, client_id="epoch-test")
    with kafka_wire.connect(f"127.0.0.1:{port}") as sock:
        sock.sendall(request.encode(header=True, framed=True))
        size = int.from_bytes(kafka_wire.recv_exact(sock, 4), "big")
        return response_class.decode(kafka_wire.recv_exact(sock, size), version=version, header=True)


def test_leader_epochs_fence_stale_readers_and_say_where_epochs_end(cluster, topic_name):
    """KIP-320: OffsetForLeaderEpoch answers where an epoch ends; a Fetch naming an older
    epoch is FENCED_LEADER_EPOCH, a newer one UNKNOWN_LEADER_EPOCH."""
    from kafka.protocol.consumer import (
        FetchRequest, FetchResponse, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse)

    create(cluster, topic_name, partitions=1, rf=3)
    p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
    for i in range(5):
        p.produce(topic_name, value=b"%d" % i, partition=0)
    assert p.flush(30) == 0
    first = leaders(cluster, topic_name)[0]
    # A new leader, in a later epoch, takes five more.
    cluster.run("kill", first)
    wait_for(lambda: leaders(cluster, topic_name)[0] not in (-1, first), what="a new leader")
    for i in range(5, 10):
        p.produce(topic_name, value=b"%d" % i, partition=0)
    assert p.flush(60) == 0
    leader = leaders(cluster, topic_name)[0]
    port = cluster.port_of(leader)

    def epoch_end(current, epoch):
        req = OffsetForLeaderEpochRequest[4](replica_id=-1, topics=[
            OffsetForLeaderEpochRequest[4].OffsetForLeaderTopic(topic=topic_name, partitions=[
                OffsetForLeaderEpochRequest[4].OffsetForLeaderTopic.OffsetForLeaderPartition(
                    partition=0, current_leader_epoch=current, leader_epoch=epoch)])])
        part = wire_call(port, req, OffsetForLeaderEpochResponse, 4).topics[0].partitions[0]
        return part.error_code, part.leader_epoch, part.end_offset

    def fetch_partition(current, node=None):
        req = FetchRequest[12](
            replica_id=-1, max_wait_ms=0, min_bytes=1, max_bytes=1 << 20, isolation_level=0,
            session_id=0, session_epoch=-1, forgotten_topics_data=[], rack_id="",
            topics=[FetchRequest[12].FetchTopic(topic=topic_name, partitions=[
                FetchRequest[12].FetchTopic.FetchPartition(
                    partition=0, current_leader_epoch=current, fetch_offset=0, last_fetched_epoch=-1,
                    log_start_offset=-1, partition_max_bytes=1 << 20)])])
        resp = wire_call(cluster.port_of(node or leader), req, FetchResponse, 12)
        return resp.responses[0].partitions[0]

    def fetch_error(current):
        return fetch_partition(current).error_code

    error, epoch, end = epoch_end(-1, 1 << 20)
    assert error == 0 and epoch >= 2
    # Epoch 1 (the first leader's) ends where the new leader's first entry starts: after the
    # first leader's control batch and five records.
    assert epoch_end(epoch, 1) == (0, 1, 6)
    assert fetch_error(epoch) == 0
    assert fetch_error(epoch - 1) == 74  # FENCED_LEADER_EPOCH
    assert fetch_error(epoch + 1) == 75  # UNKNOWN_LEADER_EPOCH
    assert epoch_end(epoch - 1, 1)[0] == 74
    # A follower refuses the read and names the leader (KIP-951).
    follower = next(n for n in (1, 2, 3) if n not in (leader, first))
    refused = fetch_partition(epoch, node=follower)
    assert refused.error_code == 6
    assert (refused.current_leader.leader_id, refused.current_leader.leader_epoch) == (leader, epoch)


def test_the_whole_cluster_restarts_with_every_committed_record(cluster, topic_name):
    create(cluster, topic_name, partitions=3, rf=3)
    p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all", "enable.idempotence": True})
    acked = {}
    for i in range(300):
        p.produce(topic_name, value=b"r%d" % i, partition=i % 3,
                  on_delivery=lambda err, m: err is None and acked.__setitem__(m.value(), (m.partition(), m.offset())))
    assert p.flush(30) == 0 and len(acked) == 300
    # A clean stop of every node, then a crash of all of them after a restart.
    cluster.run("stop")
    cluster.start()
    seen, dups = consume_all(cluster, topic_name, 3, acked)
    assert seen == acked and dups == 0, cluster.logs()
    for node in (1, 2, 3):
        cluster.run("kill", node)
    cluster.start()
    # The restarted cluster takes new records after the old ones.
    more = {}
    p2 = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
    for i in range(30):
        p2.produce(topic_name, value=b"s%d" % i, partition=i % 3,
                   on_delivery=lambda err, m: err is None and more.__setitem__(m.value(), (m.partition(), m.offset())))
    assert p2.flush(60) == 0 and len(more) == 30
    everything = {**acked, **more}
    seen, dups = consume_all(cluster, topic_name, 3, everything)
    assert seen == everything and dups == 0, cluster.logs()


def test_deleted_records_stay_deleted_when_another_replica_leads(cluster, topic_name):
    create(cluster, topic_name, partitions=1, rf=3)
    p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
    acked = {}
    for i in range(100):
        p.produce(topic_name, value=b"d%d" % i, partition=0,
                  on_delivery=lambda err, m: err is None and acked.__setitem__(m.value(), m.offset()))
    assert p.flush(30) == 0 and len(acked) == 100
    # Raft's control batches take offsets too: delete before record 60, wherever it is.
    cut = acked[b"d60"]
    tp = TopicPartition(topic_name, 0, cut)
    # Answered once every in-sync replica starts there: the low watermark.
    assert admin(cluster).delete_records([tp])[tp].result(30).low_watermark == cut

    def watermarks():
        # A new client each time: one that knew the dead leader may keep asking it a while.
        c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "unused"})
        try:
            return c.get_watermark_offsets(TopicPartition(topic_name, 0), timeout=5, cached=False)
        except KafkaException:
            return None
        finally:
            c.close()

    def in_sync():
        md = admin(cluster).list_topics(topic_name, timeout=10)
        return len(md.topics[topic_name].partitions[0].isrs) == 3

    def low_after_failover():
        wait_for(in_sync, what="every replica in sync")
        victim = leaders(cluster, topic_name)[0]
        cluster.run("kill", victim)
        wait_for(lambda: leaders(cluster, topic_name)[0] not in (victim, -1), what="a new leader")
        wait_for(watermarks, what="the new leader answers ListOffsets")
        low, _ = watermarks()
        cluster.run("restart", victim)
        return low

    # Two failovers: the first leader's copy, then a second replica's, and the last one serves.
    assert low_after_failover() == cut, cluster.logs()
    assert low_after_failover() == cut, cluster.logs()
    kept = {v: o for v, o in acked.items() if o >= cut}
    seen, dups = consume_all(cluster, topic_name, 1, kept)
    assert {v: o for v, (_, o) in seen.items()} == kept and dups == 0, seen


def test_a_broker_joins_and_partitions_move_onto_it_online(workdir, topic_name):
    """A fourth node joins as a broker (not a voter); partitions move onto it with
    AlterPartitionReassignments while producers write, preferred leaders are elected with
    ElectLeaders, and when it dies it is fenced, its replicas shown offline."""
    import json
    import threading

    from kafka import KafkaAdminClient
    from kafka import TopicPartition as KTP
    from kafka.errors import InvalidReplicationAssignmentError

    acked, stop = {}, threading.Event()
    cluster = Cluster(workdir, flags="--broker-session-timeout-ms 2000").start()
    try:
        create(cluster, topic_name, partitions=2, rf=3)

        def produce():
            p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all", "enable.idempotence": True,
                          "linger.ms": 5})
            i = 0

            def done(err, m):
                if err is None:
                    acked[m.value()] = (m.partition(), m.offset())
            while not stop.is_set():
                try:
                    p.produce(topic_name, value=b"r%d" % i, partition=i % 2, on_delivery=done)
                except BufferError:
                    p.poll(0.1)
                    continue
                p.poll(0)
                i += 1
                time.sleep(0.002)
            assert p.flush(60) == 0

        writer = threading.Thread(target=produce, daemon=True)
        writer.start()
        cluster.run("add", 4)
        ka = KafkaAdminClient(bootstrap_servers=cluster.bootstrap)
        wait_for(lambda: sorted(b["broker_id"] for b in ka.describe_cluster()["brokers"]) == [1, 2, 3, 4],
                 what="the new broker registered")
        # A move to a node that does not exist is refused; the partition stays put.
        refused = ka.alter_partition_reassignments({KTP(topic_name, 0): [9, 2, 3]})
        assert refused[KTP(topic_name, 0)] is InvalidReplicationAssignmentError, refused
        moved = ka.alter_partition_reassignments({KTP(topic_name, 0): [4, 2, 3], KTP(topic_name, 1): [4, 3, 2]})
        assert list(moved.values()) == [None, None], moved
        moving = ka.list_partition_reassignments()
        assert all(m["adding_replicas"] == [4] and m["removing_replicas"] == [1] for m in moving.values()), moving
        wait_for(lambda: ka.list_partition_reassignments() == {}, timeout=60, what="the moves done")

        def partitions():
            return {p["partition_index"]: p for p in ka.describe_topics([topic_name])[0]["partitions"]}
        # Every node learns of the finished moves from the metadata log, a moment apart.
        wait_for(lambda: [partitions()[p]["replica_nodes"] for p in (0, 1)] == [[4, 2, 3], [4, 3, 2]],
                 what="every node to know the moves are done")
        result = ka.elect_leaders(0, {topic_name: [0, 1]}, raise_errors=False)
        assert all(r.error_code in (0, 84) for t in result.replica_election_results for r in t.partition_result)
        wait_for(lambda: [partitions()[p]["leader_id"] for p in (0, 1)] == [4, 4], what="node 4 leading")

        def dirs(node):
            found = {}
            for b in ka.describe_log_dirs():
                if b["broker"] == node:
                    for d in b["log_dirs"]:
                        for t in d["topics"]:
                            found[t["name"]] = sorted(p["partition_index"] for p in t["partitions"])
            return found.get(topic_name, [])
        assert dirs(4) == [0, 1]
        wait_for(lambda: dirs(1) == [], what="node 1's copies removed")
        stop.set()
        writer.join()
        assert len(acked) > 100
        seen, dups = consume_all(cluster, topic_name, 2, acked)
        assert dups == 0 and {v: seen.get(v) for v in acked} == acked

        # Node 4 dies: leadership moves, and the controller fences it.
        cluster.run("kill", 4)
        wait_for(lambda: all(partitions()[p]["leader_id"] in (2, 3) for p in (0, 1)), what="new leaders")
        wait_for(lambda: all(partitions()[p]["offline_replicas"] == [4] for p in (0, 1)), what="offline replicas")
        # `tern cluster info` may ask a node a moment behind the one that answered above.
        def info():
            return json.loads(tern(cluster, "cluster", "info", "--json"))

        wait_for(lambda: [(n["node"], n["fenced"]) for n in info()["nodes"]]
                 == [(1, False), (2, False), (3, False), (4, True)], what="node 4 fenced in cluster info")
        # The leaders' next reports (twice a second) leave the fenced node out of the ISR.
        wait_for(lambda: all(p in info()["under_replicated"] for p in (f"{topic_name}-0", f"{topic_name}-1")),
                 what="the partitions under-replicated in cluster info")
        # New partitions go to the nodes that are not fenced.
        admin(cluster).create_partitions([NewPartitions(topic_name, 3)])[topic_name].result(timeout=30)
        wait_for(lambda: partitions().get(2, {}).get("leader_id", -1) >= 0, what="the new partition led")
        assert sorted(partitions()[2]["replica_nodes"]) == [1, 2, 3]
    except BaseException:
        print(cluster.logs(nodes=4))
        raise
    finally:
        stop.set()
        cluster.run("stop")


def test_a_consumer_reads_from_the_in_sync_replica_in_its_rack(workdir, topic_name):
    """KIP-392: the leader sends a consumer with `client.rack` to the in-sync follower in that
    rack, which serves it up to its high watermark; every record arrives once, in order."""
    import json

    cluster = Cluster(workdir, racks="rack-a,rack-b,rack-c").start()
    try:
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic as KNewTopic

        KafkaAdminClient(bootstrap_servers=cluster.bootstrap).create_topics(
            [KNewTopic(topic_name, num_partitions=-1, replication_factor=-1, replica_assignments={0: [1, 2, 3]})]
        )
        wait_for(lambda: leaders(cluster, topic_name).get(0, -1) >= 0, what="a leader")
        ka_leader = leaders(cluster, topic_name)[0]
        near = next(n for n in (3, 2, 1) if n != ka_leader)
        p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
        for i in range(500):
            p.produce(topic_name, value=b"%d" % i)
        assert p.flush(30) == 0
        stats = []
        c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "near", "client.rack": f"rack-{'abc'[near - 1]}",
                      "auto.offset.reset": "earliest", "statistics.interval.ms": 200,
                      "stats_cb": lambda s: stats.append(json.loads(s))})
        c.subscribe([topic_name])
        got = []
        deadline = time.time() + 60
        while len(got) < 500 and time.time() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                got.append(int(m.value()))
        for i in range(500, 600):
            p.produce(topic_name, value=b"%d" % i)
        assert p.flush(30) == 0
        while len(got) < 600 and time.time() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                got.append(int(m.value()))
        c.poll(0.5)
        c.close()
        assert got == list(range(600))

        def fetched_from(s):
            part = s.get("topics", {}).get(topic_name, {}).get("partitions", {}).get("0", {})
            return part.get("leader"), part.get("broker")
        assert (ka_leader, near) in [fetched_from(s) for s in stats], [fetched_from(s) for s in stats][-5:]
    finally:
        cluster.run("stop")


def test_leadership_returns_to_preferred_replicas_after_a_node_comes_back(workdir, topic_name):
    """Automatic leader rebalance: a restarted node gets its partitions' leadership back once
    it is in sync, so leadership stays spread over the nodes."""
    cluster = Cluster(workdir, flags="--leader-imbalance-check-interval-ms 500").start()
    try:
        create(cluster, topic_name, partitions=3, rf=3)
        md = lambda: admin(cluster).list_topics(topic_name, timeout=10).topics[topic_name].partitions  # noqa: E731

        def on_preferred():
            return all(p.leader == p.replicas[0] for p in md().values())
        wait_for(on_preferred, what="preferred leaders")
        assert sorted(p.leader for p in md().values()) == [1, 2, 3]
        victim = md()[0].leader
        cluster.run("kill", victim)
        wait_for(lambda: md()[0].leader not in (-1, victim), what="another leader")
        p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
        for i in range(30):
            p.produce(topic_name, value=b"%d" % i, partition=i % 3)
        assert p.flush(30) == 0
        cluster.run("restart", victim)
        wait_for(on_preferred, timeout=60, what="leadership handed back")
    finally:
        cluster.run("stop")


def test_the_metadata_log_is_compacted_and_nodes_start_from_its_base(cluster, topic_name):
    """Every metadata record is a whole snapshot: once enough lie behind the newest, each node
    moves its log start there; a restarted node and a node that joins later start from it."""
    import json

    names = [f"{topic_name}-{i}" for i in range(12)]
    for name in names:
        tern(cluster, "topic", "create", name, "-p", "1", "-r", "3")
    for name in names[:6]:
        tern(cluster, "topic", "delete", name)

    def log_start(node):
        path = os.path.join(cluster.dir, f"node{node}", "data", "__cluster_metadata-0", "log-start-offset")
        return int(open(path).read()) if os.path.exists(path) else 0
    wait_for(lambda: all(log_start(n) > 0 for n in (1, 2, 3)), what="the metadata log compacted")

    def topics(node):
        out = subprocess.run([TERN_BIN, "topic", "list", "--json", "-b", f"127.0.0.1:{cluster.port_of(node)}"],
                             capture_output=True, text=True, timeout=60)
        return sorted(t["topic"] for t in json.loads(out.stdout)) if out.returncode == 0 else None
    expected = sorted(names[6:] + ["__consumer_offsets", "__transaction_state"])
    wait_for(lambda: topics(1) == expected, what="the topics on node 1")
    cluster.run("kill", 3)
    cluster.run("restart", 3)
    wait_for(lambda: topics(3) == expected, what="the topics on the restarted node")
    cluster.run("add", 4)
    wait_for(lambda: topics(4) == expected, what="the topics on a node that joined after compaction")


def test_a_single_nodes_topics_move_into_a_cluster(workdir, topic_name):
    """A single node's data dir started in cluster mode (a quorum of itself) keeps its topics:
    every record at the same offset, the groups' committed offsets, and writes go on; the
    metadata file is renamed, and a restart does not move anything again."""
    from conftest import Broker, free_port

    data = os.path.join(workdir, f"single-{topic_name}", "data")
    os.makedirs(os.path.dirname(data))
    broker = Broker(data, ["--cores", "1"]).start()

    def read_all(expect):
        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "unused",
                      "enable.auto.commit": False})
        c.assign([TopicPartition(topic_name, p, 0) for p in range(3)])
        seen = {}
        deadline = time.time() + 60
        while len(seen) < expect and time.time() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                seen[m.value()] = (m.partition(), m.offset())
        c.close()
        return seen

    def committed(group):
        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group})
        try:
            tps = c.committed([TopicPartition(topic_name, p) for p in range(3)], timeout=20)
            return {tp.partition: tp.offset for tp in tps}
        finally:
            c.close()

    try:
        single = AdminClient({"bootstrap.servers": broker.bootstrap})
        single.create_topics([NewTopic(topic_name, num_partitions=3, replication_factor=1)])[topic_name].result(30)
        p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "enable.idempotence": True})
        for i in range(300):
            p.produce(topic_name, value=b"v%d" % i, partition=i % 3)
        assert p.flush(30) == 0
        group = topic_name + "-group"
        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                      "auto.offset.reset": "earliest", "enable.auto.commit": False})
        c.subscribe([topic_name])
        got = 0
        deadline = time.time() + 60
        while got < 100 and time.time() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                got += 1
        c.commit(asynchronous=False)
        c.close()
        before = read_all(300)
        offsets = committed(group)
        assert len(before) == 300 and sum(max(o, 0) for o in offsets.values()) == 100, offsets
        broker.stop()

        rpc = free_port()
        broker.extra_args = ["--cores", "1", "--node-id", "1", "--rpc-listen", f"127.0.0.1:{rpc}",
                             "--controller-quorum", f"1@127.0.0.1:{rpc}"]
        broker.start()
        try:
            wait_for(lambda: "moved the single node's topics into the cluster" in broker.read_log(),
                     what="the topics moved into the cluster")
        except AssertionError:
            print("LOG", broker.read_log()[-8000:])
            raise
        assert read_all(300) == before
        assert committed(group) == offsets, broker.read_log()[-30000:]
        acked = []
        p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "enable.idempotence": True})
        for i in range(30):
            p.produce(topic_name, value=b"w%d" % i, partition=i % 3,
                      on_delivery=lambda err, m: acked.append((err, m.partition(), m.offset())))
        assert p.flush(30) == 0
        ends = {part: max(o for (q, o) in before.values() if q == part) for part in range(3)}
        assert all(err is None and off > ends[part] for err, part, off in acked), acked
        wait_for(lambda: os.path.exists(os.path.join(data, "cluster-meta.json.migrated")),
                 what=f"the metadata file renamed\n{broker.read_log()[-3000:]}")
        assert not os.path.exists(os.path.join(data, "cluster-meta.json"))

        broker.stop()
        broker.start()
        assert len(read_all(330)) == 330
        assert broker.read_log().count("moved the single node's topics into the cluster") == 1
    finally:
        broker.stop()


def test_producer_ids_come_in_blocks_from_the_controller_and_never_repeat(cluster):
    """As KRaft's AllocateProducerIds: each node hands out ids from a block of 1,000 the
    controller committed; a restarted node, or one asking a new controller, gets a new block,
    so no id is ever given twice."""
    from kafka.protocol.producer import InitProducerIdRequest, InitProducerIdResponse

    def init_producer_id(node):
        def attempt():
            req = InitProducerIdRequest[1](transactional_id=None, transaction_timeout_ms=-1)
            resp = wire_call(cluster.port_of(node), req, InitProducerIdResponse, 1)
            return resp.producer_id if resp.error_code == 0 else None
        got = []
        # COORDINATOR_LOAD_IN_PROGRESS while no controller is known or it cannot commit.
        wait_for(lambda: got.append(attempt()) or got[-1] is not None, what=f"a producer id from node {node}")
        return got[-1]

    given = []
    for node in (1, 2, 3):
        ids = [init_producer_id(node) for _ in range(3)]
        assert ids == list(range(ids[0], ids[0] + 3)), "consecutive ids of the node's block"
        given += ids
    blocks = {i // 1000 for i in given}
    assert len(blocks) == 3, f"one block per node: {given}"
    # A restarted node's unused ids are lost; it takes a new block.
    controller = admin(cluster).list_topics(timeout=10).controller_id
    other = next(n for n in (1, 2, 3) if n != controller)
    cluster.run("kill", other)
    cluster.run("restart", other)
    fresh = init_producer_id(other)
    assert fresh // 1000 not in blocks, (fresh, given)
    blocks.add(fresh // 1000)
    given.append(fresh)
    # The controller dies: its successor goes on from the committed counter. A node restarted
    # meanwhile, and the old controller coming back, both take new blocks.
    cluster.run("kill", controller)
    survivors = [n for n in (1, 2, 3) if n != controller]

    def new_controller():
        c = AdminClient({"bootstrap.servers": f"127.0.0.1:{cluster.port_of(survivors[0])}"})
        return c.list_topics(timeout=10).controller_id not in (-1, controller)

    wait_for(new_controller, what="a new controller")
    cluster.run("kill", survivors[1])
    cluster.run("restart", survivors[1])
    cluster.run("restart", controller)
    for node in (survivors[1], controller):
        i = init_producer_id(node)
        assert i // 1000 not in blocks, (i, given)
        blocks.add(i // 1000)
        given.append(i)
    assert all(0 <= i < 1 << 40 for i in given)
    assert len(set(given)) == len(given)


def test_tern_bench_sends_each_partition_to_its_leader(cluster, topic_name, tmp_path):
    """tern-bench creates an RF=3 topic and produces and consumes through each partition's
    leader: with partitions led by every node, a broker-blind client would be refused with
    NOT_LEADER_OR_FOLLOWER (counted as errors)."""
    bench = os.path.join(os.path.dirname(TERN_BIN), "tern-bench")
    out = tmp_path / "summary.json"
    subprocess.run(
        # A bootstrap list whose first broker does not answer, as clients are given.
        [bench, "--brokers", f"127.0.0.1:1,127.0.0.1:{cluster.port_of(1)}", "--workload", "both", "--topic", topic_name,
         "--partitions", "6", "--replication-factor", "3", "--acks", "-1", "--warmup", "1", "--duration", "10",
         "--records", "6000", "--mb-rate", "2", "--record-size", "512", "--json", str(out)],
        check=True, capture_output=True, timeout=90,
    )
    s = json.loads(out.read_text())
    assert s["errors"] == 0 and s["produced_records_per_sec"] > 0 and s["consumed_records_per_sec"] > 0
    assert len(set(leaders(cluster, topic_name).values())) > 1, "partitions led by several nodes"
    md = admin(cluster).list_topics(topic_name, timeout=10).topics[topic_name]
    assert all(len(p.replicas) == 3 for p in md.partitions.values())
