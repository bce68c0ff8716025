"""Bad input gets a clear error (or a closed connection) and nothing else breaks."""

import struct
import subprocess

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import kafka_wire as wire
from conftest import TERN_BIN

CORRUPT_MESSAGE = 2
INVALID_RECORD = 87
OFFSET_OUT_OF_RANGE = 1
UNKNOWN_TOPIC_OR_PARTITION = 3
MESSAGE_TOO_LARGE = 10
UNSUPPORTED_VERSION = 35


def still_works(broker, topic):
    """A normal produce and consume through a real client after the bad input."""
    p = Producer({"bootstrap.servers": broker.bootstrap})
    delivered = []
    p.produce(topic, value=b"after-bad-input", partition=0, on_delivery=lambda err, m: delivered.append((err, m.offset())))
    assert p.flush(30) == 0
    err, offset = delivered[0]
    assert err is None
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "check", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, offset)])
    m = None
    for _ in range(30):
        m = c.poll(1.0)
        if m is not None and not m.error():
            break
    c.close()
    assert m is not None and m.value() == b"after-bad-input"
    assert broker.alive()


def produce_raw(broker, topic, records):
    with wire.connect(broker.bootstrap) as s:
        resp = wire.roundtrip(s, wire.produce_v3(topic, 0, records))
    return wire.single_partition_error(resp)


def make_topic(broker, name):
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    a.create_topics([NewTopic(name, 1, 1, config={"max.message.bytes": "100000"})])[name].result(30)


def test_valid_raw_produce_is_accepted(broker, topic_name):
    make_topic(broker, topic_name)
    assert produce_raw(broker, topic_name, wire.record_batch(b"hello")) == 0


def test_bad_crc_is_corrupt_message(broker, topic_name):
    make_topic(broker, topic_name)
    assert produce_raw(broker, topic_name, wire.record_batch(b"x", corrupt_crc=True)) == CORRUPT_MESSAGE
    still_works(broker, topic_name)


def test_old_magic_is_refused(broker, topic_name):
    make_topic(broker, topic_name)
    assert produce_raw(broker, topic_name, wire.record_batch(b"x", magic=1)) == CORRUPT_MESSAGE
    still_works(broker, topic_name)


def test_truncated_batch_is_corrupt_message(broker, topic_name):
    make_topic(broker, topic_name)
    assert produce_raw(broker, topic_name, wire.record_batch(b"x" * 100)[:-10]) == CORRUPT_MESSAGE
    still_works(broker, topic_name)


def test_record_count_must_match_the_records(broker, topic_name):
    make_topic(broker, topic_name)
    # Header and CRC consistent, but the header claims more records than the batch holds.
    for claimed in (2, 1000):
        assert produce_raw(broker, topic_name, wire.record_batch(b"x", declared_records=claimed)) == INVALID_RECORD
    still_works(broker, topic_name)


def test_batch_over_max_message_bytes(broker, topic_name):
    make_topic(broker, topic_name)
    assert produce_raw(broker, topic_name, wire.record_batch(b"x" * 200_000)) == MESSAGE_TOO_LARGE
    # A real client gets the same error for a record over the topic's limit.
    p = Producer({"bootstrap.servers": broker.bootstrap})
    errors = []
    p.produce(topic_name, value=b"y" * 200_000, partition=0, on_delivery=lambda err, m: errors.append(err))
    p.flush(30)
    assert errors[0].code() == KafkaError.MSG_SIZE_TOO_LARGE
    still_works(broker, topic_name)


def test_fetch_out_of_range(broker, topic_name):
    make_topic(broker, topic_name)
    with wire.connect(broker.bootstrap) as s:
        resp = wire.roundtrip(s, wire.fetch_v4(topic_name, 0, 1000))
    assert wire.single_partition_error(resp, after_partition_header=1) == OFFSET_OUT_OF_RANGE
    # A client with auto.offset.reset=error sees the error; one with earliest resets and reads.
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "oor", "auto.offset.reset": "error"})
    c.assign([TopicPartition(topic_name, 0, 1000)])
    codes = set()
    for _ in range(20):
        m = c.poll(0.5)
        if m is not None and m.error():
            codes.add(m.error().code())
            break
    c.close()
    assert KafkaError._AUTO_OFFSET_RESET in codes or KafkaError.OFFSET_OUT_OF_RANGE in codes
    still_works(broker, topic_name)


def test_produce_v0_to_v2_get_unsupported_version(broker, topic_name):
    make_topic(broker, topic_name)
    for version in (0, 1, 2):
        body = struct.pack(">hi", 1, 1000) + struct.pack(">i", 1) + wire.string(topic_name)
        body += struct.pack(">i", 1) + struct.pack(">ii", 0, 3) + b"abc"
        with wire.connect(broker.bootstrap) as s:
            resp = wire.roundtrip(s, wire.request(0, version, body))
        assert wire.single_partition_error(resp) == UNSUPPORTED_VERSION
    still_works(broker, topic_name)


def test_unknown_api_version_of_api_versions_gets_v0_error(broker):
    with wire.connect(broker.bootstrap) as s:
        resp = wire.roundtrip(s, wire.request(18, 99, b""))
    error, n = struct.unpack_from(">hi", resp, 0)
    assert error == UNSUPPORTED_VERSION and n > 5


@pytest.mark.parametrize(
    "frame",
    [
        struct.pack(">i", 2_000_000_000) + b"x" * 16,  # absurd length
        struct.pack(">i", -5) + b"x" * 16,  # negative length
        wire.request(9999, 0, b""),  # unknown API key
        wire.request(3, 99, b""),  # unknown Metadata version
        wire.request(0, 9, b"\x01\x02\x03"),  # malformed produce body
        struct.pack(">i", 3) + b"abc",  # too short for a header
        # DeleteGroups v0 whose group array claims 0x4b4b4b00 entries (found by cargo fuzz; the
        # decoder once tried to allocate 40 GB for it and the broker aborted).
        struct.pack(">i", 19) + bytes([0, 42, 0, 0, 0, 16, 0, 0, 0, 0, 75, 75, 75, 0, 0, 236, 0, 0, 0]),
    ],
    ids=["absurd-length", "negative-length", "unknown-api", "unknown-version", "malformed-body", "short-header",
         "huge-array-count"],
)
def test_unanswerable_frames_close_the_connection(broker, topic_name, frame):
    make_topic(broker, topic_name)
    with wire.connect(broker.bootstrap) as s:
        s.sendall(frame)
        assert wire.closed_by_peer(s)
    still_works(broker, topic_name)


def test_auto_create_off(fresh_broker, topic_name):
    broker = fresh_broker("--auto-create-topics", "false")
    assert produce_raw(broker, topic_name, wire.record_batch(b"x")) == UNKNOWN_TOPIC_OR_PARTITION
    md = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(topic=topic_name, timeout=10)
    assert md.topics[topic_name].error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    make_topic(broker, topic_name)
    still_works(broker, topic_name)


def test_long_poll_fetch_is_woken_by_a_produce(broker, topic_name):
    """A fetch waiting at the log end returns when data arrives, well before max_wait."""
    make_topic(broker, topic_name)
    with wire.connect(broker.bootstrap) as s:
        s.settimeout(60)
        s.sendall(wire.fetch_v4(topic_name, 0, 0, max_wait_ms=120_000))
        assert produce_raw(broker, topic_name, wire.record_batch(b"wake")) == 0
        size = struct.unpack(">i", wire.recv_exact(s, 4))[0]
        resp = wire.recv_exact(s, size)[4:]
    assert wire.single_partition_error(resp, after_partition_header=1) == 0
    assert b"wake" in resp


def test_help_explains_every_flag():
    out = subprocess.run([TERN_BIN, "start", "--help"], capture_output=True, check=True).stdout.decode()
    for flag in ["--data-dir", "--listen", "--advertised", "--cores", "--numa-node", "--auto-create-topics", "--default-partitions", "--max-request-bytes"]:
        assert flag in out


def test_fetch_byte_limits(broker, topic_name):
    """partition_max_bytes below one batch still returns that whole batch (KIP-74), and only it."""
    make_topic(broker, topic_name)
    for i in range(3):
        assert produce_raw(broker, topic_name, wire.record_batch(b"%d" % i * 1000)) == 0
    with wire.connect(broker.bootstrap) as s:
        body = (
            struct.pack(">iiiib", -1, 0, 1, 1 << 20, 0)
            + struct.pack(">i", 1) + wire.string(topic_name)
            + struct.pack(">i", 1) + struct.pack(">iqi", 0, 0, 10)  # partition max 10 bytes
        )
        resp = wire.roundtrip(s, wire.request(1, 4, body))
    assert resp.count(b"0" * 1000) == 1 and b"1" * 1000 not in resp


def list_offsets_v1(partitions):
    """ListOffsets v1 body: [(topic, partition, timestamp)], grouped by topic in order given."""
    topics = []
    for topic, partition, ts in partitions:
        if not topics or topics[-1][0] != topic:
            topics.append((topic, []))
        topics[-1][1].append((partition, ts))
    body = struct.pack(">ii", -1, len(topics))
    for topic, parts in topics:
        body += wire.string(topic) + struct.pack(">i", len(parts))
        body += b"".join(struct.pack(">iq", p, ts) for p, ts in parts)
    return wire.request(2, 1, body)


def parse_list_offsets_v1(resp):
    """[(topic, partition, error, timestamp, offset)] from a ListOffsets v1 response body."""
    out, pos = [], 0
    (n_topics,) = struct.unpack_from(">i", resp, pos)
    pos += 4
    for _ in range(n_topics):
        (name_len,) = struct.unpack_from(">h", resp, pos)
        name = resp[pos + 2 : pos + 2 + name_len].decode()
        pos += 2 + name_len
        (n_parts,) = struct.unpack_from(">i", resp, pos)
        pos += 4
        for _ in range(n_parts):
            out.append((name, *struct.unpack_from(">ihqq", resp, pos)))
            pos += 22
    return out


INVALID_REQUEST = 42


def test_list_offsets_with_a_partition_named_twice(broker, topic_name):
    """Kafka answers INVALID_REQUEST for every copy of a partition named twice in one request
    (also across two entries for the same topic); the other partitions are answered."""
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic_name, num_partitions=2, replication_factor=1)])[topic_name].result(30)
    for value in (b"a", b"b"):
        assert produce_raw(broker, topic_name, wire.record_batch(value)) == 0
    s = wire.connect(broker.bootstrap)
    LATEST, EARLIEST = -1, -2
    frame = list_offsets_v1([(topic_name, 0, LATEST), (topic_name, 1, LATEST), (topic_name, 0, EARLIEST)])
    answers = parse_list_offsets_v1(wire.roundtrip(s, frame))
    assert [(p, err) for _, p, err, _, _ in answers] == [(0, INVALID_REQUEST), (1, 0), (0, INVALID_REQUEST)]
    assert answers[1][4] == 0, "partition 1 is empty: its latest offset is 0"
    # The same partition in two entries of the topics array.
    frame = list_offsets_v1([(topic_name, 0, LATEST)])
    answers = parse_list_offsets_v1(wire.roundtrip(s, frame))
    assert answers == [(topic_name, 0, 0, -1, 2)]
    body = struct.pack(">ii", -1, 2) + b"".join(
        wire.string(topic_name) + struct.pack(">iiq", 1, 0, ts) for ts in (LATEST, EARLIEST)
    )
    answers = parse_list_offsets_v1(wire.roundtrip(s, wire.request(2, 1, body)))
    assert [err for *_, err, _, _ in answers] == [INVALID_REQUEST, INVALID_REQUEST]
    s.close()
    still_works(broker, topic_name)
