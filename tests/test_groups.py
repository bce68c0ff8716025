"""Consumer groups with confluent-kafka and kafka-python against Tern."""

import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import wait_for

GROUP_ARGS = ("--group-initial-rebalance-delay-ms", "300")


@pytest.fixture(scope="module")
def gbroker(workdir):
    from conftest import new_broker

    b = new_broker(workdir, *GROUP_ARGS).start()
    yield b
    assert b.alive(), b.read_log()
    b.stop()


def make_topic(broker, name, partitions=6, records=600):
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    a.create_topics([NewTopic(name, partitions, 1)])[name].result(30)
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    for i in range(records):
        p.produce(name, key=b"k%d" % i, value=b"%d" % i, partition=i % partitions)
    assert p.flush(30) == 0


class Member:
    """A confluent-kafka group member polling in its own thread, recording what it owns."""

    def __init__(self, broker, group, topic, **extra):
        conf = {
            "bootstrap.servers": broker.bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
        }
        conf.update(extra)
        self.cooperative = conf.get("partition.assignment.strategy") == "cooperative-sticky"
        self.assigned = set()
        self.revoked_ever = []
        self.received = []
        self.events = []
        self.stop = threading.Event()
        self.consumer = Consumer(conf)
        self.consumer.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _on_assign(self, consumer, partitions):
        if self.cooperative:
            consumer.incremental_assign(partitions)
        self.assigned |= {p.partition for p in partitions}
        self.events.append(("assign", sorted(p.partition for p in partitions)))

    def _on_revoke(self, consumer, partitions):
        if self.cooperative:
            consumer.incremental_unassign(partitions)
        elif self.received:
            try:
                self.consumer.commit(asynchronous=False)
            except Exception as e:  # noqa: BLE001 - a failed commit only means re-delivery
                self.events.append(("commit-failed", str(e)))
        self.assigned -= {p.partition for p in partitions}
        self.revoked_ever.extend(p.partition for p in partitions)
        self.events.append(("revoke", sorted(p.partition for p in partitions)))

    def _run(self):
        while not self.stop.is_set():
            m = self.consumer.poll(0.2)
            if m is None or m.error():
                continue
            self.received.append((m.partition(), m.offset(), m.value()))
            self.consumer.commit(message=m, asynchronous=True)

    def close(self):
        self.stop.set()
        self.thread.join(10)
        self.consumer.close()



def split_ok(members, partitions=6):
    owned = [m.assigned for m in members]
    union = set().union(*owned)
    return union == set(range(partitions)) and sum(len(o) for o in owned) == partitions


@pytest.mark.parametrize("strategy", ["range", "roundrobin"])
def test_members_split_partitions_and_consume_everything(gbroker, topic_name, strategy):
    make_topic(gbroker, topic_name)
    group = f"g-{uuid.uuid4().hex[:6]}"
    conf = {"partition.assignment.strategy": strategy}
    a = Member(gbroker, group, topic_name, **conf)
    b = Member(gbroker, group, topic_name, **conf)
    wait_for(lambda: split_ok([a, b]) and a.assigned and b.assigned, what="two-way split")
    c = Member(gbroker, group, topic_name, **conf)
    wait_for(lambda: split_ok([a, b, c]) and all(m.assigned for m in (a, b, c)), what="three-way split")
    wait_for(lambda: len({v for m in (a, b, c) for _, _, v in m.received}) == 600, what="all records")
    for m in (a, b, c):
        m.close()
    admin = AdminClient({"bootstrap.servers": gbroker.bootstrap})
    desc = admin.describe_consumer_groups([group])[group].result(10)
    assert desc.state.name in ("EMPTY", "DEAD") or len(desc.members) == 0


def test_killed_member_is_evicted_after_session_timeout(gbroker, topic_name, tmp_path):
    import subprocess
    import sys

    make_topic(gbroker, topic_name)
    group = f"g-{uuid.uuid4().hex[:6]}"
    script = tmp_path / "member.py"
    script.write_text(
        "import sys\n"
        "from confluent_kafka import Consumer\n"
        f"c = Consumer({{'bootstrap.servers': '{gbroker.bootstrap}', 'group.id': '{group}',"
        " 'session.timeout.ms': 6000, 'heartbeat.interval.ms': 500, 'auto.offset.reset': 'earliest'})\n"
        f"c.subscribe(['{topic_name}'], on_assign=lambda c, ps: print('assigned', len(ps), flush=True))\n"
        "while True:\n"
        "    c.poll(0.2)\n"
    )
    other = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
    stays = Member(gbroker, group, topic_name)
    wait_for(lambda: stays.assigned and len(stays.assigned) < 6, what="split with the other process")
    other.kill()
    other.wait()
    wait_for(lambda: stays.assigned == set(range(6)), timeout=60, what="eviction and takeover")
    stays.close()


def test_committed_offsets_survive_restart(fresh_broker, topic_name):
    broker = fresh_broker(*GROUP_ARGS)
    make_topic(broker, topic_name, partitions=2, records=100)
    group = f"g-{uuid.uuid4().hex[:6]}"
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic_name])
    got = []
    while len(got) < 60:
        m = c.poll(1.0)
        if m is not None and not m.error():
            got.append(m)
    positions = {tp.partition: tp.offset for tp in c.position(c.assignment())}
    # Commit with metadata strings and leader epochs: they must come back after the restart.
    c.commit(offsets=[TopicPartition(topic_name, p, o, metadata=f"meta-{p}", leader_epoch=0) for p, o in positions.items()],
             asynchronous=False)
    c.close()
    broker.restart()
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "auto.offset.reset": "earliest"})
    committed = c.committed([TopicPartition(topic_name, 0), TopicPartition(topic_name, 1)], timeout=10)
    assert {tp.partition: tp.offset for tp in committed} == positions
    assert {tp.partition: tp.metadata for tp in committed} == {0: "meta-0", 1: "meta-1"}
    assert all(tp.leader_epoch == 0 for tp in committed)
    c.subscribe([topic_name])
    rest = []
    deadline = time.time() + 30
    while len(rest) < 40 and time.time() < deadline:
        m = c.poll(1.0)
        if m is not None and not m.error():
            rest.append(m)
    c.close()
    seen = {(m.partition(), m.offset()) for m in got}
    assert len(rest) == 40
    assert not seen & {(m.partition(), m.offset()) for m in rest}, "nothing before the commit is read again"


def test_cooperative_sticky_never_revokes_kept_partitions(gbroker, topic_name):
    make_topic(gbroker, topic_name)
    group = f"g-{uuid.uuid4().hex[:6]}"
    strategy = {"partition.assignment.strategy": "cooperative-sticky"}
    a = Member(gbroker, group, topic_name, **strategy)
    wait_for(lambda: a.assigned == set(range(6)), what="first member owns all")
    before = set(a.assigned)
    b = Member(gbroker, group, topic_name, **strategy)
    wait_for(lambda: split_ok([a, b]) and b.assigned, what="cooperative split")
    kept = before & a.assigned
    assert kept and not (set(a.revoked_ever) & kept), "partitions that stayed were never revoked"
    assert set(a.revoked_ever) == b.assigned
    a.close()
    b.close()


def test_static_member_restart_keeps_assignment_without_rebalance(gbroker, topic_name):
    make_topic(gbroker, topic_name)
    group = f"g-{uuid.uuid4().hex[:6]}"
    a = Member(gbroker, group, topic_name, **{"group.instance.id": "a-1", "session.timeout.ms": 20000})
    b = Member(gbroker, group, topic_name, **{"group.instance.id": "b-1", "session.timeout.ms": 20000})
    wait_for(lambda: split_ok([a, b]) and a.assigned and b.assigned, what="static split")
    admin = AdminClient({"bootstrap.servers": gbroker.bootstrap})
    before_b = set(b.assigned)
    a_events = len(a.events)
    b.stop.set()
    b.thread.join(10)
    b.consumer.close()  # static members do not leave the group on close
    b2 = Member(gbroker, group, topic_name, **{"group.instance.id": "b-1", "session.timeout.ms": 20000})
    wait_for(lambda: b2.assigned, what="restarted static member assigned")
    assert b2.assigned == before_b
    time.sleep(2)
    assert len(a.events) == a_events, "the other member saw no rebalance"
    desc = admin.describe_consumer_groups([group])[group].result(10)
    assert sorted(m.group_instance_id for m in desc.members) == ["a-1", "b-1"]
    a.close()
    b2.close()


def test_kafka_python_group(gbroker, topic_name):
    from kafka import KafkaConsumer

    make_topic(gbroker, topic_name, partitions=3, records=300)
    group = f"g-{uuid.uuid4().hex[:6]}"
    c = KafkaConsumer(topic_name, bootstrap_servers=gbroker.bootstrap, group_id=group, auto_offset_reset="earliest",
                      enable_auto_commit=False, consumer_timeout_ms=5000)
    values = [m.value for m in c]
    c.commit()
    c.close()
    assert sorted(int(v) for v in values) == list(range(300))
    c = KafkaConsumer(topic_name, bootstrap_servers=gbroker.bootstrap, group_id=group, auto_offset_reset="earliest",
                      consumer_timeout_ms=3000)
    assert list(c) == [], "resumes from the committed offsets"
    c.close()
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=gbroker.bootstrap)
    def group_ids():
        return [g["group_id"] if isinstance(g, dict) else g[0] for g in admin.list_groups()]

    assert group in group_ids()
    offsets = admin.list_group_offsets({group: None})[group]
    assert sum(o.offset for o in offsets.values()) == 300
    described = admin.describe_groups([group])
    assert described
    admin.delete_groups([group])
    assert group not in group_ids()


@pytest.fixture(scope="module")
def kbroker(workdir):
    """A broker with a short KIP-848 heartbeat interval, so rebalances finish quickly."""
    from conftest import new_broker

    b = new_broker(workdir, *GROUP_ARGS, "--group-consumer-heartbeat-interval-ms", "300",
                   "--group-consumer-session-timeout-ms", "6000").start()
    yield b
    assert b.alive(), b.read_log()
    b.stop()


@pytest.mark.parametrize("assignor", ["uniform", "range"])
def test_kip848_consumer_protocol(kbroker, topic_name, assignor):
    make_topic(kbroker, topic_name)
    group = f"g848-{uuid.uuid4().hex[:6]}"
    conf = {"group.protocol": "consumer", "group.remote.assignor": assignor}
    members = [Member848(kbroker, group, topic_name, conf)]
    wait_for(lambda: members[0].assigned == set(range(6)), what="first member owns all")
    members.append(Member848(kbroker, group, topic_name, conf))
    wait_for(lambda: split_ok(members) and all(m.assigned for m in members), what="two-way split")
    members.append(Member848(kbroker, group, topic_name, conf))
    wait_for(lambda: split_ok(members) and all(m.assigned for m in members), what="three-way split")
    wait_for(lambda: len({v for m in members for _, _, v in m.received}) == 600, what="all records")
    admin = AdminClient({"bootstrap.servers": kbroker.bootstrap})
    desc = admin.describe_consumer_groups([group])[group].result(10)
    assert len(desc.members) == 3
    members[0].close()
    wait_for(lambda: split_ok(members[1:]), what="the leaver's partitions move")
    for m in members[1:]:
        m.close()


class Member848(Member):
    """A member using group.protocol=consumer (no session/heartbeat settings: the broker's)."""

    def __init__(self, broker, group, topic, conf):
        self.cooperative = False
        self.assigned = set()
        self.revoked_ever = []
        self.received = []
        self.events = []
        self.stop = threading.Event()
        self.consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                                  "auto.offset.reset": "earliest", "enable.auto.commit": False, **conf})
        self.consumer.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _on_assign(self, consumer, partitions):
        self.assigned |= {p.partition for p in partitions}
        self.events.append(("assign", sorted(p.partition for p in partitions)))

    def _on_revoke(self, consumer, partitions):
        self.assigned -= {p.partition for p in partitions}
        self.revoked_ever.extend(p.partition for p in partitions)


def test_alter_offsets_of_a_group_with_members_is_unknown_member(gbroker, topic_name):
    """AlterConsumerGroupOffsets (a commit with generation -1 and no member id) on a group that
    has active members: Kafka answers UNKNOWN_MEMBER_ID. Once the group is empty it applies."""
    from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException

    make_topic(gbroker, topic_name, partitions=1, records=10)
    group = "alter-" + uuid.uuid4().hex[:8]
    m = Member(gbroker, group, topic_name)
    wait_for(lambda: m.assigned == {0}, what="the member owns the partition")
    admin = AdminClient({"bootstrap.servers": gbroker.bootstrap})
    request = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic_name, 0, 3)])]
    def alter():
        """The per-partition error of an alter (None when it applied)."""
        try:
            result = admin.alter_consumer_group_offsets(request)[group].result(30)
        except KafkaException as e:
            return e.args[0]
        return result.topic_partitions[0].error

    err = alter()
    assert err is not None and err.code() == KafkaError.UNKNOWN_MEMBER_ID, err
    m.close()

    def altered():
        return alter() is None  # the member's leave may still be in flight

    wait_for(altered, what="the offsets altered once the group is empty")
    got = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(30)
    assert [(tp.partition, tp.offset) for tp in got.topic_partitions] == [(0, 3)]


def grow(broker, topic, count):
    from confluent_kafka.admin import NewPartitions

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_partitions([NewPartitions(topic, count)])[topic].result(30)


def test_classic_group_picks_up_new_partitions(gbroker, topic_name):
    """After CreatePartitions the classic group's leader sees the new count in its metadata
    refresh and rebalances; the new partitions are assigned and consumed."""
    make_topic(gbroker, topic_name, partitions=2, records=20)
    group = "grow-" + uuid.uuid4().hex[:8]
    m = Member(gbroker, group, topic_name, **{"topic.metadata.refresh.interval.ms": 1000})
    wait_for(lambda: m.assigned == {0, 1}, what="the member owns both partitions")
    grow(gbroker, topic_name, 4)
    wait_for(lambda: m.assigned == {0, 1, 2, 3}, what="the new partitions are assigned")
    p = Producer({"bootstrap.servers": gbroker.bootstrap})
    p.produce(topic_name, value=b"in-3", partition=3)
    assert p.flush(30) == 0
    wait_for(lambda: (3, 0, b"in-3") in m.received, what="a record of a new partition is read")
    m.close()


def test_kip848_group_picks_up_new_partitions(kbroker, topic_name):
    """A consumer-protocol group's target assignment follows the topic's partition count."""
    make_topic(kbroker, topic_name, partitions=2, records=20)
    group = "grow848-" + uuid.uuid4().hex[:8]
    m = Member848(kbroker, group, topic_name, {"group.protocol": "consumer"})
    wait_for(lambda: m.assigned == {0, 1}, what="the member owns both partitions")
    grow(kbroker, topic_name, 5)
    wait_for(lambda: m.assigned == set(range(5)), what="the new partitions are assigned")
    m.close()


def test_kip848_static_instance_id_held_by_an_active_member(kbroker, topic_name):
    """KIP-848 static membership: a consumer joining with a group.instance.id an active member
    holds is refused with UNRELEASED_INSTANCE_ID (fatal for it); the holder keeps its
    partitions (librdkafka's 0102 expects this under group.protocol=consumer)."""
    make_topic(kbroker, topic_name, partitions=2, records=10)
    group = "static848-" + uuid.uuid4().hex[:8]
    conf = {"group.protocol": "consumer", "group.instance.id": "inst-1"}
    holder = Member848(kbroker, group, topic_name, conf)
    wait_for(lambda: holder.assigned == {0, 1}, what="the holder owns both partitions")
    newcomer = Consumer({"bootstrap.servers": kbroker.bootstrap, "group.id": group, **conf})
    newcomer.subscribe([topic_name])
    error = None
    deadline = time.time() + 30
    while error is None and time.time() < deadline:
        m = newcomer.poll(0.5)
        if m is not None and m.error() and m.error().code() == KafkaError._FATAL:
            error = m.error()
    # librdkafka raises a fatal error carrying the broker's UNRELEASED_INSTANCE_ID message.
    assert error is not None, "the newcomer is fenced"
    assert "instance ID is still used by another member" in error.str(), error.str()
    newcomer.close()
    assert holder.assigned == {0, 1}
    holder.close()


def test_kip848_regex_subscription_is_resolved_by_the_broker(kbroker, topic_name):
    """A consumer-protocol member subscribing to `^prefix-.*` (librdkafka sends the regex to
    the broker, KIP-848): it gets the partitions of the matching topics only, and those of a
    matching topic created later."""
    make_topic(kbroker, f"{topic_name}-a", partitions=2, records=10)
    make_topic(kbroker, f"{topic_name}-other", partitions=2, records=10)
    c = Consumer({"bootstrap.servers": kbroker.bootstrap, "group.id": "rx-" + uuid.uuid4().hex[:8],
                  "group.protocol": "consumer", "auto.offset.reset": "earliest",
                  "topic.metadata.refresh.interval.ms": 1000})
    c.subscribe([f"^{topic_name}-a.*"])
    received = set()

    def owns(expected):
        m = c.poll(0.2)
        if m is not None and not m.error():
            received.add((m.topic(), m.value()))
        return {(tp.topic, tp.partition) for tp in c.assignment()} == expected

    first = {(f"{topic_name}-a", 0), (f"{topic_name}-a", 1)}
    wait_for(lambda: owns(first), what="the matching topic's partitions")
    make_topic(kbroker, f"{topic_name}-ab", partitions=3, records=10)
    both = first | {(f"{topic_name}-ab", p) for p in range(3)}
    wait_for(lambda: owns(both), what="the new matching topic's partitions")
    wait_for(lambda: owns(both) and len(received) == 20, what="every matching record")
    assert {t for t, _ in received} == {f"{topic_name}-a", f"{topic_name}-ab"}
    c.close()


def test_kip848_members_and_assignments_survive_a_coordinator_crash(fresh_broker, topic_name):
    """KIP-848 groups are stored as Kafka's records: after a SIGKILL and restart the
    coordinator knows the members, their epochs and assignments, so live members carry on
    without losing their partitions or rejoining."""
    broker = fresh_broker(*GROUP_ARGS, "--group-consumer-heartbeat-interval-ms", "300")
    make_topic(broker, topic_name, partitions=4, records=40)
    group = f"crash848-{uuid.uuid4().hex[:6]}"
    conf = {"group.protocol": "consumer"}
    members = [Member848(broker, group, topic_name, conf) for _ in range(2)]
    wait_for(lambda: split_ok(members, 4) and all(m.assigned for m in members), what="a split")
    wait_for(lambda: len({v for m in members for _, _, v in m.received}) == 40, what="all records")
    before = [(set(m.assigned), len(m.events), list(m.revoked_ever)) for m in members]
    broker.kill()
    broker.start()
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(40, 80):
        p.produce(topic_name, key=b"k%d" % i, value=b"%d" % i, partition=i % 4)
    assert p.flush(30) == 0
    # Both members read what came after the restart: they are past their first heartbeats.
    wait_for(lambda: len({v for m in members for _, _, v in m.received}) == 80, what="records after the restart")
    after = [(set(m.assigned), len(m.events), list(m.revoked_ever)) for m in members]
    assert after == before, (before, after, broker.read_log())
    for m in members:
        m.close()
